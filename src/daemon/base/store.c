#include "daemon/base/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

struct nb_store {
    sqlite3 *db;
    const nb_store_migration_t *migs;
    size_t n_migs;
    int version;
    int64_t appends;      /* event rows since the last trim */
    sqlite3_stmt *ev_ins; /* the events INSERT, prepared on first use */
    unsigned pending;     /* queued jobs (loop thread only) */
};

static int exec_quiet(sqlite3 *db, const char *sql, char *err, size_t errsz, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        nb_err_say(err, errsz, "%s: %s", what, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return NB_EINTERNAL;
    }
    return 0;
}

static int query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL;
    *out = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        goto out;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(s, 0);
        r = 0;
    } else if (rc == SQLITE_DONE) {
        r = NB_ENOTFOUND;
    }
out:
    sqlite3_finalize(s);
    return r;
}

static int check_migration_list(const nb_store_migration_t *m, size_t n, char *err, size_t errsz)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].version != (int)i + 1 || !m[i].sql || !m[i].name) {
            nb_err_say(err, errsz,
                       "migration list is broken at index %zu (version %d): versions must "
                       "be 1, 2, 3, ... in order",
                       i, m[i].version);
            return NB_EINTERNAL;
        }
    }
    return 0;
}

/* Runs every pending migration inside one IMMEDIATE transaction so that a
 * failure anywhere leaves the file exactly as it was (including the
 * bookkeeping table on a brand-new database). */
static int migrate(nb_store_t *st, char *err, size_t errsz)
{
    sqlite3 *db = st->db;
    int64_t cur = 0;
    int r;
    if ((r = exec_quiet(db, "BEGIN IMMEDIATE", err, errsz, "cannot start migration")) < 0)
        return r;
    r = exec_quiet(db,
                   "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                   " name TEXT NOT NULL, applied_at TEXT NOT NULL)",
                   err, errsz, "cannot create schema_migrations");
    if (r < 0)
        goto rollback;
    if ((r = query_int(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", &cur)) < 0) {
        nb_err_say(err, errsz, "cannot read schema version: %s", sqlite3_errmsg(db));
        goto rollback;
    }
    if (cur > (int64_t)st->n_migs) {
        nb_err_say(
            err, errsz,
            "the state database has schema version %lld but this nilboxd only knows up to %zu; "
            "run a newer nilbox, or point NILBOX_HOME elsewhere",
            (long long)cur, st->n_migs);
        r = NB_ESTATE;
        goto rollback;
    }
    for (size_t i = (size_t)cur; i < st->n_migs; i++) {
        const nb_store_migration_t *m = &st->migs[i];
        char what[256];
        snprintf(what, sizeof what, "migration %d (%s) failed", m->version, m->name);
        if ((r = exec_quiet(db, "SAVEPOINT nb_migration", err, errsz, what)) < 0 ||
            (r = exec_quiet(db, m->sql, err, errsz, what)) < 0)
            goto rollback;
        sqlite3_stmt *s = NULL;
        if (sqlite3_prepare_v2(db,
                               "INSERT INTO schema_migrations (version, name, applied_at) VALUES"
                               " (?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                               -1, &s, NULL) != SQLITE_OK ||
            sqlite3_bind_int(s, 1, m->version) != SQLITE_OK ||
            sqlite3_bind_text(s, 2, m->name, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_step(s) != SQLITE_DONE) {
            nb_err_say(err, errsz, "%s: cannot record it: %s", what, sqlite3_errmsg(db));
            sqlite3_finalize(s);
            r = NB_EINTERNAL;
            goto rollback;
        }
        sqlite3_finalize(s);
        if ((r = exec_quiet(db, "RELEASE nb_migration", err, errsz, what)) < 0)
            goto rollback;
    }
    /* A migration that rebuilt a table must not leave dangling references. */
    int64_t bad = 0;
    r = query_int(db, "SELECT count(*) FROM pragma_foreign_key_check", &bad);
    if (r < 0 || bad > 0) {
        nb_err_say(err, errsz, "migrations left %lld foreign key violations", (long long)bad);
        r = NB_EINTERNAL;
        goto rollback;
    }
    if ((r = exec_quiet(db, "COMMIT", err, errsz, "cannot commit migrations")) < 0)
        goto rollback;
    if (cur < (int64_t)st->n_migs)
        nb_log(NB_LOG_INFO, "state database migrated from schema v%lld to v%zu", (long long)cur,
               st->n_migs);
    st->version = (int)st->n_migs;
    return 0;
rollback:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return r;
}

int nb_store_open_with(const char *path, const nb_store_migration_t *migs, size_t n,
                       nb_store_t **out, char *err, size_t errsz)
{
    nb_store_t *st = NULL;
    int r;
    *out = NULL;
    if (err && errsz)
        err[0] = '\0';
    if ((r = check_migration_list(migs, n, err, errsz)) < 0)
        return r;
    if (!(st = calloc(1, sizeof *st)))
        return -ENOMEM;
    st->migs = migs;
    st->n_migs = n;

    /* Created 0600 from the start: secrets and audit rows land here. */
    mode_t old = umask(077);
    int rc = sqlite3_open_v2(path, &st->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
                                 SQLITE_OPEN_NOFOLLOW,
                             NULL);
    umask(old);
    if (rc != SQLITE_OK) {
        nb_err_say(err, errsz, "cannot open state database %s: %s", path,
                   st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        r = NB_EINTERNAL;
        goto out;
    }
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, 5000);
    char jm[16] = "";
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(st->db, "PRAGMA journal_mode=WAL", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        snprintf(jm, sizeof jm, "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    if (strcmp(jm, "wal") != 0) {
        nb_err_say(err, errsz, "cannot switch %s to WAL mode (got '%s'): %s", path, jm,
                   sqlite3_errmsg(st->db));
        r = NB_EINTERNAL;
        goto out;
    }
    if ((r = exec_quiet(st->db, "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL", err, errsz,
                        "cannot set pragmas")) < 0)
        goto out;
    if ((r = migrate(st, err, errsz)) < 0)
        goto out;
    *out = st;
    st = NULL;
    r = 0;
out:
    nb_store_close(st);
    return r;
}

void nb_store_close(nb_store_t *st)
{
    if (!st)
        return;
    if (st->db) {
        sqlite3_finalize(st->ev_ins);
        /* Fold the WAL back so the folder holds one self-contained file. */
        sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        sqlite3_close_v2(st->db);
    }
    free(st);
}

sqlite3 *nb_store_db(nb_store_t *st)
{
    return st->db;
}

int nb_store_schema_version(nb_store_t *st)
{
    return st->version;
}

int nb_store_batch_begin(sqlite3 *db)
{
    return sqlite3_get_autocommit(db) &&
           sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
}

void nb_store_batch_end(sqlite3 *db, int began, int level, const char *what)
{
    if (began && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        nb_log(level, "%s: %s", what, sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
}

int nb_store_exec(nb_store_t *st, const char *sql)
{
    char err[512];
    int r = exec_quiet(st->db, sql, err, sizeof err, "sql");
    if (r < 0)
        nb_log(NB_LOG_ERR, "%s", err);
    return r;
}

int nb_store_setting_get(nb_store_t *st, const char *key, char **out)
{
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL;
    *out = NULL;
    if (sqlite3_prepare_v2(st->db, "SELECT value FROM settings WHERE key = ?", -1, &s, NULL) !=
            SQLITE_OK ||
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC) != SQLITE_OK)
        goto out;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        r = NB_ENOTFOUND;
    } else if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(s, 0);
        r = (*out = strdup(v ? v : "")) ? 0 : -ENOMEM;
    }
out:
    if (r == NB_EINTERNAL)
        nb_log(NB_LOG_ERR, "settings read failed: %s", sqlite3_errmsg(st->db));
    sqlite3_finalize(s);
    return r;
}

int nb_store_setting_set(nb_store_t *st, const char *key, const char *value)
{
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL;
    if (sqlite3_prepare_v2(st->db,
                           "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                           " updated_at = excluded.updated_at",
                           -1, &s, NULL) != SQLITE_OK ||
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(s, 3, (sqlite3_int64)time(NULL)) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_DONE) {
        nb_log(NB_LOG_ERR, "settings write failed: %s", sqlite3_errmsg(st->db));
        goto out;
    }
    r = 0;
out:
    sqlite3_finalize(s);
    return r;
}

int64_t nb_store_event_append(nb_store_t *st, int64_t time_ms, const char *type, const char *vm,
                              const json_t *data, int64_t keep)
{
    nb_buf_t b;
    int64_t r;
    nb_buf_init(&b, 1 << 20);
    if (data ? nb_json_dump(data, &b) < 0 : nb_buf_append_str(&b, "{}") < 0)
        r = NB_ETOOBIG;
    else
        r = nb_store_event_append_text(st, time_ms, type, vm, (const char *)b.p, b.len, keep);
    nb_buf_free(&b);
    return r;
}

int64_t nb_store_event_append_text(nb_store_t *st, int64_t time_ms, const char *type,
                                   const char *vm, const char *data, size_t len, int64_t keep)
{
    sqlite3_stmt *s = st->ev_ins;
    int64_t r = NB_EINTERNAL;
    if (len > INT32_MAX)
        return NB_ETOOBIG;
    /* Prepared once: preparing cost as much as the INSERT itself. */
    if (!s &&
        sqlite3_prepare_v3(st->db, "INSERT INTO events (time_ms, type, vm, data) VALUES (?,?,?,?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &st->ev_ins, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "event insert failed: %s", sqlite3_errmsg(st->db));
        st->ev_ins = NULL;
        return NB_EINTERNAL;
    }
    s = st->ev_ins;
    if (sqlite3_bind_int64(s, 1, time_ms) != SQLITE_OK ||
        sqlite3_bind_text(s, 2, type, -1, SQLITE_STATIC) != SQLITE_OK ||
        (vm ? sqlite3_bind_text(s, 3, vm, -1, SQLITE_STATIC) : sqlite3_bind_null(s, 3)) !=
            SQLITE_OK ||
        sqlite3_bind_text(s, 4, data, (int)len, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_DONE) {
        nb_log(NB_LOG_ERR, "event insert failed: %s", sqlite3_errmsg(st->db));
        goto out;
    }
    r = sqlite3_last_insert_rowid(st->db);
    /* Trimming on every insert would double the write cost; every 64 rows
     * keeps the table within keep + 64 rows. */
    if (keep > 0 && ++st->appends >= 64) {
        sqlite3_stmt *d = NULL;
        st->appends = 0;
        if (sqlite3_prepare_v2(st->db, "DELETE FROM events WHERE id <= ?", -1, &d, NULL) ==
                SQLITE_OK &&
            sqlite3_bind_int64(d, 1, r - keep) == SQLITE_OK)
            sqlite3_step(d);
        sqlite3_finalize(d);
    }
out:
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return r;
}

int64_t nb_store_count(nb_store_t *st, const char *table)
{
    char sql[128];
    int64_t n = 0;
    if (snprintf(sql, sizeof sql, "SELECT count(*) FROM \"%s\"", table) >= (int)sizeof sql)
        return NB_EINVAL;
    int r = query_int(st->db, sql, &n);
    return r < 0 ? r : n;
}

/* --- thread pool --- */
typedef struct {
    uv_work_t w;
    nb_store_t *st;
    nb_store_work_fn work;
    nb_store_done_fn done;
    void *ud;
} store_job_t;

static void on_job_work(uv_work_t *w)
{
    store_job_t *j = w->data;
    j->work(j->st, j->ud);
}

static void on_job_done(uv_work_t *w, int status)
{
    store_job_t *j = w->data;
    j->st->pending--;
    if (j->done)
        j->done(j->ud, status);
    free(j);
}

unsigned nb_store_pending(const nb_store_t *st)
{
    return st ? st->pending : 0;
}

int nb_store_queue(nb_store_t *st, uv_loop_t *loop, nb_store_work_fn work, nb_store_done_fn done,
                   void *ud)
{
    store_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return UV_ENOMEM;
    j->st = st;
    j->work = work;
    j->done = done;
    j->ud = ud;
    j->w.data = j;
    int r = uv_queue_work(loop, &j->w, on_job_work, on_job_done);
    if (r < 0)
        free(j);
    else
        st->pending++;
    return r;
}
