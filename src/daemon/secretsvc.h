/* The daemon's secret service: opens the sealed secret store (secrets/)
 * with the master key provider DESIGN.md section 7 prescribes, loads the
 * interception CA from it, and serialises every store operation on the
 * thread pool. See docs/internals/secretsvc.md.
 *
 * Provider choice at start:
 *   1. an explicit key file (`nilboxd --key-file F`, NILBOX_KEY_FILE, or
 *      the setting `secrets.key_file` recorded when a store was first
 *      sealed by one) - loud warning in the log and in `nilbox doctor`;
 *   2. otherwise the OS keyring (libsecret, on the pool, with a timeout),
 *      when the store is new or was sealed by the keyring;
 *   3. otherwise a passphrase (Argon2id): NILBOX_PASSPHRASE_FILE, or an
 *      unlock call (`nilbox secret unlock`, POST /v1/keystore/unlock).
 * A store sealed by one provider only opens with that provider; a wrong
 * key leaves the service in the "error" state and nothing is readable
 * (A24).
 *
 * The service also installs the audit guard: it keeps keyed BLAKE2b
 * fingerprints of every value (computed at unlock and on set, never the
 * values themselves) and flags any audit string that contains one (A23).
 *
 * Threading: the object belongs to the loop thread. Store work runs on the
 * libuv pool, one job at a time, on the service's own sqlite connection
 * (so its transactions never interleave with other modules' statements). */
#ifndef NB_SECRETSVC_H
#define NB_SECRETSVC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/audit.h"
#include "daemon/egress/ca.h"
#include "host/home.h"
#include "daemon/secrets/secrets.h"
#include "daemon/base/store.h"

typedef struct nb_secretsvc nb_secretsvc_t;

typedef enum {
    NB_SECRETSVC_STARTING = 0, /* the provider is being asked (keyring, Argon2id) */
    NB_SECRETSVC_LOCKED = 1,   /* waiting for a passphrase (unlock call) */
    NB_SECRETSVC_OPEN = 2,     /* usable */
    NB_SECRETSVC_ERROR = 3,    /* the key does not open the store, or the provider failed */
} nb_secretsvc_state_t;

#define NB_SECRETSVC_KEYRING_TIMEOUT_MS 5000
#define NB_SECRETSVC_PASSPHRASE_MIN 8

typedef struct {
    const char *key_file;        /* explicit key file (flag or NILBOX_KEY_FILE), or NULL */
    const char *passphrase_file; /* NILBOX_PASSPHRASE_FILE, or NULL */
    int keyring_timeout_ms;      /* 0: NB_SECRETSVC_KEYRING_TIMEOUT_MS */
    int no_keyring;              /* 1: never ask the keyring */
} nb_secretsvc_cfg_t;

/* Creates the service: opens its own connection to the store's database,
 * makes sure the secret and rule tables exist, and starts opening the
 * store. An explicit key file that is unusable (missing after a store was
 * sealed, group/other permissions, not ours, malformed) is an error
 * returned here with a sentence in `err`: the daemon refuses to start.
 * `audit` and `ev` may be NULL; both are borrowed. Loop thread. */
int nb_secretsvc_new(uv_loop_t *loop, nb_store_t *st, nb_audit_t *audit, nb_events_t *ev,
                     const nb_home_t *home, const nb_secretsvc_cfg_t *cfg, nb_secretsvc_t **out,
                     char *err, size_t errsz);

/* Frees everything (store handle, CA, fingerprints, keys wiped). Call when
 * no store job is in flight (nb_store_pending() == 0); queued operations
 * get UV_ECANCELED. NULL is a no-op. */
void nb_secretsvc_close(nb_secretsvc_t *svc);

int nb_secretsvc_state(const nb_secretsvc_t *svc);
const char *nb_secretsvc_state_name(int state); /* "starting", "locked", "open", "error" */
/* The provider in use ("keyring", "passphrase", "keyfile") or "" before one. */
const char *nb_secretsvc_provider(const nb_secretsvc_t *svc);
/* Why the service is locked or failed, or notes (fallback reasons); "" when none. */
const char *nb_secretsvc_message(const nb_secretsvc_t *svc);

/* {"state", "provider", "message", "key_file", "keyring", "secrets", "bindings"}. */
json_t *nb_secretsvc_status_json(const nb_secretsvc_t *svc);

/* Appends the "secrets" check (which provider, fallback reasons, warnings)
 * to a doctor report. */
void nb_secretsvc_doctor(const nb_secretsvc_t *svc, json_t *report);

/* The interception CA (borrowed, loop thread), or NULL until the store is
 * open. */
nb_ca_t *nb_secretsvc_ca(nb_secretsvc_t *svc);

/* --- snapshot for the proxy: sealed values and bindings, loop thread --- */

typedef struct {
    unsigned refs;
    nb_sealed_t *sealed; /* sorted by name */
    size_t nsealed;
    nb_binding_t *bindings;
    size_t nbindings;
    const char **names; /* nsealed names (point into sealed[]) */
} nb_secretsvc_snap_t;

/* The current snapshot (borrowed; valid until the next change, i.e. for
 * the current loop callback), or NULL while the store is not open. Take a
 * reference to keep it longer. */
const nb_secretsvc_snap_t *nb_secretsvc_snapshot(const nb_secretsvc_t *svc);
nb_secretsvc_snap_t *nb_secretsvc_snap_ref(const nb_secretsvc_snap_t *snap);
void nb_secretsvc_snap_unref(nb_secretsvc_snap_t *snap);

/* Unseals snapshot record `e` into locked `buf` (see nb_secrets_unseal_to);
 * `svc` is the nb_secretsvc_t, untyped so that this is a credentials
 * provider for the proxy (nb_pxcreds_unseal_fn). */
int nb_secretsvc_unseal_to(void *svc, const nb_sealed_t *e, uint8_t *buf, size_t cap, size_t *len);

/* Called on the loop after every change of the snapshot (unlock, set, rm,
 * bind, unbind). Returns a handle for nb_secretsvc_unwatch. */
typedef void (*nb_secretsvc_change_fn)(void *ud, const nb_secretsvc_snap_t *snap);
uint64_t nb_secretsvc_watch(nb_secretsvc_t *svc, nb_secretsvc_change_fn fn, void *ud);
void nb_secretsvc_unwatch(nb_secretsvc_t *svc, uint64_t handle);

/* --- operations: each runs on the pool, one at a time; `done` runs on the
 * loop with 0 or a negative code (NB_ESTATE while not open). --- */

typedef void (*nb_secretsvc_done_fn)(void *ud, int status, json_t *result);

/* Unlocks (or, for a new store, initialises) with a passphrase. `pass` is
 * copied into locked memory; the caller wipes its own copy. NB_ESTATE when
 * not waiting for a passphrase, NB_EAUTH for a wrong one, NB_EINVAL for a
 * new passphrase shorter than NB_SECRETSVC_PASSPHRASE_MIN. */
int nb_secretsvc_unlock(nb_secretsvc_t *svc, const char *pass, size_t len,
                        nb_secretsvc_done_fn done, void *ud);

/* Result: {"secrets": [{"name", "version", "created_at", "updated_at", "bindings": [...]}]}. */
int nb_secretsvc_list(nb_secretsvc_t *svc, nb_secretsvc_done_fn done, void *ud);

/* Creates or replaces a value (copied into locked memory at once; the
 * caller wipes its copy). Result {"name", "version", "created"}. Audited
 * (secret.set, name only). */
int nb_secretsvc_set(nb_secretsvc_t *svc, const char *name, const void *value, size_t len,
                     nb_secretsvc_done_fn done, void *ud);

/* Removes a secret and its bindings. Result {"name", "removed": true}. */
int nb_secretsvc_rm(nb_secretsvc_t *svc, const char *name, nb_secretsvc_done_fn done, void *ud);

/* Stores a binding (validated by the store). Result: the binding. */
int nb_secretsvc_bind(nb_secretsvc_t *svc, const nb_binding_t *b, nb_secretsvc_done_fn done,
                      void *ud);

/* Removes binding `id`. Result {"id", "removed": true}. */
int nb_secretsvc_unbind(nb_secretsvc_t *svc, int64_t id, nb_secretsvc_done_fn done, void *ud);

/* The API shape of a binding. */
json_t *nb_secretsvc_binding_json(const nb_binding_t *b);

/* The audit guard (exposed for tests): 1 when `s` contains a known value. */
int nb_secretsvc_guard(void *svc, const char *s, size_t len);

#endif
