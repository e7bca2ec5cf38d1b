/* The OAuth service: OAuth bindings (a name, a provider script, a VM
 * scope), their rows, the set the egress engine serves token exchanges
 * from, and the sealing of the tokens those exchanges produce
 * (docs/internals/oauth.md).
 *
 * Binding NAME owns three secrets, whose names are also the guest's
 * placeholders: NAME_CLIENT_SECRET (set by the user with `nilbox secret
 * set`), NAME_ACCESS_TOKEN and NAME_REFRESH_TOKEN (sealed here from token
 * responses; until the first exchange they hold a dummy). Adding a
 * binding binds NAME_ACCESS_TOKEN to the script's API hosts with its
 * header template, so the ordinary injector swaps the placeholder there.
 * Loop thread. */
#ifndef NB_OAUTHSVC_H
#define NB_OAUTHSVC_H

#include <jansson.h>
#include <uv.h>

#include "daemon/egress/oauth.h"

#define NB_OAUTH_MIGRATION_SQL                                                                     \
    "CREATE TABLE IF NOT EXISTS oauth_bindings (name TEXT PRIMARY KEY, script TEXT NOT NULL, "     \
    "source TEXT NOT NULL, vm TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL, "             \
    "refreshed_at INTEGER NOT NULL DEFAULT 0, expires_at INTEGER NOT NULL DEFAULT 0, "             \
    "exchanges INTEGER NOT NULL DEFAULT 0);"

/* The dummy value of a token secret before the first exchange. */
#define NB_OAUTH_NO_TOKEN "nilbox-oauth-no-token-yet"

typedef struct nb_oauthsvc nb_oauthsvc_t;
typedef struct nb_store nb_store_t;
typedef struct nb_secretsvc nb_secretsvc_t;

typedef struct {
    uv_loop_t *loop;
    nb_store_t *store;         /* borrowed */
    nb_secretsvc_t *secrets;   /* borrowed */
    const char *home;          /* $NILBOX_HOME: user scripts in home/oauth/NAME.lua */
    void (*changed)(void *ud); /* the binding set changed (nb_oauthsvc_set) */
    void *ud;
} nb_oauthsvc_cfg_t;

/* Creates the service and reads the stored bindings (blocking, at start).
 * A stored script that no longer declares cleanly is logged and skipped. */
int nb_oauthsvc_new(const nb_oauthsvc_cfg_t *cfg, nb_oauthsvc_t **out);
void nb_oauthsvc_free(nb_oauthsvc_t *s); /* NULL is a no-op */

/* The current binding set (new reference, for nb_proxy_set_oauth). */
nb_oauth_set_t *nb_oauthsvc_set(nb_oauthsvc_t *s);

/* nb_proxy_cfg_t.oauth_store: seals the tokens (svc = the service). */
int nb_oauthsvc_store(void *svc, const nb_oauth_provider_t *p, const nb_oauth_tokens_t *t,
                      void (*done)(void *op, int status), void *op);

/* {"bindings": [...]} (new reference). */
json_t *nb_oauthsvc_list_json(const nb_oauthsvc_t *s);

/* Finds a script by name: home/oauth/NAME.lua, then $NILBOX_OAUTH_DIR, the
 * installed data folder and the source tree's data/oauth. *src is malloc'd.
 * `source` gets "user" or "builtin". 0, NB_EINVAL (bad name), NB_ENOTFOUND,
 * NB_ETOOBIG. */
int nb_oauthsvc_script(const nb_oauthsvc_t *s, const char *script, char **src, size_t *len,
                       const char **source);

/* Adds (or replaces) binding `name` with `script`; `vm` "" for every VM.
 * `done` gets the binding's JSON, or an error and a sentence. */
typedef void (*nb_oauthsvc_done_fn)(void *ud, int status, json_t *result, const char *err);
int nb_oauthsvc_add(nb_oauthsvc_t *s, const char *name, const char *script, const char *vm,
                    nb_oauthsvc_done_fn done, void *ud, char *err, size_t errsz);

/* Runs a script (that of binding `name`, or script `script`) in its
 * sandbox: its declaration, and parse() on a sample token response
 * (`sample`: {"status", "content_type", "body"}; NULL: a made-up one).
 * Token values in the answer are replaced by their lengths. Always a
 * new object: {"ok": bool, "error", "declaration", "parsed", "ms"}. */
json_t *nb_oauthsvc_test(nb_oauthsvc_t *s, const char *name, const char *script,
                         const json_t *sample);

#endif
