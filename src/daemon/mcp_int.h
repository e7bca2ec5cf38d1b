/* Internal structures of the MCP bridge (mcp.c registry, mcp_sess.c
 * sessions, mcp_http.c loopback endpoints). Loop thread only. */
#ifndef NB_MCP_INT_H
#define NB_MCP_INT_H

#include <stdint.h>
#include <uv.h>

#include "daemon/mcp.h"
#include "lib/httpserver.h"
#include "lib/muxsess.h"

typedef struct mcp_server mcp_server_t;
typedef struct mcp_hsess mcp_hsess_t;
typedef struct mcp_ssess mcp_ssess_t;

enum { MCP_ALLOW = 1, MCP_DENY = 2, MCP_ASK = 3 };

struct mcp_server {
    mcp_server_t *next;
    nb_mcp_t *m;
    char vm[NB_MCP_NAME_MAX + 1];
    char name[NB_MCP_NAME_MAX + 1];
    int is_http;
    json_t *argv;        /* stdio: array of strings */
    char url[256];       /* http: as registered */
    uint16_t guest_port; /* http: parsed from url */
    char guest_path[200];
    int port;       /* the loopback endpoint's port */
    char token[65]; /* its bearer token (hex) */
    int64_t created_ms;
    json_t *policy; /* {"tool": "allow"|"deny"|"ask", "*": default} */
    nb_httpd_t *httpd;
    mcp_hsess_t *hsess; /* HTTP sessions (mcp_http.c) */
    unsigned nhsess;
    mcp_ssess_t *ssess; /* HTTP+SSE sessions (mcp_sse.c) */
    unsigned nssess;
    int refs; /* sessions holding it */
    int removed;
};

struct nb_mcp {
    nb_daemon_t *d;
    uv_loop_t *loop;
    mcp_server_t *servers;
    nb_mcp_sess_t *sessions; /* every live session */
    unsigned nsess;
    size_t frame_max;
    uint64_t sess_idle_ns;          /* Streamable HTTP sessions' idle expiry */
    uv_timer_t *sweep;              /* looks for them (freed by its close callback) */
    char dir[NB_HOME_PATH_MAX + 8]; /* $NILBOX_HOME/mcp: stderr logs */
    int closing;
    /* mcp.c: persists a tool's action (an *-always answer); no completion. */
    void (*remember)(mcp_server_t *s, const char *tool, const char *action);
};

/* mcp_sess.c (the bottom of the three files: mcp.c calls mcp_http.c and
 * mcp_sess.c, mcp_http.c calls mcp_sess.c, never the other way). */
mcp_server_t *nb_mcp_find(nb_mcp_t *m, const char *vm, const char *name);
/* Drops a session's reference; frees a removed server at the last one. */
void nb_mcp_server_unref(mcp_server_t *s);
void nb_mcp_server_free(mcp_server_t *s);
/* "allow" / "deny" / "ask" -> MCP_*; 0 for anything else. */
int nb_mcp_action_parse(const char *a);
/* The policy of `tool` (MCP_ALLOW ...); the default "*" when none, else allow. */
int nb_mcp_policy_of(const mcp_server_t *s, const char *tool);

/* mcp_sess.c: ends every session of `srv` (removed) or all (srv NULL). */
void nb_mcp_sess_end_all(nb_mcp_t *m, mcp_server_t *srv, const char *why);

/* mcp_uphttp.c: one POST to an HTTP server in the guest (below mcp_sess.c). */
#define NB_MCP_SID_MAX 128
typedef struct nb_mcp_uphttp nb_mcp_uphttp_t;
typedef struct {
    /* A message from the server (as a stdio line; oversize: over the cap). */
    void (*on_line)(void *ud, nb_iov_t frame, int oversize);
    /* The request `id` got no answer (HTTP error, connection trouble). */
    void (*on_fail)(void *ud, const json_t *id, const char *why);
    /* The exchange is over: forget `x` (it frees itself). */
    void (*on_done)(void *ud, nb_mcp_uphttp_t *x);
    void *ud;
} nb_mcp_up_cbs_t;
/* Sends `msg` to http://127.0.0.1:port/path in the guest over `ms`; `sid`
 * (NB_MCP_SID_MAX bytes, the session's) is sent when set and updated from
 * the answer. `msg` NULL: a GET, the session's stream of server messages
 * outside any request. 0 or a negative code (nothing was sent, no callback
 * runs). */
int nb_mcp_uphttp_post(nb_muxsess_t *ms, uint16_t port, const char *path, char *sid,
                       const json_t *msg, size_t frame_max, const nb_mcp_up_cbs_t *cbs,
                       nb_mcp_uphttp_t **out);
/* The HTTP status of the answer (0 before it came); valid in on_done. */
int nb_mcp_uphttp_status(const nb_mcp_uphttp_t *x);
/* Abandons an exchange still running (no callback follows). NULL ok. */
void nb_mcp_uphttp_cancel(nb_mcp_uphttp_t *x);

/* mcp_sse.c: the endpoint's older HTTP+SSE transport (GET /sse, POST
 * /message?sessionId=), called by mcp_http.c after admission. */
void nb_mcp_sse_get(mcp_server_t *srv, nb_httpd_req_t *req);
void nb_mcp_sse_post(mcp_server_t *srv, nb_httpd_req_t *req);
/* Ends every SSE session of the endpoint. */
void nb_mcp_sse_stop(mcp_server_t *srv);
/* A JSON-RPC error as an HTTP answer. */
void nb_mcp_respond_rpc_error(nb_httpd_req_t *req, int status, const json_t *id, int code,
                              const char *msg);
/* Parses a POST's body as one JSON-RPC message (nb_jsonrpc_parse, under
 * the bridge's frame cap); on error answers 413 or 400 and returns < 0. */
int nb_mcp_parse_post(mcp_server_t *srv, nb_httpd_req_t *req, nb_jsonrpc_msg_t *msg);

/* mcp_http.c: the server's loopback endpoint. */
int nb_mcp_http_start(mcp_server_t *s, char *err, size_t errsz);
void nb_mcp_http_stop(mcp_server_t *s);
/* Ends the endpoint's sessions idle (no stream open) since before `now -
 * idle_ns` (uv_hrtime clock); their clients get 404 and initialize again. */
void nb_mcp_http_expire(mcp_server_t *s, uint64_t now, uint64_t idle_ns);

#endif
