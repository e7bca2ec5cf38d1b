/* The thread-pool half of a VM start: QEMU binary, image, disk space,
 * the accelerator choice (may run the KVM probe), the per-boot key files
 * and QEMU's command line. Touches no loop state; lifecycle.c queues it
 * and spawns QEMU with the result. See manager_int.h. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "host/home.h"
#include "host/accel.h"
#include "host/image.h"
#include "daemon/vm/manager_int.h"
#include "lib/err.h"
#include "lib/fsproto.h"
#include "lib/log.h"

/* Creates the shared data area's file (0600, NB_FSP_SHM_SIZE bytes, sparse)
 * with a fresh random tag at offset 0. 0 or -errno; nothing left behind on
 * failure. */
static int create_shm(const char *path)
{
    uint8_t tag[NB_FSP_SHM_TAG_LEN];
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    randombytes_buf(tag, sizeof tag);
    int r = 0;
    if (ftruncate(fd, NB_FSP_SHM_SIZE) < 0 || pwrite(fd, tag, sizeof tag, 0) != sizeof tag)
        r = errno ? -errno : -EIO;
    close(fd);
    if (r < 0)
        unlink(path);
    return r;
}

static pthread_once_t tsc_once = PTHREAD_ONCE_INIT;
static unsigned tsc_khz;

static void measure_tsc(void)
{
    if (nb_qemu_host_tsc_khz(&tsc_khz) < 0)
        tsc_khz = 0;
}

/* Decides KVM or TCG for this boot (pool thread: may run the KVM probe).
 * 0, or an error with a sentence in jj->msg (kvm requested, none usable). */
static int choose_accel(nb_vm_boot_t *j, nb_qemu_accel_t *out)
{
    nb_vm_job_t *jj = &j->j;
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

void nb_vm_boot_work(nb_vm_job_t *jj)
{
    nb_vm_boot_t *j = (nb_vm_boot_t *)jj;
    nb_vm_t *vm = jj->vm;
    nb_vmm_t *m = vm->m;
    nb_image_t img;
    char idir[VM_PATH];
    if (nb_vm_find_binary("NILBOX_QEMU", "qemu-system-x86_64", j->qemu, sizeof j->qemu) < 0) {
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
    if ((jj->r = nb_vm_check_space(m, jj->msg, sizeof jj->msg)) < 0)
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
    /* The folder mapping's shared data area: a fresh file per boot (a
     * stale QEMU may still map the old one), pages allocated as the guest
     * touches them. Without it shares use the channel for data. */
    const char *shm = NULL;
    const char *shm_env = getenv("NILBOX_SHARE_SHM");
    unlink(vm->shm);
    if (!shm_env || strcmp(shm_env, "0") != 0) {
        int sr = create_shm(vm->shm);
        if (sr == 0)
            shm = vm->shm;
        else
            nb_log(NB_LOG_WARN, "vm %s: no shared data area for folder mappings (%s): %s",
                   vm->spec.name, vm->shm, nb_strerror(sr));
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
        .shm_file = shm,
        .shm_size = NB_FSP_SHM_SIZE,
    };
    if ((jj->r = nb_qemu_build_argv(&spec, &j->argv)) < 0)
        nb_vm_fmt(jj->msg, sizeof jj->msg, "cannot build the QEMU command line (see the log)");
}

void nb_vm_boot_cleanup(nb_vm_job_t *jj)
{
    nb_vm_boot_t *j = (nb_vm_boot_t *)jj;
    sodium_memzero(j->key, sizeof j->key);
    nb_qemu_argv_free(&j->argv);
}
