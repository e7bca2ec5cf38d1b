/* VM manager operations that run on the thread pool: the job helper, the
 * blocking helpers (commands, binaries, disk space), create and remove.
 * See manager.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "host/image.h"
#include "daemon/vm/vmint.h"
#include "lib/err.h"
#include "lib/log.h"

extern char **environ;

#ifndef NB_IMAGES_SRC
#define NB_IMAGES_SRC "/usr/share/nilbox/images"
#endif

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

/* ------------------------------------------------------------ pool jobs */

static void job_work(uv_work_t *w)
{
    vm_job_t *j = (vm_job_t *)w;
    j->work(j);
}

static void job_done(uv_work_t *w, int status)
{
    vm_job_t *j = (vm_job_t *)w;
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
            vm_destroy(vm);
            if (--m->pending_closes == 0)
                free(m); /* not reached: vm_destroy holds a reference */
        }
        return;
    }
    if (status < 0 && !j->r) {
        j->r = NB_ECLOSED;
        nb_vm_fmt(j->msg, sizeof j->msg, "the daemon is stopping");
    }
    j->done(j);
}

int vm_queue(nb_vm_t *vm, vm_job_t *j)
{
    j->vm = vm;
    int r = uv_queue_work(vm->m->loop, &j->w, job_work, job_done);
    if (r == 0)
        vm->jobs++;
    return r;
}

int vm_run_cmd(const char *const *argv, char *out, size_t outsz)
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

int vm_find_binary(const char *env, const char *name, char *out, size_t outsz)
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

int vm_check_space(nb_vmm_t *m, char *msg, size_t msgsz)
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

/* ------------------------------------------------------------ create */

static void create_work(vm_job_t *j)
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
    if (!strcmp(vm->spec.accel, "kvm") && vm_kvm_refused(j->msg, sizeof j->msg)) {
        j->r = NB_EUNSUPPORTED;
        return;
    }
    if (vm_find_binary("NILBOX_QEMU_IMG", "qemu-img", qimg, sizeof qimg) < 0) {
        j->r = NB_EUNSUPPORTED;
        nb_vm_fmt(j->msg, sizeof j->msg,
                  "qemu-img is missing (%s); install the Debian package qemu-utils", qimg);
        return;
    }
    if ((j->r = vm_check_space(m, j->msg, sizeof j->msg)) < 0)
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
            if (vm_check_space(m, j->msg, sizeof j->msg) < 0)
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

static void create_done(vm_job_t *j)
{
    nb_vm_t *vm = j->vm;
    vm->busy = NULL;
    if (j->r == 0 &&
        (j->r = vm_db_exec(vm->m,
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
        vm_destroy(vm);
        free(j);
        return;
    }
    vm_emit(vm, "vm.created",
            json_pack("{s:s, s:i, s:i, s:I}", "image", vm->spec.image, "cpus", (int)vm->spec.cpus,
                      "memory_mib", (int)vm->spec.memory_mib, "disk_bytes",
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
    vm_job_t *j = calloc(1, sizeof *j);
    nb_vm_t *vm = j ? vm_alloc(m, &s, msg, sizeof msg, &r) : NULL;
    if (!vm) {
        free(j);
        cb(ud, j ? r : -ENOMEM, j ? msg : NULL, NULL);
        return;
    }
    vm->created_ms = nb_events_now_ms();
    vm->busy = "creating";
    j->cb = cb;
    j->ud = ud;
    j->work = create_work;
    j->done = create_done;
    if ((r = vm_queue(vm, j)) < 0) {
        vm_destroy(vm);
        free(j);
        cb(ud, r, NULL, NULL);
    }
}

/* ------------------------------------------------------------ remove */

static void remove_work(vm_job_t *j)
{
    remove_tree(j->vm->dir);
    remove_tree(j->vm->rdir);
}

static void remove_done(vm_job_t *j)
{
    nb_vm_t *vm = j->vm;
    vm_emit(vm, "vm.removed", NULL);
    j->cb(j->ud, 0, NULL, NULL);
    vm_destroy(vm);
    free(j);
}

static void remove_now(nb_vm_t *vm, nb_vmm_cb cb, void *ud)
{
    int r;
    vm_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    if ((r = vm_db_exec(vm->m, "DELETE FROM vms WHERE name = ?1", vm, 0)) < 0) {
        free(j);
        cb(ud, r, "cannot delete the VM's row", NULL);
        return;
    }
    vm->removed = 1; /* gone from lookups; memory goes after the files */
    vm->busy = "removing";
    j->cb = cb;
    j->ud = ud;
    j->work = remove_work;
    j->done = remove_done;
    if ((r = vm_queue(vm, j)) < 0) {
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
    vm_lc_stop(vm, 1, rm_after_stop, c);
}
