/* The host end of a VM's guest channel; see session.h. */
#include "daemon/vm/session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/transport.h"

#define RESP_MAX (64u * 1024u) /* a ctl answer; ours are a few hundred bytes */
#define VMCHAN_HANDSHAKE_MS 600000u

typedef struct op op_t;

struct nb_vmchan {
    uv_loop_t *loop;
    nb_muxsess_t *sess;
    int lfd;
    uv_poll_t lpoll;
    char path[108];
    nb_vmchan_cbs_t cbs;
    int up;
    uint32_t sessions;
    op_t *ops;
};

struct op {
    nb_vmchan_t *c; /* NULL once finished */
    op_t *next;
    nb_muxsess_stream_t *st;
    nb_vmchan_done_fn done;
    void *ud;
    nb_buf_t resp;
    int is_run;
    int exit_code;
    uv_timer_t timer;
};

/* ------------------------------------------------------------ helpers */

static void op_freed(uv_handle_t *h)
{
    op_t *o = h->data;
    nb_buf_free(&o->resp);
    free(o);
}

static void op_finish(op_t *o, int r)
{
    nb_vmchan_t *c = o->c;
    if (!c)
        return;
    for (op_t **pp = &c->ops; *pp; pp = &(*pp)->next) {
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    }
    o->c = NULL;
    o->st = NULL;
    uv_timer_stop(&o->timer);
    json_t *res = NULL;
    if (r == 0 && !o->is_run) {
        if (nb_json_parse(nb_buf_iov(&o->resp), &res, NULL, 0) < 0 || !json_is_object(res))
            r = NB_EPROTO;
    }
    o->done(o->ud, r, res, o->exit_code);
    json_decref(res);
    uv_close((uv_handle_t *)&o->timer, op_freed);
}

static void op_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    op_t *o = ud;
    if (o->is_run) {
        if (chan != NB_MUX_CHAN_CTL)
            return;
        json_t *m = NULL;
        if (nb_json_parse(d, &m, NULL, 0) == 0) {
            json_t *e = json_object_get(m, "exit"), *s = json_object_get(m, "signal");
            if (json_is_integer(e))
                o->exit_code = (int)json_integer_value(e);
            else if (json_is_integer(s))
                o->exit_code = 128 + (int)json_integer_value(s);
        }
        json_decref(m);
        return;
    }
    if (chan == NB_MUX_CHAN_STDIO && nb_buf_append(&o->resp, d.p, d.len) < 0) {
        nb_muxsess_stream_reset(st, NB_MUX_E_LIMIT, "answer too long");
        op_finish(o, NB_ETOOBIG);
    }
}

static void op_fin(nb_muxsess_stream_t *st, void *ud)
{
    nb_muxsess_stream_fin(st); /* nothing more to send either */
}

static void op_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    op_t *o = ud;
    if (err)
        nb_log(NB_LOG_DEBUG, "vm channel helper stream closed: %s (%s)", nb_errname(err), msg);
    op_finish(o,
              err == 0 ? 0 : (err == NB_ECLOSED || code == NB_MUX_E_SHUTDOWN ? NB_ECLOSED : err));
}

static const nb_muxsess_stream_cbs_t op_cbs = {
    .on_data = op_data, .on_fin = op_fin, .on_close = op_close, .auto_consume = 1};

static void op_timeout(uv_timer_t *t)
{
    op_t *o = t->data;
    if (o->st)
        nb_muxsess_stream_reset(o->st, NB_MUX_E_CANCEL, "timed out");
    op_finish(o, NB_ETIMEOUT);
}

static int op_start(nb_vmchan_t *c, const char *service, json_t *args, int is_run,
                    uint64_t timeout_ms, nb_vmchan_done_fn done, void *ud)
{
    if (!c || !c->up || !done)
        return NB_ESTATE;
    char *js = json_dumps(args, JSON_COMPACT);
    if (!js)
        return -ENOMEM;
    op_t *o = calloc(1, sizeof *o);
    if (!o) {
        free(js);
        return -ENOMEM;
    }
    nb_buf_init(&o->resp, RESP_MAX);
    o->done = done;
    o->ud = ud;
    o->is_run = is_run;
    o->exit_code = -1;
    int r = nb_muxsess_open(c->sess, service, nb_iov(js, strlen(js)), &op_cbs, o, &o->st);
    free(js);
    if (r == 0 && !is_run)
        r = nb_muxsess_stream_fin(o->st); /* a ctl call sends no content */
    if (r < 0) {
        if (o->st)
            nb_muxsess_stream_reset(o->st, NB_MUX_E_CANCEL, "cancelled");
        nb_buf_free(&o->resp);
        free(o);
        return r;
    }
    uv_timer_init(c->loop, &o->timer);
    o->timer.data = o;
    if (timeout_ms)
        uv_timer_start(&o->timer, op_timeout, timeout_ms, 0);
    o->c = c;
    o->next = c->ops;
    c->ops = o;
    return 0;
}

int nb_vmchan_ctl(nb_vmchan_t *c, json_t *args, uint64_t timeout_ms, nb_vmchan_done_fn done,
                  void *ud)
{
    return op_start(c, "ctl", args, 0, timeout_ms, done, ud);
}

int nb_vmchan_run(nb_vmchan_t *c, const char *const *argv, uint64_t timeout_ms,
                  nb_vmchan_done_fn done, void *ud)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && argv[i]; i++)
        json_array_append_new(arr, json_string(argv[i]));
    json_t *args = json_pack("{s:o?, s:b}", "argv", arr, "stdin", 0);
    if (!args)
        return -ENOMEM;
    int r = op_start(c, "exec", args, 1, timeout_ms, done, ud);
    json_decref(args);
    return r;
}

/* ------------------------------------------------------------ session */

static void on_up(nb_muxsess_t *s, void *ud)
{
    nb_vmchan_t *c = ud;
    c->up = 1;
    c->sessions++;
    if (c->cbs.on_up)
        c->cbs.on_up(c, c->cbs.ud);
}

static void on_down(nb_muxsess_t *s, int err, const char *reason, void *ud)
{
    nb_vmchan_t *c = ud;
    int was_up = c->up;
    c->up = 0;
    if (c->cbs.on_down)
        c->cbs.on_down(c, err, reason, c->cbs.ud);
    (void)was_up;
}

/* Guest-opened streams (egress, dns) go to the owner's hook, if any. */
static int on_open(nb_muxsess_t *s, nb_muxsess_stream_t *st, const char *service, nb_iov_t args,
                   void *ud)
{
    nb_vmchan_t *c = ud;
    if (!c->cbs.on_open)
        return NB_EUNSUPPORTED;
    return c->cbs.on_open(c, st, service, args, c->cbs.ud);
}

static void on_accept(uv_poll_t *p, int status, int events)
{
    nb_vmchan_t *c = p->data;
    for (;;) {
        int fd = nb_transport_accept(c->lfd);
        if (fd < 0)
            return; /* -EAGAIN: none left */
        int r = nb_muxsess_attach_fd(c->sess, fd);
        if (r < 0)
            nb_log(NB_LOG_WARN, "vm channel %s: extra connection refused (%s)", c->path,
                   nb_strerror(r));
    }
}

int nb_vmchan_new(uv_loop_t *loop, const char *sock_path, const uint8_t *key,
                  const nb_vmchan_cbs_t *cbs, nb_vmchan_t **out)
{
    *out = NULL;
    if (strlen(sock_path) >= sizeof(((nb_vmchan_t *)0)->path))
        return NB_ETOOBIG;
    nb_vmchan_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->loop = loop;
    c->lfd = -1;
    snprintf(c->path, sizeof c->path, "%s", sock_path);
    if (cbs)
        c->cbs = *cbs;
    nb_muxsess_opts_t o;
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_HOST);
    /* QEMU connects as soon as it starts, long before the guest's agent
     * runs (a TCG boot takes seconds, more on a loaded host): our HELLO
     * waits in the socket (QEMU reads it only once the guest opened its
     * port). With the default 10 s the handshake timed out during slow
     * boots and only the reconnect a second later succeeded. The peer is
     * our own QEMU on a 0600 socket; the manager's boot deadline bounds
     * the wait. */
    o.handshake_ms = VMCHAN_HANDSHAKE_MS;
    o.on_up = on_up;
    o.on_down = on_down;
    o.on_open = on_open;
    o.ud = c;
    int r = nb_muxsess_new(loop, &o, key, &c->sess);
    if (r < 0)
        goto fail;
    c->lfd = nb_transport_listen_unix(sock_path, 4);
    if (c->lfd < 0) {
        r = c->lfd;
        c->lfd = -1;
        goto fail;
    }
    if ((r = uv_poll_init(loop, &c->lpoll, c->lfd)) < 0) {
        close(c->lfd);
        c->lfd = -1;
        goto fail;
    }
    c->lpoll.data = c;
    uv_poll_start(&c->lpoll, UV_READABLE, on_accept);
    *out = c;
    return 0;
fail:
    nb_muxsess_free(c->sess);
    free(c);
    return r;
}

static void on_lpoll_closed(uv_handle_t *h)
{
    nb_vmchan_t *c = h->data;
    close(c->lfd);
    free(c);
}

void nb_vmchan_free(nb_vmchan_t *c)
{
    if (!c)
        return;
    c->cbs.on_up = NULL;
    c->cbs.on_down = NULL;
    c->up = 0;
    unlink(c->path);
    /* Streams (and so the helpers) end inside this call. */
    nb_muxsess_free(c->sess);
    c->sess = NULL;
    while (c->ops)
        op_finish(c->ops, NB_ECLOSED);
    uv_poll_stop(&c->lpoll);
    uv_close((uv_handle_t *)&c->lpoll, on_lpoll_closed);
}

nb_muxsess_t *nb_vmchan_session(nb_vmchan_t *c)
{
    return c && c->up ? c->sess : NULL;
}

uint32_t nb_vmchan_sessions(const nb_vmchan_t *c)
{
    return c ? c->sessions : 0;
}
