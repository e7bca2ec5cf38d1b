/* nbmux session layer, bottom: the session's objects and their memory.
 * The stream table (hash, ready and window lists, graveyard), outbound
 * chunks and their pool, write requests, a transport's handles, and the
 * deferred free of the session. Calls nothing above it; module map in
 * muxsess_int.h. */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/muxsess_int.h"

/* --------------------------------------------------------------- memory */

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

void nb_mxs_pool_release(nb_muxsess_t *s)
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
    nb_mxs_pool_release(s);
    nb_mux_dec_free(&s->dec);
    nb_buf_free(&s->ctlq);
    free(s->rbuf);
    if (s->key)
        sodium_free(s->key);
    free(s);
}

void nb_mxs_maybe_free(nb_muxsess_t *s)
{
    if (s->freed && s->depth == 0 && s->nhandles == 0 && s->nconns == 0)
        really_free(s);
}

void nb_mxs_leave(nb_muxsess_t *s)
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
    nb_mxs_maybe_free(s);
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
        nb_mxs_maybe_free(s);
}

void nb_mxs_conn_close(struct conn *c)
{
    if (c->handles_closed)
        return;
    c->handles_closed = 1;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    uv_close((uv_handle_t *)&c->linger, on_conn_closed);
}

/* ------------------------------------------------------------- streams */

static void hash_del(nb_muxsess_t *s, nb_muxsess_stream_t *st)
{
    nb_muxsess_stream_t **pp = &s->buckets[hidx(st->id)];
    while (*pp && *pp != st)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = st->hnext;
}

void nb_mxs_ready_del(nb_muxsess_t *s, nb_muxsess_stream_t *st)
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

void nb_mxs_ready_add(nb_muxsess_t *s, nb_muxsess_stream_t *st)
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

void nb_mxs_wlist_del(nb_muxsess_t *s, nb_muxsess_stream_t *st)
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

void nb_mxs_wlist_add(nb_muxsess_t *s, nb_muxsess_stream_t *st)
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

int nb_mxs_stream_ready(const nb_muxsess_stream_t *st)
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

void nb_mxs_chunk_unref(struct chunk *c)
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

struct chunk *nb_mxs_chunk_get(nb_muxsess_t *s, size_t cap)
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

nb_muxsess_stream_t *nb_mxs_stream_new(nb_muxsess_t *s, uint32_t id, int local, int state)
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

void nb_mxs_stream_finish(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg,
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
    nb_mxs_ready_del(s, st);
    nb_mxs_wlist_del(s, st);
    s->nstreams--;
    s->unconsumed -= st->unconsumed;
    s->queued -= st->queued;
    st->unconsumed = 0;
    st->queued = 0;
    struct chunk *c;
    while ((c = st->qhead)) {
        st->qhead = c->next;
        nb_mxs_chunk_unref(c);
    }
    st->qtail = NULL;
    st->state = ST_DEAD;
    st->gnext = s->grave;
    s->grave = st;
    if (notify && st->cbs && st->cbs->on_close)
        st->cbs->on_close(st, err, code, msg ? msg : "", st->ud);
}

/* ------------------------------------------------------- write requests */

wreq_t *nb_mxs_wreq_get(nb_muxsess_t *s, struct conn *c)
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

void nb_mxs_wreq_put(nb_muxsess_t *s, wreq_t *w)
{
    for (unsigned i = 0; i < w->nref; i++)
        nb_mxs_chunk_unref(w->ref[i]);
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
