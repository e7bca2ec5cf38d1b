/* JSON-RPC 2.0 framing for the MCP bridge (docs/internals/mcp.md): one
 * message per frame, classified and validated, never more. The bridge does
 * not need to understand every MCP method; it needs to know what a frame is
 * (request, notification, response), its id and its method, and to refuse
 * what is not JSON-RPC with a JSON-RPC error of its own.
 *
 * Pure: no I/O, no daemon state. Two parts: nb_jsonrpc_parse() for one
 * frame, and a newline framer (the MCP stdio transport: one message per
 * line, no embedded newlines) with a byte cap per line. Fuzzed by
 * fuzz/fuzz_mcp.c. */
#ifndef NB_JSONRPC_H
#define NB_JSONRPC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Standard JSON-RPC error codes, and the bridge's own (server range). */
#define NB_JSONRPC_PARSE_ERROR (-32700)
#define NB_JSONRPC_INVALID_REQUEST (-32600)
#define NB_JSONRPC_INTERNAL (-32603)
#define NB_JSONRPC_TOO_BIG (-32001)     /* frame over the size cap */
#define NB_JSONRPC_DENIED (-32002)      /* a tool call refused by policy (deny, ask denied) */
#define NB_JSONRPC_UNAVAILABLE (-32003) /* the server in the VM is gone / restarting */
#define NB_JSONRPC_CANCELLED (-32800)   /* the client cancelled it (LSP's RequestCancelled) */

#define NB_JSONRPC_FRAME_MAX (1u << 20) /* default cap on one message (1 MiB) */
#define NB_JSONRPC_METHOD_MAX 128       /* longer method names are refused */

typedef enum {
    NB_JSONRPC_REQUEST = 1,      /* method + id */
    NB_JSONRPC_NOTIFICATION = 2, /* method, no id */
    NB_JSONRPC_RESPONSE = 3,     /* id + exactly one of result / error */
} nb_jsonrpc_kind_t;

typedef struct {
    int kind;           /* nb_jsonrpc_kind_t */
    json_t *msg;        /* the whole object (owned) */
    const json_t *id;   /* borrowed from msg: string, integer, or null (error responses) */
    const char *method; /* borrowed from msg; NULL for responses */
} nb_jsonrpc_msg_t;

/* Parses one frame of `in.len` bytes (untrusted) into *out (cleared on
 * entry). `max` caps the frame (0: NB_JSONRPC_FRAME_MAX). Returns 0, or a
 * JSON-RPC error code (< 0): NB_JSONRPC_TOO_BIG, NB_JSONRPC_PARSE_ERROR
 * (not JSON), NB_JSONRPC_INVALID_REQUEST (JSON but not one JSON-RPC 2.0
 * message: batches are refused, as MCP 2025-06-18 dropped them). On an
 * invalid request whose id could be read, *err_id is a new reference to it
 * (for the error reply), else NULL. `err` gets a short reason. */
int nb_jsonrpc_parse(nb_iov_t in, size_t max, nb_jsonrpc_msg_t *out, json_t **err_id, char *err,
                     size_t errsz);

/* Releases msg (NULL-safe fields). */
void nb_jsonrpc_msg_clear(nb_jsonrpc_msg_t *m);

/* {"jsonrpc":"2.0","id":id,"error":{"code":code,"message":msg}}; `id` NULL
 * means null. New reference (NULL on allocation failure). */
json_t *nb_jsonrpc_error(const json_t *id, int code, const char *msg);

/* A canonical text key for an id (for tables): "s:<string>" or "i:<int>";
 * "" for anything else. */
void nb_jsonrpc_id_key(const json_t *id, char *out, size_t outsz);

/* ---- newline framing (stdio transport) ---- */

typedef struct {
    nb_buf_t line; /* the unfinished line */
    size_t max;    /* cap on one line */
    int skipping;  /* inside an oversized line: drop until its newline */
} nb_jsonrpc_lines_t;

/* Called for each complete line (without its newline; a trailing CR is
 * dropped; empty lines are skipped). `oversize` 1: the line passed the cap
 * and was dropped (line is empty). */
typedef void (*nb_jsonrpc_line_fn)(void *ud, nb_iov_t line, int oversize);

void nb_jsonrpc_lines_init(nb_jsonrpc_lines_t *l, size_t max);
/* Feeds n bytes; calls fn for every line they complete. 0 or -ENOMEM. */
int nb_jsonrpc_lines_feed(nb_jsonrpc_lines_t *l, const uint8_t *p, size_t n, nb_jsonrpc_line_fn fn,
                          void *ud);
void nb_jsonrpc_lines_free(nb_jsonrpc_lines_t *l);

#endif
