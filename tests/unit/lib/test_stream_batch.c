/* Unit tests for src/lib/stream_uring.c: the io_uring write batcher behind
 * TCP streams (nb_stream_loop_batch), over real loopback TCP connections.
 * The far ends are raw non-blocking sockets the test reads (or not) itself,
 * so it decides when a socket fills up. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "lib/err.h"
#include "lib/stream.h"
#include "nbtest.h"

static uv_loop_t lp;
static uv_loop_t *loop = &lp;

static uint8_t pat(uint64_t i)
{
    return (uint8_t)((i * 131 + (i >> 9) + 7) & 0xff);
}

/* A connected loopback TCP pair: *near for the stream, *far raw. */
static void tcp_pair(int *near, int *far, int sndbuf)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    NB_CHECK_EQ_INT(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    NB_CHECK_EQ_INT(listen(l, 1), 0);
    NB_CHECK_EQ_INT(getsockname(l, (struct sockaddr *)&a, &len), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sndbuf)
        setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    NB_CHECK_EQ_INT(connect(c, (struct sockaddr *)&a, sizeof a), 0);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    NB_CHECK(s >= 0);
    close(l);
    *near = c;
    *far = s;
}

static nb_stream_t *tcp_stream(int fd)
{
    nb_stream_t *s;
    NB_CHECK_EQ_INT(nb_stream_tcp_new(loop, &s), 0);
    NB_CHECK_EQ_INT(uv_tcp_open((uv_tcp_t *)nb_stream_uv_handle(s), fd), 0);
    return s;
}

/* ---- write bookkeeping ---- */

typedef struct {
    int cbs, errs, cancels, out_of_order, drains, closed, shut, shut_status;
    int last_id;
    int first_err;
    int cbs_at_close, cbs_at_shut;
    uint64_t queued_bytes; /* sum of lengths given */
} rec_t;

static rec_t R;

static void on_written(nb_stream_t *s, int status, void *ud)
{
    int id = (int)(intptr_t)ud;
    if (id != R.last_id + 1)
        R.out_of_order++;
    R.last_id = id;
    R.cbs++;
    if (status == UV_ECANCELED)
        R.cancels++;
    else if (status < 0 && R.errs++ == 0)
        R.first_err = status;
}

static void on_drain(nb_stream_t *s, void *ud)
{
    R.drains++;
}

static void on_closed(nb_stream_t *s, void *ud)
{
    R.closed++;
    R.cbs_at_close = R.cbs;
}

static void on_shut(nb_stream_t *s, int status, void *ud)
{
    R.shut++;
    R.shut_status = status;
    R.cbs_at_shut = R.cbs;
}

/* Writes bytes [from, from + n) of the pattern as one block. */
static int put(nb_stream_t *s, uint64_t from, size_t n, int id)
{
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = pat(from + i);
    R.queued_bytes += n;
    return nb_stream_write(s, p, n, on_written, (void *)(intptr_t)id);
}

/* ---- the far end ---- */

typedef struct {
    int fd;
    uint64_t got;
    int bad, eof, err;
} far_t;

/* Reads at most `max` bytes (0: all there is), checking them against the
 * pattern. */
static void far_read(far_t *f, size_t max)
{
    uint8_t buf[65536];
    size_t total = 0;
    while (!f->eof && !f->err && (!max || total < max)) {
        size_t want = max && max - total < sizeof buf ? max - total : sizeof buf;
        ssize_t r = read(f->fd, buf, want);
        if (r == 0) {
            f->eof = 1;
        } else if (r < 0) {
            if (errno != EAGAIN)
                f->err = -errno;
            break;
        } else {
            for (ssize_t i = 0; i < r; i++)
                if (buf[i] != pat(f->got + (uint64_t)i))
                    f->bad++;
            f->got += (uint64_t)r;
            total += (size_t)r;
        }
    }
}

static void run_ms(uint64_t ms, far_t *f, size_t per_round)
{
    uv_update_time(loop);
    uint64_t end = uv_now(loop) + ms;
    while (uv_now(loop) < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        if (f)
            far_read(f, per_round);
        usleep(200);
        uv_update_time(loop);
    }
}

static int run_until(const int *flag, int want, uint64_t ms, far_t *f, size_t per_round)
{
    uv_update_time(loop);
    uint64_t end = uv_now(loop) + ms;
    while (*flag < want && uv_now(loop) < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        if (f)
            far_read(f, per_round);
        usleep(100);
        uv_update_time(loop);
    }
    return *flag >= want;
}

static void reset_rec(void)
{
    memset(&R, 0, sizeof R);
}

/* ---- tests ---- */

/* 20 000 writes of 1-300 bytes from one callback, copied and owned mixed:
 * they arrive whole and in order, every callback runs once, in order,
 * from the loop (not inside nb_stream_write) and with status 0. */
static void test_order_many_small(void)
{
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 0);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, on_drain, on_closed, NULL);
    nb_stream_set_marks(s, 64u << 20, 32u << 20);
    far_t f = {.fd = farfd};
    uint64_t off = 0;
    int inline_cbs = 0;
    for (int i = 1; i <= 20000; i++) {
        size_t n = 1 + (size_t)(i * 7919) % 300;
        int before = R.cbs;
        if (i % 3 == 0) {
            uint8_t tmp[300];
            for (size_t k = 0; k < n; k++)
                tmp[k] = pat(off + k);
            R.queued_bytes += n;
            NB_CHECK_EQ_INT(nb_stream_write_copy(s, tmp, n, on_written, (void *)(intptr_t)i), 0);
        } else {
            NB_CHECK_EQ_INT(put(s, off, n, i), 0);
        }
        inline_cbs += R.cbs != before;
        off += n;
    }
    NB_CHECK_EQ_INT(inline_cbs, 0);
    NB_CHECK_EQ_INT(nb_stream_queued(s), off);
    NB_CHECK(run_until(&R.cbs, 20000, 10000, &f, 0));
    NB_CHECK_EQ_INT(nb_stream_queued(s), 0);
    run_ms(20, &f, 0);
    NB_CHECK_EQ_INT(f.got, off);
    NB_CHECK_EQ_INT(f.bad, 0);
    NB_CHECK_EQ_INT(R.out_of_order, 0);
    NB_CHECK_EQ_INT(R.errs + R.cancels, 0);
    nb_stream_close(s, 0);
    NB_CHECK(run_until(&R.closed, 1, 1000, NULL, 0));
    close(farfd);
}

/* A small send buffer and a reader taking 4 KiB a round: sends come back
 * short or wait for room inside io_uring; the writer keeps to the marks
 * (drain callbacks), and 8 MiB arrive intact and in order. */
static void test_short_writes_slow_reader(void)
{
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 4096);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, on_drain, on_closed, NULL);
    nb_stream_set_marks(s, 256 * 1024, 64 * 1024);
    far_t f = {.fd = farfd};
    const uint64_t total = 8u << 20;
    uint64_t off = 0;
    int id = 0;
    size_t maxq = 0;
    uv_update_time(loop);
    uint64_t end = uv_now(loop) + 30000;
    while ((f.got < total || R.cbs < id) && uv_now(loop) < end && !R.errs) {
        while (off < total && nb_stream_writable(s)) {
            size_t n = 1 + (size_t)((off * 31) % 65536);
            if (n > total - off)
                n = (size_t)(total - off);
            NB_CHECK_EQ_INT(put(s, off, n, ++id), 0);
            off += n;
        }
        if (nb_stream_queued(s) > maxq)
            maxq = nb_stream_queued(s);
        uv_run(loop, UV_RUN_NOWAIT);
        far_read(&f, 4096);
        uv_update_time(loop);
    }
    NB_CHECK_EQ_INT(f.got, total);
    NB_CHECK_EQ_INT(f.bad, 0);
    NB_CHECK_EQ_INT(R.cbs, id);
    NB_CHECK_EQ_INT(R.out_of_order, 0);
    NB_CHECK_EQ_INT(R.errs, 0);
    NB_CHECK(R.drains > 0);
    NB_CHECK(maxq <= 256 * 1024 + 65536); /* the mark plus one write */
    NB_CHECK_EQ_INT(nb_stream_queued(s), 0);
    nb_stream_close(s, 0);
    NB_CHECK(run_until(&R.closed, 1, 1000, NULL, 0));
    close(farfd);
}

/* A reader that never reads: a send waits inside io_uring when the stream
 * is closed (with and without reset). The close waits for the send's
 * completion; every write callback runs before on_close, cancelled or
 * not; what the reader then finds is an intact prefix (the kernel read no
 * freed block). ASan watches the rest. */
static void close_in_flight(int reset)
{
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 4096);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, NULL, on_closed, NULL);
    nb_stream_set_wipe(s, 1);
    nb_stream_set_marks(s, 64u << 20, 32u << 20);
    uint64_t off = 0;
    int id = 0;
    for (int i = 0; i < 64; i++) {
        NB_CHECK_EQ_INT(put(s, off, 65536, ++id), 0);
        off += 65536;
    }
    run_ms(50, NULL, 0); /* the socket fills; a send stays in flight */
    NB_CHECK(R.cbs < id);
    NB_CHECK(nb_stream_queued(s) > 0);
    nb_stream_close(s, reset);
    NB_CHECK_EQ_INT(R.closed, 0); /* never inside the call */
    NB_CHECK(run_until(&R.closed, 1, 2000, NULL, 0));
    NB_CHECK_EQ_INT(R.cbs, id);
    NB_CHECK_EQ_INT(R.cbs_at_close, id);
    NB_CHECK(R.cancels > 0);
    NB_CHECK_EQ_INT(R.out_of_order, 0);
    far_t f = {.fd = farfd};
    run_ms(20, &f, 0);
    NB_CHECK(f.got < off);
    NB_CHECK_EQ_INT(f.bad, 0);
    NB_CHECK(f.eof || f.err);
    close(farfd);
}

static void test_close_in_flight(void)
{
    close_in_flight(0);
    close_in_flight(1);
}

/* Close right after small writes, nothing in flight: what the socket takes
 * goes out (as it did when writes went straight out), callbacks 0. */
static void test_close_after_queued(void)
{
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 0);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, NULL, on_closed, NULL);
    NB_CHECK_EQ_INT(put(s, 0, 100, 1), 0);
    NB_CHECK_EQ_INT(put(s, 100, 200, 2), 0);
    nb_stream_close(s, 0);
    NB_CHECK_EQ_INT(R.cbs, 0);
    NB_CHECK(run_until(&R.closed, 1, 1000, NULL, 0));
    NB_CHECK_EQ_INT(R.cbs, 2);
    NB_CHECK_EQ_INT(R.errs + R.cancels, 0);
    far_t f = {.fd = farfd};
    run_ms(20, &f, 0);
    NB_CHECK_EQ_INT(f.got, 300);
    NB_CHECK_EQ_INT(f.bad, 0);
    NB_CHECK(f.eof);
    close(farfd);
}

/* Shutdown with writes queued (and some waiting for room): the FIN comes
 * after all of them; the shutdown callback after every write callback. */
static void test_shutdown_after_queued(void)
{
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 4096);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, NULL, on_closed, NULL);
    nb_stream_set_marks(s, 64u << 20, 32u << 20);
    uint64_t off = 0;
    int id = 0;
    for (int i = 0; i < 200; i++) {
        size_t n = 1 + (size_t)(i * 977) % 20000;
        NB_CHECK_EQ_INT(put(s, off, n, ++id), 0);
        off += n;
    }
    NB_CHECK_EQ_INT(nb_stream_shutdown(s, on_shut, NULL), 0);
    NB_CHECK_EQ_INT(put(s, off, 10, ++id), NB_ESTATE); /* after shutdown */
    id--;
    run_ms(30, NULL, 0);
    NB_CHECK_EQ_INT(R.shut, 0); /* still queued: the reader has not read */
    far_t f = {.fd = farfd};
    NB_CHECK(run_until(&R.shut, 1, 10000, &f, 8192));
    NB_CHECK_EQ_INT(R.shut_status, 0);
    NB_CHECK_EQ_INT(R.cbs_at_shut, id);
    NB_CHECK_EQ_INT(R.errs, 0);
    run_ms(20, &f, 0);
    NB_CHECK(f.eof);
    NB_CHECK_EQ_INT(f.got, off);
    NB_CHECK_EQ_INT(f.bad, 0);
    nb_stream_close(s, 0);
    NB_CHECK(run_until(&R.closed, 1, 1000, NULL, 0));
    close(farfd);
}

/* The peer resets with data queued: the writes fail through their
 * callbacks (ECONNRESET / EPIPE, not a signal, not a crash), later writes
 * fail at once, and the stream closes cleanly. */
static void test_peer_reset(void)
{
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 4096);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, NULL, on_closed, NULL);
    nb_stream_set_marks(s, 64u << 20, 32u << 20);
    uint64_t off = 0;
    int id = 0;
    for (int i = 0; i < 32; i++) {
        NB_CHECK_EQ_INT(put(s, off, 65536, ++id), 0);
        off += 65536;
    }
    run_ms(30, NULL, 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(farfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(farfd); /* RST */
    NB_CHECK(run_until(&R.cbs, id, 3000, NULL, 0));
    NB_CHECK(R.errs > 0);
    NB_CHECK(R.first_err == UV_ECONNRESET || R.first_err == UV_EPIPE);
    NB_CHECK_EQ_INT(R.out_of_order, 0);
    NB_CHECK_EQ_INT(nb_stream_queued(s), 0);
    int r = put(s, off, 10, id + 1);
    NB_CHECK(r == UV_ECONNRESET || r == UV_EPIPE);
    nb_stream_close(s, 1);
    NB_CHECK(run_until(&R.closed, 1, 1000, NULL, 0));
}

/* A splice between two batched TCP streams: 16 MiB each way, intact. */
typedef struct {
    int done, err, closed;
    nb_stream_t *a, *b;
} sx_t;

static void sx_closed(nb_stream_t *s, void *ud)
{
    ((sx_t *)ud)->closed++;
}

static void sx_done(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud)
{
    sx_t *x = ud;
    x->done = 1;
    x->err = err;
    nb_stream_set_cbs(x->a, NULL, NULL, sx_closed, x);
    nb_stream_set_cbs(x->b, NULL, NULL, sx_closed, x);
    nb_stream_close(x->a, err != 0);
    nb_stream_close(x->b, err != 0);
}

static void test_splice(void)
{
    int a_near, a_far, b_near, b_far;
    tcp_pair(&a_near, &a_far, 0);
    tcp_pair(&b_near, &b_far, 0);
    sx_t x = {.a = tcp_stream(a_near), .b = tcp_stream(b_near)};
    nb_splice_opts_t o = {.hiwat = 128 * 1024, .lowat = 32 * 1024, .on_done = sx_done, .ud = &x};
    NB_CHECK_EQ_INT(nb_stream_splice(x.a, x.b, &o, NULL), 0);
    const uint64_t total = 16u << 20;
    uint64_t sent_a = 0, sent_b = 0;
    far_t fa = {.fd = a_far}, fb = {.fd = b_far};
    uint8_t buf[32768];
    int shut_a = 0, shut_b = 0;
    uv_update_time(loop);
    uint64_t end = uv_now(loop) + 30000;
    while (!x.done && uv_now(loop) < end) {
        uint64_t *sent[2] = {&sent_a, &sent_b};
        int fds[2] = {a_far, b_far}, *shut[2] = {&shut_a, &shut_b};
        for (int k = 0; k < 2; k++) {
            while (*sent[k] < total) {
                size_t n = sizeof buf;
                if (n > total - *sent[k])
                    n = (size_t)(total - *sent[k]);
                for (size_t i = 0; i < n; i++)
                    buf[i] = pat(*sent[k] + i);
                ssize_t w = write(fds[k], buf, n);
                if (w <= 0)
                    break;
                *sent[k] += (uint64_t)w;
            }
            if (*sent[k] == total && !*shut[k]) {
                shutdown(fds[k], SHUT_WR);
                *shut[k] = 1;
            }
        }
        uv_run(loop, UV_RUN_NOWAIT);
        far_read(&fa, 0);
        far_read(&fb, 0);
        uv_update_time(loop);
    }
    NB_CHECK(x.done);
    NB_CHECK_EQ_INT(x.err, 0);
    run_ms(20, &fa, 0);
    run_ms(0, &fb, 0);
    far_read(&fb, 0);
    NB_CHECK_EQ_INT(fa.got, total);
    NB_CHECK_EQ_INT(fb.got, total);
    NB_CHECK_EQ_INT(fa.bad + fb.bad, 0);
    NB_CHECK(fa.eof && fb.eof);
    NB_CHECK(run_until(&x.closed, 2, 1000, NULL, 0));
    close(a_far);
    close(b_far);
}

/* NILBOX_IO_URING=0: no batcher; writes go straight out as before (a small
 * write's callback runs inside nb_stream_write) and in order. */
static void test_disabled(void)
{
    uv_loop_t l2;
    uv_loop_t *saved = loop;
    NB_CHECK_EQ_INT(uv_loop_init(&l2), 0);
    setenv("NILBOX_IO_URING", "0", 1);
    NB_CHECK_EQ_INT(nb_stream_loop_batch(&l2), 0);
    unsetenv("NILBOX_IO_URING");
    NB_CHECK_EQ_INT(nb_stream_loop_batched(&l2), 0);
    loop = &l2;
    reset_rec();
    int near, farfd;
    tcp_pair(&near, &farfd, 0);
    nb_stream_t *s = tcp_stream(near);
    nb_stream_set_cbs(s, NULL, NULL, on_closed, NULL);
    uint64_t off = 0;
    for (int i = 1; i <= 1000; i++) {
        NB_CHECK_EQ_INT(put(s, off, 100, i), 0);
        NB_CHECK_EQ_INT(R.cbs, i); /* written at once */
        off += 100;
    }
    far_t f = {.fd = farfd};
    run_ms(20, &f, 0);
    NB_CHECK_EQ_INT(f.got, off);
    NB_CHECK_EQ_INT(f.bad, 0);
    nb_stream_close(s, 0);
    NB_CHECK(run_until(&R.closed, 1, 1000, NULL, 0));
    close(farfd);
    NB_CHECK_EQ_INT(uv_loop_close(&l2), 0);
    loop = saved;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 1;
    /* Only the batcher is under test here: where the kernel (or a seccomp
     * filter) refuses io_uring, say so and skip rather than pass. */
    struct io_uring probe;
    if (io_uring_queue_init(4, &probe, 0) < 0) {
        printf("SKIP: io_uring unavailable here\n");
        return 77;
    }
    io_uring_queue_exit(&probe);
    NB_CHECK_EQ_INT(uv_loop_init(loop), 0);
    NB_CHECK_EQ_INT(nb_stream_loop_batch(loop), 0);
    NB_CHECK_EQ_INT(nb_stream_loop_batched(loop), 1);
    NB_RUN(test_order_many_small);
    NB_RUN(test_short_writes_slow_reader);
    NB_RUN(test_close_in_flight);
    NB_RUN(test_close_after_queued);
    NB_RUN(test_shutdown_after_queued);
    NB_RUN(test_peer_reset);
    NB_RUN(test_splice);
    NB_RUN(test_disabled);
    nb_stream_loop_unbatch(loop);
    NB_CHECK_EQ_INT(nb_stream_loop_batched(loop), 0);
    uv_run(loop, UV_RUN_NOWAIT);
    NB_CHECK_EQ_INT(uv_loop_close(loop), 0);
    NB_TEST_MAIN_END();
}
