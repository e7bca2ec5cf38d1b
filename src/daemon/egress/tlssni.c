#include "daemon/egress/tlssni.h"

#include <string.h>

#include "lib/err.h"

#define REC_HANDSHAKE 22
#define HS_CLIENT_HELLO 1
#define REC_MAX 16384
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43

void nb_tlssni_init(nb_tlssni_t *p)
{
    /* The handshake buffer needs no clearing: only hs_len bytes are read. */
    memset(p, 0, offsetof(nb_tlssni_t, hs));
}

/* A bounds-checked reader over the ClientHello body. */
typedef struct {
    const uint8_t *p;
    size_t left;
} rd_t;

static int rd_u8(rd_t *r, unsigned *v)
{
    if (r->left < 1)
        return -1;
    *v = r->p[0];
    r->p++;
    r->left--;
    return 0;
}

static int rd_u16(rd_t *r, unsigned *v)
{
    if (r->left < 2)
        return -1;
    *v = (unsigned)r->p[0] << 8 | r->p[1];
    r->p += 2;
    r->left -= 2;
    return 0;
}

/* Splits off a sub-reader of `n` bytes. */
static int rd_sub(rd_t *r, size_t n, rd_t *sub)
{
    if (r->left < n)
        return -1;
    sub->p = r->p;
    sub->left = n;
    r->p += n;
    r->left -= n;
    return 0;
}

static int parse_sni(nb_tlssni_t *p, rd_t ext)
{
    unsigned list_len;
    rd_t list;
    if (rd_u16(&ext, &list_len) < 0 || list_len != ext.left || list_len == 0 ||
        rd_sub(&ext, list_len, &list) < 0)
        return -1;
    while (list.left > 0) {
        unsigned type, n;
        rd_t name;
        if (rd_u8(&list, &type) < 0 || rd_u16(&list, &n) < 0 || rd_sub(&list, n, &name) < 0)
            return -1;
        if (type != 0)
            continue; /* no other name types are defined; ignore, as RFC 6066 allows */
        if (p->has_sni || n == 0 || n > 255 || memchr(name.p, 0, n))
            return -1;
        memcpy(p->sni, name.p, n);
        p->sni[n] = '\0';
        p->sni_len = n;
        p->has_sni = 1;
    }
    return 0;
}

static int parse_versions(nb_tlssni_t *p, rd_t ext)
{
    unsigned n;
    if (rd_u8(&ext, &n) < 0 || n != ext.left || n < 2 || n % 2)
        return -1;
    while (ext.left) {
        unsigned v = 0;
        if (rd_u16(&ext, &v) < 0)
            return -1;
        if (v == 0x0304)
            p->offers_tls13 = 1;
    }
    return 0;
}

static int parse_alpn(nb_tlssni_t *p, rd_t ext)
{
    unsigned n;
    if (rd_u16(&ext, &n) < 0 || n != ext.left || n < 2)
        return -1;
    while (ext.left) {
        unsigned l;
        rd_t proto;
        if (rd_u8(&ext, &l) < 0 || l == 0 || rd_sub(&ext, l, &proto) < 0)
            return -1;
    }
    p->has_alpn = 1;
    return 0;
}

/* Parses the complete ClientHello body (after the 4-byte header). */
static int parse_hello(nb_tlssni_t *p, const uint8_t *body, size_t len)
{
    rd_t r = {body, len}, tmp;
    unsigned ver, n;
    if (rd_u16(&r, &ver) < 0 || (ver >> 8) != 3)
        return -1;
    if (rd_sub(&r, 32, &tmp) < 0) /* random */
        return -1;
    if (rd_u8(&r, &n) < 0 || n > 32 || rd_sub(&r, n, &tmp) < 0) /* session id */
        return -1;
    if (rd_u16(&r, &n) < 0 || n < 2 || n % 2 || rd_sub(&r, n, &tmp) < 0) /* cipher suites */
        return -1;
    if (rd_u8(&r, &n) < 0 || n < 1 || rd_sub(&r, n, &tmp) < 0) /* compression */
        return -1;
    if (r.left == 0)
        return 0; /* no extensions (pre-TLS 1.3 clients) */
    if (rd_u16(&r, &n) < 0 || n != r.left)
        return -1;
    uint16_t seen[NB_TLSSNI_MAX_EXTENSIONS];
    size_t nseen = 0;
    while (r.left > 0) {
        unsigned type, elen;
        rd_t ext;
        if (rd_u16(&r, &type) < 0 || rd_u16(&r, &elen) < 0 || rd_sub(&r, elen, &ext) < 0)
            return -1;
        for (size_t i = 0; i < nseen; i++)
            if (seen[i] == type)
                return -1; /* RFC 8446 4.2: at most one of each */
        if (nseen == NB_TLSSNI_MAX_EXTENSIONS)
            return -1;
        seen[nseen++] = (uint16_t)type;
        int rc = 0;
        if (type == EXT_SERVER_NAME)
            rc = parse_sni(p, ext);
        else if (type == EXT_SUPPORTED_VERSIONS)
            rc = parse_versions(p, ext);
        else if (type == EXT_ALPN)
            rc = parse_alpn(p, ext);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static int fail(nb_tlssni_t *p, int code)
{
    p->state = code;
    p->has_sni = 0;
    p->sni[0] = '\0';
    p->sni_len = 0;
    return code;
}

int nb_tlssni_feed(nb_tlssni_t *p, const uint8_t *data, size_t len, size_t *used)
{
    size_t i = 0;
    if (used)
        *used = 0;
    if (p->state != 0)
        return p->state;
    while (i < len) {
        if (p->rec_left == 0) {
            /* Record header. */
            size_t take = 5 - p->rec_hdr_len;
            if (take > len - i)
                take = len - i;
            memcpy(p->rec_hdr + p->rec_hdr_len, data + i, take);
            p->rec_hdr_len += take;
            i += take;
            if (p->rec_hdr_len < 5)
                break;
            size_t rl = (size_t)p->rec_hdr[3] << 8 | p->rec_hdr[4];
            if (p->rec_hdr[0] != REC_HANDSHAKE || p->rec_hdr[1] != 3 || rl == 0 || rl > REC_MAX)
                return fail(p, NB_EPARSE);
            p->rec_hdr_len = 0;
            p->rec_left = rl;
            continue;
        }
        /* Record body: handshake bytes. */
        size_t take = p->rec_left;
        if (take > len - i)
            take = len - i;
        if (p->hs_need == 0) {
            /* Header not known yet: take at most up to the 4 header bytes. */
            size_t h = 4 - p->hs_len;
            if (take > h)
                take = h;
        } else if (take > p->hs_need - p->hs_len) {
            return fail(p, NB_EPARSE); /* bytes after the ClientHello in its record */
        }
        memcpy(p->hs + p->hs_len, data + i, take);
        p->hs_len += take;
        p->rec_left -= take;
        i += take;
        if (p->hs_need == 0 && p->hs_len == 4) {
            size_t ml = (size_t)p->hs[1] << 16 | (size_t)p->hs[2] << 8 | p->hs[3];
            if (p->hs[0] != HS_CLIENT_HELLO || ml < 38)
                return fail(p, NB_EPARSE);
            if (ml > NB_TLSSNI_HELLO_MAX)
                return fail(p, NB_ETOOBIG);
            p->hs_need = 4 + ml;
        }
        if (p->hs_need && p->hs_len == p->hs_need) {
            if (p->rec_left != 0)
                return fail(p, NB_EPARSE);
            if (parse_hello(p, p->hs + 4, p->hs_len - 4) < 0)
                return fail(p, NB_EPARSE);
            p->state = NB_TLSSNI_DONE;
            if (used)
                *used = i;
            return NB_TLSSNI_DONE;
        }
    }
    if (used)
        *used = i;
    return NB_TLSSNI_MORE;
}
