/* A fast local HTTPS upstream for bench/proxy: keep-alive GETs answered
 * with a tiny fixed body, and /sse streams events stamped with the
 * sending time (CLOCK_REALTIME, ns) so a client on the same host can
 * measure forwarding delay. One libuv loop, the proxy's own TLS adapter.
 *
 *   bench_upstream CERT KEY   -> prints "PORT <n>" and serves until killed
 *
 * /sse?n=N&ms=M: N events, one every M ms, then the end of the stream. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "daemon/egress/proxy_io.h"

typedef struct {
    nb_pxio_t io;
    uv_timer_t sse;
    int sse_open;
    int sse_left;
    int sse_ms;
    int sse_i;
    char buf[16384];
    size_t len;
} conn_t;

static uv_loop_t *loop;
static SSL_CTX *ctx;

static void conn_freed(nb_pxio_t *io)
{
    conn_t *c = io->ud;
    if (!c->sse_open)
        free(c);
}

static void sse_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    c->sse_open = 0;
    if (c->io.closing && c->io.handles == 0)
        free(c);
}

static void conn_close(conn_t *c)
{
    if (c->sse_open && !uv_is_closing((uv_handle_t *)&c->sse))
        uv_close((uv_handle_t *)&c->sse, sse_closed);
    nb_pxio_close(&c->io, conn_freed);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_sse_tick(uv_timer_t *t)
{
    conn_t *c = t->data;
    char ev[128], chunk[160];
    if (c->sse_left-- <= 0) {
        uv_timer_stop(t);
        nb_pxio_write(&c->io, "0\r\n\r\n", 5, 0);
        return;
    }
    int n = snprintf(ev, sizeof ev, "id: %d\ndata: %lld\n\n", c->sse_i++, (long long)now_ns());
    int m = snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n", n, ev);
    nb_pxio_write(&c->io, chunk, (size_t)m, 0);
}

static void handle(conn_t *c, const char *head)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 2\r\n\r\nok";
    if (strncmp(head, "GET /sse", 8) == 0) {
        const char *q = strchr(head, '?'), *eol = strstr(head, "\r\n");
        c->sse_left = 100;
        c->sse_ms = 10;
        if (q && (!eol || q < eol)) {
            const char *n = strstr(q, "n="), *ms = strstr(q, "ms=");
            if (n)
                c->sse_left = (int)strtol(n + 2, NULL, 10);
            if (ms)
                c->sse_ms = (int)strtol(ms + 3, NULL, 10);
        }
        static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        nb_pxio_write(&c->io, h, sizeof h - 1, 0);
        uv_timer_init(loop, &c->sse);
        c->sse.data = c;
        c->sse_open = 1;
        uv_timer_start(&c->sse, on_sse_tick, (uint64_t)c->sse_ms, (uint64_t)c->sse_ms);
        return;
    }
    nb_pxio_write(&c->io, ok, sizeof ok - 1, 0);
}

static void on_data(nb_pxio_t *io, const uint8_t *p, size_t len)
{
    conn_t *c = io->ud;
    if (c->len + len > sizeof c->buf - 1) {
        conn_close(c);
        return;
    }
    memcpy(c->buf + c->len, p, len);
    c->len += len;
    for (;;) {
        c->buf[c->len] = '\0';
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end)
            return;
        size_t used = (size_t)(end - c->buf) + 4;
        *end = '\0';
        handle(c, c->buf);
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    }
}

static void on_eof(nb_pxio_t *io)
{
    conn_close(io->ud);
}

static void on_error(nb_pxio_t *io, int r)
{
    conn_close(io->ud);
}

static void on_handshake(nb_pxio_t *io, int r)
{
    if (r < 0)
        conn_close(io->ud);
    else
        nb_pxio_read_start(io);
}

static const nb_pxio_cbs_t cbs = {
    .on_data = on_data, .on_eof = on_eof, .on_error = on_error, .on_handshake = on_handshake};

static void on_accept(uv_stream_t *srv, int status)
{
    if (status < 0)
        return;
    conn_t *c = calloc(1, sizeof *c);
    if (!c || nb_pxio_init(loop, &c->io, &cbs, c) < 0) {
        free(c);
        return;
    }
    if (nb_pxio_accept(&c->io, srv) < 0 || nb_pxio_tls_server(&c->io, ctx, NULL, NULL, 0) < 0)
        conn_close(c);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_upstream CERT KEY\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "bench_upstream: cannot load %s / %s\n", argv[1], argv[2]);
        return 1;
    }
    loop = uv_default_loop();
    uv_tcp_t srv;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &srv);
    if (uv_tcp_bind(&srv, (struct sockaddr *)&a, 0) < 0 ||
        uv_listen((uv_stream_t *)&srv, 512, on_accept) < 0) {
        fprintf(stderr, "bench_upstream: cannot listen\n");
        return 1;
    }
    struct sockaddr_in b;
    int blen = sizeof b;
    uv_tcp_getsockname(&srv, (struct sockaddr *)&b, &blen);
    printf("PORT %d\n", ntohs(b.sin_port));
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
