/* bench/usage: a fast fake OpenAI upstream and its load generator, to
 * measure what LLM usage accounting costs in `nilbox proxy` (issue 11).
 * Nothing from the project: both sides are plain blocking OpenSSL, one
 * thread per connection, so the proxy is the only thing that changes
 * between a catalogue host (accounting on) and any other host (off).
 *
 *   bench_usage upstream CERT KEY
 *       prints "PORT <n>"; answers POST /v1/chat/completions like OpenAI:
 *       "stream":true -> SSE, chunked, one TLS write per event: EVENTS
 *       content chunks (x-bench-events, default 50) spaced x-bench-ms ms,
 *       a finish chunk, the usage chunk (choices: []) and [DONE]; each
 *       chunk's id carries its send time (CLOCK_REALTIME ns). Otherwise a
 *       chat.completion JSON body with its usage.
 *   bench_usage client HOST PROXYPORT CA SECS CONNS sse|json EVENTS MS
 *       keep-alive POSTs through the proxy (CONNECT HOST:443, TLS checked
 *       against CA), CONNS threads for SECS seconds. Prints one JSON line:
 *       {"reqs", "events", "secs", "rps", "eps", "req_p50_us", "req_p99_us",
 *        "ev_p50_us", "ev_p99_us", "failed"} (ev_*: receive time minus the
 *       upstream's stamp, per event, same host clock).
 *
 * NB_PROXY_AUTH (environment, not argv) is the CONNECT's
 * Proxy-Authorization value. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "../benchtls.h"

#define MAX_SAMPLES (4u << 20)
#define MODEL "gpt-4o-mini-2024-07-18"

static SSL_CTX *g_ctx;

/* ---- buffered TLS reader (both sides) ---- */

/* Reads n bytes; the first sinksz - 1 go to sink (NUL-terminated). */
static int read_n(rd_t *r, size_t n, char *sink, size_t sinksz)
{
    size_t g = 0;
    while (n) {
        if (r->off == r->len && fill(r) < 0)
            return -1;
        size_t k = r->len - r->off < n ? r->len - r->off : n;
        if (sink && g < sinksz - 1)
            memcpy(sink + g, r->buf + r->off, g + k < sinksz - 1 ? k : sinksz - 1 - g);
        g += k;
        r->off += k;
        n -= k;
    }
    if (sink)
        sink[g < sinksz - 1 ? g : sinksz - 1] = '\0';
    return 0;
}

/* ---- upstream ---- */

static int put_chunk(SSL *ssl, const char *ev, int len)
{
    char c[1024];
    int n = snprintf(c, sizeof c, "%x\r\n%.*s\r\n", len, len, ev);
    return n > 0 && (size_t)n < sizeof c ? put(ssl, c, (size_t)n) : -1;
}

static int answer_sse(SSL *ssl, int events, long ms)
{
    static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                            "Cache-Control: no-cache\r\nx-request-id: req_bench\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n";
    char ev[768];
    int n;
    if (put(ssl, h, sizeof h - 1) < 0)
        return -1;
    for (int i = 0; i <= events; i++) {
        if (ms > 0) {
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
            nanosleep(&ts, NULL);
        }
        const char *delta =
            i == 0 ? "{\"role\":\"assistant\",\"content\":\"\"}" : "{\"content\":\"tok \"}";
        n = snprintf(ev, sizeof ev,
                     "data: {\"id\":\"c-%lld\",\"object\":\"chat.completion.chunk\",\"created\":"
                     "1733450000,\"model\":\"" MODEL "\",\"system_fingerprint\":\"fp_1\","
                     "\"choices\":[{\"index\":0,\"delta\":%s,\"logprobs\":null,"
                     "\"finish_reason\":null}],\"usage\":null}\n\n",
                     (long long)wall_ns(), delta);
        if (put_chunk(ssl, ev, n) < 0)
            return -1;
    }
    n = snprintf(ev, sizeof ev,
                 "data: {\"id\":\"c-%lld\",\"object\":\"chat.completion.chunk\",\"created\":"
                 "1733450000,\"model\":\"" MODEL "\",\"choices\":[{\"index\":0,\"delta\":{},"
                 "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
                 (long long)wall_ns());
    if (put_chunk(ssl, ev, n) < 0)
        return -1;
    n = snprintf(ev, sizeof ev,
                 "data: {\"id\":\"c-%lld\",\"object\":\"chat.completion.chunk\",\"created\":"
                 "1733450000,\"model\":\"" MODEL "\",\"choices\":[],\"usage\":{\"prompt_tokens\":"
                 "42,\"completion_tokens\":%d,\"total_tokens\":%d,\"prompt_tokens_details\":"
                 "{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n",
                 (long long)wall_ns(), events, 42 + events);
    if (put_chunk(ssl, ev, n) < 0)
        return -1;
    return put(ssl, "0\r\n\r\n", 5);
}

static int answer_json(SSL *ssl)
{
    char body[1024], all[1536];
    int b = snprintf(body, sizeof body,
                     "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":"
                     "1733450000,\"model\":\"" MODEL "\",\"choices\":[{\"index\":0,\"message\":"
                     "{\"role\":\"assistant\",\"content\":\"tok tok tok tok tok tok tok tok\","
                     "\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
                     "\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":8,\"total_tokens\":50,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
                     "\"completion_tokens_details\":{\"reasoning_tokens\":0}},"
                     "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_1\"}");
    int n = snprintf(all, sizeof all,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: "
                     "req_bench\r\nContent-Length: %d\r\n\r\n%s",
                     b, body);
    return put(ssl, all, (size_t)n);
}

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg, one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    rd_t *r = calloc(1, sizeof *r);
    r->ssl = SSL_new(g_ctx);
    SSL_set_fd(r->ssl, fd);
    if (SSL_accept(r->ssl) != 1)
        goto out;
    for (;;) {
        char line[4096], body[4096];
        long cl = 0, ms = 0;
        int events = 50;
        if (read_line(r, line, sizeof line) < 0)
            break;
        for (;;) {
            if (read_line(r, line, sizeof line) < 0)
                goto out;
            if (!line[0])
                break;
            if (strncasecmp(line, "content-length:", 15) == 0)
                cl = strtol(line + 15, NULL, 10);
            else if (strncasecmp(line, "x-bench-events:", 15) == 0)
                events = (int)strtol(line + 15, NULL, 10);
            else if (strncasecmp(line, "x-bench-ms:", 11) == 0)
                ms = strtol(line + 11, NULL, 10);
        }
        if (cl < 0 || read_n(r, (size_t)cl, body, sizeof body) < 0)
            break;
        int rc =
            strstr(body, "\"stream\":true") ? answer_sse(r->ssl, events, ms) : answer_json(r->ssl);
        if (rc < 0)
            break;
    }
out:
    SSL_free(r->ssl);
    close(fd);
    free(r);
    return NULL;
}

/* ---- client ---- */

static const char *g_host;
static int g_proxy, g_sse, g_events, g_ms;
static double g_secs;

typedef struct {
    uint32_t *req, *ev; /* microseconds */
    size_t nreq, nev, cap;
    int failed;
} worker_t;

static void sample(uint32_t *a, size_t *n, size_t cap, int64_t us)
{
    if (*n < cap && us >= 0)
        a[(*n)++] = (uint32_t)us;
}

/* Events end at "\n\n"; each one's delay is now minus the stamp in its id. */
static void scan_events(worker_t *w, char *acc, size_t *alen)
{
    char *p = acc, *end;
    while ((end = strstr(p, "\n\n")) != NULL) {
        *end = '\0';
        char *id = strstr(p, "\"id\":\"c-");
        if (id)
            sample(w->ev, &w->nev, w->cap, (wall_ns() - strtoll(id + 8, NULL, 10)) / 1000);
        p = end + 2;
    }
    *alen -= (size_t)(p - acc);
    memmove(acc, p, *alen + 1);
}

static int read_response(rd_t *r, worker_t *w)
{
    char line[8192], acc[16384];
    size_t alen = 0;
    long cl = -1;
    int chunked = 0;
    if (read_line(r, line, sizeof line) < 0)
        return -1;
    if (strncmp(line, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, "bench_usage: %s\n", line);
        return -1;
    }
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
        return cl > 0 ? read_n(r, (size_t)cl, NULL, 0) : 0;
    acc[0] = '\0';
    for (;;) {
        if (read_line(r, line, sizeof line) < 0)
            return -1;
        long n = strtol(line, NULL, 16);
        if (n == 0)
            return read_line(r, line, sizeof line);
        if (n < 0 || (size_t)n + 2 >= sizeof acc - alen)
            return -1;
        if (read_n(r, (size_t)n + 2, acc + alen, sizeof acc - alen) < 0)
            return -1;
        alen += (size_t)n; /* drop the chunk's CRLF */
        acc[alen] = '\0';
        scan_events(w, acc, &alen);
    }
}

static void *worker(void *arg)
{
    worker_t *w = arg;
    int fd;
    SSL *ssl = tls_connect(g_ctx, g_host, 443, g_proxy, &fd);
    if (!ssl) {
        w->failed = 1;
        return NULL;
    }
    rd_t *r = calloc(1, sizeof *r);
    r->ssl = ssl;
    char body[512], req[1536];
    int b = snprintf(body, sizeof body,
                     "{\"model\":\"gpt-4o-mini\",\"max_tokens\":64,%s\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"Benchmark the usage meter, please.\"}]}",
                     g_sse ? "\"stream\":true,\"stream_options\":{\"include_usage\":true}," : "");
    int n = snprintf(req, sizeof req,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer "
                     "BENCH_KEY\r\nContent-Type: application/json\r\nx-bench-events: %d\r\n"
                     "x-bench-ms: %d\r\nContent-Length: %d\r\n\r\n%s",
                     g_host, g_events, g_ms, b, body);
    double end = now_s() + g_secs;
    for (;;) {
        double t0 = now_s();
        if (t0 >= end)
            break;
        if (put(ssl, req, (size_t)n) < 0 || read_response(r, w) < 0) {
            w->failed = 1;
            break;
        }
        sample(w->req, &w->nreq, w->cap, (int64_t)((now_s() - t0) * 1e6));
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    free(r);
    return NULL;
}

static uint32_t *merge(worker_t *w, int conns, int ev, size_t *total)
{
    size_t t = 0, k = 0;
    for (int i = 0; i < conns; i++)
        t += ev ? w[i].nev : w[i].nreq;
    uint32_t *all = malloc((t ? t : 1) * sizeof *all);
    for (int i = 0; i < conns; i++) {
        size_t n = ev ? w[i].nev : w[i].nreq;
        memcpy(all + k, ev ? w[i].ev : w[i].req, n * sizeof *all);
        k += n;
    }
    qsort(all, t, sizeof *all, cmp_u32);
    *total = t;
    return all;
}

static int client(int conns)
{
    pthread_t th[64];
    worker_t w[64];
    if (conns < 1 || conns > 64)
        return 2;
    double t0 = now_s();
    for (int i = 0; i < conns; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].cap = MAX_SAMPLES / (size_t)conns;
        w[i].req = malloc(w[i].cap * sizeof *w[i].req);
        w[i].ev = malloc(w[i].cap * sizeof *w[i].ev);
        pthread_create(&th[i], NULL, worker, &w[i]);
    }
    int failed = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(th[i], NULL);
        failed |= w[i].failed;
    }
    double secs = now_s() - t0;
    size_t nr, ne;
    uint32_t *rq = merge(w, conns, 0, &nr), *ev = merge(w, conns, 1, &ne);
    printf("{\"reqs\": %zu, \"events\": %zu, \"secs\": %.3f, \"rps\": %.1f, \"eps\": %.1f, "
           "\"req_p50_us\": %u, \"req_p99_us\": %u, \"ev_p50_us\": %u, \"ev_p99_us\": %u, "
           "\"failed\": %s}\n",
           nr, ne, secs, (double)nr / secs, (double)ne / secs, nr ? rq[nr / 2] : 0,
           nr ? rq[nr * 99 / 100] : 0, ne ? ev[ne / 2] : 0, ne ? ev[ne * 99 / 100] : 0,
           failed ? "true" : "false");
    for (int i = 0; i < conns; i++) {
        free(w[i].req);
        free(w[i].ev);
    }
    free(rq);
    free(ev);
    return failed && !nr ? 1 : 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && strcmp(argv[1], "upstream") == 0)
        return tls_serve("bench_usage", argv[2], argv[3], &g_ctx, serve);
    if (argc != 10 || strcmp(argv[1], "client") != 0) {
        fprintf(stderr, "usage: bench_usage upstream CERT KEY\n"
                        "       bench_usage client HOST PROXYPORT CA SECS CONNS sse|json "
                        "EVENTS MS\n");
        return 2;
    }
    g_host = argv[2];
    g_proxy = (int)strtol(argv[3], NULL, 10);
    g_secs = strtod(argv[5], NULL);
    g_sse = strcmp(argv[7], "sse") == 0;
    g_events = (int)strtol(argv[8], NULL, 10);
    g_ms = (int)strtol(argv[9], NULL, 10);
    g_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ctx || SSL_CTX_load_verify_locations(g_ctx, argv[4], NULL) != 1) {
        fprintf(stderr, "bench_usage: cannot load CA %s\n", argv[4]);
        return 1;
    }
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
    return client((int)strtol(argv[6], NULL, 10));
}
