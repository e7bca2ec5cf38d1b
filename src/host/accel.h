/* Accelerator choice: KVM when it really works on this host, else TCG.
 *
 * /dev/kvm opening is not enough: nested hosts (cloud VMs, CI runners)
 * often have a /dev/kvm whose KVM cannot run our guests (QEMU aborts with
 * "failed to set MSR ...", or the guest stops on an emulation failure). So
 * "works" is measured: nb_kvm_status() boots the tiny image's kernel under
 * KVM with the same machine and CPU model as real VMs until the kernel
 * starts its init (the marker), within a few seconds. The answer is cached
 * in $NILBOX_HOME/kvm-probe.json, keyed by the host kernel release, the
 * QEMU version, the host CPU model and our -cpu string; a different key
 * probes again. A VM that fails under KVM anyway records the host as
 * broken here too (nb_kvm_record_broken), so the next `auto` start goes
 * straight to TCG. See docs/internals/vm.md ("Accelerator").
 *
 * Everything here blocks (it starts QEMU and waits for it): call it from
 * the thread pool in the daemon; the CLI may call it directly. Shared by
 * the VM manager, the doctor check and nb_vmrun.
 */
#ifndef NB_VM_ACCEL_H
#define NB_VM_ACCEL_H

#include <stddef.h>
#include <sys/types.h>

typedef enum {
    NB_QEMU_ACCEL_AUTO = 0, /* kvm when /dev/kvm is usable, else tcg */
    NB_QEMU_ACCEL_KVM,
    NB_QEMU_ACCEL_TCG,
} nb_qemu_accel_t;

/* -cpu under KVM. "host" minus what nested hosts cannot set: QEMU writes
 * IA32_ARCH_CAPABILITIES (MSR 0x10a) and, with vmx, the VMX capability
 * MSRs (0x480..) into the vCPU; an L1 hypervisor's KVM often refuses them
 * and QEMU aborts ("failed to set MSR 0x10a", kvm_put_msrs assertion).
 * Guests run no VMs of their own and need neither. docs/internals/vm.md.
 * NILBOX_KVM_CPU overrides it (nb_kvm_cpu_model). */
#define NB_QEMU_KVM_CPU "host,-vmx,-svm,-arch-capabilities"
/* microvm under KVM: no option ROMs; no legacy PIT/PIC (kvmclock, in-kernel
 * LAPIC). The KVM probe uses the same string. */
#define NB_QEMU_KVM_MICROVM "microvm,x-option-roms=off,rtc=on,pit=off,pic=off"
/* QEMU's seccomp filter: no exec, no privilege changes. */
#define NB_QEMU_SANDBOX "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

/* "auto", "kvm", "tcg" -> *out. 0 or NB_EINVAL (also for NULL / ""). */
int nb_accel_parse(const char *s, nb_qemu_accel_t *out);
const char *nb_accel_name(nb_qemu_accel_t a);

/* The daemon-wide default from NILBOX_ACCEL (unset or "": auto). 0, or
 * NB_EINVAL for another value (*out is then AUTO). */
int nb_accel_env_default(nb_qemu_accel_t *out);

typedef enum {
    NB_KVM_ABSENT = 0, /* no usable /dev/kvm: TCG, nothing to probe */
    NB_KVM_OK,         /* the probe booted under KVM */
    NB_KVM_BROKEN,     /* /dev/kvm opens, but QEMU/KVM cannot run the guest */
    NB_KVM_UNPROBED,   /* /dev/kvm opens; no probe possible (no tiny image, no QEMU) */
} nb_kvm_state_t;

typedef struct {
    nb_kvm_state_t state;
    /* ABSENT: why ("/dev/kvm: No such file or directory"); BROKEN: QEMU's
     * own error line, or what the probe saw; UNPROBED: why not probed. */
    char detail[400];
    int cached;        /* the answer came from the cache file */
    double probe_secs; /* duration of the probe that ran now (0 when cached) */
} nb_kvm_status_t;

typedef struct {
    const char *home;    /* NILBOX_HOME: cache file and the tiny image */
    const char *qemu;    /* QEMU binary (NULL: qemu-system-x86_64 from PATH) */
    const char *kernel;  /* kernel to boot; NULL: the tiny image of `home` */
    const char *initrd;  /* with `kernel`; may be NULL */
    unsigned timeout_ms; /* 0: NB_KVM_PROBE_TIMEOUT_MS */
    int force;           /* probe even when the cache has an answer */
} nb_kvm_probe_opts_t;

#define NB_KVM_PROBE_TIMEOUT_MS 8000u
#define NB_KVM_CACHE_FILE "kvm-probe.json"

/* The KVM device: $NILBOX_KVM_DEVICE (tests) or /dev/kvm. */
const char *nb_kvm_device(void);

/* 1 when the KVM device opens read-write; else 0 with the reason in `why`
 * ("/dev/kvm: No such file or directory"). Quick: no QEMU involved. */
int nb_kvm_device_usable(char *why, size_t whysz);

/* The -cpu value under KVM: $NILBOX_KVM_CPU when set and plain
 * ([A-Za-z0-9,_=.+-], < 128 bytes), else NB_QEMU_KVM_CPU. */
const char *nb_kvm_cpu_model(void);

/* Whether KVM works here: device check (no boot when it does not open),
 * then the cached answer for the current key, else a probe. Blocks up to
 * the probe timeout. 0 (out filled), or -ENOMEM. */
int nb_kvm_status(const nb_kvm_probe_opts_t *o, nb_kvm_status_t *out);

/* Records in the cache that KVM failed on this host with `error` (a VM
 * started under KVM did not come up). 0 or a negative code. */
int nb_kvm_record_broken(const char *home, const char *qemu, const char *error);

/* Builds the probe's QEMU command line (NULL-terminated, free with
 * nb_accel_argv_free): same machine and -cpu as a VM under KVM, console on
 * stdout, nothing else. 0, NB_EINVAL or -ENOMEM. */
int nb_kvm_probe_argv(const char *qemu, const char *kernel, const char *initrd, const char *cpu,
                      char ***argv);
void nb_accel_argv_free(char **argv);

/* The line of QEMU's output (stderr) that says what went wrong: the last
 * line containing "error" (any case) that is not a "warning:", else the
 * last non-empty line; a
 * leading "-msg timestamp=on" time stamp is dropped, control characters
 * become '?', and the line is cut to fit `outsz`. 1 when a line was found,
 * 0 when `text` holds none ("" in out). */
int nb_qemu_error_line(const char *text, size_t len, char *out, size_t outsz);

/* nb_qemu_error_line over the part of file `path` from byte `from` on (at
 * most its last 64 KiB). 1, 0 (nothing there) or -errno. */
int nb_qemu_log_error_line(const char *path, off_t from, char *out, size_t outsz);

#endif
