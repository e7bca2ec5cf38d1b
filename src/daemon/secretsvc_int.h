/* Internal structures shared by the secret service's modules (not a
 * public interface; the API is daemon/secretsvc.h):
 *   secretsvc.c       the job chain (loop side), the API, lifecycle, status
 *   secretsvc_snap.c  value fingerprints (the leak guard), binding
 *                     snapshots and their watchers, JSON shapes
 *   secretsvc_work.c  the master key provider and the secret operations;
 *                     these run on the store's worker thread (one job at a
 *                     time) and report back through the job
 * Invariants, states and caps: docs/internals/secretsvc.md. */
#ifndef NB_SECRETSVC_INT_H
#define NB_SECRETSVC_INT_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/secretsvc.h"

#define SETTING_KEY_FILE "secrets.key_file"
#define FP_BYTES 16

/* Keyed fingerprint of one value: never the value, and useless without the
 * per-process key (which lives in locked memory). */
typedef struct {
    char name[NB_SECRETS_NAME_MAX + 1];
    size_t len;
    uint32_t tag; /* keyed short hash of the first 4 bytes (len >= 4): a cheap prefilter */
    uint8_t h[FP_BYTES];
} fp_t;

typedef struct watch {
    struct watch *next;
    uint64_t handle;
    nb_secretsvc_change_fn fn;
    void *ud;
} watch_t;

enum { J_OPEN, J_UNLOCK, J_LIST, J_SET, J_RM, J_BIND, J_UNBIND };

typedef struct job {
    struct job *next;
    nb_secretsvc_t *svc;
    int kind;
    nb_secretsvc_done_fn done;
    void *ud;
    int status;
    json_t *result;
    /* inputs */
    char name[NB_SECRETS_NAME_MAX + 1];
    uint8_t *value; /* sodium_malloc: value or passphrase */
    size_t vlen;
    nb_binding_t b;
    int64_t id;
    nb_mkey_t *mk; /* J_OPEN with a key file */
    /* outputs for the loop */
    nb_secrets_t *opened;
    nb_ca_t *ca;
    char provider[16];
    char message[512];
    char note[256];
    int new_state;
    nb_secretsvc_snap_t *snap;
    fp_t *fps; /* J_OPEN/J_UNLOCK: all; J_SET: one */
    size_t nfps;
    nb_binding_t old; /* J_UNBIND: what was removed (for the audit row) */
} job_t;

struct nb_secretsvc {
    uv_loop_t *loop;
    nb_store_t *st;
    nb_audit_t *audit;
    nb_events_t *ev;
    nb_home_t home;
    sqlite3 *db;
    nb_secrets_t *s;
    nb_ca_t *ca;
    int state;
    char provider[16];
    char message[512];
    char note[256]; /* e.g. why the keyring was not used */
    char key_file[PATH_MAX];
    int key_file_explicit;
    char passphrase_file[PATH_MAX];
    int keyring_timeout_ms, no_keyring;
    job_t *jobs, **tail;
    int busy, closed;
    nb_secretsvc_snap_t *snap;
    fp_t *fps;
    size_t nfps;
    uint8_t *fpkey; /* sodium_malloc: 32 bytes BLAKE2b key + 16 bytes SipHash key */
    watch_t *watches;
    uint64_t next_watch;
};

/* --- secretsvc_snap.c (loop thread unless said otherwise) */

/* Keyed fingerprint of value v of secret `name` (any thread: reads key only). */
void nb_secretsvc_fp_compute(const uint8_t *key, const char *name, const uint8_t *v, size_t len,
                             fp_t *fp);
/* Takes `all` (n fingerprints) as the service's whole set; the old set is
 * wiped and freed. */
void nb_secretsvc_fps_replace(nb_secretsvc_t *svc, fp_t *all, size_t n);
/* Drops the fingerprint of secret `name`. */
void nb_secretsvc_fps_remove(nb_secretsvc_t *svc, const char *name);
/* Adds or replaces the fingerprint of fp->name (logged and skipped when
 * out of memory). */
void nb_secretsvc_fps_put(nb_secretsvc_t *svc, const fp_t *fp);
/* Loads the bindings of s into a new snapshot (worker thread). */
int nb_secretsvc_snap_load(nb_secrets_t *s, nb_secretsvc_snap_t **out);
/* Makes sn (taken; NULL: no-op) the current snapshot, tells the watchers
 * and emits secrets.changed with reason and the secret's name (or NULL). */
void nb_secretsvc_snap_install(nb_secretsvc_t *svc, nb_secretsvc_snap_t *sn, const char *reason,
                               const char *name);

/* --- secretsvc_work.c (worker thread) */

/* Runs sql on db; on failure logs it and rolls back (unless it was BEGIN). */
int nb_secretsvc_tx(sqlite3 *db, const char *sql);
/* Explains a key file error r for path into out. */
void nb_secretsvc_say_key_file_error(int r, const char *path, char *out, size_t outsz);
void nb_secretsvc_work_open(job_t *j);
void nb_secretsvc_work_unlock(job_t *j);
void nb_secretsvc_work_list(job_t *j);
void nb_secretsvc_work_set(job_t *j);
void nb_secretsvc_work_rm(job_t *j);
void nb_secretsvc_work_bind(job_t *j);
void nb_secretsvc_work_unbind(job_t *j);

#endif
