/* Small server on nb_httpd for tests/integ/test_httpserver.py.
 *
 * Usage: httpd_echo [--unix PATH] [--idle MS] [--request-timeout MS]
 *                   [--max-body N] [--max-conns N] [--max-headers N]
 *                   [--ws-max N]
 * Listens on the Unix socket (0600) and on 127.0.0.1:0, prints
 * "READY <port>" on stdout, and serves:
 *   GET  /hello          200 "hello\n"
 *   POST /echo           echoes the body (and X-Test-Echo header)
 *   GET  /slow?ms=N      answers "slow N" after N ms (deferred respond)
 *   GET  /big?n=N        N bytes of 'x'
 *   GET  /header?name=H  the value of request header H
 *   GET  /ws             WebSocket echo; "close" closes with 1000,
 *                        "flood" sends until the send cap refuses
 *   GET  /stop           answers, then closes the server while a /slow
 *                        request may still be pending, and exits 0
 * SIGTERM closes the server and exits 0 (ASan checks for leaks). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "lib/err.h"
#include "lib/httpserver.h"
#include "lib/log.h"

static nb_httpd_t *srv;
static uv_loop_t *loop;
static uv_signal_t sigterm;
static size_t ws_max = 64 * 1024;
static int stopping;

typedef struct {
    uv_timer_t t;
    nb_httpd_req_t *req;
    unsigned long ms;
} slow_t;

static unsigned long num_arg(const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*end) {
        fprintf(stderr, "bad number: %s\n", s);
        exit(2);
    }
    return v;
}

static const char *query_param(const char *q, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    while (q && *q) {
        if (strncmp(q, name, nl) == 0 && q[nl] == '=') {
            const char *v = q + nl + 1, *e = strchr(v, '&');
            size_t l = e ? (size_t)(e - v) : strlen(v);
            if (l >= n)
                l = n - 1;
            memcpy(out, v, l);
            out[l] = '\0';
            return out;
        }
        q = strchr(q, '&');
        if (q)
            q++;
    }
    return NULL;
}

static void on_slow_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_slow(uv_timer_t *t)
{
    slow_t *s = t->data;
    char body[64];
    int n = snprintf(body, sizeof(body), "slow %lu\n", s->ms);
    nb_httpd_respond(s->req, 200, "text/plain", body, (size_t)n);
    uv_close((uv_handle_t *)t, on_slow_closed);
}

static void on_ws_message(nb_ws_t *ws, int text, const uint8_t *data, size_t len, void *ud)
{
    (void)ud;
    if (text && len == 5 && memcmp(data, "close", 5) == 0) {
        nb_ws_close(ws, 1000, "bye");
        return;
    }
    if (text && len == 5 && memcmp(data, "flood", 5) == 0) {
        static char chunk[64 * 1024];
        int i = 0, r = 0;
        memset(chunk, 'f', sizeof(chunk));
        while (i < 1000 && (r = nb_ws_send(ws, 0, chunk, sizeof(chunk))) == 0)
            i++;
        char msg[64];
        int n = snprintf(msg, sizeof(msg), "flood %d %s", i, nb_errname(r));
        /* The cap refused further sends; report through a log line. */
        fprintf(stderr, "%s\n", msg);
        (void)n;
        return;
    }
    nb_ws_send(ws, text, data, len);
}

static void on_ws_close(nb_ws_t *ws, int code, void *ud)
{
    (void)ws;
    (void)ud;
    fprintf(stderr, "ws closed %d\n", code);
}

static void on_closed(void *ud)
{
    (void)ud;
    uv_close((uv_handle_t *)&sigterm, NULL);
}

static void stop_server(void)
{
    if (stopping)
        return;
    stopping = 1;
    nb_httpd_close(srv, on_closed, NULL);
}

static void on_sigterm(uv_signal_t *s, int sig)
{
    (void)s;
    (void)sig;
    stop_server();
}

static void on_request(nb_httpd_req_t *req, void *ud)
{
    const char *m = nb_httpd_req_method(req), *path = nb_httpd_req_path(req);
    const char *q = nb_httpd_req_query(req);
    char v[256];
    (void)ud;

    if (strcmp(path, "/hello") == 0 && (!strcmp(m, "GET") || !strcmp(m, "HEAD"))) {
        nb_httpd_respond(req, 200, "text/plain", "hello\n", 6);
    } else if (strcmp(path, "/echo") == 0 && strcmp(m, "POST") == 0) {
        nb_iov_t b = nb_httpd_req_body(req);
        const char *ct = nb_httpd_req_header(req, "Content-Type");
        const char *x = nb_httpd_req_header(req, "X-Test");
        if (x && nb_httpd_add_header(req, "X-Test-Echo", x) < 0) {
            nb_httpd_respond_error(req, 400, "bad-header", "cannot echo");
            return;
        }
        nb_httpd_respond(req, 200, ct ? ct : "application/octet-stream", b.p, b.len);
    } else if (strcmp(path, "/slow") == 0) {
        slow_t *s = calloc(1, sizeof(*s));
        if (!s) {
            nb_httpd_respond_error(req, 500, "oom", "out of memory");
            return;
        }
        s->req = req;
        s->ms = query_param(q, "ms", v, sizeof(v)) ? num_arg(v) : 100;
        uv_timer_init(loop, &s->t);
        s->t.data = s;
        uv_timer_start(&s->t, on_slow, s->ms, 0);
    } else if (strcmp(path, "/big") == 0) {
        size_t n = query_param(q, "n", v, sizeof(v)) ? num_arg(v) : 1024;
        char *b = malloc(n ? n : 1);
        if (!b) {
            nb_httpd_respond_error(req, 500, "oom", "out of memory");
            return;
        }
        memset(b, 'x', n);
        nb_httpd_respond(req, 200, "application/octet-stream", b, n);
        free(b);
    } else if (strcmp(path, "/header") == 0) {
        const char *h = query_param(q, "name", v, sizeof(v)) ? nb_httpd_req_header(req, v) : NULL;
        if (!h)
            nb_httpd_respond_error(req, 404, "no-header", "no such header");
        else
            nb_httpd_respond(req, 200, "text/plain", h, strlen(h));
    } else if (strcmp(path, "/ws") == 0) {
        nb_ws_cbs_t cbs = {
            .on_message = on_ws_message, .on_close = on_ws_close, .max_message = ws_max};
        nb_ws_t *ws;
        nb_httpd_ws_accept(req, &cbs, NULL, &ws);
    } else if (strcmp(path, "/stop") == 0) {
        nb_httpd_respond(req, 200, "text/plain", "stopping\n", 9);
        stop_server();
    } else {
        nb_httpd_respond_error(req, 404, "not-found", "no such path");
    }
}

int main(int argc, char **argv)
{
    nb_httpd_cfg_t cfg;
    const char *unix_path = NULL;
    int port = 0, r;

    nb_httpd_cfg_default(&cfg);
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) {
            fprintf(stderr, "missing value for %s\n", argv[i]);
            return 2;
        }
        const char *a = argv[i], *val = argv[++i];
        if (!strcmp(a, "--unix"))
            unix_path = val;
        else if (!strcmp(a, "--idle"))
            cfg.idle_timeout_ms = num_arg(val);
        else if (!strcmp(a, "--request-timeout"))
            cfg.request_timeout_ms = num_arg(val);
        else if (!strcmp(a, "--max-body"))
            cfg.max_body = num_arg(val);
        else if (!strcmp(a, "--max-conns"))
            cfg.max_conns = num_arg(val);
        else if (!strcmp(a, "--max-headers"))
            cfg.max_headers = num_arg(val);
        else if (!strcmp(a, "--ws-max"))
            ws_max = num_arg(val);
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    nb_log_set_tag("httpd_echo");
    loop = uv_default_loop();
    if ((r = nb_httpd_new(loop, &cfg, on_request, NULL, &srv)) < 0 ||
        (unix_path && (r = nb_httpd_listen_unix(srv, unix_path, 0600)) < 0) ||
        (r = nb_httpd_listen_tcp(srv, "127.0.0.1", 0, &port)) < 0) {
        fprintf(stderr, "httpd_echo: %s\n", nb_strerror(r));
        return 1;
    }
    nb_httpd_set_default_header(srv, "X-Content-Type-Options", "nosniff");
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigterm, on_sigterm, SIGTERM);
    printf("READY %d\n", port);
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    r = uv_loop_close(loop);
    if (r != 0) {
        fprintf(stderr, "httpd_echo: loop not empty at exit\n");
        return 1;
    }
    return 0;
}
