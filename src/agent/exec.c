/* The `exec` service: a command with stdin/stdout/stderr on one stream
 * (channels STDIO/STDERR), its exit status on CTL (protocol.md §6).
 *
 * Lifetime: the object lives until the process has exited, every pipe is
 * closed and the stream is closed; whichever comes last frees it. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/stream.h"

enum { P_IN, P_OUT, P_ERR, NPIPES };

typedef struct {
    nb_agent_t *a;
    nb_muxsess_stream_t *st; /* NULL once the stream closed */
    uv_process_t proc;
    nb_stream_t *pipes[NPIPES];
    int pipe_open[NPIPES]; /* handle not yet closed */
    int handles;           /* libuv handles not yet closed */
    int exited, status_sent, stdin_fin, paused;
    int64_t exit_status;
    int term_signal;
    unsigned stdin_writes; /* writes to stdin in flight */
    int pid;
    /* "stdin_read": true (the MCP bridge): at the exit, stdin closes and the
     * exit notice says how many of the host's stdin bytes the process may
     * have read; the rest (a suffix: bytes still in the pipe, queued, or
     * sent after the exit) it never saw, and the host may give them to the
     * next process. */
    int count_in;
    int in_unknown;     /* the count cannot be given (a failed queued write) */
    uint64_t in_total;  /* STDIO bytes from the host */
    uint64_t in_unread; /* the suffix of them that never reached the process */
} exec_t;

static void maybe_free(exec_t *x)
{
    if (x->handles == 0 && !x->st) {
        x->a->live--;
        free(x);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    exec_t *x = h->data;
    x->handles--;
    maybe_free(x);
}

static void on_pipe_closed(nb_stream_t *s, void *ud)
{
    exec_t *x = ud;
    x->handles--;
    maybe_free(x);
}

static void close_pipe(exec_t *x, int i)
{
    if (!x->pipe_open[i])
        return;
    x->pipe_open[i] = 0;
    nb_stream_set_cbs(x->pipes[i], NULL, NULL, on_pipe_closed, x);
    nb_stream_close(x->pipes[i], 1);
}

/* The stream is gone (closed by the host, the session, or us): stop the
 * command and release everything. */
static void stream_gone(exec_t *x)
{
    x->st = NULL;
    if (!x->exited)
        kill(-x->pid, SIGKILL);
    for (int i = 0; i < NPIPES; i++)
        close_pipe(x, i);
    maybe_free(x);
}

static void abort_stream(exec_t *x, uint32_t code, const char *msg)
{
    nb_muxsess_stream_reset(x->st, code, msg);
    stream_gone(x);
}

static void maybe_report(exec_t *x)
{
    if (!x->st || x->status_sent || !x->exited || x->pipe_open[P_OUT] || x->pipe_open[P_ERR])
        return;
    x->status_sent = 1;
    int64_t read = x->count_in && !x->in_unknown ? (int64_t)(x->in_total - x->in_unread) : -1;
    if (nb_agent_send_exit(x->st, x->exit_status, x->term_signal, read) < 0)
        abort_stream(x, NB_MUX_E_INTERNAL, "cannot send the exit status");
}

/* Bytes written to stdin that its reader has not taken (FIONREAD works on
 * either end of a pipe), plus those libuv still queues: together the
 * newest bytes, a suffix of what the host sent. */
static void count_unread(exec_t *x)
{
    uv_stream_t *h = nb_stream_uv_handle(x->pipes[P_IN]);
    uv_os_fd_t fd;
    int n = 0;
    if (!h || uv_fileno((uv_handle_t *)h, &fd) < 0 || ioctl(fd, FIONREAD, &n) < 0 || n < 0) {
        x->in_unknown = 1;
        return;
    }
    x->in_unread += (uint64_t)n + uv_stream_get_write_queue_size(h);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    exec_t *x = p->data;
    if (x->count_in && x->pipe_open[P_IN]) {
        /* What its children could still read was not the process's. */
        count_unread(x);
        close_pipe(x, P_IN);
    }
    x->exited = 1;
    x->exit_status = status;
    x->term_signal = sig;
    uv_close((uv_handle_t *)&x->proc, on_handle_closed);
    maybe_report(x);
}

static void on_out(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud);

static void pause_output(exec_t *x, int pause)
{
    if (x->paused == pause)
        return;
    x->paused = pause;
    for (int i = P_OUT; i <= P_ERR; i++) {
        if (!x->pipe_open[i])
            continue;
        if (pause)
            nb_stream_read_stop(x->pipes[i]);
        else
            nb_stream_read_start(x->pipes[i]);
    }
}

static void on_out(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud)
{
    exec_t *x = ud;
    int i = s == x->pipes[P_OUT] ? P_OUT : P_ERR;
    if (n < 0 || !x->st) {
        free(p);
        close_pipe(x, i);
        maybe_report(x);
        return;
    }
    unsigned chan = i == P_OUT ? NB_MUX_CHAN_STDIO : NB_MUX_CHAN_STDERR;
    int r = nb_muxsess_stream_write_owned(x->st, chan, p, (size_t)n, free);
    if (r < 0) {
        abort_stream(x, NB_MUX_E_INTERNAL, "output queue overflow");
        return;
    }
    if (!nb_muxsess_stream_writable(x->st))
        pause_output(x, 1);
}

static void on_drain(nb_muxsess_stream_t *st, void *ud)
{
    pause_output(ud, 0);
}

/* `ud` carries the byte count: credit goes back once stdin took them. */
static void on_in_written(nb_stream_t *s, int status, void *ud)
{
    exec_t *x = nb_stream_ud(s);
    x->stdin_writes--;
    if (x->st)
        nb_muxsess_stream_consume(x->st, (size_t)(uintptr_t)ud);
    if (status < 0 && status != UV_ECANCELED && x->pipe_open[P_IN])
        x->in_unknown = 1; /* how much of this write went in is not known */
    if (status < 0 || (x->stdin_fin && x->stdin_writes == 0))
        close_pipe(x, P_IN); /* EPIPE: the child closed stdin; drop the rest */
}

static void handle_ctl(exec_t *x, nb_iov_t d)
{
    json_t *m = NULL;
    char why[128];
    if (nb_json_parse(d, &m, why, sizeof why) < 0 || !json_is_object(m)) {
        json_decref(m);
        abort_stream(x, NB_MUX_E_BAD_ARGS, "invalid control message");
        return;
    }
    json_int_t sig = nb_json_int(m, "signal", 0);
    if (sig > 0 && sig < 65 && !x->exited)
        kill(-x->pid, (int)sig);
    if (nb_json_bool(m, "eof", 0)) { /* stdin EOF; CTL stays usable, unlike after FIN */
        x->stdin_fin = 1;
        if (x->stdin_writes == 0)
            close_pipe(x, P_IN);
    }
    json_decref(m);
}

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    exec_t *x = ud;
    if (chan == NB_MUX_CHAN_CTL) {
        nb_muxsess_stream_consume(st, d.len);
        handle_ctl(x, d);
        return;
    }
    if (chan == NB_MUX_CHAN_STDIO)
        x->in_total += d.len;
    if (chan != NB_MUX_CHAN_STDIO || !x->pipe_open[P_IN] || x->stdin_fin) {
        if (chan == NB_MUX_CHAN_STDIO)
            x->in_unread += d.len;
        nb_muxsess_stream_consume(st, d.len); /* nobody to give it to */
        return;
    }
    int r =
        nb_stream_write_copy(x->pipes[P_IN], d.p, d.len, on_in_written, (void *)(uintptr_t)d.len);
    if (r < 0) {
        /* A write that fails at once put nothing in the pipe (EPIPE: the
         * reader is gone), unless a copy of the rest was what failed. */
        if (r == -ENOMEM)
            x->in_unknown = 1;
        else if (x->count_in) {
            count_unread(x);
            x->in_unread += d.len;
        }
        nb_muxsess_stream_consume(st, d.len);
        close_pipe(x, P_IN);
        return;
    }
    x->stdin_writes++;
}

static void on_fin(nb_muxsess_stream_t *st, void *ud)
{
    exec_t *x = ud;
    x->stdin_fin = 1;
    if (x->stdin_writes == 0)
        close_pipe(x, P_IN);
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    /* Clean close: the command exited and both sides sent FIN. Otherwise
     * the host reset the stream or went away: the command is killed. */
    stream_gone(ud);
}

static const nb_muxsess_stream_cbs_t exec_cbs = {
    .on_data = on_data, .on_fin = on_fin, .on_drain = on_drain, .on_close = on_close};

int nb_agent_exec_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args)
{
    json_t *j = NULL;
    nb_agent_cmd_t cmd;
    char why[200];
    int in_fds[2] = {-1, -1};
    int r;
    memset(&cmd, 0, sizeof cmd);
    if ((r = nb_agent_args_object(args, &j, why, sizeof why)) < 0 ||
        (r = nb_agent_cmd_parse(j, NULL, NULL, &cmd, why, sizeof why)) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, why);
        r = 0;
        goto out;
    }
    int want_stdin = nb_json_bool(j, "stdin", 1);
    int count_in = want_stdin && nb_json_bool(j, "stdin_read", 0);
    /* Counting: stdin is a pipe(2), not libuv's socketpair. What the child
     * has not read stays in a pipe when the child dies (FIONREAD on our end
     * counts it); a socket drops it with its last reader. */
    if (count_in && pipe2(in_fds, O_CLOEXEC) < 0) {
        r = -errno;
        goto out;
    }

    exec_t *x = calloc(1, sizeof *x);
    if (!x) {
        r = -ENOMEM;
        goto out;
    }
    x->a = a;
    x->count_in = count_in;
    uv_stdio_container_t stdio[NPIPES];
    for (int i = 0; i < NPIPES; i++) {
        int fd = i == P_IN ? in_fds[1] : -1;
        if (i == P_IN)
            in_fds[1] = -1; /* the stream owns it, even when it fails */
        if ((r = nb_stream_pipe_new(a->loop, fd, &x->pipes[i])) < 0) {
            x->exited = 1;
            a->live++;
            for (int k = 0; k < i; k++)
                close_pipe(x, k);
            maybe_free(x);
            goto out;
        }
        nb_stream_set_cbs(x->pipes[i], on_out, NULL, NULL, x);
        x->pipe_open[i] = 1;
        x->handles++;
        stdio[i].flags = UV_CREATE_PIPE | (i == P_IN ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
        stdio[i].data.stream = nb_stream_uv_handle(x->pipes[i]);
        if (fd >= 0) {
            stdio[i].flags = UV_INHERIT_FD;
            stdio[i].data.fd = in_fds[0];
        }
    }
    if (!want_stdin)
        stdio[P_IN].flags = UV_IGNORE; /* libuv gives the child /dev/null */
    uv_process_options_t po = {
        .exit_cb = on_exit_cb,
        .file = cmd.argv[0],
        .args = cmd.argv,
        .env = cmd.envp,
        .cwd = cmd.cwd,
        .flags = UV_PROCESS_DETACHED /* own session and process group */
                 | (cmd.switch_user ? UV_PROCESS_SETUID | UV_PROCESS_SETGID : 0),
        .uid = cmd.user.uid,
        .gid = cmd.user.gid,
        .stdio_count = NPIPES,
        .stdio = stdio,
    };
    x->proc.data = x;
    a->live++;
    if ((r = uv_spawn(a->loop, &x->proc, &po)) < 0) {
        char e[160], name[64];
        nb_log_escape(name, sizeof name, cmd.argv[0], strlen(cmd.argv[0]));
        snprintf(e, sizeof e, "spawn %s: %s", name, uv_strerror(r));
        nb_muxsess_stream_reject(st, NB_MUX_E_FAILED, e);
        x->exited = 1;
        for (int i = 0; i < NPIPES; i++)
            close_pipe(x, i);
        /* uv_spawn initialised the process handle: it must be closed too. */
        x->handles++;
        uv_close((uv_handle_t *)&x->proc, on_handle_closed);
        r = 0;
        goto out;
    }
    x->handles++; /* the process handle */
    x->pid = x->proc.pid;
    if (!want_stdin)
        close_pipe(x, P_IN);
    x->st = st;
    nb_muxsess_stream_set_cbs(st, &exec_cbs, x);
    if ((r = nb_muxsess_stream_accept(st)) < 0) {
        stream_gone(x);
        goto out;
    }
    nb_stream_read_start(x->pipes[P_OUT]);
    nb_stream_read_start(x->pipes[P_ERR]);
    r = 0;
out:
    for (int i = 0; i < 2; i++)
        if (in_fds[i] >= 0)
            close(in_fds[i]); /* [0]: the child has its copy */
    nb_agent_cmd_free(&cmd);
    json_decref(j);
    return r;
}
