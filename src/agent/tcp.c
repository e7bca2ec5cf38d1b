/* The `tcp` service: a connection to a port on the guest's loopback
 * (protocol.md §6). OPEN_OK only once connected. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/json.h"

typedef struct {
    nb_agent_t *a;
    nb_muxsess_stream_t *st; /* NULL once the stream closed */
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_shutdown_t shut;
    int connected, closing, shutting, paused, eof;
    unsigned writes;
} tcp_t;

typedef struct {
    uv_write_t req;
    tcp_t *t;
    size_t n;
    char data[];
} tcp_write_t;

static void on_closed(uv_handle_t *h)
{
    tcp_t *t = h->data;
    t->a->live--;
    free(t);
}

static void close_tcp(tcp_t *t)
{
    if (t->closing)
        return;
    t->closing = 1;
    uv_close((uv_handle_t *)&t->tcp, on_closed);
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    tcp_t *t = h->data;
    if (n > 0 && t->st) {
        if (nb_muxsess_stream_write_owned(t->st, NB_MUX_CHAN_STDIO, b->base, (size_t)n, free) < 0) {
            nb_muxsess_stream_reset(t->st, NB_MUX_E_INTERNAL, "queue overflow");
            t->st = NULL;
            close_tcp(t);
            return;
        }
        if (!nb_muxsess_stream_writable(t->st)) {
            t->paused = 1;
            uv_read_stop(h);
        }
        return;
    }
    free(b->base);
    if (n == 0)
        return;
    uv_read_stop(h);
    t->eof = 1;
    if (!t->st)
        return;
    if (n == UV_EOF) {
        nb_muxsess_stream_fin(t->st);
    } else {
        char why[96];
        snprintf(why, sizeof why, "read: %s", uv_strerror((int)n));
        nb_muxsess_stream_reset(t->st, NB_MUX_E_FAILED, why);
        t->st = NULL;
        close_tcp(t);
    }
}

static void on_drain(nb_muxsess_stream_t *st, void *ud)
{
    tcp_t *t = ud;
    if (t->paused && !t->eof && !t->closing) {
        t->paused = 0;
        uv_read_start((uv_stream_t *)&t->tcp, nb_agent_alloc, on_read);
    }
}

static void on_written(uv_write_t *req, int status)
{
    tcp_write_t *w = (tcp_write_t *)req;
    tcp_t *t = w->t;
    t->writes--;
    if (t->st)
        nb_muxsess_stream_consume(t->st, w->n);
    free(w);
    if (status < 0 && t->st && status != UV_ECANCELED) {
        nb_muxsess_stream_reset(t->st, NB_MUX_E_FAILED, "write to the guest port failed");
        t->st = NULL;
        close_tcp(t);
    }
}

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    tcp_t *t = ud;
    if (chan != NB_MUX_CHAN_STDIO || t->shutting || t->closing) {
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    tcp_write_t *w = malloc(sizeof *w + d.len);
    if (!w) {
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    w->t = t;
    w->n = d.len;
    memcpy(w->data, d.p, d.len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)d.len);
    if (uv_write(&w->req, (uv_stream_t *)&t->tcp, &b, 1, on_written) < 0) {
        free(w);
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    t->writes++;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    tcp_t *t = req->data;
    t->shutting = 2;
    if (!t->st)
        close_tcp(t); /* the stream already closed cleanly */
}

static void on_fin(nb_muxsess_stream_t *st, void *ud)
{
    tcp_t *t = ud;
    /* shutdown(SHUT_WR) after the queued writes. */
    t->shut.data = t;
    if (!t->closing && uv_shutdown(&t->shut, (uv_stream_t *)&t->tcp, on_shutdown) == 0)
        t->shutting = 1;
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    tcp_t *t = ud;
    t->st = NULL;
    /* After a clean close, let a pending shutdown finish its writes. */
    if (err == 0 && t->shutting == 1)
        return;
    close_tcp(t);
}

static const nb_muxsess_stream_cbs_t tcp_cbs = {
    .on_data = on_data, .on_fin = on_fin, .on_drain = on_drain, .on_close = on_close};

static void on_pending_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg,
                             void *ud)
{
    tcp_t *t = ud;
    t->st = NULL; /* the host gave up while we were connecting */
    close_tcp(t);
}

static const nb_muxsess_stream_cbs_t pending_cbs = {.on_close = on_pending_close};

static void on_connect(uv_connect_t *req, int status)
{
    tcp_t *t = req->data;
    if (!t->st) /* cancelled: close_tcp already ran */
        return;
    if (status < 0) {
        char why[96];
        snprintf(why, sizeof why, "connect: %s", uv_strerror(status));
        nb_muxsess_stream_reject(t->st, NB_MUX_E_FAILED, why);
        t->st = NULL;
        close_tcp(t);
        return;
    }
    nb_muxsess_stream_set_cbs(t->st, &tcp_cbs, t);
    if (nb_muxsess_stream_accept(t->st) < 0) {
        nb_muxsess_stream_reject(t->st, NB_MUX_E_INTERNAL, "accept failed");
        t->st = NULL;
        close_tcp(t);
        return;
    }
    t->connected = 1;
    uv_read_start((uv_stream_t *)&t->tcp, nb_agent_alloc, on_read);
}

int nb_agent_tcp_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args)
{
    json_t *j = NULL;
    char why[200];
    int r;
    if ((r = nb_agent_args_object(args, &j, why, sizeof why)) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, why);
        return 0;
    }
    json_int_t port = nb_json_int(j, "port", 0);
    const char *host = nb_json_str(j, "host");
    if (!host)
        host = "127.0.0.1";
    struct sockaddr_storage ss;
    int ok =
        port >= 1 && port <= 65535 &&
        ((!strcmp(host, "127.0.0.1") &&
          uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) == 0) ||
         (!strcmp(host, "::1") && uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) == 0));
    json_decref(j);
    if (!ok) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS,
                                 "need port 1..65535 and host 127.0.0.1 or ::1");
        return 0;
    }
    tcp_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->a = a;
    a->live++;
    uv_tcp_init(a->loop, &t->tcp);
    t->tcp.data = t;
    t->conn.data = t;
    t->st = st;
    nb_muxsess_stream_set_cbs(st, &pending_cbs, t);
    if ((r = uv_tcp_connect(&t->conn, &t->tcp, (struct sockaddr *)&ss, on_connect)) < 0) {
        snprintf(why, sizeof why, "connect: %s", uv_strerror(r));
        nb_muxsess_stream_reject(st, NB_MUX_E_FAILED, why);
        t->st = NULL;
        close_tcp(t);
    }
    return 0;
}
