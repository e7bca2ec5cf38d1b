/* The daemon's HTTP/JSON API: listeners, authentication, routing. See
 * docs/api.md for every route and the error codes.
 *
 * Listeners: a 0600 Unix socket (trusted: only our user can connect) and
 * 127.0.0.1:<port> for the web UI, where every request needs the per-start
 * token (Authorization: Bearer, or for WebSockets the `token` query
 * parameter or a `nilbox.token.<token>` subprotocol), a Host naming this
 * exact listener (DNS rebinding, A21) and, if present, a same-origin
 * Origin. Unix-socket requests get Host sanity and must carry no Origin.
 *
 * ADDING ROUTES FOR A MODULE: create src/daemon/api_<module>.c with
 *     const nb_api_route_t nb_api_routes_<module>[] = {
 *         {"GET", "/v1/<things>", on_list, 0},
 *         {"POST", "/v1/<things>/{name}/start", on_start, 0},
 *         {0},
 *     };
 * add the file to nilboxd_sources in src/daemon/meson.build and append
 * X(<module>) to NB_API_MODULES below. Handlers run on the loop thread;
 * they must answer exactly once, now or later (after thread-pool work). */
#ifndef NB_API_H
#define NB_API_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/apiroute.h"
#include "daemon/services.h"
#include "daemon/egress/rules.h"
#include "lib/httpserver.h"

#define NB_API_MODULES(X)                                                                          \
    X(daemon)                                                                                      \
    X(secrets)                                                                                     \
    X(audit)                                                                                       \
    X(ca)                                                                                          \
    X(rules)                                                                                       \
    X(prompts)                                                                                     \
    X(proxy)                                                                                       \
    X(vm)                                                                                          \
    X(vmio)                                                                                        \
    X(image)                                                                                       \
    X(blocklist)                                                                                   \
    X(store)                                                                                       \
    X(oauth)                                                                                       \
    X(ports)                                                                                       \
    X(ssh)                                                                                         \
    X(mcp)                                                                                         \
    X(usage)                                                                                       \
    X(ui)                                                                                          \
    X(share)

#define NB_API_MAX_BODY (1024 * 1024) /* bigger bodies get 413 */

/* Route flags. */
#define NB_API_PUBLIC 0x1u   /* TCP: no token needed (static UI files); Host/Origin still checked */
#define NB_API_RAW_BODY 0x2u /* body is not JSON (uploads): no Content-Type check, no parsing */
/* The request carries secret material (a value, a passphrase, a token):
 * the HTTP server wipes its body and head copy once the handler returns
 * (nb_httpd_req_set_sensitive), so the handler copies what it needs into
 * locked memory before it returns. */
#define NB_API_SENSITIVE 0x4u

typedef struct nb_api_ctx {
    nb_httpd_req_t *req; /* valid until the reply */
    nb_daemon_t *d;
    json_t *body;                /* parsed JSON object, or NULL for an empty body (owned by ctx) */
    int is_unix;                 /* 1: Unix socket (CLI), 0: TCP (web UI) */
    nb_apiroute_params_t params; /* decoded {name} segments: use nb_api_param() */
} nb_api_ctx_t;

typedef void (*nb_api_handler_fn)(nb_api_ctx_t *ctx);

typedef struct {
    const char *method;  /* "GET", "POST", "PUT", "PATCH", "DELETE" */
    const char *pattern; /* "/v1/vms/{name}"; a {x} segment matches one non-empty segment */
    nb_api_handler_fn fn;
    unsigned flags;
} nb_api_route_t;

#define NB_API_DECLARE(m) extern const nb_api_route_t nb_api_routes_##m[];
NB_API_MODULES(NB_API_DECLARE)
#undef NB_API_DECLARE

/* Starts the listeners: the Unix socket d->home.sock, and unless
 * d->api_port_req < 0 TCP 127.0.0.1:d->api_port_req (0 = any), then
 * writes api.json (0600: port, token, url, pid). Loop thread. */
int nb_api_start(nb_daemon_t *d, nb_api_t **out, char *err, size_t errsz);

/* api_vm.c: answers an error from the VM manager (adds 507 no-space and
 * 503 unavailable to nb_api_reply_errno's mapping). Frees ctx. */
void nb_api_vm_reply_err(nb_api_ctx_t *ctx, int r, const char *msg);

/* api_rules.c: the API and event shape of a rule (new reference). */
json_t *nb_api_rule_json(const nb_rule_t *r);
/* api_rules.c: 1 when the gate runs, else answers 503 and returns 0. */
int nb_api_have_gate(nb_api_ctx_t *ctx);

/* Closes the listeners and all connections, removes the socket and
 * api.json, frees the API and calls `done` (may be NULL). */
void nb_api_close(nb_api_t *api, void (*done)(void *ud), void *ud);

/* Bound TCP port (0 when there is no TCP listener) and the UI URL
 * ("http://127.0.0.1:PORT/", "" without TCP). */
int nb_api_port(const nb_api_t *api);
const char *nb_api_url(const nb_api_t *api);
uint64_t nb_api_request_count(const nb_api_t *api);

/* --- for handlers --- */

/* Value of the {name} path segment, or NULL. */
const char *nb_api_param(const nb_api_ctx_t *ctx, const char *name);

/* Percent-decoded value of query parameter `name` into out (size outsz).
 * 1 when present, 0 when absent, NB_ETOOBIG / NB_EPARSE when unusable. */
int nb_api_query(const nb_api_ctx_t *ctx, const char *name, char *out, size_t outsz);

/* Answers with `body` as JSON (takes ownership; NULL sends {}), frees ctx. */
void nb_api_reply_json(nb_api_ctx_t *ctx, int status, json_t *body);

/* Answers {"error": code, "message": ...} and frees ctx. */
void nb_api_reply_error(nb_api_ctx_t *ctx, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Maps a negative code to status + error code (NB_ENOTFOUND 404 not_found,
 * NB_EEXIST 409 conflict, NB_ESTATE 409 wrong_state, NB_EINVAL 422
 * invalid, NB_EDENIED 403 denied, NB_EAUTH 401, NB_ETOOBIG 413,
 * NB_EPARSE 400, NB_ETIMEOUT 504, anything else 500) and answers with
 * `message` (or the code's text when NULL). Frees ctx. */
void nb_api_reply_errno(nb_api_ctx_t *ctx, int r, const char *message);

/* Hands the request over (for WebSockets: nb_httpd_ws_accept or
 * nb_events_attach_ws) and frees ctx. */
nb_httpd_req_t *nb_api_take_req(nb_api_ctx_t *ctx);

/* 1 when the request asks for a WebSocket upgrade. */
int nb_api_is_upgrade(const nb_api_ctx_t *ctx);

#endif
