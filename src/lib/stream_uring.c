/* io_uring write batcher for the libuv backend of stream.c (stream_int.h,
 * nb_stream_loop_batch in stream.h).
 *
 * Why: on loopback every write() wakes its reader, which preempts the
 * writer on the way back to user space (PREEMPT_NONE kernel). Sending all
 * of a loop iteration's writes in one io_uring_enter costs one preemption
 * for the lot instead of one each.
 *
 * When: streams queue their bytes during the iteration; the check handle
 * (right after the poll phase, so after every ready socket was handled)
 * submits one sendmsg per stream with one io_uring_enter and reaps the
 * completions at once (loopback sends complete inline); a lone stream with
 * nothing in flight is sent with a plain sendmsg (ub_send_lone). The prepare handle
 * does the same before the loop blocks, for writes made outside the poll
 * phase (timers, close callbacks). A send on a full socket completes later
 * (io_uring waits for POLLOUT itself): the ring's own descriptor, watched
 * by a uv_poll_t, turns readable once a completion waits (one descriptor,
 * not a ring and an eventfd: the daemon's descriptor budgets are tight at
 * small limits). Inline completions are reaped before the loop polls, so
 * they do not wake it a second time. */
#include <errno.h>
#include <liburing.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/stream.h"
#include "lib/stream_int.h"

#define UB_ENTRIES 256 /* submission queue; a fuller flush submits in parts */
#define UB_ROUNDS 4    /* flush rounds for writes made by completion callbacks */

typedef struct {
    nb_wbatch_t base;
    struct io_uring ring;
    uv_prepare_t prep;
    uv_check_t check;
    uv_poll_t poll;
    nb_wbatch_op_t *qhead, *qtail; /* ops for the next flush */
    unsigned inflight;
    int reffed; /* check holds the loop: queued or in-flight sends, like write requests */
    int handles;
} ub_t;

static void ub_hold(ub_t *b)
{
    int want = b->qhead || b->inflight;
    if (want == b->reffed)
        return;
    b->reffed = want;
    if (want)
        uv_ref((uv_handle_t *)&b->check);
    else
        uv_unref((uv_handle_t *)&b->check);
}

static void ub_kick(nb_wbatch_t *wb, nb_wbatch_op_t *op)
{
    ub_t *b = (ub_t *)wb;
    if (op->state != NB_WBOP_IDLE)
        return;
    op->state = NB_WBOP_QUEUED;
    op->next = NULL;
    op->prev = b->qtail;
    if (b->qtail)
        b->qtail->next = op;
    else
        b->qhead = op;
    b->qtail = op;
    ub_hold(b);
}

static void ub_unqueue(ub_t *b, nb_wbatch_op_t *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        b->qhead = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        b->qtail = op->prev;
    op->prev = op->next = NULL;
    op->state = NB_WBOP_IDLE;
}

/* A free submission entry, submitting what is queued if the ring is full. */
static struct io_uring_sqe *ub_sqe(ub_t *b)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    if (!sqe && io_uring_submit(&b->ring) >= 0)
        sqe = io_uring_get_sqe(&b->ring);
    return sqe;
}

static void ub_cancel(nb_wbatch_t *wb, nb_wbatch_op_t *op)
{
    ub_t *b = (ub_t *)wb;
    if (op->state == NB_WBOP_QUEUED) {
        ub_unqueue(b, op);
        return;
    }
    if (op->state != NB_WBOP_INFLIGHT || op->cancelling)
        return;
    struct io_uring_sqe *sqe = ub_sqe(b);
    if (!sqe)
        return; /* the send completes by itself once the socket drains or dies */
    op->cancelling = 1;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
    io_uring_sqe_set_data(sqe, NULL);
    /* Its completion (and the op's) is reaped from the loop (ub_on_event). */
    io_uring_submit(&b->ring);
}

static void ub_reap(ub_t *b)
{
    struct io_uring_cqe *cqe;
    while (io_uring_peek_cqe(&b->ring, &cqe) == 0) {
        nb_wbatch_op_t *op = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&b->ring, cqe);
        if (!op)
            continue; /* a cancel's own completion */
        b->inflight--;
        op->state = NB_WBOP_IDLE;
        op->cancelling = 0;
        op->done(op, res);
    }
}

/* One stream to send and nothing in flight: nothing to batch (a single
 * connection's turn), so send it as an unbatched write would, one
 * sendmsg without a ring round trip. Only what the socket cannot take now
 * goes through the ring (it waits for room there). 1 when sent. */
static int ub_send_lone(ub_t *b)
{
    nb_wbatch_op_t *op = b->qhead;
    if (!op || op != b->qtail || b->inflight)
        return 0;
    ub_unqueue(b, op);
    if (op->prep(op) == 0)
        return 1;
    ssize_t n = sendmsg(op->fd, &op->msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        ub_kick(&b->base, op);
        return 0;
    }
    op->done(op, n < 0 ? -errno : (int)n);
    return 1;
}

static void ub_flush(ub_t *b)
{
    for (int round = 0; round < UB_ROUNDS && b->qhead; round++) {
        if (ub_send_lone(b))
            continue;
        nb_wbatch_op_t *op;
        while ((op = b->qhead)) {
            ub_unqueue(b, op);
            if (op->prep(op) == 0)
                continue;
            struct io_uring_sqe *sqe = ub_sqe(b);
            if (!sqe) {
                ub_kick(&b->base, op); /* the ring is stuck: next iteration */
                break;
            }
            io_uring_prep_sendmsg(sqe, op->fd, &op->msg, MSG_NOSIGNAL);
            io_uring_sqe_set_data(sqe, op);
            op->state = NB_WBOP_INFLIGHT;
            b->inflight++;
        }
        io_uring_submit(&b->ring);
        ub_reap(b);
    }
    ub_hold(b);
}

static void ub_on_prepare(uv_prepare_t *h)
{
    ub_t *b = h->data;
    if (b->qhead)
        ub_flush(b);
}

static void ub_on_check(uv_check_t *h)
{
    ub_flush(h->data);
}

/* The ring's descriptor is readable: sends that waited for room finished.
 * Resubmissions go out at this iteration's check. */
static void ub_on_event(uv_poll_t *h, int status, int events)
{
    ub_t *b = h->data;
    (void)status;
    (void)events;
    ub_reap(b);
    ub_hold(b);
}

static void ub_on_closed(uv_handle_t *h)
{
    ub_t *b = h->data;
    if (--b->handles > 0)
        return;
    io_uring_queue_exit(&b->ring);
    free(b);
}

static ub_t *ub_find(uv_loop_t *loop, nb_wbatch_t ***link)
{
    for (nb_wbatch_t **p = &nb_wbatch_list; *p; p = &(*p)->next) {
        if ((*p)->loop == loop) {
            if (link)
                *link = p;
            return (ub_t *)*p;
        }
    }
    return NULL;
}

static int ub_ring_init(ub_t *b)
{
    struct io_uring_params p = {.flags = IORING_SETUP_SUBMIT_ALL};
    int r = io_uring_queue_init_params(UB_ENTRIES, &b->ring, &p);
    if (r == -EINVAL) { /* before 5.18 */
        memset(&p, 0, sizeof p);
        r = io_uring_queue_init_params(UB_ENTRIES, &b->ring, &p);
    }
    if (r < 0)
        return r;
    struct io_uring_probe *pr = io_uring_get_probe_ring(&b->ring);
    int ok = pr && io_uring_opcode_supported(pr, IORING_OP_SENDMSG) &&
             io_uring_opcode_supported(pr, IORING_OP_ASYNC_CANCEL);
    io_uring_free_probe(pr);
    if (!ok) {
        io_uring_queue_exit(&b->ring);
        return -ENOSYS;
    }
    return 0;
}

int nb_stream_loop_batch(uv_loop_t *loop)
{
    const char *e = getenv("NILBOX_IO_URING");
    if (e && strcmp(e, "0") == 0) {
        nb_log(NB_LOG_DEBUG, "io_uring write batching off (NILBOX_IO_URING=0)");
        return 0;
    }
    if (ub_find(loop, NULL))
        return 0;
    ub_t *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    int r = ub_ring_init(b);
    if (r < 0) {
        nb_log(NB_LOG_DEBUG, "io_uring unavailable (%s): socket writes go one by one",
               strerror(-r));
        free(b);
        return 0;
    }
    b->base.loop = loop;
    b->base.kick = ub_kick;
    b->base.cancel = ub_cancel;
    uv_prepare_init(loop, &b->prep);
    uv_check_init(loop, &b->check);
    b->prep.data = b->check.data = b;
    uv_prepare_start(&b->prep, ub_on_prepare);
    uv_check_start(&b->check, ub_on_check);
    uv_unref((uv_handle_t *)&b->prep);
    uv_unref((uv_handle_t *)&b->check);
    b->handles = 2;
    if ((r = uv_poll_init(loop, &b->poll, b->ring.ring_fd)) == 0) {
        b->poll.data = b;
        b->handles++;
        r = uv_poll_start(&b->poll, UV_READABLE, ub_on_event);
        uv_unref((uv_handle_t *)&b->poll);
    }
    if (r < 0) {
        nb_log(NB_LOG_DEBUG, "io_uring batching: cannot watch the ring: %s", uv_strerror(r));
        if (b->handles == 3)
            uv_close((uv_handle_t *)&b->poll, ub_on_closed);
        uv_close((uv_handle_t *)&b->prep, ub_on_closed);
        uv_close((uv_handle_t *)&b->check, ub_on_closed);
        return 0;
    }
    b->base.next = nb_wbatch_list;
    nb_wbatch_list = &b->base;
    nb_log(NB_LOG_DEBUG, "io_uring write batching on");
    return 0;
}

int nb_stream_loop_batched(uv_loop_t *loop)
{
    return ub_find(loop, NULL) != NULL;
}

void nb_stream_loop_unbatch(uv_loop_t *loop)
{
    nb_wbatch_t **link;
    ub_t *b = ub_find(loop, &link);
    if (!b)
        return;
    *link = b->base.next;
    uv_close((uv_handle_t *)&b->poll, ub_on_closed);
    uv_close((uv_handle_t *)&b->prep, ub_on_closed);
    uv_close((uv_handle_t *)&b->check, ub_on_closed);
}
