/* QMP client against a fake QMP server in the same libuv loop, over a
 * socketpair (and once over a real Unix socket path). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "daemon/vm/qmp.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "nbtest.h"

#define GREETING                                                                                   \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "              \
    "\"package\": \"Debian\"}, \"capabilities\": [\"oob\"]}}\r\n"

/* ---- fake server ---- */

typedef struct srv srv_t;
struct srv {
    uv_pipe_t pipe;
    int open;
    nb_buf_t in;
    void (*on_msg)(srv_t *s, json_t *msg);
    int greet;       /* send the greeting on start */
    int answer_caps; /* answer qmp_capabilities */
    json_t *held[8]; /* commands held back for out-of-order replies */
    int nheld;
    int ncmds; /* commands seen (qmp_capabilities excluded) */
    char last_cmd[64];
};

static void srv_closed(uv_handle_t *h)
{
    srv_t *s = h->data;
    s->open = 0;
}

static void srv_close(srv_t *s)
{
    if (s->open && !uv_is_closing((uv_handle_t *)&s->pipe))
        uv_close((uv_handle_t *)&s->pipe, srv_closed);
}

static void srv_send(srv_t *s, const char *line)
{
    uv_buf_t b = uv_buf_init((char *)line, (unsigned)strlen(line));
    int n = uv_try_write((uv_stream_t *)&s->pipe, &b, 1);
    NB_CHECK_EQ_INT(n, (int)strlen(line));
}

static void srv_reply(srv_t *s, json_t *cmd, const char *fmt_ret)
{
    char line[512];
    snprintf(line, sizeof(line), "{\"return\": %s, \"id\": %lld}\n", fmt_ret,
             (long long)json_integer_value(json_object_get(cmd, "id")));
    srv_send(s, line);
}

static void srv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char buf[65536];
    *b = uv_buf_init(buf, sizeof(buf));
}

static void srv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    srv_t *s = st->data;
    if (n < 0) {
        srv_close(s);
        return;
    }
    NB_CHECK(nb_buf_append(&s->in, b->base, (size_t)n) == 0);
    for (;;) {
        uint8_t *nl = memchr(s->in.p, '\n', s->in.len);
        if (!nl)
            break;
        size_t len = (size_t)(nl - s->in.p);
        json_t *msg = NULL;
        NB_CHECK(nb_json_parse(nb_iov(s->in.p, len), &msg, NULL, 0) == 0);
        nb_buf_consume(&s->in, len + 1);
        if (!msg)
            continue;
        const char *ex = nb_json_str(msg, "execute");
        NB_CHECK(ex != NULL);
        NB_CHECK(json_is_integer(json_object_get(msg, "id")));
        if (ex && strcmp(ex, "qmp_capabilities") == 0) {
            if (s->answer_caps)
                srv_reply(s, msg, "{}");
        } else if (ex) {
            s->ncmds++;
            snprintf(s->last_cmd, sizeof(s->last_cmd), "%s", ex);
            if (s->on_msg)
                s->on_msg(s, msg);
        }
        json_decref(msg);
        if (!s->open)
            break;
    }
}

static void srv_start(uv_loop_t *loop, srv_t *s, int fd)
{
    nb_buf_init(&s->in, 1 << 20);
    uv_pipe_init(loop, &s->pipe, 0);
    s->pipe.data = s;
    NB_CHECK(uv_pipe_open(&s->pipe, fd) == 0);
    s->open = 1;
    uv_read_start((uv_stream_t *)&s->pipe, srv_alloc, srv_read);
    if (s->greet)
        srv_send(s, GREETING);
}

static void srv_done(srv_t *s)
{
    for (int i = 0; i < s->nheld; i++)
        json_decref(s->held[i]);
    nb_buf_free(&s->in);
}

/* ---- client side bookkeeping ---- */

typedef struct {
    int ready;
    int closed;
    int close_r;
    int nevents;
    char events[8][32];
    int order[8]; /* which command completed n-th */
    int ndone;
    nb_qmp_t *q;
    srv_t *srv;
    char version[16];
} ctx_t;

typedef struct {
    ctx_t *c;
    int idx;
    int r;
    int called;
    char ret[128];
    char err_class[64];
} call_t;

static void on_ready(nb_qmp_t *q, int r, void *ud)
{
    ctx_t *c = ud;
    NB_CHECK_EQ_INT(r, 0);
    NB_CHECK(nb_qmp_is_ready(q));
    snprintf(c->version, sizeof(c->version), "%s", nb_qmp_version(q));
    c->ready++;
}

static void on_close(nb_qmp_t *q, int r, void *ud)
{
    ctx_t *c = ud;
    c->closed++;
    c->close_r = r;
    if (c->srv)
        srv_close(c->srv);
}

static void on_event(nb_qmp_t *q, const char *ev, json_t *data, void *ud)
{
    ctx_t *c = ud;
    if (c->nevents < 8)
        snprintf(c->events[c->nevents], sizeof(c->events[0]), "%s", ev);
    c->nevents++;
}

static void on_reply(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    call_t *k = data;
    k->called++;
    k->r = r;
    if (ret) {
        char *s = json_dumps(ret, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        snprintf(k->ret, sizeof(k->ret), "%s", s ? s : "");
        free(s);
    }
    if (err)
        snprintf(k->err_class, sizeof(k->err_class), "%s",
                 nb_json_str(err, "class") ? nb_json_str(err, "class") : "");
    if (k->c->ndone < 8)
        k->c->order[k->c->ndone] = k->idx;
    k->c->ndone++;
}

static nb_qmp_opts_t opts_for(ctx_t *c, uint64_t timeout_ms, size_t max_line)
{
    nb_qmp_opts_t o = {max_line, timeout_ms, 0, on_event, on_ready, on_close, c};
    return o;
}

static void run_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(loop), 0);
}

static int pair(int fds[2])
{
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
}

/* ---- tests ---- */

static void finish_after_n(srv_t *s, ctx_t *c, int n)
{
    if (c->ndone >= n) {
        nb_qmp_close(c->q);
        srv_close(s);
    }
}

static ctx_t *g_ctx;

static void hs_on_msg(srv_t *s, json_t *cmd)
{
    srv_reply(s, cmd, "{\"status\": \"running\", \"running\": true}");
}

static void on_reply_then_finish(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    on_reply(q, r, ret, err, data);
    call_t *k = data;
    finish_after_n(k->c->srv, k->c, 1);
}

static void test_handshake_and_command(void)
{
    uv_loop_t loop;
    int fds[2];
    ctx_t c = {0};
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = hs_on_msg};
    call_t k = {.c = &c};
    uv_loop_init(&loop);
    NB_CHECK(pair(fds) == 0);
    c.srv = &s;
    nb_qmp_opts_t o = opts_for(&c, 2000, 0);
    NB_CHECK(nb_qmp_open_fd(&loop, fds[0], &o, &c.q) == 0);
    NB_CHECK(!nb_qmp_is_ready(c.q));
    /* Issued before the handshake: queued, sent after qmp_capabilities. */
    NB_CHECK(nb_qmp_command(c.q, "query-status", NULL, 0, on_reply_then_finish, &k) == 0);
    srv_start(&loop, &s, fds[1]);
    run_loop(&loop);
    NB_CHECK_EQ_INT(c.ready, 1);
    NB_CHECK_EQ_INT(k.called, 1);
    NB_CHECK_EQ_INT(k.r, 0);
    NB_CHECK_STR(k.ret, "{\"running\":true,\"status\":\"running\"}");
    NB_CHECK_STR(s.last_cmd, "query-status");
    NB_CHECK_EQ_INT(c.closed, 0); /* nb_qmp_close does not call on_close */
    srv_done(&s);
}

/* Holds three commands, then answers out of order with events between. */
static void ooo_on_msg(srv_t *s, json_t *cmd)
{
    s->held[s->nheld++] = json_incref(cmd);
    if (s->nheld < 3)
        return;
    srv_send(s, "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n");
    srv_reply(s, s->held[2], "{\"n\": 3}");
    srv_send(s, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 3}, \"event\": \"STOP\"}\r\n");
    srv_reply(s, s->held[0], "{\"n\": 1}");
    char line[256];
    snprintf(line, sizeof(line),
             "{\"id\": %lld, \"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n",
             (long long)json_integer_value(json_object_get(s->held[1], "id")));
    srv_send(s, line);
    srv_send(s, "{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": "
                "\"guest-shutdown\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 4}}\n");
}

static void on_event_close(nb_qmp_t *q, const char *ev, json_t *data, void *ud)
{
    ctx_t *c = ud;
    on_event(q, ev, data, ud);
    if (strcmp(ev, "SHUTDOWN") == 0) {
        NB_CHECK_STR(nb_json_str(data, "reason"), "guest-shutdown");
        nb_qmp_close(c->q);
        srv_close(c->srv);
    }
}

static void test_out_of_order_and_events(void)
{
    uv_loop_t loop;
    int fds[2];
    ctx_t c = {0};
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = ooo_on_msg};
    call_t k[3] = {{.c = &c, .idx = 0}, {.c = &c, .idx = 1}, {.c = &c, .idx = 2}};
    uv_loop_init(&loop);
    NB_CHECK(pair(fds) == 0);
    c.srv = &s;
    nb_qmp_opts_t o = opts_for(&c, 2000, 0);
    o.on_event = on_event_close;
    NB_CHECK(nb_qmp_open_fd(&loop, fds[0], &o, &c.q) == 0);
    srv_start(&loop, &s, fds[1]);
    json_t *args = json_pack("{s:s}", "device", "x,y");
    for (int i = 0; i < 3; i++)
        NB_CHECK(nb_qmp_command(c.q, i == 1 ? "device_del" : "query-x", i == 1 ? args : NULL, 0,
                                on_reply, &k[i]) == 0);
    json_decref(args);
    run_loop(&loop);
    NB_CHECK_EQ_INT(c.ndone, 3);
    NB_CHECK_EQ_INT(c.order[0], 2);
    NB_CHECK_EQ_INT(c.order[1], 0);
    NB_CHECK_EQ_INT(c.order[2], 1);
    NB_CHECK_STR(k[0].ret, "{\"n\":1}");
    NB_CHECK_STR(k[2].ret, "{\"n\":3}");
    NB_CHECK_EQ_INT(k[1].r, NB_EPROTO);
    NB_CHECK_STR(k[1].err_class, "GenericError");
    NB_CHECK_EQ_INT(c.nevents, 3);
    NB_CHECK_STR(c.events[0], "RESUME");
    NB_CHECK_STR(c.events[1], "STOP");
    NB_CHECK_STR(c.events[2], "SHUTDOWN");
    srv_done(&s);
}

/* First command never answered (times out), its late answer arrives with
 * the second command's and is dropped. */
static void to_on_msg(srv_t *s, json_t *cmd)
{
    s->held[s->nheld++] = json_incref(cmd);
    if (s->nheld == 2) {
        srv_reply(s, s->held[0], "{\"late\": true}");
        srv_reply(s, s->held[1], "{\"ok\": true}");
    }
}

static call_t *g_second;

static void on_first_timeout(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    on_reply(q, r, ret, err, data);
    /* Issue a second command from inside the callback. */
    NB_CHECK(nb_qmp_command(q, "second", NULL, 0, on_reply_then_finish, g_second) == 0);
}

static void test_timeout(void)
{
    uv_loop_t loop;
    int fds[2];
    ctx_t c = {0};
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = to_on_msg};
    call_t k1 = {.c = &c, .idx = 1}, k2 = {.c = &c, .idx = 2};
    uv_loop_init(&loop);
    NB_CHECK(pair(fds) == 0);
    c.srv = &s;
    g_second = &k2;
    nb_qmp_opts_t o = opts_for(&c, 2000, 0);
    NB_CHECK(nb_qmp_open_fd(&loop, fds[0], &o, &c.q) == 0);
    srv_start(&loop, &s, fds[1]);
    /* Timers count from the loop's cached time: refresh it so the bound below holds. */
    uv_update_time(&loop);
    uint64_t t0 = uv_hrtime();
    NB_CHECK(nb_qmp_command(c.q, "first", NULL, 60, on_first_timeout, &k1) == 0);
    run_loop(&loop);
    NB_CHECK_EQ_INT(k1.called, 1);
    NB_CHECK_EQ_INT(k1.r, NB_ETIMEOUT);
    NB_CHECK((uv_hrtime() - t0) / 1000000 >= 55);
    NB_CHECK_EQ_INT(k2.called, 1);
    NB_CHECK_EQ_INT(k2.r, 0);
    NB_CHECK_STR(k2.ret, "{\"ok\":true}");
    NB_CHECK_EQ_INT(c.closed, 0);
    srv_done(&s);
}

static void big_on_msg(srv_t *s, json_t *cmd)
{
    char *big = malloc(5000);
    memset(big, 'a', 4999);
    big[4999] = '\0';
    srv_send(s, "{\"return\": \"");
    srv_send(s, big);
    free(big);
}

static void close_on_close(nb_qmp_t *q, int r, void *ud)
{
    ctx_t *c = ud;
    on_close(q, r, ud);
    /* A command after the end fails at once, without a callback. */
    call_t k = {.c = c};
    NB_CHECK_EQ_INT(nb_qmp_command(q, "late", NULL, 0, on_reply, &k), NB_ECLOSED);
    NB_CHECK_EQ_INT(k.called, 0);
    nb_qmp_close(q);
}

static void run_failure(srv_t *s, size_t max_line, uint64_t timeout, int issue, int expect_r,
                        int expect_call_r)
{
    uv_loop_t loop;
    int fds[2];
    ctx_t c = {0};
    call_t k = {.c = &c};
    uv_loop_init(&loop);
    NB_CHECK(pair(fds) == 0);
    c.srv = s;
    nb_qmp_opts_t o = opts_for(&c, timeout, max_line);
    o.on_close = close_on_close;
    NB_CHECK(nb_qmp_open_fd(&loop, fds[0], &o, &c.q) == 0);
    srv_start(&loop, s, fds[1]);
    if (issue)
        NB_CHECK(nb_qmp_command(c.q, "query-status", NULL, 0, on_reply, &k) == 0);
    run_loop(&loop);
    NB_CHECK_EQ_INT(c.closed, 1);
    NB_CHECK_EQ_INT(c.close_r, expect_r);
    if (issue) {
        NB_CHECK_EQ_INT(k.called, 1);
        NB_CHECK_EQ_INT(k.r, expect_call_r);
    }
    srv_done(s);
}

static void test_oversized_line(void)
{
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = big_on_msg};
    run_failure(&s, 1024, 2000, 1, NB_ETOOBIG, NB_ETOOBIG);
}

static void disc_on_msg(srv_t *s, json_t *cmd)
{
    srv_close(s);
}

static void test_server_disconnect(void)
{
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = disc_on_msg};
    run_failure(&s, 0, 2000, 1, NB_ECLOSED, NB_ECLOSED);
}

static void test_handshake_timeout(void)
{
    srv_t s = {.greet = 0}; /* never greets */
    run_failure(&s, 0, 80, 1, NB_ETIMEOUT, NB_ETIMEOUT);
}

static void test_caps_unanswered(void)
{
    srv_t s = {.greet = 1, .answer_caps = 0};
    run_failure(&s, 0, 80, 0, NB_ETIMEOUT, 0);
}

static void garbage_on_msg(srv_t *s, json_t *cmd)
{
    srv_send(s, "this is not json\n");
}

static void test_garbage(void)
{
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = garbage_on_msg};
    run_failure(&s, 0, 2000, 1, NB_EPROTO, NB_EPROTO);
}

static void unknown_id_on_msg(srv_t *s, json_t *cmd)
{
    srv_send(s, "{\"return\": {}, \"id\": 999999}\n");
}

static void test_unknown_id(void)
{
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = unknown_id_on_msg};
    run_failure(&s, 0, 2000, 1, NB_EPROTO, NB_EPROTO);
}

static void noid_on_msg(srv_t *s, json_t *cmd)
{
    srv_send(s, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n");
}

static void test_reply_without_id(void)
{
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = noid_on_msg};
    run_failure(&s, 0, 2000, 1, NB_EPROTO, NB_EPROTO);
}

static void test_no_greeting_object(void)
{
    uv_loop_t loop;
    int fds[2];
    ctx_t c = {0};
    srv_t s = {0};
    uv_loop_init(&loop);
    NB_CHECK(pair(fds) == 0);
    c.srv = &s;
    nb_qmp_opts_t o = opts_for(&c, 2000, 0);
    o.on_close = close_on_close;
    NB_CHECK(nb_qmp_open_fd(&loop, fds[0], &o, &c.q) == 0);
    srv_start(&loop, &s, fds[1]);
    srv_send(&s, "{\"return\": {}, \"id\": 1}\n");
    run_loop(&loop);
    NB_CHECK_EQ_INT(c.close_r, NB_EPROTO);
    srv_done(&s);
}

/* nb_qmp_close with a pending command: the callback gets NB_ECLOSED, no
 * on_close, and every handle is closed (uv_loop_close succeeds). */
static void pending_on_msg(srv_t *s, json_t *cmd)
{
    ctx_t *c = g_ctx;
    nb_qmp_close(c->q);
    srv_close(s);
}

static void test_close_with_pending(void)
{
    uv_loop_t loop;
    int fds[2];
    ctx_t c = {0};
    srv_t s = {.greet = 1, .answer_caps = 1, .on_msg = pending_on_msg};
    call_t k = {.c = &c};
    uv_loop_init(&loop);
    NB_CHECK(pair(fds) == 0);
    c.srv = &s;
    g_ctx = &c;
    nb_qmp_opts_t o = opts_for(&c, 2000, 0);
    NB_CHECK(nb_qmp_open_fd(&loop, fds[0], &o, &c.q) == 0);
    srv_start(&loop, &s, fds[1]);
    NB_CHECK(nb_qmp_command(c.q, "query-status", NULL, 0, on_reply, &k) == 0);
    run_loop(&loop);
    NB_CHECK_EQ_INT(k.called, 1);
    NB_CHECK_EQ_INT(k.r, NB_ECLOSED);
    NB_CHECK_EQ_INT(c.closed, 0);
    srv_done(&s);
}

/* Over a real socket path: connect, handshake, command; and a path with
 * no listener. */
static srv_t g_path_srv;
static uv_pipe_t g_listener;

static void on_conn(uv_stream_t *l, int status)
{
    NB_CHECK_EQ_INT(status, 0);
    srv_t *s = &g_path_srv;
    nb_buf_init(&s->in, 1 << 20);
    uv_pipe_init(l->loop, &s->pipe, 0);
    s->pipe.data = s;
    s->open = 1;
    NB_CHECK(uv_accept(l, (uv_stream_t *)&s->pipe) == 0);
    uv_read_start((uv_stream_t *)&s->pipe, srv_alloc, srv_read);
    srv_send(s, GREETING);
    uv_close((uv_handle_t *)l, NULL);
}

static void test_connect_path(void)
{
    uv_loop_t loop;
    ctx_t c = {0};
    call_t k = {.c = &c};
    char dir[] = "/tmp/nb-qmp-test.XXXXXX", path[64];
    NB_CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/qmp.sock", dir);
    uv_loop_init(&loop);
    memset(&g_path_srv, 0, sizeof(g_path_srv));
    g_path_srv.answer_caps = 1;
    g_path_srv.on_msg = hs_on_msg;
    c.srv = &g_path_srv;
    uv_pipe_init(&loop, &g_listener, 0);
    NB_CHECK(uv_pipe_bind(&g_listener, path) == 0);
    NB_CHECK(uv_listen((uv_stream_t *)&g_listener, 1, on_conn) == 0);
    nb_qmp_opts_t o = opts_for(&c, 2000, 0);
    NB_CHECK(nb_qmp_connect(&loop, path, &o, &c.q) == 0);
    NB_CHECK(nb_qmp_command(c.q, "query-status", NULL, 0, on_reply_then_finish, &k) == 0);
    run_loop(&loop);
    NB_CHECK_EQ_INT(c.ready, 1);
    NB_CHECK_EQ_INT(k.r, 0);
    NB_CHECK_STR(c.version, "7.2.0");
    srv_done(&g_path_srv);
    unlink(path);

    /* Nobody listening any more. */
    ctx_t c2 = {0};
    call_t k2 = {.c = &c2};
    uv_loop_init(&loop);
    o = opts_for(&c2, 2000, 0);
    o.on_close = close_on_close;
    NB_CHECK(nb_qmp_connect(&loop, path, &o, &c2.q) == 0);
    NB_CHECK(nb_qmp_command(c2.q, "query-status", NULL, 0, on_reply, &k2) == 0);
    run_loop(&loop);
    NB_CHECK_EQ_INT(c2.closed, 1);
    NB_CHECK(c2.close_r == UV_ENOENT || c2.close_r == UV_ECONNREFUSED);
    NB_CHECK_EQ_INT(k2.called, 1);
    rmdir(dir);
}

static void test_bad_args(void)
{
    uv_loop_t loop;
    nb_qmp_t *q = (nb_qmp_t *)1;
    uv_loop_init(&loop);
    NB_CHECK_EQ_INT(nb_qmp_connect(&loop, "", NULL, &q), NB_EINVAL);
    NB_CHECK(q == NULL);
    NB_CHECK_EQ_INT(nb_qmp_open_fd(&loop, -1, NULL, &q), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_qmp_command(NULL, "x", NULL, 0, on_reply, NULL), NB_EINVAL);
    nb_qmp_close(NULL);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    NB_RUN(test_handshake_and_command);
    NB_RUN(test_out_of_order_and_events);
    NB_RUN(test_timeout);
    NB_RUN(test_oversized_line);
    NB_RUN(test_server_disconnect);
    NB_RUN(test_handshake_timeout);
    NB_RUN(test_caps_unanswered);
    NB_RUN(test_garbage);
    NB_RUN(test_unknown_id);
    NB_RUN(test_reply_without_id);
    NB_RUN(test_no_greeting_object);
    NB_RUN(test_close_with_pending);
    NB_RUN(test_connect_path);
    NB_RUN(test_bad_args);
    NB_TEST_MAIN_END();
}
