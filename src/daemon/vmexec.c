/* Runs one command in a VM from inside the daemon (vmexec.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vm/manager.h"
#include "daemon/vmexec.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/mux.h"

struct nb_vmexec {
    nb_muxsess_stream_t *st;
    uv_timer_t timer;
    nb_vmexec_cbs_t cbs;
    void *ud;
    int status; /* -1 until the agent reports it */
    char line[2][NB_VMEXEC_LINE + 1];
    size_t linelen[2];
    char tail[NB_VMEXEC_TAIL + 1];
    size_t taillen;
};

static void free_runner(uv_handle_t *h)
{
    free(h->data);
}

static void finish(nb_vmexec_t *x, int err, const char *msg)
{
    for (int c = 0; c < 2; c++)
        if (x->linelen[c] && x->cbs.on_line) {
            x->line[c][x->linelen[c]] = '\0';
            x->cbs.on_line(x->ud, c, x->line[c]);
        }
    x->tail[x->taillen] = '\0';
    if (!err && x->status < 0) {
        err = NB_ECLOSED;
        msg = "the command ended without an exit status";
    }
    x->st = NULL;
    uv_timer_stop(&x->timer);
    if (x->cbs.on_done)
        x->cbs.on_done(x->ud, err, x->status, msg ? msg : "", x->tail);
    uv_close((uv_handle_t *)&x->timer, free_runner);
}

static void keep_tail(nb_vmexec_t *x, const uint8_t *p, size_t n)
{
    if (n >= NB_VMEXEC_TAIL) {
        memcpy(x->tail, p + n - NB_VMEXEC_TAIL, NB_VMEXEC_TAIL);
        x->taillen = NB_VMEXEC_TAIL;
        return;
    }
    if (x->taillen + n > NB_VMEXEC_TAIL) {
        size_t drop = x->taillen + n - NB_VMEXEC_TAIL;
        memmove(x->tail, x->tail + drop, x->taillen - drop);
        x->taillen -= drop;
    }
    memcpy(x->tail + x->taillen, p, n);
    x->taillen += n;
}

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    nb_vmexec_t *x = ud;
    if (chan == NB_MUX_CHAN_CTL) {
        json_t *m = NULL;
        if (nb_json_parse(d, &m, NULL, 0) == 0) {
            if (json_is_integer(json_object_get(m, "exit")))
                x->status = (int)nb_json_int(m, "exit", 0) & 0xff;
            else if (json_is_integer(json_object_get(m, "signal")))
                x->status = 128 + ((int)nb_json_int(m, "signal", 0) & 0x7f);
        }
        json_decref(m);
        return;
    }
    int c = chan == NB_MUX_CHAN_STDERR;
    const uint8_t *p = d.p;
    keep_tail(x, p, d.len);
    for (size_t i = 0; i < d.len; i++) {
        if (p[i] == '\n') {
            x->line[c][x->linelen[c]] = '\0';
            if (x->cbs.on_line)
                x->cbs.on_line(x->ud, c, x->line[c]);
            x->linelen[c] = 0;
        } else if (x->linelen[c] < NB_VMEXEC_LINE) {
            /* Output goes to logs, events and terminals: no escapes. */
            x->line[c][x->linelen[c]++] = (p[i] < 0x20 || p[i] == 0x7f) ? ' ' : (char)p[i];
        }
    }
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    nb_vmexec_t *x = ud;
    char m[300];
    if (err)
        snprintf(m, sizeof m, "the command could not run in the VM: %s", msg);
    finish(x, err ? NB_ECLOSED : 0, err ? m : NULL);
}

static const nb_muxsess_stream_cbs_t cbs_stream = {
    .on_data = on_data, .on_close = on_close, .auto_consume = 1};

static void on_timeout(uv_timer_t *t)
{
    nb_vmexec_t *x = t->data;
    if (x->st)
        nb_muxsess_stream_reset(x->st, NB_MUX_E_TIMEOUT, "timed out");
    finish(x, NB_ETIMEOUT, "the command did not finish in time and was killed");
}

int nb_vmexec_start(nb_daemon_t *d, const char *vm, json_t *argv, const char *user, json_t *env,
                    uint64_t timeout_ms, const nb_vmexec_cbs_t *cbs, void *ud, nb_vmexec_t **out)
{
    nb_vm_t *v = d->vmm ? nb_vmm_find(d->vmm, vm) : NULL;
    nb_muxsess_t *s = v ? nb_vm_session(v) : NULL;
    if (!s || !nb_muxsess_is_up(s))
        return NB_ESTATE;
    nb_vmexec_t *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->cbs = *cbs;
    x->ud = ud;
    x->status = -1;
    /* The guest's placeholders and proxy settings under the command's own. */
    json_t *genv = d->guest.env ? d->guest.env(d->guest.ud, vm) : json_object();
    if (genv && json_is_object(env))
        json_object_update(genv, env);
    json_t *args =
        json_pack("{s:O, s:b, s:o}", "argv", argv, "stdin", 0, "env", genv ? genv : json_object());
    if (user)
        json_object_set_new(args, "user", json_string(user));
    else if (nb_vm_user(v)[0])
        json_object_set_new(args, "user", json_string(nb_vm_user(v)));
    char *js = args ? json_dumps(args, JSON_COMPACT) : NULL;
    json_decref(args);
    int r =
        js ? nb_muxsess_open(s, "exec", nb_iov(js, strlen(js)), &cbs_stream, x, &x->st) : -ENOMEM;
    free(js);
    if (r < 0) {
        free(x);
        return r;
    }
    /* No stdin: our direction is done at once (FIN also closes stdin). */
    nb_muxsess_stream_fin(x->st);
    uv_timer_init(d->loop, &x->timer);
    x->timer.data = x;
    uv_timer_start(&x->timer, on_timeout, timeout_ms, 0);
    if (out)
        *out = x;
    return 0;
}

void nb_vmexec_cancel(nb_vmexec_t *x)
{
    if (!x)
        return;
    if (x->st)
        nb_muxsess_stream_reset(x->st, NB_MUX_E_CANCEL, "cancelled");
    x->st = NULL;
    uv_timer_stop(&x->timer);
    uv_close((uv_handle_t *)&x->timer, free_runner);
}
