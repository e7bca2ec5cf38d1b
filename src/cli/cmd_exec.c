/* nilbox exec VM -- CMD ARGS...  and the session loop shared with
 * `nilbox shell` (vmio.h). Exit status: the command's, 128+N when a signal
 * N ended it, 125 when nilbox could not run it, 126/127 when the guest
 * could not start it (like a shell). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/cmd.h"
#include "lib/termfilter.h"
#include "cli/vmio.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define IN_WINDOW (1u << 20) /* unacknowledged input bytes (docs/api.md) */
#define IN_CHUNK 32768
#define CONNECT_TIMEOUT_MS 130000 /* the daemon waits up to 120 s for a booting VM */

static int sig_fds[2] = {-1, -1};
static struct termios saved_tio;
static int tio_saved;

static void restore_tty(void)
{
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_tio);
        tio_saved = 0;
    }
}

static void on_signal(int sig)
{
    int e = errno;
    unsigned char c = (unsigned char)sig;
    if (sig_fds[1] >= 0 && write(sig_fds[1], &c, 1) < 0) {
        /* the pipe is full: the loop has enough to do */
    }
    errno = e;
}

static int raw_tty(void)
{
    struct termios t;
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tio) < 0)
        return 0;
    t = saved_tio;
    cfmakeraw(&t);
    if (tcsetattr(STDIN_FILENO, TCSADRAIN, &t) < 0)
        return 0;
    tio_saved = 1;
    atexit(restore_tty);
    return 1;
}

static void win_size(int *rows, int *cols)
{
    struct winsize ws;
    *rows = 24;
    *cols = 80;
    if (ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    } else if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            poll(&pf, 1, 1000);
            continue;
        }
        if (w <= 0)
            return; /* stdout closed: drop the output, keep the session */
        p += w;
        n -= (size_t)w;
    }
}

/* Guest output that goes to a terminal passes through a filter (THREATS.md
 * A20, docs/internals/termfilter.md); into a pipe or a file it stays
 * byte-exact. */
static nb_termfilter_t out_filter[2]; /* stdout, stderr */
static int out_filtered[2];
static int out_fd[2] = {STDOUT_FILENO, STDERR_FILENO};

static void on_filtered(void *ud, const uint8_t *p, size_t n)
{
    write_all(*(int *)ud, p, n);
}

static void write_guest(int ch, const uint8_t *p, size_t n)
{
    if (out_filtered[ch])
        nb_termfilter_feed(&out_filter[ch], p, n, on_filtered, &out_fd[ch]);
    else
        write_all(out_fd[ch], p, n);
}

/* Flushes the filters and prints one notice if anything was blocked. */
static void filter_finish(void)
{
    nb_termfilter_stats_t st = {0};
    char line[256];
    for (int i = 0; i < 2; i++) {
        if (!out_filtered[i])
            continue;
        nb_termfilter_finish(&out_filter[i], on_filtered, &out_fd[i]);
        nb_termfilter_stats(&out_filter[i], &st);
        out_filtered[i] = 0;
    }
    if (nb_termfilter_notice(&st, line, sizeof line))
        fputs(line, stderr);
}

static int send_json(nb_wsc_t *ws, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    int r = s ? nb_wsc_send(ws, NB_WSC_TEXT, s, strlen(s)) : -ENOMEM;
    free(s);
    json_decref(j);
    return r;
}

typedef struct {
    int done;
    int status; /* remote exit status, or -1 */
    char err[512];
    char err_code[32];
    uint64_t inflight; /* input sent, not acknowledged */
    uint64_t to_ack;   /* output written, not yet acknowledged */
} sess_t;

static void on_text(sess_t *s, const nb_buf_t *msg)
{
    json_t *m = NULL, *v;
    if (nb_json_parse(nb_buf_iov(msg), &m, NULL, 0) < 0)
        return;
    if ((v = json_object_get(m, "ack")) && json_is_integer(v)) {
        uint64_t n = (uint64_t)json_integer_value(v);
        s->inflight = n < s->inflight ? s->inflight - n : 0;
    } else if ((v = json_object_get(m, "exit")) && json_is_integer(v)) {
        s->status = (int)json_integer_value(v) & 0xff;
    } else if ((v = json_object_get(m, "signal")) && json_is_integer(v)) {
        s->status = 128 + (int)json_integer_value(v);
    } else if (nb_json_str(m, "error")) {
        const char *e = nb_json_str(m, "error"), *c = nb_json_str(m, "code");
        nb_log_escape(s->err, sizeof s->err, e, strlen(e));
        snprintf(s->err_code, sizeof s->err_code, "%s", c ? c : "error");
    }
    json_decref(m);
}

/* Reads every message that is ready. 0, or NB_ECLOSED / an error. */
static int drain_ws(nb_wsc_t *ws, sess_t *s, nb_buf_t *msg)
{
    for (;;) {
        int op = 0;
        int r = nb_wsc_recv(ws, 0, &op, msg, NULL);
        if (r == NB_ETIMEOUT || r == -EINTR)
            break;
        if (r < 0)
            return r;
        if (op == NB_WSC_BINARY && msg->len >= 1) {
            write_guest(msg->p[0] == 1, msg->p + 1, msg->len - 1);
            s->to_ack += msg->len - 1;
        } else if (op == NB_WSC_TEXT) {
            on_text(s, msg);
        }
    }
    if (s->to_ack) {
        send_json(ws, json_pack("{s:I}", "ack", (json_int_t)s->to_ack));
        s->to_ack = 0;
    }
    return 0;
}

static int connect_session(nb_cli_t *cli, const char *vm, int pty, const char *user, nb_wsc_t **ws)
{
    char path[256], err[512];
    int status = 0;
    if (!vm[0] || strspn(vm, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(vm) ||
        strlen(vm) > 64) {
        fprintf(stderr, "nilbox: '%s' is not a valid VM name\n", vm);
        return NB_CLI_EXEC_FAILED;
    }
    if (pty) {
        int rows, cols;
        const char *term = getenv("TERM");
        win_size(&rows, &cols);
        if (!term || !term[0] ||
            strspn(term, "abcdefghijklmnopqrstuvwxyz0123456789-+._") != strlen(term) ||
            strlen(term) > 60)
            term = "xterm-256color";
        snprintf(path, sizeof path, "/v1/vms/%s/pty?rows=%d&cols=%d&term=%s%s%s", vm, rows, cols,
                 term, user ? "&user=" : "", user ? user : "");
    } else {
        snprintf(path, sizeof path, "/v1/vms/%s/exec", vm);
    }
    int r = nb_wsc_connect(cli->home.sock, path, CONNECT_TIMEOUT_MS, ws, &status, err, sizeof err);
    if (r < 0) {
        if (nb_client_unreachable(r))
            fprintf(stderr, "nilbox: nilboxd is not running (no answer on %s)\n", cli->home.sock);
        else
            fprintf(stderr, "nilbox: %s\n", err[0] ? err : nb_strerror(r));
        return NB_CLI_EXEC_FAILED;
    }
    return 0;
}

int nb_cli_vm_session(nb_cli_t *cli, const char *vm, int pty, const json_t *req, int use_stdin)
{
    nb_wsc_t *ws = NULL;
    sess_t s = {.status = -1};
    nb_buf_t msg;
    uint8_t inbuf[IN_CHUNK + 1];
    int stdin_open = use_stdin, forwarded = 0, code;
    const char *user = req ? nb_json_str(req, "user") : NULL;
    if (user && (!user[0] || strlen(user) > 32 ||
                 strspn(user, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(user))) {
        fprintf(stderr, "nilbox: '%s' is not an account name (a-z, 0-9, _ and -)\n", user);
        return NB_CLI_USAGE;
    }
    if ((code = connect_session(cli, vm, pty, user, &ws)) != 0)
        return code;
    for (int i = 0; i < 2; i++) {
        out_filtered[i] = isatty(out_fd[i]);
        nb_termfilter_init(&out_filter[i]);
    }
    if (!pty) {
        json_t *first = json_deep_copy(req);
        json_object_set_new(first, "stdin", json_boolean(use_stdin));
        if (send_json(ws, first) < 0) {
            nb_wsc_free(ws);
            fprintf(stderr, "nilbox: cannot send the command to nilboxd\n");
            return NB_CLI_EXEC_FAILED;
        }
    }
    if (pipe2(sig_fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        nb_wsc_free(ws);
        return NB_CLI_EXEC_FAILED;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGWINCH, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pty)
        raw_tty();
    nb_buf_init(&msg, 16u << 20);
    inbuf[0] = 0; /* channel byte: stdin */
    int r = 0;
    while (!s.done) {
        if ((r = drain_ws(ws, &s, &msg)) < 0)
            break;
        struct pollfd pf[3] = {{.fd = sig_fds[0], .events = POLLIN},
                               {.fd = nb_wsc_fd(ws), .events = POLLIN},
                               {.fd = STDIN_FILENO, .events = POLLIN}};
        nfds_t n = stdin_open && s.inflight < IN_WINDOW ? 3 : 2;
        if (poll(pf, n, -1) < 0 && errno != EINTR)
            break;
        if (pf[0].revents & POLLIN) {
            unsigned char sig;
            while (read(sig_fds[0], &sig, 1) == 1) {
                if (sig == SIGWINCH && pty) {
                    int rows, cols;
                    win_size(&rows, &cols);
                    send_json(ws,
                              json_pack("{s:{s:i, s:i}}", "resize", "rows", rows, "cols", cols));
                } else if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
                    if (!pty && !forwarded++) {
                        /* First Ctrl-C goes to the command; a second one gives up. */
                        send_json(ws, json_pack("{s:i}", "signal", sig));
                    } else {
                        s.status = 128 + sig;
                        s.done = 1;
                    }
                }
            }
        }
        if (n == 3 && (pf[2].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got = read(STDIN_FILENO, inbuf + 1, IN_CHUNK);
            if (got > 0) {
                if (nb_wsc_send(ws, NB_WSC_BINARY, inbuf, (size_t)got + 1) < 0)
                    break;
                s.inflight += (uint64_t)got;
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                stdin_open = 0;
                send_json(ws, json_pack("{s:b}", "eof", 1));
            }
        }
    }
    restore_tty();
    filter_finish();
    nb_buf_free(&msg);
    nb_wsc_free(ws);
    signal(SIGWINCH, SIG_DFL);
    close(sig_fds[0]);
    close(sig_fds[1]);
    sig_fds[0] = sig_fds[1] = -1;
    if (s.err[0]) {
        fprintf(stderr, "nilbox: %s\n", s.err);
        if (!strcmp(s.err_code, "spawn-failed"))
            return strstr(s.err, "no such file") || strstr(s.err, "No such file")
                       ? NB_CLI_EXEC_NOTFOUND
                       : NB_CLI_EXEC_NOEXEC;
        return NB_CLI_EXEC_FAILED;
    }
    if (s.status < 0) {
        fprintf(stderr, "nilbox: the session ended without an exit status (%s)\n",
                r < 0 ? nb_strerror(r) : "connection closed");
        return NB_CLI_EXEC_FAILED;
    }
    return s.status;
}

/* ------------------------------------------------------------ exec */

static int do_exec(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    if (!a->rest || a->nrest < 1) {
        fprintf(stderr, "nilbox: 'nilbox exec VM -- CMD [ARGS...]' needs a command after --\n");
        return NB_CLI_USAGE;
    }
    json_t *argv = json_array();
    for (int i = 0; i < a->nrest; i++)
        json_array_append_new(argv, json_string(a->rest[i]));
    json_t *req = json_pack("{s:o}", "argv", argv);
    const char *cwd = nb_cli_opt(v, a, "cwd");
    if (cwd)
        json_object_set_new(req, "cwd", json_string(cwd));
    const char *user = nb_cli_opt(v, a, "user");
    if (user)
        json_object_set_new(req, "user", json_string(user));
    /* One -e NAME=VALUE (the option parser keeps an option's last value). */
    const char *env = nb_cli_opt(v, a, "env");
    if (env) {
        const char *eq = strchr(env, '=');
        if (!eq || eq == env) {
            json_decref(req);
            fprintf(stderr, "nilbox: --env takes NAME=VALUE\n");
            return NB_CLI_USAGE;
        }
        json_t *e = json_object();
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(eq - env), env);
        json_object_set_new(e, key, json_string(eq + 1));
        json_object_set_new(req, "env", e);
    }
    int code = nb_cli_vm_session(cli, a->pos[0], 0, req, !nb_cli_flag(v, a, "no-stdin"));
    json_decref(req);
    return code;
}

static const nb_cli_opt_t exec_opts[] = {
    {"no-stdin", 'n', NULL, "give the command no input (/dev/null)"},
    {"env", 'e', "NAME=VALUE", "set an environment variable for the command"},
    {"cwd", 'w', "DIR", "working directory in the guest (default: the user's home)"},
    {"user", 'u', "NAME", "run as this account in the guest (default: the VM's default user)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t exec_self = {
    NULL,
    "run a command in a VM",
    "VM -- CMD [ARGS...]",
    "Run a command in a running VM through its agent. stdin, stdout and stderr are streamed;\n"
    "the exit status is the command's (128+N when signal N ended it). Ctrl-C is forwarded to\n"
    "the command once; a second Ctrl-C gives up. Exit 125: nilbox could not run it (no such\n"
    "VM, VM not running...); 126/127: the guest could not start it.",
    1,
    1,
    exec_opts,
    do_exec,
    NB_CLI_NEEDS_DAEMON | NB_CLI_DASHDASH,
};

const nb_cli_noun_t nb_cli_noun_exec = {"exec", "run a command in a VM", NULL, &exec_self};
