/* nbmux session layer, top: the stream API (open, accept, write, FIN and
 * the getters; reject, reset and consume are in muxsess_proto.c, whose
 * frame dispatch calls them), with the writer's back-pressure. Module map:
 * muxsess_int.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/muxsess_int.h"

/* ------------------------------------------------------------- writers */

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
    nb_muxsess_stream_t *st = nb_mxs_stream_new(s, s->next_local_id, 1, ST_OPENING);
    if (!st)
        return -ENOMEM;
    int r = nb_mux_enc_open(&s->ctlq, st->id, service, args);
    if (r < 0) {
        nb_mxs_stream_finish(st, r, NB_MUX_E_INTERNAL, NULL, 0);
        return r;
    }
    s->next_local_id += 2;
    st->cbs = cbs;
    st->ud = ud;
    nb_mxs_schedule_flush(s);
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
        return nb_mxs_ctl_frame_result(s, r);
    st->state = ST_OPEN;
    st->send_credit = NB_MUX_INITIAL_WINDOW;
    nb_mxs_update_ready(st);
    nb_mxs_schedule_flush(s);
    return 0;
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
    nb_mxs_update_ready(st);
    return 0;
}

static int write_check(const nb_muxsess_stream_t *st, unsigned chan, size_t n)
{
    /* A pending stream queues too: nothing is sent before the accept. */
    if (st->state == ST_DEAD || st->fin_queued || !st->s->conn)
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
        struct chunk *c = nb_mxs_chunk_get(s, cap);
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
    nb_mxs_update_ready(st);
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
    if (st->state == ST_DEAD)
        return NB_ESTATE;
    if (st->fin_queued)
        return 0;
    st->fin_queued = 1;
    nb_mxs_update_ready(st);
    return 0;
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
