/* Upstream connections: resolution on the host, the internal-address
 * filter (A13), connect with fallback over the resolved addresses, TLS with
 * certificate and name verification, and the keep-alive pool. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/proxy_int.h"
#include "lib/err.h"
#include "lib/log.h"

enum { T_NONE = 0, T_CONNECT, T_RESPONSE, T_POOL };

static void up_fail(upconn_t *u, int status, const char *token, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void try_next(upconn_t *u);

static void up_maybe_free(upconn_t *u)
{
    if (u->handles || u->gai_pending)
        return;
    nb_proxy_listener_t *l = u->l;
    nb_http_parser_free(u->rp);
    nb_buf_free(&u->in);
    free(u);
    l->nups--;
    px_listener_check(l); /* it may be waiting for its last upstream to go */
}

static void on_io_closed(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    u->handles--;
    up_maybe_free(u);
}

static void on_timer_closed(uv_handle_t *h)
{
    upconn_t *u = h->data;
    u->handles--;
    up_maybe_free(u);
}

static void pool_unlink(upconn_t *u)
{
    nb_proxy_listener_t *l = u->l;
    if (u->prev)
        u->prev->next = u->next;
    else if (l->pool == u)
        l->pool = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->next = u->prev = NULL;
    l->npool--;
}

void px_up_close(upconn_t *u)
{
    if (u->state == UP_CLOSING)
        return;
    if (u->state == UP_POOLED)
        pool_unlink(u);
    u->state = UP_CLOSING;
    u->owner = NULL;
    if (u->gai_pending)
        uv_cancel((uv_req_t *)&u->gai);
    uv_timer_stop(&u->timer);
    if (!uv_is_closing((uv_handle_t *)&u->timer))
        uv_close((uv_handle_t *)&u->timer, on_timer_closed);
    nb_pxio_close(&u->io, on_io_closed);
}

static void dispatch_ready(upconn_t *u, int r)
{
    cconn_t *c = u->owner;
    if (!c) {
        px_up_close(u);
        return;
    }
    uv_timer_stop(&u->timer);
    if (r < 0) {
        u->owner = NULL;
        c->up = NULL;
    }
    if (c->state == CS_CONNECTING)
        px_conn_tunnel_ready(c, u, r);
    else
        px_http_upstream_ready(c, u, r);
}

static void up_fail(upconn_t *u, int status, const char *token, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->fail_msg, sizeof u->fail_msg, fmt, ap);
    va_end(ap);
    u->fail_status = status;
    u->fail_token = token;
    nb_log(NB_LOG_INFO, "upstream %s:%u: %s (%s)", u->host, u->port, u->fail_msg, token);
    dispatch_ready(u, NB_EDENIED);
}

static void on_up_timer(uv_timer_t *t);

static void arm(upconn_t *u, int mode, uint64_t ms)
{
    u->tmode = mode;
    uv_timer_start(&u->timer, on_up_timer, ms, 0);
}

void px_up_arm_response(upconn_t *u)
{
    arm(u, T_RESPONSE, u->l->px->cfg.response_timeout_ms);
}

void px_up_disarm(upconn_t *u)
{
    uv_timer_stop(&u->timer);
}

static void on_up_timer(uv_timer_t *t)
{
    upconn_t *u = t->data;
    switch (u->tmode) {
    case T_CONNECT:
        up_fail(u, 504, "upstream-timeout", "no connection to %s:%u within %" PRIu64 " ms", u->host,
                u->port, u->l->px->cfg.connect_timeout_ms);
        return;
    case T_RESPONSE:
        px_http_up_timeout(u);
        return;
    default:
        px_up_close(u);
    }
}

static void ready(upconn_t *u)
{
    u->state = UP_READY;
    dispatch_ready(u, 0);
}

static void up_on_connect(nb_pxio_t *io, int r)
{
    upconn_t *u = io->ud;
    if (u->state != UP_CONNECTING)
        return;
    if (r < 0) {
        nb_log(NB_LOG_DEBUG, "connect to %s (%s) failed: %s", u->addr_text, u->host,
               uv_strerror(r));
        try_next(u);
        return;
    }
    if (!u->tls) {
        ready(u);
        return;
    }
    u->state = UP_HANDSHAKE;
    r = nb_pxio_tls_client(&u->io, u->l->client_ctx, u->host, u->is_ip);
    if (r < 0)
        up_fail(u, 502, "upstream-tls", "cannot start TLS toward %s: %s", u->host, nb_strerror(r));
}

static void up_on_handshake(nb_pxio_t *io, int r)
{
    upconn_t *u = io->ud;
    if (u->state != UP_HANDSHAKE)
        return;
    if (r < 0) {
        up_fail(u, 502, "upstream-tls", "TLS with %s failed: %s", u->host,
                io->tls_error[0] ? io->tls_error : "handshake failed");
        return;
    }
    ready(u);
}

static void up_on_data(nb_pxio_t *io, const uint8_t *p, size_t len)
{
    upconn_t *u = io->ud;
    if (u->state == UP_POOLED || !u->owner) {
        /* An idle upstream has nothing to say: close it. */
        px_up_close(u);
        return;
    }
    if (u->owner->state == CS_PIPE)
        px_pipe_up_data(u, p, len);
    else
        px_http_up_data(u, p, len);
}

static void up_on_eof(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    if (u->state != UP_READY || !u->owner) {
        if (u->state == UP_HANDSHAKE) {
            up_fail(u, 502, "upstream-tls", "%s closed the connection during TLS", u->host);
            return;
        }
        px_up_close(u);
        return;
    }
    if (u->owner->state == CS_PIPE)
        px_pipe_up_eof(u);
    else
        px_http_up_eof(u);
}

static void up_on_error(nb_pxio_t *io, int r)
{
    upconn_t *u = io->ud;
    if (u->state == UP_CONNECTING) {
        try_next(u);
        return;
    }
    if (u->state == UP_HANDSHAKE) {
        up_fail(u, 502, "upstream-error", "connection to %s failed: %s", u->host, nb_strerror(r));
        return;
    }
    up_on_eof(io);
}

static void up_on_drain(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    if (!u->owner || u->state != UP_READY)
        return;
    if (u->owner->state == CS_PIPE)
        px_pipe_up_drain(u);
    else
        px_http_up_drain(u);
}

static void up_on_shutdown(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    if (u->owner && u->owner->state == CS_PIPE)
        px_pipe_shutdown_done(u->owner);
}

const nb_pxio_cbs_t px_up_cbs = {
    .on_shutdown = up_on_shutdown,
    .on_data = up_on_data,
    .on_eof = up_on_eof,
    .on_error = up_on_error,
    .on_handshake = up_on_handshake,
    .on_drain = up_on_drain,
    .on_connect = up_on_connect,
};

static void sockaddr_ip(const struct sockaddr *sa, nb_ipaddr_t *ip, char *text, size_t textsz)
{
    char buf[64] = "";
    if (sa->sa_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)sa, buf, sizeof buf);
    else
        uv_ip6_name((const struct sockaddr_in6 *)sa, buf, sizeof buf);
    memset(ip, 0, sizeof *ip);
    nb_ip_parse(buf, strlen(buf), ip);
    snprintf(text, textsz, "%s", buf);
}

static void on_reconnect_closed(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    u->handles--;
    if (u->state != UP_CONNECTING) {
        up_maybe_free(u);
        return;
    }
    if (nb_pxio_init(u->l->px->loop, &u->io, &px_up_cbs, u) < 0) {
        u->io.closing = 1; /* nothing open */
        up_fail(u, 502, "upstream-error", "out of resources");
        return;
    }
    u->handles++;
    try_next(u);
}

/* Connects to the next candidate address; when the current attempt's
 * handle was used, it is closed first and the attempt resumes in
 * on_reconnect_closed. */
static void try_next(upconn_t *u)
{
    if (u->io.conn_req.data) {
        /* The handle was used for a failed attempt: libuv handles are not
         * reusable after a failed connect. */
        u->io.conn_req.data = NULL;
        if (u->next_addr >= u->naddrs) {
            up_fail(u, 502, "upstream-unreachable", "cannot connect to %s port %u (%s)", u->host,
                    u->port, u->addr_text);
            return;
        }
        nb_pxio_close(&u->io, on_reconnect_closed);
        return;
    }
    if (u->next_addr >= u->naddrs) {
        up_fail(u, 502, "upstream-unreachable", "cannot connect to %s port %u", u->host, u->port);
        return;
    }
    struct sockaddr *sa = (struct sockaddr *)&u->addrs[u->next_addr++];
    nb_ipaddr_t ip;
    sockaddr_ip(sa, &ip, u->addr_text, sizeof u->addr_text);
    u->state = UP_CONNECTING;
    int r = nb_pxio_connect(&u->io, sa);
    if (r < 0) {
        nb_log(NB_LOG_DEBUG, "connect to %s failed at once: %s", u->addr_text, uv_strerror(r));
        u->io.conn_req.data = NULL;
        try_next(u);
    }
}

/* Keeps the candidate addresses an upstream connection may use: public
 * ones, and internal ones only where an explicit IP rule allows them. */
static void add_addr(upconn_t *u, const struct sockaddr *sa, uint16_t port, const char **why,
                     char *whyaddr, size_t whyaddrsz)
{
    if (u->naddrs >= UP_MAX_ADDRS)
        return;
    nb_ipaddr_t ip;
    char text[64];
    sockaddr_ip(sa, &ip, text, sizeof text);
    if (!ip.family)
        return;
    const char *kind = nb_ip_internal_kind(&ip);
    if (kind && !nb_gate_addr_allowed(u->l->px->cfg.gate, u->vm, &ip, port)) {
        *why = kind;
        snprintf(whyaddr, whyaddrsz, "%s", text);
        u->fail_port = port;
        return;
    }
    struct sockaddr_storage *ss = &u->addrs[u->naddrs++];
    memset(ss, 0, sizeof *ss);
    if (ip.family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, ip.a, 4);
        in->sin_port = htons(port);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, ip.a, 16);
        in6->sin6_port = htons(port);
    }
}

static void ip_to_sockaddr(const nb_ipaddr_t *ip, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (ip->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, ip->a, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, ip->a, 16);
    }
}

static void addrs_done(upconn_t *u, const char *why, const char *whyaddr)
{
    if (u->naddrs == 0) {
        if (why)
            snprintf(u->fail_addr, sizeof u->fail_addr, "%s", whyaddr);
        if (why)
            up_fail(u, 502, "internal-address",
                    "%s resolves to %s (%s); internal addresses need an explicit IP rule", u->host,
                    whyaddr, why);
        else
            up_fail(u, 502, "resolve-failed", "%s has no usable address", u->host);
        return;
    }
    try_next(u);
}

static void on_gai(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    upconn_t *u = req->data;
    u->gai_pending = 0;
    if (u->state != UP_RESOLVING) {
        uv_freeaddrinfo(res);
        up_maybe_free(u);
        return;
    }
    if (status < 0) {
        uv_freeaddrinfo(res);
        up_fail(u, 502, "resolve-failed", "cannot resolve %s: %s", u->host, uv_strerror(status));
        return;
    }
    const char *why = NULL;
    char whyaddr[64] = "";
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
            add_addr(u, ai->ai_addr, u->port, &why, whyaddr, sizeof whyaddr);
    uv_freeaddrinfo(res);
    addrs_done(u, why, whyaddr);
}

static void start_resolve(upconn_t *u)
{
    nb_proxy_listener_t *l = u->l;
    const char *why = NULL;
    char whyaddr[64] = "";
    struct sockaddr_storage ss;
    if (!u->is_ip)
        l->px->st.resolves++;
    for (size_t i = 0; i < l->nresolve; i++) {
        const nb_proxy_resolve_t *o = &l->resolve[i];
        if (strcmp(o->host, u->host) != 0 || (o->port && o->port != u->port))
            continue;
        ip_to_sockaddr(&o->addr, &ss);
        add_addr(u, (struct sockaddr *)&ss, o->to_port ? o->to_port : u->port, &why, whyaddr,
                 sizeof whyaddr);
        addrs_done(u, why, whyaddr);
        return;
    }
    if (u->is_ip) {
        nb_ipaddr_t ip;
        nb_ip_parse(u->host, strlen(u->host), &ip);
        ip_to_sockaddr(&ip, &ss);
        add_addr(u, (struct sockaddr *)&ss, u->port, &why, whyaddr, sizeof whyaddr);
        addrs_done(u, why, whyaddr);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    u->gai.data = u;
    int r = uv_getaddrinfo(l->px->loop, &u->gai, on_gai, u->host, NULL, &hints);
    if (r < 0) {
        up_fail(u, 502, "resolve-failed", "cannot resolve %s: %s", u->host, uv_strerror(r));
        return;
    }
    u->gai_pending = 1;
}

int px_up_acquire(cconn_t *c, const char *host, int is_ip, uint16_t port, int tls, int fresh)
{
    nb_proxy_listener_t *l = c->l;
    for (upconn_t *u = fresh ? NULL : l->pool; u; u = u->next) {
        if (u->port == port && u->tls == tls && strcmp(u->host, host) == 0) {
            pool_unlink(u);
            uv_timer_stop(&u->timer);
            /* Reading stays on (no epoll churn): a byte before our request
             * is refused in px_http_up_data. */
            u->state = UP_READY;
            u->owner = c;
            c->up = u;
            u->reused = 1;
            l->px->st.pool_reused++;
            dispatch_ready(u, 0);
            return 0;
        }
    }
    upconn_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->l = l;
    u->owner = c;
    snprintf(u->host, sizeof u->host, "%s", host);
    snprintf(u->vm, sizeof u->vm, "%s", l->vm);
    u->is_ip = is_ip;
    u->port = port;
    u->tls = tls;
    nb_buf_init(&u->in, 1024 * 1024);
    int r = nb_pxio_init(l->px->loop, &u->io, &px_up_cbs, u);
    if (r < 0) {
        free(u);
        return r;
    }
    l->nups++;
    u->handles = 1; /* the pxio (all its handles report through one callback) */
    uv_timer_init(l->px->loop, &u->timer);
    u->timer.data = u;
    u->handles++;
    u->state = UP_RESOLVING;
    /* The connection owns its pending upstream from now on: closing the
     * client closes (or cancels) it, so no callback reaches a freed one. */
    c->up = u;
    arm(u, T_CONNECT, l->px->cfg.connect_timeout_ms);
    start_resolve(u);
    return 0;
}

static size_t pool_count(nb_proxy_listener_t *l, const upconn_t *k)
{
    size_t n = 0;
    for (upconn_t *u = l->pool; u; u = u->next)
        if (u->port == k->port && u->tls == k->tls && strcmp(u->host, k->host) == 0)
            n++;
    return n;
}

void px_up_release(upconn_t *u, int reusable)
{
    nb_proxy_listener_t *l = u->l;
    u->owner = NULL;
    if (!reusable || l->closing || u->state != UP_READY || u->io.failed || u->io.eof_seen ||
        u->in.len || pool_count(l, u) >= l->px->cfg.pool_max_per_key) {
        px_up_close(u);
        return;
    }
    u->state = UP_POOLED;
    nb_http_parser_idle(u->rp); /* no echo of a value kept while pooled */
    u->next = l->pool;
    u->prev = NULL;
    if (l->pool)
        l->pool->prev = u;
    l->pool = u;
    l->npool++;
    arm(u, T_POOL, l->px->cfg.pool_idle_ms);
    nb_pxio_read_start(&u->io); /* notice when the upstream closes it */
}

void px_up_pool_drain(nb_proxy_listener_t *l)
{
    while (l->pool)
        px_up_close(l->pool);
}
