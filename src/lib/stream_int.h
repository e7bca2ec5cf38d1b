/* Internal interface between stream.c's libuv backend and the io_uring
 * write batcher (stream_uring.c); no other module uses it.
 *
 * stream.c does not link the batcher: a loop's batcher puts itself on
 * nb_wbatch_list and each TCP/pipe stream created on that loop picks it
 * up, so programs that never enable batching (the static agent, the CLI)
 * carry no io_uring code.
 *
 * An op is one stream's slot in the batcher: at most one send in flight
 * per stream, which keeps the stream's bytes in order. */
#ifndef NB_STREAM_INT_H
#define NB_STREAM_INT_H

#include <stddef.h>
#include <sys/socket.h>

#include <uv.h>

typedef struct nb_wbatch nb_wbatch_t;
typedef struct nb_wbatch_op nb_wbatch_op_t;

enum {
    NB_WBOP_IDLE,     /* nothing asked */
    NB_WBOP_QUEUED,   /* prep runs at the loop iteration's flush */
    NB_WBOP_INFLIGHT, /* submitted, its completion not yet seen */
};

struct nb_wbatch_op {
    nb_wbatch_op_t *prev, *next; /* the batcher's list while QUEUED */
    int state;
    int cancelling; /* a cancel was submitted for the op in flight */
    int fd;         /* a socket: sent with sendmsg(MSG_NOSIGNAL) */
    struct msghdr msg;
    /* Fills msg (iovecs the owner keeps valid until done); returns the
     * bytes to send, 0 for nothing (the op goes back to IDLE). */
    size_t (*prep)(nb_wbatch_op_t *op);
    /* The send finished: bytes sent (maybe fewer than asked) or -errno
     * (-ECANCELED after a cancel). The op is IDLE again; runs from the
     * loop, never inside kick or cancel. */
    void (*done)(nb_wbatch_op_t *op, int res);
};

struct nb_wbatch {
    uv_loop_t *loop;
    /* IDLE -> QUEUED; anything else: no-op. */
    void (*kick)(nb_wbatch_t *b, nb_wbatch_op_t *op);
    /* QUEUED -> IDLE at once (done does not run). INFLIGHT: asks the kernel
     * to cancel it; done runs later, from the loop, with the outcome. */
    void (*cancel)(nb_wbatch_t *b, nb_wbatch_op_t *op);
    nb_wbatch_t *next;
};

/* Batchers by loop; changed only by nb_stream_loop_batch / _unbatch. */
extern nb_wbatch_t *nb_wbatch_list;

#endif
