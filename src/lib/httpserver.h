/* HTTP/1.1 server on libuv (used by the daemon API; the egress proxy reuses
 * the parser in http.h). One loop thread; all functions below belong to it.
 *
 * Requests are parsed by llhttp in strict mode plus our own header-block
 * validation (http.h). Bodies are buffered up to `max_body`; keep-alive and
 * pipelining are supported (responses go out in request order). Every
 * connection has an idle timeout and a per-request total timeout. A request
 * that breaks a rule gets a JSON 4xx ({"error","message"}) and the
 * connection is closed; the server keeps serving others. */
#ifndef NB_HTTPSERVER_H
#define NB_HTTPSERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lib/buf.h"

typedef struct nb_httpd nb_httpd_t;
typedef struct nb_httpd_req nb_httpd_req_t;
typedef struct nb_ws nb_ws_t;

typedef struct {
    size_t max_start_line;       /* default 8 KiB */
    size_t max_header_bytes;     /* whole header block, default 32 KiB */
    size_t max_headers;          /* count, default 100 */
    size_t max_body;             /* default 1 MiB */
    size_t max_conns;            /* per listener, default 256; see evict_idle */
    uint64_t idle_timeout_ms;    /* no bytes in either direction; default 60 s */
    uint64_t request_timeout_ms; /* first byte to complete request; default 30 s */
    /* At max_conns, 1: the listener's oldest idle connection (no request
     * in progress, not a WebSocket) is closed to make room, so a flood of
     * idle connections cannot lock a real client out; when none is idle
     * the new one is closed. 0 (default): the new one is closed. */
    int evict_idle;
    /* Unix sockets: at most this many connections per peer uid
     * (SO_PEERCRED); 0 (default): max_conns. */
    size_t max_conns_per_uid;
    /* Authentication budget for TCP listeners. 0 (default): off, every
     * connection counts as authenticated. Otherwise a TCP connection is
     * unauthenticated until the handler calls nb_httpd_req_set_authed();
     * such connections are closed after this many ms without a byte (and
     * their requests must complete within it), and at most
     * max_unauth_conns of them live per listener (the oldest goes first). */
    uint64_t unauth_timeout_ms;
    size_t max_unauth_conns; /* default 64 when unauth_timeout_ms is set */
} nb_httpd_cfg_t;

/* Fills `cfg` with the defaults above. */
void nb_httpd_cfg_default(nb_httpd_cfg_t *cfg);

/* Called once per complete, validated request. The handler must call
 * nb_httpd_respond() exactly once (now or later, e.g. after thread-pool
 * work) or nb_httpd_ws_accept(). `req` stays valid until then. */
typedef void (*nb_httpd_handler_fn)(nb_httpd_req_t *req, void *ud);

/* Creates a server on `loop`. `cfg` may be NULL for defaults. */
int nb_httpd_new(uv_loop_t *loop, const nb_httpd_cfg_t *cfg, nb_httpd_handler_fn on_request,
                 void *ud, nb_httpd_t **out);

/* Listens on a Unix socket at `path` (an existing socket file is replaced)
 * and chmods it to `mode` (e.g. 0600). */
int nb_httpd_listen_unix(nb_httpd_t *srv, const char *path, int mode);

/* Listens on TCP `ip`:`port` (port 0 picks one); the bound port goes to
 * *bound_port when not NULL. */
int nb_httpd_listen_tcp(nb_httpd_t *srv, const char *ip, int port, int *bound_port);

/* Stops listening, closes all connections (WebSockets get close 1001) and
 * frees the server once every handle is closed; then calls `done` if not
 * NULL. Safe with pending handler calls: their later respond() is dropped. */
void nb_httpd_close(nb_httpd_t *srv, void (*done)(void *ud), void *ud);

/* --- request accessors (all borrow from req; valid until respond) --- */
const char *nb_httpd_req_method(const nb_httpd_req_t *req); /* "GET" */
const char *nb_httpd_req_path(const nb_httpd_req_t *req);   /* "/v1/vms", no query */
const char *nb_httpd_req_query(const nb_httpd_req_t *req);  /* after '?', or "" */
/* Value of the first header named `name` (case-insensitive), or NULL. */
const char *nb_httpd_req_header(const nb_httpd_req_t *req, const char *name);
nb_iov_t nb_httpd_req_body(const nb_httpd_req_t *req);
/* 1 when the request came over a Unix socket, 0 over TCP. */
int nb_httpd_req_is_unix(const nb_httpd_req_t *req);
uint64_t nb_httpd_req_conn_id(const nb_httpd_req_t *req);
/* Marks the request's connection as authenticated (the handler checked
 * its credentials): it leaves the unauthenticated budget and gets the
 * normal idle timeout. No effect on an orphaned request. */
void nb_httpd_req_set_authed(nb_httpd_req_t *req);
/* Marks the request as carrying secret material (the router does, for
 * sensitive routes): as soon as the handler returns, its body and the
 * parser's copy of its head are wiped, so the handler copies what it needs
 * (into locked memory) before returning. Everything else about the request
 * (and the wipe of every buffer on free) is unchanged. */
void nb_httpd_req_set_sensitive(nb_httpd_req_t *req);

/* Adds a response header for this request's response (copied). Headers
 * containing CR or LF are refused with NB_EINVAL. */
int nb_httpd_add_header(nb_httpd_req_t *req, const char *name, const char *value);

/* Sends the response (adds Content-Length, Date, and security headers set
 * with nb_httpd_set_default_headers) and releases `req`. */
int nb_httpd_respond(nb_httpd_req_t *req, int status, const char *content_type, const void *body,
                     size_t len);

/* Convenience: JSON error body {"error": code, "message": msg}. */
int nb_httpd_respond_error(nb_httpd_req_t *req, int status, const char *code, const char *msg);

/* Headers added to every response of this server (e.g. CSP); copied. */
int nb_httpd_set_default_header(nb_httpd_t *srv, const char *name, const char *value);

/* --- WebSocket (RFC 6455, server side) --- */
typedef struct {
    /* A complete (reassembled) message; `text` is 1 for text frames (UTF-8
     * validated). Data is borrowed for the duration of the call. */
    void (*on_message)(nb_ws_t *ws, int text, const uint8_t *data, size_t len, void *ud);
    /* The connection is gone (peer close, error, server close). Called once;
     * `ws` must not be used afterwards. */
    void (*on_close)(nb_ws_t *ws, int code, void *ud);
    size_t max_message; /* default 1 MiB; larger messages close with 1009 */
} nb_ws_cbs_t;

/* Accepts a WebSocket upgrade for `req` (checks Upgrade, Connection,
 * Sec-WebSocket-Version 13 and Key; answers 400 otherwise and returns
 * NB_EPROTO). `req` is released either way. Headers added with
 * nb_httpd_add_header() go into the 101 response. No callback runs inside
 * this call: messages (even ones sent right behind the request) arrive from
 * the loop later. On failure *out is NULL and on_close is never called; on
 * success on_close is called exactly once, eventually. */
int nb_httpd_ws_accept(nb_httpd_req_t *req, const nb_ws_cbs_t *cbs, void *ud, nb_ws_t **out);

/* Queues a message (copied). Fails with NB_ETOOBIG when more than the send
 * cap (4 MiB) is queued: slow consumers are not allowed to grow memory;
 * NB_ECLOSED once closing; NB_EINVAL for text that is not UTF-8. */
int nb_ws_send(nb_ws_t *ws, int text, const void *data, size_t len);

/* Answers `req` with `status` and a body written piece by piece until the
 * server ends it (Server-Sent Events): no length, Connection: close.
 * Returns a handle driven like a WebSocket's: nb_ws_send writes bytes as
 * they are (`text` ignored), nb_ws_close ends the body once queued bytes
 * are out, on_close runs exactly once when the connection is gone (peer
 * EOF included). Anything the peer sends is dropped. `req` is released
 * either way; on failure *out is NULL and on_close never runs. */
int nb_httpd_stream_accept(nb_httpd_req_t *req, int status, const char *content_type,
                           const nb_ws_cbs_t *cbs, void *ud, nb_ws_t **out);
/* Starts the close handshake (an invalid `code` becomes 1000; `reason` may
 * be NULL); on_close follows once the peer answers or after 3 s. */
void nb_ws_close(nb_ws_t *ws, int code, const char *reason);

#endif
