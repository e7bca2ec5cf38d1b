/* The proxy engine: the public interface, listeners, accepting and
 * adopting client connections, their timers and I/O callbacks (which hand
 * the bytes to the layer of the connection's state), and the gate watcher.
 * Layers, each calling only those below it (proxy_int.h):
 *   proxy.c          engine (this file)
 *   proxy_tunnel.c   CONNECT: gate verdicts, held tunnels, raw tunnels
 *   proxy_http.c     client-side HTTP: request parsing, auth, one exchange
 *   proxy_pipe.c     byte pipes (raw tunnels, WebSocket after 101)
 *   proxy_reply.c    denials and errors
 *   proxy_conn.c     connection lifecycle, records, gate helpers
 *   proxy_upstream.c the HTTP/1.1 client toward upstreams
 * See docs/internals/proxy.md for the state machine. */
#include "daemon/egress/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/egress/proxy_auth.h"
#include "daemon/egress/proxy_int.h"
#include "lib/err.h"
#include "lib/log.h"

#define PX_UNAUTH_MS 5000       /* a connection's first request must pass auth within */
#define PX_UNAUTH_GRACE_MS 1000 /* ... and it is not made room for before this */

static const nb_pxio_cbs_t client_cbs;

void nb_proxy_cfg_default(nb_proxy_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->max_conns = 1024;
    cfg->max_conns_total = 4096;
    cfg->idle_timeout_ms = 300000;
    cfg->head_timeout_ms = 30000;
    cfg->connect_timeout_ms = 15000;
    cfg->response_timeout_ms = 300000;
    cfg->pool_idle_ms = 30000;
    cfg->pool_max_per_key = 8;
}

/* ---- client connections ---- */

static void on_conn_timer(uv_timer_t *t);

static void arm_timer(cconn_t *c, uint64_t ms)
{
    uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

static void on_conn_timer(uv_timer_t *t)
{
    cconn_t *c = t->data;
    nb_proxy_t *px = c->px;
    uint64_t now = uv_now(px->loop);
    if (c->state == CS_CLOSING) {
        nb_px_conn_close(c); /* the lingering time is over */
        return;
    }
    if (c->unauth && now - c->created >= PX_UNAUTH_MS) {
        /* No credentials in time (A28): any local user can open these. */
        nb_log_conn(NB_LOG_DEBUG, c->id, "no authenticated request within %d ms: closing",
                    PX_UNAUTH_MS);
        nb_px_conn_close(c);
        return;
    }
    if ((c->state == CS_SNIFF || c->state == CS_HANDSHAKE) && c->head_started &&
        now - c->head_started >= px->cfg.head_timeout_ms) {
        nb_log_conn(NB_LOG_INFO, c->id, "no TLS handshake within %" PRIu64 " ms: closing",
                    px->cfg.head_timeout_ms);
        nb_px_conn_close(c);
        return;
    }
    if (c->head_started && now - c->head_started >= px->cfg.head_timeout_ms && !c->x.head_ok &&
        !c->x.reject_status) {
        nb_log_conn(NB_LOG_INFO, c->id, "request head not complete after %" PRIu64 " ms",
                    px->cfg.head_timeout_ms);
        nb_px_reply(c, 408, "timeout", "head-timeout", c->tunnel ? c->auth.host : "",
                    "the request head did not arrive in time",
                    "send the whole request head at once", 1);
        return;
    }
    if (c->state != CS_GATE && !c->x.gate_waiting &&
        now - c->last_active >= px->cfg.idle_timeout_ms) {
        nb_log_conn(NB_LOG_DEBUG, c->id, "idle for %" PRIu64 " ms: closing",
                    px->cfg.idle_timeout_ms);
        nb_px_conn_close(c);
        return;
    }
    uint64_t next = px->cfg.idle_timeout_ms - (now - c->last_active);
    if (c->state == CS_GATE || c->x.gate_waiting || next > px->cfg.idle_timeout_ms)
        next = px->cfg.idle_timeout_ms;
    if (c->head_started && !c->x.head_ok) {
        uint64_t h = c->head_started + px->cfg.head_timeout_ms;
        if (h > now && h - now < next)
            next = h - now;
    }
    if (c->unauth && c->created + PX_UNAUTH_MS - now < next)
        next = c->created + PX_UNAUTH_MS - now;
    arm_timer(c, next + 1);
}

static void client_on_data(nb_pxio_t *io, const uint8_t *p, size_t len)
{
    cconn_t *c = io->ud;
    nb_px_conn_touch(c);
    switch (c->state) {
    case CS_CLOSING:
        return; /* lingering: drop */
    case CS_PIPE:
        nb_px_pipe_client_data(c, p, len);
        return;
    default:
        break;
    }
    if (nb_buf_append(&c->in, p, len) < 0) {
        nb_px_conn_close(c);
        return;
    }
    if (c->state == CS_SNIFF) {
        nb_px_tunnel_sniff(c);
        return;
    }
    if (c->state == CS_START || c->state == CS_HTTP) {
        /* The upstream head and the body bytes of this read go out as one. */
        upconn_t *u = c->up;
        if (u)
            nb_pxio_cork(&u->io);
        nb_px_conn_feed(c);
        /* (u is still allocated: upstreams are freed from close callbacks) */
        if (u && nb_pxio_uncork(&u->io) < 0 && c->up == u)
            nb_px_conn_close(c);
    } else {
        nb_px_conn_update_read(c);
    }
}

static void client_on_eof(nb_pxio_t *io)
{
    cconn_t *c = io->ud;
    c->client_eof = 1;
    switch (c->state) {
    case CS_PIPE:
        nb_px_pipe_client_eof(c);
        return;
    case CS_START:
    case CS_HTTP:
        if (c->wait) {
            /* Its request waits on a prompt: the client is gone, and so
             * is its place among the prompt's waiters. */
            nb_px_conn_close(c);
            return;
        }
        if (!c->x.active && c->in.len == 0) {
            nb_px_conn_close(c);
            return;
        }
        if (c->x.active && !c->x.req_done) {
            /* The request was cut short: nothing sensible can follow. */
            nb_px_conn_close(c);
            return;
        }
        c->close_after = 1; /* answer what was asked, then close */
        return;
    default:
        nb_px_conn_close(c);
    }
}

static void client_on_error(nb_pxio_t *io, int r)
{
    cconn_t *c = io->ud;
    nb_log_conn(NB_LOG_DEBUG, c->id, "client connection error: %s", nb_strerror(r));
    nb_px_conn_close(c);
}

static void client_on_handshake(nb_pxio_t *io, int r)
{
    cconn_t *c = io->ud;
    if (r < 0) {
        const char *sni = NULL;
        int st = io->ssl ? nb_ca_ssl_sni_status(io->ssl, &sni) : 0;
        char esc[300];
        nb_log_escape(esc, sizeof esc, sni ? sni : "", sni ? strlen(sni) : 0);
        if (st == NB_CA_SNI_MISMATCH || st == NB_CA_SNI_INVALID) {
            nb_log_conn(NB_LOG_NOTICE, c->id, "TLS SNI '%s' is not the CONNECT name %s: refused",
                        esc, c->auth.host);
            json_t *d = json_pack("{s:s, s:s, s:s}", "reason",
                                  st == NB_CA_SNI_MISMATCH ? "sni-mismatch" : "sni-invalid",
                                  "threat", "A8", "sni", esc);
            nb_px_record(c, "refusal", c->auth.host, c->auth.port, d);
            c->px->st.refused++;
        } else {
            nb_log_conn(NB_LOG_INFO, c->id, "client TLS handshake failed: %s", io->tls_error);
        }
        nb_px_conn_close(c);
        return;
    }
    c->state = CS_HTTP;
    c->head_started = 0;
    if (nb_px_conn_start_http(c) < 0) {
        nb_px_conn_close(c);
        return;
    }
    nb_px_conn_update_read(c);
}

static void client_on_drain(nb_pxio_t *io)
{
    cconn_t *c = io->ud;
    if (c->state == CS_PIPE)
        nb_px_pipe_client_drain(c);
    else if (c->state == CS_HTTP || c->state == CS_START)
        nb_px_http_client_drain(c);
}

static void client_on_shutdown(nb_pxio_t *io)
{
    cconn_t *c = io->ud;
    if (c->state == CS_PIPE)
        nb_px_pipe_shutdown_done(c);
}

static const nb_pxio_cbs_t client_cbs = {
    .on_shutdown = client_on_shutdown,
    .on_data = client_on_data,
    .on_eof = client_on_eof,
    .on_error = client_on_error,
    .on_handshake = client_on_handshake,
    .on_drain = client_on_drain,
};

/* ---- policy changes reach open connections ---- */

/* Where an open connection's bytes go, for re-judging; NULL when it has
 * no destination (yet). */
static const nb_dest_t *conn_dest(const cconn_t *c)
{
    if (c->tunnel)
        return &c->dest;
    if (c->x.absolute && c->x.head_ok)
        return &c->x.dest;
    return NULL;
}

/* Gate watcher: the ruleset changed. Byte pipes (raw tunnels, WebSocket
 * after 101) carry no requests to judge, and an inspected exchange
 * already under way (a streamed response, an endless chunked upload)
 * would not meet the next judgement until it ends (A27): one the rules no
 * longer allow is closed at once: a deny rule now covers it, or the allow
 * rule that admitted it is gone (an allow-once admission stands until a
 * rule decides). Idle inspected connections are re-judged per request
 * (proxy_http.c tunnel_rejudge), lazily. */
static void on_policy_changed(void *ud)
{
    nb_proxy_t *px = ud;
    nb_gate_t *g = px->cfg.gate;
    uint64_t gen = nb_gate_generation(g);
    for (nb_proxy_listener_t *l = px->listeners; l; l = l->next) {
        if (l->closing)
            continue;
        for (cconn_t *c = l->conns, *n; c; c = n) {
            n = c->next; /* closing frees nothing before the loop turns */
            const nb_dest_t *d = conn_dest(c);
            /* c->up: an exchange is talking to its upstream (up to its end). */
            int flowing =
                c->state == CS_PIPE || c->state == CS_CONNECTING || (c->state == CS_HTTP && c->up);
            if (!flowing || !d)
                continue;
            nb_gate_verdict_t v;
            int decided = nb_gate_rules_verdict(g, d, &v);
            if ((decided && v.allowed) || (!decided && c->pol_why == NB_GATE_WHY_ALLOW_ONCE)) {
                c->pol_gen = gen;
                continue;
            }
            const char *host = c->tunnel ? c->auth.host : c->x.auth.host;
            int port = c->tunnel ? c->auth.port : c->x.auth.port;
            nb_log_conn(NB_LOG_NOTICE, c->id, "%s:%d is no longer allowed (%s): closing the %s",
                        host, port, nb_gate_why_name(v.why),
                        c->tunnel && !c->inspect ? "raw tunnel"
                        : c->state == CS_PIPE    ? "WebSocket"
                                                 : "exchange under way");
            nb_px_record_gate(c, host, port, &v, "policy-change");
            px->st.denied++;
            nb_px_conn_close(c);
        }
    }
}

/* ---- listeners ---- */

/* A new client connection on `l`, linked in, with its I/O and timer
 * initialised (not yet connected to anything). NULL when out of memory. */
static cconn_t *conn_new(nb_proxy_listener_t *l)
{
    nb_proxy_t *px = l->px;
    cconn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->l = l;
    c->px = px;
    c->id = nb_log_next_conn_id();
    nb_buf_init(&c->in, IN_CAP);
    nb_buf_init(&c->x.pending, 2 * 1024 * 1024);
    nb_buf_init(&c->scratch, PX_RESP_HEAD_MAX);
    int r = nb_pxio_init(px->loop, &c->io, &client_cbs, c);
    if (r < 0) {
        nb_buf_free(&c->in);
        nb_buf_free(&c->x.pending);
        nb_buf_free(&c->scratch);
        free(c);
        return NULL;
    }
    c->next = l->conns;
    if (l->conns)
        l->conns->prev = c;
    l->conns = c;
    l->nconns++;
    px->nconns++;
    px->st.conns_open++;
    uv_timer_init(px->loop, &c->timer);
    c->timer.data = c;
    return c;
}

/* Starts a connection whose socket is in place: caps, then the explicit
 * proxy protocol, or (transparent) straight to the gate. */
/* Connections being refused (a 503 lingering until the client reads it)
 * do not count against the budgets: they have their own cap. */
static int over_budget(const nb_proxy_listener_t *l, size_t extra)
{
    const nb_proxy_t *px = l->px;
    return l->nconns - l->nrefusing + extra > px->cfg.max_conns ||
           px->nconns - px->nrefusing + extra > px->cfg.max_conns_total;
}

/* Over budget (A28): the connection is counted already. One audit row per
 * burst; a client gets a 503 it can show, unless refusals themselves pile
 * up (each lingers a moment), then it is closed at once. */
static void refuse_full(cconn_t *c)
{
    nb_proxy_listener_t *l = c->l;
    nb_proxy_t *px = l->px;
    px->st.conns_refused++;
    nb_px_burst_row(px, l, &l->full_burst, c->id, "too-many-connections", "A28",
                    "connection budget used up; refusing new connections (503)");
    /* Refusals linger (until the client has read the 503 and closed, at
     * most LINGER_MS) on a descriptor budget of their own, a quarter of
     * the engine's: beyond it a refused client is just closed. */
    if (c->transparent || px->nrefusing >= px->cfg.max_conns_total / 4 + 16) {
        nb_px_conn_close(c);
        return;
    }
    c->refusing = 1;
    l->nrefusing++;
    px->nrefusing++;
    nb_px_reply(c, 503, "overloaded", "too-many-connections", "",
                "this proxy listener has too many open connections",
                "close idle connections or retry later", 1);
}

/* Until its first request passes auth a connection is in the listener's
 * unauthenticated budget (a quarter of its connections; any local user
 * can fill it). Over that budget the oldest such connection that has had
 * PX_UNAUTH_GRACE_MS to send its credentials makes room, so idle floods
 * churn through their own budget while the owner's clients, which send
 * credentials at once, get in; a burst of fresh connections is never cut
 * before it could speak (the listener budget and its 503 apply). */
static void admit_unauth(cconn_t *c)
{
    nb_proxy_listener_t *l = c->l;
    size_t cap = l->px->cfg.max_conns / 4 ? l->px->cfg.max_conns / 4 : 1;
    uint64_t now = uv_now(l->px->loop);
    if (l->nunauth >= cap) {
        cconn_t *old = NULL;
        for (cconn_t *x = l->conns; x; x = x->next)
            if (x->unauth && x->state == CS_START && !x->x.active &&
                now - x->created >= PX_UNAUTH_GRACE_MS)
                old = x; /* the list is newest first: the last one is the oldest */
        if (old) {
            /* Its descriptor goes on the next loop turn: stop counting it
             * against the budget now. */
            old->refusing = 1;
            l->nrefusing++;
            l->px->nrefusing++;
            nb_px_conn_close(old);
        }
    }
    c->unauth = 1;
    l->nunauth++;
}

static void conn_start(cconn_t *c)
{
    nb_proxy_listener_t *l = c->l;
    nb_proxy_t *px = l->px;
    c->created = uv_now(px->loop);
    if (l->token_len && !c->transparent)
        admit_unauth(c);
    if (over_budget(l, 0)) {
        refuse_full(c);
        return;
    }
    px->st.conns_accepted++;
    c->state = CS_START;
    if (nb_px_conn_start_http(c) < 0) {
        nb_px_conn_close(c);
        return;
    }
    nb_px_conn_touch(c);
    if (c->transparent) {
        arm_timer(c, px->cfg.idle_timeout_ms);
        nb_px_tunnel_connect(c);
        return;
    }
    uint64_t first = px->cfg.head_timeout_ms < px->cfg.idle_timeout_ms ? px->cfg.head_timeout_ms
                                                                       : px->cfg.idle_timeout_ms;
    arm_timer(c, c->unauth && PX_UNAUTH_MS < first ? PX_UNAUTH_MS + 1 : first);
    c->head_started = uv_now(px->loop);
    nb_px_conn_update_read(c);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* Out of descriptors on accept (EMFILE/ENFILE): libuv retries accept() at
 * once and, without its own spare descriptor, would call us in a tight
 * loop. Free one each time (the engine's spare, else this listener's
 * oldest connection that has not passed auth, else its oldest), so that
 * the backlog drains instead of spinning. */
static void accept_short(nb_proxy_listener_t *l)
{
    nb_proxy_t *px = l->px;
    cconn_t *v = NULL, *any = NULL;
    nb_px_burst_row(px, l, &l->full_burst, 0, "out-of-descriptors", "A28",
                    "out of file descriptors accepting connections");
    if (px->reserve_fd >= 0) {
        close(px->reserve_fd);
        px->reserve_fd = -1;
        return;
    }
    for (cconn_t *x = l->conns; x; x = x->next) {
        if (x->state == CS_CLOSING && x->io.closing)
            continue;
        any = x;
        if (x->unauth)
            v = x;
    }
    if (v || any)
        nb_px_conn_close(v ? v : any);
}

/* Unix listeners: the peer must run as the daemon's user (SO_PEERCRED;
 * the socket is 0600 too, this also stops root-owned strangers). */
static int peer_is_owner(cconn_t *c)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)nb_stream_uv_handle(c->io.s), &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return 0;
    return cr.uid == geteuid();
}

static void on_accept(uv_stream_t *srv, int status)
{
    nb_proxy_listener_t *l = srv->data;
    nb_proxy_t *px = l->px;
    if (l->closing)
        return;
    if (status < 0) {
        if (status == UV_EMFILE || status == UV_ENFILE)
            accept_short(l);
        return;
    }
    if (px->reserve_fd < 0 && (px->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
        /* Still short: this connection's descriptor becomes the spare. */
        uv_tcp_t *tmp = malloc(sizeof *tmp);
        if (tmp && uv_tcp_init(px->loop, tmp) == 0) {
            uv_accept(srv, (uv_stream_t *)tmp);
            uv_close((uv_handle_t *)tmp, free_handle);
        } else {
            free(tmp);
        }
        px->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return;
    }
    cconn_t *c = conn_new(l);
    if (!c) {
        /* Accept and drop so the backlog does not spin. (The handle lives
         * until its close callback: not on the stack.) */
        uv_tcp_t *tmp = malloc(sizeof *tmp);
        if (tmp && uv_tcp_init(px->loop, tmp) == 0) {
            if (uv_accept(srv, (uv_stream_t *)tmp) == 0)
                nb_log(NB_LOG_WARN, "out of memory: dropping a proxy connection");
            uv_close((uv_handle_t *)tmp, free_handle);
        } else {
            free(tmp);
        }
        return;
    }
    if (nb_pxio_accept(&c->io, srv) < 0) {
        nb_px_conn_close(c);
        return;
    }
    if (l->is_unix && !peer_is_owner(c)) {
        nb_px_burst_row(px, l, &l->auth_burst, c->id, "peer-uid", "A26",
                        "a client of another user refused on the Unix socket");
        px->st.refused++;
        nb_px_conn_close(c);
        return;
    }
    conn_start(c);
}

int nb_proxy_adopt_stream(nb_proxy_listener_t *l, nb_stream_t *st, const nb_proxy_dest_t *dest)
{
    nb_pxurl_authority_t auth;
    if (l->closing || l->px->closing)
        return NB_ESTATE;
    if (dest) {
        char a[NB_HOSTNAME_BUFSZ + 16];
        int n = snprintf(a, sizeof a, strchr(dest->host, ':') ? "[%s]:%u" : "%s:%u", dest->host,
                         dest->port);
        if (n < 0 || (size_t)n >= sizeof a || dest->port == 0 ||
            nb_pxurl_authority((const uint8_t *)a, (size_t)n, 0, &auth) < 0)
            return NB_EINVAL;
    }
    if (over_budget(l, 1)) {
        /* Never adopt beyond the budget: the caller answers the guest. */
        l->px->st.conns_refused++;
        nb_px_burst_row(l->px, l, &l->full_burst, 0, "too-many-connections", "A28",
                        "connection budget used up; refusing new streams");
        return -EBUSY;
    }
    cconn_t *c = conn_new(l);
    if (!c)
        return -ENOMEM;
    if (dest) {
        c->transparent = 1;
        c->auth = auth;
        if (nb_dest_set(&c->dest, l->vm, auth.host, strlen(auth.host), auth.port) < 0) {
            nb_px_conn_close(c); /* before adopting: the caller keeps st */
            return NB_EINVAL;
        }
    }
    nb_pxio_adopt(&c->io, st);
    conn_start(c);
    return 0;
}

static void listener_on_empty(void *ud)
{
    nb_px_listener_maybe_free(ud);
}

static void on_srv_closed(uv_handle_t *h)
{
    nb_proxy_listener_t *l = h->data;
    l->srv_closed = 1;
    nb_px_listener_maybe_free(l);
}

void nb_proxy_listener_close(nb_proxy_listener_t *l)
{
    if (!l || l->closing)
        return;
    l->closing = 1;
    nb_log(NB_LOG_INFO, "proxy listener %" PRIu64 " on %s:%d (vm '%s') closing", l->id, l->ip,
           l->port, l->vm);
    nb_px_burst_flush(l, &l->auth_burst, "proxy-auth", "A26");
    nb_px_burst_flush(l, &l->full_burst, "too-many-connections", "A28");
    if (l->is_unix) {
        uv_close((uv_handle_t *)&l->psrv, on_srv_closed);
        unlink(l->path);
    } else if (!l->channel) {
        uv_close((uv_handle_t *)&l->srv, on_srv_closed);
    }
    for (cconn_t *c = l->conns, *n; c; c = n) {
        n = c->next;
        nb_px_conn_close(c);
    }
    nb_px_up_pool_drain(&l->pool);
    if (l->channel)
        nb_px_listener_maybe_free(l); /* nothing else may be left to wait for */
}

static int loopback_only(const char *ip)
{
    nb_ipaddr_t a;
    if (!nb_ip_parse(ip, strlen(ip), &a))
        return 0;
    const char *k = nb_ip_internal_kind(&a);
    return k && strcmp(k, "loopback") == 0;
}

static void listener_link(nb_proxy_t *px, nb_proxy_listener_t *l)
{
    l->id = px->next_listener_id++;
    l->next = px->listeners;
    if (px->listeners)
        px->listeners->prev = l;
    px->listeners = l;
}

/* The parts of a listener shared by TCP and channel listeners. */
static int listener_new(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, const char *ip,
                        nb_proxy_listener_t **out)
{
    *out = NULL;
    int r;
    if (px->closing)
        return NB_ESTATE;
    if (!o->vm || !o->vm[0] || !nb_rules_vm_valid(o->vm))
        return NB_EINVAL;
    if (o->nresolve > NB_PROXY_MAX_RESOLVE)
        return NB_EINVAL;
    nb_proxy_listener_t *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->px = px;
    snprintf(l->vm, sizeof l->vm, "%s", o->vm);
    snprintf(l->ip, sizeof l->ip, "%s", ip);
    l->test_mode = o->upstream_ca_file || o->nresolve;
    l->ip_no_prompt = o->ip_no_prompt != 0;
    if (o->auth_token) {
        size_t tl = strlen(o->auth_token);
        if (tl < 16 || tl >= sizeof l->token) {
            free(l);
            return NB_EINVAL;
        }
        memcpy(l->token, o->auth_token, tl);
        l->token_len = tl;
    }
    if (o->nresolve)
        memcpy(l->resolve, o->resolve, o->nresolve * sizeof *o->resolve);
    l->pool = (nb_px_pool_t){.loop = px->loop,
                             .cfg = &px->cfg,
                             .st = &px->st,
                             .vm = l->vm,
                             .resolve = l->resolve,
                             .nresolve = o->nresolve,
                             .on_empty = listener_on_empty,
                             .owner = l};
    if ((r = nb_pxio_client_ctx(o->upstream_ca_file, &l->pool.client_ctx)) < 0) {
        free(l);
        return r;
    }
    *out = l;
    return 0;
}

int nb_proxy_attach(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, nb_proxy_listener_t **out)
{
    nb_proxy_listener_t *l;
    int r = listener_new(px, o, "channel", &l);
    *out = NULL;
    if (r < 0)
        return r;
    l->channel = 1;
    l->srv_closed = 1;
    listener_link(px, l);
    nb_log(NB_LOG_INFO, "proxy channel listener %" PRIu64 " for vm '%s'%s", l->id, l->vm,
           l->test_mode ? " (test mode: extra CA / resolve overrides)" : "");
    *out = l;
    return 0;
}

int nb_proxy_listen(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, nb_proxy_listener_t **out)
{
    *out = NULL;
    int r;
    const char *ip = o->ip ? o->ip : "127.0.0.1";
    if (!loopback_only(ip) || o->port < 0 || o->port > 65535)
        return NB_EINVAL;
    nb_proxy_listener_t *l;
    if ((r = listener_new(px, o, ip, &l)) < 0)
        return r;
    struct sockaddr_storage ss;
    if (strchr(ip, ':'))
        r = uv_ip6_addr(ip, o->port, (struct sockaddr_in6 *)&ss);
    else
        r = uv_ip4_addr(ip, o->port, (struct sockaddr_in *)&ss);
    if (r < 0 || (r = uv_tcp_init(px->loop, &l->srv)) < 0) {
        SSL_CTX_free(l->pool.client_ctx);
        free(l);
        return r < 0 ? r : NB_EINVAL;
    }
    l->srv.data = l;
    listener_link(px, l);
    if ((r = uv_tcp_bind(&l->srv, (struct sockaddr *)&ss, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&l->srv, 256, on_accept)) < 0) {
        nb_proxy_listener_close(l);
        return r;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&l->srv, (struct sockaddr *)&bound, &blen);
    l->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    nb_log(NB_LOG_NOTICE, "proxy listener %" PRIu64 " on %s:%d for vm '%s'%s", l->id, l->ip,
           l->port, l->vm, l->test_mode ? " (test mode: extra CA / resolve overrides)" : "");
    *out = l;
    return 0;
}

int nb_proxy_listen_unix(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, const char *path,
                         nb_proxy_listener_t **out)
{
    *out = NULL;
    struct stat st;
    nb_proxy_listener_t *l;
    int r;
    if (!path || path[0] != '/' || strlen(path) >= sizeof l->path)
        return NB_EINVAL;
    nb_proxy_listen_opts_t uo = *o;
    uo.auth_token = NULL; /* the socket's mode and the peer's uid decide */
    if ((r = listener_new(px, &uo, "unix", &l)) < 0)
        return r;
    snprintf(l->path, sizeof l->path, "%s", path);
    l->is_unix = 1;
    if ((r = uv_pipe_init(px->loop, &l->psrv, 0)) < 0) {
        SSL_CTX_free(l->pool.client_ctx);
        free(l);
        return r;
    }
    l->psrv.data = l;
    listener_link(px, l);
    /* Replace a stale socket, never another kind of file; create it 0600
     * (umask) so that nobody else can connect in between. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            l->path[0] = '\0'; /* not ours: never unlink it */
            nb_proxy_listener_close(l);
            return -EEXIST;
        }
        unlink(path);
    }
    mode_t old = umask(0177);
    r = uv_pipe_bind(&l->psrv, path);
    umask(old);
    if (r < 0 || (r = chmod(path, 0600) < 0 ? -errno : 0) < 0 ||
        (r = uv_listen((uv_stream_t *)&l->psrv, 256, on_accept)) < 0) {
        if (r == UV_EADDRINUSE)
            l->path[0] = '\0';
        nb_proxy_listener_close(l);
        return r;
    }
    nb_log(NB_LOG_NOTICE, "proxy listener %" PRIu64 " on unix:%s for vm '%s'%s", l->id, l->path,
           l->vm, l->test_mode ? " (test mode: extra CA / resolve overrides)" : "");
    *out = l;
    return 0;
}

const char *nb_proxy_listener_path(const nb_proxy_listener_t *l)
{
    return l->is_unix ? l->path : NULL;
}

uint64_t nb_proxy_listener_id(const nb_proxy_listener_t *l)
{
    return l->id;
}

int nb_proxy_listener_port(const nb_proxy_listener_t *l)
{
    return l->port;
}

const char *nb_proxy_listener_vm(const nb_proxy_listener_t *l)
{
    return l->vm;
}

nb_proxy_listener_t *nb_proxy_listener_find(nb_proxy_t *px, uint64_t id)
{
    for (nb_proxy_listener_t *l = px->listeners; l; l = l->next)
        if (l->id == id && !l->closing)
            return l;
    return NULL;
}

json_t *nb_proxy_listeners_json(const nb_proxy_t *px)
{
    json_t *arr = json_array();
    for (const nb_proxy_listener_t *l = px->listeners; arr && l; l = l->next) {
        if (l->closing)
            continue;
        char addr[96];
        if (l->channel)
            snprintf(addr, sizeof addr, "vm-channel");
        else if (l->is_unix)
            snprintf(addr, sizeof addr, "unix:%.90s", l->path);
        else
            snprintf(addr, sizeof addr, strchr(l->ip, ':') ? "[%s]:%d" : "%s:%d", l->ip, l->port);
        json_array_append_new(arr, json_pack("{s:I, s:s, s:s, s:I, s:b, s:b, s:I}", "id",
                                             (json_int_t)l->id, "listen", addr, "vm", l->vm,
                                             "connections", (json_int_t)l->nconns, "test_mode",
                                             l->test_mode, "auth", l->token_len > 0 || l->is_unix,
                                             "max_connections", (json_int_t)l->px->cfg.max_conns));
    }
    return arr;
}

/* ---- engine ---- */

int nb_proxy_new(uv_loop_t *loop, const nb_proxy_cfg_t *cfg, nb_proxy_t **out)
{
    *out = NULL;
    if (!cfg || !cfg->gate || !cfg->ca)
        return NB_EINVAL;
    nb_proxy_t *px = calloc(1, sizeof *px);
    if (!px)
        return -ENOMEM;
    px->loop = loop;
    px->cfg = *cfg;
    nb_proxy_cfg_t def;
    nb_proxy_cfg_default(&def);
#define DEF(f)                                                                                     \
    if (!px->cfg.f)                                                                                \
        px->cfg.f = def.f;
    DEF(max_conns)
    DEF(max_conns_total)
    DEF(idle_timeout_ms)
    DEF(head_timeout_ms)
    DEF(connect_timeout_ms)
    DEF(response_timeout_ms)
    DEF(pool_idle_ms)
    DEF(pool_max_per_key)
#undef DEF
    px->next_listener_id = 1;
    px->tunnel = nb_px_tunnel_connect;
    px->http_check_done = nb_px_http_check_done;
    px->usage_drop = nb_px_usage_drop;
    px->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int r = nb_ca_server_ctx(cfg->ca, &px->server_ctx);
    if (r < 0 || (r = nb_pxcreds_empty(&px->creds)) < 0) {
        SSL_CTX_free(px->server_ctx);
        if (px->reserve_fd >= 0)
            close(px->reserve_fd);
        free(px);
        return r;
    }
    if (!(px->gate_watch = nb_gate_watch(cfg->gate, on_policy_changed, px))) {
        nb_pxcreds_unref(px->creds);
        SSL_CTX_free(px->server_ctx);
        free(px);
        return -ENOMEM;
    }
    *out = px;
    return 0;
}

/* A raw tunnel is refused to a host any binding names (A5,
 * proxy_tunnel.c raw_refused), judged when it opens. One opened before
 * its host was bound would carry a value stored there back unscanned: a
 * new snapshot closes every raw tunnel whose host it binds (A27). */
static void close_raw_to_bound(nb_proxy_t *px)
{
    for (nb_proxy_listener_t *l = px->listeners; l; l = l->next) {
        if (l->closing)
            continue;
        for (cconn_t *c = l->conns, *n; c; c = n) {
            n = c->next; /* closing frees nothing before the loop turns */
            if (!c->tunnel || c->inspect || (c->state != CS_PIPE && c->state != CS_CONNECTING) ||
                !nb_pxcreds_host_bound_any(px->creds, c->auth.host))
                continue;
            nb_log_conn(NB_LOG_NOTICE, c->id,
                        "%s:%u is now bound to a secret: closing the raw tunnel", c->auth.host,
                        (unsigned)c->auth.port);
            nb_px_record(c, "refusal", c->auth.host, c->auth.port,
                         json_pack("{s:s, s:s, s:s}", "reason", "raw-tunnel-bound-host", "threat",
                                   "A5", "via", "binding-change"));
            px->st.denied++;
            nb_px_conn_close(c);
        }
    }
}

void nb_proxy_set_creds(nb_proxy_t *px, nb_pxcreds_t *c)
{
    if (!c && nb_pxcreds_empty(&c) < 0)
        return; /* keep the old snapshot rather than none */
    if (px->cfg.unseal)
        nb_pxcreds_set_unseal(c, px->cfg.unseal, px->cfg.unseal_ud);
    nb_pxcreds_unref(px->creds);
    px->creds = c;
    close_raw_to_bound(px);
}

void nb_proxy_set_oauth(nb_proxy_t *px, nb_oauth_set_t *s)
{
    nb_oauth_set_unref(px->oauth);
    px->oauth = s;
}

void nb_proxy_free(nb_proxy_t *px, void (*done)(void *ud), void *ud)
{
    if (!px) {
        if (done)
            done(ud);
        return;
    }
    px->closing = 1;
    nb_px_oauth_engine_free(px); /* stores in flight find no engine when they end */
    px->done = done;
    px->done_ud = ud;
    if (px->gate_watch)
        nb_gate_unwatch(px->cfg.gate, px->gate_watch);
    px->gate_watch = 0;
    if (!px->listeners) {
        nb_px_engine_maybe_free(px);
        return;
    }
    for (nb_proxy_listener_t *l = px->listeners, *n; l; l = n) {
        n = l->next;
        nb_proxy_listener_close(l);
    }
}

void nb_proxy_stats(const nb_proxy_t *px, nb_proxy_stats_t *st)
{
    *st = px->st;
}

int nb_proxy_resolve_parse(const char *spec, nb_proxy_resolve_t *out)
{
    memset(out, 0, sizeof *out);
    if (!spec)
        return NB_EINVAL;
    size_t len = strlen(spec);
    const char *c1 = memchr(spec, ':', len);
    if (!c1 || c1 == spec)
        return NB_EINVAL;
    if (nb_hostname_normalize(spec, (size_t)(c1 - spec), out->host, sizeof out->host) < 0)
        return NB_EINVAL;
    const char *rest = c1 + 1;
    /* HOST:PORT:ADDR:PORT when the part after HOST starts with digits
     * followed by ':' and an address. */
    const char *c2 = strchr(rest, ':');
    if (c2 && c2 > rest && strspn(rest, "0123456789") == (size_t)(c2 - rest)) {
        nb_pxurl_authority_t from, to;
        char tmp[32];
        snprintf(tmp, sizeof tmp, "x.x:%.*s", (int)(c2 - rest), rest);
        if (nb_pxurl_authority((const uint8_t *)tmp, strlen(tmp), 0, &from) < 0)
            return NB_EINVAL;
        if (nb_pxurl_authority((const uint8_t *)c2 + 1, strlen(c2 + 1), 0, &to) < 0 || !to.is_ip)
            return NB_EINVAL;
        out->port = from.port;
        out->addr = to.ip;
        out->to_port = to.port;
        return 0;
    }
    if (!nb_ip_parse(rest, strlen(rest), &out->addr))
        return NB_EINVAL;
    return 0;
}
