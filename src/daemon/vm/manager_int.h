/* Internals of the VM manager (manager.h), for vm/ only. Calls between its
 * files point down, never back:
 *   manager.c   the public nb_vmm_* API and the table (load, create, remove)
 *   lifecycle.c the start / stop / exit / restart / re-attach state machine
 *   snapshot.c  resize and snapshots          boot.c  a start's pool half
 *   vm.c        one VM: JSON, events, waiters, its row, pool jobs, helpers
 *   session.c   the guest channel (session.h)
 * manager -> lifecycle -> boot -> vm -> session; manager, snapshot -> vm. */
#ifndef NB_VM_MANAGER_INT_H
#define NB_VM_MANAGER_INT_H

#include <limits.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/base/events.h"
#include "lib/mux.h"
#include "daemon/vm/manager.h"
#include "daemon/vm/qemu.h"
#include "daemon/vm/qmp.h"
#include "daemon/vm/session.h"

#define VM_PATH 1024
#define VM_SOCK 108

/* Timeouts (ms). TCG boots take seconds on a loaded host; the boot
 * deadline covers the agent's handshake. */
#define VM_BOOT_TIMEOUT_MS 180000u
#define VM_QMP_CONNECT_MS 15000u
#define VM_STOP_AGENT_MS 10000u
#define VM_STOP_ACPI_MS 10000u
#define VM_STOP_QUIT_MS 5000u
#define VM_STOP_KILL_MS 5000u
#define VM_RESTART_BACKOFF_MS 1000u
#define VM_RESTART_BACKOFF_MAX_MS 30000u
#define VM_RESTART_MAX_TRIES 10
#define VM_HEALTHY_AFTER_MS 60000u
/* While a VM boots, QMP query-status this often: a guest that QEMU has
 * stopped (KVM internal error, panic) fails the boot within a second
 * instead of at the boot deadline. */
#define VM_STATUS_POLL_MS 1000u

typedef struct waiter waiter_t;
struct waiter {
    waiter_t *next;
    int kind;          /* W_READY, W_STOPPED, W_STARTED */
    uint64_t deadline; /* uv_now; 0: none */
    nb_vmm_cb cb;
    void *ud;
};
enum { W_READY = 1, W_STOPPED, W_STARTED };

enum { STOP_NONE = 0, STOP_AGENT, STOP_ACPI, STOP_QUIT, STOP_KILL, STOP_WAIT };

struct nb_vm {
    nb_vmm_t *m;
    nb_vm_t *next;
    nb_vm_spec_t spec;
    int64_t created_ms;
    int want_running;
    nb_vm_state_t state;
    const char *busy; /* an operation that owns the VM ("creating", "resize"...) or NULL */
    int removed;
    int jobs;   /* thread-pool jobs in flight */
    int orphan; /* the manager is being freed: destroy once `jobs` is 0 */

    char dir[VM_PATH], rdir[VM_PATH];
    char disk[VM_PATH], console[VM_PATH], qemu_log[VM_PATH], pidfile[VM_PATH];
    char keyfile[VM_PATH], fwcfg_key[VM_PATH];
    char shm[VM_PATH]; /* the folder mapping's shared data area (share.shm) */
    char qmp_sock[VM_SOCK], mux_sock[VM_SOCK];

    /* one boot */
    uint32_t gen; /* boot generation: callbacks of older boots are ignored */
    int pid;
    int is_child;
    uv_process_t proc;
    int proc_open;
    int pidfd;
    uv_poll_t pidpoll;
    int pidpoll_open;
    int exited; /* QEMU gone, cleanup pending */
    nb_qmp_t *qmp;
    uint64_t qmp_deadline;
    nb_vmchan_t *chan;
    int agent_up;
    char accel[8], machine[8], qemu_version[24];
    char accel_reason[320];  /* why this accelerator ("auto: KVM works here"...) */
    int64_t qemu_log_off;    /* size of qemu.log before this boot's QEMU wrote to it */
    char halted[200];        /* QEMU stopped the guest during the boot: why */
    int kvm_fallback;        /* the next boot: TCG because KVM just failed (auto) */
    char kvm_error[300];     /* that failure, recorded in the KVM cache by the next start */
    uv_timer_t status_timer; /* query-status while starting */
    uint64_t boot_t0;        /* uv_now at spawn */
    int64_t started_ms;      /* wall clock of the spawn, or of the re-attach */
    int64_t ready_ms;        /* wall clock the agent came up */
    double boot_secs;        /* spawn to agent ready */
    int reattached;
    char shutdown_reason[32]; /* from QMP SHUTDOWN */
    int stop_requested;
    int boot_failed;        /* our own stop after the boot deadline */
    int restart_after_stop; /* restart = stop + start */
    int stop_step;
    uv_timer_t timer;      /* QMP retries, stop steps, restart backoff */
    uv_timer_t boot_timer; /* boot deadline */
    int handles;           /* open handles of this struct, for the final free */

    /* last exit and the restart policy */
    int failures;
    int64_t restart_at_ms;
    char last_exit[768];

    waiter_t *waiters;
};

struct nb_vmm {
    uv_loop_t *loop;
    nb_store_t *store;
    nb_events_t *events;
    nb_vmm_guest_t guest;
    nb_vm_t *vms;
    char home[VM_PATH], runtime[VM_PATH];
    nb_qemu_accel_t accel_default; /* NILBOX_ACCEL */
    uint64_t min_free_bytes;
    uv_timer_t tick; /* waiter deadlines */
    int freeing;
    int pending_closes;
};

/* vm.c */
/* Allocates a VM (paths, timers) and links it into the table. NULL with *r
 * (and a sentence in msg) on failure. */
nb_vm_t *nb_vm_alloc(nb_vmm_t *m, const nb_vm_spec_t *spec, char *msg, size_t msgsz, int *r);
/* Unlinks the VM from the table, fails its waiters and frees it once its
 * timers closed. The lifecycle state must be torn down already. */
void nb_vm_destroy(nb_vm_t *vm);
/* One statement on the VM's row: ?1 name, with `full` also ?2..?8 (image,
 * cpus, memory, disk, restart, want_running, created). 0, NB_EEXIST or
 * NB_EINTERNAL. */
int nb_vm_db_exec(nb_vmm_t *m, const char *sql, nb_vm_t *vm, int full);
void nb_vm_emit(nb_vm_t *vm, const char *type, json_t *fields);
void nb_vm_progress(nb_vm_t *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nb_vm_set_state(nb_vm_t *vm, nb_vm_state_t s);
int nb_vm_db_set_want(nb_vm_t *vm, int want);
int nb_vm_db_update(nb_vm_t *vm);
void nb_vm_waiters_fire(nb_vm_t *vm, int kind, int r, const char *msg);
void nb_vm_waiter_add(nb_vm_t *vm, int kind, uint64_t timeout_ms, nb_vmm_cb cb, void *ud);
int nb_vm_check_space(nb_vmm_t *m, char *msg, size_t msgsz);
/* The VM's accelerator setting ("auto"/"kvm"/"tcg") and where it comes from
 * ("vm", "NILBOX_ACCEL" or "default"). */
const char *nb_vm_accel_setting(const nb_vm_t *vm, const char **source);
int nb_vm_find_binary(const char *env, const char *name, char *out, size_t outsz);
/* A QMP command on the VM's monitor; NB_ESTATE when it is not connected. */
int nb_vm_qmp(nb_vm_t *vm, const char *cmd, json_t *args, uint64_t timeout_ms, nb_qmp_reply_cb cb,
              void *data);
/* Runs `work` on the thread pool and `done` on the loop; `job` is the
 * first member of the caller's struct. */
typedef struct nb_vm_job nb_vm_job_t;
struct nb_vm_job {
    uv_work_t w;
    nb_vm_t *vm;
    nb_vmm_cb cb;
    void *ud;
    int r;
    char msg[512];
    void (*work)(nb_vm_job_t *j);
    void (*done)(nb_vm_job_t *j);    /* frees the job */
    void (*cleanup)(nb_vm_job_t *j); /* optional: run instead of done when the manager is gone */
};
/* Sets the job's work, done, cb and ud and queues it. `done` frees the
 * job. When the manager is freed meanwhile, `done` is skipped: `cb` gets
 * NB_ECLOSED, `cleanup` runs and the job is free()d. */
int nb_vm_queue(nb_vm_t *vm, nb_vm_job_t *j, void (*work)(nb_vm_job_t *),
                void (*done)(nb_vm_job_t *), nb_vmm_cb cb, void *ud);
/* nb_vm_queue with vm->busy set to `busy` (if not NULL) while it runs; when
 * it cannot be queued, busy is cleared, the job freed and `cb` (if any)
 * gets the error. */
void nb_vm_queue_busy(nb_vm_t *vm, nb_vm_job_t *j, const char *busy, void (*work)(nb_vm_job_t *),
                      void (*done)(nb_vm_job_t *), nb_vmm_cb cb, void *ud);
/* Runs argv (NULL-terminated) and waits; output (stdout+stderr, capped)
 * into `out`. Returns the exit status, or -errno. Pool threads only. */
int nb_vm_run_cmd(const char *const *argv, char *out, size_t outsz);

/* boot.c: a start job. `work` fills key, argv, reason and log_off from the
 * inputs (or j.r and j.msg); `cleanup` wipes the key and frees argv. */
typedef struct {
    nb_vm_job_t j; /* first */
    int wait;
    uint8_t key[NB_MUX_KEY_LEN];
    nb_qemu_argv_t argv;
    char qemu[VM_PATH];
    /* in: copied on the loop thread */
    char home[VM_PATH], setting[8], source[16];
    int fallback;        /* auto, and KVM just failed: TCG, and record it */
    char kvm_error[300]; /* that failure */
    /* out */
    char reason[320];
    int64_t log_off;
} nb_vm_boot_t;
void nb_vm_boot_work(nb_vm_job_t *jj);
void nb_vm_boot_cleanup(nb_vm_job_t *jj);

/* lifecycle.c */
void nb_vm_start(nb_vm_t *vm, int wait, nb_vmm_cb cb, void *ud);
void nb_vm_stop(nb_vm_t *vm, int force, nb_vmm_cb cb, void *ud);
void nb_vm_reattach(nb_vm_t *vm);
/* Exit check for a re-attached QEMU that has no pidfd (manager tick). */
void nb_vm_poll(nb_vm_t *vm);
/* Drops the runtime state without touching QEMU (daemon shutdown). */
void nb_vm_detach(nb_vm_t *vm);

/* snapshot.c */
void nb_vm_resize(nb_vm_t *vm, uint64_t bytes, nb_vmm_cb cb, void *ud);
void nb_vm_snapshot(nb_vm_t *vm, nb_vm_snap_op_t op, const char *snap, nb_vmm_cb cb, void *ud);

#endif
