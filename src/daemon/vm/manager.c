/* The VM manager: the table of VMs, their rows, create / remove, waiters
 * and the helpers the lifecycle and snapshot code share. See manager.h and
 * docs/internals/vm.md. */
#include "daemon/vm/manager.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/store.h"
#include "host/accel.h"
#include "host/image.h"
#include "daemon/vm/vmint.h"
#include "lib/err.h"
#include "lib/log.h"

extern char **environ;

/* ------------------------------------------------------------ names, sizes */

int nb_vm_fmt(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= size ? NB_ETOOBIG : 0;
}

int nb_vm_valid_name(const char *s)
{
    if (!s || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return n <= NB_VM_NAME_MAX;
}

int nb_vm_valid_user(const char *u)
{
    size_t n = u ? strlen(u) : 0;
    return n > 0 && n <= NB_VM_USER_MAX && ((u[0] >= 'a' && u[0] <= 'z') || u[0] == '_') &&
           strspn(u, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

const char *nb_vm_user(const nb_vm_t *vm)
{
    return vm->spec.user;
}

int nb_vm_valid_snapshot(const char *s)
{
    if (!s || !s[0] || s[0] == '.' || s[0] == '-' || s[0] == '_')
        return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    /* qemu-img takes an all-digit argument for a snapshot id. */
    return n <= NB_VM_SNAP_MAX && strspn(s, "0123456789") != n;
}

const char *nb_vm_state_name(nb_vm_state_t s)
{
    static const char *const names[] = {"stopped", "starting", "running", "stopping", "crashed"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

int nb_vm_parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !(*s >= '0' && *s <= '9'))
        return NB_EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return NB_EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    default:
        return NB_EINVAL;
    }
    if (*end) {
        end++;
        if (*end == 'i' && end[1] == 'B')
            end += 2;
        else if (*end == 'B')
            end++;
    }
    if (*end || v > (UINT64_MAX >> shift))
        return NB_EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

/* ------------------------------------------------------------ accessors */

nb_vm_t *nb_vmm_find(nb_vmm_t *m, const char *name)
{
    for (nb_vm_t *vm = m ? m->vms : NULL; vm; vm = vm->next)
        if (!vm->removed && !strcmp(vm->spec.name, name))
            return vm;
    return NULL;
}

nb_vm_state_t nb_vm_state(const nb_vm_t *vm)
{
    return vm->state;
}

const char *nb_vm_name(const nb_vm_t *vm)
{
    return vm->spec.name;
}

nb_muxsess_t *nb_vm_session(const nb_vm_t *vm)
{
    return vm->agent_up ? nb_vmchan_session(vm->chan) : NULL;
}

const char *nb_vm_console_path(const nb_vm_t *vm)
{
    return vm->console;
}

const char *nb_vm_qemu_log_path(const nb_vm_t *vm)
{
    return vm->qemu_log;
}

const char *nb_vmm_default_accel(const nb_vmm_t *m)
{
    return nb_accel_name(m->accel_default);
}

const char *vm_accel_setting(const nb_vm_t *vm, const char **source)
{
    if (vm->spec.accel[0]) {
        if (source)
            *source = "vm";
        return vm->spec.accel;
    }
    if (source)
        *source = getenv("NILBOX_ACCEL") && getenv("NILBOX_ACCEL")[0] ? "NILBOX_ACCEL" : "default";
    return nb_accel_name(vm->m->accel_default);
}

static json_t *time_json(int64_t ms)
{
    char t[40];
    if (!ms)
        return json_null();
    nb_events_format_time(ms, t, sizeof t);
    return json_string(t);
}

json_t *nb_vm_json(const nb_vm_t *vm, int detail)
{
    int live =
        vm->state == NB_VM_STARTING || vm->state == NB_VM_RUNNING || vm->state == NB_VM_STOPPING;
    json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:s, s:o, s:b}", "name", vm->spec.name,
                          "image", vm->spec.image, "state", nb_vm_state_name(vm->state), "cpus",
                          (int)vm->spec.cpus, "memory_mib", (int)vm->spec.memory_mib, "disk_bytes",
                          (json_int_t)vm->spec.disk_bytes, "restart",
                          vm->spec.restart == NB_VM_RESTART_ON_FAILURE ? "on-failure" : "never",
                          "created", time_json(vm->created_ms), "agent", vm->agent_up);
    if (!j)
        return NULL;
    const char *src = NULL, *setting = vm_accel_setting(vm, &src);
    json_object_set_new(j, "accel_setting", json_string(setting));
    json_object_set_new(j, "accel_setting_from", json_string(src));
    json_object_set_new(j, "user", json_string(vm->spec.user[0] ? vm->spec.user : "root"));
    if (live) {
        json_object_set_new(j, "pid", json_integer(vm->pid));
        json_object_set_new(j, "accel", json_string(vm->accel[0] ? vm->accel : "unknown"));
        if (vm->accel_reason[0])
            json_object_set_new(j, "accel_reason", json_string(vm->accel_reason));
        if (vm->machine[0])
            json_object_set_new(j, "machine", json_string(vm->machine));
        json_object_set_new(j, "started", time_json(vm->started_ms));
        if (vm->boot_secs > 0)
            json_object_set_new(j, "boot_secs", json_real(vm->boot_secs));
        if (vm->reattached)
            json_object_set_new(j, "reattached", json_true());
    }
    if (vm->busy)
        json_object_set_new(j, "busy", json_string(vm->busy));
    if (vm->last_exit[0])
        json_object_set_new(j, "last_exit", json_string(vm->last_exit));
    if (vm->failures)
        json_object_set_new(j, "failures", json_integer(vm->failures));
    if (vm->restart_at_ms)
        json_object_set_new(j, "restart_at", time_json(vm->restart_at_ms));
    if (detail) {
        json_object_set_new(j, "dir", json_string(vm->dir));
        json_object_set_new(j, "disk", json_string(vm->disk));
        json_object_set_new(j, "console_log", json_string(vm->console));
        json_object_set_new(j, "qemu_log", json_string(vm->qemu_log));
        json_object_set_new(j, "runtime_dir", json_string(vm->rdir));
        json_object_set_new(j, "qmp_socket", json_string(vm->qmp_sock));
        json_object_set_new(j, "mux_socket", json_string(vm->mux_sock));
        if (vm->qemu_version[0])
            json_object_set_new(j, "qemu_version", json_string(vm->qemu_version));
        if (vm->chan)
            json_object_set_new(j, "agent_sessions", json_integer(nb_vmchan_sessions(vm->chan)));
    }
    return j;
}

json_t *nb_vmm_list(nb_vmm_t *m)
{
    json_t *arr = json_array();
    for (nb_vm_t *vm = m->vms; arr && vm; vm = vm->next)
        if (!vm->removed)
            json_array_append_new(arr, nb_vm_json(vm, 0));
    return json_pack("{s:o}", "vms", arr ? arr : json_array());
}

/* ------------------------------------------------------------ events */

void vm_emit(nb_vm_t *vm, const char *type, json_t *fields)
{
    nb_events_t *ev = vm->m->d->events;
    if (!fields)
        fields = json_object();
    if (!fields)
        return;
    json_object_set_new(fields, "vm", json_string(vm->spec.name));
    if (ev && !vm->m->freeing)
        nb_events_emit(ev, type, fields);
    else
        json_decref(fields);
}

void vm_progress(nb_vm_t *vm, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nb_log(NB_LOG_INFO, "vm %s: %s", vm->spec.name, msg);
    /* Not "vm.*": progress lines are for the user, not the audit log. */
    nb_events_t *ev = vm->m->d->events;
    if (ev && !vm->m->freeing)
        nb_events_emit(
            ev, "progress",
            json_pack("{s:s, s:s, s:s}", "vm", vm->spec.name, "op", "start", "message", msg));
}

void vm_set_state(nb_vm_t *vm, nb_vm_state_t s)
{
    if (vm->state == s)
        return;
    nb_log(NB_LOG_INFO, "vm %s: %s -> %s", vm->spec.name, nb_vm_state_name(vm->state),
           nb_vm_state_name(s));
    vm->state = s;
}

/* ------------------------------------------------------------ waiters */

void vm_waiter_add(nb_vm_t *vm, int kind, uint64_t timeout_ms, nb_vmm_cb cb, void *ud)
{
    waiter_t *w = calloc(1, sizeof *w);
    if (!w) {
        cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    w->kind = kind;
    w->cb = cb;
    w->ud = ud;
    w->deadline = timeout_ms ? uv_now(vm->m->loop) + timeout_ms : 0;
    w->next = vm->waiters;
    vm->waiters = w;
}

/* Fires the waiters of `kind` (0: all) with r; a successful READY/STARTED
 * answer carries the VM's JSON. */
void vm_waiters_fire(nb_vm_t *vm, int kind, int r, const char *msg)
{
    waiter_t *fire = NULL, **pp = &vm->waiters;
    while (*pp) {
        waiter_t *w = *pp;
        if (!kind || w->kind == kind) {
            *pp = w->next;
            w->next = fire;
            fire = w;
        } else {
            pp = &w->next;
        }
    }
    while (fire) {
        waiter_t *w = fire;
        fire = w->next;
        json_t *j = r == 0 ? nb_vm_json(vm, 0) : NULL;
        w->cb(w->ud, r, msg, j);
        json_decref(j);
        free(w);
    }
}

static void on_tick(uv_timer_t *t)
{
    nb_vmm_t *m = t->data;
    uint64_t now = uv_now(m->loop);
    for (nb_vm_t *vm = m->vms; vm; vm = vm->next) {
        vm_lc_poll(vm);
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
    vm_waiter_add(vm, W_READY, timeout_ms, cb, ud);
}

/* ------------------------------------------------------------ sqlite rows */

static sqlite3 *db_of(nb_vmm_t *m)
{
    return m->d->store ? nb_store_db(m->d->store) : NULL;
}

int vm_db_exec(nb_vmm_t *m, const char *sql, nb_vm_t *vm, int full)
{
    sqlite3 *db = db_of(m);
    sqlite3_stmt *st = NULL;
    if (!db)
        return NB_ESTATE;
    int r = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (r == SQLITE_OK) {
        sqlite3_bind_text(st, 1, vm->spec.name, -1, SQLITE_STATIC);
        if (full) {
            sqlite3_bind_text(st, 2, vm->spec.image, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 3, (int)vm->spec.cpus);
            sqlite3_bind_int(st, 4, (int)vm->spec.memory_mib);
            sqlite3_bind_int64(st, 5, (sqlite3_int64)vm->spec.disk_bytes);
            sqlite3_bind_text(st, 6,
                              vm->spec.restart == NB_VM_RESTART_ON_FAILURE ? "on-failure" : "never",
                              -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 7, vm->want_running);
            sqlite3_bind_int64(st, 8, vm->created_ms);
            sqlite3_bind_text(st, 9, vm->spec.accel, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 10, vm->spec.user, -1, SQLITE_STATIC);
        }
        r = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE) {
        nb_log(NB_LOG_ERR, "vm %s: sqlite: %s", vm->spec.name, sqlite3_errmsg(db));
        return r == SQLITE_CONSTRAINT ? NB_EEXIST : NB_EINTERNAL;
    }
    return 0;
}

int vm_db_update(nb_vm_t *vm)
{
    return vm_db_exec(vm->m,
                      "UPDATE vms SET image = ?2, cpus = ?3, memory_mib = ?4, disk_bytes = ?5,"
                      " restart = ?6, want_running = ?7, created_ms = ?8, accel = ?9, user = ?10"
                      " WHERE name = ?1",
                      vm, 1);
}

int vm_db_set_want(nb_vm_t *vm, int want)
{
    if (vm->want_running == want)
        return 0;
    vm->want_running = want;
    return vm_db_update(vm);
}

/* ------------------------------------------------------------ the table */

static int vm_paths(nb_vm_t *vm, char *msg, size_t msgsz)
{
    nb_vmm_t *m = vm->m;
    const char *n = vm->spec.name;
    int bad = nb_vm_fmt(vm->dir, sizeof vm->dir, "%s/vms/%s", m->home, n) |
              nb_vm_fmt(vm->rdir, sizeof vm->rdir, "%s/vms/%s", m->runtime, n) |
              nb_vm_fmt(vm->disk, sizeof vm->disk, "%s/disk.qcow2", vm->dir) |
              nb_vm_fmt(vm->console, sizeof vm->console, "%s/console.log", vm->dir) |
              nb_vm_fmt(vm->qemu_log, sizeof vm->qemu_log, "%s/qemu.log", vm->dir) |
              nb_vm_fmt(vm->pidfile, sizeof vm->pidfile, "%s/qemu.pid", vm->dir) |
              nb_vm_fmt(vm->keyfile, sizeof vm->keyfile, "%s/mux.key", vm->rdir) |
              nb_vm_fmt(vm->fwcfg_key, sizeof vm->fwcfg_key, "%s/boot.key", vm->rdir);
    if (bad) {
        nb_vm_fmt(msg, msgsz, "the state folder path %s is too long", m->home);
        return NB_ETOOBIG;
    }
    if (nb_vm_fmt(vm->qmp_sock, sizeof vm->qmp_sock, "%s/qmp.sock", vm->rdir) < 0 ||
        nb_vm_fmt(vm->mux_sock, sizeof vm->mux_sock, "%s/mux.sock", vm->rdir) < 0) {
        nb_vm_fmt(msg, msgsz,
                  "the VM's socket path %s/mux.sock is longer than a Unix socket allows (107 "
                  "bytes); use a shorter VM name or NILBOX_RUNTIME_DIR",
                  vm->rdir);
        return NB_ETOOBIG;
    }
    return 0;
}

nb_vm_t *vm_alloc(nb_vmm_t *m, const nb_vm_spec_t *spec, char *msg, size_t msgsz, int *r)
{
    nb_vm_t *vm = calloc(1, sizeof *vm);
    if (!vm) {
        *r = -ENOMEM;
        return NULL;
    }
    vm->m = m;
    vm->spec = *spec;
    vm->pidfd = -1;
    if ((*r = vm_paths(vm, msg, msgsz)) < 0) {
        free(vm);
        return NULL;
    }
    uv_timer_init(m->loop, &vm->timer);
    uv_timer_init(m->loop, &vm->boot_timer);
    uv_timer_init(m->loop, &vm->status_timer);
    vm->timer.data = vm->boot_timer.data = vm->status_timer.data = vm;
    vm->handles = 3;
    nb_vm_t **pp = &m->vms; /* kept in name order (listings) */
    while (*pp && strcmp((*pp)->spec.name, vm->spec.name) < 0)
        pp = &(*pp)->next;
    vm->next = *pp;
    *pp = vm;
    return vm;
}

static void vm_handle_closed(uv_handle_t *h)
{
    nb_vm_t *vm = h->data;
    nb_vmm_t *m = vm->m;
    if (--vm->handles > 0)
        return;
    free(vm);
    if (--m->pending_closes == 0 && m->freeing)
        free(m);
}

void vm_destroy(nb_vm_t *vm)
{
    nb_vmm_t *m = vm->m;
    for (nb_vm_t **pp = &m->vms; *pp; pp = &(*pp)->next) {
        if (*pp == vm) {
            *pp = vm->next;
            break;
        }
    }
    vm_waiters_fire(vm, 0, NB_ECLOSED, "the VM is gone");
    m->pending_closes++;
    uv_close((uv_handle_t *)&vm->timer, vm_handle_closed);
    uv_close((uv_handle_t *)&vm->boot_timer, vm_handle_closed);
    uv_close((uv_handle_t *)&vm->status_timer, vm_handle_closed);
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
        vm_lc_start(vm, wait, cb, ud);
}

void nb_vmm_stop(nb_vmm_t *m, const char *name, int force, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        vm_lc_stop(vm, force, cb, ud);
}

void nb_vmm_restart(nb_vmm_t *m, const char *name, int wait, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (!vm)
        return;
    if (vm->state == NB_VM_STOPPED || vm->state == NB_VM_CRASHED) {
        vm_lc_start(vm, wait, cb, ud);
        return;
    }
    vm->restart_after_stop = 1;
    vm->restart_wait = wait;
    vm_waiter_add(vm, wait ? W_READY : W_STARTED, 0, cb, ud);
    if (vm->state != NB_VM_STOPPING)
        vm_lc_stop(vm, 0, NULL, NULL);
}

void nb_vmm_resize(nb_vmm_t *m, const char *name, uint64_t bytes, nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        vm_snap_resize(vm, bytes, cb, ud);
}

void nb_vmm_snapshot(nb_vmm_t *m, const char *name, nb_vm_snap_op_t op, const char *snap,
                     nb_vmm_cb cb, void *ud)
{
    nb_vm_t *vm = find_or_fail(m, name, cb, ud);
    if (vm)
        vm_snap_op(vm, op, snap, cb, ud);
}

void nb_vmm_set_restart(nb_vmm_t *m, const char *name, nb_vm_restart_t policy, nb_vmm_cb cb,
                        void *ud)
{
    nb_vmm_set(m, name, &policy, NULL, cb, ud);
}

/* ------------------------------------------------------------ settings */

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
    if (accel && a == NB_QEMU_ACCEL_KVM && vm_kvm_refused(msg, sizeof msg)) {
        cb(ud, NB_EUNSUPPORTED, msg, NULL);
        return;
    }
    nb_vm_spec_t old = vm->spec;
    if (restart)
        vm->spec.restart = *restart;
    if (accel)
        nb_vm_fmt(vm->spec.accel, sizeof vm->spec.accel, "%s", nb_accel_name(a));
    int r = vm_db_update(vm);
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
    int r = vm_db_update(vm);
    if (r < 0) {
        vm->spec = old;
        cb(ud, r, "cannot update the VM's row", NULL);
        return;
    }
    json_t *res = nb_vm_json(vm, 0);
    cb(ud, 0, NULL, res);
    json_decref(res);
}

int vm_kvm_refused(char *msg, size_t msgsz)
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

/* ------------------------------------------------------------ new / free */

static int load_rows(nb_vmm_t *m, char *err, size_t errsz)
{
    sqlite3 *db = db_of(m);
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
        nb_vm_t *vm = vm_alloc(m, &s, msg, sizeof msg, &r);
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

int nb_vmm_new(nb_daemon_t *d, nb_vmm_t **out, char *err, size_t errsz)
{
    *out = NULL;
    nb_vmm_t *m = calloc(1, sizeof *m);
    if (!m) {
        nb_vm_fmt(err, errsz, "out of memory");
        return -ENOMEM;
    }
    m->d = d;
    m->loop = d->loop;
    nb_vm_fmt(m->home, sizeof m->home, "%s", d->home.home);
    nb_vm_fmt(m->runtime, sizeof m->runtime, "%s", d->home.runtime);
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
        vm_lc_reattach(vm);
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
        vm_lc_detach(vm);
        if (vm->jobs) {
            /* A pool job still uses it: job_done destroys it. */
            m->vms = vm->next;
            vm->orphan = 1;
            m->pending_closes++;
            continue;
        }
        vm_destroy(vm);
    }
    uv_close((uv_handle_t *)&m->tick, tick_closed);
}
