/* nbmux session layer, top: the session API (options, create, attach a
 * transport, close, free, stats), on the protocol engine (muxsess_proto.c)
 * and the session's objects (muxsess_mem.c). The module map is in
 * muxsess_int.h; invariants and states in docs/internals/mux.md. */
#include "lib/muxsess.h"

#include <errno.h>
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

/* ------------------------------------------------------------------ API */

static void on_sess_handle_closed(uv_handle_t *h)
{
    nb_muxsess_t *s = h->data;
    s->nhandles--;
    if (s->depth == 0)
        nb_mxs_maybe_free(s);
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
