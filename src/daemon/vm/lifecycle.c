/* VM lifecycle, one state machine: start (the pool half is boot.c; here
 * the listener, spawn, QMP and the agent's handshake), stop (agent
 * poweroff -> ACPI -> QMP quit -> SIGKILL, each step after a timeout:
 * DESIGN.md section 5), exit and crash handling, the restart policy and
 * re-attach after a daemon restart. See manager.h and docs/internals/vm.md. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sodium.h>

#include "host/accel.h"
#include "daemon/vm/manager_int.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

static const nb_vmchan_cbs_t vm_chan_cbs;
static void qmp_connect(nb_vm_t *vm);
static void schedule_restart(nb_vm_t *vm, const char *why);
static void on_status_tick(uv_timer_t *t);
/* QEMU is gone (`how`: "exit status 0", "killed by signal 9"...): tears
 * the boot down and decides the next state (stopped, crashed, restart). */
static void vm_exited(nb_vm_t *vm, const char *how);
static void run_step(nb_vm_t *vm, int step);

static void on_handle_closed(uv_handle_t *h)
{
    nb_vm_t *vm = h->data;
    vm->handles--; /* the timers keep the VM alive until nb_vm_destroy */
}

/* ------------------------------------------------------------ start */

static void start_fail(nb_vm_t *vm, int r, const char *msg, nb_vmm_cb cb, void *ud)
{
    unlink(vm->fwcfg_key);
    unlink(vm->keyfile);
    unlink(vm->shm);
    nb_vm_fmt(vm->last_exit, sizeof vm->last_exit, "start failed: %s", msg ? msg : nb_strerror(r));
    if (vm->state == NB_VM_CRASHED && vm->spec.restart == NB_VM_RESTART_ON_FAILURE) {
        /* A restart attempt of the policy failed: count it, try again. */
        nb_vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
        schedule_restart(vm, "restart failed");
    }
    if (cb)
        cb(ud, r, msg, NULL);
    nb_vm_waiters_fire(vm, W_READY, r, msg);
    nb_vm_waiters_fire(vm, W_STARTED, r, msg);
}

/* "; QEMU said: \"LINE\" (in PATH)" for the last error line QEMU wrote
 * during this boot, or "" when it wrote none. Reads at most 64 KiB of a
 * local file: cheap enough for the loop thread, and only on failures. */
static void qemu_said(nb_vm_t *vm, char *out, size_t outsz)
{
    char line[300];
    out[0] = '\0';
    if (nb_qemu_log_error_line(vm->qemu_log, vm->qemu_log_off, line, sizeof line) > 0)
        nb_vm_fmt(out, outsz, "; QEMU said: \"%s\" (in %s)", line, vm->qemu_log);
    else
        nb_vm_fmt(out, outsz, "; QEMU wrote nothing to %s", vm->qemu_log);
}

/* QEMU stopped the guest while it booted (KVM internal error, panic,
 * anything that is not "running"): fail the boot now, not at the boot
 * deadline. The exit path decides (TCG fallback, crashed). */
static void vm_halted(nb_vm_t *vm, const char *status)
{
    if (vm->state != NB_VM_STARTING || vm->halted[0])
        return;
    nb_vm_fmt(vm->halted, sizeof vm->halted, "QEMU stopped the guest (status %s)", status);
    nb_vm_progress(vm, "%s; stopping QEMU", vm->halted);
    uv_timer_stop(&vm->status_timer);
    nb_vm_stop(vm, 1, NULL, NULL);
}

static void on_status_reply(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    nb_vm_t *vm = data;
    if (r < 0 || !json_is_object(ret) || vm->state != NB_VM_STARTING)
        return;
    const char *status = nb_json_str(ret, "status");
    if (json_is_true(json_object_get(ret, "running")) || !status)
        return;
    /* "shutdown": the guest powered off or reset; QEMU exits next and the
     * exit path handles it. */
    if (strcmp(status, "shutdown") != 0 && strcmp(status, "inmigrate") != 0)
        vm_halted(vm, status);
}

static void query_status(nb_vm_t *vm)
{
    if (vm->qmp && nb_qmp_is_ready(vm->qmp))
        nb_qmp_command(vm->qmp, "query-status", NULL, 2000, on_status_reply, vm);
}

static void on_status_tick(uv_timer_t *t)
{
    nb_vm_t *vm = t->data;
    if (vm->state != NB_VM_STARTING) {
        uv_timer_stop(t);
        return;
    }
    query_status(vm);
}

static void on_qemu_exit(uv_process_t *p, int64_t status, int sig)
{
    nb_vm_t *vm = p->data;
    char how[64];
    if (sig)
        nb_vm_fmt(how, sizeof how, "killed by signal %d", sig);
    else
        nb_vm_fmt(how, sizeof how, "exit status %lld", (long long)status);
    vm_exited(vm, how);
}

static void on_boot_timeout(uv_timer_t *t)
{
    nb_vm_t *vm = t->data;
    if (vm->state != NB_VM_STARTING)
        return;
    char msg[512], said[400];
    qemu_said(vm, said, sizeof said);
    nb_vm_fmt(msg, sizeof msg,
              "the agent did not connect within %u s; stopping the VM%s (see 'nilbox vm logs %s')",
              VM_BOOT_TIMEOUT_MS / 1000, said, vm->spec.name);
    nb_vm_progress(vm, "%s", msg);
    vm->boot_failed = 1;
    nb_vm_waiters_fire(vm, W_READY, NB_ETIMEOUT, msg);
    nb_vm_stop(vm, 1, NULL, NULL);
}

static void start_done(nb_vm_job_t *jj)
{
    nb_vm_boot_t *j = (nb_vm_boot_t *)jj;
    nb_vm_t *vm = jj->vm;
    nb_vmm_t *m = vm->m;
    int r = jj->r;
    vm->busy = NULL;
    if (r < 0) {
        start_fail(vm, r, jj->msg, jj->cb, jj->ud);
        goto out;
    }
    nb_vmchan_cbs_t cbs = vm_chan_cbs;
    cbs.ud = vm;
    if ((r = nb_vmchan_new(m->loop, vm->mux_sock, j->key, &cbs, &vm->chan)) < 0) {
        nb_vm_fmt(jj->msg, sizeof jj->msg, "cannot listen on %s: %s", vm->mux_sock, nb_strerror(r));
        start_fail(vm, r, jj->msg, jj->cb, jj->ud);
        goto out;
    }
    memset(&vm->proc, 0, sizeof vm->proc);
    r = nb_qemu_spawn(m->loop, &j->argv, vm->qemu_log, &vm->proc, on_qemu_exit);
    vm->proc.data = vm;
    if (r < 0) {
        if (vm->proc.loop) { /* libuv: a failed spawn's handle must still be closed */
            vm->handles++;
            uv_close((uv_handle_t *)&vm->proc, on_handle_closed);
        }
        nb_vmchan_free(vm->chan);
        vm->chan = NULL;
        nb_vm_fmt(jj->msg, sizeof jj->msg, "cannot start %s: %s", j->argv.argv[0], uv_strerror(r));
        start_fail(vm, r == UV_ENOENT ? NB_EUNSUPPORTED : r, jj->msg, jj->cb, jj->ud);
        goto out;
    }
    vm->handles++;
    vm->proc_open = 1;
    vm->is_child = 1;
    vm->pid = vm->proc.pid;
    vm->gen++;
    vm->exited = 0;
    vm->agent_up = 0;
    vm->reattached = 0;
    vm->stop_requested = 0;
    vm->shutdown_reason[0] = '\0';
    vm->qemu_version[0] = '\0';
    vm->boot_t0 = uv_now(m->loop);
    vm->started_ms = nb_events_now_ms();
    vm->ready_ms = 0;
    vm->boot_secs = 0;
    vm->restart_at_ms = 0;
    vm->halted[0] = '\0';
    vm->boot_failed = 0;
    vm->qemu_log_off = j->log_off;
    nb_vm_fmt(vm->accel_reason, sizeof vm->accel_reason, "%s", j->reason);
    nb_vm_fmt(vm->accel, sizeof vm->accel, "%s",
              j->argv.accel == NB_QEMU_ACCEL_KVM ? "kvm" : "tcg");
    nb_vm_fmt(vm->machine, sizeof vm->machine, "%s",
              j->argv.machine == NB_QEMU_MACHINE_MICROVM ? "microvm" : "q35");
    nb_vm_set_state(vm, NB_VM_STARTING);
    nb_vm_db_set_want(vm, 1);
    nb_vm_emit(vm, "vm.starting",
               json_pack("{s:i, s:s, s:s, s:s}", "pid", vm->pid, "accel", vm->accel, "machine",
                         vm->machine, "accel_reason", vm->accel_reason));
    nb_vm_progress(vm, "QEMU started (pid %d, %s, %s, %u CPU, %u MiB)", vm->pid, vm->machine,
                   vm->accel, vm->spec.cpus, vm->spec.memory_mib);
    nb_vm_progress(vm, "accelerator %s: %s%s", vm->accel, vm->accel_reason,
                   j->argv.accel == NB_QEMU_ACCEL_KVM ? "" : " (slower than KVM)");
    vm->qmp_deadline = uv_now(m->loop) + VM_QMP_CONNECT_MS;
    qmp_connect(vm);
    uv_timer_start(&vm->boot_timer, on_boot_timeout, VM_BOOT_TIMEOUT_MS, 0);
    uv_timer_start(&vm->status_timer, on_status_tick, VM_STATUS_POLL_MS, VM_STATUS_POLL_MS);
    nb_vm_waiters_fire(vm, W_STARTED, 0, NULL);
    if (jj->cb) {
        if (j->wait) {
            nb_vm_waiter_add(vm, W_READY, 0, jj->cb, jj->ud);
        } else {
            json_t *res = nb_vm_json(vm, 0);
            jj->cb(jj->ud, 0, NULL, res);
            json_decref(res);
        }
    }
out:
    nb_vm_boot_cleanup(jj);
    free(j);
}

void nb_vm_start(nb_vm_t *vm, int wait, nb_vmm_cb cb, void *ud)
{
    char msg[256];
    if (vm->state == NB_VM_STARTING || vm->state == NB_VM_RUNNING) {
        if (wait && cb) {
            if (nb_vm_session(vm)) {
                json_t *res = nb_vm_json(vm, 0);
                cb(ud, 0, NULL, res);
                json_decref(res);
            } else {
                nb_vm_waiter_add(vm, W_READY, 0, cb, ud);
            }
            return;
        }
        /* Idempotent: the answer's state says it was running already. */
        if (cb) {
            json_t *res = nb_vm_json(vm, 0);
            cb(ud, 0, NULL, res);
            json_decref(res);
        }
        return;
    }
    if (vm->state == NB_VM_STOPPING) {
        nb_vm_fmt(msg, sizeof msg, "VM '%s' is stopping; start it again once it has stopped",
                  vm->spec.name);
        if (cb)
            cb(ud, NB_ESTATE, msg, NULL);
        return;
    }
    if (vm->state == NB_VM_CRASHED && vm->pid) {
        nb_vm_fmt(msg, sizeof msg, "VM '%s' is still being cleaned up; try again in a moment",
                  vm->spec.name);
        if (cb)
            cb(ud, NB_ESTATE, msg, NULL);
        return;
    }
    uv_timer_stop(&vm->timer); /* a pending policy restart: this start replaces it */
    nb_vm_boot_t *j = calloc(1, sizeof *j);
    if (!j) {
        if (cb)
            cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    j->wait = wait;
    const char *src = NULL;
    nb_vm_fmt(j->setting, sizeof j->setting, "%s", nb_vm_accel_setting(vm, &src));
    nb_vm_fmt(j->source, sizeof j->source, "%s", src);
    nb_vm_fmt(j->home, sizeof j->home, "%s", vm->m->home);
    j->fallback = vm->kvm_fallback;
    nb_vm_fmt(j->kvm_error, sizeof j->kvm_error, "%s", vm->kvm_error);
    vm->kvm_fallback = 0;
    j->j.cleanup = nb_vm_boot_cleanup;
    nb_vm_queue_busy(vm, &j->j, "starting", nb_vm_boot_work, start_done, cb, ud);
}

/* ------------------------------------------------------------ QMP */

static void on_kvm_reply(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    nb_vm_t *vm = data;
    if (r == 0 && json_is_object(ret) && !vm->accel[0]) {
        nb_vm_fmt(vm->accel, sizeof vm->accel, "%s",
                  json_is_true(json_object_get(ret, "enabled")) ? "kvm" : "tcg");
        nb_vm_fmt(vm->accel_reason, sizeof vm->accel_reason,
                  "re-attached: QEMU reports %s (query-kvm)", vm->accel);
    }
}

static void on_qmp_ready(nb_qmp_t *q, int r, void *ud)
{
    nb_vm_t *vm = ud;
    nb_vm_fmt(vm->qemu_version, sizeof vm->qemu_version, "%s", nb_qmp_version(q));
    /* QEMU has read its fw_cfg files by the time its monitor answers. */
    if (unlink(vm->fwcfg_key) == 0 || !vm->reattached)
        nb_log(NB_LOG_DEBUG, "vm %s: fw_cfg key file removed", vm->spec.name);
    if (vm->reattached)
        nb_qmp_command(q, "query-kvm", NULL, 0, on_kvm_reply, vm);
    else {
        nb_vm_progress(vm, "QMP connected (QEMU %s)", vm->qemu_version);
        if (vm->state == NB_VM_STARTING)
            query_status(vm);
    }
}

static void on_qmp_event(nb_qmp_t *q, const char *event, json_t *data, void *ud)
{
    nb_vm_t *vm = ud;
    if (!strcmp(event, "STOP") && vm->state == NB_VM_STARTING)
        query_status(vm); /* why did it stop? */
    else if (!strcmp(event, "GUEST_PANICKED"))
        vm_halted(vm, "guest-panicked");
    if (!strcmp(event, "SHUTDOWN")) {
        const char *reason = nb_json_str(data, "reason");
        nb_vm_fmt(vm->shutdown_reason, sizeof vm->shutdown_reason, "%s", reason ? reason : "");
        nb_log(NB_LOG_INFO, "vm %s: QEMU shutting down (%s)", vm->spec.name, vm->shutdown_reason);
    }
}

static void on_qmp_retry(uv_timer_t *t)
{
    qmp_connect(t->data);
}

static void on_qmp_close(nb_qmp_t *q, int r, void *ud)
{
    nb_vm_t *vm = ud;
    int was_up = nb_qmp_version(q)[0] != '\0';
    nb_qmp_close(q);
    vm->qmp = NULL;
    if (vm->exited || !vm->pid)
        return;
    if (!was_up && uv_now(vm->m->loop) < vm->qmp_deadline) {
        vm->timer.data = vm;
        uv_timer_start(&vm->timer, on_qmp_retry, 50, 0);
        return;
    }
    /* Not our child: the monitor's end is the first sign of QEMU's exit. */
    if (!vm->is_child && kill(vm->pid, 0) < 0 && errno == ESRCH)
        vm_exited(vm, "QEMU exited");
}

static void qmp_connect(nb_vm_t *vm)
{
    nb_qmp_opts_t o = {0};
    o.timeout_ms = 5000;
    o.handshake_timeout_ms = 5000;
    o.on_event = on_qmp_event;
    o.on_ready = on_qmp_ready;
    o.on_close = on_qmp_close;
    o.ud = vm;
    if (vm->qmp || vm->exited)
        return;
    if (access(vm->qmp_sock, F_OK) < 0) {
        /* QEMU has not created its monitor socket yet: look again soon
         * (without a failed connect, which the QMP client would log). */
        if (uv_now(vm->m->loop) < vm->qmp_deadline) {
            vm->timer.data = vm;
            uv_timer_start(&vm->timer, on_qmp_retry, 20, 0);
        }
        return;
    }
    if (nb_qmp_connect(vm->m->loop, vm->qmp_sock, &o, &vm->qmp) < 0)
        vm->qmp = NULL;
}

/* ------------------------------------------------------------ channel */

static void chan_up(nb_vmchan_t *c, void *ud)
{
    nb_vm_t *vm = ud;
    vm->agent_up = 1;
    if (vm->state == NB_VM_STARTING) {
        uv_timer_stop(&vm->boot_timer);
        vm->ready_ms = nb_events_now_ms();
        /* Milliseconds are enough; keep the JSON short (4.13, not 4.1310000000000002). */
        vm->boot_secs = (double)((uv_now(vm->m->loop) - vm->boot_t0) / 10) / 100.0;
        nb_vm_set_state(vm, NB_VM_RUNNING);
        nb_vm_progress(vm, "agent ready after %.1f s", vm->boot_secs);
        nb_vm_emit(vm, "vm.running",
                   json_pack("{s:f, s:s, s:i}", "boot_secs", vm->boot_secs, "accel", vm->accel,
                             "pid", vm->pid));
    } else {
        nb_vm_emit(vm, "vm.agent", json_pack("{s:b}", "connected", 1));
    }
    /* The guest's CA and environment (guestsvc.c, in the background). */
    const nb_vmm_guest_t *g = &vm->m->guest;
    if (g->on_agent_up)
        g->on_agent_up(g->ud, vm->spec.name);
    nb_vm_waiters_fire(vm, W_READY, 0, NULL);
}

static void chan_down(nb_vmchan_t *c, int err, const char *reason, void *ud)
{
    nb_vm_t *vm = ud;
    int was = vm->agent_up;
    vm->agent_up = 0;
    if (was && vm->state == NB_VM_RUNNING)
        nb_vm_emit(vm, "vm.agent", json_pack("{s:b, s:s}", "connected", 0, "reason", reason));
    else if (!was)
        nb_log(NB_LOG_WARN, "vm %s: channel handshake failed: %s", vm->spec.name, reason);
}

/* Streams the guest opens (egress, dns) go to guestsvc.c. */
static int chan_open(nb_vmchan_t *c, nb_muxsess_stream_t *st, const char *service, nb_iov_t args,
                     void *ud)
{
    nb_vm_t *vm = ud;
    const nb_vmm_guest_t *g = &vm->m->guest;
    if (!g->on_open)
        return NB_EUNSUPPORTED;
    return g->on_open(g->ud, vm->spec.name, st, service, args);
}

static const nb_vmchan_cbs_t vm_chan_cbs = {chan_up, chan_down, NULL, chan_open};

/* ------------------------------------------------------------ exit */

/* Tears down one boot's runtime state. QEMU must be gone, or (detach) be
 * left alone. */
static void teardown(nb_vm_t *vm, int keep_runtime)
{
    uv_timer_stop(&vm->timer);
    uv_timer_stop(&vm->boot_timer);
    uv_timer_stop(&vm->status_timer);
    if (vm->qmp) {
        nb_qmp_t *q = vm->qmp;
        vm->qmp = NULL;
        nb_qmp_close(q);
    }
    if (vm->chan) {
        nb_vmchan_t *c = vm->chan;
        vm->chan = NULL;
        nb_vmchan_free(c);
    }
    vm->agent_up = 0;
    if (vm->proc_open) {
        vm->proc_open = 0;
        uv_close((uv_handle_t *)&vm->proc, on_handle_closed);
    }
    if (vm->pidpoll_open) {
        vm->pidpoll_open = 0;
        uv_close((uv_handle_t *)&vm->pidpoll, on_handle_closed);
    }
    if (vm->pidfd >= 0) {
        close(vm->pidfd); /* libuv has stopped polling it (uv_close above) */
        vm->pidfd = -1;
    }
    if (!keep_runtime) {
        unlink(vm->keyfile);
        unlink(vm->fwcfg_key);
        unlink(vm->shm);
        unlink(vm->qmp_sock);
        unlink(vm->mux_sock);
        unlink(vm->pidfile);
    }
    vm->pid = 0;
}

/* Auto mode, a boot under KVM that never came up: boot again under TCG
 * (once), and have the start job record the host as KVM-unusable. 1 when
 * it did. */
static int kvm_fallback(nb_vm_t *vm, const char *failure, const char *line)
{
    const char *setting = nb_vm_accel_setting(vm, NULL);
    if (strcmp(setting, "auto") != 0 || strcmp(vm->accel, "kvm") != 0 || vm->reattached)
        return 0;
    nb_vm_fmt(vm->kvm_error, sizeof vm->kvm_error, "%s", line[0] ? line : failure);
    vm->kvm_fallback = 1;
    nb_vm_progress(vm, "KVM failed (%s%s%s); starting again under TCG", failure,
                   line[0] ? ": " : "", line);
    nb_vm_emit(vm, "vm.restarting",
               json_pack("{s:s, s:s}", "reason", "KVM failed: starting again under TCG", "error",
                         vm->kvm_error));
    nb_vm_set_state(vm, NB_VM_STOPPED);
    nb_vm_waiters_fire(vm, W_STOPPED, 0, NULL);
    /* W_READY waiters (start --wait) stay: the TCG boot answers them. */
    nb_vm_start(vm, 0, NULL, NULL);
    return 1;
}

static void vm_exited(nb_vm_t *vm, const char *how)
{
    if (vm->exited)
        return;
    vm->exited = 1;
    int stop_req = vm->stop_requested, restart = vm->restart_after_stop;
    int was_ready = vm->ready_ms != 0;
    uint64_t up_ms = was_ready ? (uint64_t)(nb_events_now_ms() - vm->ready_ms) : 0;
    char reason[32], halted[200], said[400], line[300] = "";
    nb_vm_fmt(reason, sizeof reason, "%s", vm->shutdown_reason);
    nb_vm_fmt(halted, sizeof halted, "%s", vm->halted);
    vm->halted[0] = '\0';
    /* What QEMU wrote during this boot, for every "did not come up". */
    qemu_said(vm, said, sizeof said);
    if (nb_qemu_log_error_line(vm->qemu_log, vm->qemu_log_off, line, sizeof line) <= 0)
        line[0] = '\0';
    teardown(vm, 0);
    vm->stop_requested = 0;
    vm->restart_after_stop = 0;
    vm->stop_step = STOP_NONE;
    nb_vm_fmt(vm->last_exit, sizeof vm->last_exit, "QEMU %s%s%s%s%s", how, reason[0] ? " (" : "",
              reason, reason[0] ? ")" : "", was_ready ? "" : said);
    if (up_ms >= VM_HEALTHY_AFTER_MS)
        vm->failures = 0;
    /* A boot that failed on its own (QEMU stopped the guest, or exited
     * before the agent came up, without a stop request or a clean guest
     * power-off), or that missed the boot deadline. */
    int boot_fail =
        !was_ready && !vm->reattached &&
        (halted[0] || vm->boot_failed || (!stop_req && strcmp(reason, "guest-shutdown") != 0));
    if (boot_fail) {
        char failure[200];
        if (halted[0])
            nb_vm_fmt(failure, sizeof failure, "%s", halted);
        else if (vm->boot_failed)
            nb_vm_fmt(failure, sizeof failure, "the agent did not connect within %u s",
                      VM_BOOT_TIMEOUT_MS / 1000);
        else
            nb_vm_fmt(failure, sizeof failure, "QEMU %s", how);
        if (kvm_fallback(vm, failure, line)) {
            vm->boot_failed = 0;
            return;
        }
    }
    if (halted[0]) {
        vm->boot_failed = 0;
        nb_vm_fmt(vm->last_exit, sizeof vm->last_exit, "%s%s", halted, said);
        nb_vm_set_state(vm, NB_VM_CRASHED);
        nb_vm_db_set_want(vm, 0);
        nb_vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
        nb_vm_waiters_fire(vm, W_READY, NB_ESTATE, vm->last_exit);
        nb_vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        return;
    }
    if (vm->boot_failed) {
        /* Our own stop after the boot deadline: a failed start, not a user
         * stop; no policy restart either (it would likely fail again). */
        vm->boot_failed = 0;
        nb_vm_fmt(vm->last_exit, sizeof vm->last_exit,
                  "boot timeout: the agent did not connect within %u s%s",
                  VM_BOOT_TIMEOUT_MS / 1000, said);
        nb_vm_set_state(vm, NB_VM_CRASHED);
        nb_vm_db_set_want(vm, 0);
        nb_vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
        nb_vm_waiters_fire(vm, W_READY, NB_ETIMEOUT, vm->last_exit);
        nb_vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        return;
    }
    if (stop_req || !strcmp(reason, "guest-shutdown")) {
        nb_vm_set_state(vm, NB_VM_STOPPED);
        if (!restart)
            nb_vm_db_set_want(vm, 0);
        nb_vm_emit(vm, "vm.stopped",
                   json_pack("{s:s, s:s}", "reason",
                             stop_req ? "stop request" : "the guest powered off", "last_exit",
                             vm->last_exit));
        if (!restart) /* a restart's waiters wait for the next boot */
            nb_vm_waiters_fire(vm, W_READY, NB_ESTATE, "the VM stopped before its agent was ready");
        nb_vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        if (restart)
            nb_vm_start(vm, 0, NULL, NULL);
        return;
    }
    nb_vm_set_state(vm, NB_VM_CRASHED);
    if (!strcmp(reason, "guest-reset")) {
        nb_vm_emit(vm, "vm.restarting", json_pack("{s:s}", "reason", "the guest rebooted"));
        nb_vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        schedule_restart(vm, "guest reboot");
        return;
    }
    char msg[900];
    nb_vm_fmt(msg, sizeof msg, "the VM crashed: %s", vm->last_exit);
    nb_log(NB_LOG_WARN, "vm %s: %s", vm->spec.name, msg);
    nb_vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
    nb_vm_waiters_fire(vm, W_READY, NB_ESTATE, msg);
    nb_vm_waiters_fire(vm, W_STOPPED, 0, NULL);
    if (vm->spec.restart == NB_VM_RESTART_ON_FAILURE)
        schedule_restart(vm, "restart policy on-failure");
    else
        nb_vm_db_set_want(vm, 0);
}

static void on_restart_timer(uv_timer_t *t)
{
    nb_vm_t *vm = t->data;
    vm->restart_at_ms = 0;
    if (vm->state != NB_VM_CRASHED)
        return;
    nb_vm_progress(vm, "restarting (attempt %d)", vm->failures);
    nb_vm_start(vm, 0, NULL, NULL);
}

static void schedule_restart(nb_vm_t *vm, const char *why)
{
    if (vm->failures >= VM_RESTART_MAX_TRIES) {
        nb_log(NB_LOG_WARN, "vm %s: %d failed starts in a row; giving up", vm->spec.name,
               vm->failures);
        nb_vm_emit(vm, "vm.restart_gave_up", json_pack("{s:i}", "failures", vm->failures));
        vm->restart_at_ms = 0;
        nb_vm_db_set_want(vm, 0);
        return;
    }
    uint64_t delay = VM_RESTART_BACKOFF_MS;
    for (int i = 0; i < vm->failures && delay < VM_RESTART_BACKOFF_MAX_MS; i++)
        delay *= 2;
    if (delay > VM_RESTART_BACKOFF_MAX_MS)
        delay = VM_RESTART_BACKOFF_MAX_MS;
    vm->failures++;
    vm->restart_at_ms = nb_events_now_ms() + (int64_t)delay;
    nb_vm_emit(vm, "vm.restarting",
               json_pack("{s:s, s:I, s:i}", "reason", why, "delay_ms", (json_int_t)delay, "attempt",
                         vm->failures));
    vm->timer.data = vm;
    uv_timer_start(&vm->timer, on_restart_timer, delay, 0);
}

/* ------------------------------------------------------------ re-attach */

static void on_pidfd(uv_poll_t *p, int status, int events)
{
    nb_vm_t *vm = p->data;
    vm_exited(vm, "exited");
}

void nb_vm_reattach(nb_vm_t *vm)
{
    nb_vmm_t *m = vm->m;
    int pid = 0;
    int r = nb_qemu_find_running(vm->pidfile, vm->qmp_sock, &pid);
    if (r < 0) {
        teardown(vm, 0);
        if (vm->want_running) {
            nb_vm_fmt(vm->last_exit, sizeof vm->last_exit, "QEMU was gone when nilboxd started");
            nb_vm_set_state(vm, NB_VM_CRASHED);
            nb_vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
            if (vm->spec.restart == NB_VM_RESTART_ON_FAILURE)
                schedule_restart(vm, "restart policy on-failure");
            else
                nb_vm_db_set_want(vm, 0);
        }
        return;
    }
    uint8_t key[NB_MUX_KEY_LEN];
    int have_key = 0;
    int fd = open(vm->keyfile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        have_key = read(fd, key, sizeof key) == (ssize_t)sizeof key;
        close(fd);
    }
    if (!have_key) {
        nb_log(NB_LOG_WARN,
               "vm %s: the per-boot key is lost; the agent cannot reconnect until "
               "the VM restarts",
               vm->spec.name);
        randombytes_buf(key, sizeof key);
        nb_vm_fmt(vm->last_exit, sizeof vm->last_exit,
                  "per-boot key lost: restart the VM to reach its agent");
    }
    nb_vmchan_cbs_t cbs = vm_chan_cbs;
    cbs.ud = vm;
    r = nb_vmchan_new(m->loop, vm->mux_sock, key, &cbs, &vm->chan);
    sodium_memzero(key, sizeof key);
    if (r < 0)
        nb_log(NB_LOG_ERR, "vm %s: cannot listen on %s: %s", vm->spec.name, vm->mux_sock,
               nb_strerror(r));
    vm->pid = pid;
    vm->is_child = 0;
    vm->exited = 0;
    vm->reattached = 1;
    vm->gen++;
    vm->accel[0] = vm->machine[0] = vm->accel_reason[0] = '\0';
    struct stat st;
    vm->started_ms = stat(vm->pidfile, &st) == 0 ? (int64_t)st.st_mtime * 1000 : 0;
    vm->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (vm->pidfd >= 0 && uv_poll_init(m->loop, &vm->pidpoll, vm->pidfd) == 0) {
        vm->pidpoll.data = vm;
        vm->handles++;
        vm->pidpoll_open = 1;
        uv_poll_start(&vm->pidpoll, UV_READABLE, on_pidfd);
    } else if (vm->pidfd >= 0) {
        close(vm->pidfd);
        vm->pidfd = -1;
    }
    nb_vm_set_state(vm, NB_VM_RUNNING);
    nb_vm_db_set_want(vm, 1);
    vm->qmp_deadline = uv_now(m->loop) + VM_QMP_CONNECT_MS;
    qmp_connect(vm);
    nb_log(NB_LOG_NOTICE, "vm %s: re-attached to QEMU pid %d", vm->spec.name, pid);
    nb_vm_emit(vm, "vm.reattached", json_pack("{s:i}", "pid", pid));
}

void nb_vm_poll(nb_vm_t *vm)
{
    /* Re-attached QEMU without a pidfd: poll its pid. */
    if (vm->pid && !vm->is_child && vm->pidfd < 0 && !vm->exited && kill(vm->pid, 0) < 0 &&
        errno == ESRCH)
        vm_exited(vm, "exited");
}

void nb_vm_detach(nb_vm_t *vm)
{
    teardown(vm, 1);
    nb_vm_waiters_fire(vm, 0, NB_ECLOSED, "the daemon is stopping");
}

/* ------------------------------------------------------------ stop */

static void on_step_timer(uv_timer_t *t)
{
    nb_vm_t *vm = t->data;
    if (vm->state != NB_VM_STOPPING || vm->exited)
        return;
    if (vm->stop_step == STOP_KILL || vm->stop_step == STOP_WAIT) {
        if (vm->pid && kill(vm->pid, 0) < 0 && errno == ESRCH) {
            vm_exited(vm, "killed");
            return;
        }
        nb_log(NB_LOG_ERR, "vm %s: QEMU (pid %d) survives SIGKILL; still waiting", vm->spec.name,
               vm->pid);
        vm->stop_step = STOP_WAIT;
        uv_timer_start(&vm->timer, on_step_timer, 1000, 0);
        return;
    }
    nb_log(NB_LOG_INFO, "vm %s: stop step %d timed out", vm->spec.name, vm->stop_step);
    run_step(vm, vm->stop_step + 1);
}

static void on_poweroff_done(void *ud, int r, json_t *res, int exit_code)
{
    nb_vm_t *vm = ud;
    if (vm->exited || vm->stop_step != STOP_AGENT)
        return;
    if (r < 0 || !json_is_true(json_object_get(res, "ok"))) {
        nb_log(NB_LOG_INFO, "vm %s: agent poweroff failed (%s); trying ACPI", vm->spec.name,
               nb_strerror(r));
        run_step(vm, STOP_ACPI);
    }
}

static void on_stop_reply(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    if (r < 0)
        nb_log(NB_LOG_DEBUG, "QMP stop command: %s", nb_strerror(r));
}

static void run_step(nb_vm_t *vm, int step)
{
    vm->stop_step = step;
    vm->timer.data = vm;
    switch (step) {
    case STOP_AGENT: {
        json_t *args = json_pack("{s:s}", "call", "poweroff");
        int r = nb_vmchan_ctl(vm->chan, args, VM_STOP_AGENT_MS, on_poweroff_done, vm);
        json_decref(args);
        if (r < 0) {
            run_step(vm, STOP_ACPI);
            return;
        }
        uv_timer_start(&vm->timer, on_step_timer, VM_STOP_AGENT_MS, 0);
        return;
    }
    case STOP_ACPI:
        if (nb_vm_qmp(vm, "system_powerdown", NULL, 0, on_stop_reply, vm) < 0) {
            run_step(vm, STOP_QUIT);
            return;
        }
        uv_timer_start(&vm->timer, on_step_timer, VM_STOP_ACPI_MS, 0);
        return;
    case STOP_QUIT:
        if (nb_vm_qmp(vm, "quit", NULL, 0, on_stop_reply, vm) < 0) {
            run_step(vm, STOP_KILL);
            return;
        }
        uv_timer_start(&vm->timer, on_step_timer, VM_STOP_QUIT_MS, 0);
        return;
    default:
        vm->stop_step = STOP_KILL;
        if (vm->pid > 1) {
            nb_log(NB_LOG_WARN, "vm %s: killing QEMU (pid %d)", vm->spec.name, vm->pid);
            kill(vm->pid, SIGKILL);
        }
        uv_timer_start(&vm->timer, on_step_timer, VM_STOP_KILL_MS, 0);
        return;
    }
}

void nb_vm_stop(nb_vm_t *vm, int force, nb_vmm_cb cb, void *ud)
{
    if (vm->state == NB_VM_STOPPED || (vm->state == NB_VM_CRASHED && !vm->pid)) {
        if (vm->state == NB_VM_CRASHED) {
            uv_timer_stop(&vm->timer);
            vm->restart_at_ms = 0;
            nb_vm_set_state(vm, NB_VM_STOPPED);
            nb_vm_db_set_want(vm, 0);
            nb_vm_emit(vm, "vm.stopped",
                       json_pack("{s:s}", "reason", "stop request (was crashed)"));
        }
        if (cb) {
            json_t *res = nb_vm_json(vm, 0);
            cb(ud, 0, NULL, res);
            json_decref(res);
        }
        return;
    }
    if (cb)
        nb_vm_waiter_add(vm, W_STOPPED, 0, cb, ud);
    if (vm->state == NB_VM_STOPPING) {
        if (force && vm->stop_step < STOP_QUIT)
            run_step(vm, STOP_QUIT);
        return;
    }
    vm->stop_requested = 1;
    uv_timer_stop(&vm->boot_timer);
    nb_vm_set_state(vm, NB_VM_STOPPING);
    nb_vm_emit(vm, "vm.stopping", json_pack("{s:b}", "force", force));
    run_step(vm, force ? STOP_QUIT : nb_vm_session(vm) ? STOP_AGENT : STOP_ACPI);
}
