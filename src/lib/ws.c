/* RFC 6455 frame codec. See ws.h. */
#include "lib/ws.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "lib/err.h"

#define NB_WS_MAX_CONTROL 125

enum { WS_HDR, WS_PAYLOAD, WS_ERROR };

struct nb_ws_parser {
    nb_ws_role_t role;
    size_t max_message;
    nb_ws_parser_cbs_t cbs;
    void *ud;
    int state;
    int close_code;
    const char *reason;

    /* current frame */
    uint8_t hdr[14];
    size_t hdr_len;
    size_t hdr_need;
    int fin, opcode;
    uint8_t mask[4];
    int masked;
    uint64_t left; /* payload bytes still to come */
    uint64_t moff; /* payload offset, for the mask phase */

    /* control frame payload */
    uint8_t ctl[NB_WS_MAX_CONTROL];
    size_t ctl_len;

    /* message being reassembled */
    int msg_opcode; /* 0 when none in progress */
    nb_buf_t msg;
    uint32_t utf8; /* incremental validator state */
};

/* --- UTF-8 --- */

/* State: bits 0-1 continuation bytes still needed, bits 8-15 lowest and
 * 16-23 highest allowed value of the next byte. */
static int utf8_step(uint32_t *st, const uint8_t *p, size_t n)
{
    uint32_t s = *st;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        unsigned need = s & 3, lo = (s >> 8) & 0xff, hi = (s >> 16) & 0xff;
        if (need == 0) {
            if (c < 0x80)
                continue;
            if (c >= 0xC2 && c <= 0xDF)
                s = 1 | 0x80u << 8 | 0xBFu << 16;
            else if (c == 0xE0)
                s = 2 | 0xA0u << 8 | 0xBFu << 16;
            else if (c == 0xED) /* no UTF-16 surrogates */
                s = 2 | 0x80u << 8 | 0x9Fu << 16;
            else if (c >= 0xE1 && c <= 0xEF)
                s = 2 | 0x80u << 8 | 0xBFu << 16;
            else if (c == 0xF0)
                s = 3 | 0x90u << 8 | 0xBFu << 16;
            else if (c >= 0xF1 && c <= 0xF3)
                s = 3 | 0x80u << 8 | 0xBFu << 16;
            else if (c == 0xF4) /* nothing above U+10FFFF */
                s = 3 | 0x80u << 8 | 0x8Fu << 16;
            else
                return -1;
        } else {
            if (c < lo || c > hi)
                return -1;
            s = (need - 1) | 0x80u << 8 | 0xBFu << 16;
        }
    }
    *st = s;
    return 0;
}

int nb_utf8_valid(const void *p, size_t len)
{
    uint32_t s = 0;
    return utf8_step(&s, p, len) == 0 && (s & 3) == 0;
}

/* --- parser --- */

int nb_ws_parser_new(nb_ws_role_t role, size_t max_message, const nb_ws_parser_cbs_t *cbs, void *ud,
                     nb_ws_parser_t **out)
{
    nb_ws_parser_t *p;

    *out = NULL;
    if ((role != NB_WS_ROLE_SERVER && role != NB_WS_ROLE_CLIENT) || max_message == 0)
        return NB_EINVAL;
    if (!(p = calloc(1, sizeof(*p))))
        return -ENOMEM;
    p->role = role;
    p->max_message = max_message;
    if (cbs)
        p->cbs = *cbs;
    p->ud = ud;
    p->state = WS_HDR;
    p->hdr_need = 2;
    p->reason = "";
    nb_buf_init(&p->msg, max_message);
    *out = p;
    return 0;
}

void nb_ws_parser_free(nb_ws_parser_t *p)
{
    if (!p)
        return;
    nb_buf_free(&p->msg);
    free(p);
}

int nb_ws_parser_close_code(const nb_ws_parser_t *p)
{
    return p->close_code;
}

const char *nb_ws_parser_reason(const nb_ws_parser_t *p)
{
    return p->reason;
}

static int ws_fail(nb_ws_parser_t *p, int code, const char *reason)
{
    p->state = WS_ERROR;
    p->close_code = code;
    p->reason = reason;
    return code == 1009 ? NB_ETOOBIG : NB_EPROTO;
}

/* Codes a peer may send us (RFC 6455 7.4 plus the IANA registry). */
static int close_code_valid(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int nb_ws_close_code_sendable(int code)
{
    return close_code_valid(code);
}

/* Called with a complete header in p->hdr. */
static int header_done(nb_ws_parser_t *p)
{
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    uint64_t len = b1 & 0x7f;
    size_t off = 2;

    if (len == 126) {
        len = (uint64_t)p->hdr[2] << 8 | p->hdr[3];
        if (len < 126)
            return ws_fail(p, 1002, "non-minimal 16-bit length");
        off = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p->hdr[2 + i];
        if (len >> 63)
            return ws_fail(p, 1002, "length over 63 bits");
        if (len <= 0xffff)
            return ws_fail(p, 1002, "non-minimal 64-bit length");
        off = 10;
    }
    p->masked = b1 >> 7;
    if (p->masked)
        memcpy(p->mask, p->hdr + off, 4);
    p->fin = b0 >> 7;
    p->opcode = b0 & 0x0f;
    p->left = len;
    p->moff = 0;
    p->ctl_len = 0;

    if (p->opcode >= 0x8) {
        if (!p->fin)
            return ws_fail(p, 1002, "fragmented control frame");
        if (len > NB_WS_MAX_CONTROL)
            return ws_fail(p, 1002, "control frame over 125 bytes");
    } else if (p->opcode == NB_WS_OP_CONT) {
        if (!p->msg_opcode)
            return ws_fail(p, 1002, "continuation without a message");
    } else if (p->msg_opcode) {
        return ws_fail(p, 1002, "new message inside a fragmented one");
    }
    if (p->opcode < 0x8) {
        if (len > p->max_message - p->msg.len)
            return ws_fail(p, 1009, "message too big");
        if (p->opcode != NB_WS_OP_CONT) {
            p->msg_opcode = p->opcode;
            p->utf8 = 0;
            nb_buf_reset(&p->msg);
        }
        if (len && nb_buf_reserve(&p->msg, (size_t)len) < 0)
            return ws_fail(p, 1011, "out of memory");
    }
    p->state = WS_PAYLOAD;
    return 0;
}

/* The frame's payload is complete: deliver what it finishes. */
static int frame_done(nb_ws_parser_t *p)
{
    int r = 0;

    p->state = WS_HDR;
    p->hdr_len = 0;
    p->hdr_need = 2;
    if (p->opcode >= 0x8) {
        if (p->opcode == NB_WS_OP_CLOSE && p->ctl_len) {
            int code;
            if (p->ctl_len == 1)
                return ws_fail(p, 1002, "one-byte close payload");
            code = p->ctl[0] << 8 | p->ctl[1];
            if (!close_code_valid(code))
                return ws_fail(p, 1002, "invalid close code");
            if (!nb_utf8_valid(p->ctl + 2, p->ctl_len - 2))
                return ws_fail(p, 1007, "close reason is not UTF-8");
        }
        if (p->cbs.on_control)
            r = p->cbs.on_control(p->ud, p->opcode, p->ctl, p->ctl_len);
        if (r < 0) {
            ws_fail(p, 1011, "aborted");
            return r;
        }
        return r;
    }
    if (!p->fin)
        return 0;
    if (p->msg_opcode == NB_WS_OP_TEXT && (p->utf8 & 3))
        return ws_fail(p, 1007, "text message is not UTF-8");
    {
        int op = p->msg_opcode;
        p->msg_opcode = 0;
        if (p->cbs.on_message)
            r = p->cbs.on_message(p->ud, op, p->msg.p ? p->msg.p : (const uint8_t *)"", p->msg.len);
    }
    /* Do not keep a large buffer around for a connection that is idle. */
    if (p->msg.cap > 64 * 1024)
        nb_buf_free(&p->msg);
    else
        nb_buf_reset(&p->msg);
    if (r < 0) {
        ws_fail(p, 1011, "aborted");
        return r;
    }
    return r;
}

int nb_ws_parser_feed(nb_ws_parser_t *p, const uint8_t *data, size_t len, size_t *consumed)
{
    size_t i = 0;
    int r;

    *consumed = 0;
    if (p->state == WS_ERROR)
        return p->close_code == 1009 ? NB_ETOOBIG : NB_EPROTO;
    while (i < len) {
        if (p->state == WS_HDR) {
            p->hdr[p->hdr_len++] = data[i++];
            if (p->hdr_len == 2) {
                uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
                int op = b0 & 0x0f;
                /* Check the cheap rules before waiting for more header. */
                if (b0 & 0x70)
                    return ws_fail(p, 1002, "reserved bits set");
                if ((op > 0x2 && op < 0x8) || op > 0xA)
                    return ws_fail(p, 1002, "unknown opcode");
                if ((b1 >> 7) != (p->role == NB_WS_ROLE_SERVER))
                    return ws_fail(p, 1002,
                                   p->role == NB_WS_ROLE_SERVER ? "unmasked client frame"
                                                                : "masked server frame");
                p->hdr_need = 2 +
                              ((b1 & 0x7f) == 126   ? 2
                               : (b1 & 0x7f) == 127 ? 8
                                                    : 0) +
                              (b1 >> 7 ? 4 : 0);
            }
            if (p->hdr_len < p->hdr_need)
                continue;
            if ((r = header_done(p)) < 0)
                return r;
            if (p->left)
                continue;
        } else {
            size_t take = len - i;
            uint8_t *dst;
            if (take > p->left)
                take = (size_t)p->left;
            if (p->opcode >= 0x8) {
                dst = p->ctl + p->ctl_len;
                p->ctl_len += take;
            } else {
                dst = p->msg.p + p->msg.len;
                p->msg.len += take;
            }
            memcpy(dst, data + i, take);
            if (p->masked)
                for (size_t k = 0; k < take; k++)
                    dst[k] ^= p->mask[(p->moff + k) & 3];
            if (p->opcode < 0x8 && p->msg_opcode == NB_WS_OP_TEXT &&
                utf8_step(&p->utf8, dst, take) < 0)
                return ws_fail(p, 1007, "text message is not UTF-8");
            p->moff += take;
            p->left -= take;
            i += take;
            if (p->left)
                continue;
        }
        /* header with empty payload, or payload complete */
        if ((r = frame_done(p)) != 0) {
            *consumed = i;
            return r;
        }
    }
    *consumed = i;
    return 0;
}

/* --- writer --- */

size_t nb_ws_frame_header(uint8_t h[10], int fin, int opcode, uint64_t len)
{
    h[0] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

int nb_ws_frame_append_ex(nb_buf_t *b, int fin, int opcode, const void *data, size_t len,
                          const uint8_t *mask)
{
    uint8_t h[14];
    size_t hl, start;
    int r;

    if (opcode < 0 || opcode > 0xf || (opcode >= 0x8 && (len > NB_WS_MAX_CONTROL || !fin)))
        return NB_EINVAL;
    hl = nb_ws_frame_header(h, fin, opcode, len);
    if (mask) {
        h[1] |= 0x80;
        memcpy(h + hl, mask, 4);
        hl += 4;
    }
    if ((r = nb_buf_reserve(b, hl + len)) < 0)
        return r;
    start = b->len;
    nb_buf_append(b, h, hl);
    if (len) {
        nb_buf_append(b, data, len);
        if (mask)
            for (size_t i = 0; i < len; i++)
                b->p[start + hl + i] ^= mask[i & 3];
    }
    return 0;
}

int nb_ws_frame_append(nb_buf_t *b, int opcode, const void *data, size_t len, const uint8_t *mask)
{
    return nb_ws_frame_append_ex(b, 1, opcode, data, len, mask);
}

int nb_ws_close_frame_append(nb_buf_t *b, int code, const char *reason)
{
    uint8_t pl[NB_WS_MAX_CONTROL];
    size_t rl = reason ? strlen(reason) : 0;

    if (!nb_ws_close_code_sendable(code))
        return NB_EINVAL;
    if (rl > NB_WS_MAX_CONTROL - 2) {
        rl = NB_WS_MAX_CONTROL - 2;
        /* back off to a character boundary */
        while (rl > 0 && ((uint8_t)reason[rl] & 0xC0) == 0x80)
            rl--;
    }
    if (rl && !nb_utf8_valid(reason, rl))
        rl = 0;
    pl[0] = (uint8_t)(code >> 8);
    pl[1] = (uint8_t)code;
    if (rl)
        memcpy(pl + 2, reason, rl);
    return nb_ws_frame_append(b, NB_WS_OP_CLOSE, pl, 2 + rl, NULL);
}

/* --- handshake --- */

int nb_ws_accept_key(const char *key, char out[NB_WS_ACCEPT_LEN + 1])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t raw[32], md[EVP_MAX_MD_SIZE];
    char buf[24 + sizeof(guid)];
    unsigned mdlen = 0;
    size_t klen;
    int n;

    out[0] = '\0';
    if (!key || (klen = strlen(key)) != 24)
        return NB_EINVAL;
    /* The key must decode to exactly 16 bytes (RFC 6455 4.1). */
    n = EVP_DecodeBlock(raw, (const unsigned char *)key, 24);
    if (n != 18 || key[22] != '=' || key[23] != '=')
        return NB_EINVAL;
    memcpy(buf, key, 24);
    memcpy(buf + 24, guid, sizeof(guid) - 1);
    if (EVP_Digest(buf, 24 + sizeof(guid) - 1, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return NB_EINVAL;
    if (EVP_EncodeBlock((unsigned char *)out, md, 20) != NB_WS_ACCEPT_LEN)
        return NB_EINVAL;
    return 0;
}
