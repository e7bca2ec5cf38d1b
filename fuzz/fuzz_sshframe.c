/* libFuzzer: the SSH gateway's socketpair framing decoder
 * (daemon/sshgw_frame.c), which the loop runs on what a session thread
 * sends and the thread on what the loop sends. */
#include <stdint.h>
#include <stdlib.h>

#include "daemon/sshgw_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        unsigned type;
        const uint8_t *pay;
        size_t plen, used;
        int r = nb_sshf_decode(data + off, size - off, &type, &pay, &plen, &used);
        if (r <= 0)
            break;
        if (used != NB_SSHF_HDR + plen || off + used > size || pay != data + off + NB_SSHF_HDR ||
            plen > NB_SSHF_MAX)
            abort();
        uint8_t h[NB_SSHF_HDR];
        nb_sshf_header(h, type, plen);
        for (int i = 0; i < NB_SSHF_HDR; i++)
            if (h[i] != data[off + i])
                abort();
        off += used;
    }
    return 0;
}
