/* Routes of the egress proxy engine: standalone listeners for host clients
 * (`nilbox proxy --listen 127.0.0.1:PORT --vm NAME`), served by the
 * daemon's loop, gate and secrets, so their prompts show up in `nilbox
 * prompts` like a VM's.
 *
 *   GET    /v1/proxies            the open listeners
 *   POST   /v1/proxies            opens one: {"listen", "vm"[, "token", "upstream_ca",
 *                                 "resolve"]}; the answer carries "token" when the
 *                                 daemon made it (no "token" given), never otherwise
 *   DELETE /v1/proxies/{id}       closes one
 *   GET    /v1/proxies/session    WebSocket: the client sends the same JSON
 *                                 object as its first message; the listener
 *                                 lives as long as the WebSocket (the CLI's
 *                                 way: Ctrl-C, EOF or a crash close it)
 *
 * Every listener requires its token in Proxy-Authorization (A26: any local
 * user can reach a loopback port); the token is in no log, audit row or
 * listing. The engine's connection budgets are sized from RLIMIT_NOFILE
 * (A28), NILBOX_PROXY_MAX_CONNS overrides the per-listener one.
 *
 * The engine (d->proxy) belongs to the daemon (daemon.c), which creates it
 * on first use, once the secret store is open (the interception CA lives
 * there), and wires its records to the audit log and `proxy.*` events.
 *
 * `upstream_ca` (an extra trusted CA file) and `resolve` (name -> address
 * overrides) exist for tests only: refused unless the daemon runs with
 * NILBOX_TEST_MODE=1. */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/egress/proxy.h"
#include "daemon/egress/proxy_creds.h"
#include "daemon/egress/proxy_url.h"
#include "lib/err.h"
#include "lib/json.h"

static int test_mode(void)
{
    const char *t = getenv("NILBOX_TEST_MODE");
    return t && strcmp(t, "1") == 0;
}

/* Parses and opens a listener from a request object. On failure `status`
 * and `err` say why. */
/* A client-chosen token: long and URL-safe (it goes into proxy URLs as
 * the password). */
static int token_valid(const char *t)
{
    size_t n = strlen(t);
    return n >= 32 && n <= 128 &&
           strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~") == n;
}

static nb_proxy_listener_t *open_listener(nb_daemon_t *d, const json_t *o, int *status, char *err,
                                          size_t errsz, char *made_token, size_t made_tokensz)
{
    *status = 422;
    made_token[0] = '\0';
    const char *listen = nb_json_str(o, "listen");
    const char *vm = nb_json_str(o, "vm");
    const char *token = nb_json_str(o, "token");
    json_t *tj = json_object_get(o, "token");
    const char *ca = nb_json_str(o, "upstream_ca");
    json_t *res = json_object_get(o, "resolve");
    if (!o || !json_is_object(o)) {
        snprintf(err, errsz, "expected a JSON object");
        return NULL;
    }
    if (!vm || !vm[0] || !nb_rules_vm_valid(vm)) {
        snprintf(err, errsz, "'vm' must be a VM name ([A-Za-z0-9._-], up to 63 bytes)");
        return NULL;
    }
    nb_pxurl_authority_t a = {0};
    /* "unix:/abs/path": a 0600 Unix socket, peers checked by uid, no token */
    const char *upath = listen && strncmp(listen, "unix:", 5) == 0 ? listen + 5 : NULL;
    if (upath && (upath[0] != '/' || strlen(upath) >= 108)) {
        snprintf(err, errsz, "'listen' unix:PATH needs an absolute path under 108 bytes");
        return NULL;
    }
    if (upath) {
        /* no address to check */
    } else if (!listen || nb_pxurl_authority((const uint8_t *)listen, strlen(listen), 0, &a) < 0 ||
               !a.is_ip) {
        /* port 0 is refused by the parser: accept "IP:0" explicitly */
        size_t n = listen ? strlen(listen) : 0;
        if (!(n > 2 && strcmp(listen + n - 2, ":0") == 0 &&
              nb_pxurl_authority((const uint8_t *)listen, n - 2, 1, &a) == 0 && a.is_ip)) {
            snprintf(err, errsz, "'listen' must be IP:PORT on a loopback address");
            return NULL;
        }
        a.port = 0;
    }
    const char *kind = upath ? "loopback" : nb_ip_internal_kind(&a.ip);
    if (!kind || strcmp(kind, "loopback") != 0) {
        snprintf(err, errsz, "'listen' must be a loopback address (the proxy speaks for a VM)");
        *status = 403;
        return NULL;
    }
    if (tj && (!token || !token_valid(token))) {
        snprintf(err, errsz, "'token' must be 32 to 128 characters of [A-Za-z0-9._~-]");
        return NULL;
    }
    if ((ca || (res && json_array_size(res))) && !test_mode()) {
        snprintf(err, errsz,
                 "'upstream_ca' and 'resolve' are test-only options: the daemon must "
                 "run with NILBOX_TEST_MODE=1");
        *status = 403;
        return NULL;
    }
    if (ca && access(ca, R_OK) != 0) {
        snprintf(err, errsz, "cannot read the upstream CA file '%.200s'", ca);
        return NULL;
    }
    nb_proxy_resolve_t rv[NB_PROXY_MAX_RESOLVE];
    size_t nrv = 0, i;
    json_t *x;
    if (res && !json_is_array(res)) {
        snprintf(err, errsz, "'resolve' must be a list of HOST:ADDR or HOST:PORT:ADDR:PORT");
        return NULL;
    }
    json_array_foreach (res, i, x) {
        if (nrv >= NB_PROXY_MAX_RESOLVE || !json_is_string(x) ||
            nb_proxy_resolve_parse(json_string_value(x), &rv[nrv]) < 0) {
            snprintf(err, errsz, "bad 'resolve' entry %zu (HOST:ADDR or HOST:PORT:ADDR:PORT)", i);
            return NULL;
        }
        nrv++;
    }
    nb_proxy_t *px = d->egress(d, err, errsz);
    if (!px) {
        *status = 409;
        return NULL;
    }
    char ip[64] = "";
    if (!upath)
        nb_ip_format(&a.ip, ip, sizeof ip);
    if (!token && !upath) {
        /* The caller did not choose one: make it and hand it back once. */
        unsigned char raw[32];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2hex(made_token, made_tokensz, raw, sizeof raw);
        sodium_memzero(raw, sizeof raw);
        token = made_token;
    }
    nb_proxy_listen_opts_t lo = {.ip = ip,
                                 .port = a.port,
                                 .vm = vm,
                                 .upstream_ca_file = ca,
                                 .resolve = rv,
                                 .nresolve = nrv,
                                 .auth_token = token};
    nb_proxy_listener_t *l = NULL;
    int r = upath ? nb_proxy_listen_unix(px, &lo, upath, &l) : nb_proxy_listen(px, &lo, &l);
    if (r < 0) {
        sodium_memzero(made_token, made_tokensz);
        snprintf(err, errsz, "cannot listen on %.200s: %s", listen,
                 r == UV_EADDRINUSE || r == -EEXIST ? "address in use" : nb_strerror(r));
        *status = r == UV_EADDRINUSE || r == -EEXIST ? 409 : 422;
        return NULL;
    }
    return l;
}

static json_t *listener_json(nb_proxy_listener_t *l, const char *ip)
{
    char addr[128];
    if (nb_proxy_listener_path(l))
        snprintf(addr, sizeof addr, "unix:%s", nb_proxy_listener_path(l));
    else
        snprintf(addr, sizeof addr, strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip,
                 nb_proxy_listener_port(l));
    return json_pack("{s:I, s:s, s:i, s:s}", "id", (json_int_t)nb_proxy_listener_id(l), "listen",
                     addr, "port", nb_proxy_listener_port(l), "vm", nb_proxy_listener_vm(l));
}

static const char *listen_ip(const json_t *o, char *ip, size_t ipsz)
{
    nb_pxurl_authority_t a;
    const char *s = nb_json_str(o, "listen");
    size_t n = s ? strlen(s) : 0;
    if (s && nb_pxurl_authority((const uint8_t *)s, n, 1, &a) == 0)
        snprintf(ip, ipsz, "%s", a.host);
    else if (s && n > 2 && nb_pxurl_authority((const uint8_t *)s, n - 2, 1, &a) == 0)
        snprintf(ip, ipsz, "%s", a.host);
    else
        snprintf(ip, ipsz, "127.0.0.1");
    return ip;
}

static void on_list(nb_api_ctx_t *ctx)
{
    nb_proxy_t *px = ctx->d->proxy;
    json_t *arr = px ? nb_proxy_listeners_json(px) : json_array();
    json_t *st = NULL;
    if (px) {
        nb_proxy_stats_t s;
        nb_proxy_stats(px, &s);
        st = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "connections",
                       (json_int_t)s.conns_open, "accepted", (json_int_t)s.conns_accepted,
                       "requests", (json_int_t)s.requests, "tunnels", (json_int_t)s.tunnels,
                       "injected", (json_int_t)s.injected, "leaks", (json_int_t)s.leaks, "denied",
                       (json_int_t)s.denied, "refused", (json_int_t)s.refused, "upstream_errors",
                       (json_int_t)s.upstream_errors, "pool_reused", (json_int_t)s.pool_reused,
                       "resolves", (json_int_t)s.resolves);
    }
    nb_api_reply_json(ctx, 200,
                      json_pack("{s:o, s:o}", "proxies", arr ? arr : json_array(), "stats",
                                st ? st : json_object()));
}

static void on_open(nb_api_ctx_t *ctx)
{
    char err[300], tok[65], ip[NB_HOSTNAME_BUFSZ];
    int status;
    nb_proxy_listener_t *l =
        open_listener(ctx->d, ctx->body, &status, err, sizeof err, tok, sizeof tok);
    if (!l) {
        nb_api_reply_error(ctx, status, status == 409 ? "wrong-state" : "invalid", "%s", err);
        return;
    }
    json_t *j = listener_json(l, listen_ip(ctx->body, ip, sizeof ip));
    if (tok[0])
        json_object_set_new(j, "token", json_string(tok));
    sodium_memzero(tok, sizeof tok);
    nb_api_reply_json(ctx, 201, j);
}

static void on_close(nb_api_ctx_t *ctx)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    unsigned long long id = strtoull(s, &end, 10);
    nb_proxy_t *px = ctx->d->proxy;
    nb_proxy_listener_t *l = px && *s && !*end ? nb_proxy_listener_find(px, id) : NULL;
    if (!l) {
        nb_api_reply_error(ctx, 404, "not-found", "no proxy listener %.40s", s);
        return;
    }
    nb_proxy_listener_close(l);
    nb_api_reply_json(ctx, 200, json_pack("{s:I, s:b}", "id", (json_int_t)id, "closed", 1));
}

/* ---- session: a listener tied to a WebSocket ---- */

typedef struct {
    nb_daemon_t *d;
    nb_ws_t *ws;
    uint64_t lid; /* 0 until opened */
} session_t;

static void ws_say(nb_ws_t *ws, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s)
        nb_ws_send(ws, 1, s, strlen(s));
    free(s);
    json_decref(j);
}

static void on_ws_message(nb_ws_t *ws, int text, const uint8_t *data, size_t len, void *ud)
{
    session_t *s = ud;
    if (s->lid) {
        ws_say(ws, json_pack("{s:s, s:s}", "type", "error", "message", "already listening"));
        return;
    }
    json_t *o = NULL;
    char err[300];
    if (!text || nb_json_parse(nb_iov(data, len), &o, err, sizeof err) < 0) {
        ws_say(ws, json_pack("{s:s, s:s}", "type", "error", "message", "expected a JSON object"));
        nb_ws_close(ws, 1007, "bad request");
        return;
    }
    int status;
    char tok[65], ip[NB_HOSTNAME_BUFSZ];
    nb_proxy_listener_t *l = open_listener(s->d, o, &status, err, sizeof err, tok, sizeof tok);
    if (!l) {
        ws_say(ws, json_pack("{s:s, s:i, s:s}", "type", "error", "status", status, "message", err));
        json_decref(o);
        nb_ws_close(ws, 1008, "refused");
        return;
    }
    s->lid = nb_proxy_listener_id(l);
    json_t *j = listener_json(l, listen_ip(o, ip, sizeof ip));
    json_object_set_new(j, "type", json_string("listening"));
    if (tok[0])
        json_object_set_new(j, "token", json_string(tok));
    sodium_memzero(tok, sizeof tok);
    ws_say(ws, j);
    json_decref(o);
}

static void on_ws_close(nb_ws_t *ws, int code, void *ud)
{
    session_t *s = ud;
    if (s->lid && s->d->proxy) {
        nb_proxy_listener_t *l = nb_proxy_listener_find(s->d->proxy, s->lid);
        if (l)
            nb_proxy_listener_close(l);
    }
    free(s);
}

static void on_session(nb_api_ctx_t *ctx)
{
    if (!nb_api_is_upgrade(ctx)) {
        nb_api_reply_error(ctx, 400, "bad-request", "this route is a WebSocket");
        return;
    }
    session_t *s = calloc(1, sizeof *s);
    if (!s) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    s->d = ctx->d;
    nb_ws_cbs_t cbs = {
        .on_message = on_ws_message, .on_close = on_ws_close, .max_message = 64 * 1024};
    if (nb_httpd_ws_accept(nb_api_take_req(ctx), &cbs, s, &s->ws) < 0)
        free(s);
}

const nb_api_route_t nb_api_routes_proxy[] = {
    {"GET", "/v1/proxies", on_list, 0},
    {"POST", "/v1/proxies", on_open, NB_API_SENSITIVE}, /* may carry a token */
    {"DELETE", "/v1/proxies/{id}", on_close, 0},
    {"GET", "/v1/proxies/session", on_session, 0},
    {0},
};
