/* exec and pty over WebSocket (docs/api.md, "exec and pty"): each socket
 * is bridged to one `exec` or `pty` stream of the VM's nbmux channel.
 *
 * Binary messages carry stream bytes behind a one-byte channel prefix
 * (0 stdin/stdout, 1 stderr); text messages are JSON control messages.
 * Flow control is by acknowledgement in both directions, because the
 * WebSocket layer has no back-pressure of its own: the server sends at
 * most OUT_WINDOW output bytes that the client has not acknowledged with
 * {"ack": n} (the rest stays unconsumed in the channel, so the guest
 * pauses), and acknowledges input with {"ack": n} once the channel has
 * taken it; a client keeps at most IN_WINDOW unacknowledged input bytes in
 * flight. Input acks are batched (IN_ACK_EVERY, and whatever is left when
 * the channel drains after being full): one per keystroke would be one more
 * message for the client to handle ahead of each echo (bench/ui). A client
 * waits only with IN_WINDOW in flight, which is more than the server ever
 * leaves unacknowledged once the channel has taken it, so it never stalls. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mux.h"

#define OUT_WINDOW (1u << 20)
#define IN_WINDOW (1u << 20)
#define IN_ACK_EVERY (64u << 10) /* < IN_WINDOW */
#define PENDING_MAX (16u << 20)  /* > the channel's largest stream window */
#define READY_WAIT_MS 120000u

enum { K_EXEC, K_PTY };

typedef struct {
    nb_daemon_t *d;
    int kind;
    char vm[NB_VM_NAME_MAX + 1];
    int rows, cols;
    char term[64];
    char user[33];     /* guest account to run as; "" = the VM's default */
    nb_api_ctx_t *ctx; /* until the upgrade */
    nb_ws_t *ws;
    nb_muxsess_stream_t *st;
    int opened;  /* the stream was opened */
    int st_done; /* the stream has ended */
    int fin_sent;
    uint64_t unacked;    /* output bytes sent, not acknowledged */
    nb_buf_t pending;    /* output held back: records chan(1) len(4) bytes */
    uint64_t in_unacked; /* input bytes taken but not yet acknowledged */
    json_t *final;       /* {"exit": N} / {"signal": N} / {"error": ...} for the end */
    int closing;
} bridge_t;

static void bridge_maybe_free(bridge_t *b)
{
    if (b->ws || b->st)
        return;
    nb_buf_free(&b->pending);
    json_decref(b->final);
    free(b);
}

static void send_json(bridge_t *b, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s && b->ws)
        nb_ws_send(b->ws, 1, s, strlen(s));
    free(s);
    json_decref(j);
}

/* Ends the WebSocket with `final` (or an error) once all output is out. */
static void maybe_finish(bridge_t *b)
{
    if (!b->st_done || b->pending.len || !b->ws || b->closing)
        return;
    b->closing = 1;
    int err = b->final && json_object_get(b->final, "error");
    if (!b->final)
        b->final = json_pack("{s:s, s:s}", "error", "the command ended without an exit status",
                             "code", "channel");
    send_json(b, json_incref(b->final));
    nb_ws_close(b->ws, err ? 1011 : 1000, NULL);
}

static void fail(bridge_t *b, const char *code, const char *msg)
{
    if (!b->final || !json_object_get(b->final, "error")) {
        json_decref(b->final);
        b->final = json_pack("{s:s, s:s}", "error", msg, "code", code);
    }
    if (b->st) {
        nb_muxsess_stream_reset(b->st, NB_MUX_E_CANCEL, "client gone or invalid");
        b->st = NULL;
    }
    b->st_done = 1;
    nb_buf_reset(&b->pending);
    maybe_finish(b);
}

/* ------------------------------------------------------------ output */

static int send_out(bridge_t *b, unsigned chan, const uint8_t *p, size_t n)
{
    uint8_t *m = malloc(n + 1);
    if (!m)
        return -ENOMEM;
    m[0] = (uint8_t)chan;
    memcpy(m + 1, p, n);
    int r = b->ws ? nb_ws_send(b->ws, 0, m, n + 1) : NB_ECLOSED;
    free(m);
    if (r == 0) {
        b->unacked += n;
        if (b->st)
            nb_muxsess_stream_consume(b->st, n);
    }
    return r;
}

static void flush_pending(bridge_t *b)
{
    size_t off = 0;
    while (off + 5 <= b->pending.len && b->unacked < OUT_WINDOW) {
        const uint8_t *p = b->pending.p + off;
        uint32_t n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
        if (send_out(b, p[0], p + 5, n) < 0) {
            nb_buf_consume(&b->pending, off);
            fail(b, "slow-client", "the client does not keep up with the output");
            return;
        }
        off += 5 + n;
    }
    nb_buf_consume(&b->pending, off);
    maybe_finish(b);
}

static void st_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    bridge_t *b = ud;
    if (chan == NB_MUX_CHAN_CTL) {
        json_t *m = NULL;
        if (nb_json_parse(d, &m, NULL, 0) == 0 && (json_is_integer(json_object_get(m, "exit")) ||
                                                   json_is_integer(json_object_get(m, "signal")))) {
            json_decref(b->final);
            b->final = m;
            return;
        }
        json_decref(m);
        return;
    }
    if (!b->ws) {
        nb_muxsess_stream_consume(st, d.len);
        return;
    }
    if (!b->pending.len && b->unacked < OUT_WINDOW) {
        if (send_out(b, chan, d.p, d.len) < 0)
            fail(b, "slow-client", "the client does not keep up with the output");
        return;
    }
    uint8_t h[5] = {(uint8_t)chan, (uint8_t)(d.len >> 24), (uint8_t)(d.len >> 16),
                    (uint8_t)(d.len >> 8), (uint8_t)d.len};
    if (nb_buf_append(&b->pending, h, 5) < 0 || nb_buf_append(&b->pending, d.p, d.len) < 0)
        fail(b, "slow-client", "too much unacknowledged output");
}

static void st_fin(nb_muxsess_stream_t *st, void *ud)
{
    bridge_t *b = ud;
    if (!b->fin_sent) {
        b->fin_sent = 1;
        nb_muxsess_stream_fin(st);
    }
}

static void st_drain(nb_muxsess_stream_t *st, void *ud)
{
    bridge_t *b = ud;
    if (b->in_unacked && b->ws) {
        send_json(b, json_pack("{s:I}", "ack", (json_int_t)b->in_unacked));
        b->in_unacked = 0;
    }
}

static void st_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    bridge_t *b = ud;
    b->st = NULL;
    b->st_done = 1;
    if (err) {
        char m[400];
        const char *c = "channel";
        if (code == NB_MUX_E_FAILED) {
            c = "spawn-failed";
            nb_vm_fmt(m, sizeof m, "%s", msg);
        } else if (code == NB_MUX_E_BAD_ARGS) {
            c = "invalid";
            /* An image built before it had the 'agent' account: say how out. */
            nb_vm_fmt(m, sizeof m, "the agent refused the request: %s%s%s%s", msg,
                      strstr(msg, "no account") ? "; choose another with --user, or change the "
                                                  "VM's default with 'nilbox vm set "
                                                : "",
                      strstr(msg, "no account") ? b->vm : "",
                      strstr(msg, "no account") ? " --user root' (images built before the "
                                                  "'agent' user lack it: rebuild them)"
                                                : "");
        } else {
            nb_vm_fmt(m, sizeof m, "the VM's channel closed (%s): %s", nb_mux_code_name(code), msg);
        }
        json_decref(b->final);
        b->final = json_pack("{s:s, s:s}", "error", m, "code", c);
    }
    maybe_finish(b);
    bridge_maybe_free(b);
}

static const nb_muxsess_stream_cbs_t st_cbs = {
    .on_data = st_data, .on_fin = st_fin, .on_drain = st_drain, .on_close = st_close};

static int open_stream(bridge_t *b, json_t *args)
{
    nb_vm_t *vm = b->d->vmm ? nb_vmm_find(b->d->vmm, b->vm) : NULL;
    nb_muxsess_t *s = vm ? nb_vm_session(vm) : NULL;
    if (!s) {
        fail(b, "not-running", "the VM's agent is not connected (is the VM running?)");
        return NB_ESTATE;
    }
    /* The guest's placeholders and proxy settings (guestsvc.c) go
     * under the caller's own variables. */
    json_t *genv = b->d->guest.env ? b->d->guest.env(b->d->guest.ud, b->vm) : NULL;
    if (genv) {
        json_t *own = json_object_get(args, "env");
        if (json_is_object(own))
            json_object_update(genv, own);
        json_object_set_new(args, "env", genv);
    }
    if (b->user[0] && !json_object_get(args, "user"))
        json_object_set_new(args, "user", json_string(b->user));
    /* No user named: the VM's default (`vm set --user`); "" is the agent's
     * own account (VMs created before the setting existed). */
    if (!json_object_get(args, "user") && nb_vm_user(vm)[0])
        json_object_set_new(args, "user", json_string(nb_vm_user(vm)));
    char *js = json_dumps(args, JSON_COMPACT);
    int r = js ? nb_muxsess_open(s, b->kind == K_PTY ? "pty" : "exec", nb_iov(js, strlen(js)),
                                 &st_cbs, b, &b->st)
               : -ENOMEM;
    free(js);
    if (r < 0) {
        b->st = NULL;
        fail(b, "channel", "cannot open a stream to the agent");
        return r;
    }
    b->opened = 1;
    return 0;
}

/* ------------------------------------------------------------ input */

static void on_input(bridge_t *b, const uint8_t *p, size_t n)
{
    if (n == 0 || p[0] != 0) {
        fail(b, "protocol", "binary messages from the client must start with channel byte 0");
        return;
    }
    if (!b->st)
        return; /* the command is over; late keystrokes are dropped */
    if (n > 1 && nb_muxsess_stream_write(b->st, NB_MUX_CHAN_STDIO, p + 1, n - 1) < 0) {
        fail(b, "slow-client", "too much unacknowledged input (the client must wait for acks)");
        return;
    }
    b->in_unacked += n - 1;
    if (b->in_unacked >= IN_ACK_EVERY && nb_muxsess_stream_writable(b->st)) {
        send_json(b, json_pack("{s:I}", "ack", (json_int_t)b->in_unacked));
        b->in_unacked = 0;
    }
}

static void ctl_to_stream(bridge_t *b, json_t *m)
{
    char *s = json_dumps(m, JSON_COMPACT);
    if (s && b->st)
        nb_muxsess_stream_write(b->st, NB_MUX_CHAN_CTL, s, strlen(s));
    free(s);
}

static void on_control(bridge_t *b, json_t *m)
{
    json_t *v;
    if (!b->opened && b->kind == K_EXEC) {
        /* The first message of an exec socket is the command. */
        json_t *argv = json_object_get(m, "argv");
        if (!json_is_array(argv) || json_array_size(argv) == 0) {
            fail(b, "invalid", "the first message must be {\"argv\": [\"cmd\", ...]}");
            return;
        }
        json_t *args = json_pack("{s:O, s:b}", "argv", argv, "stdin", nb_json_bool(m, "stdin", 1));
        json_t *env = json_object_get(m, "env");
        const char *cwd = nb_json_str(m, "cwd");
        const char *user = nb_json_str(m, "user");
        if (user && !nb_vm_valid_user(user)) {
            fail(b, "invalid", "user must be an account name (a-z, 0-9, _ and -)");
            json_decref(args);
            return;
        }
        if (user)
            json_object_set_new(args, "user", json_string(user));
        if (json_is_object(env))
            json_object_set(args, "env", env);
        if (cwd)
            json_object_set_new(args, "cwd", json_string(cwd));
        open_stream(b, args);
        json_decref(args);
        return;
    }
    if ((v = json_object_get(m, "ack")) && json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        b->unacked = n > 0 && (uint64_t)n < b->unacked ? b->unacked - (uint64_t)n : 0;
        flush_pending(b);
        return;
    }
    if (!b->st)
        return;
    if ((v = json_object_get(m, "resize")) && json_is_object(v) && b->kind == K_PTY) {
        json_int_t r = nb_json_int(v, "rows", 0), c = nb_json_int(v, "cols", 0);
        if (r < 1 || r > 10000 || c < 1 || c > 10000) {
            fail(b, "invalid", "resize needs rows and cols from 1 to 10000");
            return;
        }
        json_t *msg = json_pack("{s:{s:I, s:I}}", "resize", "rows", r, "cols", c);
        ctl_to_stream(b, msg);
        json_decref(msg);
    } else if ((v = json_object_get(m, "signal")) && json_is_integer(v)) {
        json_int_t sig = json_integer_value(v);
        if (sig < 1 || sig > 64) {
            fail(b, "invalid", "signal must be 1..64");
            return;
        }
        json_t *msg = json_pack("{s:I}", "signal", sig);
        ctl_to_stream(b, msg);
        json_decref(msg);
    } else if (json_is_true(json_object_get(m, "eof"))) {
        if (b->kind == K_EXEC) {
            json_t *msg = json_pack("{s:b}", "eof", 1);
            ctl_to_stream(b, msg);
            json_decref(msg);
        } else if (!b->fin_sent) {
            b->fin_sent = 1;
            nb_muxsess_stream_fin(b->st);
        }
    } else {
        fail(b, "invalid", "unknown control message");
    }
}

static void ws_message(nb_ws_t *ws, int text, const uint8_t *data, size_t len, void *ud)
{
    bridge_t *b = ud;
    if (b->closing)
        return;
    if (!text) {
        if (!b->opened)
            fail(b, "protocol", "send the command first ({\"argv\": [...]})");
        else
            on_input(b, data, len);
        return;
    }
    json_t *m = NULL;
    if (nb_json_parse(nb_iov(data, len), &m, NULL, 0) < 0 || !json_is_object(m)) {
        json_decref(m);
        fail(b, "protocol", "text messages must be JSON objects");
        return;
    }
    on_control(b, m);
    json_decref(m);
}

static void ws_closed(nb_ws_t *ws, int code, void *ud)
{
    bridge_t *b = ud;
    b->ws = NULL;
    if (b->st) {
        /* The client went away: RST ends the command (exec: SIGKILL to its
         * group; pty: hangup). */
        nb_muxsess_stream_reset(b->st, NB_MUX_E_CANCEL, "client disconnected");
        b->st = NULL;
    }
    bridge_maybe_free(b);
}

static const nb_ws_cbs_t ws_cbs = {ws_message, ws_closed, 1u << 20};

/* ------------------------------------------------------------ upgrade */

static void on_ready(void *ud, int r, const char *msg, json_t *res)
{
    bridge_t *b = ud;
    nb_api_ctx_t *ctx = b->ctx;
    b->ctx = NULL;
    if (r < 0) {
        nb_api_vm_reply_err(ctx, r, msg);
        free(b);
        return;
    }
    nb_buf_init(&b->pending, PENDING_MAX);
    /* The web UI offers ["nilbox.v1", "nilbox.token.<t>"] (browsers cannot
     * set headers on a WebSocket) and needs one picked: never the token. */
    const char *proto = nb_httpd_req_header(ctx->req, "Sec-WebSocket-Protocol");
    if (proto && strstr(proto, "nilbox.v1"))
        nb_httpd_add_header(ctx->req, "Sec-WebSocket-Protocol", "nilbox.v1");
    if (nb_httpd_ws_accept(nb_api_take_req(ctx), &ws_cbs, b, &b->ws) < 0) {
        nb_buf_free(&b->pending);
        free(b);
        return;
    }
    if (b->kind == K_PTY) {
        json_t *args =
            json_pack("{s:s, s:i, s:i}", "term", b->term, "rows", b->rows, "cols", b->cols);
        open_stream(b, args);
        json_decref(args);
    }
}

static void upgrade(nb_api_ctx_t *ctx, int kind)
{
    char v[64];
    if (!nb_api_is_upgrade(ctx)) {
        nb_api_reply_error(ctx, 400, "bad-request",
                           "this route is a WebSocket: send Upgrade: websocket (see docs/api.md)");
        return;
    }
    if (!ctx->d->vmm) {
        nb_api_reply_error(ctx, 503, "unavailable", "the VM manager is not running");
        return;
    }
    const char *name = nb_api_param(ctx, "name");
    if (!nb_vm_valid_name(name)) {
        nb_api_reply_error(ctx, 404, "not-found", "no VM named '%.64s'", name);
        return;
    }
    bridge_t *b = calloc(1, sizeof *b);
    if (!b) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    b->d = ctx->d;
    b->kind = kind;
    nb_vm_fmt(b->vm, sizeof b->vm, "%s", name);
    b->rows = 24;
    b->cols = 80;
    nb_vm_fmt(b->term, sizeof b->term, "xterm-256color");
    if (nb_api_query(ctx, "rows", v, sizeof v) == 1)
        b->rows = (int)strtol(v, NULL, 10);
    if (nb_api_query(ctx, "cols", v, sizeof v) == 1)
        b->cols = (int)strtol(v, NULL, 10);
    if (nb_api_query(ctx, "term", v, sizeof v) == 1)
        nb_vm_fmt(b->term, sizeof b->term, "%s", v);
    if (nb_api_query(ctx, "user", v, sizeof v) == 1) {
        if (!nb_vm_valid_user(v)) {
            free(b);
            nb_api_reply_error(ctx, 422, "invalid",
                               "user must be an account name (a-z, 0-9, _ and -)");
            return;
        }
        nb_vm_fmt(b->user, sizeof b->user, "%s", v);
    }
    if (b->rows < 1 || b->rows > 10000 || b->cols < 1 || b->cols > 10000 ||
        strspn(b->term, "abcdefghijklmnopqrstuvwxyz0123456789-+._") != strlen(b->term) ||
        !b->term[0]) {
        free(b);
        nb_api_reply_error(ctx, 422, "invalid",
                           "rows and cols must be 1..10000, term a terminal name");
        return;
    }
    b->ctx = ctx;
    nb_vmm_when_ready(ctx->d->vmm, name, READY_WAIT_MS, on_ready, b);
}

static void on_exec(nb_api_ctx_t *ctx)
{
    upgrade(ctx, K_EXEC);
}

static void on_pty(nb_api_ctx_t *ctx)
{
    upgrade(ctx, K_PTY);
}

/* Their own table: api_vm.c's routes do not call into this file. */
const nb_api_route_t nb_api_routes_vmio[] = {
    {"GET", "/v1/vms/{name}/exec", on_exec, 0},
    {"GET", "/v1/vms/{name}/pty", on_pty, 0},
    {0},
};
