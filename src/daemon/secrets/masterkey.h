/* Master key providers for the secret store (DESIGN.md section 7).
 *
 * The master key only wraps the store's data key; it never touches a
 * secret directly. Providers, in the order the daemon tries them:
 *   1. the OS keyring (libsecret / Secret Service),
 *   2. a passphrase stretched with Argon2id (salt and limits stored in the
 *      database, see nb_secrets_kdf_params()),
 *   3. an explicit 0600 key file, for headless machines (logged loudly).
 *
 * Every function here may block (D-Bus, Argon2id, disk): call them from
 * the libuv thread pool, never from the loop. The key bytes live in
 * sodium_malloc()ed memory (mlocked, guard pages) and are wiped on free. */
#ifndef NB_MASTERKEY_H
#define NB_MASTERKEY_H

#include <stddef.h>
#include <stdint.h>

#define NB_MKEY_BYTES 32
#define NB_MKEY_SALT_BYTES 16

typedef enum {
    NB_MKEY_KEYRING = 1,
    NB_MKEY_PASSPHRASE = 2,
    NB_MKEY_KEYFILE = 3,
    NB_MKEY_RAW = 4, /* handed in by the caller (tests) */
} nb_mkey_kind_t;

typedef struct nb_mkey nb_mkey_t;

/* Argon2id parameters; stored beside the wrapped data key. */
typedef struct {
    uint8_t salt[NB_MKEY_SALT_BYTES];
    uint64_t opslimit;
    uint64_t memlimit; /* bytes */
} nb_kdf_params_t;

/* "keyring", "passphrase", "keyfile", "raw" (static strings). */
const char *nb_mkey_kind_name(int kind);

/* The provider that produced `mk`, and its 32 key bytes (borrowed, valid
 * until nb_mkey_free). */
int nb_mkey_kind(const nb_mkey_t *mk);
const uint8_t *nb_mkey_bytes(const nb_mkey_t *mk);

/* Copies `key` into a fresh locked key object. 0 or -ENOMEM. */
int nb_mkey_from_bytes(int kind, const uint8_t key[NB_MKEY_BYTES], nb_mkey_t **out);

/* Wipes and frees; NULL is a no-op. */
void nb_mkey_free(nb_mkey_t *mk);

/* Fresh random salt with libsodium's MODERATE Argon2id limits. */
void nb_kdf_params_default(nb_kdf_params_t *kp);

/* Derives the master key from a passphrase with Argon2id. Refuses limits
 * below libsodium's minimums or above 4 GiB / 64 passes (NB_EINVAL: a
 * tampered database must not make us spin). -ENOMEM when Argon2 cannot get
 * its memory. Blocking (hundreds of ms with the default limits). */
int nb_mkey_from_passphrase(const char *pass, size_t len, const nb_kdf_params_t *kp,
                            nb_mkey_t **out);

/* Reads a passphrase from a private file (same ownership and mode rules as
 * the key file below; one trailing newline is dropped) and derives the key. */
int nb_mkey_from_passphrase_file(const char *path, const nb_kdf_params_t *kp, nb_mkey_t **out);

/* Creates a new key file at `path` (O_EXCL, mode 0600) holding 32 random
 * bytes as 64 hex digits, and returns the key. -EEXIST if present. */
int nb_mkey_keyfile_create(const char *path, nb_mkey_t **out);

/* Loads a key file: 64 hex digits (optionally newline-terminated). The file
 * must be a regular file owned by the current user with no group or other
 * permission bits (0600 or 0400), else -EPERM and nothing is read. Logs a
 * warning each time: a key on disk next to the database protects only
 * against someone who copies the database alone. */
int nb_mkey_keyfile_load(const char *path, nb_mkey_t **out);

/* Looks the master key up in the OS keyring under `store_id` (e.g. the
 * absolute NILBOX_HOME), creating and storing a random one when `create`
 * is set and none exists. Runs the libsecret call on its own thread and
 * gives up after `timeout_ms` (NB_ETIMEOUT; the call is cancelled).
 * NB_EUNSUPPORTED when there is no keyring: built without libsecret, no
 * D-Bus session bus (headless), or no Secret Service on the bus.
 * NB_ENOTFOUND when no key is stored and `create` is 0. NB_EAUTH when the
 * keyring refused (locked, dismissed prompt). */
int nb_mkey_from_keyring(const char *store_id, int create, int timeout_ms, nb_mkey_t **out);

/* Removes the keyring entry for `store_id` (tests, `nilbox secret reset`).
 * 0 also when there was none; NB_EUNSUPPORTED / NB_ETIMEOUT as above. */
int nb_mkey_keyring_clear(const char *store_id, int timeout_ms);

#endif
