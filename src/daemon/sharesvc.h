/* Folder mapping: `nilbox share` (docs/internals/share.md; THREATS.md
 * A19). Persists the shares (table `shares`), mounts each one in its VM
 * when the agent comes up (an `fs` stream the daemon opens; the agent
 * mounts FUSE at the guest path) and serves the guest's file requests
 * with fshare.h under the host folder, on the service's own worker
 * threads: file work never blocks the loop, nor the libuv pool that the
 * store and the API use.
 *
 * Loop thread only (the workers touch nothing but their job). */
#ifndef NB_SHARESVC_H
#define NB_SHARESVC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/services.h"

typedef struct nb_sharesvc nb_sharesvc_t;

/* Migration: the share table (re-runnable). */
#define NB_SHARE_MIGRATION_SQL                                                                     \
    "CREATE TABLE IF NOT EXISTS shares (id INTEGER PRIMARY KEY AUTOINCREMENT,"                     \
    "  vm TEXT NOT NULL, host TEXT NOT NULL, guest TEXT NOT NULL,"                                 \
    "  ro INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL) STRICT;"                        \
    "CREATE UNIQUE INDEX IF NOT EXISTS shares_vm_guest ON shares (vm, guest);"

#define NB_SHARE_WORKERS 2 /* file-server threads per daemon */

/* Creates the service (needs d->store, d->events, d->vmm), loads the
 * shares and subscribes to the VM events. */
int nb_sharesvc_new(nb_daemon_t *d, nb_sharesvc_t **out, char *err, size_t errsz);

/* Unmounts (resets the streams), stops the workers and frees. NULL ok. */
void nb_sharesvc_free(nb_sharesvc_t *s);

/* {"shares": [...]} of one VM (vm NULL: all), new reference. */
json_t *nb_sharesvc_list(nb_sharesvc_t *s, const char *vm);

/* Completion of an add: r 0 (share is the new share's JSON, borrowed) or a
 * negative code with a sentence in msg. */
typedef void (*nb_sharesvc_cb)(void *ud, int r, const char *msg, json_t *share);

/* Adds a share of host folder `host` (absolute, an existing directory)
 * at `guest` (absolute, normalised) in VM `vm`; read-only when `ro`. When
 * the VM's agent is up the folder is mounted first and cb reports the
 * outcome (a failed mount is reported in the share's "state"/"error", the
 * share stays); otherwise cb runs at once with state "waiting". Returns
 * 0 (cb will run, maybe before the return) or a negative code with a
 * sentence in err (cb will not run): NB_EINVAL, NB_ENOTFOUND (no VM),
 * NB_EEXIST (that guest path is taken). */
int nb_sharesvc_add(nb_sharesvc_t *s, const char *vm, const char *host, const char *guest, int ro,
                    nb_sharesvc_cb cb, void *ud, char *err, size_t errsz);

/* Removes share `id` (unmounted in the guest if mounted). 0 or
 * NB_ENOTFOUND. */
int nb_sharesvc_rm(nb_sharesvc_t *s, int64_t id);

/* 1 when `p` is a guest path a share may use (absolute, normalised, no
 * control characters or commas, not / nor under /proc, /sys, /dev). */
int nb_sharesvc_guest_path_ok(const char *p);

#endif
