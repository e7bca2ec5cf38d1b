/* One VM of the manager: names and sizes, its JSON, events, state and
 * waiters, its sqlite row, its allocation in the table, and the pool
 * jobs and blocking helpers (commands, binaries, disk space) the
 * lifecycle, snapshot and manager code build on. The bottom of vm/: it
 * calls nothing there but the channel (session.c). See manager_int.h. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/base/store.h"
#include "host/accel.h"
#include "daemon/vm/manager_int.h"
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

nb_muxsess_t *nb_vm_session(const nb_vm_t *vm)
{
    return vm->agent_up ? nb_vmchan_session(vm->chan) : NULL;
}

const char *nb_vm_console_path(const nb_vm_t *vm)
{
    return vm->console;
}

const char *nb_vm_share_shm_path(const nb_vm_t *vm)
{
    return vm->shm;
}

const char *nb_vm_qemu_log_path(const nb_vm_t *vm)
{
    return vm->qemu_log;
}

const char *nb_vm_accel_setting(const nb_vm_t *vm, const char **source)
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
    const char *src = NULL, *setting = nb_vm_accel_setting(vm, &src);
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
        json_object_set_new(j, "share_shm", json_string(vm->shm));
        json_object_set_new(j, "qmp_socket", json_string(vm->qmp_sock));
        json_object_set_new(j, "mux_socket", json_string(vm->mux_sock));
        if (vm->qemu_version[0])
            json_object_set_new(j, "qemu_version", json_string(vm->qemu_version));
        if (vm->chan)
            json_object_set_new(j, "agent_sessions", json_integer(nb_vmchan_sessions(vm->chan)));
    }
    return j;
}

/* ------------------------------------------------------------ events */

void nb_vm_emit(nb_vm_t *vm, const char *type, json_t *fields)
{
    nb_events_t *ev = vm->m->events;
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

void nb_vm_progress(nb_vm_t *vm, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nb_log(NB_LOG_INFO, "vm %s: %s", vm->spec.name, msg);
    /* Not "vm.*": progress lines are for the user, not the audit log. */
    nb_events_t *ev = vm->m->events;
    if (ev && !vm->m->freeing)
        nb_events_emit(
            ev, "progress",
            json_pack("{s:s, s:s, s:s}", "vm", vm->spec.name, "op", "start", "message", msg));
}

void nb_vm_set_state(nb_vm_t *vm, nb_vm_state_t s)
{
    if (vm->state == s)
        return;
    nb_log(NB_LOG_INFO, "vm %s: %s -> %s", vm->spec.name, nb_vm_state_name(vm->state),
           nb_vm_state_name(s));
    vm->state = s;
}

/* ------------------------------------------------------------ waiters */

void nb_vm_waiter_add(nb_vm_t *vm, int kind, uint64_t timeout_ms, nb_vmm_cb cb, void *ud)
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
void nb_vm_waiters_fire(nb_vm_t *vm, int kind, int r, const char *msg)
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

/* ------------------------------------------------------------ sqlite rows */

static sqlite3 *db_of(nb_vmm_t *m)
{
    return m->store ? nb_store_db(m->store) : NULL;
}

int nb_vm_db_exec(nb_vmm_t *m, const char *sql, nb_vm_t *vm, int full)
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

int nb_vm_db_update(nb_vm_t *vm)
{
    return nb_vm_db_exec(vm->m,
                         "UPDATE vms SET image = ?2, cpus = ?3, memory_mib = ?4, disk_bytes = ?5,"
                         " restart = ?6, want_running = ?7, created_ms = ?8, accel = ?9, user = ?10"
                         " WHERE name = ?1",
                         vm, 1);
}

int nb_vm_db_set_want(nb_vm_t *vm, int want)
{
    if (vm->want_running == want)
        return 0;
    vm->want_running = want;
    return nb_vm_db_update(vm);
}

/* ------------------------------------------------------------ the table */

/* Where the folder mapping's shared data area lives (docs/internals/share.md,
 * "Shared memory"): in the VM's runtime folder when that is in memory
 * (tmpfs, the usual XDG_RUNTIME_DIR), else in /dev/shm under a name made
 * of our uid and a hash of the runtime folder (so a restarted daemon finds
 * it again): a shared mapping of a file on a disk file system is written
 * back to the disk while the guest uses it. Someone else's file of that
 * name only means no area (the boot's O_EXCL create fails, and a mount
 * maps only our own 0600 file). */
static int vm_shm_path(nb_vm_t *vm)
{
    struct statfs fs;
    if ((statfs(vm->m->runtime, &fs) == 0 &&
         (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC)) ||
        statfs("/dev/shm", &fs) < 0 || fs.f_type != TMPFS_MAGIC)
        return nb_vm_fmt(vm->shm, sizeof vm->shm, "%s/share.shm", vm->rdir);
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = vm->rdir; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return nb_vm_fmt(vm->shm, sizeof vm->shm, "/dev/shm/nilbox-%u-%016llx.shm", (unsigned)geteuid(),
                     (unsigned long long)h);
}

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
              nb_vm_fmt(vm->fwcfg_key, sizeof vm->fwcfg_key, "%s/boot.key", vm->rdir) |
              vm_shm_path(vm);
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

nb_vm_t *nb_vm_alloc(nb_vmm_t *m, const nb_vm_spec_t *spec, char *msg, size_t msgsz, int *r)
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

void nb_vm_destroy(nb_vm_t *vm)
{
    nb_vmm_t *m = vm->m;
    for (nb_vm_t **pp = &m->vms; *pp; pp = &(*pp)->next) {
        if (*pp == vm) {
            *pp = vm->next;
            break;
        }
    }
    nb_vm_waiters_fire(vm, 0, NB_ECLOSED, "the VM is gone");
    m->pending_closes++;
    uv_close((uv_handle_t *)&vm->timer, vm_handle_closed);
    uv_close((uv_handle_t *)&vm->boot_timer, vm_handle_closed);
    uv_close((uv_handle_t *)&vm->status_timer, vm_handle_closed);
}

/* ------------------------------------------------------------ pool jobs */

static void job_work(uv_work_t *w)
{
    nb_vm_job_t *j = (nb_vm_job_t *)w;
    j->work(j);
}

static void job_done(uv_work_t *w, int status)
{
    nb_vm_job_t *j = (nb_vm_job_t *)w;
    nb_vm_t *vm = j->vm;
    nb_vmm_t *m = vm->m;
    vm->jobs--;
    if (m->freeing) {
        /* The store may be closed already: touch nothing but the caller. */
        if (j->cb)
            j->cb(j->ud, NB_ECLOSED, "the daemon is stopping", NULL);
        if (j->cleanup)
            j->cleanup(j);
        free(j);
        if (vm->orphan && !vm->jobs) {
            nb_vm_destroy(vm);
            if (--m->pending_closes == 0)
                free(m); /* not reached: nb_vm_destroy holds a reference */
        }
        return;
    }
    if (status < 0 && !j->r) {
        j->r = NB_ECLOSED;
        nb_vm_fmt(j->msg, sizeof j->msg, "the daemon is stopping");
    }
    j->done(j);
}

int nb_vm_queue(nb_vm_t *vm, nb_vm_job_t *j, void (*work)(nb_vm_job_t *),
                void (*done)(nb_vm_job_t *), nb_vmm_cb cb, void *ud)
{
    j->vm = vm;
    j->work = work;
    j->done = done;
    j->cb = cb;
    j->ud = ud;
    int r = uv_queue_work(vm->m->loop, &j->w, job_work, job_done);
    if (r == 0)
        vm->jobs++;
    return r;
}

void nb_vm_queue_busy(nb_vm_t *vm, nb_vm_job_t *j, const char *busy, void (*work)(nb_vm_job_t *),
                      void (*done)(nb_vm_job_t *), nb_vmm_cb cb, void *ud)
{
    if (busy)
        vm->busy = busy;
    int r = nb_vm_queue(vm, j, work, done, cb, ud);
    if (r < 0) {
        vm->busy = NULL;
        free(j);
        if (cb)
            cb(ud, r, NULL, NULL);
    }
}

int nb_vm_run_cmd(const char *const *argv, char *out, size_t outsz)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (r != 0) {
        close(p[0]);
        return -r;
    }
    size_t len = 0;
    char sink[4096];
    for (;;) {
        char *dst = out && len + 1 < outsz ? out + len : sink;
        size_t cap = out && len + 1 < outsz ? outsz - 1 - len : sizeof sink;
        ssize_t n = read(p[0], dst, cap);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (dst != sink)
            len += (size_t)n;
    }
    if (out && outsz)
        out[len] = '\0';
    close(p[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int nb_vm_find_binary(const char *env, const char *name, char *out, size_t outsz)
{
    const char *e = env ? getenv(env) : NULL;
    if (e && e[0]) {
        nb_vm_fmt(out, outsz, "%s", e);
        return access(e, X_OK) == 0 ? 0 : NB_ENOTFOUND;
    }
    const char *path = getenv("PATH");
    if (!path || !path[0])
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && (int)n < 900) {
            nb_vm_fmt(out, outsz, "%.*s/%s", (int)n, path, name);
            if (access(out, X_OK) == 0)
                return 0;
        }
        path += n + (path[n] == ':');
    }
    nb_vm_fmt(out, outsz, "%s", name);
    return NB_ENOTFOUND;
}

int nb_vm_check_space(nb_vmm_t *m, char *msg, size_t msgsz)
{
    struct statvfs sv;
    if (statvfs(m->home, &sv) < 0)
        return 0; /* cannot tell: let qemu-img / QEMU report it */
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    if (avail >= m->min_free_bytes)
        return 0;
    nb_vm_fmt(msg, msgsz,
              "no disk space: %llu MiB free in %s, a VM needs at least %llu MiB; free some space "
              "(or remove unused VMs and images)",
              (unsigned long long)(avail >> 20), m->home,
              (unsigned long long)(m->min_free_bytes >> 20));
    return -ENOSPC;
}

int nb_vm_qmp(nb_vm_t *vm, const char *cmd, json_t *args, uint64_t timeout_ms, nb_qmp_reply_cb cb,
              void *data)
{
    if (!vm->qmp || !nb_qmp_is_ready(vm->qmp))
        return NB_ESTATE;
    return nb_qmp_command(vm->qmp, cmd, args, timeout_ms, cb, data);
}
