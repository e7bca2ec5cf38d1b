/* muxc: a host-side nbmux test client built on the session library the
 * daemon uses. It listens on a Unix socket (the agent connects, as QEMU's
 * chardev would), authenticates, runs one command per session, and exits
 * with the command's status.
 *
 *   muxc --listen PATH --key-file F [--sessions N] [--idle-timeout MS] CMD
 *   CMD: exec [--no-stdin] [--stdin-read] [--env K=V]... [--cwd D] [--user U]
 *             [--signal-after MS:SIG] -- ARGV...
 *        pty [--rows R] [--cols C] [--term T] [--resize-on-input RxC] [-- ARGV...]
 *        tcp PORT
 *        ctl JSON [--data-file F]
 *        flow N BYTES     N exec streams of BYTES each plus one never-read stream
 *        serve            keep sessions up until SIGTERM (for hostile-peer tests)
 *
 * Exit status: the command's exit code, 128+signal, 125 for channel errors. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>
#include <uv.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/muxsess.h"
#include "lib/transport.h"

enum { C_EXEC, C_PTY, C_TCP, C_CTL, C_FLOW, C_SERVE };

static struct {
    uv_loop_t *loop;
    nb_muxsess_t *s;
    int lfd;
    uv_poll_t lpoll;
    uv_signal_t sigterm;
    int cmd;
    char **argv; /* exec/pty argv */
    int no_stdin, stdin_read, rows, cols;
    const char *term, *cwd, *user, *ctl_json, *data_file;
    json_t *env;
    int resize_rows, resize_cols, resized;
    uint64_t signal_after_ms;
    int signal_num;
    int port;
    int flow_n;
    long long flow_bytes;
    int sessions, sessions_done;
    int status; /* exit status of the last command */
    int stopping;
    /* per command run */
    nb_muxsess_stream_t *st;
    uv_pipe_t in_pipe;
    int in_open, in_paused, in_eof;
    int in_file_fd;
    uv_fs_t in_req;
    char in_buf[65536];
    int in_reading_file;
    uv_timer_t sig_timer;
    nb_buf_t resp;
    /* flow */
    int flow_done, flow_failed, flow_stuck_bytes_seen;
    uint64_t flow_start;
    nb_muxsess_stream_t *stuck;
    uint64_t stuck_got;
} M;

static void finish_command(int status);

static void logx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("muxc: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void write_fd(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        c += w;
        n -= (size_t)w;
    }
}

/* ------------------------------------------------------------ stdin pump */

static void in_stop(void);
static void on_in_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b);
static void file_read_next(void);

static void in_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    *b = uv_buf_init(M.in_buf, sizeof M.in_buf);
}

static void maybe_resize_first(void)
{
    if (M.resize_rows && !M.resized && M.st) {
        char msg[96];
        int n = snprintf(msg, sizeof msg, "{\"resize\":{\"rows\":%d,\"cols\":%d}}", M.resize_rows,
                         M.resize_cols);
        nb_muxsess_stream_write(M.st, NB_MUX_CHAN_CTL, msg, (size_t)n);
        M.resized = 1;
    }
}

static void in_data(const char *p, size_t n)
{
    if (!M.st)
        return;
    maybe_resize_first();
    if (nb_muxsess_stream_write(M.st, 0, p, n) < 0)
        logx("stdin: stream write failed");
}

static void in_eof(void)
{
    M.in_eof = 1;
    in_stop();
    if (!M.st || M.cmd == C_PTY)
        return;
    if (M.cmd == C_EXEC) /* not FIN: signals may still follow on CTL */
        nb_muxsess_stream_write(M.st, NB_MUX_CHAN_CTL, "{\"eof\":true}", 12);
    else
        nb_muxsess_stream_fin(M.st);
}

static void on_in_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    if (n > 0) {
        in_data(b->base, (size_t)n);
        if (M.st && !nb_muxsess_stream_writable(M.st)) {
            uv_read_stop(h);
            M.in_paused = 1;
        }
    } else if (n < 0) {
        in_eof();
    }
}

static void on_file_read(uv_fs_t *req)
{
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    M.in_reading_file = 0;
    if (n <= 0 || M.in_eof) {
        if (!M.in_eof)
            in_eof();
        return;
    }
    in_data(M.in_buf, (size_t)n);
    if (M.st && !nb_muxsess_stream_writable(M.st))
        M.in_paused = 1;
    else
        file_read_next();
}

static void file_read_next(void)
{
    if (M.in_reading_file || M.in_eof)
        return;
    uv_buf_t b = uv_buf_init(M.in_buf, sizeof M.in_buf);
    if (uv_fs_read(M.loop, &M.in_req, M.in_file_fd, &b, 1, -1, on_file_read) == 0)
        M.in_reading_file = 1;
    else
        in_eof();
}

static void in_start(void)
{
    if (M.no_stdin) {
        in_eof();
        return;
    }
    uv_handle_type t = uv_guess_handle(0);
    if (t == UV_NAMED_PIPE || t == UV_TCP || t == UV_TTY) {
        uv_pipe_init(M.loop, &M.in_pipe, 0);
        if (uv_pipe_open(&M.in_pipe, 0) == 0) {
            M.in_open = 1;
            uv_read_start((uv_stream_t *)&M.in_pipe, in_alloc, on_in_read);
            return;
        }
        uv_close((uv_handle_t *)&M.in_pipe, NULL);
    }
    M.in_file_fd = 0; /* a regular file or /dev/null */
    file_read_next();
}

static void in_stop(void)
{
    if (M.in_open) {
        M.in_open = 0;
        uv_close((uv_handle_t *)&M.in_pipe, NULL);
    }
}

static void in_resume(void)
{
    if (!M.in_paused || M.in_eof)
        return;
    M.in_paused = 0;
    if (M.in_open)
        uv_read_start((uv_stream_t *)&M.in_pipe, in_alloc, on_in_read);
    else
        file_read_next();
}

/* ------------------------------------------------------------ main stream */

static void st_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    if (chan == NB_MUX_CHAN_CTL) {
        json_t *m = json_loadb((const char *)d.p, d.len, 0, NULL);
        json_t *e = json_object_get(m, "exit"), *s = json_object_get(m, "signal");
        if (json_is_integer(json_object_get(m, "stdin_read")))
            logx("stdin_read %" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(m, "stdin_read")));
        if (json_is_integer(e)) {
            M.status = (int)json_integer_value(e);
            logx("exit %d", M.status);
        } else if (json_is_integer(s)) {
            M.status = 128 + (int)json_integer_value(s);
            logx("exit signal %d", (int)json_integer_value(s));
        }
        json_decref(m);
        return;
    }
    if (M.cmd == C_CTL)
        nb_buf_append(&M.resp, d.p, d.len);
    else
        write_fd(chan == NB_MUX_CHAN_STDERR ? 2 : 1, d.p, d.len);
}

static void st_drain(nb_muxsess_stream_t *st, void *ud)
{
    in_resume();
}

static void st_fin(nb_muxsess_stream_t *st, void *ud)
{
    /* exec/pty: the command is over, nothing more to send. tcp is a real
     * half-close: keep sending until our input ends. */
    if (M.cmd != C_TCP || M.in_eof) {
        in_stop();
        M.in_eof = 1;
        nb_muxsess_stream_fin(st);
    }
}

static void st_ok(nb_muxsess_stream_t *st, void *ud)
{
    if (M.cmd != C_CTL)
        in_start();
}

static void st_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    M.st = NULL;
    in_stop();
    if (M.signal_after_ms)
        uv_timer_stop(&M.sig_timer);
    if (err) {
        logx("stream closed: %s (%s): %s", nb_errname(err), nb_mux_code_name(code), msg);
        finish_command(125);
        return;
    }
    if (M.cmd == C_CTL) {
        write_fd(1, M.resp.p, M.resp.len);
        write_fd(1, "\n", 1);
        json_t *r = json_loadb((const char *)M.resp.p, M.resp.len, 0, NULL);
        int ok = json_is_true(json_object_get(r, "ok"));
        json_decref(r);
        finish_command(ok ? 0 : 1);
        return;
    }
    finish_command(M.cmd == C_TCP ? 0 : M.status);
}

static const nb_muxsess_stream_cbs_t st_cbs = {.on_data = st_data,
                                               .on_fin = st_fin,
                                               .on_open_ok = st_ok,
                                               .on_drain = st_drain,
                                               .on_close = st_close,
                                               .auto_consume = 1};

static void on_sig_timer(uv_timer_t *t)
{
    if (M.st) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "{\"signal\":%d}", M.signal_num);
        nb_muxsess_stream_write(M.st, NB_MUX_CHAN_CTL, msg, (size_t)n);
    }
}

/* ------------------------------------------------------------------ flow */

typedef struct {
    uint64_t got;
    int exit_seen, closed;
} flow_t;

static flow_t *flows;

static void flow_check_done(void)
{
    if (M.flow_done < M.flow_n)
        return;
    nb_muxsess_stats_t s;
    nb_muxsess_stats(M.s, &s);
    double secs = (double)(uv_now(M.loop) - M.flow_start) / 1000.0;
    logx("flow: %d streams x %lld bytes done in %.2f s while the stuck stream holds %llu "
         "unconsumed bytes (session unconsumed %llu, streams %u)",
         M.flow_n, M.flow_bytes, secs, (unsigned long long)M.stuck_got,
         (unsigned long long)s.unconsumed, s.streams);
    printf("flow streams=%d failed=%d stuck_unconsumed=%llu session_unconsumed=%llu\n", M.flow_n,
           M.flow_failed, (unsigned long long)M.stuck_got, (unsigned long long)s.unconsumed);
    fflush(stdout);
    int bad = M.flow_failed || M.stuck_got > NB_MUX_INITIAL_WINDOW;
    if (M.stuck) {
        nb_muxsess_stream_reset(M.stuck, NB_MUX_E_CANCEL, "flow test over");
        M.stuck = NULL;
    }
    free(flows);
    flows = NULL;
    finish_command(bad ? 1 : 0);
}

static void flow_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    flow_t *f = ud;
    if (chan == NB_MUX_CHAN_STDIO)
        f->got += d.len;
    else if (chan == NB_MUX_CHAN_CTL)
        f->exit_seen = d.len == 10 && !memcmp(d.p, "{\"exit\":0}", 10) ? 1 : 2;
}

static void flow_fin(nb_muxsess_stream_t *st, void *ud)
{
    nb_muxsess_stream_fin(st);
}

static void flow_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    flow_t *f = ud;
    if (err || f->got != (uint64_t)M.flow_bytes || f->exit_seen != 1) {
        logx("flow stream %u: err %s, got %llu bytes", nb_muxsess_stream_id(st), nb_errname(err),
             (unsigned long long)f->got);
        M.flow_failed++;
    }
    M.flow_done++;
    flow_check_done();
}

static const nb_muxsess_stream_cbs_t flow_cbs = {
    .on_data = flow_data, .on_fin = flow_fin, .on_close = flow_close, .auto_consume = 1};

static void stuck_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    M.stuck_got += d.len; /* never consumed: its window closes */
}

static void stuck_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    M.stuck = NULL;
}

static const nb_muxsess_stream_cbs_t stuck_cbs = {.on_data = stuck_data, .on_close = stuck_close};

static void start_flow(void)
{
    char bytes[32];
    snprintf(bytes, sizeof bytes, "%lld", M.flow_bytes);
    json_t *a =
        json_pack("{s:[s,s,s,s],s:b}", "argv", "head", "-c", bytes, "/dev/zero", "stdin", 0);
    char *js = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    flows = calloc((size_t)M.flow_n, sizeof *flows);
    M.flow_start = uv_now(M.loop);
    M.flow_done = M.flow_failed = 0;
    M.stuck_got = 0;
    const char *stuck_args = "{\"argv\":[\"cat\",\"/dev/zero\"],\"stdin\":false}";
    if (nb_muxsess_open(M.s, "exec", nb_iov(stuck_args, strlen(stuck_args)), &stuck_cbs, NULL,
                        &M.stuck) < 0)
        logx("cannot open the stuck stream");
    for (int i = 0; i < M.flow_n; i++) {
        nb_muxsess_stream_t *st;
        if (nb_muxsess_open(M.s, "exec", nb_iov(js, strlen(js)), &flow_cbs, &flows[i], &st) < 0) {
            M.flow_failed++;
            M.flow_done++;
        }
    }
    free(js);
    flow_check_done();
}

/* -------------------------------------------------------------- commands */

static void start_command(void)
{
    json_t *args = NULL;
    const char *svc = NULL;
    M.resized = 0;
    M.in_eof = M.in_paused = 0;
    M.status = 0;
    switch (M.cmd) {
    case C_SERVE:
        return;
    case C_FLOW:
        start_flow();
        return;
    case C_EXEC:
    case C_PTY: {
        json_t *av = json_array();
        for (char **p = M.argv; p && *p; p++)
            json_array_append_new(av, json_string(*p));
        args = json_object();
        if (json_array_size(av))
            json_object_set(args, "argv", av);
        json_decref(av);
        if (M.env)
            json_object_set(args, "env", M.env);
        if (M.cwd)
            json_object_set_new(args, "cwd", json_string(M.cwd));
        if (M.user)
            json_object_set_new(args, "user", json_string(M.user));
        if (M.cmd == C_EXEC) {
            svc = "exec";
            json_object_set_new(args, "stdin", json_boolean(!M.no_stdin));
            if (M.stdin_read)
                json_object_set_new(args, "stdin_read", json_true());
        } else {
            svc = "pty";
            json_object_set_new(args, "rows", json_integer(M.rows));
            json_object_set_new(args, "cols", json_integer(M.cols));
            if (M.term)
                json_object_set_new(args, "term", json_string(M.term));
        }
        break;
    }
    case C_TCP:
        svc = "tcp";
        args = json_pack("{s:i}", "port", M.port);
        break;
    case C_CTL:
        svc = "ctl";
        args = json_loads(M.ctl_json, 0, NULL);
        if (!args) {
            logx("ctl: invalid JSON");
            finish_command(2);
            return;
        }
        nb_buf_free(&M.resp);
        nb_buf_init(&M.resp, 1u << 20);
        break;
    }
    char *js = json_dumps(args, JSON_COMPACT);
    json_decref(args);
    int r = nb_muxsess_open(M.s, svc, nb_iov(js, strlen(js)), &st_cbs, NULL, &M.st);
    free(js);
    if (r < 0) {
        logx("open: %s", nb_strerror(r));
        finish_command(125);
        return;
    }
    if (M.cmd == C_CTL) {
        if (M.data_file) {
            int fd = open(M.data_file, O_RDONLY | O_CLOEXEC);
            char buf[65536];
            ssize_t n;
            while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
                if (nb_muxsess_stream_write(M.st, 0, buf, (size_t)n) < 0)
                    logx("ctl: content too large for the queue");
            if (fd >= 0)
                close(fd);
        }
        nb_muxsess_stream_fin(M.st);
    }
    if (M.signal_after_ms)
        uv_timer_start(&M.sig_timer, on_sig_timer, M.signal_after_ms, 0);
}

static void shutdown_all(void)
{
    if (M.stopping)
        return;
    M.stopping = 1;
    in_stop();
    nb_muxsess_free(M.s);
    M.s = NULL;
    uv_poll_stop(&M.lpoll);
    uv_close((uv_handle_t *)&M.lpoll, NULL);
    uv_close((uv_handle_t *)&M.sigterm, NULL);
    uv_close((uv_handle_t *)&M.sig_timer, NULL);
    close(M.lfd);
}

static void finish_command(int status)
{
    M.status = status;
    M.sessions_done++;
    if (M.sessions && M.sessions_done >= M.sessions) {
        shutdown_all();
        return;
    }
    nb_muxsess_close(M.s, NB_MUX_E_NONE, "command done");
}

/* -------------------------------------------------------------- sessions */

static void on_up(nb_muxsess_t *s, void *ud)
{
    logx("session up");
    start_command();
}

static void on_down(nb_muxsess_t *s, int err, const char *reason, void *ud)
{
    logx("session down: %s: %s", nb_errname(err), reason);
    if (M.st) { /* should have been closed by the teardown */
        M.st = NULL;
    }
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    int fd;
    while ((fd = nb_transport_accept(M.lfd)) >= 0) {
        if (nb_muxsess_is_up(M.s) || nb_muxsess_attach_fd(M.s, fd) < 0) {
            logx("refusing a second connection while a session is active");
            if (nb_muxsess_is_up(M.s))
                close(fd);
        } else {
            logx("connection accepted");
        }
    }
}

static void on_sigterm(uv_signal_t *h, int sig)
{
    logx("signal %d: exiting", sig);
    shutdown_all();
}

static int usage(void)
{
    fprintf(stderr, "usage: muxc --listen PATH --key-file F [--sessions N] "
                    "[--idle-timeout MS] exec|pty|tcp|ctl|flow|serve ...\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *listen_path = NULL, *keyfile = NULL;
    uint8_t key[NB_MUX_KEY_LEN];
    nb_muxsess_opts_t o;
    int i;

    signal(SIGPIPE, SIG_IGN);
    nb_log_set_tag("muxc");
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_HOST);
    M.sessions = 1;
    M.rows = 24;
    M.cols = 80;
    for (i = 1; i < argc && argv[i][0] == '-'; i += 2) {
        if (i + 1 >= argc)
            return usage();
        if (!strcmp(argv[i], "--listen"))
            listen_path = argv[i + 1];
        else if (!strcmp(argv[i], "--key-file"))
            keyfile = argv[i + 1];
        else if (!strcmp(argv[i], "--sessions"))
            M.sessions = (int)strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--idle-timeout"))
            o.idle_ms = o.ping_ms = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--handshake-timeout"))
            o.handshake_ms = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else
            return usage();
    }
    if (o.ping_ms > 3)
        o.ping_ms /= 3;
    if (!listen_path || !keyfile || i >= argc)
        return usage();
    const char *cmd = argv[i++];
    if (!strcmp(cmd, "exec") || !strcmp(cmd, "pty")) {
        M.cmd = cmd[0] == 'e' ? C_EXEC : C_PTY;
        for (; i < argc; i++) {
            const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (!strcmp(a, "--")) {
                i++;
                break;
            } else if (!strcmp(a, "--no-stdin")) {
                M.no_stdin = 1;
                continue;
            } else if (!strcmp(a, "--stdin-read")) {
                M.stdin_read = 1;
                continue;
            }
            if (!v)
                return usage();
            i++;
            if (!strcmp(a, "--env")) {
                const char *eq = strchr(v, '=');
                if (!eq)
                    return usage();
                if (!M.env)
                    M.env = json_object();
                char k[256];
                snprintf(k, sizeof k, "%.*s", (int)(eq - v), v);
                json_object_set_new(M.env, k, json_string(eq + 1));
            } else if (!strcmp(a, "--cwd")) {
                M.cwd = v;
            } else if (!strcmp(a, "--user")) {
                M.user = v;
            } else if (!strcmp(a, "--rows")) {
                M.rows = (int)strtol(v, NULL, 10);
            } else if (!strcmp(a, "--cols")) {
                M.cols = (int)strtol(v, NULL, 10);
            } else if (!strcmp(a, "--term")) {
                M.term = v;
            } else if (!strcmp(a, "--resize-on-input")) {
                if (sscanf(v, "%dx%d", &M.resize_rows, &M.resize_cols) != 2)
                    return usage();
            } else if (!strcmp(a, "--signal-after")) {
                unsigned long long ms;
                if (sscanf(v, "%llu:%d", &ms, &M.signal_num) != 2)
                    return usage();
                M.signal_after_ms = ms;
            } else {
                return usage();
            }
        }
        M.argv = argv + i;
        if (M.cmd == C_EXEC && !*M.argv)
            return usage();
    } else if (!strcmp(cmd, "tcp") && i < argc) {
        M.cmd = C_TCP;
        M.port = (int)strtol(argv[i], NULL, 10);
    } else if (!strcmp(cmd, "ctl") && i < argc) {
        M.cmd = C_CTL;
        M.ctl_json = argv[i++];
        if (i + 1 < argc && !strcmp(argv[i], "--data-file"))
            M.data_file = argv[i + 1];
    } else if (!strcmp(cmd, "flow") && i + 1 < argc) {
        M.cmd = C_FLOW;
        M.flow_n = (int)strtol(argv[i], NULL, 10);
        M.flow_bytes = strtoll(argv[i + 1], NULL, 10);
    } else if (!strcmp(cmd, "serve")) {
        M.cmd = C_SERVE;
        M.sessions = 0;
    } else {
        return usage();
    }

    if (sodium_init() < 0)
        return 1;
    int fd = open(keyfile, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, key, sizeof key) != (ssize_t)sizeof key) {
        logx("cannot read 32 key bytes from %s", keyfile);
        return 2;
    }
    close(fd);

    M.loop = uv_default_loop();
    M.lfd = nb_transport_listen_unix(listen_path, 16);
    if (M.lfd < 0) {
        logx("listen %s: %s", listen_path, nb_strerror(M.lfd));
        return 2;
    }
    o.on_up = on_up;
    o.on_down = on_down;
    if (nb_muxsess_new(M.loop, &o, key, &M.s) < 0)
        return 1;
    sodium_memzero(key, sizeof key);
    uv_poll_init(M.loop, &M.lpoll, M.lfd);
    uv_poll_start(&M.lpoll, UV_READABLE, on_listen);
    uv_signal_init(M.loop, &M.sigterm);
    uv_signal_start(&M.sigterm, on_sigterm, SIGTERM);
    uv_timer_init(M.loop, &M.sig_timer);
    logx("listening on %s", listen_path);

    uv_run(M.loop, UV_RUN_DEFAULT);

    nb_buf_free(&M.resp);
    json_decref(M.env);
    free(flows);
    uv_loop_close(M.loop);
    return M.status;
}
