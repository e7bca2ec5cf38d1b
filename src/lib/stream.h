/* One byte-stream interface over several transports, and a splice that
 * pumps bytes between two of them.
 *
 * Backends: a libuv TCP or pipe handle (sockets, pipes, ptys) and one
 * channel of an nbmux stream. Other layers (TLS over either) fill in an
 * nb_stream_ops_t and embed nb_stream_t as their first member.
 *
 * Buffers: bytes move as malloc'd blocks whose ownership travels with
 * them. A read callback receives a block it owns (free() it, or hand it
 * to nb_stream_write); nb_stream_write takes ownership of the block it is
 * given in every case. So a block read from a socket reaches an nbmux
 * stream without a copy, as the agent's hand-written pumps did.
 *
 * Back-pressure: every stream has a write queue with a high-water mark.
 * nb_stream_writable() turns 0 above it; on_drain fires once the queue is
 * back at or below the low-water mark. Writers stop reading their source
 * meanwhile (nb_stream_splice does exactly that).
 *
 * Lifetime: a stream lives until nb_stream_close(); its on_close callback
 * (if set) runs later from the loop, never from inside an API call, and
 * the stream's memory is released after it. After nb_stream_close() only
 * pending write/shutdown callbacks still run (then on_close). Errors and
 * EOF are reported through on_read; a stream never closes itself.
 *
 * Threading: everything belongs to the loop the stream was created on. */
#ifndef NB_STREAM_H
#define NB_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "lib/muxsess.h"

typedef struct nb_stream nb_stream_t;

/* Read callback. n > 0: `p` holds n bytes and the callee owns it (free()
 * or pass to nb_stream_write). n == UV_EOF: the peer finished sending (p
 * NULL); reading stops by itself. Other n < 0: an error (libuv / NB_E*
 * code; for an nbmux stream the peer's RST or the session's teardown,
 * reported even while not reading or after EOF, as it ends writing too);
 * reading stops and only nb_stream_close() is left to do. */
typedef void (*nb_stream_read_cb)(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud);
/* A write (or shutdown) finished: status 0, or an error; UV_ECANCELED when
 * the stream was closed first. */
typedef void (*nb_stream_write_cb)(nb_stream_t *s, int status, void *ud);
/* The write queue fell to or below the low-water mark after
 * nb_stream_writable() returned 0. */
typedef void (*nb_stream_drain_cb)(nb_stream_t *s, void *ud);
/* Final callback after nb_stream_close(); s is freed when it returns. */
typedef void (*nb_stream_close_cb)(nb_stream_t *s, void *ud);

/* Backend operations (implemented by each backend; callers use the
 * nb_stream_* functions below). */
typedef struct {
    int (*read_start)(nb_stream_t *s);
    void (*read_stop)(nb_stream_t *s);
    int (*write)(nb_stream_t *s, uint8_t *p, size_t n, nb_stream_write_cb cb, void *ud);
    int (*shutdown)(nb_stream_t *s, nb_stream_write_cb cb, void *ud);
    size_t (*queued)(const nb_stream_t *s);
    int (*writable)(const nb_stream_t *s);
    void (*close)(nb_stream_t *s, int reset);
} nb_stream_ops_t;

/* Common part of every stream. Backends own the fields; callers read
 * nothing here directly except through the functions below. */
struct nb_stream {
    const nb_stream_ops_t *ops;
    uv_loop_t *loop;
    nb_stream_read_cb on_read;
    nb_stream_drain_cb on_drain;
    nb_stream_close_cb on_close;
    void *ud;
    size_t hiwat, lowat; /* write queue marks */
    int reading, want_drain, shut, closing, wipe;
};

/* Default write queue marks. */
#define NB_STREAM_HIWAT (256u * 1024u)
#define NB_STREAM_LOWAT (64u * 1024u)

/* ---- backends ---- */

/* A TCP stream on `loop`, not yet connected: uv_accept() into, or
 * uv_tcp_connect() from, nb_stream_uv_handle(s). 0 or -ENOMEM; *out NULL
 * on error. */
int nb_stream_tcp_new(uv_loop_t *loop, nb_stream_t **out);

/* A stream over `fd` (pipe, socket, pty master) as a libuv pipe. Takes
 * ownership of fd in every case (closed on error). fd -1: no fd yet, for
 * uv_spawn's UV_CREATE_PIPE on nb_stream_uv_handle(s). 0 or a libuv
 * error. */
int nb_stream_pipe_new(uv_loop_t *loop, int fd, nb_stream_t **out);

/* The libuv handle of a TCP/pipe stream (borrowed; its `data` belongs to
 * the stream). Valid until on_close. */
uv_stream_t *nb_stream_uv_handle(nb_stream_t *s);

/* Channel `chan` (NB_MUX_CHAN_*) of the nbmux stream `st`, which the new
 * stream takes over: it installs its own callbacks on st and owns it from
 * now on (st stays usable for CTL writes through nb_stream_mux_stream
 * until on_close). The write queue and its marks are the session's
 * (stream_send_hiwat); bytes read are consumed (credit returned) when
 * delivered, so a stopped reader stops the peer within one window.
 * Bytes on other channels go to `on_other` (borrowed for the call, already
 * consumed; NULL: dropped). A close without reset sends FIN, drops what
 * still arrives and waits for the peer's FIN; a reset sends RST. A stream
 * still pending (a peer OPEN not yet accepted) is rejected on reset. */
typedef void (*nb_stream_other_cb)(nb_stream_t *s, unsigned chan, nb_iov_t data, void *ud);
int nb_stream_mux_new(uv_loop_t *loop, nb_muxsess_stream_t *st, unsigned chan,
                      nb_stream_other_cb on_other, nb_stream_t **out);

/* Gathers bytes read from a mux-backed stream while more keep arriving
 * and delivers them as one block once a loop iteration brings nothing new,
 * 64 iterations passed, or `max` bytes wait. The channel delivers bytes in
 * pieces of a few KiB (virtio-serial buffers); waking a reader per piece
 * costs context switches, which limits throughput in an emulated guest.
 * 0: off (the default). */
void nb_stream_mux_gather(nb_stream_t *s, size_t max);

/* Closes a mux-backed stream with a reset carrying `code` and `msg` (the
 * peer sees them in RST / OPEN_ERR). Other backends: nb_stream_close(s, 1). */
void nb_stream_mux_reset(nb_stream_t *s, uint32_t code, const char *msg);

/* The nbmux stream behind a mux-backed stream; NULL once the nbmux stream
 * is gone (peer reset, session down) or for another backend. */
nb_muxsess_stream_t *nb_stream_mux_stream(const nb_stream_t *s);

/* Batches the socket writes of `loop`'s TCP/pipe streams created from now
 * on (nilboxd only: the agent and the CLI do not link it): a loop
 * iteration's writes are queued (nb_stream_write_copy/writev_copy copy
 * them) and sent with one io_uring_enter after the iteration's I/O
 * callbacks, instead of one write() each, so the readers they wake preempt
 * the loop once per iteration instead of once per write. Write callbacks
 * then run from the loop, never inside nb_stream_write; order, back-
 * pressure, shutdown-after-the-queue and close behave as without. Falls
 * back to one write() at a time, with a debug log line, when io_uring is
 * unavailable, and when NILBOX_IO_URING=0 is in the environment. Streams
 * that are not sockets are never batched. 0 (batching on or fell back) or
 * -ENOMEM. Call from the loop's thread before other threads create
 * streams. */
int nb_stream_loop_batch(uv_loop_t *loop);

/* 1 when `loop` batches its writes. */
int nb_stream_loop_batched(uv_loop_t *loop);

/* Ends batching on `loop` once every stream of it is closed (its handles
 * close with the loop's next run). No-op when it does not batch. */
void nb_stream_loop_unbatch(uv_loop_t *loop);

/* ---- the interface ---- */

/* Sets callbacks and user data; any of them may be NULL. */
void nb_stream_set_cbs(nb_stream_t *s, nb_stream_read_cb on_read, nb_stream_drain_cb on_drain,
                       nb_stream_close_cb on_close, void *ud);

/* The user data given to nb_stream_set_cbs. */
void *nb_stream_ud(const nb_stream_t *s);

/* on: every block this stream frees after writing it (or failing to) is
 * wiped first (bytes that may carry a secret). Read blocks belong to the
 * reader, who wipes them. */
void nb_stream_set_wipe(nb_stream_t *s, int on);

/* Sets the write queue marks (0: keep). The nbmux backend keeps the
 * session's marks and ignores these. */
void nb_stream_set_marks(nb_stream_t *s, size_t hiwat, size_t lowat);

/* Starts / stops delivering bytes to on_read. Start is idempotent and
 * returns 0 or an error (NB_ESTATE after EOF, error or close). */
int nb_stream_read_start(nb_stream_t *s);
void nb_stream_read_stop(nb_stream_t *s);

/* Queues `n` bytes at `p` (malloc'd; ownership taken, also on error).
 * `cb` (may be NULL) runs once the backend is done with them: written to
 * the fd, or, for an nbmux stream, accepted into the stream's queue, in
 * which case it runs before nb_stream_write returns. 0; NB_ESTATE after
 * shutdown or close; NB_ETOOBIG past a hard queue cap; a libuv error. */
int nb_stream_write(nb_stream_t *s, uint8_t *p, size_t n, nb_stream_write_cb cb, void *ud);

/* Same, copying `n` bytes from borrowed `p`; the slices of `bufs` in
 * order. A TCP/pipe stream with nothing queued writes what the socket
 * takes straight from them and copies only the rest (on a batching loop,
 * nb_stream_loop_batch, it copies all: the send comes later). */
int nb_stream_write_copy(nb_stream_t *s, const void *p, size_t n, nb_stream_write_cb cb, void *ud);
int nb_stream_writev_copy(nb_stream_t *s, const uv_buf_t *bufs, unsigned n, nb_stream_write_cb cb,
                          void *ud);

/* 1 while the write queue is at or below the high-water mark. */
int nb_stream_writable(const nb_stream_t *s);

/* Bytes queued and not yet written. */
size_t nb_stream_queued(const nb_stream_t *s);

/* Half-close: the peer sees EOF after the queued bytes; reading goes on.
 * `cb` (may be NULL) runs once the shutdown is done (nbmux: once the FIN is
 * queued, before this returns). 0 or NB_ESTATE if already shut or
 * closed. */
int nb_stream_shutdown(nb_stream_t *s, nb_stream_write_cb cb, void *ud);

/* Ends the stream. reset 0: TCP/pipe: closed at once (uv_close: writes
 * still queued are cancelled; shut down first and wait to flush them);
 * nbmux: FIN after the queued bytes, what still arrives is dropped, and
 * the stream ends with the peer's FIN. reset 1: abort (TCP RST, nbmux RST
 * or OPEN_ERR, queued bytes dropped). Pending write callbacks run with
 * UV_ECANCELED (or their real status) before on_close. NULL or a second
 * call is a no-op. */
void nb_stream_close(nb_stream_t *s, int reset);

/* ---- splice ---- */

typedef struct nb_splice nb_splice_t;

/* The splice ended: err 0 when both directions reached EOF and were shut
 * down in order, else the first error (read or write, either side) and
 * `failed` the stream it happened on (NULL when err is 0). Both
 * streams are still open and belong to the caller again (typically
 * nb_stream_close(x, err != 0)); their callbacks are cleared. The splice
 * is freed once no write it issued is outstanding. */
typedef void (*nb_splice_done_cb)(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud);

typedef struct {
    size_t hiwat, lowat; /* write queue marks applied to both (0: defaults) */
    nb_splice_done_cb on_done;
    void *ud;
} nb_splice_opts_t;

/* Pumps a -> b and b -> a: reads a until b's write queue passes hiwat,
 * resumes when it drains below lowat; EOF on a shuts down b's write side
 * (and the other way round). Takes over both streams' callbacks until
 * on_done; starts reading both. 0 or -ENOMEM (nothing changed). */
int nb_stream_splice(nb_stream_t *a, nb_stream_t *b, const nb_splice_opts_t *o, nb_splice_t **out);

#endif
