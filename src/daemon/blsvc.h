/* The daemon's DNS blocklist service: loads $NILBOX_HOME/blocklist/active.nbbl
 * at start, reloads on request, and is the gate's blocklist hook
 * (egress/gate.h). See docs/internals/blocklist.md.
 *
 * A file is only ever swapped in after its signature verified against a
 * trusted key (egress/blocklist.h); a refused file leaves the loaded one
 * in place, in memory and on disk, and is logged, audited and announced.
 * Loads run on the thread pool (file read + signature check); the swap is
 * on the loop. Loop thread. */
#ifndef NB_BLSVC_H
#define NB_BLSVC_H

#include <jansson.h>
#include <stddef.h>
#include <uv.h>

#include "daemon/audit.h"
#include "daemon/egress/gate.h"
#include "daemon/base/events.h"

typedef struct nb_blsvc nb_blsvc_t;

typedef struct {
    uv_loop_t *loop;
    const char *home;    /* NILBOX_HOME (copied) */
    nb_gate_t *gate;     /* borrowed: gets the hook; must outlive the service */
    nb_audit_t *audit;   /* borrowed, may be NULL */
    nb_events_t *events; /* borrowed, may be NULL */
} nb_blsvc_cfg_t;

/* Creates the service and loads the installed file, if any (a refused file
 * is logged and reported, never fatal). 0 or -ENOMEM. */
int nb_blsvc_new(const nb_blsvc_cfg_t *cfg, nb_blsvc_t **out);

/* Frees the service (a load still on the pool finishes on its own and
 * reports nothing). NULL is a no-op. */
void nb_blsvc_free(nb_blsvc_t *s);

/* {"loaded", "path", "source", "filter", ..., "lookups", "blocked",
 * "last_error", "trusted_keys"} (new reference). */
json_t *nb_blsvc_status_json(const nb_blsvc_t *s);

/* 1 when a list is loaded. */
int nb_blsvc_loaded(const nb_blsvc_t *s);

/* Looks normalised `name` up: 1 when listed (*matched: offset of the
 * listed suffix), 0 otherwise (also when no list is loaded). */
int nb_blsvc_lookup(const nb_blsvc_t *s, const char *name, size_t *matched);

/* Called on the loop when a load ends: 0, or a negative code with the
 * reason in `err`. */
typedef void (*nb_blsvc_done_fn)(void *ud, int r, const char *err);

/* Loads, verifies and installs `path` (NULL: the active file; another file
 * is copied into place once verified). NB_ESTATE while a load runs. */
int nb_blsvc_load(nb_blsvc_t *s, const char *path, nb_blsvc_done_fn done, void *ud);

#endif
