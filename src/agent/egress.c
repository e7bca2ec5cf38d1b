/* Egress capture in the guest (DESIGN.md section 6, guest side).
 *
 * Two TCP listeners on the guest's loopback; every accepted connection
 * becomes one `egress` stream to the host, which judges and forwards it
 * (docs/protocol.md section 6, src/daemon/guestsvc.c):
 *  - the explicit proxy (127.0.0.1:8088, what HTTP_PROXY/HTTPS_PROXY name):
 *    {"mode": "proxy"}, the bytes are the proxy protocol itself;
 *  - the transparent port (127.0.0.1:8089), where the image's nftables
 *    rules redirect every other outgoing TCP connection: the original
 *    destination comes from SO_ORIGINAL_DST and travels as {"mode":
 *    "transparent", "ip", "port"}.
 * The agent decides nothing: it has no policy and no secrets. A stream the
 * host refuses (OPEN_ERR) or resets ends the guest connection with a TCP
 * reset, so a client sees a failure rather than an empty answer.
 *
 * The socket and the stream are spliced (lib/stream.h): back-pressure both
 * ways, half-close propagated. Bytes for the guest program are gathered
 * while more keep arriving (nb_stream_mux_gather): waking the program for
 * each virtio-serial piece is what limits throughput in an emulated
 * guest. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/stream.h"

#define EGRESS_MAX_CONNS 1024   /* guest connections in flight; more are reset */
#define GATHER_MAX (256 * 1024) /* gathered bytes written at once, whatever follows */

typedef struct {
    nb_agent_t *a;
    uv_tcp_t srv;
    int transparent;
    int open;
} listener_t;

static struct {
    listener_t proxy, transparent;
    unsigned conns;
} E;

typedef struct {
    nb_agent_t *a;
    nb_stream_t *tcp, *mux; /* mux NULL until the stream is open */
    int nclosed, nstreams;
} econn_t;

static void on_stream_closed(nb_stream_t *s, void *ud)
{
    econn_t *c = ud;
    if (++c->nclosed < c->nstreams)
        return;
    c->a->live--;
    E.conns--;
    free(c);
}

/* Ends the guest connection (with a TCP reset when `reset`: the host
 * refused or failed) and the stream (RST `code`/`why` when code is set). */
static void conn_close(econn_t *c, int reset, uint32_t code, const char *why)
{
    nb_stream_set_cbs(c->tcp, NULL, NULL, on_stream_closed, c);
    if (c->mux) {
        nb_stream_set_cbs(c->mux, NULL, NULL, on_stream_closed, c);
        if (code)
            nb_stream_mux_reset(c->mux, code, why);
        else
            nb_stream_close(c->mux, reset);
    }
    nb_stream_close(c->tcp, reset);
}

static void on_done(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud)
{
    econn_t *c = ud;
    if (err == 0) {
        conn_close(c, 0, 0, NULL);
    } else if (failed == c->tcp) {
        conn_close(c, 1, NB_MUX_E_CANCEL, "guest connection failed");
    } else if (err == NB_ETOOBIG) {
        conn_close(c, 1, NB_MUX_E_INTERNAL, "queue overflow");
    } else {
        nb_log(NB_LOG_DEBUG, "egress stream ended: %s", nb_strerror(err));
        conn_close(c, 1, 0, NULL);
    }
}

/* The original destination of a redirected connection. 0 or -errno
 * (-ENOENT: the connection was not redirected). */
static int original_dst(uv_tcp_t *t, struct sockaddr_in *out)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)t, &fd) < 0)
        return -EBADF;
    socklen_t len = sizeof *out;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len) < 0)
        return -errno;
    return 0;
}

static void on_accept(uv_stream_t *srv, int status)
{
    listener_t *l = srv->data;
    nb_agent_t *a = l->a;
    if (status < 0)
        return;
    econn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    if (nb_stream_tcp_new(a->loop, &c->tcp) < 0) {
        free(c);
        return;
    }
    c->a = a;
    c->nstreams = 1;
    a->live++;
    E.conns++;
    uv_tcp_t *tcp = (uv_tcp_t *)nb_stream_uv_handle(c->tcp);
    if (uv_accept(srv, (uv_stream_t *)tcp) < 0) {
        conn_close(c, 0, 0, NULL);
        return;
    }
    if (!a->sess || !nb_muxsess_is_up(a->sess) || E.conns > EGRESS_MAX_CONNS) {
        conn_close(c, 1, 0, NULL); /* no host to ask: fail fast */
        return;
    }
    char args[128];
    if (l->transparent) {
        struct sockaddr_in dst, self;
        int self_len = sizeof self;
        char ip[INET_ADDRSTRLEN];
        if (original_dst(tcp, &dst) < 0 ||
            uv_tcp_getsockname(tcp, (struct sockaddr *)&self, &self_len) < 0 ||
            (dst.sin_addr.s_addr == self.sin_addr.s_addr && dst.sin_port == self.sin_port)) {
            /* Not redirected: someone connected to this port directly. */
            conn_close(c, 1, 0, NULL);
            return;
        }
        inet_ntop(AF_INET, &dst.sin_addr, ip, sizeof ip);
        snprintf(args, sizeof args, "{\"mode\":\"transparent\",\"ip\":\"%s\",\"port\":%u}", ip,
                 ntohs(dst.sin_port));
    } else {
        snprintf(args, sizeof args, "{\"mode\":\"proxy\"}");
    }
    nb_muxsess_stream_t *st;
    int r = nb_muxsess_open(a->sess, "egress", nb_iov(args, strlen(args)), NULL, NULL, &st);
    if (r < 0) {
        nb_log(NB_LOG_INFO, "cannot open an egress stream: %s", nb_strerror(r));
        conn_close(c, 1, 0, NULL);
        return;
    }
    if (nb_stream_mux_new(a->loop, st, NB_MUX_CHAN_STDIO, NULL, &c->mux) < 0) {
        nb_muxsess_stream_reset(st, NB_MUX_E_INTERNAL, "out of memory");
        conn_close(c, 1, 0, NULL);
        return;
    }
    c->nstreams = 2;
    nb_stream_mux_gather(c->mux, GATHER_MAX);
    uv_tcp_nodelay(tcp, 1);
    /* Bytes are queued until the host accepts (OPEN_OK), within the
     * stream's send budget; reading stops above it. */
    nb_splice_opts_t o = {.on_done = on_done, .ud = c};
    if (nb_stream_splice(c->tcp, c->mux, &o, NULL) < 0)
        conn_close(c, 1, NB_MUX_E_INTERNAL, "out of memory");
}

static int listen_on(nb_agent_t *a, listener_t *l, const char *ip, int port, int transparent)
{
    struct sockaddr_in sa;
    int r;
    if ((r = uv_ip4_addr(ip, port, &sa)) < 0)
        return r;
    if ((r = uv_tcp_init(a->loop, &l->srv)) < 0)
        return r;
    l->a = a;
    l->transparent = transparent;
    l->srv.data = l;
    l->open = 1;
    if ((r = uv_tcp_bind(&l->srv, (struct sockaddr *)&sa, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&l->srv, 256, on_accept)) < 0) {
        uv_close((uv_handle_t *)&l->srv, NULL);
        l->open = 0;
        return r;
    }
    return 0;
}

int nb_agent_egress_start(nb_agent_t *a, const char *proxy, int proxy_port, int transparent_port)
{
    int r;
    if (proxy_port > 0 && (r = listen_on(a, &E.proxy, proxy, proxy_port, 0)) < 0) {
        nb_log(NB_LOG_ERR, "egress proxy on %s:%d: %s", proxy, proxy_port, uv_strerror(r));
        return r;
    }
    if (transparent_port > 0 &&
        (r = listen_on(a, &E.transparent, "127.0.0.1", transparent_port, 1)) < 0) {
        nb_log(NB_LOG_ERR, "transparent egress on 127.0.0.1:%d: %s", transparent_port,
               uv_strerror(r));
        return r;
    }
    nb_log(NB_LOG_INFO, "egress: proxy %s:%d, transparent 127.0.0.1:%d", proxy, proxy_port,
           transparent_port);
    return 0;
}

void nb_agent_egress_stop(void)
{
    if (E.proxy.open)
        uv_close((uv_handle_t *)&E.proxy.srv, NULL);
    if (E.transparent.open)
        uv_close((uv_handle_t *)&E.transparent.srv, NULL);
    E.proxy.open = E.transparent.open = 0;
}
