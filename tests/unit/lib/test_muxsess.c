/* Unit tests for src/lib/muxsess.c: a host and a guest session on one
 * loop, connected by a socketpair. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "lib/err.h"
#include "lib/muxsess.h"
#include "nbtest.h"

static uv_loop_t *loop;
static uint8_t key[32];

typedef struct {
    int up, down, down_err;
    char reason[400];
    int opens;
} side_t;

static side_t H, G;

/* Runs the loop until *flag is non-zero or ms elapse. */
static int run_until(const int *flag, uint64_t ms)
{
    uint64_t end = uv_now(loop) + ms;
    while (!*flag && uv_now(loop) < end) {
        uv_update_time(loop);
        uv_run(loop, UV_RUN_NOWAIT);
        if (!*flag)
            usleep(200);
    }
    return *flag;
}

static int run_until_ge(const int *v, int want, uint64_t ms)
{
    uint64_t end = uv_now(loop) + ms;
    while (*v < want && uv_now(loop) < end) {
        uv_update_time(loop);
        uv_run(loop, UV_RUN_NOWAIT);
        if (*v < want)
            usleep(200);
    }
    return *v >= want;
}

static void run_for(uint64_t ms)
{
    int never = 0;
    run_until(&never, ms);
}

static void on_up(nb_muxsess_t *s, void *ud)
{
    ((side_t *)ud)->up++;
}

static void on_down(nb_muxsess_t *s, int err, const char *reason, void *ud)
{
    side_t *x = ud;
    x->down++;
    x->down_err = err;
    snprintf(x->reason, sizeof x->reason, "%s", reason);
}

/* ---- guest services ---- */

typedef struct {
    nb_muxsess_stream_t *st;
    int closed, close_err, fin;
    uint64_t got;
    char ctl[128];
    nb_buf_t data;
} peer_t;

static peer_t gpeer[8];
static int ngpeer;

static void echo_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    peer_t *p = ud;
    p->got += d.len;
    if (chan == NB_MUX_CHAN_CTL) {
        snprintf(p->ctl, sizeof p->ctl, "%.*s", (int)d.len, (const char *)d.p);
        nb_muxsess_stream_write(st, NB_MUX_CHAN_CTL, d.p, d.len);
    } else {
        nb_muxsess_stream_write(st, chan, d.p, d.len);
    }
    nb_muxsess_stream_consume(st, d.len);
}

static void echo_fin(nb_muxsess_stream_t *st, void *ud)
{
    ((peer_t *)ud)->fin = 1;
    nb_muxsess_stream_fin(st);
}

static void peer_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    peer_t *p = ud;
    p->closed = 1;
    p->close_err = err;
}

static const nb_muxsess_stream_cbs_t echo_cbs = {
    .on_data = echo_data, .on_fin = echo_fin, .on_close = peer_close};

/* Never consumes: the flow-control victim. */
static void stuck_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    ((peer_t *)ud)->got += d.len;
}

static const nb_muxsess_stream_cbs_t stuck_cbs = {.on_data = stuck_data, .on_close = peer_close};

static int guest_open(nb_muxsess_t *s, nb_muxsess_stream_t *st, const char *svc, nb_iov_t args,
                      void *ud)
{
    G.opens++;
    if (ngpeer >= 8)
        return -EBUSY;
    peer_t *p = &gpeer[ngpeer++];
    memset(p, 0, sizeof *p);
    p->st = st;
    if (!strcmp(svc, "echo")) {
        nb_muxsess_stream_set_cbs(st, &echo_cbs, p);
        return nb_muxsess_stream_accept(st);
    }
    if (!strcmp(svc, "stuck")) {
        nb_muxsess_stream_set_cbs(st, &stuck_cbs, p);
        return nb_muxsess_stream_accept(st);
    }
    ngpeer--;
    return NB_ENOTFOUND;
}

/* ---- host streams ---- */

typedef struct {
    nb_muxsess_stream_t *st;
    int ok, closed, close_err, fin, drains;
    uint32_t close_code;
    char close_msg[300];
    nb_buf_t data;
    char ctl[128];
} client_t;

static void cl_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    client_t *c = ud;
    if (chan == NB_MUX_CHAN_CTL)
        snprintf(c->ctl, sizeof c->ctl, "%.*s", (int)d.len, (const char *)d.p);
    else
        nb_buf_append(&c->data, d.p, d.len);
}

static void cl_ok(nb_muxsess_stream_t *st, void *ud)
{
    ((client_t *)ud)->ok = 1;
}

static void cl_fin(nb_muxsess_stream_t *st, void *ud)
{
    ((client_t *)ud)->fin = 1;
}

static void cl_drain(nb_muxsess_stream_t *st, void *ud)
{
    ((client_t *)ud)->drains++;
}

static void cl_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    client_t *c = ud;
    c->closed = 1;
    c->close_err = err;
    c->close_code = code;
    snprintf(c->close_msg, sizeof c->close_msg, "%s", msg);
    c->st = NULL;
}

static const nb_muxsess_stream_cbs_t cl_cbs = {.on_data = cl_data,
                                               .on_open_ok = cl_ok,
                                               .on_fin = cl_fin,
                                               .on_drain = cl_drain,
                                               .on_close = cl_close,
                                               .auto_consume = 1};

static nb_muxsess_t *hs, *gs;

static void make_pair(const uint8_t *gkey, uint32_t handshake_ms)
{
    nb_muxsess_opts_t o;
    memset(&H, 0, sizeof H);
    memset(&G, 0, sizeof G);
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_HOST);
    o.on_up = on_up;
    o.on_down = on_down;
    o.ud = &H;
    o.handshake_ms = handshake_ms;
    NB_CHECK_EQ_INT(nb_muxsess_new(loop, &o, key, &hs), 0);
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_GUEST);
    o.on_up = on_up;
    o.on_down = on_down;
    o.on_open = guest_open;
    o.ud = &G;
    o.handshake_ms = handshake_ms;
    NB_CHECK_EQ_INT(nb_muxsess_new(loop, &o, gkey, &gs), 0);
}

static void connect_pair(void)
{
    int sv[2];
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    NB_CHECK_EQ_INT(nb_muxsess_attach_fd(hs, sv[0]), 0);
    NB_CHECK_EQ_INT(nb_muxsess_attach_fd(gs, sv[1]), 0);
}

static void free_pair(void)
{
    nb_muxsess_free(hs);
    nb_muxsess_free(gs);
    hs = gs = NULL;
    run_for(50);
    for (int i = 0; i < ngpeer; i++)
        nb_buf_free(&gpeer[i].data);
    ngpeer = 0;
}

static void test_handshake_and_echo(void)
{
    make_pair(key, 5000);
    connect_pair();
    int both = 0;
    while (!both && run_until(&H.up, 2000))
        both = run_until(&G.up, 2000);
    NB_CHECK(nb_muxsess_is_up(hs) && nb_muxsess_is_up(gs));

    client_t c = {0};
    nb_buf_init(&c.data, 8u << 20);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "echo", NB_IOV_STR("{}"), &cl_cbs, &c, &c.st), 0);
    NB_CHECK_EQ_INT(nb_muxsess_stream_id(c.st), 1);
    /* 3 MiB in 1000-byte writes (coalesced) and one big write. */
    uint8_t *big = malloc(2u << 20);
    for (size_t i = 0; i < (2u << 20); i++)
        big[i] = (uint8_t)(i % 251);
    size_t sent = 0;
    while (sent < (1u << 20)) {
        NB_CHECK_EQ_INT(nb_muxsess_stream_write(c.st, 0, big + sent, 1000), 0);
        sent += 1000;
        if (!nb_muxsess_stream_writable(c.st))
            run_for(2);
    }
    NB_CHECK_EQ_INT(nb_muxsess_stream_write(c.st, 0, big + sent, (2u << 20) - sent), 0);
    NB_CHECK_EQ_INT(nb_muxsess_stream_write(c.st, NB_MUX_CHAN_CTL, "{\"x\":1}", 7), 0);
    NB_CHECK_EQ_INT(nb_muxsess_stream_fin(c.st), 0);
    NB_CHECK_EQ_INT(nb_muxsess_stream_write(c.st, 0, "late", 4), NB_ESTATE);
    run_until(&c.closed, 5000);
    NB_CHECK(c.ok && c.fin && c.closed);
    NB_CHECK_EQ_INT(c.close_err, 0);
    NB_CHECK_EQ_INT(c.data.len, 2u << 20);
    NB_CHECK(c.data.len == (2u << 20) && memcmp(c.data.p, big, c.data.len) == 0);
    NB_CHECK_STR(c.ctl, "{\"x\":1}");
    run_for(20);
    NB_CHECK(ngpeer == 1 && gpeer[0].closed && gpeer[0].close_err == 0);
    nb_muxsess_stats_t hst, gst;
    nb_muxsess_stats(hs, &hst);
    nb_muxsess_stats(gs, &gst);
    NB_CHECK_EQ_INT(hst.streams, 0);
    NB_CHECK_EQ_INT(gst.streams, 0);
    NB_CHECK_EQ_INT(gst.unconsumed, 0);

    /* Unknown service: OPEN_ERR with NO_SERVICE. */
    client_t u = {0};
    nb_buf_init(&u.data, 1024);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "nosuch", NB_IOV_STR(""), &cl_cbs, &u, &u.st), 0);
    NB_CHECK_EQ_INT(nb_muxsess_stream_id(u.st), 3);
    run_until(&u.closed, 2000);
    NB_CHECK_EQ_INT(u.close_err, NB_ENOTFOUND);
    NB_CHECK_EQ_INT(u.close_code, NB_MUX_E_NO_SERVICE);
    NB_CHECK(!u.ok);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "Bad", NB_IOV_STR(""), &cl_cbs, &u, &u.st), NB_EINVAL);

    free(big);
    nb_buf_free(&c.data);
    nb_buf_free(&u.data);
    free_pair();
}

static void test_wrong_key(void)
{
    uint8_t k2[32];
    memcpy(k2, key, 32);
    k2[0] ^= 0x80;
    make_pair(k2, 5000);
    connect_pair();
    run_until(&H.down, 2000);
    run_until(&G.down, 2000);
    NB_CHECK(!H.up && !G.up);
    NB_CHECK_EQ_INT(H.down_err, NB_EAUTH);
    NB_CHECK(strstr(H.reason, "authentication failed") != NULL);
    /* The guest learns it through the host's GOAWAY(AUTH). */
    NB_CHECK_EQ_INT(G.down_err, NB_EAUTH);
    NB_CHECK(strstr(G.reason, "GOAWAY AUTH") != NULL);
    free_pair();
}

static void test_flow_control(void)
{
    make_pair(key, 5000);
    connect_pair();
    run_until(&G.up, 2000);
    client_t stuck = {0}, fast = {0};
    nb_buf_init(&stuck.data, 1024);
    nb_buf_init(&fast.data, 16u << 20);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "stuck", NB_IOV_STR(""), &cl_cbs, &stuck, &stuck.st), 0);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "echo", NB_IOV_STR(""), &cl_cbs, &fast, &fast.st), 0);
    static uint8_t blk[64 * 1024];
    memset(blk, 'z', sizeof blk);
    size_t fast_sent = 0, stuck_sent = 0;
    uint64_t end = uv_now(loop) + 5000;
    /* Keep both writers busy; only the echo stream may make progress. */
    while (fast_sent < (8u << 20) && uv_now(loop) < end) {
        while (fast_sent < (8u << 20) && nb_muxsess_stream_writable(fast.st) &&
               nb_muxsess_stream_write(fast.st, 0, blk, sizeof blk) == 0)
            fast_sent += sizeof blk;
        if (nb_muxsess_stream_write(stuck.st, 0, blk, sizeof blk) == 0)
            stuck_sent += sizeof blk;
        run_for(1);
    }
    NB_CHECK_EQ_INT(fast_sent, 8u << 20);
    nb_muxsess_stream_fin(fast.st);
    run_until(&fast.closed, 5000);
    NB_CHECK_EQ_INT(fast.data.len, 8u << 20);
    NB_CHECK(fast.drains > 0);
    /* The stuck stream holds at most one window at the receiver and its
     * sender's queue stops at the cap. */
    while (nb_muxsess_stream_write(stuck.st, 0, blk, sizeof blk) == 0)
        stuck_sent += sizeof blk;
    NB_CHECK_EQ_INT(nb_muxsess_stream_write(stuck.st, 0, blk, sizeof blk), NB_ETOOBIG);
    run_for(50);
    peer_t *sp = &gpeer[0];
    NB_CHECK_EQ_INT(sp->got, NB_MUX_INITIAL_WINDOW);
    NB_CHECK(nb_muxsess_stream_queued(stuck.st) <= (4u << 20));
    NB_CHECK_EQ_INT(stuck_sent, (4u << 20) + NB_MUX_INITIAL_WINDOW);
    nb_muxsess_stats_t gst;
    nb_muxsess_stats(gs, &gst);
    NB_CHECK_EQ_INT(gst.unconsumed, NB_MUX_INITIAL_WINDOW);
    /* Reset: the guest's stream ends with the host's code. */
    nb_muxsess_stream_reset(stuck.st, NB_MUX_E_CANCEL, "enough");
    run_until(&sp->closed, 2000);
    NB_CHECK_EQ_INT(sp->close_err, -ECANCELED);
    nb_muxsess_stats(gs, &gst);
    NB_CHECK_EQ_INT(gst.unconsumed, 0);
    NB_CHECK_EQ_INT(gst.streams, 0);
    nb_buf_free(&stuck.data);
    nb_buf_free(&fast.data);
    free_pair();
}

/* Streams stuck at zero credit may hold the whole send budget; the
 * others must still make progress (one chunk at a time). */
static void test_send_budget(void)
{
    make_pair(key, 5000);
    connect_pair();
    run_until(&G.up, 2000);
    enum { NSTUCK = 7 };
    static client_t stuck[NSTUCK];
    static uint8_t blk[64 * 1024];
    memset(blk, 's', sizeof blk);
    for (int i = 0; i < NSTUCK; i++) {
        memset(&stuck[i], 0, sizeof stuck[i]);
        nb_buf_init(&stuck[i].data, 1024);
        NB_CHECK_EQ_INT(
            nb_muxsess_open(hs, "stuck", NB_IOV_STR(""), &cl_cbs, &stuck[i], &stuck[i].st), 0);
    }
    run_for(20);
    /* Each stuck stream queues 3 MiB: 21 MiB, above the 16 MiB budget. */
    for (int i = 0; i < NSTUCK; i++)
        for (int k = 0; k < 48; k++)
            NB_CHECK_EQ_INT(nb_muxsess_stream_write(stuck[i].st, 0, blk, sizeof blk), 0);
    run_for(50);
    nb_muxsess_stats_t hst;
    nb_muxsess_stats(hs, &hst);
    NB_CHECK(hst.queued > (16u << 20));
    client_t fast = {0};
    nb_buf_init(&fast.data, 8u << 20);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "echo", NB_IOV_STR(""), &cl_cbs, &fast, &fast.st), 0);
    run_until(&fast.ok, 2000);
    size_t sent = 0;
    uint64_t end = uv_now(loop) + 10000;
    while (sent < (4u << 20) && uv_now(loop) < end) {
        if (nb_muxsess_stream_writable(fast.st)) {
            NB_CHECK_EQ_INT(nb_muxsess_stream_write(fast.st, 0, blk, sizeof blk), 0);
            sent += sizeof blk;
            /* Over budget, a stream may hold one chunk and no more. */
            NB_CHECK(!nb_muxsess_stream_writable(fast.st));
        }
        run_for(1);
    }
    NB_CHECK_EQ_INT(sent, 4u << 20);
    nb_muxsess_stream_fin(fast.st);
    run_until(&fast.closed, 5000);
    NB_CHECK_EQ_INT(fast.data.len, 4u << 20);
    NB_CHECK(fast.drains >= 60);
    for (int i = 0; i < NSTUCK; i++)
        nb_buf_free(&stuck[i].data);
    nb_buf_free(&fast.data);
    free_pair();
}

/* The receiver stops reading the transport above its budget and must
 * resume once the application consumes. */
static peer_t *lazy;

static void lazy_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    ((peer_t *)ud)->got += d.len; /* consumed later, by the test */
}

static const nb_muxsess_stream_cbs_t lazy_cbs = {.on_data = lazy_data, .on_close = peer_close};

static int lazy_open(nb_muxsess_t *s, nb_muxsess_stream_t *st, const char *svc, nb_iov_t args,
                     void *ud)
{
    lazy = &gpeer[ngpeer++];
    memset(lazy, 0, sizeof *lazy);
    lazy->st = st;
    nb_muxsess_stream_set_cbs(st, &lazy_cbs, lazy);
    return nb_muxsess_stream_accept(st);
}

static void test_read_pause_resume(void)
{
    nb_muxsess_opts_t o;
    memset(&H, 0, sizeof H);
    memset(&G, 0, sizeof G);
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_HOST);
    o.on_up = on_up;
    o.ud = &H;
    NB_CHECK_EQ_INT(nb_muxsess_new(loop, &o, key, &hs), 0);
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_GUEST);
    o.on_up = on_up;
    o.on_open = lazy_open;
    o.ud = &G;
    o.recv_budget = 100 * 1024; /* below one window: reads pause */
    NB_CHECK_EQ_INT(nb_muxsess_new(loop, &o, key, &gs), 0);
    connect_pair();
    run_until(&G.up, 2000);
    client_t c = {0};
    nb_buf_init(&c.data, 1024);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "lazy", NB_IOV_STR(""), &cl_cbs, &c, &c.st), 0);
    static uint8_t blk[64 * 1024];
    size_t total = 4u << 20, sent = 0;
    uint64_t consumed = 0, end = uv_now(loop) + 10000;
    int paused_seen = 0;
    while (lazy == NULL || (consumed < total && uv_now(loop) < end)) {
        while (sent < total && nb_muxsess_stream_writable(c.st) &&
               nb_muxsess_stream_write(c.st, 0, blk, sizeof blk) == 0)
            sent += sizeof blk;
        run_for(2);
        if (!lazy)
            continue;
        nb_muxsess_stats_t gst;
        nb_muxsess_stats(gs, &gst);
        if (gst.unconsumed > o.recv_budget) {
            paused_seen = 1;
            run_for(20); /* stays paused: nothing more arrives */
            NB_CHECK(lazy->got - consumed <= NB_MUX_INITIAL_WINDOW);
        }
        nb_muxsess_stream_consume(lazy->st, lazy->got - consumed);
        consumed = lazy->got;
    }
    NB_CHECK(paused_seen);
    NB_CHECK_EQ_INT(consumed, total);
    nb_buf_free(&c.data);
    lazy = NULL;
    free_pair();
}

static void test_reattach(void)
{
    make_pair(key, 5000);
    connect_pair();
    run_until(&G.up, 2000);
    client_t c = {0};
    nb_buf_init(&c.data, 1024);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "stuck", NB_IOV_STR(""), &cl_cbs, &c, &c.st), 0);
    run_until(&c.ok, 2000);
    /* Host goes away: both ends see the teardown, the open stream closes. */
    nb_muxsess_close(hs, NB_MUX_E_SHUTDOWN, "restarting");
    NB_CHECK(c.closed);         /* from inside nb_muxsess_close */
    NB_CHECK_EQ_INT(H.down, 0); /* on_down is never called inside the call */
    run_until(&G.down, 2000);
    run_until(&H.down, 2000);
    NB_CHECK(strstr(G.reason, "restarting") != NULL);
    NB_CHECK(gpeer[0].closed);
    /* A new transport: a fresh handshake, ids start again. */
    connect_pair();
    run_until_ge(&G.up, 2, 2000);
    run_until_ge(&H.up, 2, 2000);
    NB_CHECK_EQ_INT(G.up, 2);
    client_t d = {0};
    nb_buf_init(&d.data, 1024);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "echo", NB_IOV_STR(""), &cl_cbs, &d, &d.st), 0);
    NB_CHECK_EQ_INT(nb_muxsess_stream_id(d.st), 1);
    nb_muxsess_stream_write(d.st, 0, "ping", 4);
    nb_muxsess_stream_fin(d.st);
    run_until(&d.closed, 2000);
    NB_CHECK_EQ_INT(d.data.len, 4);
    NB_CHECK_EQ_INT(d.close_err, 0);
    /* Free with a live stream: it is closed and freed too. */
    client_t e = {0};
    nb_buf_init(&e.data, 1024);
    NB_CHECK_EQ_INT(nb_muxsess_open(hs, "stuck", NB_IOV_STR(""), &cl_cbs, &e, &e.st), 0);
    run_until(&e.ok, 2000);
    nb_muxsess_stream_write(e.st, 0, "data", 4);
    nb_buf_free(&c.data);
    nb_buf_free(&d.data);
    free_pair();
    NB_CHECK(e.closed);
    nb_buf_free(&e.data);
}

static void test_handshake_timeout(void)
{
    make_pair(key, 150);
    int sv[2];
    NB_CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    NB_CHECK_EQ_INT(nb_muxsess_attach_fd(gs, sv[0]), 0);
    NB_CHECK_EQ_INT(nb_muxsess_attach_fd(gs, dup(sv[0])), NB_ESTATE); /* already attached */
    run_until(&G.down, 2000);
    NB_CHECK_EQ_INT(G.down_err, NB_ETIMEOUT);
    NB_CHECK(strstr(G.reason, "handshake not completed") != NULL);
    close(sv[1]);
    free_pair();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 1;
    randombytes_buf(key, sizeof key);
    loop = uv_default_loop();
    NB_RUN(test_handshake_and_echo);
    NB_RUN(test_wrong_key);
    NB_RUN(test_flow_control);
    NB_RUN(test_send_budget);
    NB_RUN(test_read_pause_resume);
    NB_RUN(test_reattach);
    NB_RUN(test_handshake_timeout);
    uv_run(loop, UV_RUN_NOWAIT);
    NB_CHECK_EQ_INT(uv_loop_close(loop), 0);
    NB_TEST_MAIN_END();
}
