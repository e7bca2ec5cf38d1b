/* WebSocket server-to-client scanner (see wsscan.h). */
#include "daemon/egress/wsscan.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/err.h"
#include "lib/ws.h"

enum { ST_HDR, ST_DATA, ST_CTL, ST_FAILED };

struct nb_wsscan {
    nb_redact_t *data, *ctl;
    int state;
    uint8_t hdr[14];
    size_t hlen, hneed;
    int fin, op;
    uint64_t left;   /* payload bytes of the current frame still to come */
    int in_msg;      /* inside a fragmented data message */
    int msg_op;      /* its opcode (text or binary) */
    int out_started; /* a frame of this message has been written */
    uint8_t cbuf[125];
    size_t clen;
    uint8_t cout[125];
    size_t coutlen;
    nb_wsscan_sink sink;
    void *ctx;
};

int nb_wsscan_new(nb_redact_t *data, nb_redact_t *ctl, nb_wsscan_t **out)
{
    nb_wsscan_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->data = data;
    s->ctl = ctl;
    s->hneed = 2;
    *out = s;
    return 0;
}

void nb_wsscan_free(nb_wsscan_t *s)
{
    if (!s)
        return;
    sodium_memzero(s, sizeof *s);
    free(s);
}

int nb_wsscan_partial(const nb_wsscan_t *s)
{
    return s->in_msg || s->hlen > 0 || s->state != ST_HDR;
}

/* Writes an unmasked frame header. */
static int put_header(nb_wsscan_t *s, int fin, int op, uint64_t len)
{
    uint8_t h[10];
    size_t n = nb_ws_frame_header(h, fin, op, len);
    return s->sink(s->ctx, h, n);
}

/* Redactor output of a data message: one non-final frame per piece. */
static int data_sink(void *ud, const uint8_t *p, size_t len)
{
    nb_wsscan_t *s = ud;
    if (len == 0)
        return 0;
    int rc = put_header(s, 0, s->out_started ? 0 : s->msg_op, len);
    s->out_started = 1;
    return rc ? rc : s->sink(s->ctx, p, len);
}

static int ctl_sink(void *ud, const uint8_t *p, size_t len)
{
    nb_wsscan_t *s = ud;
    size_t room = sizeof s->cout - s->coutlen;
    if (len > room)
        len = room; /* a control payload may not pass 125 bytes: cut */
    memcpy(s->cout + s->coutlen, p, len);
    s->coutlen += len;
    return 0;
}

static int end_message(nb_wsscan_t *s)
{
    int rc = nb_redact_finish(s->data, data_sink, s);
    if (rc == 0)
        rc = put_header(s, 1, s->out_started ? 0 : s->msg_op, 0);
    s->in_msg = 0;
    s->out_started = 0;
    return rc;
}

static int end_control(nb_wsscan_t *s)
{
    int rc;
    s->coutlen = 0;
    if ((rc = nb_redact_feed(s->ctl, s->cbuf, s->clen, ctl_sink, s)) != 0 ||
        (rc = nb_redact_finish(s->ctl, ctl_sink, s)) != 0)
        return rc;
    if ((rc = put_header(s, 1, s->op, s->coutlen)) != 0)
        return rc;
    rc = s->coutlen ? s->sink(s->ctx, s->cout, s->coutlen) : 0;
    sodium_memzero(s->cbuf, sizeof s->cbuf); /* may have held a value */
    sodium_memzero(s->cout, sizeof s->cout);
    return rc;
}

/* A complete header in s->hdr: validate and enter the payload state. */
static int on_header(nb_wsscan_t *s)
{
    const uint8_t *h = s->hdr;
    s->fin = h[0] >> 7;
    s->op = h[0] & 0x0f;
    uint64_t len = h[1] & 0x7f;
    if (h[0] & 0x70)
        return NB_EPROTO; /* RSV bits: no extension was negotiated */
    if (h[1] & 0x80)
        return NB_EPROTO; /* servers never mask */
    if (len == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        if (len >> 63)
            return NB_EPROTO;
    }
    s->left = len;
    s->hlen = 0;
    s->hneed = 2;
    if (s->op >= 8) {
        if (s->op > 10 || !s->fin || len > 125)
            return NB_EPROTO;
        s->clen = 0;
        s->state = ST_CTL;
        return len == 0 ? 1 : 0;
    }
    if (s->op == 0) {
        if (!s->in_msg)
            return NB_EPROTO;
    } else if (s->op == 1 || s->op == 2) {
        if (s->in_msg)
            return NB_EPROTO;
        s->in_msg = 1;
        s->msg_op = s->op;
        s->out_started = 0;
    } else {
        return NB_EPROTO;
    }
    s->state = ST_DATA;
    return len == 0 ? 1 : 0;
}

/* The current frame's payload is complete. */
static int frame_done(nb_wsscan_t *s)
{
    int rc = 0;
    if (s->state == ST_CTL)
        rc = end_control(s);
    else if (s->fin)
        rc = end_message(s);
    s->state = ST_HDR;
    return rc;
}

int nb_wsscan_feed(nb_wsscan_t *s, const uint8_t *p, size_t len, nb_wsscan_sink sink, void *ctx)
{
    int rc;
    if (s->state == ST_FAILED)
        return NB_EPROTO;
    s->sink = sink;
    s->ctx = ctx;
    while (len > 0) {
        if (s->state == ST_HDR) {
            s->hdr[s->hlen++] = *p++;
            len--;
            if (s->hlen == 2) {
                uint8_t l7 = s->hdr[1] & 0x7f;
                s->hneed = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
            }
            if (s->hlen < s->hneed)
                continue;
            rc = on_header(s);
            if (rc == 1)
                rc = frame_done(s);
            if (rc != 0)
                goto fail;
            continue;
        }
        size_t take = s->left < len ? (size_t)s->left : len;
        if (s->state == ST_CTL) {
            memcpy(s->cbuf + s->clen, p, take);
            s->clen += take;
        } else if ((rc = nb_redact_feed(s->data, p, take, data_sink, s)) != 0) {
            goto fail;
        }
        p += take;
        len -= take;
        s->left -= take;
        if (s->left == 0 && (rc = frame_done(s)) != 0)
            goto fail;
    }
    return 0;
fail:
    s->state = ST_FAILED;
    return rc;
}
