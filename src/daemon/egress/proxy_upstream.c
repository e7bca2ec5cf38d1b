/* The proxy's HTTP/1.1 client toward upstreams (proxy_upstream.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/proxy_upstream.h"
#include "daemon/egress/gate.h"
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
    nb_px_pool_t *pool = u->pool;
    nb_http_parser_free(u->rp);
    free(u);
    pool->nups--;
    if (pool->on_empty && !pool->nups)
        pool->on_empty(pool->owner); /* a closing listener waits for its last upstream */
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
    nb_px_pool_t *pool = u->pool;
    if (u->prev)
        u->prev->next = u->next;
    else if (pool->idle == u)
        pool->idle = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->next = u->prev = NULL;
}

void nb_px_up_close(upconn_t *u)
{
    if (u->state == UP_CLOSING)
        return;
    if (u->state == UP_POOLED)
        pool_unlink(u);
    u->state = UP_CLOSING;
    u->cbs = NULL;
    if (u->gai_pending)
        uv_cancel((uv_req_t *)&u->gai);
    uv_timer_stop(&u->timer);
    if (!uv_is_closing((uv_handle_t *)&u->timer))
        uv_close((uv_handle_t *)&u->timer, on_timer_closed);
    nb_pxio_close(&u->io, on_io_closed);
}

static void dispatch_ready(upconn_t *u, int r)
{
    const nb_px_up_cbs_t *cbs = u->cbs;
    if (!cbs) {
        nb_px_up_close(u);
        return;
    }
    uv_timer_stop(&u->timer);
    if (r < 0)
        u->cbs = NULL;
    cbs->ready(u, r);
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

void nb_px_up_arm_response(upconn_t *u)
{
    arm(u, T_RESPONSE, u->pool->cfg->response_timeout_ms);
}

void nb_px_up_disarm(upconn_t *u)
{
    uv_timer_stop(&u->timer);
}

static void on_up_timer(uv_timer_t *t)
{
    upconn_t *u = t->data;
    if (u->tmode == T_CONNECT)
        up_fail(u, 504, "upstream-timeout", "no connection to %s:%u within %" PRIu64 " ms", u->host,
                u->port, u->pool->cfg->connect_timeout_ms);
    else if (u->tmode == T_RESPONSE && u->cbs && u->cbs->timeout)
        u->cbs->timeout(u);
    else
        nb_px_up_close(u);
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
    r = nb_pxio_tls_client(&u->io, u->pool->client_ctx, u->host, u->is_ip);
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
    if (u->state == UP_POOLED || !u->cbs) {
        /* An idle upstream has nothing to say: close it. */
        nb_px_up_close(u);
        return;
    }
    u->cbs->data(u, p, len);
}

static void up_on_eof(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    if (u->state != UP_READY || !u->cbs) {
        if (u->state == UP_HANDSHAKE) {
            up_fail(u, 502, "upstream-tls", "%s closed the connection during TLS", u->host);
            return;
        }
        nb_px_up_close(u);
        return;
    }
    u->cbs->eof(u);
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
    if (u->cbs && u->state == UP_READY)
        u->cbs->drain(u);
}

static void up_on_shutdown(nb_pxio_t *io)
{
    upconn_t *u = io->ud;
    if (u->cbs && u->cbs->shutdown)
        u->cbs->shutdown(u);
}

static const nb_pxio_cbs_t io_cbs = {
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
    if (nb_pxio_init(u->pool->loop, &u->io, &io_cbs, u) < 0) {
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

static void ip_to_sockaddr(const nb_ipaddr_t *ip, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (ip->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, ip->a, 4);
        in->sin_port = htons(port);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, ip->a, 16);
        in6->sin6_port = htons(port);
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
    if (kind && !nb_gate_addr_allowed(u->pool->cfg->gate, u->pool->vm, &ip, port)) {
        *why = kind;
        snprintf(whyaddr, whyaddrsz, "%s", text);
        u->fail_port = port;
        return;
    }
    ip_to_sockaddr(&ip, port, &u->addrs[u->naddrs++]);
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
    nb_px_pool_t *pool = u->pool;
    const char *why = NULL;
    char whyaddr[64] = "";
    struct sockaddr_storage ss;
    if (!u->is_ip)
        pool->st->resolves++;
    for (size_t i = 0; i < pool->nresolve; i++) {
        const nb_proxy_resolve_t *o = &pool->resolve[i];
        if (strcmp(o->host, u->host) != 0 || (o->port && o->port != u->port))
            continue;
        ip_to_sockaddr(&o->addr, 0, &ss);
        add_addr(u, (struct sockaddr *)&ss, o->to_port ? o->to_port : u->port, &why, whyaddr,
                 sizeof whyaddr);
        addrs_done(u, why, whyaddr);
        return;
    }
    if (u->is_ip) {
        nb_ipaddr_t ip;
        nb_ip_parse(u->host, strlen(u->host), &ip);
        ip_to_sockaddr(&ip, 0, &ss);
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
    int r = uv_getaddrinfo(pool->loop, &u->gai, on_gai, u->host, NULL, &hints);
    if (r < 0) {
        up_fail(u, 502, "resolve-failed", "cannot resolve %s: %s", u->host, uv_strerror(r));
        return;
    }
    u->gai_pending = 1;
}

int nb_px_up_acquire(nb_px_pool_t *pool, const char *host, int is_ip, uint16_t port, int tls,
                     int fresh, const nb_px_up_cbs_t *cbs, void *ud, upconn_t **out)
{
    for (upconn_t *u = fresh ? NULL : pool->idle; u; u = u->next) {
        if (u->port == port && u->tls == tls && strcmp(u->host, host) == 0) {
            pool_unlink(u);
            uv_timer_stop(&u->timer);
            /* Reading stays on (no epoll churn): a byte before our request
             * is refused by the owner's `data`. */
            u->state = UP_READY;
            nb_px_up_attach(u, cbs, ud);
            *out = u;
            u->reused = 1;
            pool->st->pool_reused++;
            dispatch_ready(u, 0);
            return 0;
        }
    }
    upconn_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->pool = pool;
    nb_px_up_attach(u, cbs, ud);
    snprintf(u->host, sizeof u->host, "%s", host);
    u->is_ip = is_ip != 0;
    u->port = port;
    u->tls = tls != 0;
    int r = nb_pxio_init(pool->loop, &u->io, &io_cbs, u);
    if (r < 0) {
        free(u);
        return r;
    }
    pool->nups++;
    u->handles = 1; /* the pxio (all its handles report through one callback) */
    uv_timer_init(pool->loop, &u->timer);
    u->timer.data = u;
    u->handles++;
    u->state = UP_RESOLVING;
    /* The owner holds its pending upstream from now on: closing it closes
     * (or cancels) this, so no callback reaches a freed owner. */
    *out = u;
    arm(u, T_CONNECT, pool->cfg->connect_timeout_ms);
    start_resolve(u);
    return 0;
}

void nb_px_up_attach(upconn_t *u, const nb_px_up_cbs_t *cbs, void *ud)
{
    u->cbs = cbs;
    u->ud = ud;
}

static const nb_http_cbs_t rp_cbs;

int nb_px_up_expect(upconn_t *u, const char *method)
{
    if (!u->rp) {
        nb_http_limits_t lim;
        nb_http_limits_default(&lim);
        lim.max_body = 0;
        int r = nb_http_parser_new(NB_HTTP_RESPONSE, &lim, &rp_cbs, u, &u->rp);
        if (r < 0)
            return r;
    }
    nb_http_parser_expect_response_to(u->rp, method);
    return 0;
}

static int rp_on_head(void *ud, const nb_http_head_t *h)
{
    upconn_t *u = ud;
    return u->cbs ? u->cbs->head(u, h) : NB_ECLOSED;
}

static int rp_on_body(void *ud, const uint8_t *p, size_t len)
{
    upconn_t *u = ud;
    return u->cbs ? u->cbs->body(u, p, len) : NB_ECLOSED;
}

static int rp_on_end(void *ud)
{
    upconn_t *u = ud;
    return u->cbs ? u->cbs->end(u) : NB_ECLOSED;
}

static const nb_http_cbs_t rp_cbs = {rp_on_head, rp_on_body, rp_on_end};

static size_t pool_count(nb_px_pool_t *pool, const upconn_t *k)
{
    size_t n = 0;
    for (upconn_t *u = pool->idle; u; u = u->next)
        if (u->port == k->port && u->tls == k->tls && strcmp(u->host, k->host) == 0)
            n++;
    return n;
}

void nb_px_up_release(upconn_t *u, int reusable)
{
    nb_px_pool_t *pool = u->pool;
    u->cbs = NULL;
    if (!reusable || pool->closing || u->state != UP_READY || u->io.failed || u->io.eof_seen ||
        pool_count(pool, u) >= pool->cfg->pool_max_per_key) {
        nb_px_up_close(u);
        return;
    }
    u->state = UP_POOLED;
    nb_http_parser_idle(u->rp); /* no echo of a value kept while pooled */
    u->next = pool->idle;
    u->prev = NULL;
    if (pool->idle)
        pool->idle->prev = u;
    pool->idle = u;
    arm(u, T_POOL, pool->cfg->pool_idle_ms);
    nb_pxio_read_start(&u->io); /* notice when the upstream closes it */
}

void nb_px_up_pool_drain(nb_px_pool_t *pool)
{
    pool->closing = 1;
    while (pool->idle)
        nb_px_up_close(pool->idle);
}
