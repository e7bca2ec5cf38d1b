/* Egress capture in the guest (DESIGN.md section 6, guest side).
 *
 * Two TCP listeners on the guest's loopback; every accepted connection
 * becomes one `egress` stream to the host, which judges and forwards it
 * (docs/protocol.md section 6, src/daemon/egress/guestsvc.c):
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
 * Back-pressure both ways: the socket is read only while the stream can
 * take more; stream bytes are consumed (credit returned) once the socket
 * took them.
 *
 * Bytes for the guest program are gathered while more keep arriving and
 * written with one write once a loop iteration brings nothing new (or 256
 * KiB are waiting): the channel delivers them in pieces of a few KiB
 * (virtio-serial buffers, one per read), and waking the program for each
 * piece costs two context switches, which is what limits throughput in an
 * emulated guest. */
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

#define EGRESS_MAX_CONNS 1024   /* guest connections in flight; more are reset */
#define GATHER_MAX (256 * 1024) /* gathered bytes written at once, whatever follows */
#define GATHER_ROUNDS 64        /* loop iterations bytes may wait for more */

typedef struct {
    nb_agent_t *a;
    uv_tcp_t srv;
    int transparent;
    int open;
} listener_t;

typedef struct econn econn_t;

static struct {
    listener_t proxy, transparent;
    unsigned conns;
    uv_idle_t flush; /* writes what on_data gathered once a loop iteration adds nothing */
    int flush_open;
    econn_t *dirty;  /* connections with gathered bytes */
    size_t gathered; /* bytes gathered since the last idle round */
    unsigned rounds; /* idle rounds since the first gathered byte */
} E;

struct econn {
    nb_agent_t *a;
    nb_muxsess_stream_t *st; /* NULL once the stream closed */
    uv_tcp_t tcp;
    uv_shutdown_t shut;
    int closing, shutting, paused, eof;
    int fin_pending; /* the stream finished: shut down after the gathered bytes */
    econn_t *dnext;
    int dirty;
    uint8_t *out; /* gathered bytes, not yet written */
    size_t out_len, out_cap;
};

typedef struct {
    uv_write_t req;
    econn_t *c;
    size_t n;
    uint8_t *data; /* owned: the connection's gathered buffer, handed over */
} ewrite_t;

static void conn_closed(uv_handle_t *h)
{
    econn_t *c = h->data;
    if (c->dirty) {
        for (econn_t **pp = &E.dirty; *pp; pp = &(*pp)->dnext) {
            if (*pp == c) {
                *pp = c->dnext;
                break;
            }
        }
    }
    free(c->out);
    c->a->live--;
    E.conns--;
    free(c);
}

/* Ends the guest connection; `reset`: with a TCP RST (the host refused or
 * failed), else a normal close. */
static void conn_close(econn_t *c, int reset)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (reset && uv_tcp_close_reset(&c->tcp, conn_closed) == 0)
        return;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    econn_t *c = h->data;
    if (n > 0 && c->st) {
        if (nb_muxsess_stream_write_owned(c->st, NB_MUX_CHAN_STDIO, b->base, (size_t)n, free) < 0) {
            nb_muxsess_stream_reset(c->st, NB_MUX_E_INTERNAL, "queue overflow");
            c->st = NULL;
            conn_close(c, 1);
            return;
        }
        if (!nb_muxsess_stream_writable(c->st)) {
            c->paused = 1;
            uv_read_stop(h);
        }
        return;
    }
    free(b->base);
    if (n == 0)
        return;
    uv_read_stop(h);
    c->eof = 1;
    if (!c->st) {
        conn_close(c, 0);
        return;
    }
    if (n == UV_EOF) {
        nb_muxsess_stream_fin(c->st);
    } else {
        nb_muxsess_stream_reset(c->st, NB_MUX_E_CANCEL, "guest connection failed");
        c->st = NULL;
        conn_close(c, 1);
    }
}

static void on_drain(nb_muxsess_stream_t *st, void *ud)
{
    econn_t *c = ud;
    if (c->paused && !c->eof && !c->closing) {
        c->paused = 0;
        uv_read_start((uv_stream_t *)&c->tcp, nb_agent_alloc, on_read);
    }
}

static void on_written(uv_write_t *req, int status)
{
    ewrite_t *w = (ewrite_t *)req;
    econn_t *c = w->c;
    if (c->st)
        nb_muxsess_stream_consume(c->st, w->n);
    free(w->data);
    free(w);
    if (status < 0 && status != UV_ECANCELED && c->st) {
        nb_muxsess_stream_reset(c->st, NB_MUX_E_CANCEL, "guest connection closed");
        c->st = NULL;
        conn_close(c, 1);
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    econn_t *c = req->data;
    c->shutting = 2;
    if (!c->st)
        conn_close(c, 0);
}

/* shutdown(SHUT_WR) after the queued writes. */
static void start_shutdown(econn_t *c)
{
    c->fin_pending = 0;
    c->shut.data = c;
    if (!c->closing && uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) == 0)
        c->shutting = 1;
}

/* Writes what a connection gathered (one write), then a pending FIN. */
static void flush_conn(econn_t *c)
{
    if (c->closing) {
        c->out_len = 0;
        return;
    }
    if (c->out_len) {
        ewrite_t *w = malloc(sizeof *w);
        if (!w) {
            if (c->st)
                nb_muxsess_stream_reset(c->st, NB_MUX_E_INTERNAL, "out of memory");
            c->st = NULL;
            conn_close(c, 1);
            return;
        }
        w->c = c;
        w->n = c->out_len;
        w->data = c->out;
        c->out = NULL;
        c->out_len = c->out_cap = 0;
        uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->n);
        if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
            free(w->data);
            free(w);
            if (c->st)
                nb_muxsess_stream_reset(c->st, NB_MUX_E_CANCEL, "guest connection closed");
            c->st = NULL;
            conn_close(c, 1);
            return;
        }
    }
    if (c->fin_pending)
        start_shutdown(c);
}

static void flush_all(void)
{
    while (E.dirty) {
        econn_t *c = E.dirty;
        E.dirty = c->dnext;
        c->dirty = 0;
        flush_conn(c);
    }
    E.gathered = 0;
    E.rounds = 0;
    if (E.flush_open)
        uv_idle_stop(&E.flush);
}

/* Runs once per loop iteration while bytes wait (and keeps the loop from
 * blocking): when the last iteration brought nothing, nothing more is
 * coming right now, so write. */
static void on_flush(uv_idle_t *h)
{
    if (E.gathered == 0 || ++E.rounds >= GATHER_ROUNDS) {
        flush_all();
        return;
    }
    E.gathered = 0;
}

static void mark_dirty(econn_t *c)
{
    if (c->dirty)
        return;
    c->dirty = 1;
    c->dnext = E.dirty;
    E.dirty = c;
    if (!E.flush_open) {
        uv_idle_init(c->a->loop, &E.flush);
        E.flush_open = 1;
    }
    uv_idle_start(&E.flush, on_flush);
}

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    econn_t *c = ud;
    if (chan != NB_MUX_CHAN_STDIO || c->shutting || c->closing || c->fin_pending) {
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    /* Bounded by the stream's receive window (credit is returned only
     * once the socket took the bytes). */
    if (c->out_len + d.len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 64 * 1024;
        while (cap < c->out_len + d.len)
            cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p) {
            nb_muxsess_stream_reset(st, NB_MUX_E_INTERNAL, "out of memory");
            c->st = NULL;
            conn_close(c, 1);
            return;
        }
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, d.p, d.len);
    c->out_len += d.len;
    E.gathered += d.len;
    mark_dirty(c);
    if (c->out_len >= GATHER_MAX)
        flush_conn(c); /* (stays on the dirty list; flushing an empty one is a no-op) */
}

static void on_fin(nb_muxsess_stream_t *st, void *ud)
{
    econn_t *c = ud;
    if (c->out_len) {
        c->fin_pending = 1; /* after the gathered bytes */
        return;
    }
    start_shutdown(c);
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    econn_t *c = ud;
    c->st = NULL;
    if (err) {
        char esc[300];
        nb_log(NB_LOG_DEBUG, "egress stream ended: %s",
               nb_log_escape(esc, sizeof esc, msg, strlen(msg)));
        conn_close(c, 1);
        return;
    }
    if (c->shutting == 1 || c->fin_pending)
        return; /* on_shutdown closes once the last bytes are out */
    conn_close(c, 0);
}

static const nb_muxsess_stream_cbs_t econn_cbs = {
    .on_data = on_data, .on_fin = on_fin, .on_drain = on_drain, .on_close = on_close};

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
    c->a = a;
    a->live++;
    E.conns++;
    uv_tcp_init(a->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c, 0);
        return;
    }
    if (!a->sess || !nb_muxsess_is_up(a->sess) || E.conns > EGRESS_MAX_CONNS) {
        conn_close(c, 1); /* no host to ask: fail fast */
        return;
    }
    char args[128];
    if (l->transparent) {
        struct sockaddr_in dst, self;
        int self_len = sizeof self;
        char ip[INET_ADDRSTRLEN];
        if (original_dst(&c->tcp, &dst) < 0 ||
            uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&self, &self_len) < 0 ||
            (dst.sin_addr.s_addr == self.sin_addr.s_addr && dst.sin_port == self.sin_port)) {
            /* Not redirected: someone connected to this port directly. */
            conn_close(c, 1);
            return;
        }
        inet_ntop(AF_INET, &dst.sin_addr, ip, sizeof ip);
        snprintf(args, sizeof args, "{\"mode\":\"transparent\",\"ip\":\"%s\",\"port\":%u}", ip,
                 ntohs(dst.sin_port));
    } else {
        snprintf(args, sizeof args, "{\"mode\":\"proxy\"}");
    }
    int r = nb_muxsess_open(a->sess, "egress", nb_iov(args, strlen(args)), &econn_cbs, c, &c->st);
    if (r < 0) {
        c->st = NULL;
        nb_log(NB_LOG_INFO, "cannot open an egress stream: %s", nb_strerror(r));
        conn_close(c, 1);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    /* Bytes are queued until the host accepts (OPEN_OK), within the
     * stream's send budget; reading stops above it. */
    uv_read_start((uv_stream_t *)&c->tcp, nb_agent_alloc, on_read);
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
    if (E.flush_open)
        uv_close((uv_handle_t *)&E.flush, NULL);
    E.flush_open = 0;
    if (E.proxy.open)
        uv_close((uv_handle_t *)&E.proxy.srv, NULL);
    if (E.transparent.open)
        uv_close((uv_handle_t *)&E.transparent.srv, NULL);
    E.proxy.open = E.transparent.open = 0;
}
