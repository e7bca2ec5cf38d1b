/* Byte streams: the libuv and nbmux backends and the splice (stream.h). */
#include "lib/stream.h"

#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/err.h"
#include "lib/stream_int.h"

#define READ_BLOCK (64u * 1024u)
#define WQ_IOV 16        /* queued blocks one batched send takes */
#define GATHER_ROUNDS 64 /* loop iterations gathered bytes may wait for more */

static void block_free(const nb_stream_t *s, void *p, size_t n);

/* ---- the interface ---- */

void nb_stream_set_cbs(nb_stream_t *s, nb_stream_read_cb on_read, nb_stream_drain_cb on_drain,
                       nb_stream_close_cb on_close, void *ud)
{
    s->on_read = on_read;
    s->on_drain = on_drain;
    s->on_close = on_close;
    s->ud = ud;
}

void *nb_stream_ud(const nb_stream_t *s)
{
    return s->ud;
}

void nb_stream_set_marks(nb_stream_t *s, size_t hiwat, size_t lowat)
{
    if (hiwat)
        s->hiwat = hiwat;
    if (lowat)
        s->lowat = lowat;
    if (s->lowat > s->hiwat)
        s->lowat = s->hiwat;
}

int nb_stream_read_start(nb_stream_t *s)
{
    if (s->closing)
        return NB_ESTATE;
    if (s->reading)
        return 0;
    return s->ops->read_start(s);
}

void nb_stream_read_stop(nb_stream_t *s)
{
    if (s->reading)
        s->ops->read_stop(s);
}

int nb_stream_write(nb_stream_t *s, uint8_t *p, size_t n, nb_stream_write_cb cb, void *ud)
{
    if (s->closing || s->shut) {
        block_free(s, p, n);
        return NB_ESTATE;
    }
    int r = s->ops->write(s, p, n, cb, ud);
    if (r == 0 && !s->ops->writable(s))
        s->want_drain = 1;
    return r;
}

int nb_stream_writable(const nb_stream_t *s)
{
    return s->ops->writable(s);
}

size_t nb_stream_queued(const nb_stream_t *s)
{
    return s->ops->queued(s);
}

int nb_stream_shutdown(nb_stream_t *s, nb_stream_write_cb cb, void *ud)
{
    if (s->closing || s->shut)
        return NB_ESTATE;
    s->shut = 1;
    return s->ops->shutdown(s, cb, ud);
}

void nb_stream_close(nb_stream_t *s, int reset)
{
    if (!s || s->closing)
        return;
    nb_stream_read_stop(s);
    s->closing = 1;
    s->ops->close(s, reset);
}

/* Frees a block the stream owns, wiped first if the stream says so. */
static void block_free(const nb_stream_t *s, void *p, size_t n)
{
    if (p && s->wipe)
        sodium_memzero(p, n);
    free(p);
}

/* free_fn for blocks an nbmux session releases (it knows no length). */
static void wiped_free(void *p)
{
    if (p)
        sodium_memzero(p, malloc_usable_size(p));
    free(p);
}

void nb_stream_set_wipe(nb_stream_t *s, int on)
{
    s->wipe = on;
}

static void stream_init(nb_stream_t *s, const nb_stream_ops_t *ops, uv_loop_t *loop)
{
    s->ops = ops;
    s->loop = loop;
    s->hiwat = NB_STREAM_HIWAT;
    s->lowat = NB_STREAM_LOWAT;
}

/* Fires on_drain if a writer waits for it (the nbmux backend has its own
 * low-water mark and calls this with `any`). */
static void maybe_drain(nb_stream_t *s, int any)
{
    if (s->want_drain && !s->closing && s->ops->writable(s) &&
        (any || s->ops->queued(s) <= s->lowat)) {
        s->want_drain = 0;
        if (s->on_drain)
            s->on_drain(s, s->ud);
    }
}

/* ---- libuv TCP / pipe backend ---- */

nb_wbatch_t *nb_wbatch_list;

/* A write waiting in a batched stream's queue (stream_uring.c sends it). */
typedef struct wqe {
    struct wqe *next;
    uint8_t *p;
    size_t len, off; /* p + off: what is left to send */
    nb_stream_write_cb cb;
    void *ud;
} wqe_t;

typedef struct {
    nb_stream_t base;
    union {
        uv_handle_t h;
        uv_stream_t s;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } u;
    int is_tcp;
    int shutting;  /* shutdown requested, callback not yet run */
    size_t queued; /* bytes in uv_write requests and in wq */
    uv_shutdown_t shut;
    nb_stream_write_cb shut_cb;
    void *shut_ud;
    /* Batched writes (the loop's batcher, stream_int.h). A stream writes
     * either through uv_write or through its queue, never both at once:
     * whichever path holds bytes takes the next write, so order holds. */
    nb_wbatch_t *wb;   /* NULL: the loop does not batch */
    nb_wbatch_op_t op; /* our slot in the batcher */
    int fdkind;        /* 0 not known yet, 1 a socket (batched), -1 not batched */
    unsigned uvreqs;   /* uv_write requests outstanding */
    wqe_t *wq, **wq_tail;
    int werr;        /* a batched send failed: later writes fail with it */
    int shut_wait;   /* shutdown waits for wq to drain */
    int in_done;     /* completions being handed out */
    int close_wait;  /* close waits for the op in flight */
    int close_reset; /* ... and then resets */
    struct iovec iov[WQ_IOV];
} uvs_t;

typedef struct {
    uv_write_t req;
    uvs_t *u;
    uint8_t *p;
    size_t off, n; /* p + off: the n bytes left after a partial try-write */
    nb_stream_write_cb cb;
    void *ud;
} uvw_t;

static void uvs_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    char *p = malloc(READ_BLOCK);
    *b = uv_buf_init(p, p ? READ_BLOCK : 0);
}

static void uvs_on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    uvs_t *u = h->data;
    nb_stream_t *s = &u->base;
    if (n > 0) {
        if (s->on_read)
            s->on_read(s, n, (uint8_t *)b->base, s->ud);
        else
            free(b->base);
        return;
    }
    free(b->base);
    if (n == 0)
        return;
    uv_read_stop(h);
    s->reading = 0;
    if (s->on_read)
        s->on_read(s, n, NULL, s->ud);
}

static int uvs_read_start(nb_stream_t *s)
{
    uvs_t *u = (uvs_t *)s;
    int r = uv_read_start(&u->u.s, uvs_alloc, uvs_on_read);
    if (r == 0)
        s->reading = 1;
    return r;
}

static void uvs_read_stop(nb_stream_t *s)
{
    uvs_t *u = (uvs_t *)s;
    uv_read_stop(&u->u.s);
    s->reading = 0;
}

static void uvs_on_written(uv_write_t *req, int status)
{
    uvw_t *w = (uvw_t *)req;
    uvs_t *u = w->u;
    u->queued -= w->n;
    u->uvreqs--;
    block_free(&u->base, w->p, w->n + w->off);
    if (w->cb)
        w->cb(&u->base, status, w->ud);
    free(w);
    maybe_drain(&u->base, 0);
}

/* 1 when the next write goes through the batcher: the loop batches, the
 * handle has a socket, and no uv_write request is ahead of it. */
static int uvs_batched(uvs_t *u)
{
    if (!u->wb || u->fdkind < 0)
        return 0;
    if (u->wq || u->op.state != NB_WBOP_IDLE)
        return 1;
    if (u->uvreqs)
        return 0;
    if (u->fdkind == 0) {
        uv_os_fd_t fd;
        struct stat st;
        if (uv_fileno(&u->u.h, &fd) < 0)
            return 0; /* no socket yet (not connected or accepted) */
        u->op.fd = fd;
        u->fdkind = u->is_tcp || (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) ? 1 : -1;
    }
    return u->fdkind > 0;
}

static int uvs_enqueue(uvs_t *u, uint8_t *p, size_t n, nb_stream_write_cb cb, void *ud)
{
    nb_stream_t *s = &u->base;
    if (u->werr) {
        block_free(s, p, n);
        return u->werr;
    }
    if (n == 0 && !u->wq && u->op.state == NB_WBOP_IDLE) {
        block_free(s, p, n);
        if (cb)
            cb(s, 0, ud);
        return 0;
    }
    wqe_t *e = malloc(sizeof *e);
    if (!e) {
        block_free(s, p, n);
        return -ENOMEM;
    }
    *e = (wqe_t){.p = p, .len = n, .cb = cb, .ud = ud};
    *u->wq_tail = e;
    u->wq_tail = &e->next;
    u->queued += n;
    u->wb->kick(u->wb, &u->op);
    return 0;
}

static size_t uvs_prep(nb_wbatch_op_t *op)
{
    uvs_t *u = (uvs_t *)((char *)op - offsetof(uvs_t, op));
    size_t total = 0;
    int i = 0;
    for (const wqe_t *e = u->wq; e && i < WQ_IOV; e = e->next, i++) {
        u->iov[i].iov_base = e->p + e->off;
        u->iov[i].iov_len = e->len - e->off;
        total += e->len - e->off;
    }
    memset(&op->msg, 0, sizeof op->msg);
    op->msg.msg_iov = u->iov;
    op->msg.msg_iovlen = (size_t)i;
    return total;
}

static wqe_t *wq_pop(uvs_t *u)
{
    wqe_t *e = u->wq;
    if (e && !(u->wq = e->next))
        u->wq_tail = &u->wq;
    return e;
}

/* Hands a finished queue entry back: freed (wiped if asked), then its
 * callback. */
static void wqe_finish(uvs_t *u, wqe_t *e, int status)
{
    block_free(&u->base, e->p, e->len);
    if (e->cb)
        e->cb(&u->base, status, e->ud);
    free(e);
}

static void uvs_on_shutdown(uv_shutdown_t *req, int status)
{
    uvs_t *u = req->data;
    u->shutting = 0;
    if (u->shut_cb)
        u->shut_cb(&u->base, status, u->shut_ud);
}

static int uvs_shutdown_now(uvs_t *u)
{
    u->shut.data = u;
    int r = uv_shutdown(&u->shut, &u->u.s, uvs_on_shutdown);
    if (r == 0)
        u->shutting = 1;
    return r;
}

static void uvs_close_now(uvs_t *u, int reset);
static void wq_try_send(uvs_t *u);

/* The batcher finished our send: `res` bytes went out, or it failed. */
static void uvs_done(nb_wbatch_op_t *op, int res)
{
    uvs_t *u = (uvs_t *)((char *)op - offsetof(uvs_t, op));
    nb_stream_t *s = &u->base;
    wqe_t *fin = NULL, **fin_tail = &fin;
    int status = 0;
    if (res == 0 && u->wq)
        res = UV_EPIPE; /* a stream socket never takes 0 of n > 0 bytes */
    if (res >= 0) {
        size_t left = (size_t)res;
        while (u->wq) {
            wqe_t *e = u->wq;
            size_t k = e->len - e->off < left ? e->len - e->off : left;
            e->off += k;
            left -= k;
            u->queued -= k;
            if (e->off < e->len)
                break;
            *fin_tail = wq_pop(u);
            fin_tail = &e->next;
            e->next = NULL;
        }
    } else {
        /* An error fails everything queued, in order; a cancel (close)
         * leaves the queue to the close callback. */
        status = res;
        if (!s->closing) {
            u->werr = res;
            fin = u->wq;
            for (wqe_t *e = fin; e; e = e->next)
                u->queued -= e->len - e->off;
            u->wq = NULL;
            u->wq_tail = &u->wq;
        }
    }
    u->in_done = 1;
    for (wqe_t *e = fin, *next; e; e = next) {
        next = e->next;
        wqe_finish(u, e, status);
    }
    u->in_done = 0;
    if (s->closing) {
        if (u->close_wait) {
            u->close_wait = 0;
            if (!u->close_reset && u->wq)
                wq_try_send(u);
            uvs_close_now(u, u->close_reset);
        }
        return;
    }
    if (u->wq) {
        u->wb->kick(u->wb, &u->op);
    } else if (u->shut_wait) {
        u->shut_wait = 0;
        int r = uvs_shutdown_now(u);
        if (r < 0 && u->shut_cb) {
            u->shut_cb(s, r, u->shut_ud);
            if (s->closing)
                return;
        }
    }
    maybe_drain(s, 0);
}

static int uvs_write(nb_stream_t *s, uint8_t *p, size_t n, nb_stream_write_cb cb, void *ud)
{
    uvs_t *u = (uvs_t *)s;
    if (uvs_batched(u))
        return uvs_enqueue(u, p, n, cb, ud);
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    size_t off = 0;
    if (u->queued == 0) {
        /* Most writes fit in the socket buffer: no write request. */
        int t = uv_try_write(&u->u.s, &b, 1);
        if (t < 0 && t != UV_EAGAIN) {
            block_free(s, p, n);
            return t;
        }
        off = t > 0 ? (size_t)t : 0;
        if (off == n) {
            block_free(s, p, n);
            if (cb)
                cb(s, 0, ud);
            return 0;
        }
    }
    uvw_t *w = malloc(sizeof *w);
    if (!w) {
        block_free(s, p, n);
        return -ENOMEM;
    }
    *w = (uvw_t){.u = u, .p = p, .off = off, .n = n - off, .cb = cb, .ud = ud};
    b = uv_buf_init((char *)p + off, (unsigned)(n - off));
    int r = uv_write(&w->req, &u->u.s, &b, 1, uvs_on_written);
    if (r < 0) {
        block_free(s, p, n);
        free(w);
        return r;
    }
    u->queued += n - off;
    u->uvreqs++;
    return 0;
}

static void uvs_on_closed(uv_handle_t *h)
{
    uvs_t *u = h->data;
    nb_stream_t *s = &u->base;
    /* Batched writes still queued: those the close sent in full succeeded
     * (uvs_close), the rest are cancelled. */
    wqe_t *e;
    while ((e = wq_pop(u))) {
        u->queued -= e->len - e->off;
        wqe_finish(u, e, e->off == e->len ? 0 : UV_ECANCELED);
    }
    if (u->shut_wait) {
        u->shut_wait = 0;
        if (u->shut_cb)
            u->shut_cb(s, UV_ECANCELED, u->shut_ud);
    }
    if (s->on_close)
        s->on_close(s, s->ud);
    free(u);
}

static int uvs_shutdown(nb_stream_t *s, nb_stream_write_cb cb, void *ud)
{
    uvs_t *u = (uvs_t *)s;
    u->shut_cb = cb;
    u->shut_ud = ud;
    if (u->wb && (u->wq || u->op.state != NB_WBOP_IDLE)) {
        u->shut_wait = 1; /* after the queued bytes (uvs_done) */
        return 0;
    }
    return uvs_shutdown_now(u);
}

static size_t uvs_queued(const nb_stream_t *s)
{
    return ((const uvs_t *)s)->queued;
}

static int uvs_writable(const nb_stream_t *s)
{
    return ((const uvs_t *)s)->queued <= s->hiwat;
}

static void uvs_close_now(uvs_t *u, int reset)
{
    if (reset && u->is_tcp && !u->shutting && uv_tcp_close_reset(&u->u.tcp, uvs_on_closed) == 0)
        return;
    uv_close(&u->u.h, uvs_on_closed);
}

/* A close without reset sends what the socket takes of the batched queue
 * at once, as unbatched writes would have been sent already. */
static void wq_try_send(uvs_t *u)
{
    uv_buf_t b[WQ_IOV];
    unsigned n = 0;
    for (const wqe_t *e = u->wq; e && n < WQ_IOV; e = e->next, n++)
        b[n] = uv_buf_init((char *)e->p + e->off, (unsigned)(e->len - e->off));
    int t = n ? uv_try_write(&u->u.s, b, n) : 0;
    size_t left = t > 0 ? (size_t)t : 0;
    for (wqe_t *e = u->wq; e && left; e = e->next) {
        size_t k = e->len - e->off < left ? e->len - e->off : left;
        e->off += k;
        left -= k;
        u->queued -= k;
    }
}

static void uvs_close(nb_stream_t *s, int reset)
{
    uvs_t *u = (uvs_t *)s;
    if (u->wb) {
        if (u->op.state == NB_WBOP_INFLIGHT || u->in_done) {
            /* The kernel may still read the queued blocks and holds the
             * socket: close once the send's completion came (uvs_done). */
            u->close_wait = 1;
            u->close_reset = reset;
            u->wb->cancel(u->wb, &u->op);
            return;
        }
        u->wb->cancel(u->wb, &u->op); /* out of the next flush */
        if (!reset && u->wq)
            wq_try_send(u);
    }
    uvs_close_now(u, reset);
}

static const nb_stream_ops_t uvs_ops = {
    .read_start = uvs_read_start,
    .read_stop = uvs_read_stop,
    .write = uvs_write,
    .shutdown = uvs_shutdown,
    .queued = uvs_queued,
    .writable = uvs_writable,
    .close = uvs_close,
};

/* Joins the loop's batcher, if it has one (stream_uring.c). */
static void uvs_init(uvs_t *u, uv_loop_t *loop)
{
    stream_init(&u->base, &uvs_ops, loop);
    u->u.h.data = u;
    u->wq_tail = &u->wq;
    u->op.fd = -1;
    u->op.prep = uvs_prep;
    u->op.done = uvs_done;
    for (nb_wbatch_t *b = nb_wbatch_list; b; b = b->next)
        if (b->loop == loop)
            u->wb = b;
}

int nb_stream_tcp_new(uv_loop_t *loop, nb_stream_t **out)
{
    *out = NULL;
    uvs_t *u = calloc(1, sizeof *u);
    int r = u ? uv_tcp_init(loop, &u->u.tcp) : -ENOMEM;
    if (r < 0) {
        free(u);
        return r;
    }
    uvs_init(u, loop);
    u->is_tcp = 1;
    *out = &u->base;
    return 0;
}

int nb_stream_pipe_new(uv_loop_t *loop, int fd, nb_stream_t **out)
{
    *out = NULL;
    uvs_t *u = calloc(1, sizeof *u);
    int r = u ? uv_pipe_init(loop, &u->u.pipe, 0) : -ENOMEM;
    if (r < 0) {
        if (fd >= 0)
            close(fd);
        free(u);
        return r;
    }
    uvs_init(u, loop);
    if (fd >= 0 && (r = uv_pipe_open(&u->u.pipe, fd)) < 0) {
        close(fd);
        u->base.closing = 1;
        uv_close(&u->u.h, uvs_on_closed);
        return r;
    }
    *out = &u->base;
    return 0;
}

int nb_stream_writev_copy(nb_stream_t *s, const uv_buf_t *bufs, unsigned n, nb_stream_write_cb cb,
                          void *ud)
{
    if (s->closing || s->shut)
        return NB_ESTATE;
    size_t total = 0, skip = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (s->ops == &uvs_ops && ((uvs_t *)s)->queued == 0 && !uvs_batched((uvs_t *)s)) {
        /* Most writes fit in the socket buffer: no copy. */
        int t = uv_try_write(&((uvs_t *)s)->u.s, bufs, n);
        if (t < 0 && t != UV_EAGAIN)
            return t;
        skip = t > 0 ? (size_t)t : 0;
        if (skip == total) {
            if (cb)
                cb(s, 0, ud);
            return 0;
        }
    }
    uint8_t *c = malloc(total > skip ? total - skip : 1);
    if (!c)
        return -ENOMEM;
    size_t o = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t from = skip < bufs[i].len ? skip : bufs[i].len;
        skip -= from;
        memcpy(c + o, bufs[i].base + from, bufs[i].len - from);
        o += bufs[i].len - from;
    }
    return nb_stream_write(s, c, o, cb, ud);
}

int nb_stream_write_copy(nb_stream_t *s, const void *p, size_t n, nb_stream_write_cb cb, void *ud)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    return nb_stream_writev_copy(s, &b, 1, cb, ud);
}

uv_stream_t *nb_stream_uv_handle(nb_stream_t *s)
{
    return s->ops == &uvs_ops ? &((uvs_t *)s)->u.s : NULL;
}

/* ---- nbmux backend ---- */

typedef struct {
    nb_stream_t base;
    uv_idle_t idle; /* delivers held bytes; its close callback ends the stream */
    nb_muxsess_stream_t *st;
    unsigned chan;
    nb_stream_other_cb on_other;
    /* Bytes that arrived while not reading: not consumed, so the peer's
     * window bounds them. */
    uint8_t *held;
    size_t held_len, held_cap;
    int fin;       /* peer FIN seen, not yet delivered */
    int err;       /* error seen, not yet delivered */
    int delivered; /* EOF or error delivered */
    int wait_close;
    size_t gather_max; /* nb_stream_mux_gather */
    size_t gathered;   /* bytes held since the last idle round */
    unsigned rounds;   /* idle rounds since the first held byte */
} muxs_t;

static void muxs_final(uv_handle_t *h)
{
    muxs_t *m = h->data;
    if (m->base.on_close)
        m->base.on_close(&m->base, m->base.ud);
    free(m->held);
    free(m);
}

/* Delivers what is held, then a pending FIN or error, while reading. */
static void muxs_deliver(muxs_t *m)
{
    nb_stream_t *s = &m->base;
    if (m->held_len && s->reading) {
        uint8_t *p = m->held;
        size_t n = m->held_len;
        m->held = NULL;
        m->held_len = m->held_cap = 0;
        if (m->st)
            nb_muxsess_stream_consume(m->st, n);
        if (s->on_read)
            s->on_read(s, (ssize_t)n, p, s->ud);
        else
            free(p);
    }
    if (!s->reading || m->held_len || m->delivered || s->closing || (!m->fin && !m->err))
        return;
    m->delivered = 1;
    s->reading = 0;
    uv_idle_stop(&m->idle);
    if (s->on_read)
        s->on_read(s, m->err ? m->err : UV_EOF, NULL, s->ud);
}

static void muxs_on_idle(uv_idle_t *h)
{
    muxs_t *m = h->data;
    if (m->gather_max && m->held_len && m->gathered && ++m->rounds < GATHER_ROUNDS && !m->fin &&
        !m->err) {
        m->gathered = 0; /* more came this round: wait for a quiet one */
        return;
    }
    m->gathered = 0;
    m->rounds = 0;
    uv_idle_stop(h);
    muxs_deliver(m);
}

static void muxs_on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    muxs_t *m = ud;
    nb_stream_t *s = &m->base;
    if (chan != m->chan || s->closing) {
        nb_muxsess_stream_consume(st, d.len);
        if (chan != m->chan && m->on_other && !s->closing)
            m->on_other(s, chan, d, s->ud);
        return;
    }
    if (s->reading && !m->held_len && !m->gather_max) {
        uint8_t *p = malloc(d.len ? d.len : 1);
        if (p) {
            memcpy(p, d.p, d.len);
            nb_muxsess_stream_consume(st, d.len);
            if (s->on_read)
                s->on_read(s, (ssize_t)d.len, p, s->ud);
            else
                free(p);
            return;
        }
    }
    if (m->held_len + d.len > m->held_cap) {
        size_t cap = m->held_cap ? m->held_cap : READ_BLOCK;
        while (cap < m->held_len + d.len)
            cap *= 2;
        uint8_t *p = realloc(m->held, cap);
        if (!p) {
            nb_muxsess_stream_reset(st, NB_MUX_E_INTERNAL, "out of memory");
            m->st = NULL;
            m->err = -ENOMEM;
            if (s->reading)
                uv_idle_start(&m->idle, muxs_on_idle);
            return;
        }
        m->held = p;
        m->held_cap = cap;
    }
    memcpy(m->held + m->held_len, d.p, d.len);
    m->held_len += d.len;
    if (m->gather_max && s->reading) {
        m->gathered += d.len;
        if (m->held_len >= m->gather_max)
            muxs_deliver(m);
        else
            uv_idle_start(&m->idle, muxs_on_idle);
    }
}

static void muxs_on_fin(nb_muxsess_stream_t *st, void *ud)
{
    muxs_t *m = ud;
    m->fin = 1;
    muxs_deliver(m);
}

static void muxs_on_drain(nb_muxsess_stream_t *st, void *ud)
{
    muxs_t *m = ud;
    maybe_drain(&m->base, 1);
}

static void muxs_on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg,
                          void *ud)
{
    muxs_t *m = ud;
    m->st = NULL;
    if (m->wait_close) {
        uv_close((uv_handle_t *)&m->idle, muxs_final);
        return;
    }
    if (err && m->err == 0) {
        /* A reset ends both directions: report it even after EOF or while
         * not reading, so a writer waiting for on_drain learns too. */
        m->err = err;
        free(m->held);
        m->held = NULL;
        m->held_len = m->held_cap = 0;
        m->delivered = 1;
        m->base.reading = 0;
        uv_idle_stop(&m->idle);
        if (m->base.on_read)
            m->base.on_read(&m->base, err, NULL, m->base.ud);
    }
}

static const nb_muxsess_stream_cbs_t muxs_cbs = {
    .on_data = muxs_on_data,
    .on_fin = muxs_on_fin,
    .on_drain = muxs_on_drain,
    .on_close = muxs_on_close,
};

static int muxs_read_start(nb_stream_t *s)
{
    muxs_t *m = (muxs_t *)s;
    if (m->delivered)
        return NB_ESTATE;
    s->reading = 1;
    if (m->held_len || m->fin || m->err)
        uv_idle_start(&m->idle, muxs_on_idle);
    return 0;
}

static void muxs_read_stop(nb_stream_t *s)
{
    muxs_t *m = (muxs_t *)s;
    s->reading = 0;
    uv_idle_stop(&m->idle);
}

static int muxs_write(nb_stream_t *s, uint8_t *p, size_t n, nb_stream_write_cb cb, void *ud)
{
    muxs_t *m = (muxs_t *)s;
    if (!m->st) {
        block_free(s, p, n);
        return NB_ESTATE;
    }
    int r = nb_muxsess_stream_write_owned(m->st, m->chan, p, n, s->wipe ? wiped_free : free);
    if (r == 0 && cb)
        cb(s, 0, ud);
    return r;
}

static int muxs_shutdown(nb_stream_t *s, nb_stream_write_cb cb, void *ud)
{
    muxs_t *m = (muxs_t *)s;
    int r = m->st ? nb_muxsess_stream_fin(m->st) : NB_ESTATE;
    if (r == 0 && cb)
        cb(s, 0, ud);
    return r;
}

static size_t muxs_queued(const nb_stream_t *s)
{
    const muxs_t *m = (const muxs_t *)s;
    return m->st ? nb_muxsess_stream_queued(m->st) : 0;
}

static int muxs_writable(const nb_stream_t *s)
{
    const muxs_t *m = (const muxs_t *)s;
    return m->st ? nb_muxsess_stream_writable(m->st) : 1;
}

static void muxs_reset(muxs_t *m, uint32_t code, const char *msg)
{
    if (m->st)
        nb_muxsess_stream_reset(m->st, code, msg);
    m->st = NULL;
}

static void muxs_close(nb_stream_t *s, int reset)
{
    muxs_t *m = (muxs_t *)s;
    uv_idle_stop(&m->idle);
    if (m->st && m->held_len)
        nb_muxsess_stream_consume(m->st, m->held_len);
    m->held_len = 0;
    if (reset)
        muxs_reset(m, NB_MUX_E_CANCEL, "stream closed");
    if (m->st && !s->shut && nb_muxsess_stream_fin(m->st) < 0)
        muxs_reset(m, NB_MUX_E_CANCEL, "stream closed");
    if (m->st) {
        m->wait_close = 1; /* the session ends it once the peer finished too */
        return;
    }
    uv_close((uv_handle_t *)&m->idle, muxs_final);
}

static const nb_stream_ops_t muxs_ops = {
    .read_start = muxs_read_start,
    .read_stop = muxs_read_stop,
    .write = muxs_write,
    .shutdown = muxs_shutdown,
    .queued = muxs_queued,
    .writable = muxs_writable,
    .close = muxs_close,
};

int nb_stream_mux_new(uv_loop_t *loop, nb_muxsess_stream_t *st, unsigned chan,
                      nb_stream_other_cb on_other, nb_stream_t **out)
{
    *out = NULL;
    muxs_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    stream_init(&m->base, &muxs_ops, loop);
    uv_idle_init(loop, &m->idle);
    m->idle.data = m;
    m->st = st;
    m->chan = chan;
    m->on_other = on_other;
    nb_muxsess_stream_set_cbs(st, &muxs_cbs, m);
    *out = &m->base;
    return 0;
}

void nb_stream_mux_gather(nb_stream_t *s, size_t max)
{
    if (s->ops == &muxs_ops)
        ((muxs_t *)s)->gather_max = max;
}

void nb_stream_mux_reset(nb_stream_t *s, uint32_t code, const char *msg)
{
    if (!s || s->closing)
        return;
    if (s->ops == &muxs_ops)
        muxs_reset((muxs_t *)s, code, msg);
    nb_stream_close(s, 1);
}

nb_muxsess_stream_t *nb_stream_mux_stream(const nb_stream_t *s)
{
    return s->ops == &muxs_ops ? ((const muxs_t *)s)->st : NULL;
}

/* ---- splice ---- */

struct nb_splice {
    nb_stream_t *s[2];
    nb_splice_opts_t o;
    int eof[2];       /* s[i] delivered EOF */
    int shut_done[2]; /* s[i]'s write side is shut down */
    int paused[2];    /* reading s[i] waits for the other's drain */
    int done;
    unsigned pending; /* write / shutdown callbacks still owed to us */
};

/* Every entry point holds the splice (pending) while it runs and ends
 * with this, the only place that frees it. */
static void splice_release(nb_splice_t *sp)
{
    if (--sp->pending == 0 && sp->done)
        free(sp);
}

static void splice_finish(nb_splice_t *sp, int err, nb_stream_t *failed)
{
    if (sp->done)
        return;
    sp->done = 1;
    for (int i = 0; i < 2; i++) {
        nb_stream_read_stop(sp->s[i]);
        nb_stream_set_cbs(sp->s[i], NULL, NULL, NULL, NULL);
    }
    if (sp->o.on_done)
        sp->o.on_done(sp, err, err ? failed : NULL, sp->o.ud);
}

static int side(const nb_splice_t *sp, const nb_stream_t *s)
{
    return sp->s[1] == s;
}

static void splice_on_written(nb_stream_t *s, int status, void *ud)
{
    nb_splice_t *sp = ud;
    if (status < 0 && status != UV_ECANCELED)
        splice_finish(sp, status, s);
    splice_release(sp);
}

static void splice_on_shut(nb_stream_t *s, int status, void *ud)
{
    nb_splice_t *sp = ud;
    if (status < 0 && status != UV_ECANCELED) {
        splice_finish(sp, status, s);
    } else if (!sp->done) {
        sp->shut_done[side(sp, s)] = 1;
        if (sp->shut_done[0] && sp->shut_done[1] && sp->eof[0] && sp->eof[1])
            splice_finish(sp, 0, NULL);
    }
    splice_release(sp);
}

static void splice_read(nb_splice_t *sp, nb_stream_t *s, ssize_t n, uint8_t *p)
{
    int i = side(sp, s);
    nb_stream_t *to = sp->s[!i];
    int r;
    if (n > 0) {
        sp->pending++; /* released by splice_on_written */
        if ((r = nb_stream_write(to, p, (size_t)n, splice_on_written, sp)) < 0) {
            sp->pending--;
            splice_finish(sp, r, to);
            return;
        }
        if (!sp->done && !nb_stream_writable(to)) {
            sp->paused[i] = 1;
            nb_stream_read_stop(s);
        }
        return;
    }
    if (n != UV_EOF) {
        splice_finish(sp, (int)n, s);
        return;
    }
    sp->eof[i] = 1;
    sp->pending++; /* released by splice_on_shut */
    if ((r = nb_stream_shutdown(to, splice_on_shut, sp)) < 0) {
        sp->pending--;
        splice_finish(sp, r, to);
    }
}

static void splice_on_read(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud)
{
    nb_splice_t *sp = ud;
    sp->pending++;
    splice_read(sp, s, n, p);
    splice_release(sp);
}

static void splice_on_drain(nb_stream_t *s, void *ud)
{
    nb_splice_t *sp = ud;
    int i = !side(sp, s); /* the reader feeding s */
    if (!sp->paused[i] || sp->eof[i])
        return;
    sp->paused[i] = 0;
    sp->pending++;
    int r = nb_stream_read_start(sp->s[i]);
    if (r < 0)
        splice_finish(sp, r, sp->s[i]);
    splice_release(sp);
}

int nb_stream_splice(nb_stream_t *a, nb_stream_t *b, const nb_splice_opts_t *o, nb_splice_t **out)
{
    if (out)
        *out = NULL;
    nb_splice_t *sp = calloc(1, sizeof *sp);
    if (!sp)
        return -ENOMEM;
    sp->s[0] = a;
    sp->s[1] = b;
    sp->o = *o;
    for (int i = 0; i < 2; i++) {
        nb_stream_set_marks(sp->s[i], o->hiwat, o->lowat);
        nb_stream_set_cbs(sp->s[i], splice_on_read, splice_on_drain, NULL, sp);
    }
    if (out)
        *out = sp;
    sp->pending++;
    for (int i = 0; i < 2 && !sp->done; i++) {
        int r = nb_stream_read_start(sp->s[i]);
        if (r < 0)
            splice_finish(sp, r, sp->s[i]);
    }
    splice_release(sp);
    return 0;
}
