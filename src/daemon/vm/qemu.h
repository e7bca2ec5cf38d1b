/* QEMU command line and launch for one VM.
 *
 * The argv is fixed by design (docs/internals/vm.md): no NIC (-nic none,
 * -nodefaults, -no-user-config), direct kernel boot, the nbmux
 * virtio-serial port "org.nilbox.mux" whose chardev CONNECTS to the
 * daemon's listening socket with reconnect=1, the per-boot key via fw_cfg
 * from a file (never in argv), serial console to a log file, a QMP socket
 * on which QEMU listens, a pidfile, and the seccomp sandbox.
 *
 * QEMU is started in its own session (setsid) with stdin on /dev/null and
 * stdout/stderr on a log file, so that a nilboxd killed even with SIGKILL
 * takes neither the QEMU process group nor a pipe with it: QEMU keeps
 * running, and the next nilboxd finds it by pidfile + QMP socket.
 */
#ifndef NB_VM_QEMU_H
#define NB_VM_QEMU_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "host/accel.h"

typedef enum {
    NB_QEMU_MACHINE_AUTO = 0, /* microvm where it boots reliably, else q35 */
    NB_QEMU_MACHINE_MICROVM,
    NB_QEMU_MACHINE_Q35,
} nb_qemu_machine_t;

/* The name the virtio-serial port carries; the guest finds it at
 * /dev/virtio-ports/org.nilbox.mux. */
#define NB_QEMU_MUX_PORT "org.nilbox.mux"
/* fw_cfg item of the per-boot key; the guest reads
 * /sys/firmware/qemu_fw_cfg/by_name/opt/nilbox/key/raw. */
#define NB_QEMU_KEY_FWCFG "opt/nilbox/key"

/* NB_QEMU_KVM_CPU, NB_QEMU_KVM_MICROVM and NB_QEMU_SANDBOX: host/accel.h (the KVM
 * probe boots with them too). */
/* Under TCG, `rep movsb` runs one emulated iteration per byte, and with
 * ERMS/FSRM advertised the guest kernel and glibc copy everything with it:
 * without them they use 8-byte string moves or vector loops. It made the
 * guest's CPU per byte through a folder mapping about 2.6x smaller
 * (bench/README.md, "share"). */
#define NB_QEMU_TCG_CPU "max,erms=off,fsrm=off"
#define NB_QEMU_TCG_MICROVM "microvm,x-option-roms=off,rtc=on"

typedef struct {
    const char *qemu; /* binary; NULL: "qemu-system-x86_64" from PATH */
    const char *name; /* VM name ([A-Za-z0-9_.-], 1..63), for -name */
    nb_qemu_machine_t machine;
    nb_qemu_accel_t accel;   /* resolve AUTO with nb_kvm_status (accel.h) first */
    const char *kvm_cpu;     /* -cpu under KVM; NULL: NB_QEMU_KVM_CPU */
    unsigned cpus;           /* 0: 1 */
    unsigned memory_mib;     /* 0: 512 */
    const char *kernel;      /* required */
    const char *initrd;      /* may be NULL */
    const char *cmdline;     /* extra kernel arguments; may be NULL */
    const char *disk;        /* qcow2 image (the VM's overlay); may be NULL */
    int disk_is_root;        /* 1: boot with nilbox.root=/dev/vda (debian image) */
    const char *mux_socket;  /* required: daemon's listening socket */
    const char *key_file;    /* required: 0600 file with the per-boot key */
    const char *qmp_socket;  /* required: QEMU listens here */
    const char *console_log; /* required: serial console output */
    const char *pidfile;     /* required */
    /* Host TSC frequency in kHz (nb_qemu_host_tsc_khz). microvm under TCG
     * has no timer to calibrate the TSC against and hangs now and then at
     * boot; given this (passed as tsc_early_khz) it boots every time. With
     * AUTO machine and TCG, 0 here selects q35. */
    unsigned tsc_khz;
    /* The folder mapping's shared data area (docs/internals/share.md,
     * "Shared memory"): an existing 0600 file of shm_size bytes (a power of
     * two) that QEMU maps shared and shows the guest as an ivshmem-plain
     * PCI device (microvm gets its PCIe bus for it). NULL: no device. */
    const char *shm_file;
    size_t shm_size;
} nb_qemu_spec_t;

typedef struct {
    char **argv; /* NULL-terminated; owned */
    size_t argc;
    nb_qemu_machine_t machine; /* what AUTO resolved to */
    nb_qemu_accel_t accel;
} nb_qemu_argv_t;

/* 1 when /dev/kvm opens read-write, else 0. Only a first hint: whether
 * KVM really runs our guests is nb_kvm_status's (accel.h) to say. */
int nb_qemu_kvm_usable(void);

/* Measures the host TSC frequency against CLOCK_MONOTONIC_RAW (blocks
 * ~50 ms: call it once, off the loop or at startup). Only where the TSC is
 * invariant (constant_tsc and nonstop_tsc in /proc/cpuinfo) on x86-64.
 * 0 and *khz set, or NB_EUNSUPPORTED. */
int nb_qemu_host_tsc_khz(unsigned *khz);

/* Builds the argv for `spec`, resolving AUTO machine (and AUTO accel by
 * nb_qemu_kvm_usable alone: callers resolve it first). Values that end up inside QEMU option
 * strings have their commas doubled (QEMU's escape). 0, NB_EINVAL (missing/invalid field, with a
 * log line saying which) or -ENOMEM. *out is cleared on entry; free with nb_qemu_argv_free. */
int nb_qemu_build_argv(const nb_qemu_spec_t *spec, nb_qemu_argv_t *out);

void nb_qemu_argv_free(nb_qemu_argv_t *a);

/* Starts QEMU with `a` as a detached process (own session, stdin
 * /dev/null, stdout+stderr appended to `log_path`, which is created 0600).
 * `proc` is initialised by uv_spawn; `exit_cb` fires if QEMU exits while
 * this process is its parent. Returns 0 (proc->pid set) or a negative
 * code. Loop thread. */
int nb_qemu_spawn(uv_loop_t *loop, const nb_qemu_argv_t *a, const char *log_path,
                  uv_process_t *proc, uv_exit_cb exit_cb);

/* Writes `len` bytes of `key` to a new file `path` with mode 0600
 * (O_EXCL: fails with -EEXIST if it exists). The caller removes it once
 * QEMU has started (QEMU reads fw_cfg files at startup). */
int nb_qemu_write_key_file(const char *path, const uint8_t *key, size_t len);

/* Reads a QEMU pidfile and checks that the pid is alive and is a QEMU
 * whose command line names `qmp_socket` (so a recycled pid is not taken
 * for our VM). 0 and *pid set, NB_ENOTFOUND, or -errno. */
int nb_qemu_find_running(const char *pidfile, const char *qmp_socket, int *pid);

#endif
