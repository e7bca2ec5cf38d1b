/* The MCP bridge (docs/internals/mcp.md): MCP servers that live in a VM,
 * used by MCP clients on the host as if they were local.
 *
 * A server is registered per VM and name: a stdio command the agent runs
 * in the guest (exec service, started on demand, once per client session)
 * or an HTTP endpoint listening in the guest (reached through `tcp`
 * streams). Host clients come in through the API's WebSocket (what
 * `nilbox mcp stdio` speaks) or through the server's own loopback HTTP
 * endpoint (MCP Streamable HTTP, bearer token, Host/Origin checks).
 *
 * In between, a session understands JSON-RPC framing only: size caps,
 * malformed frames answered with JSON-RPC errors (both directions),
 * `tools/call` judged by the per-tool policy (allow, deny, or ask: a
 * prompt through the gate), `tools/list` filtered, one audit row per tool
 * call (server, tool, decision, duration, sizes; never the arguments).
 *
 * Loop thread only. */
#ifndef NB_MCP_H
#define NB_MCP_H

#include <jansson.h>
#include <stddef.h>

#include "daemon/services.h"
#include "lib/jsonrpc.h"

/* Schema (a store migration; re-runnable). */
#define NB_MCP_MIGRATION_SQL                                                                       \
    "CREATE TABLE IF NOT EXISTS mcp_servers (vm TEXT NOT NULL, name TEXT NOT NULL,"                \
    "  kind TEXT NOT NULL CHECK (kind IN ('stdio', 'http')), argv TEXT NOT NULL DEFAULT '[]',"     \
    "  url TEXT NOT NULL DEFAULT '', port INTEGER NOT NULL, token TEXT NOT NULL,"                  \
    "  created_ms INTEGER NOT NULL, PRIMARY KEY (vm, name)) STRICT;"                               \
    "CREATE TABLE IF NOT EXISTS mcp_policy (vm TEXT NOT NULL, server TEXT NOT NULL,"               \
    "  tool TEXT NOT NULL, action TEXT NOT NULL CHECK (action IN ('allow', 'deny', 'ask')),"       \
    "  PRIMARY KEY (vm, server, tool)) STRICT;"

#define NB_MCP_NAME_MAX 32
#define NB_MCP_TOOL_MAX 128
#define NB_MCP_ARGV_MAX 64          /* words of a stdio command */
#define NB_MCP_SESS_MAX 64          /* live sessions, all servers */
#define NB_MCP_HTTP_SESS_MAX 16     /* HTTP sessions per server (the oldest idle goes) */
#define NB_MCP_PENDING_MAX 256      /* requests in flight per session */
#define NB_MCP_QUEUE_MAX 64         /* client messages held while the server starts */
#define NB_MCP_LOG_MAX (1u << 20)   /* a server's stderr log rotates past this */
#define NB_MCP_START_WAIT_MS 60000u /* waiting for the VM's agent */
/* A Streamable HTTP session with no stream open and no request for this
 * long ends (NILBOX_MCP_SESSION_IDLE, seconds). */
#define NB_MCP_SESS_IDLE_S 1800u

typedef struct nb_mcp nb_mcp_t;
typedef struct nb_mcp_sess nb_mcp_sess_t;

/* 1 when `name` is a server name ([a-z0-9][a-z0-9_-]{0,31}). */
int nb_mcp_valid_name(const char *name);
/* 1 when `tool` is a tool name as policies take it (1..128 printable
 * ASCII without spaces), or "*" (the server's default). */
int nb_mcp_valid_tool(const char *tool);

/* Loads the registered servers and opens their HTTP endpoints. Loop
 * thread, at start (a few sqlite statements run directly). */
int nb_mcp_new(nb_daemon_t *d, nb_mcp_t **out, char *err, size_t errsz);
/* Ends every session, closes the endpoints, frees. NULL is a no-op. */
void nb_mcp_free(nb_mcp_t *m);

/* Completion of a change: r 0 or a negative code, msg a sentence (or
 * NULL), result borrowed for the call. */
typedef void (*nb_mcp_cb)(void *ud, int r, const char *msg, json_t *result);

/* {"servers": [...]} (new reference), `vm` NULL for all. */
json_t *nb_mcp_list(nb_mcp_t *m, const char *vm);
/* One server with its policy; `secret` adds the bearer token (for `mcp
 * config`). NULL when unknown. */
json_t *nb_mcp_get(nb_mcp_t *m, const char *vm, const char *name, int secret);
/* Registers a server: `argv` (a JSON array of strings) for stdio, or `url`
 * (http://127.0.0.1:PORT/path in the guest). */
void nb_mcp_add(nb_mcp_t *m, const char *vm, const char *name, const json_t *argv, const char *url,
                nb_mcp_cb cb, void *ud);
void nb_mcp_rm(nb_mcp_t *m, const char *vm, const char *name, nb_mcp_cb cb, void *ud);
/* Sets the policy of `tool` ("*": the default) to "allow", "deny", "ask",
 * or "clear" (remove the entry). */
void nb_mcp_policy_set(nb_mcp_t *m, const char *vm, const char *name, const char *tool,
                       const char *action, nb_mcp_cb cb, void *ud);
/* Path of the server's stderr log ("" when unknown). */
int nb_mcp_log_path(nb_mcp_t *m, const char *vm, const char *name, char *out, size_t outsz);

/* ---- sessions: one host client's conversation with one server ---- */

typedef struct {
    /* A message for the client (borrowed for the call). */
    void (*on_msg)(void *ud, const json_t *msg);
    /* The session ended on its own (server removed, daemon stopping);
     * no callback follows. Not called after nb_mcp_sess_close. */
    void (*on_end)(void *ud, const char *why);
} nb_mcp_sess_cbs_t;

/* Opens a session (the server starts with the first message). 0,
 * NB_ENOTFOUND, -EBUSY (NB_MCP_SESS_MAX). */
int nb_mcp_sess_open(nb_mcp_t *m, const char *vm, const char *name, const nb_mcp_sess_cbs_t *cbs,
                     void *ud, nb_mcp_sess_t **out);
/* A parsed client message (takes msg->msg in every case). Answers that the
 * bridge gives itself (deny, errors) come through on_msg, possibly before
 * this returns. */
void nb_mcp_sess_submit(nb_mcp_sess_t *s, nb_jsonrpc_msg_t *msg);
/* Ends the session: the server process is stopped, held prompts
 * withdrawn; no callback runs afterwards. NULL is a no-op. */
void nb_mcp_sess_close(nb_mcp_sess_t *s);
/* The frame cap (NILBOX_MCP_MAX_FRAME or NB_JSONRPC_FRAME_MAX). */
size_t nb_mcp_frame_max(const nb_mcp_t *m);

#endif
