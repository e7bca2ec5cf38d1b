/* nbmux session layer. Invariants and states: docs/internals/mux.md. */
#include "lib/muxsess.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/err.h"
#include "lib/log.h"

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

static void flush(nb_muxsess_t *s);
static void teardown(nb_muxsess_t *s, int err, uint32_t code, int goaway, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* ---------------------------------------------------------------- misc */

void nb_muxsess_opts_default(nb_muxsess_opts_t *o, int role)
{
    memset(o, 0, sizeof *o);
    o->role = role;
    o->max_streams = 1024;
    o->recv_budget = 64u << 20;
    o->stream_send_max = 4u << 20;
    o->stream_send_hiwat = 256u << 10;
    o->send_budget = 16u << 20;
    o->ctl_queue_max = 1u << 20;
    o->open_rate = 1000;
    o->open_burst = 2000;
    o->handshake_ms = 10000;
    o->ping_ms = 10000;
    o->idle_ms = 30000;
}

static uint64_t now_ms(const nb_muxsess_t *s)
{
    return uv_now(s->loop);
}

static void enter(nb_muxsess_t *s)
{
    s->depth++;
}

static void stream_free_mem(nb_muxsess_stream_t *st)
{
    free(st);
}

static void sweep(nb_muxsess_t *s)
{
    nb_muxsess_stream_t *st;
    while ((st = s->grave)) {
        s->grave = st->gnext;
        stream_free_mem(st);
    }
}

static void pool_release(nb_muxsess_t *s)
{
    for (int k = 0; k < 2; k++) {
        struct chunk *c;
        while ((c = s->pool[k])) {
            s->pool[k] = c->next;
            free(c);
        }
        s->npool[k] = 0;
    }
}

static void really_free(nb_muxsess_t *s)
{
    sweep(s);
    wreq_t *w;
    while ((w = s->wfree)) {
        s->wfree = w->next;
        free(w);
    }
    pool_release(s);
    nb_mux_dec_free(&s->dec);
    nb_buf_free(&s->ctlq);
    free(s->rbuf);
    if (s->key)
        sodium_free(s->key);
    free(s);
}

static void maybe_free(nb_muxsess_t *s)
{
    if (s->freed && s->depth == 0 && s->nhandles == 0 && s->nconns == 0)
        really_free(s);
}

/* End of a top-level callback: deliver on_down, free dead streams. Must
 * be the last use of s by the caller. */
static void leave(nb_muxsess_t *s)
{
    if (--s->depth > 0)
        return;
    while (s->down_pending && !s->freed) {
        s->down_pending = 0;
        if (s->o.on_down) {
            s->depth++;
            s->o.on_down(s, s->down_err, s->down_reason, s->o.ud);
            s->depth--;
        }
    }
    sweep(s);
    maybe_free(s);
}

static void on_prep(uv_prepare_t *h);

static void schedule_flush(nb_muxsess_t *s)
{
    if (!s->freed)
        uv_prepare_start(&s->prep, on_prep);
}

/* ------------------------------------------------------------- streams */

static unsigned hidx(uint32_t id)
{
    return (id >> 1) & (HASH_SIZE - 1);
}

static nb_muxsess_stream_t *hash_get(nb_muxsess_t *s, uint32_t id)
{
    for (nb_muxsess_stream_t *st = s->buckets[hidx(id)]; st; st = st->hnext)
        if (st->id == id)
            return st;
    return NULL;
}

static void hash_del(nb_muxsess_t *s, nb_muxsess_stream_t *st)
{
    nb_muxsess_stream_t **pp = &s->buckets[hidx(st->id)];
    while (*pp && *pp != st)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = st->hnext;
}

static void ready_del(nb_muxsess_t *s, nb_muxsess_stream_t *st)
{
    if (!st->in_ready)
        return;
    if (st->rprev)
        st->rprev->rnext = st->rnext;
    else
        s->rhead = st->rnext;
    if (st->rnext)
        st->rnext->rprev = st->rprev;
    else
        s->rtail = st->rprev;
    st->rprev = st->rnext = NULL;
    st->in_ready = 0;
}

static void ready_add(nb_muxsess_t *s, nb_muxsess_stream_t *st)
{
    if (st->in_ready)
        return;
    st->rnext = NULL;
    st->rprev = s->rtail;
    if (s->rtail)
        s->rtail->rnext = st;
    else
        s->rhead = st;
    s->rtail = st;
    st->in_ready = 1;
}

static void wlist_del(nb_muxsess_t *s, nb_muxsess_stream_t *st)
{
    if (!st->in_wlist)
        return;
    if (st->wprev)
        st->wprev->wnext = st->wnext;
    else
        s->whead = st->wnext;
    if (st->wnext)
        st->wnext->wprev = st->wprev;
    st->wprev = st->wnext = NULL;
    st->in_wlist = 0;
}

static void wlist_add(nb_muxsess_t *s, nb_muxsess_stream_t *st)
{
    if (st->in_wlist)
        return;
    st->wprev = NULL;
    st->wnext = s->whead;
    if (s->whead)
        s->whead->wprev = st;
    s->whead = st;
    st->in_wlist = 1;
}

static int stream_ready(const nb_muxsess_stream_t *st)
{
    if (st->state != ST_OPEN || st->fin_sent)
        return 0;
    const struct chunk *c = st->qhead;
    if (!c)
        return st->fin_queued;
    if (c->chan == NB_MUX_CHAN_CTL)
        return st->send_credit >= c->len - c->off;
    return st->send_credit > 0;
}

static void update_ready(nb_muxsess_stream_t *st)
{
    nb_muxsess_t *s = st->s;
    if (stream_ready(st)) {
        ready_add(s, st);
        schedule_flush(s);
    } else {
        ready_del(s, st);
    }
}

static int writable(const nb_muxsess_stream_t *st)
{
    const nb_muxsess_t *s = st->s;
    return st->state != ST_DEAD && st->queued < s->o.stream_send_hiwat &&
           (st->queued == 0 || s->queued < s->o.send_budget);
}

/* After a write: arm on_drain if the writer should now pause. */
static void note_pressure(nb_muxsess_stream_t *st)
{
    if (writable(st))
        return;
    st->want_drain = 1;
    if (st->s->queued >= st->s->o.send_budget)
        st->s->send_blocked = 1;
}

static void chunk_unref(struct chunk *c)
{
    if (--c->refs)
        return;
    if (c->free_fn)
        c->free_fn(c->p);
    int k = c->cap == CHUNK_BIG ? 1 : c->cap == CHUNK_SMALL ? 0 : -1;
    nb_muxsess_t *s = c->s;
    if (k >= 0 && s && !s->freed && s->conn && s->npool[k] < (k ? POOL_BIG : POOL_SMALL)) {
        c->next = s->pool[k];
        s->pool[k] = c;
        s->npool[k]++;
        return;
    }
    free(c);
}

static struct chunk *chunk_get(nb_muxsess_t *s, size_t cap)
{
    int k = cap == CHUNK_BIG ? 1 : 0;
    struct chunk *c = s->pool[k];
    if (c) {
        s->pool[k] = c->next;
        s->npool[k]--;
    } else if (!(c = malloc(sizeof *c + cap))) {
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->s = s;
    c->p = (uint8_t *)(c + 1);
    c->cap = cap;
    c->refs = 1;
    return c;
}

static nb_muxsess_stream_t *stream_new(nb_muxsess_t *s, uint32_t id, int local, int state)
{
    nb_muxsess_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->s = s;
    st->id = id;
    st->local = (uint8_t)local;
    st->state = (uint8_t)state;
    st->recv_credit = st->window = NB_MUX_INITIAL_WINDOW;
    unsigned i = hidx(id);
    st->hnext = s->buckets[i];
    s->buckets[i] = st;
    st->anext = s->all;
    if (s->all)
        s->all->aprev = st;
    s->all = st;
    s->nstreams++;
    return st;
}

/* Removes a stream from every live structure and moves it to the
 * graveyard (freed at the end of the current top-level callback), then
 * tells the application if `notify`. */
static void stream_finish(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg,
                          int notify)
{
    nb_muxsess_t *s = st->s;
    if (st->state == ST_DEAD)
        return;
    hash_del(s, st);
    if (st->aprev)
        st->aprev->anext = st->anext;
    else
        s->all = st->anext;
    if (st->anext)
        st->anext->aprev = st->aprev;
    ready_del(s, st);
    wlist_del(s, st);
    s->nstreams--;
    s->unconsumed -= st->unconsumed;
    s->queued -= st->queued;
    st->unconsumed = 0;
    st->queued = 0;
    struct chunk *c;
    while ((c = st->qhead)) {
        st->qhead = c->next;
        chunk_unref(c);
    }
    st->qtail = NULL;
    st->state = ST_DEAD;
    st->gnext = s->grave;
    s->grave = st;
    if (notify && st->cbs && st->cbs->on_close)
        st->cbs->on_close(st, err, code, msg ? msg : "", st->ud);
}

/* ------------------------------------------------------------ transport */

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->nhandles > 0)
        return;
    nb_muxsess_t *s = c->s;
    free(c);
    s->nconns--;
    if (s->depth == 0)
        maybe_free(s);
}

static void conn_close(struct conn *c)
{
    if (c->handles_closed)
        return;
    c->handles_closed = 1;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    uv_close((uv_handle_t *)&c->linger, on_conn_closed);
}

static void on_linger(uv_timer_t *t)
{
    conn_close(t->data);
}

static void update_read(nb_muxsess_t *s);

static wreq_t *wreq_get(nb_muxsess_t *s, struct conn *c)
{
    wreq_t *w = s->wfree;
    if (w) {
        s->wfree = w->next;
        s->nwfree--;
    } else if (!(w = malloc(sizeof *w))) {
        return NULL;
    }
    w->next = NULL;
    w->conn = c;
    nb_buf_init(&w->ctl, SIZE_MAX);
    w->bytes = 0;
    w->nbufs = w->nhdr = w->nref = 0;
    return w;
}

static void wreq_put(nb_muxsess_t *s, wreq_t *w)
{
    for (unsigned i = 0; i < w->nref; i++)
        chunk_unref(w->ref[i]);
    w->nref = 0;
    nb_buf_free(&w->ctl);
    if (s->nwfree < WFREE_MAX && !s->freed) {
        w->next = s->wfree;
        s->wfree = w;
        s->nwfree++;
    } else {
        free(w);
    }
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    struct conn *c = w->conn;
    nb_muxsess_t *s = c->s;
    enter(s);
    c->writes--;
    c->inflight -= w->bytes;
    wreq_put(s, w);
    if (c->closing) {
        if (c->writes == 0)
            conn_close(c);
    } else if (status < 0) {
        teardown(s, status, NB_MUX_E_SHUTDOWN, 0, "write to the peer failed: %s",
                 uv_strerror(status));
    } else {
        flush(s);
        update_read(s);
    }
    leave(s);
}

static int submit(nb_muxsess_t *s, struct conn *c, wreq_t *w)
{
    unsigned first = 0;
    s->stats.bytes_out += w->bytes;
    if (c->writes == 0) {
        /* Nothing queued in libuv: write now and skip the request (and the
         * extra loop iteration its deferred callback costs) when it all
         * fits, which is the common case for small frames. */
        int n = uv_try_write((uv_stream_t *)&c->pipe, w->bufs, w->nbufs);
        if (n > 0 && (size_t)n == w->bytes) {
            wreq_put(s, w);
            return 0;
        }
        if (n > 0) {
            size_t left = (size_t)n;
            while (left >= w->bufs[first].len)
                left -= w->bufs[first++].len;
            w->bufs[first].base += left;
            w->bufs[first].len -= left;
            w->bytes -= (size_t)n;
        }
    }
    int r = uv_write(&w->req, (uv_stream_t *)&c->pipe, w->bufs + first, w->nbufs - first, on_write);
    if (r < 0) {
        wreq_put(s, w);
        return r;
    }
    c->writes++;
    c->inflight += w->bytes;
    return 0;
}

/* ------------------------------------------------------------- teardown */

static void teardown(nb_muxsess_t *s, int err, uint32_t code, int goaway, const char *fmt, ...)
{
    struct conn *c = s->conn;
    if (!c)
        return;
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);

    int level = (code == NB_MUX_E_NONE || code == NB_MUX_E_SHUTDOWN) ? NB_LOG_INFO : NB_LOG_WARN;
    nb_log_conn(level, s->conn_id, "nbmux session %s: %s (%s)",
                s->state == S_UP ? "down" : "handshake failed", why, nb_mux_code_name(code));

    s->conn = NULL;
    s->state = S_IDLE;
    uv_timer_stop(&s->tick);
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = 0;
    }
    c->closing = 1;
    if (goaway && !c->handles_closed) {
        wreq_t *w = wreq_get(s, c);
        if (w && nb_mux_enc_code(&w->ctl, NB_MUX_GOAWAY, 0, code, why) == 0) {
            w->bufs[0] = uv_buf_init((char *)w->ctl.p, (unsigned)w->ctl.len);
            w->nbufs = 1;
            w->bytes = w->ctl.len;
            (void)submit(s, c, w);
        } else if (w) {
            wreq_put(s, w);
        }
    }
    if (c->writes == 0)
        conn_close(c);
    else if (!c->handles_closed)
        uv_timer_start(&c->linger, on_linger, LINGER_MS, 0);

    snprintf(s->down_reason, sizeof s->down_reason, "%s", why);
    s->down_err = err ? err : NB_ECLOSED;
    s->down_pending = 1;

    /* Fresh state for the next attach, before any application callback
     * (which may attach again). The decoder keeps its buffer: a CTL
     * payload handed to on_data may still be in use up the stack. */
    uint8_t *pbuf = s->dec.pbuf;
    nb_mux_dec_init(&s->dec);
    s->dec.pbuf = pbuf;
    nb_buf_free(&s->ctlq);
    nb_buf_init(&s->ctlq, s->o.ctl_queue_max + CTLQ_SLACK);
    s->paused_local = 0;
    s->send_blocked = 0;
    sodium_memzero(s->hello_mine, sizeof s->hello_mine);
    sodium_memzero(s->hello_peer, sizeof s->hello_peer);
    schedule_flush(s); /* delivers on_down from on_prep if no callback is running */

    char msg[320];
    snprintf(msg, sizeof msg, "session ended: %s", why);
    nb_muxsess_stream_t *st;
    while ((st = s->all))
        stream_finish(st, s->down_err, code == NB_MUX_E_NONE ? NB_MUX_E_SHUTDOWN : code, msg, 1);
    if (!s->conn) /* nobody attached again from a callback */
        pool_release(s);
}

static void proto_error(nb_muxsess_t *s, uint32_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void proto_error(nb_muxsess_t *s, uint32_t code, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    int err = code == NB_MUX_E_AUTH ? NB_EAUTH : nb_mux_code_to_err(code);
    teardown(s, err, code, 1, "%s", why);
}

static int ctl_frame_result(nb_muxsess_t *s, int r)
{
    if (r == NB_ETOOBIG && s->conn)
        teardown(s, r, NB_MUX_E_PROTOCOL, 1,
                 "the peer does not read: more than %zu bytes of control frames queued",
                 s->ctlq.max);
    else if (r < 0 && s->conn)
        teardown(s, r, NB_MUX_E_INTERNAL, 1, "cannot queue a control frame: %s", nb_strerror(r));
    else
        schedule_flush(s);
    return r;
}

/* -------------------------------------------------------------- writing */

/* Adds one frame of stream st to w. Returns 0 when w has no room left. */
static int emit_stream(nb_muxsess_t *s, wreq_t *w, nb_muxsess_stream_t *st)
{
    if (w->nhdr >= WREQ_FRAMES || w->nbufs + 2 > WREQ_BUFS)
        return 0;
    uint8_t *hdr = w->hdr[w->nhdr++];
    unsigned hbuf = w->nbufs++;
    struct chunk *c = st->qhead;
    if (!c) { /* only FIN left */
        nb_mux_put_hdr(hdr, NB_MUX_FIN, 0, st->id, 0);
        w->bufs[hbuf] = uv_buf_init((char *)hdr, NB_MUX_HDR_LEN);
        w->bytes += NB_MUX_HDR_LEN;
        st->fin_sent = 1;
        return 1;
    }
    uint8_t chan = c->chan;
    size_t total = 0;
    size_t limit = st->send_credit < NB_MUX_MAX_PAYLOAD ? st->send_credit : NB_MUX_MAX_PAYLOAD;
    while (c && c->chan == chan && total < limit && w->nbufs < WREQ_BUFS) {
        size_t take = c->len - c->off;
        if (take > limit - total)
            take = limit - total;
        w->bufs[w->nbufs++] = uv_buf_init((char *)c->p + c->off, (unsigned)take);
        c->refs++;
        w->ref[w->nref++] = c;
        c->off += take;
        total += take;
        if (c->off == c->len) {
            st->qhead = c->next;
            if (!st->qhead)
                st->qtail = NULL;
            chunk_unref(c);
            c = st->qhead;
            if (chan == NB_MUX_CHAN_CTL)
                break; /* one CTL message per frame */
        } else {
            break;
        }
    }
    nb_mux_put_hdr(hdr, NB_MUX_DATA, chan, st->id, (uint32_t)total);
    w->bufs[hbuf] = uv_buf_init((char *)hdr, NB_MUX_HDR_LEN);
    w->bytes += NB_MUX_HDR_LEN + total;
    st->send_credit -= (uint32_t)total;
    st->queued -= total;
    s->queued -= total;
    return 1;
}

static void flush_once(nb_muxsess_t *s);

/* Writers woken by on_drain usually queue more at once; framing it in the
 * same pass (while the transport takes it without blocking) saves a loop
 * iteration per refill. */
static void flush(nb_muxsess_t *s)
{
    for (int i = 0; i < 8; i++) {
        struct conn *c = s->conn;
        uint64_t before = s->stats.bytes_out;
        flush_once(s);
        c = s->conn;
        if (!c || c->closing || c->writes || s->stats.bytes_out == before ||
            !(s->rhead || s->ctlq.len))
            break;
    }
}

static void flush_once(nb_muxsess_t *s)
{
    struct conn *c = s->conn;
    if (!c || c->closing)
        return;
    /* The transport is full: on_write calls us again. Not queueing more
     * requests keeps their memory bounded however small the frames are
     * (a PING flood would otherwise cost one request per read). */
    if (c->writes >= MAX_WREQS)
        return;
    /* Credit returns ride in the control section. */
    nb_muxsess_stream_t *st;
    while ((st = s->whead)) {
        wlist_del(s, st);
        if (st->consumed_pending && !st->fin_recv) {
            uint32_t inc = st->consumed_pending;
            /* Auto-tuning: an application that keeps up (holds little
             * unconsumed) lets the peer run further ahead, which one
             * fast stream needs to fill the transport. A stream that is
             * not read never gets here and stays at W. */
            if (st->window < WINDOW_MAX && st->unconsumed < st->window / 4 &&
                s->unconsumed < s->o.recv_budget / 4) {
                inc += st->window;
                st->window *= 2;
            }
            if (nb_mux_enc_window(&s->ctlq, st->id, inc) < 0) {
                teardown(s, NB_ETOOBIG, NB_MUX_E_INTERNAL, 0, "control queue full");
                return;
            }
            st->recv_credit += inc;
            st->consumed_pending = 0;
        }
    }
    nb_muxsess_stream_t *closes = NULL, *drains = NULL;
    while (c->writes < MAX_WREQS && (s->ctlq.len || (s->rhead && c->inflight < WRITE_HIWAT))) {
        wreq_t *w = wreq_get(s, c);
        if (!w) {
            teardown(s, -ENOMEM, NB_MUX_E_INTERNAL, 0, "out of memory");
            return;
        }
        if (s->ctlq.len) {
            w->ctl = s->ctlq; /* the request owns the bytes now */
            nb_buf_init(&s->ctlq, w->ctl.max);
            w->bufs[w->nbufs++] = uv_buf_init((char *)w->ctl.p, (unsigned)w->ctl.len);
            w->bytes += w->ctl.len;
        }
        while (s->rhead && c->inflight + w->bytes < WRITE_HIWAT) {
            st = s->rhead;
            ready_del(s, st);
            if (!emit_stream(s, w, st)) {
                ready_add(s, st);
                break;
            }
            if (st->fin_sent && st->fin_recv) {
                st->nnext = closes;
                closes = st;
            } else {
                update_ready(st);
            }
            /* Under session pressure a stream still moves one chunk at a
             * time (queue empty), so streams stuck at zero credit holding
             * the budget cannot stall the others. */
            if (st->want_drain && st->queued <= s->o.stream_send_hiwat / 2 &&
                (st->queued == 0 || !s->send_blocked || s->queued <= s->o.send_budget / 2)) {
                st->want_drain = 0;
                st->nnext = drains;
                drains = st;
            }
        }
        if (w->nbufs == 0) {
            wreq_put(s, w);
            break;
        }
        int r = submit(s, c, w);
        if (r < 0) {
            teardown(s, r, NB_MUX_E_SHUTDOWN, 0, "write to the peer failed: %s", uv_strerror(r));
            return;
        }
    }
    /* The session fell back under its budget: wake every paused writer
     * (also those with nothing queued, which the loop above never sees). */
    if (s->send_blocked && s->queued <= s->o.send_budget / 2) {
        s->send_blocked = 0;
        for (st = s->all; st; st = st->anext) {
            if (st->want_drain && st->queued <= s->o.stream_send_hiwat / 2) {
                st->want_drain = 0;
                st->nnext = drains;
                drains = st;
            }
        }
    }
    /* Application callbacks last: they may write, reset or tear down. */
    while ((st = closes)) {
        closes = st->nnext;
        if (st->state != ST_DEAD && st->fin_sent && st->fin_recv)
            stream_finish(st, 0, NB_MUX_E_NONE, "", 1);
    }
    while ((st = drains)) {
        drains = st->nnext;
        if (st->state != ST_DEAD && st->cbs && st->cbs->on_drain)
            st->cbs->on_drain(st, st->ud);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b);

static void update_read(nb_muxsess_t *s)
{
    struct conn *c = s->conn;
    if (!c || c->closing)
        return;
    int budget_ok = s->unconsumed <= s->o.recv_budget;
    /* Only what the peer provokes counts (PONGs, OPEN_ERRs...): our own
     * data is bounded by the scheduler, and with at most MAX_WREQS
     * requests queued, unsent control frames pile up in ctlq. */
    int out_ok = s->ctlq.len <= s->o.ctl_queue_max;
    if (budget_ok && out_ok) {
        if (!c->reading) {
            /* Reads paused by our own application do not count as silence. */
            if (s->paused_local)
                s->last_rx = now_ms(s);
            s->paused_local = 0;
            if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
                c->reading = 1;
        }
    } else if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = 0;
        s->paused_local = !budget_ok;
    }
}

static void on_prep(uv_prepare_t *h)
{
    nb_muxsess_t *s = h->data;
    enter(s);
    flush(s);
    update_read(s);
    struct conn *c = s->conn;
    if (!(c && (s->ctlq.len || s->whead || (s->rhead && c->inflight < WRITE_HIWAT))))
        uv_prepare_stop(&s->prep);
    leave(s);
}

/* ------------------------------------------------------------- handshake */

static void established(nb_muxsess_t *s)
{
    nb_mux_hello_t mine, peer;
    (void)nb_mux_parse_hello(nb_iov(s->hello_mine, NB_MUX_HELLO_LEN), &mine);
    (void)nb_mux_parse_hello(nb_iov(s->hello_peer, NB_MUX_HELLO_LEN), &peer);
    s->features = mine.features & peer.features;
    s->state = S_UP;
    nb_mux_dec_allow(&s->dec, NB_MUX_MASK_SESSION);
    s->next_local_id = s->o.role == NB_MUX_ROLE_HOST ? 1 : 2;
    s->last_peer_id = 0;
    s->last_ping = s->last_rx = s->t_tokens = now_ms(s);
    s->tokens = (uint64_t)s->o.open_burst * 1000;
    s->stats.sessions++;
    s->stats.opens_in = s->stats.opens_refused = 0;
    nb_log_conn(NB_LOG_INFO, s->conn_id, "nbmux session up (%s side)",
                s->o.role == NB_MUX_ROLE_HOST ? "host" : "guest");
    if (s->o.on_up)
        s->o.on_up(s, s->o.ud);
}

static void hs_hello(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    nb_mux_hello_t h;
    (void)nb_mux_parse_hello(ev->payload, &h);
    if (h.version != NB_MUX_VERSION) {
        proto_error(s, NB_MUX_E_VERSION, "peer speaks nbmux version %u, this side speaks %u",
                    h.version, NB_MUX_VERSION);
        return;
    }
    uint8_t want = s->o.role == NB_MUX_ROLE_HOST ? NB_MUX_ROLE_GUEST : NB_MUX_ROLE_HOST;
    if (h.role != want) {
        proto_error(s, NB_MUX_E_AUTH, "peer HELLO claims role %u, expected %u (reflected?)", h.role,
                    want);
        return;
    }
    memcpy(s->hello_peer, ev->payload.p, NB_MUX_HELLO_LEN);
    if (s->o.role == NB_MUX_ROLE_GUEST) {
        uint8_t nonce[NB_MUX_NONCE_LEN], mac[NB_MUX_AUTH_LEN];
        randombytes_buf(nonce, sizeof nonce);
        nb_mux_put_hello(s->hello_mine, NB_MUX_ROLE_GUEST, 0, nonce);
        nb_mux_auth_mac(mac, s->key, NB_MUX_ROLE_GUEST, s->hello_peer, s->hello_mine);
        int r = nb_mux_enc_frame(&s->ctlq, NB_MUX_HELLO, 0, 0, s->hello_mine, NB_MUX_HELLO_LEN);
        if (r == 0)
            r = nb_mux_enc_frame(&s->ctlq, NB_MUX_AUTH, 0, 0, mac, sizeof mac);
        sodium_memzero(mac, sizeof mac);
        if (ctl_frame_result(s, r) < 0)
            return;
    }
    s->state = S_HS_AUTH;
    nb_mux_dec_allow(&s->dec, NB_MUX_T(NB_MUX_AUTH) | NB_MUX_T(NB_MUX_GOAWAY));
}

static void hs_auth(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    int host = s->o.role == NB_MUX_ROLE_HOST;
    const uint8_t *hh = host ? s->hello_mine : s->hello_peer;
    const uint8_t *hg = host ? s->hello_peer : s->hello_mine;
    uint8_t prover = host ? NB_MUX_ROLE_GUEST : NB_MUX_ROLE_HOST;
    if (nb_mux_auth_verify(ev->payload.p, s->key, prover, hh, hg) < 0) {
        proto_error(s, NB_MUX_E_AUTH, "authentication failed: the peer does not know the key");
        return;
    }
    if (host) {
        uint8_t mac[NB_MUX_AUTH_LEN];
        nb_mux_auth_mac(mac, s->key, NB_MUX_ROLE_HOST, hh, hg);
        int r = nb_mux_enc_frame(&s->ctlq, NB_MUX_AUTH, 0, 0, mac, sizeof mac);
        sodium_memzero(mac, sizeof mac);
        if (ctl_frame_result(s, r) < 0)
            return;
    }
    established(s);
}

/* --------------------------------------------------------------- frames */

/* Live stream for a non-OPEN frame, or NULL. *ignore is set when the id
 * belongs to a stream that existed earlier (frames can cross an RST). */
static nb_muxsess_stream_t *find_stream(nb_muxsess_t *s, const nb_mux_hdr_t *h, int *ignore)
{
    *ignore = 0;
    nb_muxsess_stream_t *st = hash_get(s, h->sid);
    if (st)
        return st;
    int mine_odd = s->o.role == NB_MUX_ROLE_HOST;
    int id_odd = h->sid & 1;
    if (id_odd == mine_odd ? h->sid < s->next_local_id : h->sid <= s->last_peer_id) {
        *ignore = 1;
        return NULL;
    }
    proto_error(s, NB_MUX_E_PROTOCOL, "%s for stream %u that was never opened",
                nb_mux_type_name(h->type), h->sid);
    return NULL;
}

static void esc_msg(char *out, size_t outsz, nb_iov_t msg)
{
    nb_log_escape(out, outsz, msg.p, msg.len);
}

static void reject_open(nb_muxsess_t *s, uint32_t sid, uint32_t code, const char *msg)
{
    s->stats.opens_refused++;
    ctl_frame_result(s, nb_mux_enc_code(&s->ctlq, NB_MUX_OPEN_ERR, sid, code, msg));
}

static void on_open_frame(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    uint32_t sid = ev->hdr.sid;
    int peer_odd = s->o.role == NB_MUX_ROLE_GUEST;
    if ((int)(sid & 1) != peer_odd) {
        proto_error(s, NB_MUX_E_PROTOCOL, "OPEN with stream id %u of the wrong parity", sid);
        return;
    }
    if (sid <= s->last_peer_id) {
        proto_error(s, NB_MUX_E_PROTOCOL, "stream id reuse: OPEN %u after %u", sid,
                    s->last_peer_id);
        return;
    }
    s->last_peer_id = sid;
    s->stats.opens_in++;

    uint64_t now = now_ms(s), cap = (uint64_t)s->o.open_burst * 1000;
    s->tokens += (now - s->t_tokens) * s->o.open_rate;
    if (s->tokens > cap)
        s->tokens = cap;
    s->t_tokens = now;
    if (s->tokens < 1000) {
        proto_error(s, NB_MUX_E_FLOOD, "OPEN flood: more than %u OPENs per second (burst %u)",
                    s->o.open_rate, s->o.open_burst);
        return;
    }
    s->tokens -= 1000;

    nb_iov_t svc, args;
    (void)nb_mux_parse_open(ev->payload, &svc, &args);
    if (s->nstreams >= s->o.max_streams) {
        reject_open(s, sid, NB_MUX_E_LIMIT, "too many open streams");
        return;
    }
    if (!s->o.on_open) {
        reject_open(s, sid, NB_MUX_E_NO_SERVICE, "no such service");
        return;
    }
    nb_muxsess_stream_t *st = stream_new(s, sid, 0, ST_PENDING);
    if (!st) {
        reject_open(s, sid, NB_MUX_E_BUSY, "out of memory");
        return;
    }
    char name[NB_MUX_SERVICE_MAX + 1];
    memcpy(name, svc.p, svc.len);
    name[svc.len] = 0;
    int r = s->o.on_open(s, st, name, args, s->o.ud);
    if (r < 0 && st->state == ST_PENDING)
        nb_muxsess_stream_reject(st, nb_mux_err_to_code(r), nb_strerror(r));
}

static void on_data_piece(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    nb_muxsess_stream_t *st;
    int ignore;
    if (ev->offset == 0) {
        st = find_stream(s, &ev->hdr, &ignore);
        s->cur_ignore = st == NULL;
        if (!st)
            return;
        if (st->state != ST_OPEN) {
            proto_error(s, NB_MUX_E_PROTOCOL, "DATA on stream %u before it was accepted", st->id);
            return;
        }
        if (st->fin_recv) {
            proto_error(s, NB_MUX_E_PROTOCOL, "DATA on stream %u after FIN", st->id);
            return;
        }
        if (ev->hdr.len > st->recv_credit) {
            proto_error(s, NB_MUX_E_FLOW, "DATA of %u bytes on stream %u exceeds its credit (%u)",
                        ev->hdr.len, st->id, st->recv_credit);
            return;
        }
        st->recv_credit -= ev->hdr.len;
    } else {
        if (s->cur_ignore)
            return;
        st = hash_get(s, ev->hdr.sid);
        if (!st) { /* reset by the application between pieces */
            s->cur_ignore = 1;
            return;
        }
    }
    size_t n = ev->payload.len;
    st->unconsumed += n;
    s->unconsumed += n;
    if (st->cbs && st->cbs->on_data)
        st->cbs->on_data(st, ev->hdr.flags, ev->payload, st->ud);
    if (st->state != ST_DEAD && (!st->cbs || !st->cbs->on_data || st->cbs->auto_consume))
        nb_muxsess_stream_consume(st, n);
}

static void handle(nb_muxsess_t *s, const nb_mux_ev_t *ev)
{
    const nb_mux_hdr_t *h = &ev->hdr;
    nb_muxsess_stream_t *st;
    int ignore;
    char msg[NB_MUX_MSG_MAX * 4 + 8];
    uint32_t code;
    nb_iov_t m;

    if (h->type == NB_MUX_GOAWAY) { /* accepted in every state: it carries the reason */
        (void)nb_mux_parse_code(ev->payload, &code, &m);
        esc_msg(msg, sizeof msg, m);
        teardown(s, code == NB_MUX_E_NONE ? NB_ECLOSED : nb_mux_code_to_err(code), code, 0,
                 "peer sent GOAWAY %s: %s", nb_mux_code_name(code), msg);
        return;
    }
    switch (s->state) {
    case S_HS_HELLO:
        hs_hello(s, ev);
        return;
    case S_HS_AUTH:
        hs_auth(s, ev);
        return;
    case S_UP:
        break;
    default:
        return;
    }
    switch (h->type) {
    case NB_MUX_OPEN:
        on_open_frame(s, ev);
        return;
    case NB_MUX_DATA:
        on_data_piece(s, ev);
        return;
    case NB_MUX_PING:
        ctl_frame_result(
            s, nb_mux_enc_frame(&s->ctlq, NB_MUX_PONG, 0, 0, ev->payload.p, ev->payload.len));
        return;
    case NB_MUX_PONG:
        return; /* any frame proves liveness */
    default:
        break;
    }
    if (!(st = find_stream(s, h, &ignore)))
        return;
    switch (h->type) {
    case NB_MUX_OPEN_OK:
        if (!st->local || st->state != ST_OPENING) {
            proto_error(s, NB_MUX_E_PROTOCOL, "unexpected OPEN_OK on stream %u", st->id);
            return;
        }
        st->state = ST_OPEN;
        st->send_credit = NB_MUX_INITIAL_WINDOW;
        if (st->cbs && st->cbs->on_open_ok)
            st->cbs->on_open_ok(st, st->ud);
        if (st->state != ST_DEAD)
            update_ready(st);
        return;
    case NB_MUX_OPEN_ERR:
        if (!st->local || st->state != ST_OPENING) {
            proto_error(s, NB_MUX_E_PROTOCOL, "unexpected OPEN_ERR on stream %u", st->id);
            return;
        }
        (void)nb_mux_parse_code(ev->payload, &code, &m);
        esc_msg(msg, sizeof msg, m);
        stream_finish(st, nb_mux_code_to_err(code), code, msg, 1);
        return;
    case NB_MUX_WINDOW: {
        if (st->state != ST_OPEN) {
            proto_error(s, NB_MUX_E_PROTOCOL, "WINDOW on stream %u before it was accepted", st->id);
            return;
        }
        uint32_t inc = nb_mux_parse_u32(ev->payload);
        if ((uint64_t)st->send_credit + inc > NB_MUX_MAX_CREDIT) {
            proto_error(s, NB_MUX_E_FLOW, "WINDOW on stream %u raises its credit above %u", st->id,
                        NB_MUX_MAX_CREDIT);
            return;
        }
        st->send_credit += inc;
        update_ready(st);
        return;
    }
    case NB_MUX_FIN:
        if (st->state != ST_OPEN || st->fin_recv) {
            proto_error(s, NB_MUX_E_PROTOCOL, "unexpected FIN on stream %u", st->id);
            return;
        }
        st->fin_recv = 1;
        wlist_del(s, st);
        if (st->cbs && st->cbs->on_fin)
            st->cbs->on_fin(st, st->ud);
        if (st->state != ST_DEAD && st->fin_sent)
            stream_finish(st, 0, NB_MUX_E_NONE, "", 1);
        return;
    case NB_MUX_RST:
        (void)nb_mux_parse_code(ev->payload, &code, &m);
        esc_msg(msg, sizeof msg, m);
        stream_finish(st, code == NB_MUX_E_NONE ? -ECANCELED : nb_mux_code_to_err(code), code,
                      msg[0] ? msg : "reset by the peer", 1);
        return;
    default:
        proto_error(s, NB_MUX_E_PROTOCOL, "unexpected %s frame", nb_mux_type_name(h->type));
        return;
    }
}

static void process(nb_muxsess_t *s, struct conn *c, const uint8_t *p, size_t n)
{
    nb_iov_t in = nb_iov(p, n);
    nb_mux_ev_t ev;
    while (s->conn == c) {
        int r = nb_mux_dec_next(&s->dec, &in, &ev);
        if (r == 0)
            break;
        if (r < 0) {
            uint32_t code = s->dec.err_code ? s->dec.err_code : NB_MUX_E_PROTOCOL;
            if (s->state != S_UP)
                proto_error(s, code, "garbage or unexpected frame before authentication: %s",
                            nb_mux_dec_error(&s->dec));
            else
                proto_error(s, code, "malformed frame: %s", nb_mux_dec_error(&s->dec));
            break;
        }
        handle(s, &ev);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct conn *c = h->data;
    nb_muxsess_t *s = c->s;
    (void)suggested;
    if (!s->rbuf)
        s->rbuf = malloc(RBUF_SIZE);
    *b = uv_buf_init((char *)s->rbuf, s->rbuf ? RBUF_SIZE : 0);
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = h->data;
    nb_muxsess_t *s = c->s;
    if (c != s->conn)
        return;
    enter(s);
    if (n < 0) {
        const char *when = s->state == S_UP ? "" : " during the handshake";
        if (n == UV_EOF)
            teardown(s, NB_ECLOSED, NB_MUX_E_SHUTDOWN, 0, "the peer closed the connection%s", when);
        else
            teardown(s, (int)n, NB_MUX_E_SHUTDOWN, 0, "read error%s: %s", when,
                     uv_strerror((int)n));
    } else if (n > 0) {
        s->last_rx = now_ms(s);
        s->stats.bytes_in += (uint64_t)n;
        process(s, c, (const uint8_t *)b->base, (size_t)n);
        if (s->conn == c) {
            flush(s);
            update_read(s);
        }
    }
    leave(s);
}

static void on_tick(uv_timer_t *t)
{
    nb_muxsess_t *s = t->data;
    enter(s);
    struct conn *c = s->conn;
    uint64_t now = now_ms(s);
    if (c && s->state != S_UP) {
        if (now - s->t_attach >= s->o.handshake_ms)
            proto_error(s, NB_MUX_E_TIMEOUT, "handshake not completed within %u ms",
                        s->o.handshake_ms);
    } else if (c) {
        if (!c->reading && s->paused_local)
            s->last_rx = now;
        if (now - s->last_rx >= s->o.idle_ms) {
            proto_error(s, NB_MUX_E_TIMEOUT, "nothing received from the peer for %u ms",
                        s->o.idle_ms);
        } else if (now - s->last_ping >= s->o.ping_ms) {
            uint8_t p[NB_MUX_PING_LEN];
            uint64_t v = ++s->ping_seq;
            for (int i = 0; i < NB_MUX_PING_LEN; i++)
                p[i] = (uint8_t)(v >> (56 - 8 * i));
            s->last_ping = now;
            ctl_frame_result(s, nb_mux_enc_frame(&s->ctlq, NB_MUX_PING, 0, 0, p, sizeof p));
        }
    }
    leave(s);
}

/* ------------------------------------------------------------------ API */

static void on_sess_handle_closed(uv_handle_t *h)
{
    nb_muxsess_t *s = h->data;
    s->nhandles--;
    if (s->depth == 0)
        maybe_free(s);
}

int nb_muxsess_new(uv_loop_t *loop, const nb_muxsess_opts_t *o, const uint8_t *key,
                   nb_muxsess_t **out)
{
    *out = NULL;
    if (!o || !key || (o->role != NB_MUX_ROLE_HOST && o->role != NB_MUX_ROLE_GUEST) ||
        !o->max_streams || !o->stream_send_max || !o->send_budget || !o->open_rate ||
        !o->open_burst || !o->handshake_ms || !o->ping_ms || !o->idle_ms)
        return NB_EINVAL;
    if (sodium_init() < 0)
        return NB_ECRYPTO;
    nb_muxsess_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->o = *o;
    if (!(s->key = sodium_malloc(NB_MUX_KEY_LEN))) {
        free(s);
        return -ENOMEM;
    }
    memcpy(s->key, key, NB_MUX_KEY_LEN);
    nb_mux_dec_init(&s->dec);
    nb_buf_init(&s->ctlq, o->ctl_queue_max + CTLQ_SLACK);
    uint64_t m = o->handshake_ms;
    if (o->ping_ms < m)
        m = o->ping_ms;
    if (o->idle_ms < m)
        m = o->idle_ms;
    m /= 4;
    s->tick_ms = m < 5 ? 5 : m > 1000 ? 1000 : m;
    uv_timer_init(loop, &s->tick);
    uv_prepare_init(loop, &s->prep);
    s->tick.data = s->prep.data = s;
    s->nhandles = 2;
    *out = s;
    return 0;
}

int nb_muxsess_attach_fd(nb_muxsess_t *s, int fd)
{
    int r;
    if (s->freed || s->conn) {
        close(fd);
        return NB_ESTATE;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->s = s;
    uv_pipe_init(s->loop, &c->pipe, 0);
    uv_timer_init(s->loop, &c->linger);
    c->pipe.data = c->linger.data = c;
    c->nhandles = 2;
    s->nconns++;
    /* Larger socket buffers mean fewer wakeups per byte on a busy channel
     * (best effort: the kernel caps them at wmem_max; a character device
     * is not a socket and just says so). */
    int sz = SOCK_BUF;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    if ((r = uv_pipe_open(&c->pipe, fd)) < 0) {
        close(fd);
        conn_close(c);
        return r;
    }
    s->conn = c;
    s->conn_id = nb_log_next_conn_id();
    s->state = S_HS_HELLO;
    nb_mux_dec_allow(&s->dec, NB_MUX_T(NB_MUX_HELLO) | NB_MUX_T(NB_MUX_GOAWAY));
    s->t_attach = s->last_rx = now_ms(s);
    if (s->o.role == NB_MUX_ROLE_HOST) {
        uint8_t nonce[NB_MUX_NONCE_LEN];
        randombytes_buf(nonce, sizeof nonce);
        nb_mux_put_hello(s->hello_mine, NB_MUX_ROLE_HOST, 0, nonce);
        if ((r = nb_mux_enc_frame(&s->ctlq, NB_MUX_HELLO, 0, 0, s->hello_mine, NB_MUX_HELLO_LEN)) <
            0) {
            enter(s);
            teardown(s, r, NB_MUX_E_INTERNAL, 0, "cannot queue HELLO");
            leave(s);
            return r;
        }
    }
    if ((r = uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read)) < 0) {
        enter(s);
        teardown(s, r, NB_MUX_E_INTERNAL, 0, "cannot read the transport: %s", uv_strerror(r));
        leave(s);
        return r;
    }
    c->reading = 1;
    uv_timer_start(&s->tick, on_tick, s->tick_ms, s->tick_ms);
    schedule_flush(s);
    return 0;
}

void nb_muxsess_close(nb_muxsess_t *s, uint32_t code, const char *msg)
{
    if (!s || !s->conn)
        return;
    /* No leave(): on_down is delivered by on_prep (scheduled by teardown),
     * never from inside this call. */
    s->depth++;
    teardown(s, code == NB_MUX_E_NONE ? NB_ECLOSED : nb_mux_code_to_err(code), code, 1, "%s",
             msg ? msg : "closed locally");
    s->depth--;
}

void nb_muxsess_free(nb_muxsess_t *s)
{
    if (!s || s->freed)
        return;
    enter(s);
    teardown(s, NB_ECLOSED, NB_MUX_E_SHUTDOWN, 1, "session closed");
    s->freed = 1;
    s->down_pending = 0;
    uv_close((uv_handle_t *)&s->tick, on_sess_handle_closed);
    uv_close((uv_handle_t *)&s->prep, on_sess_handle_closed);
    leave(s);
}

int nb_muxsess_is_up(const nb_muxsess_t *s)
{
    return s && s->conn && s->state == S_UP;
}

void nb_muxsess_stats(const nb_muxsess_t *s, nb_muxsess_stats_t *out)
{
    *out = s->stats;
    out->streams = s->nstreams;
    out->unconsumed = s->unconsumed;
    out->queued = s->queued;
    out->ctl_queued = s->ctlq.len;
    out->inflight = s->conn ? s->conn->inflight : 0;
}

int nb_muxsess_open(nb_muxsess_t *s, const char *service, nb_iov_t args,
                    const nb_muxsess_stream_cbs_t *cbs, void *ud, nb_muxsess_stream_t **out)
{
    *out = NULL;
    if (!nb_muxsess_is_up(s))
        return NB_ESTATE;
    size_t n = strlen(service);
    if (!nb_mux_service_valid(service, n))
        return NB_EINVAL;
    if (args.len > NB_MUX_MAX_PAYLOAD - 1 - n)
        return NB_ETOOBIG;
    if (s->nstreams >= s->o.max_streams)
        return -EBUSY;
    if (s->next_local_id > UINT32_MAX - 2)
        return NB_ESTATE;
    nb_muxsess_stream_t *st = stream_new(s, s->next_local_id, 1, ST_OPENING);
    if (!st)
        return -ENOMEM;
    int r = nb_mux_enc_open(&s->ctlq, st->id, service, args);
    if (r < 0) {
        stream_finish(st, r, NB_MUX_E_INTERNAL, NULL, 0);
        return r;
    }
    s->next_local_id += 2;
    st->cbs = cbs;
    st->ud = ud;
    schedule_flush(s);
    *out = st;
    return 0;
}

void nb_muxsess_stream_set_cbs(nb_muxsess_stream_t *st, const nb_muxsess_stream_cbs_t *cbs,
                               void *ud)
{
    st->cbs = cbs;
    st->ud = ud;
}

int nb_muxsess_stream_accept(nb_muxsess_stream_t *st)
{
    nb_muxsess_t *s = st->s;
    if (st->state != ST_PENDING || !s->conn)
        return NB_ESTATE;
    int r = nb_mux_enc_frame(&s->ctlq, NB_MUX_OPEN_OK, 0, st->id, NULL, 0);
    if (r < 0)
        return ctl_frame_result(s, r);
    st->state = ST_OPEN;
    st->send_credit = NB_MUX_INITIAL_WINDOW;
    update_ready(st);
    schedule_flush(s);
    return 0;
}

void nb_muxsess_stream_reject(nb_muxsess_stream_t *st, uint32_t code, const char *msg)
{
    nb_muxsess_t *s = st->s;
    if (st->state != ST_PENDING) {
        nb_muxsess_stream_reset(st, code, msg);
        return;
    }
    if (s->conn) {
        s->stats.opens_refused++;
        ctl_frame_result(s, nb_mux_enc_code(&s->ctlq, NB_MUX_OPEN_ERR, st->id, code, msg));
    }
    stream_finish(st, 0, code, NULL, 0);
}

void nb_muxsess_stream_reset(nb_muxsess_stream_t *st, uint32_t code, const char *msg)
{
    nb_muxsess_t *s = st->s;
    if (st->state == ST_DEAD)
        return;
    if (st->state == ST_PENDING) {
        nb_muxsess_stream_reject(st, code, msg);
        return;
    }
    if (s->conn)
        ctl_frame_result(s, nb_mux_enc_code(&s->ctlq, NB_MUX_RST, st->id, code, msg));
    stream_finish(st, 0, code, NULL, 0);
}

static int queue_chunk(nb_muxsess_stream_t *st, struct chunk *c)
{
    nb_muxsess_t *s = st->s;
    c->next = NULL;
    if (st->qtail)
        st->qtail->next = c;
    else
        st->qhead = c;
    st->qtail = c;
    st->queued += c->len;
    s->queued += c->len;
    note_pressure(st);
    update_ready(st);
    return 0;
}

static int write_check(const nb_muxsess_stream_t *st, unsigned chan, size_t n)
{
    if (st->state == ST_DEAD || st->state == ST_PENDING || st->fin_queued || !st->s->conn)
        return NB_ESTATE;
    if (chan > NB_MUX_CHAN_CTL)
        return NB_EINVAL;
    if (chan == NB_MUX_CHAN_CTL && n > NB_MUX_CTL_MAX)
        return NB_ETOOBIG;
    if (n > st->s->o.stream_send_max - st->queued)
        return NB_ETOOBIG;
    return 0;
}

int nb_muxsess_stream_write(nb_muxsess_stream_t *st, unsigned chan, const void *p, size_t n)
{
    nb_muxsess_t *s = st->s;
    const uint8_t *src = p;
    int r;
    if ((r = write_check(st, chan, n)) < 0)
        return r;
    while (n) {
        struct chunk *t = st->qtail;
        if (chan != NB_MUX_CHAN_CTL && t && t->s && t->chan == chan && t->cap > t->len) {
            /* Fill the tail; bytes already framed stay where they are. */
            size_t k = t->cap - t->len < n ? t->cap - t->len : n;
            memcpy(t->p + t->len, src, k);
            t->len += k;
            st->queued += k;
            s->queued += k;
            src += k;
            n -= k;
            continue;
        }
        /* A CTL message is one chunk of its own (<= 4096 bytes). */
        size_t cap = chan == NB_MUX_CHAN_CTL || n < CHUNK_SMALL ? CHUNK_SMALL : CHUNK_BIG;
        struct chunk *c = chunk_get(s, cap);
        if (!c)
            return -ENOMEM; /* what was copied so far stays queued */
        size_t k = n < cap ? n : cap;
        memcpy(c->p, src, k);
        c->len = k;
        c->chan = (uint8_t)chan;
        c->next = NULL;
        if (st->qtail)
            st->qtail->next = c;
        else
            st->qhead = c;
        st->qtail = c;
        st->queued += k;
        s->queued += k;
        src += k;
        n -= k;
    }
    note_pressure(st);
    update_ready(st);
    return 0;
}

int nb_muxsess_stream_write_owned(nb_muxsess_stream_t *st, unsigned chan, void *p, size_t n,
                                  void (*free_fn)(void *))
{
    int r;
    if ((r = write_check(st, chan, n)) < 0 || n == 0) {
        if (free_fn)
            free_fn(p);
        return r;
    }
    struct chunk *c = calloc(1, sizeof *c);
    if (!c) {
        if (free_fn)
            free_fn(p);
        return -ENOMEM;
    }
    c->p = p;
    c->len = n;
    c->chan = (uint8_t)chan;
    c->refs = 1;
    c->free_fn = free_fn;
    return queue_chunk(st, c);
}

int nb_muxsess_stream_writable(const nb_muxsess_stream_t *st)
{
    return writable(st);
}

size_t nb_muxsess_stream_queued(const nb_muxsess_stream_t *st)
{
    return st->queued;
}

int nb_muxsess_stream_fin(nb_muxsess_stream_t *st)
{
    if (st->state == ST_DEAD || st->state == ST_PENDING)
        return NB_ESTATE;
    if (st->fin_queued)
        return 0;
    st->fin_queued = 1;
    update_ready(st);
    return 0;
}

void nb_muxsess_stream_consume(nb_muxsess_stream_t *st, size_t n)
{
    nb_muxsess_t *s = st->s;
    if (st->state == ST_DEAD)
        return;
    if (n > st->unconsumed)
        n = st->unconsumed;
    st->unconsumed -= n;
    s->unconsumed -= n;
    if (!st->fin_recv) {
        st->consumed_pending += (uint32_t)n;
        if (st->consumed_pending >= st->window / 4) {
            wlist_add(s, st);
            schedule_flush(s);
        }
    }
    if (s->conn && !s->conn->reading)
        schedule_flush(s); /* on_prep re-checks the read budget */
}

uint32_t nb_muxsess_stream_id(const nb_muxsess_stream_t *st)
{
    return st->id;
}

void *nb_muxsess_stream_ud(const nb_muxsess_stream_t *st)
{
    return st->ud;
}

nb_muxsess_t *nb_muxsess_stream_session(const nb_muxsess_stream_t *st)
{
    return st->s;
}
