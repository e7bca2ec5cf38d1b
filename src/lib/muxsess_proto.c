/* nbmux session layer, middle: the protocol engine. Handshake, teardown,
 * the write scheduler, reads and frame dispatch, the keepalive tick, and
 * the stream calls the dispatch itself makes (reject, reset, consume).
 * One unit because every path through it can end the session and ending
 * it writes a GOAWAY and finishes the streams. Uses muxsess_mem.c only;
 * module map in muxsess_int.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/muxsess_int.h"

void nb_mxs_schedule_flush(nb_muxsess_t *s)
{
    if (!s->freed)
        uv_prepare_start(&s->prep, nb_mxs_on_prep);
}

/* ------------------------------------------------------------ transport */

static void on_linger(uv_timer_t *t)
{
    nb_mxs_conn_close(t->data);
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    struct conn *c = w->conn;
    nb_muxsess_t *s = c->s;
    enter(s);
    c->writes--;
    c->inflight -= w->bytes;
    nb_mxs_wreq_put(s, w);
    if (c->closing) {
        if (c->writes == 0)
            nb_mxs_conn_close(c);
    } else if (status < 0) {
        nb_mxs_teardown(s, status, NB_MUX_E_SHUTDOWN, 0, "write to the peer failed: %s",
                        uv_strerror(status));
    } else {
        nb_mxs_flush(s);
        nb_mxs_update_read(s);
    }
    nb_mxs_leave(s);
}

int nb_mxs_submit(nb_muxsess_t *s, struct conn *c, wreq_t *w)
{
    unsigned first = 0;
    s->stats.bytes_out += w->bytes;
    if (c->writes == 0) {
        /* Nothing queued in libuv: write now and skip the request (and the
         * extra loop iteration its deferred callback costs) when it all
         * fits, which is the common case for small frames. */
        int n = uv_try_write((uv_stream_t *)&c->pipe, w->bufs, w->nbufs);
        if (n > 0 && (size_t)n == w->bytes) {
            nb_mxs_wreq_put(s, w);
            return 0;
        }
        if (n > 0) {
            size_t left = (size_t)n;
            while (left >= w->bufs[first].len)
                left -= w->bufs[first++].len;
            w->bufs[first].base += left;
            w->bufs[first].len -= left;
            w->bytes -= (size_t)n;
        }
    }
    int r = uv_write(&w->req, (uv_stream_t *)&c->pipe, w->bufs + first, w->nbufs - first, on_write);
    if (r < 0) {
        nb_mxs_wreq_put(s, w);
        return r;
    }
    c->writes++;
    c->inflight += w->bytes;
    return 0;
}

/* ------------------------------------------------------------- teardown */

void nb_mxs_teardown(nb_muxsess_t *s, int err, uint32_t code, int goaway, const char *fmt, ...)
{
    struct conn *c = s->conn;
    if (!c)
        return;
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);

    int level = (code == NB_MUX_E_NONE || code == NB_MUX_E_SHUTDOWN) ? NB_LOG_INFO : NB_LOG_WARN;
    nb_log_conn(level, s->conn_id, "nbmux session %s: %s (%s)",
                s->state == S_UP ? "down" : "handshake failed", why, nb_mux_code_name(code));

    s->conn = NULL;
    s->state = S_IDLE;
    uv_timer_stop(&s->tick);
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = 0;
    }
    c->closing = 1;
    if (goaway && !c->handles_closed) {
        wreq_t *w = nb_mxs_wreq_get(s, c);
        if (w && nb_mux_enc_code(&w->ctl, NB_MUX_GOAWAY, 0, code, why) == 0) {
            w->bufs[0] = uv_buf_init((char *)w->ctl.p, (unsigned)w->ctl.len);
            w->nbufs = 1;
            w->bytes = w->ctl.len;
            (void)nb_mxs_submit(s, c, w);
        } else if (w) {
            nb_mxs_wreq_put(s, w);
        }
    }
    if (c->writes == 0)
        nb_mxs_conn_close(c);
    else if (!c->handles_closed)
        uv_timer_start(&c->linger, on_linger, LINGER_MS, 0);

    snprintf(s->down_reason, sizeof s->down_reason, "%s", why);
    s->down_err = err ? err : NB_ECLOSED;
    s->down_pending = 1;

    /* Fresh state for the next attach, before any application callback
     * (which may attach again). The decoder keeps its buffer: a CTL
     * payload handed to on_data may still be in use up the stack. */
    uint8_t *pbuf = s->dec.pbuf;
    nb_mux_dec_init(&s->dec);
    s->dec.pbuf = pbuf;
    nb_buf_free(&s->ctlq);
    nb_buf_init(&s->ctlq, s->o.ctl_queue_max + CTLQ_SLACK);
    s->paused_local = 0;
    s->send_blocked = 0;
    sodium_memzero(s->hello_mine, sizeof s->hello_mine);
    sodium_memzero(s->hello_peer, sizeof s->hello_peer);
    nb_mxs_schedule_flush(s); /* delivers on_down from on_prep if no callback is running */

    char msg[320];
    snprintf(msg, sizeof msg, "session ended: %s", why);
    nb_muxsess_stream_t *st;
    while ((st = s->all))
        nb_mxs_stream_finish(st, s->down_err, code == NB_MUX_E_NONE ? NB_MUX_E_SHUTDOWN : code, msg,
                             1);
    if (!s->conn) /* nobody attached again from a callback */
        nb_mxs_pool_release(s);
}

void nb_mxs_proto_error(nb_muxsess_t *s, uint32_t code, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    int err = code == NB_MUX_E_AUTH ? NB_EAUTH : nb_mux_code_to_err(code);
    nb_mxs_teardown(s, err, code, 1, "%s", why);
}

int nb_mxs_ctl_frame_result(nb_muxsess_t *s, int r)
{
    if (r == NB_ETOOBIG && s->conn)
        nb_mxs_teardown(s, r, NB_MUX_E_PROTOCOL, 1,
                        "the peer does not read: more than %zu bytes of control frames queued",
                        s->ctlq.max);
    else if (r < 0 && s->conn)
        nb_mxs_teardown(s, r, NB_MUX_E_INTERNAL, 1, "cannot queue a control frame: %s",
                        nb_strerror(r));
    else
        nb_mxs_schedule_flush(s);
    return r;
}

/* ------------------------------------------------------------- handshake */

static void established(nb_muxsess_t *s)
{
    nb_mux_hello_t mine, peer;
    (void)nb_mux_parse_hello(nb_iov(s->hello_mine, NB_MUX_HELLO_LEN), &mine);
    (void)nb_mux_parse_hello(nb_iov(s->hello_peer, NB_MUX_HELLO_LEN), &peer);
    s->features = mine.features & peer.features;
    s->state = S_UP;
    nb_mux_dec_allow(&s->dec, NB_MUX_MASK_SESSION);
    s->next_local_id = s->o.role == NB_MUX_ROLE_HOST ? 1 : 2;
    s->last_peer_id = 0;
    s->last_ping = s->last_rx = s->t_tokens = now_ms(s);
    s->tokens = (uint64_t)s->o.open_burst * 1000;
    s->stats.sessions++;
    s->stats.opens_in = s->stats.opens_refused = 0;
    nb_log_conn(NB_LOG_INFO, s->conn_id, "nbmux session up (%s side)",
                s->o.role == NB_MUX_ROLE_HOST ? "host" : "guest");
    if (s->o.on_up)
        s->o.on_up(s, s->o.ud);
}

void nb_mxs_hs_hello(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    nb_mux_hello_t h;
    (void)nb_mux_parse_hello(ev->payload, &h);
    if (h.version != NB_MUX_VERSION) {
        nb_mxs_proto_error(s, NB_MUX_E_VERSION, "peer speaks nbmux version %u, this side speaks %u",
                           h.version, NB_MUX_VERSION);
        return;
    }
    uint8_t want = s->o.role == NB_MUX_ROLE_HOST ? NB_MUX_ROLE_GUEST : NB_MUX_ROLE_HOST;
    if (h.role != want) {
        nb_mxs_proto_error(s, NB_MUX_E_AUTH, "peer HELLO claims role %u, expected %u (reflected?)",
                           h.role, want);
        return;
    }
    memcpy(s->hello_peer, ev->payload.p, NB_MUX_HELLO_LEN);
    if (s->o.role == NB_MUX_ROLE_GUEST) {
        uint8_t nonce[NB_MUX_NONCE_LEN], mac[NB_MUX_AUTH_LEN];
        randombytes_buf(nonce, sizeof nonce);
        nb_mux_put_hello(s->hello_mine, NB_MUX_ROLE_GUEST, 0, nonce);
        nb_mux_auth_mac(mac, s->key, NB_MUX_ROLE_GUEST, s->hello_peer, s->hello_mine);
        int r = nb_mux_enc_frame(&s->ctlq, NB_MUX_HELLO, 0, 0, s->hello_mine, NB_MUX_HELLO_LEN);
        if (r == 0)
            r = nb_mux_enc_frame(&s->ctlq, NB_MUX_AUTH, 0, 0, mac, sizeof mac);
        sodium_memzero(mac, sizeof mac);
        if (nb_mxs_ctl_frame_result(s, r) < 0)
            return;
    }
    s->state = S_HS_AUTH;
    nb_mux_dec_allow(&s->dec, NB_MUX_T(NB_MUX_AUTH) | NB_MUX_T(NB_MUX_GOAWAY));
}

void nb_mxs_hs_auth(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    int host = s->o.role == NB_MUX_ROLE_HOST;
    const uint8_t *hh = host ? s->hello_mine : s->hello_peer;
    const uint8_t *hg = host ? s->hello_peer : s->hello_mine;
    uint8_t prover = host ? NB_MUX_ROLE_GUEST : NB_MUX_ROLE_HOST;
    if (nb_mux_auth_verify(ev->payload.p, s->key, prover, hh, hg) < 0) {
        nb_mxs_proto_error(s, NB_MUX_E_AUTH,
                           "authentication failed: the peer does not know the key");
        return;
    }
    if (host) {
        uint8_t mac[NB_MUX_AUTH_LEN];
        nb_mux_auth_mac(mac, s->key, NB_MUX_ROLE_HOST, hh, hg);
        int r = nb_mux_enc_frame(&s->ctlq, NB_MUX_AUTH, 0, 0, mac, sizeof mac);
        sodium_memzero(mac, sizeof mac);
        if (nb_mxs_ctl_frame_result(s, r) < 0)
            return;
    }
    established(s);
}

/* ---------------------------------------------------------- stream state */

void nb_mxs_update_ready(nb_muxsess_stream_t *st)
{
    nb_muxsess_t *s = st->s;
    if (nb_mxs_stream_ready(st)) {
        nb_mxs_ready_add(s, st);
        nb_mxs_schedule_flush(s);
    } else {
        nb_mxs_ready_del(s, st);
    }
}

void nb_muxsess_stream_reject(nb_muxsess_stream_t *st, uint32_t code, const char *msg)
{
    nb_muxsess_t *s = st->s;
    if (st->state != ST_PENDING) {
        nb_muxsess_stream_reset(st, code, msg);
        return;
    }
    if (s->conn) {
        s->stats.opens_refused++;
        nb_mxs_ctl_frame_result(s, nb_mux_enc_code(&s->ctlq, NB_MUX_OPEN_ERR, st->id, code, msg));
    }
    nb_mxs_stream_finish(st, 0, code, NULL, 0);
}

void nb_muxsess_stream_reset(nb_muxsess_stream_t *st, uint32_t code, const char *msg)
{
    nb_muxsess_t *s = st->s;
    if (st->state == ST_DEAD)
        return;
    if (st->state == ST_PENDING) {
        nb_muxsess_stream_reject(st, code, msg);
        return;
    }
    if (s->conn)
        nb_mxs_ctl_frame_result(s, nb_mux_enc_code(&s->ctlq, NB_MUX_RST, st->id, code, msg));
    nb_mxs_stream_finish(st, 0, code, NULL, 0);
}

void nb_muxsess_stream_consume(nb_muxsess_stream_t *st, size_t n)
{
    nb_muxsess_t *s = st->s;
    if (st->state == ST_DEAD)
        return;
    if (n > st->unconsumed)
        n = st->unconsumed;
    st->unconsumed -= n;
    s->unconsumed -= n;
    if (!st->fin_recv) {
        st->consumed_pending += (uint32_t)n;
        if (st->consumed_pending >= st->window / 4) {
            nb_mxs_wlist_add(s, st);
            nb_mxs_schedule_flush(s);
        }
    }
    if (s->conn && !s->conn->reading)
        nb_mxs_schedule_flush(s); /* on_prep re-checks the read budget */
}

/* -------------------------------------------------------------- writing */

/* Adds one frame of stream st to w. Returns 0 when w has no room left. */
static int emit_stream(nb_muxsess_t *s, wreq_t *w, nb_muxsess_stream_t *st)
{
    if (w->nhdr >= WREQ_FRAMES || w->nbufs + 2 > WREQ_BUFS)
        return 0;
    uint8_t *hdr = w->hdr[w->nhdr++];
    unsigned hbuf = w->nbufs++;
    struct chunk *c = st->qhead;
    if (!c) { /* only FIN left */
        nb_mux_put_hdr(hdr, NB_MUX_FIN, 0, st->id, 0);
        w->bufs[hbuf] = uv_buf_init((char *)hdr, NB_MUX_HDR_LEN);
        w->bytes += NB_MUX_HDR_LEN;
        st->fin_sent = 1;
        return 1;
    }
    uint8_t chan = c->chan;
    size_t total = 0;
    size_t limit = st->send_credit < NB_MUX_MAX_PAYLOAD ? st->send_credit : NB_MUX_MAX_PAYLOAD;
    while (c && c->chan == chan && total < limit && w->nbufs < WREQ_BUFS) {
        size_t take = c->len - c->off;
        if (take > limit - total)
            take = limit - total;
        w->bufs[w->nbufs++] = uv_buf_init((char *)c->p + c->off, (unsigned)take);
        c->refs++;
        w->ref[w->nref++] = c;
        c->off += take;
        total += take;
        if (c->off == c->len) {
            st->qhead = c->next;
            if (!st->qhead)
                st->qtail = NULL;
            nb_mxs_chunk_unref(c);
            c = st->qhead;
            if (chan == NB_MUX_CHAN_CTL)
                break; /* one CTL message per frame */
        } else {
            break;
        }
    }
    nb_mux_put_hdr(hdr, NB_MUX_DATA, chan, st->id, (uint32_t)total);
    w->bufs[hbuf] = uv_buf_init((char *)hdr, NB_MUX_HDR_LEN);
    w->bytes += NB_MUX_HDR_LEN + total;
    st->send_credit -= (uint32_t)total;
    st->queued -= total;
    s->queued -= total;
    return 1;
}

static void flush_once(nb_muxsess_t *s);

/* Writers woken by on_drain usually queue more at once; framing it in the
 * same pass (while the transport takes it without blocking) saves a loop
 * iteration per refill. */
void nb_mxs_flush(nb_muxsess_t *s)
{
    for (int i = 0; i < 8; i++) {
        struct conn *c = s->conn;
        uint64_t before = s->stats.bytes_out;
        flush_once(s);
        c = s->conn;
        if (!c || c->closing || c->writes || s->stats.bytes_out == before ||
            !(s->rhead || s->ctlq.len))
            break;
    }
}

static void flush_once(nb_muxsess_t *s)
{
    struct conn *c = s->conn;
    if (!c || c->closing)
        return;
    /* The transport is full: on_write calls us again. Not queueing more
     * requests keeps their memory bounded however small the frames are
     * (a PING flood would otherwise cost one request per read). */
    if (c->writes >= MAX_WREQS)
        return;
    /* Credit returns ride in the control section. */
    nb_muxsess_stream_t *st;
    while ((st = s->whead)) {
        nb_mxs_wlist_del(s, st);
        if (st->consumed_pending && !st->fin_recv) {
            uint32_t inc = st->consumed_pending;
            /* Auto-tuning: an application that keeps up (holds little
             * unconsumed) lets the peer run further ahead, which one
             * fast stream needs to fill the transport. A stream that is
             * not read never gets here and stays at W. */
            if (st->window < WINDOW_MAX && st->unconsumed < st->window / 4 &&
                s->unconsumed < s->o.recv_budget / 4) {
                inc += st->window;
                st->window *= 2;
            }
            if (nb_mux_enc_window(&s->ctlq, st->id, inc) < 0) {
                nb_mxs_teardown(s, NB_ETOOBIG, NB_MUX_E_INTERNAL, 0, "control queue full");
                return;
            }
            st->recv_credit += inc;
            st->consumed_pending = 0;
        }
    }
    nb_muxsess_stream_t *closes = NULL, *drains = NULL;
    while (c->writes < MAX_WREQS && (s->ctlq.len || (s->rhead && c->inflight < WRITE_HIWAT))) {
        wreq_t *w = nb_mxs_wreq_get(s, c);
        if (!w) {
            nb_mxs_teardown(s, -ENOMEM, NB_MUX_E_INTERNAL, 0, "out of memory");
            return;
        }
        if (s->ctlq.len) {
            w->ctl = s->ctlq; /* the request owns the bytes now */
            nb_buf_init(&s->ctlq, w->ctl.max);
            w->bufs[w->nbufs++] = uv_buf_init((char *)w->ctl.p, (unsigned)w->ctl.len);
            w->bytes += w->ctl.len;
        }
        while (s->rhead && c->inflight + w->bytes < WRITE_HIWAT) {
            st = s->rhead;
            nb_mxs_ready_del(s, st);
            if (!emit_stream(s, w, st)) {
                nb_mxs_ready_add(s, st);
                break;
            }
            if (st->fin_sent && st->fin_recv) {
                st->nnext = closes;
                closes = st;
            } else {
                nb_mxs_update_ready(st);
            }
            /* Under session pressure a stream still moves one chunk at a
             * time (queue empty), so streams stuck at zero credit holding
             * the budget cannot stall the others. */
            if (st->want_drain && st->queued <= s->o.stream_send_hiwat / 2 &&
                (st->queued == 0 || !s->send_blocked || s->queued <= s->o.send_budget / 2)) {
                st->want_drain = 0;
                st->nnext = drains;
                drains = st;
            }
        }
        if (w->nbufs == 0) {
            nb_mxs_wreq_put(s, w);
            break;
        }
        int r = nb_mxs_submit(s, c, w);
        if (r < 0) {
            nb_mxs_teardown(s, r, NB_MUX_E_SHUTDOWN, 0, "write to the peer failed: %s",
                            uv_strerror(r));
            return;
        }
    }
    /* The session fell back under its budget: wake every paused writer
     * (also those with nothing queued, which the loop above never sees). */
    if (s->send_blocked && s->queued <= s->o.send_budget / 2) {
        s->send_blocked = 0;
        for (st = s->all; st; st = st->anext) {
            if (st->want_drain && st->queued <= s->o.stream_send_hiwat / 2) {
                st->want_drain = 0;
                st->nnext = drains;
                drains = st;
            }
        }
    }
    /* Application callbacks last: they may write, reset or tear down. */
    while ((st = closes)) {
        closes = st->nnext;
        if (st->state != ST_DEAD && st->fin_sent && st->fin_recv)
            nb_mxs_stream_finish(st, 0, NB_MUX_E_NONE, "", 1);
    }
    while ((st = drains)) {
        drains = st->nnext;
        if (st->state != ST_DEAD && st->cbs && st->cbs->on_drain)
            st->cbs->on_drain(st, st->ud);
    }
}

void nb_mxs_update_read(nb_muxsess_t *s)
{
    struct conn *c = s->conn;
    if (!c || c->closing)
        return;
    int budget_ok = s->unconsumed <= s->o.recv_budget;
    /* Only what the peer provokes counts (PONGs, OPEN_ERRs...): our own
     * data is bounded by the scheduler, and with at most MAX_WREQS
     * requests queued, unsent control frames pile up in ctlq. */
    int out_ok = s->ctlq.len <= s->o.ctl_queue_max;
    if (budget_ok && out_ok) {
        if (!c->reading) {
            /* Reads paused by our own application do not count as silence. */
            if (s->paused_local)
                s->last_rx = now_ms(s);
            s->paused_local = 0;
            if (uv_read_start((uv_stream_t *)&c->pipe, nb_mxs_on_alloc, nb_mxs_on_read) == 0)
                c->reading = 1;
        }
    } else if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = 0;
        s->paused_local = !budget_ok;
    }
}

void nb_mxs_on_prep(uv_prepare_t *h)
{
    nb_muxsess_t *s = h->data;
    enter(s);
    nb_mxs_flush(s);
    nb_mxs_update_read(s);
    struct conn *c = s->conn;
    if (!(c && (s->ctlq.len || s->whead || (s->rhead && c->inflight < WRITE_HIWAT))))
        uv_prepare_stop(&s->prep);
    nb_mxs_leave(s);
}

/* --------------------------------------------------------------- frames */

/* Live stream for a non-OPEN frame, or NULL. *ignore is set when the id
 * belongs to a stream that existed earlier (frames can cross an RST). */
static nb_muxsess_stream_t *find_stream(nb_muxsess_t *s, const nb_mux_hdr_t *h, int *ignore)
{
    *ignore = 0;
    nb_muxsess_stream_t *st = hash_get(s, h->sid);
    if (st)
        return st;
    int mine_odd = s->o.role == NB_MUX_ROLE_HOST;
    int id_odd = h->sid & 1;
    if (id_odd == mine_odd ? h->sid < s->next_local_id : h->sid <= s->last_peer_id) {
        *ignore = 1;
        return NULL;
    }
    nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "%s for stream %u that was never opened",
                       nb_mux_type_name(h->type), h->sid);
    return NULL;
}

static void esc_msg(char *out, size_t outsz, nb_iov_t msg)
{
    nb_log_escape(out, outsz, msg.p, msg.len);
}

static void reject_open(nb_muxsess_t *s, uint32_t sid, uint32_t code, const char *msg)
{
    s->stats.opens_refused++;
    nb_mxs_ctl_frame_result(s, nb_mux_enc_code(&s->ctlq, NB_MUX_OPEN_ERR, sid, code, msg));
}

static void on_open_frame(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    uint32_t sid = ev->hdr.sid;
    int peer_odd = s->o.role == NB_MUX_ROLE_GUEST;
    if ((int)(sid & 1) != peer_odd) {
        nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "OPEN with stream id %u of the wrong parity", sid);
        return;
    }
    if (sid <= s->last_peer_id) {
        nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "stream id reuse: OPEN %u after %u", sid,
                           s->last_peer_id);
        return;
    }
    s->last_peer_id = sid;
    s->stats.opens_in++;

    uint64_t now = now_ms(s), cap = (uint64_t)s->o.open_burst * 1000;
    s->tokens += (now - s->t_tokens) * s->o.open_rate;
    if (s->tokens > cap)
        s->tokens = cap;
    s->t_tokens = now;
    if (s->tokens < 1000) {
        nb_mxs_proto_error(s, NB_MUX_E_FLOOD,
                           "OPEN flood: more than %u OPENs per second (burst %u)", s->o.open_rate,
                           s->o.open_burst);
        return;
    }
    s->tokens -= 1000;

    nb_iov_t svc, args;
    (void)nb_mux_parse_open(ev->payload, &svc, &args);
    if (s->nstreams >= s->o.max_streams) {
        reject_open(s, sid, NB_MUX_E_LIMIT, "too many open streams");
        return;
    }
    if (!s->o.on_open) {
        reject_open(s, sid, NB_MUX_E_NO_SERVICE, "no such service");
        return;
    }
    nb_muxsess_stream_t *st = nb_mxs_stream_new(s, sid, 0, ST_PENDING);
    if (!st) {
        reject_open(s, sid, NB_MUX_E_BUSY, "out of memory");
        return;
    }
    char name[NB_MUX_SERVICE_MAX + 1];
    memcpy(name, svc.p, svc.len);
    name[svc.len] = 0;
    int r = s->o.on_open(s, st, name, args, s->o.ud);
    if (r < 0 && st->state == ST_PENDING)
        nb_muxsess_stream_reject(st, nb_mux_err_to_code(r), nb_strerror(r));
}

static void on_data_piece(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    nb_muxsess_stream_t *st;
    int ignore;
    if (ev->offset == 0) {
        st = find_stream(s, &ev->hdr, &ignore);
        s->cur_ignore = st == NULL;
        if (!st)
            return;
        if (st->state != ST_OPEN) {
            nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "DATA on stream %u before it was accepted",
                               st->id);
            return;
        }
        if (st->fin_recv) {
            nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "DATA on stream %u after FIN", st->id);
            return;
        }
        if (ev->hdr.len > st->recv_credit) {
            nb_mxs_proto_error(s, NB_MUX_E_FLOW,
                               "DATA of %u bytes on stream %u exceeds its credit (%u)", ev->hdr.len,
                               st->id, st->recv_credit);
            return;
        }
        st->recv_credit -= ev->hdr.len;
    } else {
        if (s->cur_ignore)
            return;
        st = hash_get(s, ev->hdr.sid);
        if (!st) { /* reset by the application between pieces */
            s->cur_ignore = 1;
            return;
        }
    }
    size_t n = ev->payload.len;
    st->unconsumed += n;
    s->unconsumed += n;
    if (st->cbs && st->cbs->on_data)
        st->cbs->on_data(st, ev->hdr.flags, ev->payload, st->ud);
    if (st->state != ST_DEAD && (!st->cbs || !st->cbs->on_data || st->cbs->auto_consume))
        nb_muxsess_stream_consume(st, n);
}

static void handle(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    const nb_mux_hdr_t *h = &ev->hdr;
    nb_muxsess_stream_t *st;
    int ignore;
    char msg[NB_MUX_MSG_MAX * 4 + 8];
    uint32_t code;
    nb_iov_t m;

    if (h->type == NB_MUX_GOAWAY) { /* accepted in every state: it carries the reason */
        (void)nb_mux_parse_code(ev->payload, &code, &m);
        esc_msg(msg, sizeof msg, m);
        nb_mxs_teardown(s, code == NB_MUX_E_NONE ? NB_ECLOSED : nb_mux_code_to_err(code), code, 0,
                        "peer sent GOAWAY %s: %s", nb_mux_code_name(code), msg);
        return;
    }
    switch (s->state) {
    case S_HS_HELLO:
        nb_mxs_hs_hello(s, ev);
        return;
    case S_HS_AUTH:
        nb_mxs_hs_auth(s, ev);
        return;
    case S_UP:
        break;
    default:
        return;
    }
    switch (h->type) {
    case NB_MUX_OPEN:
        on_open_frame(s, ev);
        return;
    case NB_MUX_DATA:
        on_data_piece(s, ev);
        return;
    case NB_MUX_PING:
        nb_mxs_ctl_frame_result(
            s, nb_mux_enc_frame(&s->ctlq, NB_MUX_PONG, 0, 0, ev->payload.p, ev->payload.len));
        return;
    case NB_MUX_PONG:
        return; /* any frame proves liveness */
    default:
        break;
    }
    if (!(st = find_stream(s, h, &ignore)))
        return;
    switch (h->type) {
    case NB_MUX_OPEN_OK:
        if (!st->local || st->state != ST_OPENING) {
            nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "unexpected OPEN_OK on stream %u", st->id);
            return;
        }
        st->state = ST_OPEN;
        st->send_credit = NB_MUX_INITIAL_WINDOW;
        if (st->cbs && st->cbs->on_open_ok)
            st->cbs->on_open_ok(st, st->ud);
        if (st->state != ST_DEAD)
            nb_mxs_update_ready(st);
        return;
    case NB_MUX_OPEN_ERR:
        if (!st->local || st->state != ST_OPENING) {
            nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "unexpected OPEN_ERR on stream %u", st->id);
            return;
        }
        (void)nb_mux_parse_code(ev->payload, &code, &m);
        esc_msg(msg, sizeof msg, m);
        nb_mxs_stream_finish(st, nb_mux_code_to_err(code), code, msg, 1);
        return;
    case NB_MUX_WINDOW: {
        if (st->state != ST_OPEN) {
            nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "WINDOW on stream %u before it was accepted",
                               st->id);
            return;
        }
        uint32_t inc = nb_mux_parse_u32(ev->payload);
        if ((uint64_t)st->send_credit + inc > NB_MUX_MAX_CREDIT) {
            nb_mxs_proto_error(s, NB_MUX_E_FLOW, "WINDOW on stream %u raises its credit above %u",
                               st->id, NB_MUX_MAX_CREDIT);
            return;
        }
        st->send_credit += inc;
        nb_mxs_update_ready(st);
        return;
    }
    case NB_MUX_FIN:
        if (st->state != ST_OPEN || st->fin_recv) {
            nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "unexpected FIN on stream %u", st->id);
            return;
        }
        st->fin_recv = 1;
        nb_mxs_wlist_del(s, st);
        if (st->cbs && st->cbs->on_fin)
            st->cbs->on_fin(st, st->ud);
        if (st->state != ST_DEAD && st->fin_sent)
            nb_mxs_stream_finish(st, 0, NB_MUX_E_NONE, "", 1);
        return;
    case NB_MUX_RST:
        (void)nb_mux_parse_code(ev->payload, &code, &m);
        esc_msg(msg, sizeof msg, m);
        nb_mxs_stream_finish(st, code == NB_MUX_E_NONE ? -ECANCELED : nb_mux_code_to_err(code),
                             code, msg[0] ? msg : "reset by the peer", 1);
        return;
    default:
        nb_mxs_proto_error(s, NB_MUX_E_PROTOCOL, "unexpected %s frame", nb_mux_type_name(h->type));
        return;
    }
}

static void process(nb_muxsess_t *s, struct conn *c, const uint8_t *p, size_t n)
{
    nb_iov_t in = nb_iov(p, n);
    nb_mux_ev_t ev;
    while (s->conn == c) {
        int r = nb_mux_dec_next(&s->dec, &in, &ev);
        if (r == 0)
            break;
        if (r < 0) {
            uint32_t code = s->dec.err_code ? s->dec.err_code : NB_MUX_E_PROTOCOL;
            if (s->state != S_UP)
                nb_mxs_proto_error(s, code, "garbage or unexpected frame before authentication: %s",
                                   nb_mux_dec_error(&s->dec));
            else
                nb_mxs_proto_error(s, code, "malformed frame: %s", nb_mux_dec_error(&s->dec));
            break;
        }
        handle(s, &ev);
    }
}

void nb_mxs_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct conn *c = h->data;
    nb_muxsess_t *s = c->s;
    (void)suggested;
    if (!s->rbuf)
        s->rbuf = malloc(RBUF_SIZE);
    *b = uv_buf_init((char *)s->rbuf, s->rbuf ? RBUF_SIZE : 0);
}

void nb_mxs_on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = h->data;
    nb_muxsess_t *s = c->s;
    if (c != s->conn)
        return;
    enter(s);
    if (n < 0) {
        const char *when = s->state == S_UP ? "" : " during the handshake";
        if (n == UV_EOF)
            nb_mxs_teardown(s, NB_ECLOSED, NB_MUX_E_SHUTDOWN, 0, "the peer closed the connection%s",
                            when);
        else
            nb_mxs_teardown(s, (int)n, NB_MUX_E_SHUTDOWN, 0, "read error%s: %s", when,
                            uv_strerror((int)n));
    } else if (n > 0) {
        s->last_rx = now_ms(s);
        s->stats.bytes_in += (uint64_t)n;
        process(s, c, (const uint8_t *)b->base, (size_t)n);
        /* A virtio-serial port returns one guest buffer (a few KiB) per
         * read, and libuv goes back to polling after every short read:
         * drain what is already there in this turn (bounded). */
        uv_os_fd_t fd;
        for (int i = 0; i < 64 && s->conn == c && (size_t)n < RBUF_SIZE && s->rbuf &&
                        uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0;
             i++) {
            nb_mxs_update_read(s); /* the receive budget may say stop */
            if (!c->reading)
                break;
            ssize_t k = read(fd, s->rbuf, RBUF_SIZE);
            if (k <= 0)
                break; /* EAGAIN, or EOF/errors: libuv's next read reports them */
            s->stats.bytes_in += (uint64_t)k;
            process(s, c, s->rbuf, (size_t)k);
        }
        if (s->conn == c) {
            nb_mxs_flush(s);
            nb_mxs_update_read(s);
        }
    }
    nb_mxs_leave(s);
}

void nb_mxs_on_tick(uv_timer_t *t)
{
    nb_muxsess_t *s = t->data;
    enter(s);
    struct conn *c = s->conn;
    uint64_t now = now_ms(s);
    if (c && s->state != S_UP) {
        if (now - s->t_attach >= s->o.handshake_ms)
            nb_mxs_proto_error(s, NB_MUX_E_TIMEOUT, "handshake not completed within %u ms",
                               s->o.handshake_ms);
    } else if (c) {
        if (!c->reading && s->paused_local)
            s->last_rx = now;
        if (now - s->last_rx >= s->o.idle_ms) {
            nb_mxs_proto_error(s, NB_MUX_E_TIMEOUT, "nothing received from the peer for %u ms",
                               s->o.idle_ms);
        } else if (now - s->last_ping >= s->o.ping_ms) {
            uint8_t p[NB_MUX_PING_LEN];
            uint64_t v = ++s->ping_seq;
            for (int i = 0; i < NB_MUX_PING_LEN; i++)
                p[i] = (uint8_t)(v >> (56 - 8 * i));
            s->last_ping = now;
            nb_mxs_ctl_frame_result(s, nb_mux_enc_frame(&s->ctlq, NB_MUX_PING, 0, 0, p, sizeof p));
        }
    }
    nb_mxs_leave(s);
}
