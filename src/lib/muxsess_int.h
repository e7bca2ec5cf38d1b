/* Internal structures and functions shared by the nbmux session layer's
 * modules (not a public interface; the API is lib/muxsess.h). Calls point
 * down only:
 *   muxsess.c         top: the session API (create, attach, close, free)
 *   muxsess_stream.c  top: the stream API (open, accept, write, FIN, getters)
 *   muxsess_proto.c   the protocol engine: handshake, teardown, write
 *                     scheduler, reads, frame dispatch, keepalive, and the
 *                     stream calls the dispatch makes (reject, reset, consume)
 *   muxsess_mem.c     bottom: the objects and their memory (stream table and
 *                     lists, chunks, write requests, transport handles,
 *                     deferred frees); calls nothing above it
 * Invariants and states: docs/internals/mux.md. All of it runs on the
 * session's loop thread. */
#ifndef NB_MUXSESS_INT_H
#define NB_MUXSESS_INT_H

#include <stdint.h>

#include "lib/buf.h"
#include "lib/mux.h"
#include "lib/muxsess.h"

#define RBUF_SIZE (256u * 1024u)
#define HASH_SIZE 1024u
#define CHUNK_SMALL 4096u /* copy chunks: small writes coalesce here ... */
#define CHUNK_BIG 65536u  /* ... bulk writes are cut into these */
#define POOL_SMALL 64     /* free chunks kept: 256 KiB of small ... */
#define POOL_BIG 128      /* ... and 8 MiB of big ones, released at teardown */
#define WREQ_BUFS 128
#define WREQ_FRAMES 64
#define WRITE_HIWAT (4u << 20) /* data bytes in flight before the scheduler waits */
#define LINGER_MS 1000         /* how long a GOAWAY may take to leave */
#define WINDOW_MAX (4u << 20)  /* auto-tuned receive window, per stream */
#define WFREE_MAX 4
#define MAX_WREQS 8           /* write requests queued in libuv; the rest waits in our queues */
#define CTLQ_SLACK (2u << 20) /* control bytes one read can provoke, beyond ctl_queue_max */
#define SOCK_BUF (1 << 20)

enum { S_IDLE, S_HS_HELLO, S_HS_AUTH, S_UP };
enum { ST_OPENING, ST_PENDING, ST_OPEN, ST_DEAD };

/* A piece of outbound stream data. Referenced once by the stream's queue
 * while it holds unframed bytes and once per write request that points
 * into it; freed at zero. */
struct chunk {
    struct chunk *next;
    nb_muxsess_t *s; /* pooled copy chunks return to s->pool */
    uint8_t *p;
    size_t len, off, cap; /* cap 0: external memory, never appended to */
    unsigned refs;
    uint8_t chan;
    void (*free_fn)(void *);
};

/* One attached transport. Outlives its session's use of it while a GOAWAY
 * lingers; freed when both handles have closed. */
struct conn {
    uv_pipe_t pipe;
    uv_timer_t linger;
    nb_muxsess_t *s;
    int nhandles;
    int closing;        /* torn down; no more reads, only the final writes */
    int handles_closed; /* uv_close called */
    int reading;
    unsigned writes;   /* write requests in flight */
    uint64_t inflight; /* bytes in flight */
};

typedef struct wreq {
    uv_write_t req;
    struct wreq *next; /* free list */
    struct conn *conn;
    nb_buf_t ctl; /* control frames (owned) */
    size_t bytes;
    unsigned nbufs, nhdr, nref;
    uv_buf_t bufs[WREQ_BUFS];
    uint8_t hdr[WREQ_FRAMES][NB_MUX_HDR_LEN];
    struct chunk *ref[WREQ_BUFS];
} wreq_t;

struct nb_muxsess_stream {
    nb_muxsess_t *s;
    uint32_t id;
    uint8_t state, local;
    uint8_t fin_queued, fin_sent, fin_recv;
    uint8_t want_drain, in_ready, in_wlist;
    uint32_t send_credit; /* bytes we may still send */
    uint32_t recv_credit; /* bytes the peer may still send */
    uint32_t consumed_pending;
    uint32_t window; /* receive window granted to the peer: W, grown while we keep up */
    uint64_t unconsumed;
    struct chunk *qhead, *qtail;
    size_t queued;
    const nb_muxsess_stream_cbs_t *cbs;
    void *ud;
    nb_muxsess_stream_t *hnext;         /* hash chain */
    nb_muxsess_stream_t *rprev, *rnext; /* ready list */
    nb_muxsess_stream_t *wprev, *wnext; /* window-update list */
    nb_muxsess_stream_t *aprev, *anext; /* live streams */
    nb_muxsess_stream_t *gnext;         /* graveyard */
    nb_muxsess_stream_t *nnext;         /* flush notifications */
};

struct nb_muxsess {
    uv_loop_t *loop;
    nb_muxsess_opts_t o;
    uint8_t *key; /* sodium_malloc'd, NB_MUX_KEY_LEN */
    int state;
    struct conn *conn;
    uint64_t conn_id;
    uv_timer_t tick;
    uv_prepare_t prep;
    uint64_t tick_ms;
    int nhandles;
    unsigned nconns;
    int freed;
    int depth;
    nb_mux_dec_t dec;
    uint8_t *rbuf;
    uint8_t hello_mine[NB_MUX_HELLO_LEN], hello_peer[NB_MUX_HELLO_LEN];
    uint32_t features;
    uint64_t t_attach, last_rx, last_ping, ping_seq;
    uint64_t tokens, t_tokens; /* OPEN bucket, in thousandths */
    int paused_local;
    int cur_ignore;
    nb_muxsess_stream_t *buckets[HASH_SIZE];
    nb_muxsess_stream_t *all;
    nb_muxsess_stream_t *rhead, *rtail;
    nb_muxsess_stream_t *whead;
    nb_muxsess_stream_t *grave;
    uint32_t nstreams;
    uint32_t next_local_id, last_peer_id;
    uint64_t unconsumed, queued;
    int send_blocked; /* a writer was refused because of send_budget */
    nb_buf_t ctlq;
    wreq_t *wfree;
    unsigned nwfree;
    /* Free copy chunks by class: steady streaming allocates nothing, and
     * the heap is not trimmed and refaulted for every 64 KiB. */
    struct chunk *pool[2];
    unsigned npool[2];
    int down_pending, down_err;
    char down_reason[384];
    nb_muxsess_stats_t stats;
};

/* The loop's cached time (ms). */
static inline uint64_t now_ms(const nb_muxsess_t *s)
{
    return uv_now(s->loop);
}

/* Start of a top-level callback; pairs with nb_mxs_leave(). */
static inline void enter(nb_muxsess_t *s)
{
    s->depth++;
}

static inline unsigned hidx(uint32_t id)
{
    return (id >> 1) & (HASH_SIZE - 1);
}

/* Live stream with id `id`, or NULL. */
static inline nb_muxsess_stream_t *hash_get(nb_muxsess_t *s, uint32_t id)
{
    for (nb_muxsess_stream_t *st = s->buckets[hidx(id)]; st; st = st->hnext)
        if (st->id == id)
            return st;
    return NULL;
}

/* --- muxsess_mem.c (bottom) */

/* End of a top-level callback: deliver on_down, free dead streams. Must
 * be the last use of s by the caller. */
void nb_mxs_leave(nb_muxsess_t *s);
/* Frees a session nb_muxsess_free released once nothing uses it any more. */
void nb_mxs_maybe_free(nb_muxsess_t *s);
/* Returns the free copy chunks to the heap. */
void nb_mxs_pool_release(nb_muxsess_t *s);
/* Closes both handles of a transport; it is freed when both have closed. */
void nb_mxs_conn_close(struct conn *c);
void nb_mxs_ready_del(nb_muxsess_t *s, nb_muxsess_stream_t *st);
void nb_mxs_ready_add(nb_muxsess_t *s, nb_muxsess_stream_t *st);
void nb_mxs_wlist_del(nb_muxsess_t *s, nb_muxsess_stream_t *st);
void nb_mxs_wlist_add(nb_muxsess_t *s, nb_muxsess_stream_t *st);
/* 1 when st has credit for its next frame (or only a FIN to send). */
int nb_mxs_stream_ready(const nb_muxsess_stream_t *st);
/* A copy chunk of `cap` bytes (CHUNK_SMALL or CHUNK_BIG), from the pool
 * when it has one; NULL when out of memory. */
struct chunk *nb_mxs_chunk_get(nb_muxsess_t *s, size_t cap);
/* Drops one reference; pooled copy chunks go back to their session. */
void nb_mxs_chunk_unref(struct chunk *c);
/* A new stream in the table (NULL when out of memory). */
nb_muxsess_stream_t *nb_mxs_stream_new(nb_muxsess_t *s, uint32_t id, int local, int state);
/* Removes a stream from every live structure and moves it to the
 * graveyard (freed at the end of the current top-level callback), then
 * tells the application if `notify`. */
void nb_mxs_stream_finish(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg,
                          int notify);
wreq_t *nb_mxs_wreq_get(nb_muxsess_t *s, struct conn *c);
void nb_mxs_wreq_put(nb_muxsess_t *s, wreq_t *w);

/* --- muxsess_proto.c (the engine) */

/* Arms the prepare handle that flushes (and delivers a pending on_down). */
void nb_mxs_schedule_flush(nb_muxsess_t *s);
/* Ends the session on its current transport (no-op without one): logs why,
 * optionally sends GOAWAY `code`, finishes every stream and queues on_down. */
void nb_mxs_teardown(nb_muxsess_t *s, int err, uint32_t code, int goaway, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Teardown with GOAWAY `code` for a peer's protocol violation. */
void nb_mxs_proto_error(nb_muxsess_t *s, uint32_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Result of queueing a control frame: tears down on failure, else
 * schedules a flush. Returns r. */
int nb_mxs_ctl_frame_result(nb_muxsess_t *s, int r);
/* Handshake steps for a HELLO (S_HS_HELLO) and an AUTH (S_HS_AUTH) frame. */
void nb_mxs_hs_hello(nb_muxsess_t *s, const nb_mux_ev_t *ev);
void nb_mxs_hs_auth(nb_muxsess_t *s, const nb_mux_ev_t *ev);
/* Puts st on the ready list (and schedules a flush) iff it can send now. */
void nb_mxs_update_ready(nb_muxsess_stream_t *st);
/* Writes w to c (takes ownership of w, also on failure). */
int nb_mxs_submit(nb_muxsess_t *s, struct conn *c, wreq_t *w);
/* Frames queued control and stream data into write requests. */
void nb_mxs_flush(nb_muxsess_t *s);
/* Starts or stops reading by the receive budget and the control queue. */
void nb_mxs_update_read(nb_muxsess_t *s);
void nb_mxs_on_prep(uv_prepare_t *h);
void nb_mxs_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
void nb_mxs_on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b);
void nb_mxs_on_tick(uv_timer_t *t);

#endif
