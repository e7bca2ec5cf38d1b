/* The `tcp` service: a connection to a port on the guest's loopback
 * (protocol.md §6), spliced to the stream. OPEN_OK only once connected. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/stream.h"

typedef struct {
    nb_agent_t *a;
    nb_stream_t *tcp, *mux;
    uv_connect_t conn;
    int closing, nclosed;
} tcp_t;

static void on_stream_closed(nb_stream_t *s, void *ud)
{
    tcp_t *t = ud;
    if (++t->nclosed < 2)
        return;
    t->a->live--;
    free(t);
}

/* Ends both sides; the mux stream with RST `code`/`why` unless code is 0
 * (then orderly, or already gone). */
static void close_both(tcp_t *t, int reset, uint32_t code, const char *why)
{
    if (t->closing)
        return;
    t->closing = 1;
    nb_stream_set_cbs(t->tcp, NULL, NULL, on_stream_closed, t);
    nb_stream_set_cbs(t->mux, NULL, NULL, on_stream_closed, t);
    if (code)
        nb_stream_mux_reset(t->mux, code, why);
    else
        nb_stream_close(t->mux, reset);
    nb_stream_close(t->tcp, 0);
}

static void on_done(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud)
{
    tcp_t *t = ud;
    char why[96];
    if (err == 0) {
        close_both(t, 0, 0, NULL);
    } else if (failed == t->tcp) {
        snprintf(why, sizeof why, "guest port: %s", uv_strerror(err));
        close_both(t, 1, NB_MUX_E_FAILED, why);
    } else {
        close_both(t, 1, err == NB_ETOOBIG ? NB_MUX_E_INTERNAL : 0, "queue overflow");
    }
}

/* The host gave up while we were connecting. */
static void on_pending_read(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud)
{
    free(p);
    if (n < 0)
        close_both(ud, 1, 0, NULL);
}

static void on_connect(uv_connect_t *req, int status)
{
    tcp_t *t = req->data;
    char why[96];
    if (t->closing) /* cancelled */
        return;
    if (status < 0) {
        snprintf(why, sizeof why, "connect: %s", uv_strerror(status));
        close_both(t, 1, NB_MUX_E_FAILED, why);
        return;
    }
    nb_splice_opts_t o = {.on_done = on_done, .ud = t};
    if (nb_muxsess_stream_accept(nb_stream_mux_stream(t->mux)) < 0 ||
        nb_stream_splice(t->tcp, t->mux, &o, NULL) < 0)
        close_both(t, 1, NB_MUX_E_INTERNAL, "accept failed");
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
    if ((r = nb_stream_mux_new(a->loop, st, NB_MUX_CHAN_STDIO, NULL, &t->mux)) < 0) {
        free(t);
        return r;
    }
    t->a = a;
    a->live++;
    if ((r = nb_stream_tcp_new(a->loop, &t->tcp)) < 0) {
        t->closing = 1;
        t->nclosed = 1;
        nb_stream_set_cbs(t->mux, NULL, NULL, on_stream_closed, t);
        nb_stream_mux_reset(t->mux, NB_MUX_E_INTERNAL, "out of memory");
        return 0;
    }
    t->conn.data = t;
    nb_stream_set_cbs(t->mux, on_pending_read, NULL, NULL, t);
    /* No Nagle on the guest leg either (the host sets it on the client's
     * socket): the agent writes whatever each DATA frame carries, so a
     * client's small writes arrive here as small writes, and a second one
     * held back until the server's delayed ACK (40 ms) would stall
     * write-write-read exchanges. libuv applies it when it creates the
     * socket in uv_tcp_connect. */
    uv_tcp_nodelay((uv_tcp_t *)nb_stream_uv_handle(t->tcp), 1);
    r = uv_tcp_connect(&t->conn, (uv_tcp_t *)nb_stream_uv_handle(t->tcp), (struct sockaddr *)&ss,
                       on_connect);
    if (r < 0) {
        snprintf(why, sizeof why, "connect: %s", uv_strerror(r));
        close_both(t, 1, NB_MUX_E_FAILED, why);
    }
    return 0;
}
