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
 * The engine is created on first use, once the secret store is open (the
 * interception CA lives there). It records gate decisions, injections,
 * leaks and refusals in the audit log and as `proxy.*` events.
 *
 * `upstream_ca` (an extra trusted CA file) and `resolve` (name -> address
 * overrides) exist for tests only: refused unless the daemon runs with
 * NILBOX_TEST_MODE=1. */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/egress/proxy.h"
#include "daemon/egress/proxy_creds.h"
#include "daemon/egress/proxy_url.h"
#include "daemon/events.h"
#include "daemon/secretsvc.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* The engine of this daemon (one per process, loop thread). */
static struct {
    nb_proxy_t *px;
    nb_daemon_t *d;
    uint64_t watch;
} eng;

static int test_mode(void)
{
    const char *t = getenv("NILBOX_TEST_MODE");
    return t && strcmp(t, "1") == 0;
}

/* The audit hook: every record becomes an audit row (when the log is
 * open) and, for denials, leaks and refusals, an event the UI can show. */
static void on_record(void *ud, const char *kind, const char *vm, const char *host, int port,
                      json_t *detail)
{
    nb_daemon_t *d = ud;
    const char *decision = nb_json_str(detail, "decision");
    int gate = strcmp(kind, "gate.decision") == 0;
    /* Routine allows and injections are audit rows only; what a user may
     * want to see at once (denials, leaks, refusals) is an event too. */
    if (d->events && strcmp(kind, "inject") != 0 &&
        (!gate || (decision && strcmp(decision, "deny") == 0))) {
        char type[48];
        snprintf(type, sizeof type, "proxy.%s", gate ? "denied" : kind);
        nb_events_emit(d->events, type,
                       json_pack("{s:s, s:s, s:i, s:O}", "vm", vm ? vm : "", "host",
                                 host ? host : "", "port", port, "detail", detail));
    }
    if (d->audit)
        nb_audit_append(d->audit, kind, vm, host, port, detail);
    else
        json_decref(detail);
}

static void snap_release(void *owner)
{
    nb_secretsvc_snap_unref(owner);
}

static int snap_unseal(void *ctx, const nb_sealed_t *e, uint8_t *buf, size_t cap, size_t *len)
{
    return nb_secretsvc_unseal_to(ctx, e, buf, cap, len);
}

static void install_snapshot(const nb_secretsvc_snap_t *snap)
{
    nb_pxcreds_t *c = NULL;
    if (!eng.px)
        return;
    if (snap) {
        nb_secretsvc_snap_t *ref = nb_secretsvc_snap_ref(snap);
        if (nb_pxcreds_wrap(ref->sealed, ref->nsealed, ref->bindings, ref->nbindings, ref->names,
                            snap_unseal, eng.d->secrets, snap_release, ref, &c) < 0) {
            nb_secretsvc_snap_unref(ref);
            nb_log(NB_LOG_WARN, "proxy: cannot take the new secrets snapshot; keeping the old");
            return;
        }
    }
    nb_proxy_set_creds(eng.px, c);
}

static void on_snap_changed(void *ud, const nb_secretsvc_snap_t *snap)
{
    install_snapshot(snap);
}

/* Descriptor budgets below the process limit (A28): a proxy client
 * connection costs up to 3 descriptors (client, upstream, the guest
 * channel's socketpair end); a reserve stays for the API, the audit log,
 * VMs and their channels. One listener (one VM) gets a quarter of the
 * total, so a single client or guest cannot starve the others. */
static void size_budgets(nb_proxy_cfg_t *cfg)
{
    struct rlimit rl;
    size_t lim = 1024, reserve = 256;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        lim = (size_t)rl.rlim_cur;
    else if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        lim = 1u << 20;
    if (lim / 4 > reserve)
        reserve = lim / 4;
    size_t total = lim > reserve + 96 ? (lim - reserve) / 3 : 32;
    size_t per = total / 4 < 16 ? 16 : total / 4;
    if (per > 1024)
        per = 1024;
    cfg->max_conns_total = total;
    cfg->max_conns = per;
    const char *e = getenv("NILBOX_PROXY_MAX_CONNS");
    char *end;
    unsigned long long v = e ? strtoull(e, &end, 10) : 0;
    if (e && *e && !*end && v >= 1 && v <= total)
        cfg->max_conns = (size_t)v;
    else if (e)
        nb_log(NB_LOG_WARN, "NILBOX_PROXY_MAX_CONNS must be 1..%zu; using %zu", total, per);
    nb_log(NB_LOG_INFO, "proxy budgets: %zu connections per listener, %zu in all (fd limit %zu)",
           cfg->max_conns, total, lim);
}

static int engine(nb_daemon_t *d, char *err, size_t errsz)
{
    if (eng.px)
        return 0;
    if (d->stopping || !d->gate || !d->secrets) {
        snprintf(err, errsz, "the daemon is stopping");
        return NB_ESTATE;
    }
    nb_ca_t *ca = nb_secretsvc_ca(d->secrets);
    if (!ca) {
        snprintf(err, errsz,
                 "the secret store is %s, so the interception CA is not available; unlock it "
                 "first ('nilbox secret unlock')",
                 nb_secretsvc_state_name(nb_secretsvc_state(d->secrets)));
        return NB_ESTATE;
    }
    nb_proxy_cfg_t cfg;
    nb_proxy_cfg_default(&cfg);
    size_budgets(&cfg);
    cfg.gate = d->gate;
    cfg.ca = ca;
    cfg.record = on_record;
    cfg.record_ud = d;
    int r = nb_proxy_new(d->loop, &cfg, &eng.px);
    if (r < 0) {
        snprintf(err, errsz, "cannot start the proxy engine: %s", nb_strerror(r));
        return r;
    }
    eng.d = d;
    install_snapshot(nb_secretsvc_snapshot(d->secrets));
    eng.watch = nb_secretsvc_watch(d->secrets, on_snap_changed, NULL);
    return 0;
}

nb_proxy_t *nb_api_proxy_engine(nb_daemon_t *d, char *err, size_t errsz)
{
    return engine(d, err, errsz) < 0 ? NULL : eng.px;
}

void nb_api_proxy_stop(nb_daemon_t *d)
{
    if (!eng.px)
        return;
    if (d->secrets && eng.watch)
        nb_secretsvc_unwatch(d->secrets, eng.watch);
    eng.watch = 0;
    /* Closing cancels every gate wait at once; handles close on the loop. */
    nb_proxy_free(eng.px, NULL, NULL);
    eng.px = NULL;
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
    int r = engine(d, err, errsz);
    if (r < 0) {
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
    r = upath ? nb_proxy_listen_unix(eng.px, &lo, upath, &l) : nb_proxy_listen(eng.px, &lo, &l);
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

static const char *listen_ip(const json_t *o)
{
    static char ip[NB_HOSTNAME_BUFSZ];
    nb_pxurl_authority_t a;
    const char *s = nb_json_str(o, "listen");
    size_t n = s ? strlen(s) : 0;
    if (s && nb_pxurl_authority((const uint8_t *)s, n, 1, &a) == 0)
        snprintf(ip, sizeof ip, "%s", a.host);
    else if (s && n > 2 && nb_pxurl_authority((const uint8_t *)s, n - 2, 1, &a) == 0)
        snprintf(ip, sizeof ip, "%s", a.host);
    else
        snprintf(ip, sizeof ip, "127.0.0.1");
    return ip;
}

static void on_list(nb_api_ctx_t *ctx)
{
    json_t *arr = eng.px ? nb_proxy_listeners_json(eng.px) : json_array();
    json_t *st = NULL;
    if (eng.px) {
        nb_proxy_stats_t s;
        nb_proxy_stats(eng.px, &s);
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
    char err[300], tok[65];
    int status;
    nb_proxy_listener_t *l =
        open_listener(ctx->d, ctx->body, &status, err, sizeof err, tok, sizeof tok);
    if (!l) {
        nb_api_reply_error(ctx, status, status == 409 ? "wrong-state" : "invalid", "%s", err);
        return;
    }
    json_t *j = listener_json(l, listen_ip(ctx->body));
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
    nb_proxy_listener_t *l = eng.px && *s && !*end ? nb_proxy_listener_find(eng.px, id) : NULL;
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
    char tok[65];
    nb_proxy_listener_t *l = open_listener(s->d, o, &status, err, sizeof err, tok, sizeof tok);
    if (!l) {
        ws_say(ws, json_pack("{s:s, s:i, s:s}", "type", "error", "status", status, "message", err));
        json_decref(o);
        nb_ws_close(ws, 1008, "refused");
        return;
    }
    s->lid = nb_proxy_listener_id(l);
    json_t *j = listener_json(l, listen_ip(o));
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
    if (s->lid && eng.px) {
        nb_proxy_listener_t *l = nb_proxy_listener_find(eng.px, s->lid);
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
    {"POST", "/v1/proxies", on_open, 0},
    {"DELETE", "/v1/proxies/{id}", on_close, 0},
    {"GET", "/v1/proxies/session", on_session, 0},
    {0},
};
