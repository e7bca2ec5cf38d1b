/* The VM manager: the daemon's table of VMs (sqlite rows + live state) and
 * their lifecycle. See docs/internals/vm.md ("The VM manager").
 *
 * Each VM has a row in table `vms` (name, image, cpus, memory, disk size,
 * restart policy, whether the user wants it running), a folder
 * $NILBOX_HOME/vms/NAME/ (overlay disk.qcow2, console.log, qemu.log,
 * qemu.pid) and, while it runs, a folder in the runtime directory
 * ($runtime/vms/NAME/: qmp.sock, mux.sock, and mux.key, the per-boot key
 * kept 0600 so that a restarted daemon can authenticate the agent again).
 *
 * States: stopped -> starting (QEMU spawned, waiting for the agent's
 * handshake) -> running -> stopping -> stopped; crashed when QEMU exits
 * without a stop request. Restart policy on-failure boots a crashed VM
 * again after a backoff (1 s doubling to 30 s; the count resets after
 * 60 s of uptime). QEMU runs in its own session: it survives the daemon,
 * and nb_vmm_new() re-attaches to every VM whose QEMU still runs.
 *
 * Every state change is an event on the bus (vm.created, vm.starting,
 * vm.running, vm.stopping, vm.stopped, vm.crashed, vm.restarting,
 * vm.removed, vm.resized, vm.snapshot, vm.agent) and so also an audit row;
 * boot progress goes out as `progress` events (not audited).
 *
 * Everything runs on the loop thread; blocking work (qemu-img, image
 * manifests, key files) runs on the libuv thread pool. */
#ifndef NB_VM_MANAGER_H
#define NB_VM_MANAGER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "lib/muxsess.h"

typedef struct nb_vmm nb_vmm_t;
typedef struct nb_vm nb_vm_t;

typedef enum {
    NB_VM_STOPPED = 0,
    NB_VM_STARTING,
    NB_VM_RUNNING,
    NB_VM_STOPPING,
    NB_VM_CRASHED,
} nb_vm_state_t;

typedef enum {
    NB_VM_RESTART_NEVER = 0,
    NB_VM_RESTART_ON_FAILURE,
} nb_vm_restart_t;

#define NB_VM_NAME_MAX 32
#define NB_VM_SNAP_MAX 32

/* Schema of the `vms` table (a store migration). */
#define NB_VM_MIGRATION_SQL                                                                        \
    "CREATE TABLE vms (name TEXT PRIMARY KEY, image TEXT NOT NULL, cpus INTEGER NOT NULL,"         \
    "  memory_mib INTEGER NOT NULL, disk_bytes INTEGER NOT NULL, restart TEXT NOT NULL"            \
    "  CHECK (restart IN ('never', 'on-failure')), want_running INTEGER NOT NULL DEFAULT 0,"       \
    "  created_ms INTEGER NOT NULL) STRICT;"

/* Migration 4: the VM's accelerator setting ("" = the daemon's default,
 * NILBOX_ACCEL, else auto). */
#define NB_VM_ACCEL_MIGRATION_SQL                                                                  \
    "ALTER TABLE vms ADD COLUMN accel TEXT NOT NULL DEFAULT ''"                                    \
    "  CHECK (accel IN ('', 'auto', 'kvm', 'tcg'));"

/* Migration 6: the guest account that exec and shell run as when the
 * request names none ("" = the agent's own, root: VMs from before). */
#define NB_VM_USER_MIGRATION_SQL "ALTER TABLE vms ADD COLUMN user TEXT NOT NULL DEFAULT '';"

/* The unprivileged account of the nilbox images (uid 1000), the default
 * user of new VMs. */
#define NB_VM_DEFAULT_USER "agent"
#define NB_VM_USER_MAX 32

typedef struct {
    char name[NB_VM_NAME_MAX + 1];
    char image[32];      /* "" means "tiny" */
    unsigned cpus;       /* 0: 1 */
    unsigned memory_mib; /* 0: 512 */
    uint64_t disk_bytes; /* 0: the image's disk size */
    nb_vm_restart_t restart;
    char accel[8]; /* "auto", "kvm", "tcg", or "": the daemon's default (NILBOX_ACCEL) */
    char user[NB_VM_USER_MAX + 1]; /* default guest account of exec/shell; "": root */
} nb_vm_spec_t;

/* snprintf that reports truncation: 0, or NB_ETOOBIG when `buf` (size
 * `size` > 0) was too small (it then holds a truncated string). */
int nb_vm_fmt(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* 1 when `name` matches ^[a-z][a-z0-9-]{0,31}$. */
int nb_vm_valid_name(const char *name);
/* 1 when `name` is a valid snapshot name ([A-Za-z0-9][A-Za-z0-9._-]{0,31}). */
int nb_vm_valid_snapshot(const char *name);
const char *nb_vm_state_name(nb_vm_state_t s);

/* Parses a size such as "2G", "512M", "1048576" (bytes; K/M/G/T are
 * binary) into *out. 0 or NB_EINVAL. */
int nb_vm_parse_size(const char *s, uint64_t *out);

typedef struct nb_store nb_store_t;
typedef struct nb_events nb_events_t;

/* What the manager uses, filled by the composition root (daemon.c). The
 * store and the event bus outlive the manager. */
typedef struct {
    uv_loop_t *loop;
    const char *home;    /* the nilbox home (images, VM disks) */
    const char *runtime; /* the runtime folder (pidfiles, QMP sockets) */
    nb_store_t *store;
    nb_events_t *events;
} nb_vmm_cfg_t;

/* Hooks of the guest services (guestsvc.c, a layer up): a stream the agent
 * of `vm` opened (return as nb_muxsess_opts_t.on_open does), and the agent
 * of `vm` came up. */
typedef struct {
    int (*on_open)(void *ud, const char *vm, nb_muxsess_stream_t *st, const char *service,
                   nb_iov_t args);
    void (*on_agent_up)(void *ud, const char *vm);
    void *ud;
} nb_vmm_guest_t;

/* Loads the VM rows, creates the per-VM runtime state and re-attaches to
 * QEMU processes that survived a previous daemon (pidfile + QMP socket +
 * the remembered key); VMs that should run but whose QEMU is gone are
 * marked crashed and their restart policy applies. Loop thread, at
 * startup (runs a few quick sqlite statements directly). */
int nb_vmm_new(const nb_vmm_cfg_t *cfg, nb_vmm_t **out, char *err, size_t errsz);

/* Installs (or with NULL removes) the guest services' hooks; without them
 * guest-opened streams are refused. Copied. */
void nb_vmm_set_guest(nb_vmm_t *m, const nb_vmm_guest_t *g);

/* Detaches from every VM without stopping it (QEMU keeps running; the next
 * daemon re-attaches), fails pending waiters with NB_ECLOSED and frees the
 * manager once its handles have closed (keep running the loop). NULL ok. */
void nb_vmm_free(nb_vmm_t *m);

/* Completion of an operation: r 0 or a negative code; `msg` a sentence for
 * the user (may be NULL: use the code's text); `result` a JSON value
 * (borrowed for the call) or NULL. May run before the call returns. */
typedef void (*nb_vmm_cb)(void *ud, int r, const char *msg, json_t *result);

nb_vm_t *nb_vmm_find(nb_vmm_t *m, const char *name);
/* {"vms": [...]} (new reference). */
json_t *nb_vmm_list(nb_vmm_t *m);
/* The VM as JSON (new reference); `detail` adds paths and runtime data. */
json_t *nb_vm_json(const nb_vm_t *vm, int detail);
/* The channel session when the agent is connected, else NULL. */
nb_muxsess_t *nb_vm_session(const nb_vm_t *vm);
/* Path of the serial console log. */
const char *nb_vm_console_path(const nb_vm_t *vm);
/* The file behind the VM's shared data area for folder mappings
 * (docs/internals/share.md, "Shared memory"): created 0600 in the VM's
 * runtime folder at each boot; may be missing (then shares fall back to
 * the channel). Loop thread. */
const char *nb_vm_share_shm_path(const nb_vm_t *vm);

/* Creates a VM: validates the spec, checks that the image is built, that
 * qemu-img exists and that there is disk space, creates the overlay and
 * the row. Result: the VM's JSON. */
void nb_vmm_create(nb_vmm_t *m, const nb_vm_spec_t *spec, nb_vmm_cb cb, void *ud);

/* Starts a stopped or crashed VM. With `wait` 0 the callback fires once
 * QEMU is running (state starting); with 1 once the agent is ready. */
void nb_vmm_start(nb_vmm_t *m, const char *name, int wait, nb_vmm_cb cb, void *ud);

/* Stops a VM: agent poweroff, then ACPI powerdown, then QMP quit, then
 * SIGKILL, each step after a timeout (`force`: straight to quit + kill).
 * The callback fires once QEMU is gone. */
void nb_vmm_stop(nb_vmm_t *m, const char *name, int force, nb_vmm_cb cb, void *ud);

/* Stop (if needed) then start; the callback fires like nb_vmm_start. */
void nb_vmm_restart(nb_vmm_t *m, const char *name, int wait, nb_vmm_cb cb, void *ud);

/* Removes a VM (row, folders). A running VM is refused unless `force`,
 * which stops it first (quit + kill). */
void nb_vmm_remove(nb_vmm_t *m, const char *name, int force, nb_vmm_cb cb, void *ud);

/* Grows the overlay of a stopped VM to `bytes`; smaller is refused. */
void nb_vmm_resize(nb_vmm_t *m, const char *name, uint64_t bytes, nb_vmm_cb cb, void *ud);

/* Changes settings (any state; accel applies from the next boot):
 * `restart` NULL or a policy, `accel` NULL or "auto"/"kvm"/"tcg". "kvm" on
 * a host without a usable KVM device is refused (NB_EUNSUPPORTED). */
void nb_vmm_set(nb_vmm_t *m, const char *name, const nb_vm_restart_t *restart, const char *accel,
                nb_vmm_cb cb, void *ud);

/* 1 when `user` is a guest account name as useradd takes it
 * ([a-z_][a-z0-9_-]{0,31}). */
int nb_vm_valid_user(const char *user);
/* Changes the VM's default guest user (any state; the next exec/shell). */
void nb_vmm_set_user(nb_vmm_t *m, const char *name, const char *user, nb_vmm_cb cb, void *ud);
/* The VM's default guest user ("" = the agent's own account, root). */
const char *nb_vm_user(const nb_vm_t *vm);

/* Path of QEMU's own stderr log (qemu.log). */
const char *nb_vm_qemu_log_path(const nb_vm_t *vm);

typedef enum {
    NB_VM_SNAP_LIST = 0,
    NB_VM_SNAP_SAVE,
    NB_VM_SNAP_RESTORE,
    NB_VM_SNAP_DELETE,
} nb_vm_snap_op_t;

/* Disk snapshots of the VM's overlay (internal qcow2 snapshots); see
 * docs/internals/vm.md for why they are disk-only. SAVE and DELETE work
 * stopped (qemu-img) or running (QMP, after a guest `sync`); RESTORE needs
 * a stopped VM; LIST answers {"snapshots": [...]}. */
void nb_vmm_snapshot(nb_vmm_t *m, const char *name, nb_vm_snap_op_t op, const char *snap,
                     nb_vmm_cb cb, void *ud);

/* Calls back once the VM's agent is connected (at once when it is), or
 * with an error when the VM stops, crashes or `timeout_ms` passes. A VM
 * that is stopped fails at once with NB_ESTATE. */
void nb_vmm_when_ready(nb_vmm_t *m, const char *name, uint64_t timeout_ms, nb_vmm_cb cb, void *ud);

#endif
