/* RFC 6455 WebSocket frame codec: a pure, incremental frame parser with
 * message reassembly, and a frame writer. No I/O; the server glue lives in
 * httpserver.c. See docs/internals/http.md.
 *
 * The parser enforces: masking (required from clients, forbidden from
 * servers), minimal 16/64-bit length encodings and the 63-bit limit, RSV
 * bits clear (no extensions are negotiated), known opcodes, control frames
 * of at most 125 bytes and never fragmented, continuation only inside a
 * fragmented message, a cap on the reassembled message size (checked before
 * buffering), UTF-8 in text messages (checked as bytes arrive) and close
 * frames (code range, UTF-8 reason). Errors are final and carry the close
 * code to send: 1002 protocol error, 1007 invalid data, 1009 too big. */
#ifndef NB_WS_H
#define NB_WS_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

enum {
    NB_WS_OP_CONT = 0x0,
    NB_WS_OP_TEXT = 0x1,
    NB_WS_OP_BINARY = 0x2,
    NB_WS_OP_CLOSE = 0x8,
    NB_WS_OP_PING = 0x9,
    NB_WS_OP_PONG = 0xA,
};

typedef enum {
    NB_WS_ROLE_SERVER = 1, /* we are the server: incoming frames must be masked */
    NB_WS_ROLE_CLIENT = 2, /* we are the client: incoming frames must not be masked */
} nb_ws_role_t;

/* Callbacks return 0 to go on, > 0 to stop parsing after this frame
 * (nb_ws_parser_feed returns NB_WS_STOPPED), < 0 to abort with that code.
 * Data is borrowed for the duration of the call. */
typedef struct {
    /* A complete message: opcode NB_WS_OP_TEXT (valid UTF-8) or NB_WS_OP_BINARY. */
    int (*on_message)(void *ud, int opcode, const uint8_t *p, size_t len);
    /* PING, PONG or CLOSE (payload already validated: empty or code + UTF-8
     * reason). Control frames may arrive between fragments of a message. */
    int (*on_control)(void *ud, int opcode, const uint8_t *p, size_t len);
} nb_ws_parser_cbs_t;

typedef struct nb_ws_parser nb_ws_parser_t;

#define NB_WS_STOPPED 1

/* Creates a parser. `max_message` caps a reassembled message (bytes, > 0).
 * `cbs` is copied. 0, NB_EINVAL or -ENOMEM. */
int nb_ws_parser_new(nb_ws_role_t role, size_t max_message, const nb_ws_parser_cbs_t *cbs, void *ud,
                     nb_ws_parser_t **out);

/* Frees the parser; NULL is a no-op. */
void nb_ws_parser_free(nb_ws_parser_t *p);

/* Feeds bytes. Returns 0 when all were consumed, NB_WS_STOPPED when a
 * callback asked to stop (*consumed bytes were used), or a negative code
 * (NB_EPROTO, NB_ETOOBIG, -ENOMEM, or a callback's) — then
 * nb_ws_parser_close_code() and nb_ws_parser_reason() say why. Errors are
 * final. */
int nb_ws_parser_feed(nb_ws_parser_t *p, const uint8_t *data, size_t len, size_t *consumed);

/* Close code to send after a failure (1002, 1007, 1009, 1011); 0 if none. */
int nb_ws_parser_close_code(const nb_ws_parser_t *p);

/* Short static reason for the failure ("" if none). */
const char *nb_ws_parser_reason(const nb_ws_parser_t *p);

/* Appends one frame. `mask` (4 bytes) masks the payload (clients must);
 * NULL sends it unmasked (servers must). 0, NB_EINVAL, NB_ETOOBIG, -ENOMEM. */
/* Writes the header of an unmasked frame (FIN, opcode, the shortest length
 * form) into h; returns its length (2, 4 or 10). No checks: callers
 * validate opcode and control-frame rules. */
size_t nb_ws_frame_header(uint8_t h[10], int fin, int opcode, uint64_t len);

int nb_ws_frame_append_ex(nb_buf_t *b, int fin, int opcode, const void *data, size_t len,
                          const uint8_t *mask);

/* Same with fin = 1. */
int nb_ws_frame_append(nb_buf_t *b, int opcode, const void *data, size_t len, const uint8_t *mask);

/* Appends an unmasked close frame with `code` and `reason` (may be NULL;
 * cut to fit 125 bytes on a UTF-8 boundary). */
int nb_ws_close_frame_append(nb_buf_t *b, int code, const char *reason);

/* 1 when `code` may appear in a close frame on the wire (1000-1003,
 * 1007-1014, 3000-4999). */
int nb_ws_close_code_sendable(int code);

/* 1 when `p` is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int nb_utf8_valid(const void *p, size_t len);

#define NB_WS_ACCEPT_LEN 28

/* Computes Sec-WebSocket-Accept for a Sec-WebSocket-Key (which must be the
 * base64 of 16 bytes) into `out` (NUL-terminated). 0 or NB_EINVAL. */
int nb_ws_accept_key(const char *key, char out[NB_WS_ACCEPT_LEN + 1]);

#endif
