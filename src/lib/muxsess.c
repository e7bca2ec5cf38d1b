/* nbmux session layer: lifecycle, transports, teardown, handshake. The
 * module map is in muxsess_int.h; invariants and states in
 * docs/internals/mux.md. */
#include "lib/muxsess.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/muxsess_int.h"

/* ---------------------------------------------------------------- misc */

void nb_muxsess_opts_default(nb_muxsess_opts_t *o, int role)
{
    memset(o, 0, sizeof *o);
    o->role = role;
    o->max_streams = 1024;
    o->recv_budget = 64u << 20;
    o->stream_send_max = 4u << 20;
    o->stream_send_hiwat = 256u << 10;
    o->send_budget = 16u << 20;
    o->ctl_queue_max = 1u << 20;
    o->open_rate = 1000;
    o->open_burst = 2000;
    o->handshake_ms = 10000;
    o->ping_ms = 10000;
    o->idle_ms = 30000;
}

static void stream_free_mem(nb_muxsess_stream_t *st)
{
    free(st);
}

static void sweep(nb_muxsess_t *s)
{
    nb_muxsess_stream_t *st;
    while ((st = s->grave)) {
        s->grave = st->gnext;
        stream_free_mem(st);
    }
}

static void pool_release(nb_muxsess_t *s)
{
    for (int k = 0; k < 2; k++) {
        struct chunk *c;
        while ((c = s->pool[k])) {
            s->pool[k] = c->next;
            free(c);
        }
        s->npool[k] = 0;
    }
}

static void really_free(nb_muxsess_t *s)
{
    sweep(s);
    wreq_t *w;
    while ((w = s->wfree)) {
        s->wfree = w->next;
        free(w);
    }
    pool_release(s);
    nb_mux_dec_free(&s->dec);
    nb_buf_free(&s->ctlq);
    free(s->rbuf);
    if (s->key)
        sodium_free(s->key);
    free(s);
}

static void maybe_free(nb_muxsess_t *s)
{
    if (s->freed && s->depth == 0 && s->nhandles == 0 && s->nconns == 0)
        really_free(s);
}

void nb_mxs_leave(nb_muxsess_t *s)
{
    if (--s->depth > 0)
        return;
    while (s->down_pending && !s->freed) {
        s->down_pending = 0;
        if (s->o.on_down) {
            s->depth++;
            s->o.on_down(s, s->down_err, s->down_reason, s->o.ud);
            s->depth--;
        }
    }
    sweep(s);
    maybe_free(s);
}

void nb_mxs_schedule_flush(nb_muxsess_t *s)
{
    if (!s->freed)
        uv_prepare_start(&s->prep, nb_mxs_on_prep);
}
/* ------------------------------------------------------------ transport */

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->nhandles > 0)
        return;
    nb_muxsess_t *s = c->s;
    free(c);
    s->nconns--;
    if (s->depth == 0)
        maybe_free(s);
}

void nb_mxs_conn_close(struct conn *c)
{
    if (c->handles_closed)
        return;
    c->handles_closed = 1;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    uv_close((uv_handle_t *)&c->linger, on_conn_closed);
}

static void on_linger(uv_timer_t *t)
{
    nb_mxs_conn_close(t->data);
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
        pool_release(s);
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

/* ------------------------------------------------------------------ API */

static void on_sess_handle_closed(uv_handle_t *h)
{
    nb_muxsess_t *s = h->data;
    s->nhandles--;
    if (s->depth == 0)
        maybe_free(s);
}

int nb_muxsess_new(uv_loop_t *loop, const nb_muxsess_opts_t *o, const uint8_t *key,
                   nb_muxsess_t **out)
{
    *out = NULL;
    if (!o || !key || (o->role != NB_MUX_ROLE_HOST && o->role != NB_MUX_ROLE_GUEST) ||
        !o->max_streams || !o->stream_send_max || !o->send_budget || !o->open_rate ||
        !o->open_burst || !o->handshake_ms || !o->ping_ms || !o->idle_ms)
        return NB_EINVAL;
    if (sodium_init() < 0)
        return NB_ECRYPTO;
    nb_muxsess_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->o = *o;
    if (!(s->key = sodium_malloc(NB_MUX_KEY_LEN))) {
        free(s);
        return -ENOMEM;
    }
    memcpy(s->key, key, NB_MUX_KEY_LEN);
    nb_mux_dec_init(&s->dec);
    nb_buf_init(&s->ctlq, o->ctl_queue_max + CTLQ_SLACK);
    uint64_t m = o->handshake_ms;
    if (o->ping_ms < m)
        m = o->ping_ms;
    if (o->idle_ms < m)
        m = o->idle_ms;
    m /= 4;
    s->tick_ms = m < 5 ? 5 : m > 1000 ? 1000 : m;
    uv_timer_init(loop, &s->tick);
    uv_prepare_init(loop, &s->prep);
    s->tick.data = s->prep.data = s;
    s->nhandles = 2;
    *out = s;
    return 0;
}

int nb_muxsess_attach_fd(nb_muxsess_t *s, int fd)
{
    int r;
    if (s->freed || s->conn) {
        close(fd);
        return NB_ESTATE;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->s = s;
    uv_pipe_init(s->loop, &c->pipe, 0);
    uv_timer_init(s->loop, &c->linger);
    c->pipe.data = c->linger.data = c;
    c->nhandles = 2;
    s->nconns++;
    /* Larger socket buffers mean fewer wakeups per byte on a busy channel
     * (best effort: the kernel caps them at wmem_max; a character device
     * is not a socket and just says so). */
    int sz = SOCK_BUF;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    if ((r = uv_pipe_open(&c->pipe, fd)) < 0) {
        close(fd);
        nb_mxs_conn_close(c);
        return r;
    }
    s->conn = c;
    s->conn_id = nb_log_next_conn_id();
    s->state = S_HS_HELLO;
    nb_mux_dec_allow(&s->dec, NB_MUX_T(NB_MUX_HELLO) | NB_MUX_T(NB_MUX_GOAWAY));
    s->t_attach = s->last_rx = now_ms(s);
    if (s->o.role == NB_MUX_ROLE_HOST) {
        uint8_t nonce[NB_MUX_NONCE_LEN];
        randombytes_buf(nonce, sizeof nonce);
        nb_mux_put_hello(s->hello_mine, NB_MUX_ROLE_HOST, 0, nonce);
        if ((r = nb_mux_enc_frame(&s->ctlq, NB_MUX_HELLO, 0, 0, s->hello_mine, NB_MUX_HELLO_LEN)) <
            0) {
            enter(s);
            nb_mxs_teardown(s, r, NB_MUX_E_INTERNAL, 0, "cannot queue HELLO");
            nb_mxs_leave(s);
            return r;
        }
    }
    if ((r = uv_read_start((uv_stream_t *)&c->pipe, nb_mxs_on_alloc, nb_mxs_on_read)) < 0) {
        enter(s);
        nb_mxs_teardown(s, r, NB_MUX_E_INTERNAL, 0, "cannot read the transport: %s",
                        uv_strerror(r));
        nb_mxs_leave(s);
        return r;
    }
    c->reading = 1;
    uv_timer_start(&s->tick, nb_mxs_on_tick, s->tick_ms, s->tick_ms);
    nb_mxs_schedule_flush(s);
    return 0;
}

void nb_muxsess_close(nb_muxsess_t *s, uint32_t code, const char *msg)
{
    if (!s || !s->conn)
        return;
    /* No nb_mxs_leave(): on_down is delivered by nb_mxs_on_prep (scheduled by nb_mxs_teardown),
     * never from inside this call. */
    s->depth++;
    nb_mxs_teardown(s, code == NB_MUX_E_NONE ? NB_ECLOSED : nb_mux_code_to_err(code), code, 1, "%s",
                    msg ? msg : "closed locally");
    s->depth--;
}

void nb_muxsess_free(nb_muxsess_t *s)
{
    if (!s || s->freed)
        return;
    enter(s);
    nb_mxs_teardown(s, NB_ECLOSED, NB_MUX_E_SHUTDOWN, 1, "session closed");
    s->freed = 1;
    s->down_pending = 0;
    uv_close((uv_handle_t *)&s->tick, on_sess_handle_closed);
    uv_close((uv_handle_t *)&s->prep, on_sess_handle_closed);
    nb_mxs_leave(s);
}

int nb_muxsess_is_up(const nb_muxsess_t *s)
{
    return s && s->conn && s->state == S_UP;
}

void nb_muxsess_stats(const nb_muxsess_t *s, nb_muxsess_stats_t *out)
{
    *out = s->stats;
    out->streams = s->nstreams;
    out->unconsumed = s->unconsumed;
    out->queued = s->queued;
    out->ctl_queued = s->ctlq.len;
    out->inflight = s->conn ? s->conn->inflight : 0;
}
