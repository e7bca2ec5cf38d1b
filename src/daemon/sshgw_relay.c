/* The SSH gateway's loop side of a channel (sshgw_int.h): frames from the
 * session thread's socketpair to one nbmux stream of the VM and back.
 *
 * Back-pressure: frames from the thread are read only while the stream
 * takes more (nb_muxsess_stream_writable, resumed by on_drain); bytes from
 * the guest are consumed (credit returned to the agent) only once the
 * socketpair's write queue is below its high-water mark, so a slow SSH
 * client stalls its own stream within one window and nothing else.
 *
 * Terminal escapes (THREATS.md A20): what a pty channel's guest writes
 * goes to the user's terminal, so it passes through the same filter as
 * `nilbox shell` (lib/termfilter.h: no OSC 52 clipboard writes, no title
 * reports, no tmux passthrough...); the count of dropped sequences is said
 * on the channel's stderr at the end. exec and tcp channels stay
 * byte-exact: they carry scp/rsync/sftp protocols and pipes, not a
 * terminal (docs/internals/ssh.md). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/sshgw_int.h"
#include "daemon/vm/manager.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mux.h"
#include "lib/stream.h"
#include "lib/termfilter.h"

#define READY_WAIT_MS 120000u
#define IN_MAX (4u * NB_SSHF_MAX)

typedef struct {
    nb_sshgw_t *g;
    nb_stream_t *pipe;
    nb_muxsess_stream_t *st;
    nb_buf_t in; /* frames from the thread not yet handled */
    json_t *open;
    char vm[NB_VM_NAME_MAX + 1];
    char service[8];
    size_t owed; /* guest bytes written to the pipe but not yet consumed */
    int waiting; /* nb_vmm_when_ready pending */
    int opened, fin_sent, pipe_gone, ended;
    int in_process;      /* process_in is on the stack (when_ready may call back at once) */
    nb_termfilter_t *tf; /* pty channels: [0] stdout, [1] stderr (A20); NULL otherwise */
    unsigned tf_chan;    /* the frame type the filter's output goes out as */
    int tf_err;          /* a frame could not be written */
} relay_t;

static void relay_maybe_free(relay_t *r)
{
    if (r->pipe || r->st || r->waiting)
        return;
    nb_buf_free(&r->in);
    json_decref(r->open);
    free(r->tf);
    nb_sshgw_t *g = r->g;
    free(r);
    g->relays--;
    nb_sshgw_maybe_free(g);
}

static void on_pipe_closed(nb_stream_t *s, void *ud)
{
    relay_t *r = ud;
    r->pipe = NULL;
    relay_maybe_free(r);
}

/* Ends the relay: the stream reset (when still open), the pipe closed. */
static void relay_end(relay_t *r, const char *why)
{
    if (r->st) {
        nb_muxsess_stream_reset(r->st, NB_MUX_E_CANCEL, why);
        r->st = NULL;
    }
    if (r->pipe && !r->pipe_gone) {
        r->pipe_gone = 1;
        nb_stream_set_cbs(r->pipe, NULL, NULL, on_pipe_closed, r);
        nb_stream_close(r->pipe, 0);
    }
    relay_maybe_free(r);
}

static int send_frame(relay_t *r, unsigned type, const void *p, size_t n)
{
    if (!r->pipe || r->pipe_gone)
        return NB_ECLOSED;
    uint8_t *b = malloc(NB_SSHF_HDR + n);
    if (!b)
        return -ENOMEM;
    nb_sshf_header(b, type, n);
    if (n)
        memcpy(b + NB_SSHF_HDR, p, n);
    return nb_stream_write(r->pipe, b, NB_SSHF_HDR + n, NULL, NULL);
}

static void send_status(relay_t *r, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s)
        send_frame(r, NB_SSHF_STATUS, s, strlen(s));
    free(s);
    json_decref(j);
}

/* Says why to the client, then lets the thread finish the channel (it
 * closes its end, which ends ours). */
static void relay_fail(relay_t *r, const char *msg)
{
    send_status(r, json_pack("{s:s}", "error", msg));
    if (r->st) {
        nb_muxsess_stream_reset(r->st, NB_MUX_E_CANCEL, "ssh channel failed");
        r->st = NULL;
    }
    r->ended = 1;
    if (r->pipe && !r->pipe_gone)
        nb_stream_shutdown(r->pipe, NULL, NULL);
}

/* ------------------------------------------------------------ guest -> thread */

/* The filter's output: frames of at most NB_SSHF_MAX bytes. */
static void on_filtered(void *ud, const uint8_t *p, size_t n)
{
    relay_t *r = ud;
    for (size_t off = 0; off < n && !r->tf_err;) {
        size_t k = n - off > NB_SSHF_MAX ? NB_SSHF_MAX : n - off;
        if (send_frame(r, r->tf_chan, p + off, k) < 0)
            r->tf_err = 1;
        off += k;
    }
}

/* End of a pty channel: flush what the filters hold, then say on stderr
 * how many sequences were dropped (the terminal is still raw: CRLF). */
static void filter_finish(relay_t *r)
{
    nb_termfilter_stats_t st = {0};
    char line[256];
    if (!r->tf)
        return;
    for (unsigned i = 0; i < 2; i++) {
        r->tf_chan = i;
        nb_termfilter_finish(&r->tf[i], on_filtered, r);
        nb_termfilter_stats(&r->tf[i], &st);
    }
    size_t n = nb_termfilter_notice(&st, line, sizeof line - 1);
    if (n && line[n - 1] == '\n') {
        line[n - 1] = '\r';
        line[n++] = '\n';
        line[n] = '\0';
    }
    if (n)
        send_frame(r, NB_SSHF_STDERR, line, n);
    free(r->tf);
    r->tf = NULL;
}

static void st_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    relay_t *r = ud;
    size_t off = 0;
    if (r->tf && chan <= NB_SSHF_STDERR) {
        r->tf_chan = chan;
        r->tf_err = 0;
        nb_termfilter_feed(&r->tf[chan], d.p, d.len, on_filtered, r);
        off = d.len;
        if (r->tf_err) {
            nb_muxsess_stream_consume(st, d.len);
            return;
        }
    }
    while (off < d.len) {
        size_t n = d.len - off > NB_SSHF_MAX ? NB_SSHF_MAX : d.len - off;
        if (send_frame(r, chan, d.p + off, n) < 0) {
            nb_muxsess_stream_consume(st, d.len - off);
            return;
        }
        off += n;
    }
    if (r->pipe && nb_stream_writable(r->pipe))
        nb_muxsess_stream_consume(st, d.len);
    else
        r->owed += d.len;
}

static void st_fin(nb_muxsess_stream_t *st, void *ud)
{
    relay_t *r = ud;
    filter_finish(r);
    send_frame(r, NB_SSHF_FIN, NULL, 0);
    if (!r->fin_sent) {
        r->fin_sent = 1;
        nb_muxsess_stream_fin(st);
    }
}

static void process_in(relay_t *r);

static void st_drain(nb_muxsess_stream_t *st, void *ud)
{
    relay_t *r = ud;
    if (r->pipe && !r->pipe_gone) {
        nb_stream_read_start(r->pipe);
        process_in(r);
    }
}

static void st_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    relay_t *r = ud;
    r->st = NULL;
    if (err) {
        char m[400];
        if (code == NB_MUX_E_FAILED || code == NB_MUX_E_BAD_ARGS)
            nb_vm_fmt(m, sizeof m, "%s", msg);
        else
            nb_vm_fmt(m, sizeof m, "the VM's channel closed (%s): %s", nb_mux_code_name(code), msg);
        relay_fail(r, m);
    } else if (r->pipe && !r->pipe_gone) {
        nb_stream_shutdown(r->pipe, NULL, NULL);
    }
    relay_maybe_free(r);
}

static const nb_muxsess_stream_cbs_t st_cbs = {
    .on_data = st_data, .on_fin = st_fin, .on_drain = st_drain, .on_close = st_close};

static void on_pipe_drain(nb_stream_t *s, void *ud)
{
    relay_t *r = ud;
    if (r->owed && r->st) {
        nb_muxsess_stream_consume(r->st, r->owed);
        r->owed = 0;
    }
}

/* ------------------------------------------------------------ thread -> guest */

static void on_ready(void *ud, int rc, const char *msg, json_t *res)
{
    relay_t *r = ud;
    r->waiting = 0;
    if (!r->pipe || r->pipe_gone) {
        relay_maybe_free(r);
        return;
    }
    nb_daemon_t *d = r->g->d;
    nb_vm_t *vm = rc == 0 && d->vmm ? nb_vmm_find(d->vmm, r->vm) : NULL;
    nb_muxsess_t *s = vm ? nb_vm_session(vm) : NULL;
    if (!s) {
        char m[300];
        nb_vm_fmt(m, sizeof m, "VM %s is not ready: %s", r->vm,
                  msg      ? msg
                  : rc < 0 ? nb_strerror(rc)
                           : "its agent is not connected");
        relay_fail(r, m);
        return;
    }
    json_t *args = json_object_get(r->open, "args");
    if (strcmp(r->service, "tcp")) {
        /* Like `nilbox exec`: the guest's placeholders and proxy settings,
         * and the VM's default user. */
        json_t *genv = d->guest.env ? d->guest.env(d->guest.ud, r->vm) : NULL;
        if (genv)
            json_object_set_new(args, "env", genv);
        if (nb_vm_user(vm)[0])
            json_object_set_new(args, "user", json_string(nb_vm_user(vm)));
    }
    if (!strcmp(r->service, "pty")) {
        r->tf = malloc(2 * sizeof *r->tf);
        if (!r->tf) {
            relay_fail(r, "out of memory");
            return;
        }
        nb_termfilter_init(&r->tf[0]);
        nb_termfilter_init(&r->tf[1]);
    }
    char *js = json_dumps(args, JSON_COMPACT);
    int e =
        js ? nb_muxsess_open(s, r->service, nb_iov(js, strlen(js)), &st_cbs, r, &r->st) : -ENOMEM;
    free(js);
    if (e < 0) {
        r->st = NULL;
        relay_fail(r, "cannot open a stream to the VM's agent");
        return;
    }
    r->opened = 1;
    send_status(r, json_pack("{s:b}", "ok", 1));
    nb_stream_read_start(r->pipe);
    process_in(r);
}

static int handle_open(relay_t *r, const uint8_t *p, size_t n)
{
    json_t *m = NULL;
    if (nb_json_parse(nb_iov(p, n), &m, NULL, 0) < 0 || !json_is_object(m))
        goto bad;
    const char *vm = nb_json_str(m, "vm"), *svc = nb_json_str(m, "service");
    if (!vm || !nb_vm_valid_name(vm) || !svc ||
        (strcmp(svc, "exec") && strcmp(svc, "pty") && strcmp(svc, "tcp")) ||
        !json_is_object(json_object_get(m, "args")))
        goto bad;
    nb_daemon_t *d = r->g->d;
    /* `nilbox ssh-config`'s block logs in as "nilbox-VM" (OpenSSH's %n);
     * an exact VM name wins. */
    if (d->vmm && !nb_vmm_find(d->vmm, vm) && !strncmp(vm, "nilbox-", 7) &&
        nb_vmm_find(d->vmm, vm + 7))
        vm += 7;
    nb_vm_fmt(r->vm, sizeof r->vm, "%s", vm);
    nb_vm_fmt(r->service, sizeof r->service, "%s", svc);
    r->open = m;
    if (!d->vmm || !nb_vmm_find(d->vmm, vm)) {
        char msg[200];
        nb_vm_fmt(msg, sizeof msg, "no VM named '%s' (the SSH user name is the VM's name)", vm);
        relay_fail(r, msg);
        return 0;
    }
    /* Reading waits for the stream; a stopped VM fails at once. */
    nb_stream_read_stop(r->pipe);
    r->waiting = 1;
    nb_vmm_when_ready(d->vmm, vm, READY_WAIT_MS, on_ready, r);
    return 0;
bad:
    json_decref(m);
    return NB_EPROTO;
}

static void process_in(relay_t *r)
{
    size_t off = 0;
    if (r->in_process)
        return; /* the running call picks up the new state */
    r->in_process = 1;
    while (!r->ended) {
        unsigned type;
        const uint8_t *pay;
        size_t plen, used;
        int k = nb_sshf_decode(r->in.p + off, r->in.len - off, &type, &pay, &plen, &used);
        if (k < 0 || (k == 1 && !r->open && type != NB_SSHF_OPEN) ||
            (k == 1 && r->open && type == NB_SSHF_OPEN)) {
            r->in_process = 0;
            relay_end(r, "bad frame from the ssh gateway");
            return;
        }
        if (k == 0)
            break;
        if (type == NB_SSHF_OPEN) {
            off += used;
            if (handle_open(r, pay, plen) < 0) {
                r->in_process = 0;
                relay_end(r, "bad open");
                return;
            }
            continue;
        }
        if (!r->opened || !r->st || !nb_muxsess_stream_writable(r->st))
            break; /* resumed by on_ready / on_drain */
        off += used;
        if (type == NB_SSHF_FIN) {
            if (!r->fin_sent) {
                r->fin_sent = 1;
                nb_muxsess_stream_fin(r->st);
            }
        } else if (type <= NB_SSHF_CTL && !r->fin_sent && plen) {
            if (nb_muxsess_stream_write(r->st, type, pay, plen) < 0) {
                r->in_process = 0;
                relay_end(r, "stream write failed");
                return;
            }
        }
    }
    r->in_process = 0;
    if (r->pipe && !r->pipe_gone) {
        nb_buf_consume(&r->in, off);
        if (r->st && !nb_muxsess_stream_writable(r->st))
            nb_stream_read_stop(r->pipe);
    }
}

static void on_pipe_read(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud)
{
    relay_t *r = ud;
    if (n < 0) {
        /* The thread closed its end: the channel is over. */
        relay_end(r, "ssh channel closed");
        return;
    }
    int e = nb_buf_append(&r->in, p, (size_t)n);
    free(p);
    if (e < 0) {
        relay_end(r, "too much input");
        return;
    }
    process_in(r);
}

void nb_sshgw_relay_start(nb_sshgw_t *g, int fd)
{
    relay_t *r = calloc(1, sizeof *r);
    if (!r) {
        close(fd);
        return;
    }
    r->g = g;
    nb_buf_init(&r->in, IN_MAX);
    if (nb_stream_pipe_new(g->d->loop, fd, &r->pipe) < 0) {
        nb_buf_free(&r->in);
        free(r);
        return;
    }
    g->relays++;
    nb_stream_set_cbs(r->pipe, on_pipe_read, on_pipe_drain, on_pipe_closed, r);
    nb_stream_read_start(r->pipe);
}
