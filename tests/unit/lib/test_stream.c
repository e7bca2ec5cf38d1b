/* Unit tests for src/lib/stream.c: splices over real socketpairs and over
 * a real nbmux session pair (both ends on one loop). The outer ends are
 * raw non-blocking fds driven by the test, so it controls who reads when. */
#include <errno.h>
#include <fcntl.h>
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

static uv_loop_t *loop;
static uint8_t key[32];

/* ---- raw fd drivers ---- */

typedef struct {
    int fd;
    uint64_t to_send, sent, got;
    uint64_t seed;
    int shut_when_sent, shut, eof, err, reading;
    crypto_generichash_state hs, hr;
} drv_t;

static uint8_t pat(uint64_t seed, uint64_t i)
{
    return (uint8_t)((i * 131 + (i >> 11) + seed) & 0xff);
}

static void drv_init(drv_t *d, int fd, uint64_t to_send, uint64_t seed)
{
    memset(d, 0, sizeof *d);
    d->fd = fd;
    d->to_send = to_send;
    d->seed = seed;
    d->reading = 1;
    d->shut_when_sent = 1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    crypto_generichash_init(&d->hs, NULL, 0, 32);
    crypto_generichash_init(&d->hr, NULL, 0, 32);
}

/* Moves what can move without blocking; returns 1 on progress. */
static int drv_pump(drv_t *d)
{
    static uint8_t buf[65536];
    int progress = 0;
    while (d->sent < d->to_send && !d->err) {
        size_t n = d->to_send - d->sent < sizeof buf ? (size_t)(d->to_send - d->sent) : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = pat(d->seed, d->sent + i);
        ssize_t w = write(d->fd, buf, n);
        if (w <= 0) {
            if (w < 0 && errno != EAGAIN)
                d->err = -errno;
            break;
        }
        crypto_generichash_update(&d->hs, buf, (size_t)w);
        d->sent += (uint64_t)w;
        progress = 1;
    }
    if (d->sent == d->to_send && d->shut_when_sent && !d->shut && !d->err) {
        shutdown(d->fd, SHUT_WR);
        d->shut = 1;
        progress = 1;
    }
    for (int k = 0; d->reading && !d->eof && !d->err && k < 16; k++) {
        ssize_t r = read(d->fd, buf, sizeof buf);
        if (r > 0) {
            crypto_generichash_update(&d->hr, buf, (size_t)r);
            d->got += (uint64_t)r;
            progress = 1;
        } else if (r == 0) {
            d->eof = 1;
            progress = 1;
        } else {
            if (errno != EAGAIN)
                d->err = -errno;
            break;
        }
    }
    return progress;
}

static drv_t D1, D2;

typedef struct {
    int done, err, count;
    nb_stream_t *failed;
    nb_stream_t *a, *b;
    int closed;
} splice_t;

static void on_stream_closed(nb_stream_t *s, void *ud)
{
    ((splice_t *)ud)->closed++;
}

static void on_done(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud)
{
    splice_t *x = ud;
    x->done = 1;
    x->count++;
    x->err = err;
    x->failed = failed;
    nb_stream_set_cbs(x->a, NULL, NULL, on_stream_closed, x);
    nb_stream_set_cbs(x->b, NULL, NULL, on_stream_closed, x);
    nb_stream_close(x->a, err != 0);
    nb_stream_close(x->b, err != 0);
}

/* Runs the loop and the drivers until *flag or ms elapse. */
static int run_until(const int *flag, uint64_t ms)
{
    uv_update_time(loop);
    uint64_t end = uv_now(loop) + ms;
    while (!*flag && uv_now(loop) < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        int p1 = D1.fd > 0 && drv_pump(&D1), p2 = D2.fd > 0 && drv_pump(&D2);
        int p = p1 || p2;
        uv_update_time(loop);
        if (!p && !*flag)
            usleep(100);
    }
    return *flag;
}

static void run_for(uint64_t ms)
{
    int never = 0;
    run_until(&never, ms);
}

static int hashes_equal(drv_t *from, drv_t *to)
{
    uint8_t a[32], b[32];
    crypto_generichash_state s = from->hs, r = to->hr;
    crypto_generichash_final(&s, a, sizeof a);
    crypto_generichash_final(&r, b, sizeof b);
    return memcmp(a, b, sizeof a) == 0;
}

static void pipe_stream(int fd, nb_stream_t **out)
{
    NB_CHECK_EQ_INT(nb_stream_pipe_new(loop, fd, out), 0);
}

/* x1 <-> [x2 | splice | y1] <-> y2 */
static void make_fd_splice(splice_t *x, size_t hiwat, size_t lowat, int *x1, int *y2)
{
    int a[2], b[2];
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
    memset(x, 0, sizeof *x);
    pipe_stream(a[1], &x->a);
    pipe_stream(b[0], &x->b);
    nb_splice_opts_t o = {.hiwat = hiwat, .lowat = lowat, .on_done = on_done, .ud = x};
    NB_CHECK_EQ_INT(nb_stream_splice(x->a, x->b, &o, NULL), 0);
    *x1 = a[0];
    *y2 = b[1];
}

static void drivers_close(void)
{
    close(D1.fd);
    close(D2.fd);
    D1.fd = D2.fd = 0;
}

/* 32 MiB one way, 8 MiB the other, both checked by hash; both half-closes
 * propagate and the splice ends cleanly. */
static void test_fd_large(void)
{
    splice_t x;
    int x1, y2;
    make_fd_splice(&x, 0, 0, &x1, &y2);
    drv_init(&D1, x1, 32u << 20, 1);
    drv_init(&D2, y2, 8u << 20, 2);
    NB_CHECK(run_until(&x.done, 30000));
    NB_CHECK_EQ_INT(x.err, 0);
    run_for(100);
    NB_CHECK(D1.eof && D2.eof);
    NB_CHECK_EQ_INT(D2.got, 32u << 20);
    NB_CHECK_EQ_INT(D1.got, 8u << 20);
    NB_CHECK(hashes_equal(&D1, &D2));
    NB_CHECK(hashes_equal(&D2, &D1));
    run_until(&x.closed, 1000);
    run_for(20);
    NB_CHECK_EQ_INT(x.closed, 2);
    NB_CHECK_EQ_INT(x.count, 1);
    drivers_close();
}

/* Half-close one way: the other direction keeps flowing after it. */
static void test_fd_half_close(void)
{
    splice_t x;
    int x1, y2;
    make_fd_splice(&x, 0, 0, &x1, &y2);
    drv_init(&D1, x1, 1000, 3);
    drv_init(&D2, y2, 0, 4);
    D2.shut_when_sent = 0;
    run_for(200);
    NB_CHECK(D2.eof);  /* x1's FIN reached y2 */
    NB_CHECK(!D1.eof); /* y2 still open */
    NB_CHECK(!x.done);
    D2.to_send = 3u << 20; /* now y2 answers, then closes */
    D2.shut_when_sent = 1;
    NB_CHECK(run_until(&x.done, 10000));
    NB_CHECK_EQ_INT(x.err, 0);
    run_for(50);
    NB_CHECK(D1.eof);
    NB_CHECK_EQ_INT(D1.got, 3u << 20);
    NB_CHECK(hashes_equal(&D2, &D1));
    NB_CHECK(hashes_equal(&D1, &D2));
    run_until(&x.closed, 1000);
    run_for(20);
    NB_CHECK_EQ_INT(x.closed, 2);
    drivers_close();
}

/* A reader that does not read: the splice stops reading its source, and
 * what it holds stays near the high-water mark. Then the reader catches
 * up and everything arrives intact. */
static void test_fd_backpressure(void)
{
    splice_t x;
    int x1, y2;
    make_fd_splice(&x, 128 * 1024, 32 * 1024, &x1, &y2);
    drv_init(&D1, x1, 64u << 20, 5);
    drv_init(&D2, y2, 0, 6);
    D2.reading = 0;
    size_t maxq = 0;
    for (int i = 0; i < 300; i++) {
        run_for(2);
        size_t q = nb_stream_queued(x.b);
        if (q > maxq)
            maxq = q;
    }
    NB_CHECK(D1.sent < (16u << 20)); /* stalled well short of 64 MiB */
    NB_CHECK(maxq > 0);
    NB_CHECK(maxq <= 128 * 1024 + 64 * 1024); /* the mark plus one read */
    D2.reading = 1;
    NB_CHECK(run_until(&x.done, 30000));
    NB_CHECK_EQ_INT(x.err, 0);
    NB_CHECK_EQ_INT(D2.got, 64u << 20);
    NB_CHECK(hashes_equal(&D1, &D2));
    run_until(&x.closed, 1000);
    run_for(20);
    drivers_close();
}

/* One end vanishes in mid-transfer: the splice reports an error once. */
static void test_fd_error(void)
{
    splice_t x;
    int x1, y2;
    make_fd_splice(&x, 0, 0, &x1, &y2);
    drv_init(&D1, x1, 64u << 20, 7);
    drv_init(&D2, y2, 0, 8);
    D2.reading = 0;
    run_for(100);
    NB_CHECK(!x.done);
    close(D2.fd); /* with unread bytes: the splice's writes fail */
    D2.fd = -1;
    NB_CHECK(run_until(&x.done, 5000));
    NB_CHECK(x.err < 0);
    NB_CHECK(x.failed == x.b);
    run_until(&x.closed, 1000);
    run_for(20);
    NB_CHECK_EQ_INT(x.closed, 2);
    NB_CHECK_EQ_INT(x.count, 1);
    close(D1.fd);
    D1.fd = D2.fd = 0;
}

/* ---- over nbmux ---- */

static nb_muxsess_t *hs, *gs;
static int h_up, g_up;
static splice_t GX;  /* guest: mux stream <-> y1 */
static int guest_fd; /* y1, for the next stream the guest accepts */

static void on_up(nb_muxsess_t *s, void *ud)
{
    (*(int *)ud)++;
}

static int guest_open(nb_muxsess_t *s, nb_muxsess_stream_t *st, const char *svc, nb_iov_t args,
                      void *ud)
{
    memset(&GX, 0, sizeof GX);
    int r = nb_stream_mux_new(loop, st, NB_MUX_CHAN_STDIO, NULL, &GX.a);
    if (r < 0)
        return r;
    pipe_stream(guest_fd, &GX.b);
    nb_splice_opts_t o = {.on_done = on_done, .ud = &GX};
    nb_stream_splice(GX.a, GX.b, &o, NULL);
    return nb_muxsess_stream_accept(st);
}

static void make_sessions(void)
{
    nb_muxsess_opts_t o;
    h_up = g_up = 0;
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_HOST);
    o.on_up = on_up;
    o.ud = &h_up;
    NB_CHECK_EQ_INT(nb_muxsess_new(loop, &o, key, &hs), 0);
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_GUEST);
    o.on_up = on_up;
    o.on_open = guest_open;
    o.ud = &g_up;
    NB_CHECK_EQ_INT(nb_muxsess_new(loop, &o, key, &gs), 0);
    int sv[2];
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    NB_CHECK_EQ_INT(nb_muxsess_attach_fd(hs, sv[0]), 0);
    NB_CHECK_EQ_INT(nb_muxsess_attach_fd(gs, sv[1]), 0);
    NB_CHECK(run_until(&g_up, 5000));
    NB_CHECK(run_until(&h_up, 5000));
}

static void free_sessions(void)
{
    nb_muxsess_free(hs);
    nb_muxsess_free(gs);
    hs = gs = NULL;
    run_for(50);
}

/* x1 <-> [x2 | host splice | mux] ... [mux | guest splice | y1] <-> y2 */
static void make_mux_splice(splice_t *hx, int *x1, int *y2)
{
    int a[2], b[2];
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
    guest_fd = b[0];
    memset(hx, 0, sizeof *hx);
    nb_muxsess_stream_t *st;
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "pipe", nb_iov("", 0), NULL, NULL, &st), 0);
    NB_CHECK_EQ_INT(nb_stream_mux_new(loop, st, NB_MUX_CHAN_STDIO, NULL, &hx->a), 0);
    pipe_stream(a[1], &hx->b);
    nb_splice_opts_t o = {.on_done = on_done, .ud = hx};
    NB_CHECK_EQ_INT(nb_stream_splice(hx->a, hx->b, &o, NULL), 0);
    *x1 = a[0];
    *y2 = b[1];
}

static void test_mux_large(void)
{
    splice_t hx;
    int x1, y2;
    make_sessions();
    make_mux_splice(&hx, &x1, &y2);
    drv_init(&D1, x1, 24u << 20, 9);
    drv_init(&D2, y2, 6u << 20, 10);
    NB_CHECK(run_until(&hx.done, 30000));
    NB_CHECK(run_until(&GX.done, 5000));
    NB_CHECK_EQ_INT(hx.err, 0);
    NB_CHECK_EQ_INT(GX.err, 0);
    run_for(50);
    NB_CHECK(D1.eof && D2.eof);
    NB_CHECK_EQ_INT(D2.got, 24u << 20);
    NB_CHECK_EQ_INT(D1.got, 6u << 20);
    NB_CHECK(hashes_equal(&D1, &D2));
    NB_CHECK(hashes_equal(&D2, &D1));
    run_for(50);
    NB_CHECK_EQ_INT(hx.closed, 2);
    NB_CHECK_EQ_INT(GX.closed, 2);
    nb_muxsess_stats_t st;
    nb_muxsess_stats(hs, &st);
    NB_CHECK_EQ_INT(st.streams, 0);
    drivers_close();
    free_sessions();
}

/* Half-close through the mux, guest side first, then a slow reader on
 * the host side: the guest's splice stops at the window. */
static void test_mux_half_close_backpressure(void)
{
    splice_t hx;
    int x1, y2;
    make_sessions();
    make_mux_splice(&hx, &x1, &y2);
    drv_init(&D1, x1, 0, 11);
    drv_init(&D2, y2, 0, 12);
    D1.shut_when_sent = 0;
    D2.shut_when_sent = 1; /* y2 closes its sending side at once */
    D1.reading = 0;        /* and x1 reads nothing for now */
    run_for(200);
    NB_CHECK(!D1.eof);
    D1.reading = 1;
    run_for(200);
    NB_CHECK(D1.eof); /* y2's FIN crossed the mux */
    D1.reading = 0;
    /* x1 -> y2 with y2 not reading: bounded by marks and windows. */
    D2.reading = 0;
    D1.to_send = 64u << 20;
    D1.shut_when_sent = 1;
    run_for(1000);
    NB_CHECK(D1.sent < (24u << 20));
    NB_CHECK(nb_stream_queued(GX.b) <= NB_STREAM_HIWAT + 64 * 1024);
    D2.reading = 1;
    NB_CHECK(run_until(&hx.done, 30000));
    NB_CHECK(run_until(&GX.done, 5000));
    NB_CHECK_EQ_INT(hx.err, 0);
    NB_CHECK_EQ_INT(GX.err, 0);
    run_for(50);
    NB_CHECK_EQ_INT(D2.got, 64u << 20);
    NB_CHECK(hashes_equal(&D1, &D2));
    drivers_close();
    free_sessions();
}

/* The host's side dies mid-transfer: the host splice fails, resets the
 * mux stream, and the guest's splice fails too. */
static void test_mux_error(void)
{
    splice_t hx;
    int x1, y2;
    make_sessions();
    make_mux_splice(&hx, &x1, &y2);
    drv_init(&D1, x1, 0, 13);
    drv_init(&D2, y2, 64u << 20, 14);
    D1.reading = 0;
    run_for(300);
    NB_CHECK(!hx.done && !GX.done);
    close(D1.fd);
    D1.fd = -1;
    NB_CHECK(run_until(&hx.done, 5000));
    NB_CHECK(run_until(&GX.done, 5000));
    NB_CHECK(hx.err < 0);
    NB_CHECK(GX.err < 0);
    NB_CHECK(GX.failed == GX.a); /* the RST arrived on the guest's mux stream */
    run_for(50);
    NB_CHECK_EQ_INT(hx.closed, 2);
    NB_CHECK_EQ_INT(GX.closed, 2);
    close(D2.fd);
    D1.fd = D2.fd = 0;
    free_sessions();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 1;
    randombytes_buf(key, sizeof key);
    loop = uv_default_loop();
    NB_RUN(test_fd_large);
    NB_RUN(test_fd_half_close);
    NB_RUN(test_fd_backpressure);
    NB_RUN(test_fd_error);
    NB_RUN(test_mux_large);
    NB_RUN(test_mux_half_close_backpressure);
    NB_RUN(test_mux_error);
    uv_run(loop, UV_RUN_NOWAIT);
    NB_CHECK_EQ_INT(uv_loop_close(loop), 0);
    NB_TEST_MAIN_END();
}
