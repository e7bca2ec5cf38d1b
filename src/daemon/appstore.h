/* The app store service: installs and removes catalogue apps (appcat.h)
 * in a VM by running their recipe through the agent (vmexec.h), with a
 * disk snapshot before and a rollback on failure. See
 * docs/internals/appstore.md.
 *
 * It never adds a rule or a secret binding by itself (THREATS.md A22): an
 * install only starts once every rule the entry proposes exists (the
 * user accepted them: `nilbox store install` shows them and adds them with
 * the rules API, so each one is audited like any other rule), and the
 * secrets an entry names are shown, never bound. Progress goes out as
 * events ("progress" with vm and app, then "store.installed" or
 * "store.install_failed"); outcomes are audit rows. One job per VM at a
 * time. Loop thread.
 *
 * The MCP servers an entry declares (appcat.h: nb_appcat_mcp) are
 * registered with the MCP bridge (mcp.h) as the install's last step, each
 * with the tool policy "*": "ask" (no tool runs before the user allowed it
 * once), and unregistered first thing by a removal. */
#ifndef NB_APPSTORE_H
#define NB_APPSTORE_H

#include <jansson.h>

#include "daemon/appcat.h"
#include "daemon/services.h"

#define NB_APPSTORE_MIGRATION_SQL                                                                  \
    "CREATE TABLE IF NOT EXISTS store_apps (vm TEXT NOT NULL, app TEXT NOT NULL,"                  \
    "  version TEXT NOT NULL, installed_at INTEGER NOT NULL, PRIMARY KEY (vm, app)) STRICT;"

/* The policy of every tool ("*") of an MCP server the store registers. */
#define NB_APPSTORE_MCP_POLICY "ask"

#define NB_APPSTORE_STEP_TIMEOUT_MS (20u * 60 * 1000) /* one recipe step */

typedef struct nb_appstore nb_appstore_t;

int nb_appstore_new(nb_daemon_t *d, nb_appstore_t **out);
/* Cancels running commands; jobs waiting on the VM manager end when it
 * answers. NULL is a no-op. */
void nb_appstore_free(nb_appstore_t *s);

/* The catalogue in effect (appcat.h: nb_appcat_load_home). */
int nb_appstore_catalogue(nb_appstore_t *s, nb_appcat_t *cat, char *err, size_t errsz);

/* The entry's proposed rules that do not exist yet as allow rules for
 * `vm` (or every VM): a new array of "host:port" strings. */
json_t *nb_appstore_missing_rules(nb_appstore_t *s, const json_t *entry, const char *vm);

/* Starts installing `entry` (borrowed; copied) of catalogue `version` in
 * running VM `vm`.
 * 0; NB_ESTATE (another job runs for this VM: msg says which), NB_EINVAL
 * (the VM's image is not the entry's, or its name is not one the MCP
 * bridge takes), NB_EDENIED (rules missing), NB_EEXIST (an MCP server of
 * the entry's name with another command is registered in `vm`). */
int nb_appstore_install(nb_appstore_t *s, const char *vm, const json_t *entry, const char *version,
                        char *msg, size_t msgsz);

/* Removes `entry` from `vm` (its MCP servers, its npm packages, its remove
 * script, the record); `done` gets 0 or a negative code with a sentence,
 * and {"mcp_removed": [names]} (borrowed for the call). */
typedef void (*nb_appstore_done_fn)(void *ud, int r, const char *msg, const json_t *result);
int nb_appstore_remove(nb_appstore_t *s, const char *vm, const json_t *entry,
                       nb_appstore_done_fn done, void *ud, char *msg, size_t msgsz);

/* {"apps": [{"app", "version", "installed_at"}], "job": {...} or null}
 * for `vm` (new reference). */
json_t *nb_appstore_installed(nb_appstore_t *s, const char *vm);

#endif
