/* Stopping a VM: agent poweroff -> ACPI powerdown -> QMP quit -> SIGKILL,
 * each step after a timeout (DESIGN.md section 5). See manager.h and
 * docs/internals/vm.md. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "daemon/vm/vmint.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

static void run_step(nb_vm_t *vm, int step);

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
        if (vm_lc_qmp(vm, "system_powerdown", NULL, 0, on_stop_reply, vm) < 0) {
            run_step(vm, STOP_QUIT);
            return;
        }
        uv_timer_start(&vm->timer, on_step_timer, VM_STOP_ACPI_MS, 0);
        return;
    case STOP_QUIT:
        if (vm_lc_qmp(vm, "quit", NULL, 0, on_stop_reply, vm) < 0) {
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

void vm_lc_stop(nb_vm_t *vm, int force, nb_vmm_cb cb, void *ud)
{
    if (vm->state == NB_VM_STOPPED || (vm->state == NB_VM_CRASHED && !vm->pid)) {
        if (vm->state == NB_VM_CRASHED) {
            uv_timer_stop(&vm->timer);
            vm->restart_at_ms = 0;
            vm_set_state(vm, NB_VM_STOPPED);
            vm_db_set_want(vm, 0);
            vm_emit(vm, "vm.stopped", json_pack("{s:s}", "reason", "stop request (was crashed)"));
        }
        if (cb) {
            json_t *res = nb_vm_json(vm, 0);
            cb(ud, 0, NULL, res);
            json_decref(res);
        }
        return;
    }
    if (cb)
        vm_waiter_add(vm, W_STOPPED, 0, cb, ud);
    if (vm->state == NB_VM_STOPPING) {
        if (force && vm->stop_step < STOP_QUIT)
            run_step(vm, STOP_QUIT);
        return;
    }
    vm->stop_requested = 1;
    uv_timer_stop(&vm->boot_timer);
    vm_set_state(vm, NB_VM_STOPPING);
    vm_emit(vm, "vm.stopping", json_pack("{s:b}", "force", force));
    run_step(vm, force ? STOP_QUIT : nb_vm_session(vm) ? STOP_AGENT : STOP_ACPI);
}
