/* Disk resize and snapshots of a VM's qcow2 overlay.
 *
 * Snapshots are internal qcow2 snapshots of the overlay, disk only:
 * stopped VMs use qemu-img (snapshot -c/-a/-d, info -U for the list);
 * running VMs save and delete through QMP (blockdev-snapshot-internal-sync
 * after a `sync` in the guest, so the file system is clean). RAM is never
 * saved: the tiny image keeps its root file system in RAM, but a RAM
 * snapshot would also freeze the agent's channel session and that boot's
 * key, which a later boot cannot resume; what persists across boots is
 * the disk (/data in tiny, / in debian). Restore needs a stopped VM. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/image.h"
#include "daemon/vm/manager_int.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define OUT_MAX (64 * 1024)

typedef struct {
    nb_vm_job_t j; /* first */
    int op;
    char snap[NB_VM_SNAP_MAX + 1];
    uint64_t bytes, old_bytes;
    char out[OUT_MAX];
} snap_job_t;

static int stopped(const nb_vm_t *vm)
{
    return vm->state == NB_VM_STOPPED || (vm->state == NB_VM_CRASHED && !vm->pid);
}

static void reply(nb_vmm_cb cb, void *ud, int r, const char *msg, json_t *res)
{
    if (cb)
        cb(ud, r, msg, res);
}

/* ------------------------------------------------------------ qemu-img */

static int qimg(nb_vm_job_t *j, char *path, size_t pathsz)
{
    if (nb_vm_find_binary("NILBOX_QEMU_IMG", "qemu-img", path, pathsz) < 0) {
        nb_vm_fmt(j->msg, sizeof j->msg,
                  "qemu-img is missing; install the Debian package "
                  "qemu-utils");
        return j->r = NB_EUNSUPPORTED;
    }
    return 0;
}

/* `qemu-img info -U --output=json` of the overlay into j->out. */
static int info(snap_job_t *s, const char *qi)
{
    const char *argv[] = {qi, "info", "-U", "--output=json", s->j.vm->disk, NULL};
    int r = nb_vm_run_cmd(argv, s->out, sizeof s->out);
    if (r != 0) {
        nb_vm_fmt(s->j.msg, sizeof s->j.msg, "qemu-img info failed: %.300s", s->out);
        return s->j.r = NB_EINTERNAL;
    }
    return 0;
}

static int has_snapshot(const char *info_json, const char *name)
{
    json_t *j = json_loads(info_json, 0, NULL), *e;
    size_t i;
    int found = 0;
    json_array_foreach (json_object_get(j, "snapshots"), i, e) {
        const char *n = nb_json_str(e, "name");
        if (n && !strcmp(n, name))
            found = 1;
    }
    json_decref(j);
    return found;
}

static void snap_work(nb_vm_job_t *j)
{
    snap_job_t *s = (snap_job_t *)j;
    char qi[VM_PATH];
    if (qimg(j, qi, sizeof qi) < 0)
        return;
    if (s->op == NB_VM_SNAP_LIST) {
        info(s, qi);
        return;
    }
    if (info(s, qi) < 0)
        return;
    int exists = has_snapshot(s->out, s->snap);
    if (s->op == NB_VM_SNAP_SAVE && exists) {
        nb_vm_fmt(j->msg, sizeof j->msg, "VM '%s' already has a snapshot named '%s'",
                  j->vm->spec.name, s->snap);
        j->r = NB_EEXIST;
        return;
    }
    if (s->op != NB_VM_SNAP_SAVE && !exists) {
        nb_vm_fmt(j->msg, sizeof j->msg, "no snapshot %s in VM %s; see 'nilbox vm snapshot ls %s'",
                  s->snap, j->vm->spec.name, j->vm->spec.name);
        j->r = NB_ENOTFOUND;
        return;
    }
    const char *flag = s->op == NB_VM_SNAP_SAVE ? "-c" : s->op == NB_VM_SNAP_RESTORE ? "-a" : "-d";
    const char *argv[] = {qi, "snapshot", flag, s->snap, j->vm->disk, NULL};
    int r = nb_vm_run_cmd(argv, s->out, sizeof s->out);
    if (r != 0) {
        nb_vm_fmt(j->msg, sizeof j->msg, "qemu-img snapshot %s failed: %.300s", flag, s->out);
        j->r = NB_EINTERNAL;
        if (nb_vm_check_space(j->vm->m, j->msg, sizeof j->msg) < 0)
            j->r = -ENOSPC;
    }
}

static const char *op_name(int op)
{
    return op == NB_VM_SNAP_SAVE ? "saved" : op == NB_VM_SNAP_RESTORE ? "restored" : "deleted";
}

static json_t *list_json(const char *info_json)
{
    json_t *j = json_loads(info_json, 0, NULL), *e, *arr = json_array();
    size_t i;
    json_array_foreach (json_object_get(j, "snapshots"), i, e) {
        const char *n = nb_json_str(e, "name");
        char t[40];
        nb_events_format_time((int64_t)nb_json_int(e, "date-sec", 0) * 1000, t, sizeof t);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:I}", "name", n ? n : "", "created", t,
                                             "vm_state_bytes",
                                             (json_int_t)nb_json_int(e, "vm-state-size", 0)));
    }
    json_decref(j);
    return json_pack("{s:o}", "snapshots", arr ? arr : json_array());
}

static void snap_done(nb_vm_job_t *j)
{
    snap_job_t *s = (snap_job_t *)j;
    nb_vm_t *vm = j->vm;
    vm->busy = NULL;
    if (j->r < 0) {
        reply(j->cb, j->ud, j->r, j->msg, NULL);
    } else if (s->op == NB_VM_SNAP_LIST) {
        json_t *res = list_json(s->out);
        reply(j->cb, j->ud, 0, NULL, res);
        json_decref(res);
    } else {
        nb_vm_emit(
            vm, "vm.snapshot",
            json_pack("{s:s, s:s, s:b}", "action", op_name(s->op), "snapshot", s->snap, "live", 0));
        json_t *res = json_pack("{s:s, s:s}", "snapshot", s->snap, "action", op_name(s->op));
        reply(j->cb, j->ud, 0, NULL, res);
        json_decref(res);
    }
    free(j);
}

/* ------------------------------------------------------------ running VMs */

typedef struct {
    nb_vm_t *vm;
    uint32_t gen;
    int op;
    char snap[NB_VM_SNAP_MAX + 1];
    nb_vmm_cb cb;
    void *ud;
} live_t;

static void live_finish(live_t *l, int r, const char *msg)
{
    nb_vm_t *vm = l->vm;
    vm->busy = NULL;
    if (r == 0) {
        nb_vm_emit(
            vm, "vm.snapshot",
            json_pack("{s:s, s:s, s:b}", "action", op_name(l->op), "snapshot", l->snap, "live", 1));
        json_t *res = json_pack("{s:s, s:s}", "snapshot", l->snap, "action", op_name(l->op));
        reply(l->cb, l->ud, 0, NULL, res);
        json_decref(res);
    } else {
        reply(l->cb, l->ud, r, msg, NULL);
    }
    free(l);
}

static void on_live_reply(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    live_t *l = data;
    char msg[512];
    if (r == NB_EPROTO && err) {
        const char *desc = nb_json_str(err, "desc");
        /* QEMU's wording for a missing one: "... does not exist in
         * device/node ..." (older: "not found"). Say it as the stopped path
         * does, with what to do, instead of QEMU's text. */
        int missing = desc && (strstr(desc, "does not exist") || strstr(desc, "not found"));
        int dup = desc && strstr(desc, "already exists");
        if (missing)
            nb_vm_fmt(msg, sizeof msg, "no snapshot %s in VM %s; see 'nilbox vm snapshot ls %s'",
                      l->snap, l->vm->spec.name, l->vm->spec.name);
        else if (dup)
            nb_vm_fmt(msg, sizeof msg, "VM '%s' already has a snapshot named '%s'",
                      l->vm->spec.name, l->snap);
        else
            nb_vm_fmt(msg, sizeof msg, "QEMU refused the snapshot: %.400s", desc ? desc : "?");
        live_finish(l, missing ? NB_ENOTFOUND : dup ? NB_EEXIST : NB_EINTERNAL, msg);
        return;
    }
    nb_vm_fmt(msg, sizeof msg, "the snapshot did not complete: %s", nb_strerror(r));
    live_finish(l, r, r ? msg : NULL);
}

static void live_qmp(live_t *l)
{
    nb_vm_t *vm = l->vm;
    if (vm->gen != l->gen || vm->exited) {
        live_finish(l, NB_ESTATE, "the VM stopped during the snapshot");
        return;
    }
    json_t *args = json_pack("{s:s, s:s}", "device", "disk0", "name", l->snap);
    int r = nb_vm_qmp(vm,
                      l->op == NB_VM_SNAP_SAVE ? "blockdev-snapshot-internal-sync"
                                               : "blockdev-snapshot-delete-internal-sync",
                      args, 60000, on_live_reply, l);
    json_decref(args);
    if (r < 0)
        live_finish(l, NB_ESTATE, "QEMU's monitor is not connected; try again");
}

static void on_sync_done(void *ud, int r, json_t *res, int exit_code)
{
    live_t *l = ud;
    if (r < 0 || exit_code != 0)
        nb_log(NB_LOG_WARN, "vm %s: guest sync before the snapshot failed (%s, exit %d)",
               l->vm->spec.name, nb_strerror(r), exit_code);
    live_qmp(l);
}

/* ------------------------------------------------------------ entry points */

void nb_vm_snapshot(nb_vm_t *vm, nb_vm_snap_op_t op, const char *snap, nb_vmm_cb cb, void *ud)
{
    char msg[256];
    if (op != NB_VM_SNAP_LIST && !nb_vm_valid_snapshot(snap)) {
        nb_vm_fmt(msg, sizeof msg,
                  "'%.40s' is not a valid snapshot name: 1 to 32 of letters, digits, '.', '_' or "
                  "'-', starting with a letter or digit, not all digits",
                  snap ? snap : "");
        reply(cb, ud, NB_EINVAL, msg, NULL);
        return;
    }
    if (!vm->spec.disk_bytes) {
        nb_vm_fmt(msg, sizeof msg, "VM '%s' has no disk to snapshot", vm->spec.name);
        reply(cb, ud, NB_ESTATE, msg, NULL);
        return;
    }
    int live = !stopped(vm);
    if (live && op == NB_VM_SNAP_RESTORE) {
        nb_vm_fmt(msg, sizeof msg,
                  "VM '%s' is %s; stop it before restoring a snapshot ('nilbox vm stop %s')",
                  vm->spec.name, nb_vm_state_name(vm->state), vm->spec.name);
        reply(cb, ud, NB_ESTATE, msg, NULL);
        return;
    }
    if (live && op != NB_VM_SNAP_LIST &&
        (vm->state != NB_VM_RUNNING && vm->state != NB_VM_STARTING)) {
        nb_vm_fmt(msg, sizeof msg, "VM '%s' is %s; try again once it is running or stopped",
                  vm->spec.name, nb_vm_state_name(vm->state));
        reply(cb, ud, NB_ESTATE, msg, NULL);
        return;
    }
    if (live && op != NB_VM_SNAP_LIST) {
        live_t *l = calloc(1, sizeof *l);
        if (!l) {
            reply(cb, ud, -ENOMEM, NULL, NULL);
            return;
        }
        l->vm = vm;
        l->gen = vm->gen;
        l->op = op;
        nb_vm_fmt(l->snap, sizeof l->snap, "%s", snap);
        l->cb = cb;
        l->ud = ud;
        vm->busy = "snapshot";
        static const char *const sync_argv[] = {"sync", NULL};
        if (op != NB_VM_SNAP_SAVE || nb_vmchan_run(vm->chan, sync_argv, 30000, on_sync_done, l) < 0)
            live_qmp(l);
        return;
    }
    snap_job_t *s = calloc(1, sizeof *s);
    if (!s) {
        reply(cb, ud, -ENOMEM, NULL, NULL);
        return;
    }
    s->op = op;
    nb_vm_fmt(s->snap, sizeof s->snap, "%s", snap ? snap : "");
    nb_vm_queue_busy(vm, &s->j, op != NB_VM_SNAP_LIST ? "snapshot" : NULL, snap_work, snap_done, cb,
                     ud);
}

static void resize_work(nb_vm_job_t *j)
{
    snap_job_t *s = (snap_job_t *)j;
    char qi[VM_PATH];
    if (qimg(j, qi, sizeof qi) < 0)
        return;
    if ((j->r = nb_image_disk_size(j->vm->disk, &s->old_bytes)) < 0) {
        nb_vm_fmt(j->msg, sizeof j->msg, "cannot read the size of %s: %s", j->vm->disk,
                  nb_strerror(j->r));
        return;
    }
    if (s->bytes < s->old_bytes) {
        nb_vm_fmt(j->msg, sizeof j->msg,
                  "the disk is %llu MiB; %llu MiB is smaller, and disks only grow",
                  (unsigned long long)(s->old_bytes >> 20), (unsigned long long)(s->bytes >> 20));
        j->r = NB_EINVAL;
        return;
    }
    if (s->bytes == s->old_bytes)
        return;
    if ((j->r = nb_image_disk_resize(qi, j->vm->disk, s->bytes)) < 0) {
        nb_vm_fmt(j->msg, sizeof j->msg, "qemu-img resize failed: %s", nb_strerror(j->r));
        if (nb_vm_check_space(j->vm->m, j->msg, sizeof j->msg) < 0)
            j->r = -ENOSPC;
    }
}

static void resize_done(nb_vm_job_t *j)
{
    snap_job_t *s = (snap_job_t *)j;
    nb_vm_t *vm = j->vm;
    vm->busy = NULL;
    if (j->r < 0) {
        reply(j->cb, j->ud, j->r, j->msg, NULL);
        free(j);
        return;
    }
    vm->spec.disk_bytes = s->bytes;
    nb_vm_db_update(vm);
    if (s->bytes != s->old_bytes)
        nb_vm_emit(vm, "vm.resized",
                   json_pack("{s:I, s:I}", "from_bytes", (json_int_t)s->old_bytes, "to_bytes",
                             (json_int_t)s->bytes));
    json_t *res = nb_vm_json(vm, 0);
    reply(j->cb, j->ud, 0, NULL, res);
    json_decref(res);
    free(j);
}

void nb_vm_resize(nb_vm_t *vm, uint64_t bytes, nb_vmm_cb cb, void *ud)
{
    char msg[256];
    if (!stopped(vm)) {
        nb_vm_fmt(msg, sizeof msg,
                  "VM '%s' is %s; resize works on a stopped VM ('nilbox vm stop %s'), and the "
                  "guest grows its file system at the next boot",
                  vm->spec.name, nb_vm_state_name(vm->state), vm->spec.name);
        reply(cb, ud, NB_ESTATE, msg, NULL);
        return;
    }
    if (!vm->spec.disk_bytes) {
        nb_vm_fmt(msg, sizeof msg, "VM '%s' has no disk", vm->spec.name);
        reply(cb, ud, NB_ESTATE, msg, NULL);
        return;
    }
    if (bytes < (1u << 20) || bytes > (64ull << 40) || bytes % 512) {
        reply(cb, ud, NB_EINVAL, "a disk size is 1 MiB to 64 TiB, a multiple of 512 bytes", NULL);
        return;
    }
    snap_job_t *s = calloc(1, sizeof *s);
    if (!s) {
        reply(cb, ud, -ENOMEM, NULL, NULL);
        return;
    }
    s->bytes = bytes;
    nb_vm_queue_busy(vm, &s->j, "resize", resize_work, resize_done, cb, ud);
}
