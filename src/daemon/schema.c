/* The daemon's database schema: every module's migrations, in order
 * (store.h: nb_store_open). Kept apart from store.c so that the store
 * itself depends on no module above it. */
#include <stddef.h>

#include "daemon/appstore.h"
#include "daemon/audit.h"
#include "daemon/oauthsvc.h"
#include "daemon/egress/rules.h"
#include "daemon/egress/usage.h"
#include "daemon/base/store.h"
#include "daemon/portsvc.h"
#include "daemon/mcp.h"
#include "daemon/sharesvc.h"
#include "daemon/vm/manager.h"

/* ------------------------------------------------------------------------
 * Schema migrations, oldest first.
 *
 * TO ADD ONE: append a line {N, "<module>: <what>", "<SQL>"} with N = last
 * version + 1 (long SQL may live in a macro in your module's header).
 * NEVER edit, reorder or delete a line once it has shipped: databases in
 * the field have already run it. No BEGIN/COMMIT inside the SQL: the
 * runner wraps each step in a savepoint of one outer transaction.
 * ---------------------------------------------------------------------- */
static const nb_store_migration_t builtin_migrations[] = {
    {1, "core: meta, settings, events",
     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;"
     "INSERT INTO meta (key, value) VALUES ('install_id', lower(hex(randomblob(16)))),"
     "  ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));"
     "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
     "  updated_at INTEGER NOT NULL) STRICT;"
     "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,"
     "  type TEXT NOT NULL, vm TEXT, data TEXT NOT NULL CHECK (json_valid(data))) STRICT;"
     "CREATE INDEX events_type_time ON events (type, time_ms);"},
    {2, "audit: hash-chained append-only log", NB_AUDIT_MIGRATION_SQL},
    {3, "vm: the VM table", NB_VM_MIGRATION_SQL},
    {4, "vm: per-VM accelerator setting", NB_VM_ACCEL_MIGRATION_SQL},
    {5, "egress: rule ids are never reused", NB_RULES_AUTOINC_MIGRATION_SQL},
    {6, "vm: per-VM default guest user", NB_VM_USER_MIGRATION_SQL},
    {7, "store: apps installed in VMs", NB_APPSTORE_MIGRATION_SQL},
    {8, "oauth: OAuth bindings and their scripts", NB_OAUTH_MIGRATION_SQL},
    {9, "ports: port mappings", NB_PORTS_MIGRATION_SQL},
    {10, "mcp: bridged MCP servers and tool policies", NB_MCP_MIGRATION_SQL},
    {11, "usage: LLM token records and limits", NB_USAGE_MIGRATION_SQL},
    {12, "share: folder mappings", NB_SHARE_MIGRATION_SQL},
    /* append new migrations above this line */
};

int nb_store_latest_version(void)
{
    size_t n = sizeof builtin_migrations / sizeof builtin_migrations[0];
    return n ? builtin_migrations[n - 1].version : 0;
}

int nb_store_open(const char *path, nb_store_t **out, char *err, size_t errsz)
{
    return nb_store_open_with(path, builtin_migrations,
                              sizeof builtin_migrations / sizeof builtin_migrations[0], out, err,
                              errsz);
}
