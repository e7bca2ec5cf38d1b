/* The guest's resolver (DESIGN.md section 6, fake-IP DNS): UDP and TCP on
 * 127.0.0.53:53 (what /etc/resolv.conf names). Each query becomes one
 * `dns` stream to the host, which answers it from the VM's fake-IP pool
 * without asking any upstream resolver (src/daemon/egress/fakedns.c). The
 * agent only relays bytes: it parses nothing but the TCP length prefix.
 *
 * Caps: a query is at most 4096 bytes (the host refuses longer ones), an
 * answer at most 65535; at most 256 queries are in flight (more are
 * dropped: the client retries), each for at most 5 s; at most 64 TCP
 * clients, each idle for at most 10 s with at most 16 queries in flight. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/log.h"

#define DNS_QUERY_MAX 4096
#define DNS_ANSWER_MAX 65535
#define DNS_INFLIGHT_MAX 256
#define DNS_TIMEOUT_MS 5000
#define DNS_TCP_MAX 64
#define DNS_TCP_IDLE_MS 10000
#define DNS_TCP_INFLIGHT_MAX 16

typedef struct dconn dconn_t;
typedef struct dnsq dnsq_t;

struct dnsq {
    dnsq_t *next, *prev;
    nb_muxsess_stream_t *st;      /* NULL once closed */
    struct sockaddr_storage from; /* UDP */
    dconn_t *conn;                /* TCP (holds a reference) */
    nb_buf_t ans;
    uint64_t deadline;
};

struct dconn {
    dconn_t *next, *prev;
    uv_tcp_t tcp;
    nb_buf_t in;
    unsigned refs; /* the handle + queries in flight */
    unsigned inflight;
    uint64_t last;
    int closing;
};

static struct {
    nb_agent_t *a;
    uv_udp_t udp;
    uv_tcp_t srv;
    uv_timer_t sweep;
    int udp_open, tcp_open, sweep_open;
    dnsq_t *queries;
    dconn_t *conns;
    unsigned nq, ntcp;
    char rbuf[DNS_QUERY_MAX + 1];
} D;

/* ------------------------------------------------------------ tcp conns */

static void dconn_unref(dconn_t *c)
{
    if (--c->refs == 0) {
        if (c->prev)
            c->prev->next = c->next;
        else
            D.conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        nb_buf_free(&c->in);
        free(c);
        D.a->live--;
        D.ntcp--;
    }
}

static void dconn_closed(uv_handle_t *h)
{
    dconn_unref(h->data);
}

static void dconn_close(dconn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, dconn_closed);
}

/* ------------------------------------------------------------ queries */

static void q_free(dnsq_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        D.queries = q->next;
    if (q->next)
        q->next->prev = q->prev;
    D.nq--;
    nb_buf_free(&q->ans);
    if (q->conn) {
        q->conn->inflight--;
        dconn_unref(q->conn);
    }
    free(q);
    D.a->live--;
}

static void udp_sent(uv_udp_send_t *req, int status)
{
    free(req);
}

static void tcp_sent(uv_write_t *req, int status)
{
    free(req);
}

/* Delivers the host's answer to the client that asked. */
static void q_answer(dnsq_t *q)
{
    size_t n = q->ans.len;
    if (n == 0 || n > DNS_ANSWER_MAX)
        return;
    if (!q->conn) {
        uv_udp_send_t *req = malloc(sizeof *req + n);
        if (!req)
            return;
        memcpy(req + 1, q->ans.p, n);
        uv_buf_t b = uv_buf_init((char *)(req + 1), (unsigned)n);
        if (uv_udp_send(req, &D.udp, &b, 1, (struct sockaddr *)&q->from, udp_sent) < 0)
            free(req);
        return;
    }
    if (q->conn->closing)
        return;
    uv_write_t *req = malloc(sizeof *req + 2 + n);
    if (!req)
        return;
    uint8_t *p = (uint8_t *)(req + 1);
    p[0] = (uint8_t)(n >> 8);
    p[1] = (uint8_t)n;
    memcpy(p + 2, q->ans.p, n);
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)(n + 2));
    if (uv_write(req, (uv_stream_t *)&q->conn->tcp, &b, 1, tcp_sent) < 0)
        free(req);
}

static void q_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    dnsq_t *q = ud;
    if (chan != NB_MUX_CHAN_STDIO || nb_buf_append(&q->ans, d.p, d.len) < 0) {
        nb_muxsess_stream_reset(st, NB_MUX_E_BAD_ARGS, "answer too long");
        q_free(q);
    }
}

static void q_closed(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    dnsq_t *q = ud;
    q->st = NULL;
    if (err == 0)
        q_answer(q);
    q_free(q);
}

static const nb_muxsess_stream_cbs_t q_cbs = {
    .on_data = q_data, .on_close = q_closed, .auto_consume = 1};

/* Sends one query to the host. `conn` NULL: UDP from `from`. */
static void q_start(const uint8_t *msg, size_t len, const struct sockaddr *from, dconn_t *conn)
{
    nb_agent_t *a = D.a;
    if (len < 12 || len > DNS_QUERY_MAX || D.nq >= DNS_INFLIGHT_MAX || !a->sess ||
        !nb_muxsess_is_up(a->sess))
        return; /* dropped: the client retries or gives up */
    dnsq_t *q = calloc(1, sizeof *q);
    if (!q)
        return;
    a->live++;
    D.nq++;
    q->next = D.queries;
    if (D.queries)
        D.queries->prev = q;
    D.queries = q;
    nb_buf_init(&q->ans, DNS_ANSWER_MAX);
    q->deadline = uv_now(a->loop) + DNS_TIMEOUT_MS;
    if (conn) {
        q->conn = conn;
        conn->refs++;
        conn->inflight++;
    } else {
        memcpy(&q->from, from,
               from->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                           : sizeof(struct sockaddr_in));
    }
    static const char args[] = "{}";
    int r = nb_muxsess_open(a->sess, "dns", nb_iov(args, sizeof args - 1), &q_cbs, q, &q->st);
    if (r == 0)
        r = nb_muxsess_stream_write(q->st, NB_MUX_CHAN_STDIO, msg, len);
    if (r == 0)
        r = nb_muxsess_stream_fin(q->st);
    if (r < 0) {
        if (q->st)
            nb_muxsess_stream_reset(q->st, NB_MUX_E_CANCEL, "cancelled");
        q_free(q);
    }
}

static void on_sweep(uv_timer_t *t)
{
    uint64_t now = uv_now(D.a->loop);
    for (dnsq_t *q = D.queries, *n; q; q = n) {
        n = q->next;
        if (now >= q->deadline) {
            if (q->st)
                nb_muxsess_stream_reset(q->st, NB_MUX_E_CANCEL, "timed out");
            q_free(q);
        }
    }
}

/* ------------------------------------------------------------ udp */

static void udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    /* One datagram at a time; a longer one is truncated and then dropped. */
    *b = uv_buf_init(D.rbuf, sizeof D.rbuf);
}

static void udp_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b, const struct sockaddr *from,
                     unsigned flags)
{
    if (n <= 0 || !from || (flags & UV_UDP_PARTIAL) || (size_t)n > DNS_QUERY_MAX)
        return;
    q_start((const uint8_t *)b->base, (size_t)n, from, NULL);
}

/* ------------------------------------------------------------ tcp */

static void tcp_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    dconn_t *c = h->data;
    if (n > 0 && nb_buf_append(&c->in, b->base, (size_t)n) < 0)
        n = UV_ENOBUFS;
    free(b->base);
    if (n == 0)
        return;
    if (n < 0) {
        dconn_close(c);
        return;
    }
    c->last = uv_now(D.a->loop);
    while (c->in.len >= 2) {
        size_t len = (size_t)c->in.p[0] << 8 | c->in.p[1];
        if (len > DNS_QUERY_MAX || len < 12) {
            dconn_close(c);
            return;
        }
        if (c->in.len < 2 + len)
            break;
        if (c->inflight < DNS_TCP_INFLIGHT_MAX)
            q_start(c->in.p + 2, len, NULL, c);
        nb_buf_consume(&c->in, 2 + len);
    }
}

static void tcp_accept(uv_stream_t *srv, int status)
{
    if (status < 0)
        return;
    dconn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    D.a->live++;
    D.ntcp++;
    c->refs = 1;
    c->next = D.conns;
    if (D.conns)
        D.conns->prev = c;
    D.conns = c;
    nb_buf_init(&c->in, 2 + DNS_QUERY_MAX);
    uv_tcp_init(D.a->loop, &c->tcp);
    c->tcp.data = c;
    c->last = uv_now(D.a->loop);
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0 || D.ntcp > DNS_TCP_MAX) {
        dconn_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, nb_agent_alloc, tcp_read);
}

static void on_timer(uv_timer_t *t)
{
    on_sweep(t);
    uint64_t now = uv_now(D.a->loop);
    for (dconn_t *c = D.conns; c; c = c->next)
        if (!c->closing && c->inflight == 0 && now - c->last >= DNS_TCP_IDLE_MS)
            dconn_close(c);
}

int nb_agent_dns_start(nb_agent_t *a, const char *ip, int port)
{
    struct sockaddr_in sa;
    int r;
    D.a = a;
    if ((r = uv_ip4_addr(ip, port, &sa)) < 0)
        return r;
    uv_timer_init(a->loop, &D.sweep);
    D.sweep_open = 1;
    uv_timer_start(&D.sweep, on_timer, 1000, 1000);
    if ((r = uv_udp_init(a->loop, &D.udp)) == 0) {
        D.udp_open = 1;
        if ((r = uv_udp_bind(&D.udp, (struct sockaddr *)&sa, 0)) == 0)
            r = uv_udp_recv_start(&D.udp, udp_alloc, udp_recv);
    }
    if (r < 0) {
        nb_log(NB_LOG_ERR, "dns on udp %s:%d: %s", ip, port, uv_strerror(r));
        return r;
    }
    if ((r = uv_tcp_init(a->loop, &D.srv)) == 0) {
        D.tcp_open = 1;
        if ((r = uv_tcp_bind(&D.srv, (struct sockaddr *)&sa, 0)) == 0)
            r = uv_listen((uv_stream_t *)&D.srv, 64, tcp_accept);
    }
    if (r < 0) {
        nb_log(NB_LOG_ERR, "dns on tcp %s:%d: %s", ip, port, uv_strerror(r));
        return r;
    }
    nb_log(NB_LOG_INFO, "dns: %s:%d (udp, tcp)", ip, port);
    return 0;
}

void nb_agent_dns_stop(void)
{
    if (D.udp_open)
        uv_close((uv_handle_t *)&D.udp, NULL);
    if (D.tcp_open)
        uv_close((uv_handle_t *)&D.srv, NULL);
    if (D.sweep_open)
        uv_close((uv_handle_t *)&D.sweep, NULL);
    D.udp_open = D.tcp_open = D.sweep_open = 0;
    for (dnsq_t *q = D.queries, *n; q; q = n) {
        n = q->next;
        if (q->st)
            nb_muxsess_stream_reset(q->st, NB_MUX_E_CANCEL, "shutting down");
        q_free(q);
    }
    for (dconn_t *c = D.conns; c; c = c->next)
        dconn_close(c);
}
