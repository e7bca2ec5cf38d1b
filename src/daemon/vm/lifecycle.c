/* VM lifecycle: start (pool prep, key, listener, spawn, QMP, agent
 * handshake), stop (agent poweroff -> ACPI -> QMP quit -> SIGKILL), exit
 * and crash handling, the restart policy and re-attach after a daemon
 * restart. See manager.h and docs/internals/vm.md. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sodium.h>

#include "host/home.h"
#include "host/accel.h"
#include "host/image.h"
#include "daemon/vm/vmint.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mux.h"

enum { T_NONE = 0, T_QMP, T_STOP, T_RESTART, T_KILLWAIT };

static const nb_vmchan_cbs_t vm_chan_cbs;
static void qmp_connect(nb_vm_t *vm);
static void schedule_restart(nb_vm_t *vm, const char *why);
static void on_status_tick(uv_timer_t *t);

static void on_handle_closed(uv_handle_t *h)
{
    nb_vm_t *vm = h->data;
    vm->handles--; /* the timers keep the VM alive until vm_destroy */
}

/* ------------------------------------------------------------ start prep */

static pthread_once_t tsc_once = PTHREAD_ONCE_INIT;
static unsigned tsc_khz;

static void measure_tsc(void)
{
    if (nb_qemu_host_tsc_khz(&tsc_khz) < 0)
        tsc_khz = 0;
}

typedef struct {
    vm_job_t j; /* first */
    int wait;
    uint8_t key[NB_MUX_KEY_LEN];
    nb_qemu_argv_t argv;
    char qemu[VM_PATH];
    /* in: copied on the loop thread */
    char home[VM_PATH], setting[8], source[16];
    int fallback;        /* auto, and KVM just failed: TCG, and record it */
    char kvm_error[300]; /* that failure */
    /* out */
    char reason[320];
    int64_t log_off;
} start_job_t;

/* Decides KVM or TCG for this boot (pool thread: may run the KVM probe).
 * 0, or an error with a sentence in jj->msg (kvm requested, none usable). */
static int choose_accel(start_job_t *j, nb_qemu_accel_t *out)
{
    vm_job_t *jj = &j->j;
    nb_qemu_accel_t want = NB_QEMU_ACCEL_AUTO;
    nb_accel_parse(j->setting, &want);
    const char *from = !strcmp(j->source, "vm")             ? ""
                       : !strcmp(j->source, "NILBOX_ACCEL") ? " (NILBOX_ACCEL)"
                                                            : " (default)";
    if (j->fallback) {
        nb_kvm_record_broken(j->home, j->qemu, j->kvm_error);
        *out = NB_QEMU_ACCEL_TCG;
        nb_vm_fmt(j->reason, sizeof j->reason,
                  "auto%s: KVM failed on the previous attempt (%s); TCG", from, j->kvm_error);
        return 0;
    }
    if (want == NB_QEMU_ACCEL_TCG) {
        *out = NB_QEMU_ACCEL_TCG;
        nb_vm_fmt(j->reason, sizeof j->reason, "tcg%s: requested", from);
        return 0;
    }
    nb_kvm_probe_opts_t o = {.home = j->home, .qemu = j->qemu};
    nb_kvm_status_t st;
    int r = nb_kvm_status(&o, &st);
    if (r < 0)
        return r;
    if (want == NB_QEMU_ACCEL_KVM) {
        if (st.state == NB_KVM_ABSENT || st.state == NB_KVM_BROKEN) {
            nb_vm_fmt(jj->msg, sizeof jj->msg,
                      "accel kvm%s: KVM is %s on this host (%s); use 'nilbox vm set %s --accel "
                      "auto' (KVM when it works, else TCG) or --accel tcg",
                      from, st.state == NB_KVM_ABSENT ? "not available" : "present but unusable",
                      st.detail, jj->vm->spec.name);
            return NB_EUNSUPPORTED;
        }
        *out = NB_QEMU_ACCEL_KVM;
        nb_vm_fmt(j->reason, sizeof j->reason, "kvm%s: requested (%s)", from, st.detail);
        return 0;
    }
    switch (st.state) {
    case NB_KVM_OK:
        *out = NB_QEMU_ACCEL_KVM;
        nb_vm_fmt(j->reason, sizeof j->reason, "auto%s: KVM works here (%s%s)", from, st.detail,
                  st.cached ? ", cached" : "");
        break;
    case NB_KVM_UNPROBED:
        *out = NB_QEMU_ACCEL_KVM;
        nb_vm_fmt(j->reason, sizeof j->reason, "auto%s: %s opens (%s)", from, nb_kvm_device(),
                  st.detail);
        break;
    case NB_KVM_BROKEN:
        *out = NB_QEMU_ACCEL_TCG;
        nb_vm_fmt(j->reason, sizeof j->reason, "auto%s: KVM present but unusable: %s; TCG", from,
                  st.detail);
        break;
    default:
        *out = NB_QEMU_ACCEL_TCG;
        nb_vm_fmt(j->reason, sizeof j->reason, "auto%s: no KVM (%s); TCG", from, st.detail);
        break;
    }
    return 0;
}

static void start_work(vm_job_t *jj)
{
    start_job_t *j = (start_job_t *)jj;
    nb_vm_t *vm = jj->vm;
    nb_vmm_t *m = vm->m;
    nb_image_t img;
    char idir[VM_PATH];
    if (vm_find_binary("NILBOX_QEMU", "qemu-system-x86_64", j->qemu, sizeof j->qemu) < 0) {
        jj->r = NB_EUNSUPPORTED;
        nb_vm_fmt(jj->msg, sizeof jj->msg,
                  "QEMU is missing (%s not found); install the Debian package qemu-system-x86",
                  j->qemu);
        return;
    }
    if (nb_image_dir(m->home, vm->spec.image, idir, sizeof idir) < 0 ||
        (jj->r = nb_image_load(idir, &img)) == NB_ENOTFOUND) {
        jj->r = NB_ENOTFOUND;
        nb_vm_fmt(jj->msg, sizeof jj->msg,
                  "image '%s' is not built; build it with 'nilbox image build %s'", vm->spec.image,
                  vm->spec.image);
        return;
    }
    if (jj->r < 0) {
        nb_vm_fmt(jj->msg, sizeof jj->msg,
                  "image '%s' is damaged (%s); rebuild it with 'nilbox image build %s --force'",
                  vm->spec.image, nb_strerror(jj->r), vm->spec.image);
        return;
    }
    if ((jj->r = vm_check_space(m, jj->msg, sizeof jj->msg)) < 0)
        return;
    if (img.disk[0] && access(vm->disk, R_OK | W_OK) < 0) {
        jj->r = NB_ESTATE;
        nb_vm_fmt(jj->msg, sizeof jj->msg,
                  "the VM's disk %s is missing: %s; remove and create "
                  "the VM again",
                  vm->disk, strerror(errno));
        return;
    }
    char parent[VM_PATH];
    nb_vm_fmt(parent, sizeof parent, "%s/vms", m->runtime);
    mkdir(parent, 0700);
    if (mkdir(vm->rdir, 0700) < 0 && errno != EEXIST) {
        jj->r = -errno;
        nb_vm_fmt(jj->msg, sizeof jj->msg, "cannot create %s: %s", vm->rdir, strerror(errno));
        return;
    }
    nb_qemu_accel_t accel;
    if ((jj->r = choose_accel(j, &accel)) < 0)
        return;
    struct stat lst;
    j->log_off = stat(vm->qemu_log, &lst) == 0 ? (int64_t)lst.st_size : 0;
    pthread_once(&tsc_once, measure_tsc);
    /* A fresh key per boot: QEMU reads its copy once (fw_cfg, removed when
     * QMP answers); ours stays 0600 in the runtime folder so that a
     * restarted daemon can authenticate the agent again. */
    randombytes_buf(j->key, sizeof j->key);
    unlink(vm->fwcfg_key);
    unlink(vm->pidfile);
    unlink(vm->qmp_sock);
    char old[VM_PATH + 8];
    nb_vm_fmt(old, sizeof old, "%s.1", vm->console);
    rename(vm->console, old); /* keep the previous boot's console */
    if ((jj->r = nb_home_write_private(vm->keyfile, j->key, sizeof j->key)) < 0 ||
        (jj->r = nb_qemu_write_key_file(vm->fwcfg_key, j->key, sizeof j->key)) < 0) {
        nb_vm_fmt(jj->msg, sizeof jj->msg, "cannot write the per-boot key in %s: %s", vm->rdir,
                  nb_strerror(jj->r));
        return;
    }
    nb_qemu_spec_t spec = {
        .qemu = j->qemu,
        .name = vm->spec.name,
        .accel = accel,
        .kvm_cpu = nb_kvm_cpu_model(),
        .cpus = vm->spec.cpus,
        .memory_mib = vm->spec.memory_mib,
        .kernel = img.kernel,
        .initrd = img.initrd[0] ? img.initrd : NULL,
        .disk = img.disk[0] ? vm->disk : NULL,
        .disk_is_root = img.disk_is_root,
        .mux_socket = vm->mux_sock,
        .key_file = vm->fwcfg_key,
        .qmp_socket = vm->qmp_sock,
        .console_log = vm->console,
        .pidfile = vm->pidfile,
        .tsc_khz = tsc_khz,
    };
    if ((jj->r = nb_qemu_build_argv(&spec, &j->argv)) < 0)
        nb_vm_fmt(jj->msg, sizeof jj->msg, "cannot build the QEMU command line (see the log)");
}

static void start_fail(nb_vm_t *vm, int r, const char *msg, nb_vmm_cb cb, void *ud)
{
    unlink(vm->fwcfg_key);
    unlink(vm->keyfile);
    nb_vm_fmt(vm->last_exit, sizeof vm->last_exit, "start failed: %s", msg ? msg : nb_strerror(r));
    if (vm->state == NB_VM_CRASHED && vm->spec.restart == NB_VM_RESTART_ON_FAILURE) {
        /* A restart attempt of the policy failed: count it, try again. */
        vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
        schedule_restart(vm, "restart failed");
    }
    if (cb)
        cb(ud, r, msg, NULL);
    vm_waiters_fire(vm, W_READY, r, msg);
    vm_waiters_fire(vm, W_STARTED, r, msg);
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
    vm_progress(vm, "%s; stopping QEMU", vm->halted);
    uv_timer_stop(&vm->status_timer);
    vm_lc_stop(vm, 1, NULL, NULL);
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
    vm_progress(vm, "%s", msg);
    vm->boot_failed = 1;
    vm_waiters_fire(vm, W_READY, NB_ETIMEOUT, msg);
    vm_lc_stop(vm, 1, NULL, NULL);
}

static void start_done(vm_job_t *jj)
{
    start_job_t *j = (start_job_t *)jj;
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
    vm_set_state(vm, NB_VM_STARTING);
    vm_db_set_want(vm, 1);
    vm_emit(vm, "vm.starting",
            json_pack("{s:i, s:s, s:s, s:s}", "pid", vm->pid, "accel", vm->accel, "machine",
                      vm->machine, "accel_reason", vm->accel_reason));
    vm_progress(vm, "QEMU started (pid %d, %s, %s, %u CPU, %u MiB)", vm->pid, vm->machine,
                vm->accel, vm->spec.cpus, vm->spec.memory_mib);
    vm_progress(vm, "accelerator %s: %s%s", vm->accel, vm->accel_reason,
                j->argv.accel == NB_QEMU_ACCEL_KVM ? "" : " (slower than KVM)");
    vm->qmp_deadline = uv_now(m->loop) + VM_QMP_CONNECT_MS;
    qmp_connect(vm);
    uv_timer_start(&vm->boot_timer, on_boot_timeout, VM_BOOT_TIMEOUT_MS, 0);
    uv_timer_start(&vm->status_timer, on_status_tick, VM_STATUS_POLL_MS, VM_STATUS_POLL_MS);
    vm_waiters_fire(vm, W_STARTED, 0, NULL);
    if (jj->cb) {
        if (j->wait) {
            vm_waiter_add(vm, W_READY, 0, jj->cb, jj->ud);
        } else {
            json_t *res = nb_vm_json(vm, 0);
            jj->cb(jj->ud, 0, NULL, res);
            json_decref(res);
        }
    }
out:
    sodium_memzero(j->key, sizeof j->key);
    nb_qemu_argv_free(&j->argv);
    free(j);
}

static void start_cleanup(vm_job_t *jj)
{
    start_job_t *j = (start_job_t *)jj;
    sodium_memzero(j->key, sizeof j->key);
    nb_qemu_argv_free(&j->argv);
}

void vm_lc_start(nb_vm_t *vm, int wait, nb_vmm_cb cb, void *ud)
{
    char msg[256];
    if (vm->state == NB_VM_STARTING || vm->state == NB_VM_RUNNING) {
        if (wait && cb) {
            if (nb_vm_session(vm)) {
                json_t *res = nb_vm_json(vm, 0);
                cb(ud, 0, NULL, res);
                json_decref(res);
            } else {
                vm_waiter_add(vm, W_READY, 0, cb, ud);
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
    start_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        if (cb)
            cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    j->wait = wait;
    const char *src = NULL;
    nb_vm_fmt(j->setting, sizeof j->setting, "%s", vm_accel_setting(vm, &src));
    nb_vm_fmt(j->source, sizeof j->source, "%s", src);
    nb_vm_fmt(j->home, sizeof j->home, "%s", vm->m->home);
    j->fallback = vm->kvm_fallback;
    nb_vm_fmt(j->kvm_error, sizeof j->kvm_error, "%s", vm->kvm_error);
    vm->kvm_fallback = 0;
    j->j.cb = cb;
    j->j.ud = ud;
    j->j.work = start_work;
    j->j.done = start_done;
    j->j.cleanup = start_cleanup;
    vm->busy = "starting";
    int r = vm_queue(vm, &j->j);
    if (r < 0) {
        vm->busy = NULL;
        free(j);
        if (cb)
            cb(ud, r, NULL, NULL);
    }
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
        vm_progress(vm, "QMP connected (QEMU %s)", vm->qemu_version);
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

int vm_lc_qmp(nb_vm_t *vm, const char *cmd, json_t *args, uint64_t timeout_ms, nb_qmp_reply_cb cb,
              void *data)
{
    if (!vm->qmp || !nb_qmp_is_ready(vm->qmp))
        return NB_ESTATE;
    return nb_qmp_command(vm->qmp, cmd, args, timeout_ms, cb, data);
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
        vm_set_state(vm, NB_VM_RUNNING);
        vm_progress(vm, "agent ready after %.1f s", vm->boot_secs);
        vm_emit(vm, "vm.running",
                json_pack("{s:f, s:s, s:i}", "boot_secs", vm->boot_secs, "accel", vm->accel, "pid",
                          vm->pid));
    } else {
        vm_emit(vm, "vm.agent", json_pack("{s:b}", "connected", 1));
    }
    /* The guest's CA and environment (egress/guestsvc.c, in the background). */
    nb_daemon_t *d = vm->m->d;
    if (d->guest.on_agent_up)
        d->guest.on_agent_up(d->guest.ud, vm->spec.name);
    vm_waiters_fire(vm, W_READY, 0, NULL);
}

static void chan_down(nb_vmchan_t *c, int err, const char *reason, void *ud)
{
    nb_vm_t *vm = ud;
    int was = vm->agent_up;
    vm->agent_up = 0;
    if (was && vm->state == NB_VM_RUNNING)
        vm_emit(vm, "vm.agent", json_pack("{s:b, s:s}", "connected", 0, "reason", reason));
    else if (!was)
        nb_log(NB_LOG_WARN, "vm %s: channel handshake failed: %s", vm->spec.name, reason);
}

/* Streams the guest opens (egress, dns) go to egress/guestsvc.c. */
static int chan_open(nb_vmchan_t *c, nb_muxsess_stream_t *st, const char *service, nb_iov_t args,
                     void *ud)
{
    nb_vm_t *vm = ud;
    nb_daemon_t *d = vm->m->d;
    if (!d->guest.on_open)
        return NB_EUNSUPPORTED;
    return d->guest.on_open(d->guest.ud, vm->spec.name, st, service, args);
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
    const char *setting = vm_accel_setting(vm, NULL);
    if (strcmp(setting, "auto") != 0 || strcmp(vm->accel, "kvm") != 0 || vm->reattached)
        return 0;
    nb_vm_fmt(vm->kvm_error, sizeof vm->kvm_error, "%s", line[0] ? line : failure);
    vm->kvm_fallback = 1;
    vm_progress(vm, "KVM failed (%s%s%s); starting again under TCG", failure, line[0] ? ": " : "",
                line);
    vm_emit(vm, "vm.restarting",
            json_pack("{s:s, s:s}", "reason", "KVM failed: starting again under TCG", "error",
                      vm->kvm_error));
    vm_set_state(vm, NB_VM_STOPPED);
    vm_waiters_fire(vm, W_STOPPED, 0, NULL);
    /* W_READY waiters (start --wait) stay: the TCG boot answers them. */
    vm_lc_start(vm, 0, NULL, NULL);
    return 1;
}

void vm_exited(nb_vm_t *vm, const char *how)
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
        vm_set_state(vm, NB_VM_CRASHED);
        vm_db_set_want(vm, 0);
        vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
        vm_waiters_fire(vm, W_READY, NB_ESTATE, vm->last_exit);
        vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        return;
    }
    if (vm->boot_failed) {
        /* Our own stop after the boot deadline: a failed start, not a user
         * stop; no policy restart either (it would likely fail again). */
        vm->boot_failed = 0;
        nb_vm_fmt(vm->last_exit, sizeof vm->last_exit,
                  "boot timeout: the agent did not connect within %u s%s",
                  VM_BOOT_TIMEOUT_MS / 1000, said);
        vm_set_state(vm, NB_VM_CRASHED);
        vm_db_set_want(vm, 0);
        vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
        vm_waiters_fire(vm, W_READY, NB_ETIMEOUT, vm->last_exit);
        vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        return;
    }
    if (stop_req || !strcmp(reason, "guest-shutdown")) {
        vm_set_state(vm, NB_VM_STOPPED);
        if (!restart)
            vm_db_set_want(vm, 0);
        vm_emit(vm, "vm.stopped",
                json_pack("{s:s, s:s}", "reason",
                          stop_req ? "stop request" : "the guest powered off", "last_exit",
                          vm->last_exit));
        if (!restart) /* a restart's waiters wait for the next boot */
            vm_waiters_fire(vm, W_READY, NB_ESTATE, "the VM stopped before its agent was ready");
        vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        if (restart)
            vm_lc_start(vm, 0, NULL, NULL);
        return;
    }
    vm_set_state(vm, NB_VM_CRASHED);
    if (!strcmp(reason, "guest-reset")) {
        vm_emit(vm, "vm.restarting", json_pack("{s:s}", "reason", "the guest rebooted"));
        vm_waiters_fire(vm, W_STOPPED, 0, NULL);
        schedule_restart(vm, "guest reboot");
        return;
    }
    char msg[900];
    nb_vm_fmt(msg, sizeof msg, "the VM crashed: %s", vm->last_exit);
    nb_log(NB_LOG_WARN, "vm %s: %s", vm->spec.name, msg);
    vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
    vm_waiters_fire(vm, W_READY, NB_ESTATE, msg);
    vm_waiters_fire(vm, W_STOPPED, 0, NULL);
    if (vm->spec.restart == NB_VM_RESTART_ON_FAILURE)
        schedule_restart(vm, "restart policy on-failure");
    else
        vm_db_set_want(vm, 0);
}

static void on_restart_timer(uv_timer_t *t)
{
    nb_vm_t *vm = t->data;
    vm->restart_at_ms = 0;
    if (vm->state != NB_VM_CRASHED)
        return;
    vm_progress(vm, "restarting (attempt %d)", vm->failures);
    vm_lc_start(vm, 0, NULL, NULL);
}

static void schedule_restart(nb_vm_t *vm, const char *why)
{
    if (vm->failures >= VM_RESTART_MAX_TRIES) {
        nb_log(NB_LOG_WARN, "vm %s: %d failed starts in a row; giving up", vm->spec.name,
               vm->failures);
        vm_emit(vm, "vm.restart_gave_up", json_pack("{s:i}", "failures", vm->failures));
        vm->restart_at_ms = 0;
        vm_db_set_want(vm, 0);
        return;
    }
    uint64_t delay = VM_RESTART_BACKOFF_MS;
    for (int i = 0; i < vm->failures && delay < VM_RESTART_BACKOFF_MAX_MS; i++)
        delay *= 2;
    if (delay > VM_RESTART_BACKOFF_MAX_MS)
        delay = VM_RESTART_BACKOFF_MAX_MS;
    vm->failures++;
    vm->restart_at_ms = nb_events_now_ms() + (int64_t)delay;
    vm_emit(vm, "vm.restarting",
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

void vm_lc_reattach(nb_vm_t *vm)
{
    nb_vmm_t *m = vm->m;
    int pid = 0;
    int r = nb_qemu_find_running(vm->pidfile, vm->qmp_sock, &pid);
    if (r < 0) {
        teardown(vm, 0);
        if (vm->want_running) {
            nb_vm_fmt(vm->last_exit, sizeof vm->last_exit, "QEMU was gone when nilboxd started");
            vm_set_state(vm, NB_VM_CRASHED);
            vm_emit(vm, "vm.crashed", json_pack("{s:s}", "last_exit", vm->last_exit));
            if (vm->spec.restart == NB_VM_RESTART_ON_FAILURE)
                schedule_restart(vm, "restart policy on-failure");
            else
                vm_db_set_want(vm, 0);
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
    vm_set_state(vm, NB_VM_RUNNING);
    vm_db_set_want(vm, 1);
    vm->qmp_deadline = uv_now(m->loop) + VM_QMP_CONNECT_MS;
    qmp_connect(vm);
    nb_log(NB_LOG_NOTICE, "vm %s: re-attached to QEMU pid %d", vm->spec.name, pid);
    vm_emit(vm, "vm.reattached", json_pack("{s:i}", "pid", pid));
}

void vm_lc_poll(nb_vm_t *vm)
{
    /* Re-attached QEMU without a pidfd: poll its pid. */
    if (vm->pid && !vm->is_child && vm->pidfd < 0 && !vm->exited && kill(vm->pid, 0) < 0 &&
        errno == ESRCH)
        vm_exited(vm, "exited");
}

void vm_lc_detach(nb_vm_t *vm)
{
    teardown(vm, 1);
    vm_waiters_fire(vm, 0, NB_ECLOSED, "the daemon is stopping");
}
