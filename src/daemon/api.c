#include "daemon/api.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "daemon/apiroute.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define TOKEN_BYTES 32
#define TOKEN_HEX (2 * TOKEN_BYTES)
#define WS_TOKEN_PROTO "nilbox.token."
#define NB_API_MAX_CONNS 256
#define NB_API_MAX_UNAUTH 64
#define NB_API_UNAUTH_TIMEOUT_MS 5000

struct nb_api {
    nb_daemon_t *d;
    nb_httpd_t *srv;
    int port;
    char url[64];
    char host_ip[32];   /* "127.0.0.1:PORT" */
    char host_name[32]; /* "localhost:PORT" */
    char token[TOKEN_HEX + 1];
    uint64_t requests;
    void (*done)(void *ud);
    void *done_ud;
};

#define NB_API_TABLE(m) nb_api_routes_##m,
static const nb_api_route_t *const route_tables[] = {NB_API_MODULES(NB_API_TABLE) NULL};
#undef NB_API_TABLE

/* ---------------------------------------------------------------- replies */

static void ctx_free(nb_api_ctx_t *ctx)
{
    if (!ctx)
        return;
    json_decref(ctx->body);
    nb_apiroute_params_free(&ctx->params);
    free(ctx);
}

nb_httpd_req_t *nb_api_take_req(nb_api_ctx_t *ctx)
{
    nb_httpd_req_t *req = ctx->req;
    ctx_free(ctx);
    return req;
}

void nb_api_reply_json(nb_api_ctx_t *ctx, int status, json_t *body)
{
    nb_buf_t b;
    nb_buf_init(&b, 64u << 20);
    if (!body)
        body = json_object();
    if (nb_json_dump(body, &b) < 0 || nb_buf_append(&b, "\n", 1) < 0) {
        nb_httpd_respond_error(ctx->req, 500, "internal", "cannot serialise the answer");
    } else {
        nb_httpd_respond(ctx->req, status, "application/json", b.p, b.len);
    }
    json_decref(body);
    nb_buf_free(&b);
    ctx_free(ctx);
}

static void reply_error_v(nb_httpd_req_t *req, int status, const char *code, const char *fmt,
                          va_list ap) __attribute__((format(printf, 4, 0)));

static void reply_error_v(nb_httpd_req_t *req, int status, const char *code, const char *fmt,
                          va_list ap)
{
    char msg[1024], esc[256];
    const char *path = nb_httpd_req_path(req);
    vsnprintf(msg, sizeof msg, fmt, ap);
    nb_log_conn(status >= 500 ? NB_LOG_ERR : NB_LOG_INFO, nb_httpd_req_conn_id(req),
                "%s %s -> %d %s", nb_httpd_req_method(req),
                nb_log_escape(esc, sizeof esc, path, strlen(path)), status, code);
    nb_httpd_respond_error(req, status, code, msg);
}

static void req_error(nb_httpd_req_t *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void req_error(nb_httpd_req_t *req, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(req, status, code, fmt, ap);
    va_end(ap);
}

void nb_api_reply_error(nb_api_ctx_t *ctx, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(ctx->req, status, code, fmt, ap);
    va_end(ap);
    ctx_free(ctx);
}

void nb_api_reply_errno(nb_api_ctx_t *ctx, int r, const char *message)
{
    int status = 500;
    const char *code = "internal";
    switch (r) {
    case NB_ENOTFOUND:
    case -ENOENT:
        status = 404, code = "not-found";
        break;
    case NB_EEXIST:
    case -EEXIST:
        status = 409, code = "conflict";
        break;
    case NB_ESTATE:
        status = 409, code = "wrong-state";
        break;
    case NB_EINVAL:
    case -EINVAL:
        status = 422, code = "invalid";
        break;
    case NB_EDENIED:
    case -EACCES:
    case -EPERM:
        status = 403, code = "denied";
        break;
    case NB_EAUTH:
        status = 401, code = "unauthorized";
        break;
    case NB_ETOOBIG:
        status = 413, code = "too-large";
        break;
    case NB_EPARSE:
        status = 400, code = "bad-request";
        break;
    case NB_ETIMEOUT:
        status = 504, code = "timeout";
        break;
    default:
        break;
    }
    nb_api_reply_error(ctx, status, code, "%s", message ? message : nb_strerror(r));
}

/* ----------------------------------------------------------- small parsing */

const char *nb_api_param(const nb_api_ctx_t *ctx, const char *name)
{
    return nb_apiroute_param(&ctx->params, name);
}

int nb_api_query(const nb_api_ctx_t *ctx, const char *name, char *out, size_t outsz)
{
    return nb_apiroute_query_get(nb_httpd_req_query(ctx->req), name, out, outsz);
}

int nb_api_is_upgrade(const nb_api_ctx_t *ctx)
{
    const char *u = nb_httpd_req_header(ctx->req, "Upgrade");
    return u && strcasecmp(u, "websocket") == 0;
}

/* ------------------------------------------------------------------ routing */

static const nb_api_route_t *find_route(const char *method, const char *path, int *path_known,
                                        char *allow, size_t allowsz)
{
    *path_known = 0;
    allow[0] = '\0';
    for (size_t t = 0; route_tables[t]; t++) {
        for (const nb_api_route_t *r = route_tables[t]; r->method; r++) {
            if (nb_apiroute_match(r->pattern, path, NULL) != 1)
                continue;
            if (strcmp(r->method, method) == 0)
                return r;
            *path_known = 1;
            size_t used = strlen(allow);
            snprintf(allow + used, allowsz - used, "%s%s", used ? ", " : "", r->method);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ admission */

static int token_from_request(nb_httpd_req_t *req, int ws, char *out, size_t outsz)
{
    const char *auth = nb_httpd_req_header(req, "Authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        snprintf(out, outsz, "%s", auth + 7);
        return 1;
    }
    if (!ws)
        return 0;
    /* Browsers cannot set headers on a WebSocket: accept the query string
     * or a subprotocol entry. */
    if (nb_apiroute_query_get(nb_httpd_req_query(req), "token", out, outsz) == 1)
        return 1;
    const char *proto = nb_httpd_req_header(req, "Sec-WebSocket-Protocol");
    const char *t = proto ? strstr(proto, WS_TOKEN_PROTO) : NULL;
    if (t) {
        t += strlen(WS_TOKEN_PROTO);
        size_t len = strcspn(t, ", ");
        snprintf(out, outsz, "%.*s", (int)(len < outsz ? len : outsz - 1), t);
        return 1;
    }
    return 0;
}

static int token_ok(const nb_api_t *api, const char *given)
{
    /* Length is public (fixed); the comparison of the bytes is constant-time. */
    return strlen(given) == TOKEN_HEX && sodium_memcmp(given, api->token, TOKEN_HEX) == 0;
}

/* Returns 0 when the request may proceed; otherwise it has been answered. */
static int admit(nb_api_t *api, nb_httpd_req_t *req, int is_unix, int *authed)
{
    const char *host = nb_httpd_req_header(req, "Host");
    const char *origin = nb_httpd_req_header(req, "Origin");
    const char *site = nb_httpd_req_header(req, "Sec-Fetch-Site");
    char esc[160];
    *authed = is_unix;
    if (!host || !host[0]) {
        req_error(req, 400, "missing-host", "the request has no Host header");
        return -1;
    }
    if (is_unix) {
        /* The names an HTTP client uses for a local socket; anything else
         * means a confused or forwarded request. */
        if (!nb_apiroute_unix_host_ok(host)) {
            req_error(req, 403, "forbidden-host",
                      "Host '%s' is not valid on the local socket (use 'localhost')",
                      nb_log_escape(esc, sizeof esc, host, strlen(host)));
            return -1;
        }
        if (origin) {
            req_error(req, 403, "forbidden-origin",
                      "requests with an Origin header are not accepted on the local socket");
            return -1;
        }
        return 0;
    }
    /* DNS rebinding (A21): a page on evil.example that resolves to
     * 127.0.0.1 still sends Host: evil.example:PORT. */
    if (strcmp(host, api->host_ip) != 0 && strcasecmp(host, api->host_name) != 0) {
        req_error(req, 403, "forbidden-host",
                  "Host '%s' is not this daemon; use http://%s/ (protection against DNS "
                  "rebinding)",
                  nb_log_escape(esc, sizeof esc, host, strlen(host)), api->host_ip);
        return -1;
    }
    if (origin) {
        /* Same origin: scheme http and the exact authority of this request. */
        if (strncasecmp(origin, "http://", 7) != 0 || strcasecmp(origin + 7, host) != 0) {
            req_error(req, 403, "forbidden-origin",
                      "Origin '%s' is not allowed; only pages served by this daemon (%s) may "
                      "call the API",
                      nb_log_escape(esc, sizeof esc, origin, strlen(origin)), api->url);
            return -1;
        }
    }
    if (site && strcasecmp(site, "cross-site") == 0) {
        req_error(req, 403, "forbidden-origin", "cross-site requests are not allowed");
        return -1;
    }
    char given[TOKEN_HEX + 8];
    const char *upg = nb_httpd_req_header(req, "Upgrade");
    int ws = upg && strcasecmp(upg, "websocket") == 0;
    *authed = token_from_request(req, ws, given, sizeof given) && token_ok(api, given);
    sodium_memzero(given, sizeof given);
    if (*authed)
        nb_httpd_req_set_authed(req); /* leaves the unauthenticated budget */
    return 0;
}

static int content_type_is_json(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

static void on_request(nb_httpd_req_t *req, void *ud)
{
    nb_api_t *api = ud;
    nb_daemon_t *d = api->d;
    int is_unix = nb_httpd_req_is_unix(req), authed = 0, known = 0;
    char allow[64];
    api->requests++;
    if (admit(api, req, is_unix, &authed) < 0)
        return;
    const char *method = nb_httpd_req_method(req), *path = nb_httpd_req_path(req);
    const nb_api_route_t *route = find_route(method, path, &known, allow, sizeof allow);
    if (route && (route->flags & NB_API_SENSITIVE))
        nb_httpd_req_set_sensitive(req);
    if (!authed && !(route && (route->flags & NB_API_PUBLIC))) {
        /* Before 404/405 so that routes cannot be probed without a token. */
        nb_httpd_add_header(req, "WWW-Authenticate", "Bearer realm=\"nilbox\"");
        req_error(req, 401, "unauthorized",
                  "missing or wrong API token: send 'Authorization: Bearer <token>' with the "
                  "token from %s",
                  d->home.api_json);
        return;
    }
    if (!route) {
        if (known) {
            nb_httpd_add_header(req, "Allow", allow);
            req_error(req, 405, "method-not-allowed", "%s is not allowed on %s (allowed: %s)",
                      method, path, allow);
        } else {
            req_error(req, 404, "not-found", "no such API route: %s %s (see docs/api.md)", method,
                      path);
        }
        return;
    }
    nb_api_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        req_error(req, 500, "internal", "out of memory");
        return;
    }
    ctx->req = req;
    ctx->d = d;
    ctx->is_unix = is_unix;
    int m = nb_apiroute_match(route->pattern, path, &ctx->params);
    if (m != 1) {
        nb_api_reply_error(ctx, m == -ENOMEM ? 500 : 400, m == -ENOMEM ? "internal" : "bad-path",
                           "a path segment is not valid (bad escape, encoded '/' or too long)");
        return;
    }
    nb_iov_t body = nb_httpd_req_body(req);
    if (body.len > 0 && !(route->flags & NB_API_RAW_BODY)) {
        char why[256];
        if (!content_type_is_json(nb_httpd_req_header(req, "Content-Type"))) {
            nb_api_reply_error(ctx, 415, "unsupported-media-type",
                               "request bodies must be JSON (Content-Type: application/json)");
            return;
        }
        if (nb_json_parse(body, &ctx->body, why, sizeof why) < 0) {
            nb_api_reply_error(ctx, 400, "bad-json", "the request body is not valid JSON: %s", why);
            return;
        }
        if (!json_is_object(ctx->body)) {
            nb_api_reply_error(ctx, 422, "invalid", "the request body must be a JSON object");
            return;
        }
    }
    nb_log_conn(NB_LOG_DEBUG, nb_httpd_req_conn_id(req), "%s %s (%s)", method, path,
                is_unix ? "unix" : "tcp");
    route->fn(ctx);
}

/* --------------------------------------------------------------- lifecycle */

static int write_api_json(nb_api_t *api)
{
    json_t *j = json_pack("{s:i, s:s, s:s, s:I}", "port", api->port, "token", api->token, "url",
                          api->url, "pid", (json_int_t)getpid());
    nb_buf_t b;
    int r;
    nb_buf_init(&b, 4096);
    if (!j || nb_json_dump(j, &b) < 0 || nb_buf_append(&b, "\n", 1) < 0)
        r = -ENOMEM;
    else
        r = nb_home_write_private(api->d->home.api_json, b.p, b.len);
    nb_buf_wipe_free(&b);
    json_decref(j);
    return r;
}

static int set_security_headers(nb_api_t *api)
{
    char csp[512];
    /* The UI is same-origin static files plus the API and its WebSockets;
     * nothing else may load, frame it or be framed (A21). */
    snprintf(csp, sizeof csp,
             "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "font-src 'self'; connect-src 'self' ws://%s ws://%s; frame-ancestors 'none'; "
             "base-uri 'none'; form-action 'none'",
             api->host_ip, api->host_name);
    static const char *const hdr[][2] = {
        {"X-Content-Type-Options", "nosniff"},
        {"X-Frame-Options", "DENY"},
        {"Referrer-Policy", "no-referrer"},
        {"Cache-Control", "no-store"},
        {"Cross-Origin-Opener-Policy", "same-origin"},
        {"Cross-Origin-Resource-Policy", "same-origin"},
    };
    int r = nb_httpd_set_default_header(api->srv, "Content-Security-Policy", csp);
    for (size_t i = 0; r == 0 && i < sizeof hdr / sizeof hdr[0]; i++)
        r = nb_httpd_set_default_header(api->srv, hdr[i][0], hdr[i][1]);
    return r;
}

/* Per listener: 256, or an eighth of the descriptor limit when that is
 * smaller (both listeners together stay within a quarter of it). */
static size_t api_max_conns(void)
{
    struct rlimit rl;
    size_t n = NB_API_MAX_CONNS;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 8 < n)
        n = (size_t)rl.rlim_cur / 8;
    return n < 16 ? 16 : n;
}

static void on_srv_closed(void *ud)
{
    nb_api_t *api = ud;
    void (*done)(void *) = api->done;
    void *done_ud = api->done_ud;
    sodium_memzero(api->token, sizeof api->token);
    free(api);
    if (done)
        done(done_ud);
}

int nb_api_start(nb_daemon_t *d, nb_api_t **out, char *err, size_t errsz)
{
    nb_httpd_cfg_t cfg;
    nb_api_t *api = calloc(1, sizeof *api);
    unsigned char raw[TOKEN_BYTES];
    int r;
    *out = NULL;
    if (!api)
        return -ENOMEM;
    api->d = d;
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(api->token, sizeof api->token, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);

    nb_httpd_cfg_default(&cfg);
    cfg.max_body = NB_API_MAX_BODY;
    /* Budgets per listener (the Unix socket and the TCP port never share
     * one): idle connections make room for new ones; on the TCP port,
     * which any local user can reach, connections without a valid token
     * get a small budget of their own and 5 s of patience, so they can
     * lock out neither the CLI nor the owner's browser. */
    cfg.max_conns = api_max_conns();
    cfg.evict_idle = 1;
    cfg.max_conns_per_uid = cfg.max_conns * 3 / 4;
    cfg.unauth_timeout_ms = NB_API_UNAUTH_TIMEOUT_MS;
    cfg.max_unauth_conns =
        cfg.max_conns / 4 < NB_API_MAX_UNAUTH ? cfg.max_conns / 4 : NB_API_MAX_UNAUTH;
    if ((r = nb_httpd_new(d->loop, &cfg, on_request, api, &api->srv)) < 0) {
        snprintf(err, errsz, "cannot create the API server: %s", nb_strerror(r));
        free(api);
        return r;
    }
    if ((r = nb_httpd_listen_unix(api->srv, d->home.sock, 0600)) < 0) {
        snprintf(err, errsz, "cannot listen on %s: %s", d->home.sock, nb_strerror(r));
        goto fail;
    }
    if (d->api_port_req >= 0) {
        if ((r = nb_httpd_listen_tcp(api->srv, "127.0.0.1", d->api_port_req, &api->port)) < 0) {
            snprintf(err, errsz, "cannot listen on 127.0.0.1:%d: %s", d->api_port_req,
                     nb_strerror(r));
            goto fail;
        }
        snprintf(api->url, sizeof api->url, "http://127.0.0.1:%d/", api->port);
        snprintf(api->host_ip, sizeof api->host_ip, "127.0.0.1:%d", api->port);
        snprintf(api->host_name, sizeof api->host_name, "localhost:%d", api->port);
    }
    if ((r = set_security_headers(api)) < 0) {
        snprintf(err, errsz, "cannot set response headers: %s", nb_strerror(r));
        goto fail;
    }
    if ((r = write_api_json(api)) < 0) {
        snprintf(err, errsz, "cannot write %s: %s", d->home.api_json, nb_strerror(r));
        goto fail;
    }
    *out = api;
    return 0;
fail:
    nb_httpd_close(api->srv, NULL, NULL);
    unlink(d->home.sock);
    sodium_memzero(api->token, sizeof api->token);
    free(api);
    return r;
}

void nb_api_close(nb_api_t *api, void (*done)(void *ud), void *ud)
{
    if (!api) {
        if (done)
            done(ud);
        return;
    }
    api->done = done;
    api->done_ud = ud;
    unlink(api->d->home.api_json);
    unlink(api->d->home.sock);
    nb_httpd_close(api->srv, on_srv_closed, api);
}

int nb_api_port(const nb_api_t *api)
{
    return api->port;
}

const char *nb_api_url(const nb_api_t *api)
{
    return api->url;
}

uint64_t nb_api_request_count(const nb_api_t *api)
{
    return api->requests;
}
