/* Unit tests for src/daemon/store: pragmas, migrations (including a
 * broken one that must leave the old database untouched), settings,
 * events and the thread-pool helper. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/base/store.h"
#include "lib/err.h"
#include "nbtest.h"

static char dir[] = "/tmp/nb-test-store-XXXXXX";
static char path[256];

static char *query_text(nb_store_t *st, const char *sql)
{
    sqlite3_stmt *s = NULL;
    char *v = NULL;
    if (sqlite3_prepare_v2(nb_store_db(st), sql, -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
        v = strdup((const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    return v;
}

/* The whole schema plus the user rows, as one string, to compare states. */
static char *snapshot(nb_store_t *st)
{
    return query_text(st, "SELECT group_concat(type || ':' || name || ':' || coalesce(sql, ''), "
                          "'|') || '#' || (SELECT group_concat(v, ',') FROM t1) || '#' || "
                          "(SELECT group_concat(version || name, ',') FROM schema_migrations) "
                          "FROM (SELECT * FROM sqlite_master ORDER BY name)");
}

static void test_open_builtin(void)
{
    nb_store_t *st = NULL;
    char err[512];
    struct stat sb;
    nbt_rm_db(path);
    NB_CHECK_EQ_INT(nb_store_open(path, &st, err, sizeof err), 0);
    NB_CHECK(st != NULL);
    if (!st)
        return;
    NB_CHECK_EQ_INT(nb_store_schema_version(st), nb_store_latest_version());
    NB_CHECK(nb_store_latest_version() >= 1);
    char *jm = query_text(st, "PRAGMA journal_mode");
    NB_CHECK_STR(jm, "wal");
    free(jm);
    char *fk = query_text(st, "PRAGMA foreign_keys");
    NB_CHECK_STR(fk, "1");
    free(fk);
    NB_CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);

    char *v = NULL;
    NB_CHECK_EQ_INT(nb_store_setting_get(st, "ui.theme", &v), NB_ENOTFOUND);
    NB_CHECK(v == NULL);
    NB_CHECK_EQ_INT(nb_store_setting_set(st, "ui.theme", "dark"), 0);
    NB_CHECK_EQ_INT(nb_store_setting_set(st, "ui.theme", "light"), 0);
    NB_CHECK_EQ_INT(nb_store_setting_get(st, "ui.theme", &v), 0);
    NB_CHECK_STR(v, "light");
    free(v);
    char *id1 = query_text(st, "SELECT value FROM meta WHERE key = 'install_id'");
    NB_CHECK(id1 && strlen(id1) == 32);
    nb_store_close(st);

    /* Reopening applies nothing twice and keeps the data. */
    st = NULL;
    NB_CHECK_EQ_INT(nb_store_open(path, &st, err, sizeof err), 0);
    if (st) {
        char *id2 = query_text(st, "SELECT value FROM meta WHERE key = 'install_id'");
        NB_CHECK_STR(id2, id1);
        free(id2);
        NB_CHECK_EQ_INT(nb_store_count(st, "schema_migrations"), nb_store_latest_version());
        NB_CHECK_EQ_INT(nb_store_setting_get(st, "ui.theme", &v), 0);
        NB_CHECK_STR(v, "light");
        free(v);
    }
    free(id1);
    nb_store_close(st);
}

#define MIG1                                                                                       \
    {                                                                                              \
        1, "test: t1", "CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT NOT NULL);"                \
    }
#define MIG2                                                                                       \
    {                                                                                              \
        2, "test: t2 + rows",                                                                      \
            "CREATE TABLE t2 (id INTEGER PRIMARY KEY, t1 INTEGER REFERENCES t1(id));"              \
            "INSERT INTO t1 (v) VALUES ('a'), ('b');"                                              \
    }

static const nb_store_migration_t migs_v2[] = {MIG1, MIG2};

/* v3 is fine on its own; v4 does real work and then hits a syntax error. */
static const nb_store_migration_t migs_broken[] = {
    MIG1,
    MIG2,
    {3, "test: t3 and a column",
     "CREATE TABLE t3 (x INTEGER);"
     "ALTER TABLE t1 ADD COLUMN extra TEXT;"
     "UPDATE t1 SET v = 'changed';"},
    {4, "test: broken", "INSERT INTO t1 (v) VALUES ('c'); DROP TABLE t2; CREATE TABL oops (x);"},
};

static const nb_store_migration_t migs_gap[] = {
    MIG1,
    {3, "test: gap", "CREATE TABLE t9 (x);"},
};

static void test_broken_migration_rolls_back(void)
{
    nb_store_t *st = NULL;
    char err[512];
    nbt_rm_db(path);
    NB_CHECK_EQ_INT(nb_store_open_with(path, migs_v2, 2, &st, err, sizeof err), 0);
    if (!st)
        return;
    NB_CHECK_EQ_INT(nb_store_schema_version(st), 2);
    char *before = snapshot(st);
    NB_CHECK(before != NULL && strstr(before, "a,b") != NULL);
    nb_store_close(st);

    st = NULL;
    err[0] = '\0';
    int r = nb_store_open_with(path, migs_broken, 4, &st, err, sizeof err);
    NB_CHECK_EQ_INT(r, NB_EINTERNAL);
    NB_CHECK(st == NULL);
    NB_CHECK(strstr(err, "migration 4 (test: broken)") != NULL);
    nb_store_close(st);

    /* The old code still opens the old database, which is byte-for-byte the
     * same schema and rows: neither v3 nor the first half of v4 stuck. */
    st = NULL;
    NB_CHECK_EQ_INT(nb_store_open_with(path, migs_v2, 2, &st, err, sizeof err), 0);
    if (!st) {
        free(before);
        return;
    }
    NB_CHECK_EQ_INT(nb_store_schema_version(st), 2);
    char *after = snapshot(st);
    NB_CHECK_STR(after, before);
    NB_CHECK(after && strstr(after, "t3") == NULL && strstr(after, "extra") == NULL);
    NB_CHECK_EQ_INT(nb_store_count(st, "t1"), 2);
    NB_CHECK_EQ_INT(nb_store_count(st, "t2"), 0);
    free(after);
    free(before);
    nb_store_close(st);
}

static void test_broken_first_migration_leaves_empty_db(void)
{
    nb_store_t *st = NULL;
    char err[512];
    static const nb_store_migration_t bad[] = {{1, "test: bad", "CREATE TABLE x (a); SELEC 1;"}};
    nbt_rm_db(path);
    NB_CHECK_EQ_INT(nb_store_open_with(path, bad, 1, &st, err, sizeof err), NB_EINTERNAL);
    /* Not even the bookkeeping table may remain. */
    NB_CHECK_EQ_INT(nb_store_open_with(path, NULL, 0, &st, err, sizeof err), 0);
    if (st) {
        char *n = query_text(st, "SELECT count(*) FROM sqlite_master WHERE name <> "
                                 "'schema_migrations'");
        NB_CHECK_STR(n, "0");
        free(n);
        NB_CHECK_EQ_INT(nb_store_schema_version(st), 0);
    }
    nb_store_close(st);
}

static void test_newer_schema_and_bad_list(void)
{
    nb_store_t *st = NULL;
    char err[512];
    nbt_rm_db(path);
    NB_CHECK_EQ_INT(nb_store_open_with(path, migs_v2, 2, &st, err, sizeof err), 0);
    nb_store_close(st);
    st = NULL;
    /* An older nilboxd must refuse a database from a newer one. */
    NB_CHECK_EQ_INT(nb_store_open_with(path, migs_v2, 1, &st, err, sizeof err), NB_ESTATE);
    NB_CHECK(strstr(err, "schema version 2") != NULL);
    NB_CHECK(st == NULL);
    NB_CHECK_EQ_INT(nb_store_open_with(path, migs_gap, 2, &st, err, sizeof err), NB_EINTERNAL);
    NB_CHECK(st == NULL);
}

static void test_events_trim(void)
{
    nb_store_t *st = NULL;
    char err[512];
    nbt_rm_db(path);
    NB_CHECK_EQ_INT(nb_store_open(path, &st, err, sizeof err), 0);
    if (!st)
        return;
    json_t *d = json_pack("{s:s}", "k", "v");
    int64_t last = 0;
    for (int i = 0; i < 200; i++)
        last = nb_store_event_append(st, 1000 + i, "test.tick", i % 2 ? "vm1" : NULL, d, 100);
    NB_CHECK_EQ_INT(last, 200);
    int64_t n = nb_store_count(st, "events");
    NB_CHECK(n >= 100 && n <= 164);
    char *vm = query_text(st, "SELECT vm FROM events WHERE id = 200");
    NB_CHECK_STR(vm, "vm1");
    free(vm);
    vm = query_text(st, "SELECT count(*) FROM events WHERE id = 199 AND vm IS NULL");
    NB_CHECK_STR(vm, "1");
    free(vm);
    char *data = query_text(st, "SELECT data FROM events WHERE id = 200");
    NB_CHECK_STR(data, "{\"k\":\"v\"}");
    free(data);
    json_decref(d);
    nb_store_close(st);
}

static int done_status = -1;

static void job_work(nb_store_t *st, void *ud)
{
    *(int *)ud = nb_store_setting_set(st, "from.pool", "yes");
}

static void job_done(void *ud, int status)
{
    done_status = status;
}

static void test_queue(void)
{
    nb_store_t *st = NULL;
    char err[512];
    uv_loop_t loop;
    int work_r = -1;
    nbt_rm_db(path);
    NB_CHECK_EQ_INT(nb_store_open(path, &st, err, sizeof err), 0);
    if (!st)
        return;
    NB_CHECK_EQ_INT(uv_loop_init(&loop), 0);
    NB_CHECK_EQ_INT(nb_store_queue(st, &loop, job_work, job_done, &work_r), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(done_status, 0);
    NB_CHECK_EQ_INT(work_r, 0);
    char *v = NULL;
    NB_CHECK_EQ_INT(nb_store_setting_get(st, "from.pool", &v), 0);
    NB_CHECK_STR(v, "yes");
    free(v);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
    nb_store_close(st);
}

int main(void)
{
    if (!mkdtemp(dir))
        return 2;
    snprintf(path, sizeof path, "%s/state.db", dir);
    NB_RUN(test_open_builtin);
    NB_RUN(test_broken_migration_rolls_back);
    NB_RUN(test_broken_first_migration_leaves_empty_db);
    NB_RUN(test_newer_schema_and_bad_list);
    NB_RUN(test_events_trim);
    NB_RUN(test_queue);
    nbt_rm_db(path);
    rmdir(dir);
    NB_TEST_MAIN_END();
}
