/* The SSH gateway's session threads (sshgw.h): one thread per TCP
 * connection runs libssh's server side (key exchange, public-key login,
 * channel requests) and moves each channel's bytes to and from its
 * socketpair with the loop (sshgw_int.h). Nothing here touches the loop's
 * objects: the only shared state is the gateway's mutex-guarded fd queue,
 * its session list and uv_async_send. */
#include <errno.h>
#include <poll.h>
/* libssh 0.10 marks the ssh_message getters deprecated in favour of
 * server callbacks, which cannot answer direct-tcpip opens; they stay
 * supported, so the one message callback handles every request. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>

#include "daemon/sshgw_int.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/log.h"

#define MAX_SESSIONS 32
#define MAX_CHANNELS 16
#define POLL_MS 50
#define AUTH_TRIES 6
#define KEX_TIMEOUT_S 20
#define LOGIN_MS 60000 /* from connect to successful login */
#define READ_CHUNK 32768
#define IN_CAP (NB_SSHF_MAX + NB_SSHF_HDR)

enum { K_SESSION, K_TCP };
enum { S_EXEC = 1, S_PTY, S_TCP };

typedef struct {
    ssh_channel ch;
    int kind, svc;
    int fd; /* our end of the socketpair; -1 before the start */
    int want_pty, rows, cols;
    char term[64];
    int polled; /* fd is in the ssh_event */
    /* fd -> SSH: frames read, the data frame being written */
    uint8_t in[IN_CAP];
    size_t in_len, in_off;
    unsigned cur_type;
    size_t cur_left;
    /* SSH -> fd: frames not yet written */
    uint8_t out[READ_CHUNK + 256];
    size_t out_len, out_off;
    int client_eof, guest_fin, fd_eof, ended;
    int have_exit, exit_code, exit_signal;
} chan_t;

struct sess {
    nb_sshgw_t *g;
    pthread_t th;
    int fd; /* the TCP socket, until libssh frees it (under g->mu) */
    int finished;
    sess_t *next;
    ssh_session s;
    ssh_event ev;
    char vm[NB_VM_NAME_MAX + 1];
    int authed, tries, kill;
    chan_t *ch[MAX_CHANNELS];
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int stopping(nb_sshgw_t *g)
{
    pthread_mutex_lock(&g->mu);
    int s = g->stopping;
    pthread_mutex_unlock(&g->mu);
    return s;
}

/* ------------------------------------------------------------ keys */

/* 1 when `key` is in the authorized_keys file `path`. Lines with options
 * (command=, from=, ...) are skipped: the gateway cannot honour them, and
 * a key its owner restricted must not get a shell here. */
static int key_in_file(const char *path, ssh_key key)
{
    FILE *f = path[0] ? fopen(path, "re") : NULL;
    char line[16384];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) {
        char *save = NULL, *type = strtok_r(line, " \t\r\n", &save);
        char *b64 = type ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        if (!type || !b64 || type[0] == '#')
            continue;
        enum ssh_keytypes_e t = ssh_key_type_from_name(type);
        ssh_key k = NULL;
        if (t == SSH_KEYTYPE_UNKNOWN || ssh_pki_import_pubkey_base64(b64, t, &k) != SSH_OK)
            continue;
        found = ssh_key_cmp(k, key, SSH_KEY_CMP_PUBLIC) == 0;
        ssh_key_free(k);
    }
    if (f)
        fclose(f);
    return found;
}

static int key_allowed(nb_sshgw_t *g, ssh_key key)
{
    return key && (key_in_file(g->own_keys, key) || key_in_file(g->user_keys, key));
}

/* ------------------------------------------------------------ channels */

static chan_t *chan_find(sess_t *S, ssh_channel ch)
{
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (S->ch[i] && S->ch[i]->ch == ch)
            return S->ch[i];
    return NULL;
}

static chan_t *chan_new(sess_t *S, int kind)
{
    for (int i = 0; i < MAX_CHANNELS; i++) {
        if (S->ch[i])
            continue;
        chan_t *c = calloc(1, sizeof *c);
        if (!c)
            return NULL;
        c->kind = kind;
        c->fd = -1;
        c->rows = 24;
        c->cols = 80;
        snprintf(c->term, sizeof c->term, "xterm-256color");
        S->ch[i] = c;
        return c;
    }
    return NULL;
}

static int on_fd(socket_t fd, int revents, void *ud)
{
    return 0; /* only wakes the poll; service() does the work */
}

static void set_polled(sess_t *S, chan_t *c, int on)
{
    if (c->fd < 0 || c->polled == on)
        return;
    if (on)
        ssh_event_add_fd(S->ev, c->fd, POLLIN, on_fd, c);
    else
        ssh_event_remove_fd(S->ev, c->fd);
    c->polled = on;
}

static void chan_free(sess_t *S, int i)
{
    chan_t *c = S->ch[i];
    set_polled(S, c, 0);
    if (c->fd >= 0)
        close(c->fd); /* the loop resets the stream if it still runs */
    if (c->ch)
        ssh_channel_free(c->ch);
    free(c);
    S->ch[i] = NULL;
}

/* Appends a frame to the bytes for the loop (fits: callers check). */
static void queue_frame(chan_t *c, unsigned type, const void *p, size_t n)
{
    if (c->out_off && c->out_len == c->out_off)
        c->out_len = c->out_off = 0;
    if (sizeof c->out - c->out_len < NB_SSHF_HDR + n)
        return;
    nb_sshf_header(c->out + c->out_len, type, n);
    if (n)
        memcpy(c->out + c->out_len + NB_SSHF_HDR, p, n);
    c->out_len += NB_SSHF_HDR + n;
}

static void queue_json(chan_t *c, unsigned type, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s && strlen(s) < sizeof c->out - NB_SSHF_HDR - 16)
        queue_frame(c, type, s, strlen(s));
    free(s);
    json_decref(j);
}

static void flush_out(chan_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w <= 0) {
            c->fd_eof = 1; /* the loop end went away */
            c->out_len = c->out_off = 0;
            return;
        }
        c->out_off += (size_t)w;
    }
    c->out_len = c->out_off = 0;
}

/* Opens the channel's stream: a socketpair whose other end goes to the
 * loop with the OPEN frame already in it. */
static int chan_start(sess_t *S, chan_t *c, const char *service, json_t *args)
{
    int sv[2];
    json_t *open = json_pack("{s:s, s:s, s:o}", "vm", S->vm, "service", service, "args", args);
    if (!open || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
        json_decref(open);
        return -1;
    }
    c->fd = sv[0];
    c->svc = !strcmp(service, "pty") ? S_PTY : !strcmp(service, "tcp") ? S_TCP : S_EXEC;
    queue_json(c, NB_SSHF_OPEN, open);
    flush_out(c);
    if (nb_sshgw_handoff(S->g, sv[1]) < 0) {
        close(sv[1]);
        close(sv[0]);
        c->fd = -1;
        return -1;
    }
    set_polled(S, c, 1);
    return 0;
}

/* A shell, a command or the SFTP server on a session channel. */
static int start_session(sess_t *S, chan_t *c, const char *cmd, int sftp)
{
    json_t *args;
    const char *svc = "exec";
    if (sftp) {
        /* The agent binary is also an SFTP server (src/agent/sftp.c); it
         * runs as the VM's user like any command. */
        args = json_pack("{s:[s,s], s:b}", "argv", "nilbox-agent", "sftp-server", "stdin", 1);
    } else if (c->want_pty) {
        svc = "pty";
        args = json_pack("{s:s, s:i, s:i}", "term", c->term, "rows", c->rows, "cols", c->cols);
        if (args && cmd)
            json_object_set_new(args, "argv", json_pack("[s,s,s]", "/bin/sh", "-c", cmd));
    } else {
        args = cmd ? json_pack("{s:[s,s,s], s:b}", "argv", "/bin/sh", "-c", cmd, "stdin", 1)
                   : json_pack("{s:[s,s], s:b}", "argv", "/bin/sh", "-l", "stdin", 1);
    }
    return args ? chan_start(S, c, svc, args) : -1;
}

static const char *sig_name(int sig)
{
    switch (sig) {
    case SIGHUP:
        return "HUP";
    case SIGINT:
        return "INT";
    case SIGQUIT:
        return "QUIT";
    case SIGKILL:
        return "KILL";
    case SIGPIPE:
        return "PIPE";
    case SIGALRM:
        return "ALRM";
    case SIGTERM:
        return "TERM";
    case SIGSEGV:
        return "SEGV";
    case SIGABRT:
        return "ABRT";
    case SIGUSR1:
        return "USR1";
    case SIGUSR2:
        return "USR2";
    default:
        return NULL;
    }
}

static void on_ctl(chan_t *c, const uint8_t *p, size_t n, int status)
{
    json_t *m = json_loadb((const char *)p, n, 0, NULL);
    json_t *v;
    if (!json_is_object(m)) {
        json_decref(m);
        return;
    }
    if ((v = json_object_get(m, "exit")) && json_is_integer(v)) {
        c->have_exit = 1;
        c->exit_code = (int)json_integer_value(v);
    } else if ((v = json_object_get(m, "signal")) && json_is_integer(v)) {
        c->have_exit = 1;
        c->exit_signal = (int)json_integer_value(v);
    } else if (status && (v = json_object_get(m, "error")) && json_is_string(v)) {
        /* The stream could not open or broke: say why on stderr. */
        char msg[600];
        int k = snprintf(msg, sizeof msg, "nilbox: %.500s\r\n", json_string_value(v));
        if (c->kind == K_SESSION && k > 0)
            ssh_channel_write_stderr(c->ch, msg, (uint32_t)k);
        c->have_exit = 1;
        c->exit_code = 255;
        c->fd_eof = 1;
    }
    json_decref(m);
}

/* fd -> SSH: frames from the loop, data within the client's window. */
static void pump_in(sess_t *S, chan_t *c)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        if (c->cur_left) {
            uint32_t win = ssh_channel_window_size(c->ch);
            size_t n = c->cur_left < win ? c->cur_left : win;
            const uint8_t *p = c->in + c->in_off;
            int w = 0;
            if (n)
                w = c->cur_type == NB_SSHF_STDERR ? ssh_channel_write_stderr(c->ch, p, (uint32_t)n)
                                                  : ssh_channel_write(c->ch, p, (uint32_t)n);
            if (w == SSH_ERROR) {
                c->ended = 1;
                return;
            }
            c->in_off += (size_t)w;
            c->cur_left -= (size_t)w;
            if (c->cur_left) {
                set_polled(S, c, 0); /* wait for the window, not the fd */
                return;
            }
            continue;
        }
        set_polled(S, c, !c->fd_eof);
        unsigned type;
        const uint8_t *pay;
        size_t plen, used;
        int r = nb_sshf_decode(c->in + c->in_off, c->in_len - c->in_off, &type, &pay, &plen, &used);
        if (r < 0) {
            c->fd_eof = 1;
            return;
        }
        if (r == 1) {
            c->in_off += used;
            if (type == NB_SSHF_STDIO || type == NB_SSHF_STDERR) {
                c->cur_type = type;
                c->cur_left = plen;
                c->in_off -= plen; /* written from the buffer in place */
            } else if (type == NB_SSHF_CTL || type == NB_SSHF_STATUS) {
                on_ctl(c, pay, plen, type == NB_SSHF_STATUS);
            } else if (type == NB_SSHF_FIN) {
                c->guest_fin = 1;
            }
            continue;
        }
        if (c->fd_eof)
            return;
        if (c->in_off) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        ssize_t k = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (k <= 0) {
            c->fd_eof = 1;
            set_polled(S, c, 0);
            return;
        }
        c->in_len += (size_t)k;
    }
}

/* SSH -> fd: the client's bytes as frames, while the loop keeps up. */
static void pump_out(chan_t *c)
{
    uint8_t buf[READ_CHUNK];
    for (int rounds = 0; rounds < 8 && !c->fd_eof; rounds++) {
        flush_out(c);
        if (c->out_len || c->client_eof)
            return;
        int n = ssh_channel_read_nonblocking(c->ch, buf, sizeof buf, 0);
        if (n == SSH_ERROR) {
            c->ended = 1;
            return;
        }
        if (n > 0) {
            queue_frame(c, NB_SSHF_STDIO, buf, (size_t)n);
            continue;
        }
        if (ssh_channel_is_eof(c->ch)) {
            c->client_eof = 1;
            /* exec: stdin ends by a CTL message (FIN would end signals
             * too); pty and tcp: FIN. */
            if (c->svc == S_EXEC)
                queue_json(c, NB_SSHF_CTL, json_pack("{s:b}", "eof", 1));
            else
                queue_frame(c, NB_SSHF_FIN, NULL, 0);
            flush_out(c);
        }
        return;
    }
}

static void finish(chan_t *c)
{
    if (c->kind == K_SESSION && c->have_exit) {
        const char *sn = c->exit_signal ? sig_name(c->exit_signal) : NULL;
        if (sn)
            ssh_channel_request_send_exit_signal(c->ch, sn, 0, "", "");
        else
            ssh_channel_request_send_exit_status(c->ch, c->exit_signal ? 128 + c->exit_signal
                                                                       : c->exit_code);
    } else if (c->kind == K_SESSION) {
        ssh_channel_request_send_exit_status(c->ch, 255);
    }
    ssh_channel_send_eof(c->ch);
    ssh_channel_close(c->ch);
    c->ended = 1;
}

/* One pass over a channel; 1 when it is over and can go. */
static int service(sess_t *S, chan_t *c)
{
    if (!c->ch)
        return 1;
    if (c->fd < 0)
        return ssh_channel_is_closed(c->ch);
    pump_out(c);
    pump_in(S, c);
    if (c->ended)
        return 1;
    /* The guest's output ended (FIN), or the loop gave up: exit status,
     * EOF and CLOSE once every byte is out. */
    if ((c->guest_fin || c->fd_eof) && !c->cur_left && c->in_off == c->in_len) {
        finish(c);
        return 1;
    }
    return ssh_channel_is_closed(c->ch);
}

/* ------------------------------------------------------------ requests */

static int on_auth(sess_t *S, ssh_message m)
{
    if (ssh_message_subtype(m) == SSH_AUTH_METHOD_PUBLICKEY) {
        const char *user = ssh_message_auth_user(m);
        int ok = user && nb_vm_valid_name(user) && key_allowed(S->g, ssh_message_auth_pubkey(m));
        enum ssh_publickey_state_e st = ssh_message_auth_publickey_state(m);
        if (ok && st == SSH_PUBLICKEY_STATE_NONE) {
            ssh_message_auth_reply_pk_ok_simple(m);
            return 0;
        }
        if (ok && st == SSH_PUBLICKEY_STATE_VALID) {
            snprintf(S->vm, sizeof S->vm, "%s", user);
            S->authed = 1;
            ssh_message_auth_reply_success(m, 0);
            nb_log(NB_LOG_INFO, "SSH gateway: login to VM %s", S->vm);
            return 0;
        }
    }
    if (++S->tries > AUTH_TRIES)
        S->kill = 1;
    ssh_message_auth_set_methods(m, SSH_AUTH_METHOD_PUBLICKEY);
    ssh_message_reply_default(m);
    return 0;
}

static int is_loopback(const char *h)
{
    return h && (!strcmp(h, "localhost") || !strcmp(h, "127.0.0.1") || !strcmp(h, "::1"));
}

static int on_open(sess_t *S, ssh_message m)
{
    int sub = ssh_message_subtype(m);
    if (sub != SSH_CHANNEL_SESSION && sub != SSH_CHANNEL_DIRECT_TCPIP)
        return 1;
    const char *dst = NULL;
    int port = 0;
    if (sub == SSH_CHANNEL_DIRECT_TCPIP) {
        /* The agent's tcp service reaches the guest's loopback only. */
        dst = ssh_message_channel_request_open_destination(m);
        port = ssh_message_channel_request_open_destination_port(m);
        if (!is_loopback(dst) || port < 1 || port > 65535)
            return 1;
    }
    chan_t *c = chan_new(S, sub == SSH_CHANNEL_SESSION ? K_SESSION : K_TCP);
    if (!c)
        return 1;
    c->ch = ssh_message_channel_request_open_reply_accept(m);
    if (c->ch && sub == SSH_CHANNEL_DIRECT_TCPIP &&
        chan_start(S, c, "tcp",
                   json_pack("{s:i, s:s}", "port", port, "host",
                             strcmp(dst, "::1") ? "127.0.0.1" : "::1")) < 0) {
        ssh_channel_close(c->ch);
    }
    return 0;
}

static int on_channel(sess_t *S, ssh_message m)
{
    chan_t *c = chan_find(S, ssh_message_channel_request_channel(m));
    if (!c || c->kind != K_SESSION)
        return 1;
    switch (ssh_message_subtype(m)) {
    case SSH_CHANNEL_REQUEST_PTY: {
        const char *t = ssh_message_channel_request_pty_term(m);
        int w = ssh_message_channel_request_pty_width(m),
            h = ssh_message_channel_request_pty_height(m);
        if (c->fd >= 0)
            return 1;
        c->want_pty = 1;
        if (w >= 1 && w <= 10000)
            c->cols = w;
        if (h >= 1 && h <= 10000)
            c->rows = h;
        if (t && t[0] && strlen(t) < sizeof c->term &&
            strspn(t, "abcdefghijklmnopqrstuvwxyz0123456789-+._") == strlen(t))
            snprintf(c->term, sizeof c->term, "%s", t);
        ssh_message_channel_request_reply_success(m);
        return 0;
    }
    case SSH_CHANNEL_REQUEST_SHELL:
    case SSH_CHANNEL_REQUEST_EXEC:
    case SSH_CHANNEL_REQUEST_SUBSYSTEM: {
        int sub = ssh_message_subtype(m);
        const char *cmd =
            sub == SSH_CHANNEL_REQUEST_EXEC ? ssh_message_channel_request_command(m) : NULL;
        const char *ss =
            sub == SSH_CHANNEL_REQUEST_SUBSYSTEM ? ssh_message_channel_request_subsystem(m) : NULL;
        if (c->fd >= 0 || (sub == SSH_CHANNEL_REQUEST_SUBSYSTEM && (!ss || strcmp(ss, "sftp"))))
            return 1;
        if (start_session(S, c, cmd, ss != NULL) < 0)
            return 1;
        ssh_message_channel_request_reply_success(m);
        return 0;
    }
    case SSH_CHANNEL_REQUEST_WINDOW_CHANGE: {
        int w = ssh_message_channel_request_pty_width(m),
            h = ssh_message_channel_request_pty_height(m);
        if (c->fd >= 0 && c->svc == S_PTY && w >= 1 && w <= 10000 && h >= 1 && h <= 10000) {
            queue_json(c, NB_SSHF_CTL, json_pack("{s:{s:i, s:i}}", "resize", "rows", h, "cols", w));
            flush_out(c);
        } else if (c->fd < 0 && w >= 1 && w <= 10000 && h >= 1 && h <= 10000) {
            c->cols = w;
            c->rows = h;
        }
        ssh_message_channel_request_reply_success(m);
        return 0;
    }
    default:
        return 1; /* env, x11, agent forwarding, ...: refused */
    }
}

static int on_message(ssh_session s, ssh_message m, void *ud)
{
    sess_t *S = ud;
    int type = ssh_message_type(m);
    if (type == SSH_REQUEST_AUTH)
        return S->authed ? 1 : on_auth(S, m);
    if (!S->authed)
        return 1;
    if (type == SSH_REQUEST_CHANNEL_OPEN)
        return on_open(S, m);
    if (type == SSH_REQUEST_CHANNEL)
        return on_channel(S, m);
    return 1; /* global requests (remote forwarding, ...): refused */
}

/* ------------------------------------------------------------ thread */

static void run_session(sess_t *S)
{
    nb_sshgw_t *g = S->g;
    ssh_session s = S->s;
    long t = KEX_TIMEOUT_S;
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &t);
    pthread_mutex_lock(&g->mu);
    int r = g->bind && !g->stopping ? ssh_bind_accept_fd(g->bind, s, S->fd) : SSH_ERROR;
    pthread_mutex_unlock(&g->mu);
    if (r != SSH_OK)
        return;
    /* Before the key exchange: the client's first requests may arrive
     * with its last packets, and without the callback they would wait in
     * libssh's queue for good. */
    ssh_set_auth_methods(s, SSH_AUTH_METHOD_PUBLICKEY);
    ssh_set_message_callback(s, on_message, S);
    if (ssh_handle_key_exchange(s) != SSH_OK)
        return; /* garbage, a port scan, a timeout: nothing more to do */
    ssh_set_blocking(s, 0);
    if (!(S->ev = ssh_event_new()) || ssh_event_add_session(S->ev, s) != SSH_OK)
        return;
    uint64_t t0 = now_ms();
    while (!stopping(g) && !S->kill) {
        if (ssh_event_dopoll(S->ev, POLL_MS) == SSH_ERROR) {
            nb_log(NB_LOG_INFO, "SSH gateway: session ends: %s", ssh_get_error(s));
            break;
        }
        if (ssh_get_status(s) & (SSH_CLOSED | SSH_CLOSED_ERROR)) {
            nb_log(NB_LOG_INFO, "SSH gateway: session closed: %s", ssh_get_error(s));
            break;
        }
        if (!S->authed && now_ms() - t0 > LOGIN_MS)
            break;
        for (int i = 0; i < MAX_CHANNELS; i++)
            if (S->ch[i] && service(S, S->ch[i]))
                chan_free(S, i);
    }
}

static void *thread_main(void *arg)
{
    sess_t *S = arg;
    nb_sshgw_t *g = S->g;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the loop's */
    run_session(S);
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (S->ch[i])
            chan_free(S, i);
    if (S->ev) {
        ssh_event_remove_session(S->ev, S->s);
        ssh_event_free(S->ev);
    }
    pthread_mutex_lock(&g->mu);
    S->fd = -1; /* libssh closes it below */
    pthread_mutex_unlock(&g->mu);
    ssh_disconnect(S->s);
    ssh_free(S->s);
    S->s = NULL;
    pthread_mutex_lock(&g->mu);
    S->finished = 1;
    int stop = g->stopping;
    pthread_mutex_unlock(&g->mu);
    if (!stop)
        uv_async_send(&g->async); /* the loop joins us */
    return NULL;
}

int nb_sshgw_sess_start(nb_sshgw_t *g, int fd)
{
    sess_t *S = calloc(1, sizeof *S);
    if (S)
        S->s = ssh_new();
    pthread_mutex_lock(&g->mu);
    int full = g->nsessions >= MAX_SESSIONS || g->stopping;
    pthread_mutex_unlock(&g->mu);
    if (!S || !S->s || full) {
        if (S && S->s)
            ssh_free(S->s);
        free(S);
        close(fd);
        return -EAGAIN;
    }
    S->g = g;
    S->fd = fd;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 512 * 1024); /* channels live on the heap */
    pthread_mutex_lock(&g->mu);
    int r = pthread_create(&S->th, &at, thread_main, S);
    if (r == 0) {
        S->next = g->sessions;
        g->sessions = S;
        g->nsessions++;
    }
    pthread_mutex_unlock(&g->mu);
    pthread_attr_destroy(&at);
    if (r != 0) {
        ssh_free(S->s);
        free(S);
        close(fd);
        return -r;
    }
    return 0;
}

void nb_sshgw_sess_reap(nb_sshgw_t *g, int stop)
{
    for (;;) {
        sess_t *S = NULL, **pp;
        pthread_mutex_lock(&g->mu);
        for (pp = &g->sessions; *pp; pp = &(*pp)->next) {
            if (stop && (*pp)->fd >= 0)
                shutdown((*pp)->fd, SHUT_RDWR); /* ends a key exchange in progress */
            if ((*pp)->finished || stop) {
                S = *pp;
                *pp = S->next;
                g->nsessions--;
                break;
            }
        }
        pthread_mutex_unlock(&g->mu);
        if (!S)
            return;
        pthread_join(S->th, NULL);
        free(S);
    }
}
