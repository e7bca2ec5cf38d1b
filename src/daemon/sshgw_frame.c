/* The SSH gateway's socketpair framing (sshgw_int.h): pure, fuzzed. */
#include "daemon/sshgw_int.h"
#include "lib/err.h"

int nb_sshf_decode(const uint8_t *p, size_t n, unsigned *type, const uint8_t **pay, size_t *plen,
                   size_t *used)
{
    if (n < NB_SSHF_HDR)
        return 0;
    unsigned t = p[0];
    if (t > NB_SSHF_CTL && t != NB_SSHF_FIN && t != NB_SSHF_OPEN && t != NB_SSHF_STATUS)
        return NB_EPROTO;
    size_t len = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
    if (len > NB_SSHF_MAX || (t == NB_SSHF_FIN && len != 0))
        return NB_EPROTO;
    if (n - NB_SSHF_HDR < len)
        return 0;
    *type = t;
    *pay = p + NB_SSHF_HDR;
    *plen = len;
    *used = NB_SSHF_HDR + len;
    return 1;
}

void nb_sshf_header(uint8_t h[NB_SSHF_HDR], unsigned type, size_t len)
{
    h[0] = (uint8_t)type;
    h[1] = (uint8_t)(len >> 24);
    h[2] = (uint8_t)(len >> 16);
    h[3] = (uint8_t)(len >> 8);
    h[4] = (uint8_t)len;
}
