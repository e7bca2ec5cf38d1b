#include "lib/mux.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/err.h"

enum { DEC_HDR = 0, DEC_PAYLOAD, DEC_STREAM, DEC_ERROR };

static const char auth_label[] = "nbmux-v1-auth";

static uint32_t get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void nb_mux_put_hdr(uint8_t out[NB_MUX_HDR_LEN], uint8_t type, uint8_t flags, uint32_t sid,
                    uint32_t len)
{
    out[0] = type;
    out[1] = flags;
    put_u32(out + 2, sid);
    put_u32(out + 6, len);
}

const char *nb_mux_type_name(unsigned type)
{
    static const char *const names[] = {
        "INVALID", "HELLO", "AUTH", "OPEN", "OPEN_OK", "OPEN_ERR", "DATA",
        "WINDOW",  "FIN",   "RST",  "PING", "PONG",    "GOAWAY",
    };
    return type <= NB_MUX_TYPE_MAX ? names[type] : "UNKNOWN";
}

const char *nb_mux_code_name(uint32_t code)
{
    switch (code) {
#define NB_MUX_CODE_NAME(name, v)                                                                  \
    case v:                                                                                        \
        return #name;
        NB_MUX_CODE_TABLE(NB_MUX_CODE_NAME)
#undef NB_MUX_CODE_NAME
    default:
        return "UNKNOWN";
    }
}

int nb_mux_code_to_err(uint32_t code)
{
    switch (code) {
    case NB_MUX_E_NONE:
        return 0;
    case NB_MUX_E_AUTH:
        return NB_EAUTH;
    case NB_MUX_E_VERSION:
        return NB_EUNSUPPORTED;
    case NB_MUX_E_LIMIT:
    case NB_MUX_E_BUSY:
        return -EBUSY;
    case NB_MUX_E_TIMEOUT:
        return NB_ETIMEOUT;
    case NB_MUX_E_SHUTDOWN:
        return NB_ECLOSED;
    case NB_MUX_E_CANCEL:
        return -ECANCELED;
    case NB_MUX_E_NO_SERVICE:
        return NB_ENOTFOUND;
    case NB_MUX_E_BAD_ARGS:
        return NB_EINVAL;
    case NB_MUX_E_REFUSED:
        return NB_EDENIED;
    case NB_MUX_E_FAILED:
        return -EIO;
    case NB_MUX_E_INTERNAL:
        return NB_EINTERNAL;
    default: /* PROTOCOL, FLOW, FLOOD, unknown */
        return NB_EPROTO;
    }
}

uint32_t nb_mux_err_to_code(int err)
{
    switch (err) {
    case 0:
        return NB_MUX_E_NONE;
    case NB_EPROTO:
    case NB_EPARSE:
        return NB_MUX_E_PROTOCOL;
    case NB_EAUTH:
    case NB_ECRYPTO:
        return NB_MUX_E_AUTH;
    case NB_EUNSUPPORTED:
        return NB_MUX_E_VERSION;
    case NB_ETIMEOUT:
        return NB_MUX_E_TIMEOUT;
    case NB_ECLOSED:
        return NB_MUX_E_SHUTDOWN;
    case -ECANCELED:
        return NB_MUX_E_CANCEL;
    case NB_ENOTFOUND:
        return NB_MUX_E_NO_SERVICE;
    case NB_EINVAL:
    case -EINVAL:
        return NB_MUX_E_BAD_ARGS;
    case NB_EDENIED:
    case -EACCES:
    case -EPERM:
        return NB_MUX_E_REFUSED;
    case -EBUSY:
    case -EAGAIN:
    case -ENOMEM:
    case -EMFILE:
    case -ENFILE:
        return NB_MUX_E_BUSY;
    case NB_EINTERNAL:
        return NB_MUX_E_INTERNAL;
    default:
        return NB_MUX_E_FAILED;
    }
}

int nb_mux_service_valid(const void *s, size_t n)
{
    const uint8_t *p = s;
    if (n == 0 || n > NB_MUX_SERVICE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int nb_mux_check_hdr(const nb_mux_hdr_t *h, const char **why)
{
    const char *w = NULL;
    uint32_t lo = 0, hi = 0;
    int sid0 = 1; /* 1: must be 0, 0: must be non-zero */
    switch (h->type) {
    case NB_MUX_HELLO:
        lo = hi = NB_MUX_HELLO_LEN;
        break;
    case NB_MUX_AUTH:
        lo = hi = NB_MUX_AUTH_LEN;
        break;
    case NB_MUX_OPEN:
        lo = 2, hi = NB_MUX_MAX_PAYLOAD, sid0 = 0;
        break;
    case NB_MUX_OPEN_OK:
    case NB_MUX_FIN:
        lo = hi = 0, sid0 = 0;
        break;
    case NB_MUX_OPEN_ERR:
    case NB_MUX_RST:
        lo = 4, hi = 4 + NB_MUX_MSG_MAX, sid0 = 0;
        break;
    case NB_MUX_DATA:
        lo = 1, sid0 = 0;
        hi = (h->flags == NB_MUX_CHAN_CTL) ? NB_MUX_CTL_MAX : NB_MUX_MAX_PAYLOAD;
        break;
    case NB_MUX_WINDOW:
        lo = hi = 4, sid0 = 0;
        break;
    case NB_MUX_PING:
    case NB_MUX_PONG:
        lo = hi = NB_MUX_PING_LEN;
        break;
    case NB_MUX_GOAWAY:
        lo = 4, hi = 4 + NB_MUX_MSG_MAX;
        break;
    default:
        w = "unknown frame type";
        goto bad;
    }
    if (h->type == NB_MUX_DATA ? h->flags > NB_MUX_CHAN_CTL : h->flags != 0) {
        w = "invalid flags";
        goto bad;
    }
    if (sid0 ? h->sid != 0 : h->sid == 0) {
        w = sid0 ? "session frame with a stream id" : "stream frame with stream id 0";
        goto bad;
    }
    if (h->len > hi) {
        if (why)
            *why = h->len > NB_MUX_MAX_PAYLOAD ? "length exceeds the maximum payload"
                                               : "length too large for the frame type";
        return NB_ETOOBIG;
    }
    if (h->len < lo) {
        w = "length too small for the frame type";
        goto bad;
    }
    return 0;
bad:
    if (why)
        *why = w;
    return NB_EPROTO;
}

int nb_mux_parse_hello(nb_iov_t p, nb_mux_hello_t *out)
{
    memset(out, 0, sizeof *out);
    if (p.len != NB_MUX_HELLO_LEN || memcmp(p.p, "NBMX", 4) != 0)
        return NB_EPROTO;
    out->version = (uint16_t)((p.p[4] << 8) | p.p[5]);
    out->role = p.p[6];
    out->features = get_u32(p.p + 8);
    out->nonce = p.p + 12;
    return 0;
}

int nb_mux_parse_open(nb_iov_t p, nb_iov_t *service, nb_iov_t *args)
{
    *service = *args = (nb_iov_t){NULL, 0};
    if (p.len < 2)
        return NB_EPROTO;
    size_t n = p.p[0];
    if (n == 0 || n > NB_MUX_SERVICE_MAX || n + 1 > p.len || !nb_mux_service_valid(p.p + 1, n))
        return NB_EPROTO;
    *service = nb_iov(p.p + 1, n);
    *args = nb_iov(p.p + 1 + n, p.len - 1 - n);
    return 0;
}

int nb_mux_parse_code(nb_iov_t p, uint32_t *code, nb_iov_t *msg)
{
    *code = 0;
    *msg = (nb_iov_t){NULL, 0};
    if (p.len < 4 || p.len > 4 + NB_MUX_MSG_MAX)
        return NB_EPROTO;
    *code = get_u32(p.p);
    if (*code > NB_MUX_E_MAX)
        return NB_EPROTO;
    *msg = nb_iov(p.p + 4, p.len - 4);
    return 0;
}

uint32_t nb_mux_parse_u32(nb_iov_t p)
{
    return p.len >= 4 ? get_u32(p.p) : 0;
}

int nb_mux_check_payload(const nb_mux_hdr_t *h, nb_iov_t p, const char **why)
{
    const char *w = NULL;
    nb_iov_t a, b;
    uint32_t code;
    switch (h->type) {
    case NB_MUX_HELLO: {
        nb_mux_hello_t hello;
        if (nb_mux_parse_hello(p, &hello) < 0)
            w = "HELLO with a bad magic";
        else if (p.p[7] != 0)
            w = "HELLO with a non-zero reserved byte";
        break;
    }
    case NB_MUX_OPEN:
        if (nb_mux_parse_open(p, &a, &b) < 0)
            w = "OPEN with an invalid service name";
        break;
    case NB_MUX_OPEN_ERR:
    case NB_MUX_RST:
    case NB_MUX_GOAWAY:
        if (nb_mux_parse_code(p, &code, &a) < 0)
            w = "unknown error code";
        break;
    case NB_MUX_WINDOW:
        if (nb_mux_parse_u32(p) == 0)
            w = "WINDOW with a zero increment";
        break;
    default:
        break;
    }
    if (w) {
        if (why)
            *why = w;
        return NB_EPROTO;
    }
    return 0;
}

void nb_mux_dec_init(nb_mux_dec_t *d)
{
    memset(d, 0, sizeof *d);
    d->state = DEC_HDR;
    d->allow = NB_MUX_MASK_ALL;
}

void nb_mux_dec_free(nb_mux_dec_t *d)
{
    free(d->pbuf);
    d->pbuf = NULL;
}

void nb_mux_dec_allow(nb_mux_dec_t *d, uint32_t mask)
{
    d->allow = mask;
}

const char *nb_mux_dec_error(const nb_mux_dec_t *d)
{
    return d->err;
}

static int dec_fail(nb_mux_dec_t *d, int r, uint32_t code, const char *why)
{
    if (d->state != DEC_ERROR) {
        const nb_mux_hdr_t *h = &d->cur;
        if (d->hhave == NB_MUX_HDR_LEN)
            snprintf(d->err, sizeof d->err, "%s (type %s/%u, stream %u, length %u)", why,
                     nb_mux_type_name(h->type), h->type, h->sid, h->len);
        else
            snprintf(d->err, sizeof d->err, "%s", why);
        d->err_code = code;
        d->state = DEC_ERROR;
    }
    return r;
}

/* Header complete: validate it and decide how its payload is delivered. */
static int dec_header(nb_mux_dec_t *d, nb_mux_ev_t *ev)
{
    const char *why = NULL;
    nb_mux_hdr_t *h = &d->cur;
    int r;
    h->type = d->hbuf[0];
    h->flags = d->hbuf[1];
    h->sid = get_u32(d->hbuf + 2);
    h->len = get_u32(d->hbuf + 6);
    d->got = 0;
    if ((r = nb_mux_check_hdr(h, &why)) < 0)
        return dec_fail(d, r, NB_MUX_E_PROTOCOL, why);
    if (!(d->allow & NB_MUX_T(h->type)))
        return dec_fail(d, NB_EPROTO, NB_MUX_E_PROTOCOL, "frame type not allowed in this state");
    if (h->type == NB_MUX_DATA && h->flags != NB_MUX_CHAN_CTL) {
        d->state = DEC_STREAM; /* len >= 1 by nb_mux_check_hdr */
        return 0;
    }
    if (h->len == 0) {
        d->state = DEC_HDR;
        d->hhave = 0;
        ev->hdr = *h;
        ev->payload = (nb_iov_t){NULL, 0};
        ev->offset = 0;
        ev->last = 1;
        return 1;
    }
    if (!d->pbuf && !(d->pbuf = malloc(NB_MUX_MAX_PAYLOAD)))
        return dec_fail(d, -ENOMEM, NB_MUX_E_INTERNAL, "out of memory");
    d->state = DEC_PAYLOAD;
    return 0;
}

int nb_mux_dec_next(nb_mux_dec_t *d, nb_iov_t *in, nb_mux_ev_t *ev)
{
    memset(ev, 0, sizeof *ev);
    for (;;) {
        switch (d->state) {
        case DEC_ERROR:
            return d->err_code == NB_MUX_E_INTERNAL ? -ENOMEM : NB_EPROTO;
        case DEC_HDR: {
            if (in->len == 0)
                return 0;
            size_t n = NB_MUX_HDR_LEN - d->hhave;
            if (n > in->len)
                n = in->len;
            memcpy(d->hbuf + d->hhave, in->p, n);
            d->hhave = (uint8_t)(d->hhave + n);
            in->p += n;
            in->len -= n;
            if (d->hhave < NB_MUX_HDR_LEN)
                return 0;
            int r = dec_header(d, ev);
            if (r != 0)
                return r;
            break;
        }
        case DEC_PAYLOAD: {
            if (in->len == 0)
                return 0;
            size_t n = d->cur.len - d->got;
            if (n > in->len)
                n = in->len;
            memcpy(d->pbuf + d->got, in->p, n);
            d->got += (uint32_t)n;
            in->p += n;
            in->len -= n;
            if (d->got < d->cur.len)
                return 0;
            const char *why = NULL;
            nb_iov_t p = nb_iov(d->pbuf, d->cur.len);
            if (nb_mux_check_payload(&d->cur, p, &why) < 0)
                return dec_fail(d, NB_EPROTO, NB_MUX_E_PROTOCOL, why);
            d->state = DEC_HDR;
            d->hhave = 0;
            ev->hdr = d->cur;
            ev->payload = p;
            ev->offset = 0;
            ev->last = 1;
            return 1;
        }
        case DEC_STREAM: {
            if (in->len == 0)
                return 0;
            size_t n = d->cur.len - d->got;
            if (n > in->len)
                n = in->len;
            ev->hdr = d->cur;
            ev->payload = nb_iov(in->p, n);
            ev->offset = d->got;
            d->got += (uint32_t)n;
            in->p += n;
            in->len -= n;
            ev->last = d->got == d->cur.len;
            if (ev->last) {
                d->state = DEC_HDR;
                d->hhave = 0;
            }
            return 1;
        }
        default:
            return dec_fail(d, NB_EINTERNAL, NB_MUX_E_INTERNAL, "decoder state corrupted");
        }
    }
}

void nb_mux_put_hello(uint8_t out[NB_MUX_HELLO_LEN], uint8_t role, uint32_t features,
                      const uint8_t nonce[NB_MUX_NONCE_LEN])
{
    memcpy(out, "NBMX", 4);
    out[4] = 0;
    out[5] = NB_MUX_VERSION;
    out[6] = role;
    out[7] = 0;
    put_u32(out + 8, features);
    memcpy(out + 12, nonce, NB_MUX_NONCE_LEN);
}

int nb_mux_enc_frame(nb_buf_t *b, uint8_t type, uint8_t flags, uint32_t sid, const void *payload,
                     size_t len)
{
    uint8_t h[NB_MUX_HDR_LEN];
    int r;
    if (len > NB_MUX_MAX_PAYLOAD)
        return NB_ETOOBIG;
    if ((r = nb_buf_reserve(b, NB_MUX_HDR_LEN + len)) < 0)
        return r;
    nb_mux_put_hdr(h, type, flags, sid, (uint32_t)len);
    memcpy(b->p + b->len, h, NB_MUX_HDR_LEN);
    if (len)
        memcpy(b->p + b->len + NB_MUX_HDR_LEN, payload, len);
    b->len += NB_MUX_HDR_LEN + len;
    return 0;
}

int nb_mux_enc_open(nb_buf_t *b, uint32_t sid, const char *service, nb_iov_t args)
{
    size_t n = strlen(service);
    uint8_t h[NB_MUX_HDR_LEN];
    int r;
    if (!nb_mux_service_valid(service, n))
        return NB_EINVAL;
    if (args.len > NB_MUX_MAX_PAYLOAD - 1 - n)
        return NB_ETOOBIG;
    size_t len = 1 + n + args.len;
    if ((r = nb_buf_reserve(b, NB_MUX_HDR_LEN + len)) < 0)
        return r;
    nb_mux_put_hdr(h, NB_MUX_OPEN, 0, sid, (uint32_t)len);
    uint8_t *o = b->p + b->len;
    memcpy(o, h, NB_MUX_HDR_LEN);
    o[NB_MUX_HDR_LEN] = (uint8_t)n;
    memcpy(o + NB_MUX_HDR_LEN + 1, service, n);
    if (args.len)
        memcpy(o + NB_MUX_HDR_LEN + 1 + n, args.p, args.len);
    b->len += NB_MUX_HDR_LEN + len;
    return 0;
}

int nb_mux_enc_code(nb_buf_t *b, uint8_t type, uint32_t sid, uint32_t code, const char *msg)
{
    uint8_t p[4 + NB_MUX_MSG_MAX];
    size_t n = msg ? strnlen(msg, NB_MUX_MSG_MAX) : 0;
    put_u32(p, code);
    if (n)
        memcpy(p + 4, msg, n);
    return nb_mux_enc_frame(b, type, 0, sid, p, 4 + n);
}

int nb_mux_enc_window(nb_buf_t *b, uint32_t sid, uint32_t increment)
{
    uint8_t p[4];
    put_u32(p, increment);
    return nb_mux_enc_frame(b, NB_MUX_WINDOW, 0, sid, p, 4);
}

void nb_mux_auth_mac(uint8_t out[NB_MUX_AUTH_LEN], const uint8_t key[NB_MUX_KEY_LEN],
                     uint8_t prover_role, const uint8_t hello_host[NB_MUX_HELLO_LEN],
                     const uint8_t hello_guest[NB_MUX_HELLO_LEN])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, NB_MUX_KEY_LEN);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)auth_label, sizeof auth_label - 1);
    crypto_auth_hmacsha256_update(&st, &prover_role, 1);
    crypto_auth_hmacsha256_update(&st, hello_host, NB_MUX_HELLO_LEN);
    crypto_auth_hmacsha256_update(&st, hello_guest, NB_MUX_HELLO_LEN);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

int nb_mux_auth_verify(const uint8_t mac[NB_MUX_AUTH_LEN], const uint8_t key[NB_MUX_KEY_LEN],
                       uint8_t prover_role, const uint8_t hello_host[NB_MUX_HELLO_LEN],
                       const uint8_t hello_guest[NB_MUX_HELLO_LEN])
{
    uint8_t want[NB_MUX_AUTH_LEN];
    nb_mux_auth_mac(want, key, prover_role, hello_host, hello_guest);
    int ok = crypto_verify_32(want, mac) == 0;
    sodium_memzero(want, sizeof want);
    return ok ? 0 : NB_EAUTH;
}
