/* QMP client (QEMU Machine Protocol) on libuv.
 *
 * QMP is line-delimited JSON over a Unix socket. After connecting, QEMU
 * sends a greeting ({"QMP": {...}}); the client must send
 * qmp_capabilities before any other command. Each command carries an "id"
 * that QEMU echoes in its reply ({"return": ...} or {"error": {...}});
 * asynchronous events ({"event": ..., "data": ..., "timestamp": ...}) may
 * arrive at any time, including between a command and its reply.
 *
 * Caps: a line longer than `max_line` bytes, a line that is not a JSON
 * object, a reply to an id we never sent twice, or a reply without an id
 * end the connection with NB_ETOOBIG / NB_EPROTO. Every command has a
 * deadline; a command that times out gets NB_ETIMEOUT and its late reply is
 * dropped. The handshake (greeting + capabilities) has its own deadline.
 *
 * Lifecycle: nb_qmp_connect()/nb_qmp_open_fd() return a client at once;
 * commands may be issued right away (they are queued until the handshake
 * completes). `on_ready` fires once after the handshake. If the connection
 * ends for any reason other than nb_qmp_close(), every pending command's
 * callback gets the error, then `on_close` fires once; the client stays
 * valid (further commands fail with NB_ECLOSED) until the owner calls
 * nb_qmp_close(). nb_qmp_close() fails pending commands with NB_ECLOSED,
 * calls no other callback, and frees the client once libuv has closed its
 * handles. All functions run on the loop's thread.
 */
#ifndef NB_VM_QMP_H
#define NB_VM_QMP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

typedef struct nb_qmp nb_qmp_t;

/* Default caps. */
#define NB_QMP_MAX_LINE_DEFAULT (4u << 20)
#define NB_QMP_TIMEOUT_DEFAULT_MS 10000u
#define NB_QMP_MAX_PENDING 256u

/* Reply to one command. r == 0: `ret` is the "return" value (borrowed,
 * valid only during the call; json_incref to keep it). r == NB_EPROTO with
 * `err` set: QEMU answered {"error": {"class": ..., "desc": ...}} (borrowed).
 * Other r (NB_ETIMEOUT, NB_ECLOSED, NB_ETOOBIG, -errno): no reply; both
 * pointers NULL. */
typedef void (*nb_qmp_reply_cb)(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data);

/* An event: name (NUL-terminated, from QEMU, printable as given) and its
 * "data" object (borrowed, may be NULL). */
typedef void (*nb_qmp_event_cb)(nb_qmp_t *q, const char *event, json_t *data, void *ud);

/* Handshake done (r == 0), or connection over (r < 0). */
typedef void (*nb_qmp_state_cb)(nb_qmp_t *q, int r, void *ud);

typedef struct {
    size_t max_line;               /* 0: NB_QMP_MAX_LINE_DEFAULT */
    uint64_t timeout_ms;           /* command default; 0: NB_QMP_TIMEOUT_DEFAULT_MS */
    uint64_t handshake_timeout_ms; /* 0: same as timeout_ms */
    nb_qmp_event_cb on_event;      /* may be NULL */
    nb_qmp_state_cb on_ready;      /* may be NULL */
    nb_qmp_state_cb on_close;      /* may be NULL */
    void *ud;                      /* passed to the three callbacks above */
} nb_qmp_opts_t;

/* Connects to QEMU's QMP socket at `path`. 0 and *out set, or a negative
 * code (bad arguments, -ENOMEM) with *out NULL; a failed connect is
 * reported through on_close. `opts` is copied; may be NULL. */
int nb_qmp_connect(uv_loop_t *loop, const char *path, const nb_qmp_opts_t *opts, nb_qmp_t **out);

/* Same over an already connected stream socket `fd` (takes ownership of the
 * fd, also on failure). Used by tests with a socketpair. */
int nb_qmp_open_fd(uv_loop_t *loop, int fd, const nb_qmp_opts_t *opts, nb_qmp_t **out);

/* Sends {"execute": cmd, "arguments": args, "id": N}. `args` may be NULL
 * (borrowed: the client serialises it before returning). `timeout_ms` 0
 * means the client's default. `cb` is called exactly once, never from
 * inside this function. Returns 0, NB_ECLOSED (client closed or dead),
 * NB_ETOOBIG (too many pending commands), NB_EINVAL or -ENOMEM. */
int nb_qmp_command(nb_qmp_t *q, const char *cmd, json_t *args, uint64_t timeout_ms,
                   nb_qmp_reply_cb cb, void *data);

/* 1 once the handshake is done and the connection is up. */
int nb_qmp_is_ready(const nb_qmp_t *q);

/* The greeting's QEMU version as "MAJOR.MINOR.MICRO" (empty before the
 * greeting). Borrowed; valid until nb_qmp_close(). */
const char *nb_qmp_version(const nb_qmp_t *q);

/* Closes and frees (see the lifecycle above). NULL is a no-op. */
void nb_qmp_close(nb_qmp_t *q);

#endif
