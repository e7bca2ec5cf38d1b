/* The daemon's sqlite state ($NILBOX_HOME/state.db) and its schema
 * migrations. See docs/internals/store.md.
 *
 * One connection per daemon, opened in serialized mode (SQLITE_OPEN_FULLMUTEX)
 * so the loop thread may run quick statements directly while heavier work
 * goes to the libuv thread pool through nb_store_queue(). Pragmas: WAL,
 * foreign_keys=ON, synchronous=NORMAL, busy_timeout 5 s.
 *
 * Migrations: the ordered array in schema.c (one line per migration). On
 * open, every pending migration runs inside ONE transaction (each in its
 * own savepoint): if any step fails the whole upgrade rolls back and the
 * database is exactly as it was before the open. */
#ifndef NB_STORE_H
#define NB_STORE_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct nb_store nb_store_t;

typedef struct {
    int version;      /* 1, 2, 3, ... without gaps, in array order */
    const char *name; /* "<module>: what it does", shown in errors and logs */
    const char *sql;  /* one or more statements; no BEGIN/COMMIT inside */
} nb_store_migration_t;

/* Opens (creating if needed, mode 0600) the database at `path` and applies
 * the built-in migrations. On failure *out is NULL, a negative code is
 * returned (NB_EINTERNAL for SQL errors, NB_ESTATE when the file's schema
 * is newer than this build) and `err` gets a sentence. Blocking; call at
 * startup or from a pool thread. */
int nb_store_open(const char *path, nb_store_t **out, char *err, size_t errsz); /* schema.c */

/* Same with an explicit migration list (tests inject broken ones). The
 * array is borrowed for the store's lifetime. */
int nb_store_open_with(const char *path, const nb_store_migration_t *migs, size_t n,
                       nb_store_t **out, char *err, size_t errsz);

/* Closes the connection (checkpointing the WAL). NULL is a no-op. Must not
 * race queued jobs: the daemon closes it after the loop has drained. */
void nb_store_close(nb_store_t *st);

/* The raw connection, for modules that prepare their own statements. */
sqlite3 *nb_store_db(nb_store_t *st);

/* Highest applied migration version (0 for an empty database). */
int nb_store_schema_version(nb_store_t *st);

/* Highest version this build knows (length of the built-in list). */
int nb_store_latest_version(void); /* schema.c */

/* Write batches (events, usage records): one transaction for many rows.
 * begin: BEGIN IMMEDIATE unless a transaction is already open on `db` (a
 * caller's, which the rows then join); 1 when it began one. end: commits
 * what begin began (began != 0); on failure rolls back and logs
 * "WHAT: error" at `level`. */
int nb_store_batch_begin(sqlite3 *db);
void nb_store_batch_end(sqlite3 *db, int began, int level, const char *what);

/* Runs `sql` (no results). Returns 0 or NB_EINTERNAL, logging the error. */
int nb_store_exec(nb_store_t *st, const char *sql);

/* Settings (key/value strings). get: *out is a heap copy (caller frees) or
 * NULL with NB_ENOTFOUND. set: insert or replace. */
int nb_store_setting_get(nb_store_t *st, const char *key, char **out);
int nb_store_setting_set(nb_store_t *st, const char *key, const char *value);

/* Appends an event row (type, optional vm name, JSON data) and keeps only
 * the newest `keep` rows. Quick enough for the loop thread. Borrows all
 * arguments. Returns the new row id (> 0) or a negative code. */
int64_t nb_store_event_append(nb_store_t *st, int64_t time_ms, const char *type, const char *vm,
                              const json_t *data, int64_t keep);

/* The same with `data` already serialized (`len` bytes of a JSON object,
 * not NUL-terminated). The INSERT is prepared once per store; the caller
 * batches rows inside one transaction (the event bus, events.c). */
int64_t nb_store_event_append_text(nb_store_t *st, int64_t time_ms, const char *type,
                                   const char *vm, const char *data, size_t len, int64_t keep);

/* Number of rows in `table` (a fixed identifier from our own code, never
 * user input), or a negative code. */
int64_t nb_store_count(nb_store_t *st, const char *table);

/* --- thread pool ---
 * `work` runs on a libuv pool thread with the store; `done` runs on the
 * loop thread afterwards with `status` 0, or UV_ECANCELED when the loop is
 * shutting down. Returns 0 or a negative libuv code. */
typedef void (*nb_store_work_fn)(nb_store_t *st, void *ud);
typedef void (*nb_store_done_fn)(void *ud, int status);
int nb_store_queue(nb_store_t *st, uv_loop_t *loop, nb_store_work_fn work, nb_store_done_fn done,
                   void *ud);

/* Jobs queued with nb_store_queue whose `done` has not run yet. The daemon
 * waits for 0 before closing the store. Loop thread. */
unsigned nb_store_pending(const nb_store_t *st);

#endif
