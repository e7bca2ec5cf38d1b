/* nbmux session layer on libuv, used by the daemon (host role) and the
 * agent (guest role). docs/protocol.md is the wire contract,
 * docs/internals/mux.md the invariants of this implementation.
 *
 * One session object per channel. It survives transport changes: attach a
 * connected fd, the handshake runs, on_up fires; when the transport fails
 * or the peer misbehaves the session tears down (every stream gets
 * on_close, everything is freed), on_down fires, and a new fd can be
 * attached for a fresh handshake.
 *
 * Threading: everything here belongs to the loop the session was created
 * on. Callbacks run on that loop; none is ever called from inside an API
 * call except where stated (nb_muxsess_close and nb_muxsess_free call the
 * streams' on_close).
 *
 * The process must ignore SIGPIPE (a peer that vanishes mid-write). */
#ifndef NB_MUXSESS_H
#define NB_MUXSESS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "lib/buf.h"
#include "lib/mux.h"

typedef struct nb_muxsess nb_muxsess_t;
typedef struct nb_muxsess_stream nb_muxsess_stream_t;

/* Per-stream callbacks. All optional. `ud` is the pointer given with them. */
typedef struct {
    /* Peer bytes on `chan` (NB_MUX_CHAN_*); `data` is borrowed for the call.
     * CTL data is always one whole message. Unless auto_consume is set the
     * application must call nb_muxsess_stream_consume() for these bytes
     * once it no longer needs buffer space for them: that returns credit. */
    void (*on_data)(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t data, void *ud);
    /* The peer finished sending (FIN). */
    void (*on_fin)(nb_muxsess_stream_t *st, void *ud);
    /* A stream we opened was accepted (OPEN_OK). */
    void (*on_open_ok)(nb_muxsess_stream_t *st, void *ud);
    /* The outbound queue fell below the low-water mark after a write went
     * over the high-water mark (see nb_muxsess_stream_writable). */
    void (*on_drain)(nb_muxsess_stream_t *st, void *ud);
    /* Final call; `st` is invalid afterwards. err 0: both sides finished
     * cleanly. Otherwise an NB_E* / -errno, the wire code (NB_MUX_E_*) and
     * a human message (escaped, safe to log; never NULL): OPEN_ERR or RST
     * from the peer, or the session's teardown reason. Not called after the
     * application's own nb_muxsess_stream_reset/reject. */
    void (*on_close)(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud);
    /* Consume every DATA byte as soon as on_data returns. */
    int auto_consume;
} nb_muxsess_stream_cbs_t;

typedef struct {
    int role;                 /* NB_MUX_ROLE_HOST or NB_MUX_ROLE_GUEST */
    uint32_t max_streams;     /* open streams, both directions (1024) */
    size_t recv_budget;       /* unconsumed inbound bytes before reads pause (64 MiB) */
    size_t stream_send_max;   /* hard cap on a stream's outbound queue (4 MiB) */
    size_t stream_send_hiwat; /* writable() turns false above this (256 KiB) */
    size_t send_budget;       /* ... or when all streams together queue this (16 MiB) */
    size_t ctl_queue_max;     /* pending control frames before reads pause (1 MiB) */
    uint32_t open_rate;       /* peer OPENs per second (1000) ... */
    uint32_t open_burst;      /* ... with this burst (2000) */
    uint32_t handshake_ms;    /* 10000 */
    uint32_t ping_ms;         /* 10000 */
    uint32_t idle_ms;         /* nothing received for this long: TIMEOUT (30000) */

    /* The handshake completed. */
    void (*on_up)(nb_muxsess_t *s, void *ud);
    /* The session went down (never called by nb_muxsess_free). `err` is an
     * NB_E* code, `reason` a one-line explanation (escaped). A new fd may be
     * attached from here on. */
    void (*on_down)(nb_muxsess_t *s, int err, const char *reason, void *ud);
    /* The peer opened `st` for `service` (validated name) with `args`
     * (borrowed, untrusted bytes). Set callbacks with
     * nb_muxsess_stream_set_cbs, then accept or reject now or later (the
     * stream counts against max_streams while pending; on_close fires if
     * the peer resets it or the session ends meanwhile). Return 0 once
     * handled, or a negative code to have the session reject it with the
     * matching wire code. NULL: every OPEN gets NO_SERVICE. */
    int (*on_open)(nb_muxsess_t *s, nb_muxsess_stream_t *st, const char *service, nb_iov_t args,
                   void *ud);
    void *ud;
} nb_muxsess_opts_t;

/* Fills `o` with the defaults above for `role`, callbacks NULL. */
void nb_muxsess_opts_default(nb_muxsess_opts_t *o, int role);

/* Creates a session on `loop`. `key` (NB_MUX_KEY_LEN bytes) is copied into
 * locked memory and wiped on free. 0, NB_EINVAL or -ENOMEM; *out NULL on
 * error. */
int nb_muxsess_new(uv_loop_t *loop, const nb_muxsess_opts_t *o, const uint8_t *key,
                   nb_muxsess_t **out);

/* Starts a handshake on a connected fd (Unix/vsock socket or character
 * device). Takes ownership of fd in every case. NB_ESTATE if a transport
 * is already attached. The host sends HELLO at once; the guest waits. */
int nb_muxsess_attach_fd(nb_muxsess_t *s, int fd);

/* Ends the current transport: GOAWAY(code, msg) is sent after what is
 * already queued, every stream gets on_close (from inside this call), and
 * on_down follows later. No-op without a transport. */
void nb_muxsess_close(nb_muxsess_t *s, uint32_t code, const char *msg);

/* Tears down like nb_muxsess_close(SHUTDOWN) without on_down and releases
 * the session; memory is returned once its libuv handles have closed (keep
 * running the loop). NULL is a no-op. */
void nb_muxsess_free(nb_muxsess_t *s);

/* 1 when the handshake is complete and the transport up. */
int nb_muxsess_is_up(const nb_muxsess_t *s);

typedef struct {
    uint32_t streams;    /* open or pending streams */
    uint64_t unconsumed; /* inbound bytes delivered, not yet consumed */
    uint64_t queued;     /* outbound stream bytes not yet framed */
    uint64_t ctl_queued; /* outbound control bytes not yet written */
    uint64_t inflight;   /* bytes handed to the transport, not yet written */
    uint64_t opens_in;   /* peer OPENs seen this session */
    uint64_t opens_refused;
    uint64_t bytes_in, bytes_out;
    uint32_t sessions; /* handshakes completed since creation */
} nb_muxsess_stats_t;

void nb_muxsess_stats(const nb_muxsess_t *s, nb_muxsess_stats_t *out);

/* ---- streams ---- */

/* Opens a stream to `service` (1..32 of [a-z0-9_-]) with `args`
 * (copied). Writes may be queued right away; they are sent after OPEN_OK.
 * 0 with *out set; NB_ESTATE (not up), NB_EINVAL (service name),
 * NB_ETOOBIG (args), -EBUSY (max_streams), -ENOMEM. */
int nb_muxsess_open(nb_muxsess_t *s, const char *service, nb_iov_t args,
                    const nb_muxsess_stream_cbs_t *cbs, void *ud, nb_muxsess_stream_t **out);

/* Sets callbacks (borrowed: must outlive the stream) and user data. */
void nb_muxsess_stream_set_cbs(nb_muxsess_stream_t *st, const nb_muxsess_stream_cbs_t *cbs,
                               void *ud);

/* Accepts / rejects a pending peer stream. After reject, st is invalid. */
int nb_muxsess_stream_accept(nb_muxsess_stream_t *st);
void nb_muxsess_stream_reject(nb_muxsess_stream_t *st, uint32_t code, const char *msg);

/* Queues bytes on `chan` (copied); on a pending peer stream they wait for
 * the accept (and are dropped by a reject). CTL writes are one message each
 * (1..NB_MUX_CTL_MAX bytes). 0; NB_ETOOBIG (would pass stream_send_max;
 * nothing queued, or a CTL message too long); NB_ESTATE (after FIN or
 * close); NB_EINVAL (channel). */
int nb_muxsess_stream_write(nb_muxsess_stream_t *st, unsigned chan, const void *p, size_t n);

/* Same, but takes ownership of `p` (freed with free_fn once written or
 * on error, free_fn NULL: not freed): no copy. */
int nb_muxsess_stream_write_owned(nb_muxsess_stream_t *st, unsigned chan, void *p, size_t n,
                                  void (*free_fn)(void *));

/* 1 while the outbound queue is below stream_send_hiwat and the session's
 * queues together are below send_budget (a stream with nothing queued is
 * always writable, so every stream makes progress). When a write makes it
 * 0, on_drain fires once both are back under half. */
int nb_muxsess_stream_writable(const nb_muxsess_stream_t *st);

/* Bytes queued and not yet framed. */
size_t nb_muxsess_stream_queued(const nb_muxsess_stream_t *st);

/* Half-close: FIN goes out after the queued bytes (on a pending stream,
 * after the accept). NB_ESTATE if closed. */
int nb_muxsess_stream_fin(nb_muxsess_stream_t *st);

/* Aborts the stream (RST with code and message, or OPEN_ERR while
 * pending); queued bytes are dropped; st is invalid afterwards and
 * on_close is not called. */
void nb_muxsess_stream_reset(nb_muxsess_stream_t *st, uint32_t code, const char *msg);

/* Returns credit for `n` bytes delivered by on_data. */
void nb_muxsess_stream_consume(nb_muxsess_stream_t *st, size_t n);

uint32_t nb_muxsess_stream_id(const nb_muxsess_stream_t *st);
void *nb_muxsess_stream_ud(const nb_muxsess_stream_t *st);
nb_muxsess_t *nb_muxsess_stream_session(const nb_muxsess_stream_t *st);

#endif
