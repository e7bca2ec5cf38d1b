/* Load generator for bench/proxy: keep-alive HTTPS GETs over N connections
 * (one thread each), directly or through an explicit proxy (CONNECT), and
 * the SSE forwarding delay. Prints one JSON line.
 *
 *   bench_client rps HOST PORT CA SECS CONNS [PROXYPORT|0] [HEADER]
 *   bench_client sse HOST PORT CA N MS [PROXYPORT|0]
 *
 * rps: {"reqs", "secs", "rps", "p50_us", "p90_us", "p99_us"} (latency of each request
 * on its connection, sequential per connection).
 * sse: {"events", "p50_us", "p99_us", "max_us"} (receive time minus the
 * upstream's send stamp, same host clock).
 *
 * NB_PROXY_AUTH (environment, not argv: other users can read argv) is
 * sent as the CONNECT's Proxy-Authorization value (e.g. "Basic ..."). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "../benchtls.h"

#define MAX_SAMPLES (4u << 20)

static const char *g_host, *g_ca, *g_header;
static int g_port, g_proxy;
static double g_secs;
static SSL_CTX *g_ctx;

static int read_n(rd_t *r, size_t n, char *sink, size_t sinksz, size_t *got)
{
    size_t g = 0;
    while (n) {
        if (r->off == r->len && fill(r) < 0)
            return -1;
        size_t k = r->len - r->off < n ? r->len - r->off : n;
        if (sink && g + k < sinksz) {
            memcpy(sink + g, r->buf + r->off, k);
        }
        g += k;
        r->off += k;
        n -= k;
    }
    if (got)
        *got = g;
    return 0;
}

/* One response: head, then Content-Length or chunked body (discarded). */
static int read_response(rd_t *r)
{
    char line[8192];
    long cl = -1;
    int chunked = 0;
    if (read_line(r, line, sizeof line) < 0 || strncmp(line, "HTTP/1.1 200", 12) != 0)
        return -1;
    for (;;) {
        if (read_line(r, line, sizeof line) < 0)
            return -1;
        if (!line[0])
            break;
        if (strncasecmp(line, "content-length:", 15) == 0)
            cl = strtol(line + 15, NULL, 10);
        if (strncasecmp(line, "transfer-encoding:", 18) == 0 && strstr(line, "chunked"))
            chunked = 1;
    }
    if (!chunked)
        return cl > 0 ? read_n(r, (size_t)cl, NULL, 0, NULL) : 0;
    for (;;) {
        if (read_line(r, line, sizeof line) < 0)
            return -1;
        long n = strtol(line, NULL, 16);
        if (n == 0)
            return read_line(r, line, sizeof line);
        if (read_n(r, (size_t)n + 2, NULL, 0, NULL) < 0)
            return -1;
    }
}

typedef struct {
    uint32_t *lat; /* microseconds */
    size_t n, cap;
    int failed;
} worker_t;

static void *rps_worker(void *arg)
{
    worker_t *w = arg;
    int fd;
    SSL *ssl = tls_connect(g_ctx, g_host, g_port, g_proxy, &fd);
    if (!ssl) {
        w->failed = 1;
        return NULL;
    }
    rd_t *r = calloc(1, sizeof *r);
    r->ssl = ssl;
    char req[1024];
    int n = snprintf(req, sizeof req, "GET /bench HTTP/1.1\r\nHost: %s:%d\r\n%s%s\r\n", g_host,
                     g_port, g_header ? g_header : "", g_header ? "\r\n" : "");
    double end = now_s() + g_secs;
    for (;;) {
        double t0 = now_s();
        if (t0 >= end)
            break;
        if (SSL_write(ssl, req, n) != n || read_response(r) < 0) {
            w->failed = 1;
            break;
        }
        double dt = now_s() - t0;
        if (w->n < w->cap)
            w->lat[w->n++] = (uint32_t)(dt * 1e6);
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    free(r);
    return NULL;
}

static int rps(int conns)
{
    pthread_t th[256];
    worker_t w[256];
    if (conns < 1 || conns > 256)
        return 2;
    double t0 = now_s();
    for (int i = 0; i < conns; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].cap = MAX_SAMPLES / (size_t)conns;
        w[i].lat = malloc(w[i].cap * sizeof *w[i].lat);
        pthread_create(&th[i], NULL, rps_worker, &w[i]);
    }
    size_t total = 0;
    int failed = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(th[i], NULL);
        total += w[i].n;
        failed |= w[i].failed;
    }
    double secs = now_s() - t0;
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < conns; i++) {
        memcpy(all + k, w[i].lat, w[i].n * sizeof *all);
        k += w[i].n;
        free(w[i].lat);
    }
    qsort(all, total, sizeof *all, cmp_u32);
    printf("{\"reqs\": %zu, \"secs\": %.3f, \"rps\": %.1f, \"p50_us\": %u, \"p90_us\": %u, "
           "\"p99_us\": %u, \"failed\": %s}\n",
           total, secs, (double)total / secs, total ? all[total / 2] : 0,
           total ? all[total * 9 / 10] : 0, total ? all[total * 99 / 100] : 0,
           failed ? "true" : "false");
    free(all);
    return failed && !total ? 1 : 0;
}

static int sse(int nev, int ms)
{
    int fd;
    SSL *ssl = tls_connect(g_ctx, g_host, g_port, g_proxy, &fd);
    if (!ssl)
        return 1;
    rd_t *r = calloc(1, sizeof *r);
    r->ssl = ssl;
    char req[512], line[8192];
    int n = snprintf(req, sizeof req, "GET /sse?n=%d&ms=%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", nev,
                     ms, g_host, g_port);
    SSL_write(ssl, req, n);
    uint32_t *d = calloc((size_t)nev + 1, sizeof *d);
    size_t k = 0;
    if (read_line(r, line, sizeof line) < 0)
        return 1;
    while (read_line(r, line, sizeof line) == 0 && line[0])
        ;
    /* chunked: size line, data, CRLF; events are "data: <ns>" lines */
    for (;;) {
        if (read_line(r, line, sizeof line) < 0)
            break;
        long sz = strtol(line, NULL, 16);
        if (sz == 0)
            break;
        char data[8192];
        size_t got;
        if (read_n(r, (size_t)sz + 2, data, sizeof data, &got) < 0)
            break;
        int64_t t = wall_ns();
        data[got < sizeof data ? got : sizeof data - 1] = '\0';
        for (char *p = strstr(data, "data: "); p; p = strstr(p + 6, "data: ")) {
            int64_t sent = strtoll(p + 6, NULL, 10);
            if (k < (size_t)nev && t >= sent)
                d[k++] = (uint32_t)((t - sent) / 1000);
        }
    }
    qsort(d, k, sizeof *d, cmp_u32);
    printf("{\"events\": %zu, \"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u}\n", k,
           k ? d[k / 2] : 0, k ? d[k * 99 / 100] : 0, k ? d[k - 1] : 0);
    SSL_free(ssl);
    close(fd);
    free(r);
    free(d);
    return k ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: bench_client rps HOST PORT CA SECS CONNS [PROXYPORT] [HEADER]\n"
                        "       bench_client sse HOST PORT CA N MS [PROXYPORT]\n");
        return 2;
    }
    g_host = argv[2];
    g_port = (int)strtol(argv[3], NULL, 10);
    g_ca = argv[4];
    g_proxy = argc > 7 ? (int)strtol(argv[7], NULL, 10) : 0;
    g_header = argc > 8 && argv[8][0] ? argv[8] : NULL;
    g_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(g_ctx, g_ca, NULL) != 1) {
        fprintf(stderr, "bench_client: cannot load %s\n", g_ca);
        return 1;
    }
    if (strcmp(argv[1], "rps") == 0) {
        g_secs = strtod(argv[5], NULL);
        return rps((int)strtol(argv[6], NULL, 10));
    }
    if (strcmp(argv[1], "sse") == 0)
        return sse((int)strtol(argv[5], NULL, 10), (int)strtol(argv[6], NULL, 10));
    return 2;
}
