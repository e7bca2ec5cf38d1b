/* The `pty` service: a command on a new pseudo-terminal, resizable
 * (protocol.md §6). The child is forked by hand because it needs a new
 * session with the pty as its controlling terminal, which uv_spawn cannot
 * arrange; its exit is collected by a SIGCHLD watcher with waitpid(pid). */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/stream.h"

#define DRAIN_MS 200   /* output still read after the child exited */
#define HANGUP_MS 1000 /* SIGHUP, then SIGKILL after this */

typedef struct {
    nb_agent_t *a;
    nb_muxsess_stream_t *st;
    nb_stream_t *master;
    uv_signal_t sigchld;
    uv_timer_t timer; /* output drain after exit, then kill after hangup */
    int master_open, handles;
    int exited, status_sent, paused, input_fin;
    int64_t exit_status;
    int term_signal;
    unsigned writes;
    pid_t pid;
} pty_t;

static void maybe_free(pty_t *t)
{
    if (t->handles == 0 && !t->st) {
        t->a->live--;
        free(t);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    pty_t *t = h->data;
    t->handles--;
    maybe_free(t);
}

static void on_master_closed(nb_stream_t *s, void *ud)
{
    pty_t *t = ud;
    t->handles--;
    maybe_free(t);
}

static void close_master(pty_t *t)
{
    if (!t->master_open)
        return;
    t->master_open = 0;
    nb_stream_set_cbs(t->master, NULL, NULL, on_master_closed, t);
    nb_stream_close(t->master, 1);
}

/* Called when nothing more is owed to the stream and the child is gone. */
static void close_all(pty_t *t)
{
    close_master(t);
    if (!uv_is_closing((uv_handle_t *)&t->sigchld))
        uv_close((uv_handle_t *)&t->sigchld, on_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&t->timer))
        uv_close((uv_handle_t *)&t->timer, on_handle_closed);
    maybe_free(t);
}

static void report(pty_t *t)
{
    if (t->status_sent || !t->st)
        return;
    t->status_sent = 1;
    if (nb_agent_send_exit(t->st, t->exit_status, t->term_signal, -1) < 0) {
        nb_muxsess_stream_reset(t->st, NB_MUX_E_INTERNAL, "cannot send the exit status");
        t->st = NULL;
    }
    close_all(t);
}

static void on_timer(uv_timer_t *h)
{
    pty_t *t = h->data;
    if (t->exited) {
        report(t); /* output drained (or a background job keeps the pty open) */
    } else {
        kill(-t->pid, SIGKILL); /* hung up but still alive */
    }
}

static void reap(pty_t *t)
{
    int status;
    if (t->exited || waitpid(t->pid, &status, WNOHANG) != t->pid)
        return;
    t->exited = 1;
    if (WIFSIGNALED(status))
        t->term_signal = WTERMSIG(status);
    else
        t->exit_status = WEXITSTATUS(status);
    if (!t->st) {
        close_all(t);
        return;
    }
    if (!t->master_open)
        report(t);
    else
        uv_timer_start(&t->timer, on_timer, DRAIN_MS, 0);
}

static void on_sigchld(uv_signal_t *h, int sig)
{
    reap(h->data);
}

static void pause_output(pty_t *t, int pause)
{
    if (t->paused == pause || !t->master_open)
        return;
    t->paused = pause;
    if (pause)
        nb_stream_read_stop(t->master);
    else
        nb_stream_read_start(t->master);
}

static void on_master_read(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud)
{
    pty_t *t = ud;
    if (n > 0 && t->st) {
        if (nb_muxsess_stream_write_owned(t->st, NB_MUX_CHAN_STDIO, p, (size_t)n, free) < 0) {
            nb_muxsess_stream_reset(t->st, NB_MUX_E_INTERNAL, "output queue overflow");
            t->st = NULL;
            kill(-t->pid, SIGKILL);
            close_master(t);
            return;
        }
        if (!nb_muxsess_stream_writable(t->st))
            pause_output(t, 1);
        return;
    }
    free(p);
    if (n < 0) {
        /* EIO: every slave fd is closed, i.e. the session is over. */
        close_master(t);
        reap(t);
        if (t->exited)
            report(t);
    }
}

static void on_drain(nb_muxsess_stream_t *st, void *ud)
{
    pause_output(ud, 0);
}

/* `ud` carries the byte count: credit goes back once the pty took them. */
static void on_written(nb_stream_t *s, int status, void *ud)
{
    pty_t *t = nb_stream_ud(s);
    t->writes--;
    if (t->st)
        nb_muxsess_stream_consume(t->st, (size_t)(uintptr_t)ud);
}

static void handle_ctl(pty_t *t, nb_iov_t d)
{
    json_t *m = NULL;
    char why[128];
    if (nb_json_parse(d, &m, why, sizeof why) < 0 || !json_is_object(m)) {
        json_decref(m);
        return;
    }
    json_t *rs = json_object_get(m, "resize");
    if (json_is_object(rs) && t->master_open) {
        json_int_t rows = nb_json_int(rs, "rows", 0), cols = nb_json_int(rs, "cols", 0);
        if (rows > 0 && rows <= 10000 && cols > 0 && cols <= 10000) {
            int fd;
            struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
            /* TIOCSWINSZ on the master makes the kernel send SIGWINCH to the
             * terminal's foreground process group. */
            if (uv_fileno((uv_handle_t *)nb_stream_uv_handle(t->master), &fd) == 0)
                ioctl(fd, TIOCSWINSZ, &ws);
        }
    }
    json_int_t sig = nb_json_int(m, "signal", 0);
    if (sig > 0 && sig < 65 && !t->exited)
        kill(-t->pid, (int)sig);
    json_decref(m);
}

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    pty_t *t = ud;
    if (chan == NB_MUX_CHAN_CTL) {
        nb_muxsess_stream_consume(st, d.len);
        handle_ctl(t, d);
        return;
    }
    if (chan != NB_MUX_CHAN_STDIO || !t->master_open) {
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    if (nb_stream_write_copy(t->master, d.p, d.len, on_written, (void *)(uintptr_t)d.len) < 0) {
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    t->writes++;
}

static void on_fin(nb_muxsess_stream_t *st, void *ud)
{
    ((pty_t *)ud)->input_fin = 1; /* only the input direction ends */
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    pty_t *t = ud;
    t->st = NULL;
    if (t->exited) {
        close_all(t);
        return;
    }
    /* The host went away or reset the stream: hang up, then kill. */
    kill(-t->pid, SIGHUP);
    close_master(t);
    uv_timer_start(&t->timer, on_timer, HANGUP_MS, 0);
}

static const nb_muxsess_stream_cbs_t pty_cbs = {
    .on_data = on_data, .on_fin = on_fin, .on_drain = on_drain, .on_close = on_close};

/* Child side of fork(): only async-signal-safe calls until execve. */
static void child(int slave, const nb_agent_cmd_t *cmd, char *const argv[])
{
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL);
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0)
        _exit(126);
    if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0)
        _exit(126);
    if (slave > 2)
        close(slave);
    if (cmd->switch_user && (setgroups(cmd->user.ngroups, cmd->user.groups) < 0 ||
                             setgid(cmd->user.gid) < 0 || setuid(cmd->user.uid) < 0)) {
        static const char msg[] = "nilbox-agent: cannot switch to the user\r\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(126);
    }
    if (cmd->cwd && chdir(cmd->cwd) < 0) {
        static const char msg[] = "nilbox-agent: cannot change to the working directory\r\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(126);
    }
    execve(cmd->path, argv, cmd->envp);
    static const char msg[] = "nilbox-agent: exec failed\r\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(127);
}

int nb_agent_pty_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args)
{
    json_t *j = NULL;
    nb_agent_cmd_t cmd;
    char why[200], *login = NULL;
    int r, master = -1, slave = -1;
    memset(&cmd, 0, sizeof cmd);
    if ((r = nb_agent_args_object(args, &j, why, sizeof why)) < 0)
        goto bad;
    const char *term = nb_json_str(j, "term");
    json_int_t rows = nb_json_int(j, "rows", 24), cols = nb_json_int(j, "cols", 80);
    if (!term)
        term = "xterm-256color";
    if (strlen(term) > 64 || rows < 1 || rows > 10000 || cols < 1 || cols > 10000) {
        snprintf(why, sizeof why, "invalid term, rows or cols");
        goto bad;
    }
    if ((r = nb_agent_cmd_parse(j, "", term, &cmd, why, sizeof why)) < 0)
        goto bad;
    const char *shell = cmd.user.shell;
    int use_login = !json_object_get(j, "argv");
    if ((r = nb_agent_cmd_resolve(&cmd)) < 0) {
        char name[64];
        nb_log_escape(name, sizeof name, cmd.argv[0], strlen(cmd.argv[0]));
        snprintf(why, sizeof why, "spawn %s: %s", name, strerror(-r));
        nb_muxsess_stream_reject(st, NB_MUX_E_FAILED, why);
        r = 0;
        goto out;
    }
    /* A login shell is told so by a leading '-' in argv[0]. */
    char *saved0 = cmd.argv[0];
    if (use_login) {
        const char *base = strrchr(shell, '/') + 1;
        size_t n = strlen(base);
        if (!(login = malloc(n + 2))) {
            r = -ENOMEM;
            goto out;
        }
        login[0] = '-';
        memcpy(login + 1, base, n + 1);
        cmd.argv[0] = login;
    }

    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (openpty(&master, &slave, NULL, NULL, &ws) < 0) {
        r = -errno;
        cmd.argv[0] = saved0;
        goto out;
    }
    fcntl(master, F_SETFD, FD_CLOEXEC);
    fcntl(slave, F_SETFD, FD_CLOEXEC);

    pty_t *t = calloc(1, sizeof *t);
    if (!t) {
        r = -ENOMEM;
        cmd.argv[0] = saved0;
        goto out;
    }
    t->a = a;
    a->live++;
    uv_signal_init(a->loop, &t->sigchld);
    uv_timer_init(a->loop, &t->timer);
    t->sigchld.data = t->timer.data = t;
    t->handles = 2;
    if ((r = nb_stream_pipe_new(a->loop, -1, &t->master)) < 0) {
        cmd.argv[0] = saved0;
        t->exited = 1;
        close_all(t);
        goto out;
    }
    nb_stream_set_cbs(t->master, on_master_read, NULL, NULL, t);
    t->handles = 3;
    t->master_open = 1;
    uv_signal_start(&t->sigchld, on_sigchld, SIGCHLD);

    pid_t pid = fork();
    if (pid == 0)
        child(slave, &cmd, cmd.argv);
    cmd.argv[0] = saved0;
    close(slave);
    slave = -1;
    if (pid < 0 || (r = uv_pipe_open((uv_pipe_t *)nb_stream_uv_handle(t->master), master)) < 0) {
        r = pid < 0 ? -errno : r;
        close(master);
        t->exited = 1;
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        close_all(t);
        goto out;
    }
    master = -1; /* owned by the pipe handle */
    t->pid = pid;
    t->st = st;
    nb_muxsess_stream_set_cbs(st, &pty_cbs, t);
    if ((r = nb_muxsess_stream_accept(st)) < 0) {
        t->st = NULL;
        kill(-pid, SIGKILL);
        close_master(t);
        reap(t);
        goto out;
    }
    nb_stream_read_start(t->master);
    r = 0;
    goto out;
bad:
    nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, why);
    r = 0;
out:
    if (slave >= 0)
        close(slave);
    if (master >= 0)
        close(master);
    free(login);
    nb_agent_cmd_free(&cmd);
    json_decref(j);
    return r;
}
