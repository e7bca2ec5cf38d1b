/* The VM manager: the public nb_vmm_* API over the table of VMs (load,
 * lookup, list, create, remove, settings, waiting for an agent) that
 * hands starts and stops to lifecycle.c and disk work to snapshot.c.
 * The top of vm/. See manager.h and docs/internals/vm.md. */
#include "daemon/vm/manager.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/base/store.h"
#include "host/accel.h"
#include "host/image.h"
#include "daemon/vm/manager_int.h"
#include "lib/err.h"
#include "lib/log.h"

#ifndef NB_IMAGES_SRC
#define NB_IMAGES_SRC "/usr/share/nilbox/images"
#endif

/* ------------------------------------------------------------ the table */

nb_vm_t *nb_vmm_find(nb_vmm_t *m, const char *name)
{
    for (nb_vm_t *vm = m ? m->vms : NULL; vm; vm = vm->next)
        if (!vm->removed && !strcmp(vm->spec.name, name))
            return vm;
    return NULL;
}

json_t *nb_vmm_list(nb_vmm_t *m)
{
    json_t *arr = json_array();
    for (nb_vm_t *vm = m->vms; arr && vm; vm = vm->next)
        if (!vm->removed)
            json_array_append_new(arr, nb_vm_json(vm, 0));
    return json_pack("{s:o}", "vms", arr ? arr : json_array());
}

static void on_tick(uv_timer_t *t)
{
    nb_vmm_t *m = t->data;
    uint64_t now = uv_now(m->loop);
    for (nb_vm_t *vm = m->vms; vm; vm = vm->next) {
        nb_vm_poll(vm);
        waiter_t **pp = &vm->waiters;
        while (*pp) {
            waiter_t *w = *pp;
            if (w->deadline && now >= w->deadline) {
                *pp = w->next;
                w->cb(w->ud, NB_ETIMEOUT, "timed out waiting for the VM's agent", NULL);
                free(w);
            } else {
                pp = &w->next;
            }
        }
    }
}

void nb_vmm_when_ready(nb_vmm_t *m, const char *name, uint64_t timeout_ms, nb_vmm_cb cb, void *ud)
{
    char msg[160];
    nb_vm_t *vm = nb_vmm_find(m, name);
    if (!vm) {
        nb_vm_fmt(msg, sizeof msg, "no VM named '%s'", name);
        cb(ud, NB_ENOTFOUND, msg, NULL);
        return;
    }
    if (nb_vm_session(vm)) {
        cb(ud, 0, NULL, NULL);
        return;
    }
    if (vm->state != NB_VM_STARTING && vm->state != NB_VM_RUNNING) {
        nb_vm_fmt(msg, sizeof msg,
                  "VM '%s' is not running (%s); start it with 'nilbox vm start %s'", name,
                  nb_vm_state_name(vm->state), name);
        cb(ud, NB_ESTATE, msg, NULL);
        return;
    }
    nb_vm_waiter_add(vm, W_READY, timeout_ms, cb, ud);
}

/* ------------------------------------------------------------ thin wrappers */

static nb_vm_t *find_or_fail(nb_vmm_t *m, const char *name, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = nb_vmm_find(m, name);
    if (!vm) {
        char msg[160];
        nb_vm_fmt(msg, sizeof msg, "no VM named '%.64s'; see 'nilbox vm ls'", name);
        cb(ud, NB_ENOTFOUND, msg, NULL);
    } else if (vm->busy) {
        char msg[160];
        nb_vm_fmt(msg, sizeof msg, "VM '%s' is busy (%s); try again when it is done", name,
                  vm->busy);
        cb(ud, NB_ESTATE, msg, NULL);
        return NULL;
    }
    return vm;
}

void nb_vmm_start(nb_vmm_t *m, const char *name, int wait, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        nb_vm_start(vm, wait, cb, ud);
}

void nb_vmm_stop(nb_vmm_t *m, const char *name, int force, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        nb_vm_stop(vm, force, cb, ud);
}

void nb_vmm_restart(nb_vmm_t *m, const char *name, int wait, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (!vm)
        return;
    if (vm->state == NB_VM_STOPPED || vm->state == NB_VM_CRASHED) {
        nb_vm_start(vm, wait, cb, ud);
        return;
    }
    vm->restart_after_stop = 1;
    nb_vm_waiter_add(vm, wait ? W_READY : W_STARTED, 0, cb, ud);
    if (vm->state != NB_VM_STOPPING)
        nb_vm_stop(vm, 0, NULL, NULL);
}

void nb_vmm_resize(nb_vmm_t *m, const char *name, uint64_t bytes, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        nb_vm_resize(vm, bytes, cb, ud);
}

void nb_vmm_snapshot(nb_vmm_t *m, const char *name, nb_vm_snap_op_t op, const char *snap,
                     nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        nb_vm_snapshot(vm, op, snap, cb, ud);
}

/* ------------------------------------------------------------ settings */

/* 1 (and a sentence in msg) when `kvm` cannot work here: no usable KVM
 * device. Quick (an open()). */
static int kvm_refused(char *msg, size_t msgsz)
{
    char why[300];
    if (nb_kvm_device_usable(why, sizeof why))
        return 0;
    nb_vm_fmt(msg, msgsz,
              "accel kvm: this host has no usable KVM (%s); use --accel auto (KVM when it works, "
              "else TCG) or --accel tcg",
              why);
    return 1;
}

void nb_vmm_set(nb_vmm_t *m, const char *name, const nb_vm_restart_t *restart, const char *accel,
                nb_vmm_cb cb, void *ud)
{
    char msg[512];
    nb_qemu_accel_t a = NB_QEMU_ACCEL_AUTO;
    if (accel && nb_accel_parse(accel, &a) < 0) {
        cb(ud, NB_EINVAL, "'accel' must be \"auto\", \"kvm\" or \"tcg\"", NULL);
        return;
    }
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (!vm)
        return;
    if (accel && a == NB_QEMU_ACCEL_KVM && kvm_refused(msg, sizeof msg)) {
        cb(ud, NB_EUNSUPPORTED, msg, NULL);
        return;
    }
    nb_vm_spec_t old = vm->spec;
    if (restart)
        vm->spec.restart = *restart;
    if (accel)
        nb_vm_fmt(vm->spec.accel, sizeof vm->spec.accel, "%s", nb_accel_name(a));
    int r = nb_vm_db_update(vm);
    if (r < 0) {
        vm->spec = old;
        cb(ud, r, "cannot update the VM's row", NULL);
        return;
    }
    if (restart && *restart == NB_VM_RESTART_NEVER && vm->state == NB_VM_CRASHED &&
        vm->restart_at_ms) {
        uv_timer_stop(&vm->timer);
        vm->restart_at_ms = 0;
    }
    json_t *res = nb_vm_json(vm, 0);
    cb(ud, 0, NULL, res);
    json_decref(res);
}

void nb_vmm_set_user(nb_vmm_t *m, const char *name, const char *user, nb_vmm_cb cb, void *ud)
{
    if (!nb_vm_valid_user(user)) {
        cb(ud, NB_EINVAL,
           "'user' must be a guest account name: a lowercase letter or '_', then up to 31 "
           "lowercase letters, digits, '_' or '-'",
           NULL);
        return;
    }
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (!vm)
        return;
    nb_vm_spec_t old = vm->spec;
    nb_vm_fmt(vm->spec.user, sizeof vm->spec.user, "%s", user);
    int r = nb_vm_db_update(vm);
    if (r < 0) {
        vm->spec = old;
        cb(ud, r, "cannot update the VM's row", NULL);
        return;
    }
    json_t *res = nb_vm_json(vm, 0);
    cb(ud, 0, NULL, res);
    json_decref(res);
}

/* The names of the image recipes (images/NAME/build.sh, where api_image.c
 * looks for them), comma-separated into `out`; 1 when `image` is one. */
static int list_recipes(const char *image, char *out, size_t outsz)
{
    const char *e = getenv("NILBOX_IMAGES_DIR");
    const char *src = e && e[0] ? e : NB_IMAGES_SRC;
    char path[VM_PATH];
    int found = 0;
    size_t n = 0;
    out[0] = '\0';
    DIR *dp = opendir(src);
    struct dirent *de;
    while (dp && (de = readdir(dp))) {
        nb_vm_fmt(path, sizeof path, "%s/%s/build.sh", src, de->d_name);
        if (!nb_image_valid_name(de->d_name) || access(path, R_OK) < 0)
            continue;
        found |= !strcmp(de->d_name, image);
        int k = snprintf(out + n, outsz - n, "%s%s", n ? ", " : "", de->d_name);
        if (k < 0 || (size_t)k >= outsz - n)
            break;
        n += (size_t)k;
    }
    if (dp)
        closedir(dp);
    return found;
}

/* ------------------------------------------------------------ create */

static void create_work(nb_vm_job_t *j)
{
    nb_vm_t *vm = j->vm;
    nb_vmm_t *m = vm->m;
    char idir[VM_PATH], qimg[VM_PATH];
    nb_image_t img;
    if (nb_image_dir(m->home, vm->spec.image, idir, sizeof idir) < 0 ||
        (j->r = nb_image_load(idir, &img)) == NB_ENOTFOUND) {
        char recipes[256];
        j->r = NB_ENOTFOUND;
        if (list_recipes(vm->spec.image, recipes, sizeof recipes))
            nb_vm_fmt(j->msg, sizeof j->msg,
                      "image '%s' is not built yet; build it with 'nilbox image build %s'",
                      vm->spec.image, vm->spec.image);
        else
            nb_vm_fmt(j->msg, sizeof j->msg,
                      "there is no image named '%s' and no recipe to build one; the recipes "
                      "are: %s ('nilbox image ls' shows which are built)",
                      vm->spec.image, recipes[0] ? recipes : "(none found)");
        return;
    }
    if (j->r < 0) {
        nb_vm_fmt(j->msg, sizeof j->msg,
                  "image '%s' is damaged (%s); rebuild it with 'nilbox image build %s --force'",
                  vm->spec.image, nb_strerror(j->r), vm->spec.image);
        return;
    }
    if (!strcmp(vm->spec.accel, "kvm") && kvm_refused(j->msg, sizeof j->msg)) {
        j->r = NB_EUNSUPPORTED;
        return;
    }
    if (nb_vm_find_binary("NILBOX_QEMU_IMG", "qemu-img", qimg, sizeof qimg) < 0) {
        j->r = NB_EUNSUPPORTED;
        nb_vm_fmt(j->msg, sizeof j->msg,
                  "qemu-img is missing (%s); install the Debian package qemu-utils", qimg);
        return;
    }
    if ((j->r = nb_vm_check_space(m, j->msg, sizeof j->msg)) < 0)
        return;
    char parent[VM_PATH];
    nb_vm_fmt(parent, sizeof parent, "%s/vms", m->home);
    mkdir(parent, 0700);
    if (mkdir(vm->dir, 0700) < 0 && errno != EEXIST) {
        j->r = -errno;
        nb_vm_fmt(j->msg, sizeof j->msg, "cannot create %s: %s", vm->dir, strerror(errno));
        return;
    }
    if (img.disk[0]) {
        unlink(vm->disk); /* a leftover of a VM of that name removed half-way */
        if ((j->r = nb_image_overlay_create(qimg, img.disk, vm->disk, vm->spec.disk_bytes)) < 0 ||
            (j->r = nb_image_disk_size(vm->disk, &vm->spec.disk_bytes)) < 0) {
            nb_vm_fmt(j->msg, sizeof j->msg, "cannot create the VM's disk %s: %s", vm->disk,
                      j->r == NB_EINTERNAL ? "qemu-img failed (see the daemon log)"
                                           : nb_strerror(j->r));
            if (nb_vm_check_space(m, j->msg, sizeof j->msg) < 0)
                j->r = -ENOSPC;
            return;
        }
    } else {
        vm->spec.disk_bytes = 0;
    }
    j->r = 0;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

static void remove_tree(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void create_done(nb_vm_job_t *j)
{
    nb_vm_t *vm = j->vm;
    vm->busy = NULL;
    if (j->r == 0 &&
        (j->r = nb_vm_db_exec(vm->m,
                              "INSERT INTO vms (name, image, cpus, memory_mib, disk_bytes,"
                              " restart, want_running, created_ms, accel, user)"
                              " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                              vm, 1)) < 0)
        nb_vm_fmt(j->msg, sizeof j->msg, "cannot record the VM: %s", nb_strerror(j->r));
    if (j->r < 0) {
        if (j->r != NB_ENOTFOUND && j->r != NB_EUNSUPPORTED && j->r != -ENOSPC)
            remove_tree(vm->dir);
        else
            rmdir(vm->dir);
        j->cb(j->ud, j->r, j->msg, NULL);
        nb_vm_destroy(vm);
        free(j);
        return;
    }
    nb_vm_emit(vm, "vm.created",
               json_pack("{s:s, s:i, s:i, s:I}", "image", vm->spec.image, "cpus",
                         (int)vm->spec.cpus, "memory_mib", (int)vm->spec.memory_mib, "disk_bytes",
                         (json_int_t)vm->spec.disk_bytes));
    json_t *res = nb_vm_json(vm, 0);
    j->cb(j->ud, 0, NULL, res);
    json_decref(res);
    free(j);
}

void nb_vmm_create(nb_vmm_t *m, const nb_vm_spec_t *spec, nb_vmm_cb cb, void *ud)
{
    char msg[512];
    int r;
    nb_vm_spec_t s = *spec;
    if (!nb_vm_valid_name(s.name)) {
        nb_vm_fmt(msg, sizeof msg,
                  "'%.64s' is not a valid VM name: start with a lowercase letter, then up to 31 "
                  "lowercase letters, digits or '-'",
                  s.name);
        cb(ud, NB_EINVAL, msg, NULL);
        return;
    }
    if (nb_vmm_find(m, s.name)) {
        nb_vm_fmt(msg, sizeof msg, "a VM named '%s' already exists", s.name);
        cb(ud, NB_EEXIST, msg, NULL);
        return;
    }
    if (!s.image[0])
        nb_vm_fmt(s.image, sizeof s.image, "tiny");
    if (!nb_image_valid_name(s.image)) {
        nb_vm_fmt(msg, sizeof msg, "'%.40s' is not a valid image name", s.image);
        cb(ud, NB_EINVAL, msg, NULL);
        return;
    }
    /* New VMs run commands as the images' unprivileged account (many
     * agents refuse root); "root" is stored as such, "" only in old rows. */
    if (!s.user[0])
        nb_vm_fmt(s.user, sizeof s.user, "%s", NB_VM_DEFAULT_USER);
    if (!nb_vm_valid_user(s.user)) {
        nb_vm_fmt(msg, sizeof msg, "'%.40s' is not a valid guest user name", s.user);
        cb(ud, NB_EINVAL, msg, NULL);
        return;
    }
    if (!s.cpus)
        s.cpus = 1;
    if (!s.memory_mib)
        s.memory_mib = 512;
    if (s.cpus > 64 || s.memory_mib < 64 || s.memory_mib > 1024 * 1024) {
        nb_vm_fmt(msg, sizeof msg, "cpus must be 1..64 and memory 64 MiB..1 TiB");
        cb(ud, NB_EINVAL, msg, NULL);
        return;
    }
    nb_vm_job_t *j = calloc(1, sizeof *j);
    nb_vm_t *vm = j ? nb_vm_alloc(m, &s, msg, sizeof msg, &r) : NULL;
    if (!vm) {
        free(j);
        cb(ud, j ? r : -ENOMEM, j ? msg : NULL, NULL);
        return;
    }
    vm->created_ms = nb_events_now_ms();
    vm->busy = "creating";
    if ((r = nb_vm_queue(vm, j, create_work, create_done, cb, ud)) < 0) {
        nb_vm_destroy(vm);
        free(j);
        cb(ud, r, NULL, NULL);
    }
}

/* ------------------------------------------------------------ remove */

static void remove_work(nb_vm_job_t *j)
{
    remove_tree(j->vm->dir);
    remove_tree(j->vm->rdir);
}

static void remove_done(nb_vm_job_t *j)
{
    nb_vm_t *vm = j->vm;
    nb_vm_emit(vm, "vm.removed", NULL);
    j->cb(j->ud, 0, NULL, NULL);
    nb_vm_destroy(vm);
    free(j);
}

static void remove_now(nb_vm_t *vm, nb_vmm_cb cb, void *ud)
{
    int r;
    nb_vm_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    if ((r = nb_vm_db_exec(vm->m, "DELETE FROM vms WHERE name = ?1", vm, 0)) < 0) {
        free(j);
        cb(ud, r, "cannot delete the VM's row", NULL);
        return;
    }
    vm->removed = 1; /* gone from lookups; memory goes after the files */
    vm->busy = "removing";
    if ((r = nb_vm_queue(vm, j, remove_work, remove_done, cb, ud)) < 0) {
        j->r = r;
        remove_done(j);
    }
}

typedef struct {
    nb_vm_t *vm;
    nb_vmm_cb cb;
    void *ud;
} rm_ctx_t;

static void rm_after_stop(void *ud, int r, const char *msg, json_t *res)
{
    rm_ctx_t *c = ud;
    nb_vm_t *vm = c->vm;
    if (r < 0 && vm->state != NB_VM_STOPPED && vm->state != NB_VM_CRASHED)
        c->cb(c->ud, r, msg, NULL);
    else
        remove_now(vm, c->cb, c->ud);
    free(c);
}

void nb_vmm_remove(nb_vmm_t *m, const char *name, int force, nb_vmm_cb cb, void *ud)
{
    char msg[256];
    nb_vm_t *vm = nb_vmm_find(m, name);
    if (!vm) {
        nb_vm_fmt(msg, sizeof msg, "no VM named '%s'", name);
        cb(ud, NB_ENOTFOUND, msg, NULL);
        return;
    }
    if (vm->busy) {
        nb_vm_fmt(msg, sizeof msg, "VM '%s' is busy (%s); try again when it is done", name,
                  vm->busy);
        cb(ud, NB_ESTATE, msg, NULL);
        return;
    }
    if (vm->state == NB_VM_STOPPED || (vm->state == NB_VM_CRASHED && !vm->pid)) {
        uv_timer_stop(&vm->timer); /* a pending restart */
        remove_now(vm, cb, ud);
        return;
    }
    if (!force) {
        nb_vm_fmt(msg, sizeof msg,
                  "VM '%s' is %s; stop it first ('nilbox vm stop %s') or remove it with --force",
                  name, nb_vm_state_name(vm->state), name);
        cb(ud, NB_ESTATE, msg, NULL);
        return;
    }
    rm_ctx_t *c = calloc(1, sizeof *c);
    if (!c) {
        cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    c->vm = vm;
    c->cb = cb;
    c->ud = ud;
    nb_vm_stop(vm, 1, rm_after_stop, c);
}

/* ------------------------------------------------------------ new / free */

static int load_rows(nb_vmm_t *m, char *err, size_t errsz)
{
    sqlite3 *db = m->store ? nb_store_db(m->store) : NULL;
    sqlite3_stmt *st = NULL;
    if (!db)
        return 0;
    int r = sqlite3_prepare_v2(db,
                               "SELECT name, image, cpus, memory_mib, disk_bytes, restart,"
                               " want_running, created_ms, accel, user FROM vms ORDER BY name",
                               -1, &st, NULL);
    if (r != SQLITE_OK) {
        nb_vm_fmt(err, errsz, "cannot read the VM table: %s", sqlite3_errmsg(db));
        return NB_EINTERNAL;
    }
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        nb_vm_spec_t s;
        char msg[256];
        memset(&s, 0, sizeof s);
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *image = (const char *)sqlite3_column_text(st, 1);
        const char *restart = (const char *)sqlite3_column_text(st, 5);
        if (!name || !nb_vm_valid_name(name) || !image) {
            nb_log(NB_LOG_WARN, "skipping a VM row with an invalid name");
            continue;
        }
        nb_vm_fmt(s.name, sizeof s.name, "%s", name);
        nb_vm_fmt(s.image, sizeof s.image, "%s", image);
        s.cpus = (unsigned)sqlite3_column_int(st, 2);
        s.memory_mib = (unsigned)sqlite3_column_int(st, 3);
        s.disk_bytes = (uint64_t)sqlite3_column_int64(st, 4);
        s.restart = restart && !strcmp(restart, "on-failure") ? NB_VM_RESTART_ON_FAILURE
                                                              : NB_VM_RESTART_NEVER;
        const char *accel = (const char *)sqlite3_column_text(st, 8);
        nb_qemu_accel_t acc;
        if (accel && nb_accel_parse(accel, &acc) == 0)
            nb_vm_fmt(s.accel, sizeof s.accel, "%s", accel);
        const char *user = (const char *)sqlite3_column_text(st, 9);
        if (user && nb_vm_valid_user(user))
            nb_vm_fmt(s.user, sizeof s.user, "%s", user);
        nb_vm_t *vm = nb_vm_alloc(m, &s, msg, sizeof msg, &r);
        if (!vm) {
            nb_log(NB_LOG_ERR, "vm %s: %s", name, r == -ENOMEM ? "out of memory" : msg);
            continue;
        }
        vm->want_running = sqlite3_column_int(st, 6);
        vm->created_ms = sqlite3_column_int64(st, 7);
    }
    sqlite3_finalize(st);
    return 0;
}

void nb_vmm_set_guest(nb_vmm_t *m, const nb_vmm_guest_t *g)
{
    if (g)
        m->guest = *g;
    else
        memset(&m->guest, 0, sizeof m->guest);
}

int nb_vmm_new(const nb_vmm_cfg_t *cfg, nb_vmm_t **out, char *err, size_t errsz)
{
    *out = NULL;
    nb_vmm_t *m = calloc(1, sizeof *m);
    if (!m) {
        nb_vm_fmt(err, errsz, "out of memory");
        return -ENOMEM;
    }
    m->loop = cfg->loop;
    m->store = cfg->store;
    m->events = cfg->events;
    nb_vm_fmt(m->home, sizeof m->home, "%s", cfg->home);
    nb_vm_fmt(m->runtime, sizeof m->runtime, "%s", cfg->runtime);
    const char *mf = getenv("NILBOX_VM_MIN_FREE_MB");
    m->min_free_bytes = (mf && mf[0] ? strtoull(mf, NULL, 10) : 256) << 20;
    if (nb_accel_env_default(&m->accel_default) < 0) {
        nb_vm_fmt(err, errsz, "NILBOX_ACCEL must be auto, kvm or tcg (it is '%.32s')",
                  getenv("NILBOX_ACCEL"));
        free(m);
        return NB_EINVAL;
    }
    char rd[VM_PATH];
    nb_vm_fmt(rd, sizeof rd, "%s/vms", m->runtime);
    mkdir(rd, 0700);
    int r = load_rows(m, err, errsz);
    if (r < 0) {
        free(m);
        return r;
    }
    uv_timer_init(m->loop, &m->tick);
    m->tick.data = m;
    uv_timer_start(&m->tick, on_tick, 250, 250);
    uv_unref((uv_handle_t *)&m->tick);
    for (nb_vm_t *vm = m->vms; vm; vm = vm->next)
        nb_vm_reattach(vm);
    *out = m;
    return 0;
}

static void tick_closed(uv_handle_t *h)
{
    nb_vmm_t *m = h->data;
    if (--m->pending_closes == 0)
        free(m);
}

void nb_vmm_free(nb_vmm_t *m)
{
    if (!m)
        return;
    m->freeing = 1;
    m->pending_closes++; /* the tick timer */
    while (m->vms) {
        nb_vm_t *vm = m->vms;
        nb_vm_detach(vm);
        if (vm->jobs) {
            /* A pool job still uses it: job_done destroys it. */
            m->vms = vm->next;
            vm->orphan = 1;
            m->pending_closes++;
            continue;
        }
        nb_vm_destroy(vm);
    }
    uv_close((uv_handle_t *)&m->tick, tick_closed);
}
