/* The sealed secret store (DESIGN.md section 7, THREATS.md A23, A24).
 *
 * Layout: every value is sealed with XChaCha20-Poly1305 under a random
 * 256-bit data key; the associated data binds the ciphertext to its record
 * (kind, row id, version, name), so a ciphertext moved to another record,
 * or an edited one, fails to open. The data key is itself sealed by the
 * master key (masterkey.h) and stored in `secret_meta`. Plaintext values
 * only ever exist in sodium_malloc()ed (mlocked, guard-paged) memory and
 * are wiped when freed. Values are never logged.
 *
 * Names of user secrets are placeholder names: [A-Za-z_][A-Za-z0-9_]*, at
 * most 128 bytes (they become environment variable names in the guest).
 * Internal records (the CA key) live in their own namespace ("nilbox.*",
 * kind 'internal') that no user-facing call and no injector lookup reaches.
 *
 * Threading: the store uses the caller's sqlite handle synchronously, so
 * call it from the libuv thread pool (or the thread that owns the handle),
 * one call at a time per store. */
#ifndef NB_SECRETS_H
#define NB_SECRETS_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "daemon/secrets/binding.h"
#include "daemon/secrets/masterkey.h"

#define NB_SECRETS_VALUE_MAX 65536
#define NB_SECRETS_KEY_BYTES 32

/* The schema, idempotent (CREATE ... IF NOT EXISTS). The daemon's store
 * module runs it as one migration step; tests run it directly. */
extern const char nb_secrets_migration_sql[];

typedef struct nb_secrets nb_secrets_t;

/* A plaintext value in locked memory. `p` is NUL-terminated for
 * convenience (not counted in len). Free with nb_secret_value_free. */
typedef struct {
    uint8_t *p;
    size_t len;
} nb_secret_value_t;

void nb_secret_value_free(nb_secret_value_t *v);

/* Metadata of one user secret; never its value. */
typedef struct {
    char name[NB_SECRETS_NAME_MAX + 1];
    int64_t version;
    int64_t created_at; /* unix seconds */
    int64_t updated_at;
    int nbindings;
} nb_secret_info_t;

/* Reads the Argon2id parameters stored in `db` for the passphrase provider,
 * creating and storing fresh ones (nb_kdf_params_default) when absent. */
int nb_secrets_kdf_params(sqlite3 *db, nb_kdf_params_t *out);

/* Which master key provider initialised the store ("keyring", ...), or ""
 * when the store is new. Writes a NUL-terminated name to `out`. */
int nb_secrets_provider(sqlite3 *db, char *out, size_t outsz);

/* Opens the store on `db` (borrowed: must outlive the store). On first use
 * creates a random data key and seals it with `mk`; afterwards unseals it.
 * NB_EAUTH when `mk` is the wrong key or the wrapped key was tampered
 * with: without the master key the store yields nothing (A24). The
 * master key is not kept. Caller frees with nb_secrets_close. */
int nb_secrets_open(sqlite3 *db, const nb_mkey_t *mk, nb_secrets_t **out);
void nb_secrets_close(nb_secrets_t *s);

/* Re-seals the data key under a new master key (provider change,
 * passphrase change). Secrets themselves are untouched. */
int nb_secrets_rekey(nb_secrets_t *s, const nb_mkey_t *new_mk);

/* Creates or replaces a user secret; the version goes up on each set.
 * `value` is 1..NB_SECRETS_VALUE_MAX bytes; it is copied and not kept. */
int nb_secrets_set(nb_secrets_t *s, const char *name, const void *value, size_t len);

/* Unseals a user secret into locked memory. Only the injector (through
 * bindings it matched itself) and the CA loader call this. NB_ENOTFOUND,
 * NB_ECRYPTO when the record fails authentication (tampered or swapped). */
int nb_secrets_get(nb_secrets_t *s, const char *name, nb_secret_value_t *out);

/* A user secret as stored: ciphertext only, safe to keep in ordinary
 * memory. The proxy loads these on the thread pool (whenever secrets
 * change) and unseals one on the loop at the moment of injection, without
 * touching sqlite. */
typedef struct {
    char name[NB_SECRETS_NAME_MAX + 1];
    int64_t id, version;
    uint8_t nonce[24];
    uint8_t *ct; /* malloc'd */
    size_t ctlen;
} nb_sealed_t;

/* All user secrets, sealed, sorted by name. Free with nb_sealed_free. */
int nb_secrets_load_sealed(nb_secrets_t *s, nb_sealed_t **out, size_t *n);
void nb_sealed_free(nb_sealed_t *v, size_t n);

/* Unseals one loaded record into locked memory (same checks as
 * nb_secrets_get: NB_ECRYPTO when it does not authenticate). Does not use
 * the database and only reads the store's key: callable from any thread
 * while the store is open. */
int nb_secrets_unseal(const nb_secrets_t *s, const nb_sealed_t *e, nb_secret_value_t *out);

/* Same, into caller-provided memory (which must be locked, e.g. the
 * injector's work area: this allocates nothing, so it is cheap enough for
 * every request). NB_ETOOBIG when `cap` is smaller than the value; on
 * failure nothing of the value is left in `buf`. */
int nb_secrets_unseal_to(const nb_secrets_t *s, const nb_sealed_t *e, uint8_t *buf, size_t cap,
                         size_t *len);

/* The audit log's MAC key (audit.h, nb_audit_set_key): `len` bytes
 * (16..64) derived from the data key, so forging audit rows needs the
 * master key. Write it into locked memory. Any thread while open. */
int nb_secrets_audit_key(const nb_secrets_t *s, uint8_t *out, size_t len);

/* Removes a user secret and its bindings. NB_ENOTFOUND if absent. */
int nb_secrets_rm(nb_secrets_t *s, const char *name);

/* Lists user secrets, sorted by name. Caller frees *out with free(). */
int nb_secrets_ls(nb_secrets_t *s, nb_secret_info_t **out, size_t *n);

/* Internal records (`name` must start with "nilbox."): same sealing, own
 * namespace. */
int nb_secrets_put_internal(nb_secrets_t *s, const char *name, const void *value, size_t len);
int nb_secrets_get_internal(nb_secrets_t *s, const char *name, nb_secret_value_t *out);

/* ---- bindings (types and validation in binding.h) ---------------------------- */

/* Stores a binding for an existing user secret (NB_ENOTFOUND otherwise);
 * normalises a copy first. The new row id goes to *id when id != NULL. */
int nb_secrets_bind(nb_secrets_t *s, const nb_binding_t *b, int64_t *id);

/* Removes binding `id`. NB_ENOTFOUND if absent. */
int nb_secrets_unbind(nb_secrets_t *s, int64_t id);

/* All bindings, ordered by id. Caller frees *out with free(). */
int nb_secrets_bindings(nb_secrets_t *s, nb_binding_t **out, size_t *n);

#endif
