/* Unit tests for src/daemon/audit: the hash chain, batching through the
 * thread pool, filters, the triggers that make the table append-only,
 * tamper detection, the secret-value guard and time parsing. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "lib/json.h"
#include "lib/err.h"
#include "nbtest.h"

static char dir[] = "/tmp/nb-test-audit-XXXXXX";
static char path[256];

typedef struct {
    uv_loop_t loop;
    nb_store_t *st;
    nb_audit_t *a;
} env_t;

static void env_open(env_t *e)
{
    char err[256];
    memset(e, 0, sizeof *e);
    uv_loop_init(&e->loop);
    NB_CHECK_EQ_INT(nb_store_open(path, &e->st, err, sizeof err), 0);
    NB_CHECK_EQ_INT(nb_audit_open(&e->loop, e->st, NULL, &e->a), 0);
    /* The chain tests see every row: merging and caps are tested apart. */
    nb_audit_limits_t l = {0, 0, 0, 0};
    nb_audit_set_limits(e->a, &l);
}

static void env_close(env_t *e)
{
    uv_run(&e->loop, UV_RUN_DEFAULT);
    nb_audit_close(e->a);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    nb_store_close(e->st);
    NB_CHECK_EQ_INT(uv_loop_close(&e->loop), 0);
}

static int64_t count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

static int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static void test_append_and_verify(void)
{
    env_t e;
    nbt_rm_db(path);
    env_open(&e);
    for (int i = 0; i < 50; i++) {
        int64_t seq = nb_audit_append(e.a, i % 2 ? NB_AUDIT_GATE : NB_AUDIT_INJECT,
                                      i % 3 ? "dev" : NULL, "api.example.com", 443,
                                      json_pack("{s:i, s:s}", "i", i, "secret", "OPENAI_KEY"));
        NB_CHECK_EQ_INT(seq, i + 1);
    }
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(nb_audit_written(e.a), 50);
    NB_CHECK_EQ_INT(nb_audit_last_seq(e.a), 50);
    nb_audit_verify_t v;
    NB_CHECK_EQ_INT(nb_audit_verify_db(nb_store_db(e.st), &v), 0);
    NB_CHECK(v.ok);
    NB_CHECK_EQ_INT(v.rows, 50);
    NB_CHECK_EQ_INT(v.head_seq, 50);
    NB_CHECK_EQ_INT(count(nb_store_db(e.st), "SELECT count(*) FROM audit"), 50);
    env_close(&e);

    /* A new process continues the same chain. */
    env_open(&e);
    NB_CHECK_EQ_INT(nb_audit_append(e.a, NB_AUDIT_VM, "dev", NULL, 0, NULL), 51);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(nb_audit_verify_db(nb_store_db(e.st), &v), 0);
    NB_CHECK(v.ok);
    NB_CHECK_EQ_INT(v.rows, 51);
    env_close(&e);
}

static void test_refusals(void)
{
    env_t e;
    nbt_rm_db(path);
    env_open(&e);
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "Bad Kind", NULL, NULL, 0, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "", NULL, NULL, 0, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "x", NULL, NULL, 70000, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "x", NULL, NULL, 0, json_array()), NB_EINVAL);
    /* Keys that could only hold a value, anywhere in the detail. */
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "inject", NULL, NULL, 0, json_pack("{s:s}", "value", "x")),
                    NB_EINVAL);
    NB_CHECK_EQ_INT(
        nb_audit_append(e.a, "inject", NULL, NULL, 0, json_pack("{s:{s:s}}", "a", "Password", "x")),
        NB_EINVAL);
    /* "secret" holds a name, never something else. */
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "inject", NULL, NULL, 0,
                                    json_pack("{s:s}", "secret", "sk-live abc/def")),
                    NB_EINVAL);
    NB_CHECK_EQ_INT(
        nb_audit_append(e.a, "leak", NULL, NULL, 0, json_pack("{s:[s,i]}", "secrets", "A", 3)),
        NB_EINVAL);
    NB_CHECK_EQ_INT(nb_audit_append(e.a, "leak", NULL, NULL, 0,
                                    json_pack("{s:[s,s]}", "secrets", "A_KEY", "B_KEY")),
                    1);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(count(nb_store_db(e.st), "SELECT count(*) FROM audit"), 1);
    env_close(&e);
}

static int guard(void *ud, const char *s, size_t len)
{
    const char *needle = ud;
    return len >= strlen(needle) && memmem(s, len, needle, strlen(needle)) != NULL;
}

static void test_guard_redacts(void)
{
    env_t e;
    nbt_rm_db(path);
    env_open(&e);
    nb_audit_set_guard(e.a, guard, "hunter2-SECRET");
    NB_CHECK(nb_audit_append(e.a, "refusal", "dev", "evil.example", 443,
                             json_pack("{s:s, s:[s]}", "reason", "Bearer hunter2-SECRET", "list",
                                       "ok hunter2-SECRET")) > 0);
    NB_CHECK(nb_audit_append(e.a, "refusal", "hunter2-SECRET", NULL, 0, NULL) > 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(count(nb_store_db(e.st),
                          "SELECT count(*) FROM audit WHERE detail LIKE '%hunter2%' OR vm LIKE "
                          "'%hunter2%' OR host LIKE '%hunter2%'"),
                    0);
    NB_CHECK_EQ_INT(count(nb_store_db(e.st), "SELECT count(*) FROM audit WHERE detail LIKE "
                                             "'%\"_redacted\":[\"reason\",\"list\"]%'"),
                    1);
    NB_CHECK_EQ_INT(count(nb_store_db(e.st), "SELECT count(*) FROM audit WHERE vm = '[redacted]'"),
                    1);
    nb_audit_verify_t v;
    NB_CHECK_EQ_INT(nb_audit_verify_db(nb_store_db(e.st), &v), 0);
    NB_CHECK(v.ok);
    env_close(&e);
}

static void test_filters(void)
{
    env_t e;
    json_t *rows = NULL;
    nb_audit_filter_t f;
    nbt_rm_db(path);
    env_open(&e);
    nb_audit_append(e.a, "secret.set", NULL, NULL, 0, json_pack("{s:s}", "secret", "A"));
    nb_audit_append(e.a, "secret.rm", NULL, NULL, 0, json_pack("{s:s}", "secret", "A"));
    nb_audit_append(e.a, "gate.decision", "vm1", "a.example", 443, NULL);
    nb_audit_append(e.a, "gate.decision", "vm2", "b.example", 80, NULL);
    nb_audit_append(e.a, "gate.decision", "vm1", "c.example", 443, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    sqlite3 *db = nb_store_db(e.st);

    nb_audit_filter_init(&f);
    snprintf(f.kind, sizeof f.kind, "secret.*");
    NB_CHECK_EQ_INT(nb_audit_query_db(db, &f, &rows), 0);
    NB_CHECK_EQ_INT(json_array_size(rows), 2);
    json_decref(rows);

    nb_audit_filter_init(&f);
    snprintf(f.kind, sizeof f.kind, "gate.decision");
    snprintf(f.vm, sizeof f.vm, "vm1");
    NB_CHECK_EQ_INT(nb_audit_query_db(db, &f, &rows), 0);
    NB_CHECK_EQ_INT(json_array_size(rows), 2);
    NB_CHECK_STR(nb_json_str(json_array_get(rows, 1), "host"), "c.example");
    NB_CHECK_EQ_INT(nb_json_int(json_array_get(rows, 1), "port", 0), 443);
    json_decref(rows);

    nb_audit_filter_init(&f);
    f.limit = 2;
    f.newest_first = 1;
    NB_CHECK_EQ_INT(nb_audit_query_db(db, &f, &rows), 0);
    NB_CHECK_EQ_INT(json_array_size(rows), 2);
    NB_CHECK_EQ_INT(nb_json_int(json_array_get(rows, 0), "seq", 0), 5);
    json_decref(rows);

    nb_audit_filter_init(&f);
    f.after_seq = 3;
    NB_CHECK_EQ_INT(nb_audit_query_db(db, &f, &rows), 0);
    NB_CHECK_EQ_INT(json_array_size(rows), 2);
    NB_CHECK_EQ_INT(nb_json_int(json_array_get(rows, 0), "seq", 0), 4);
    json_decref(rows);

    nb_audit_filter_init(&f);
    f.since_ms = nb_events_now_ms() + 3600000; /* the future: nothing */
    NB_CHECK_EQ_INT(nb_audit_query_db(db, &f, &rows), 0);
    NB_CHECK_EQ_INT(json_array_size(rows), 0);
    json_decref(rows);

    nb_audit_filter_init(&f);
    snprintf(f.kind, sizeof f.kind, "x' OR 1=1 --");
    NB_CHECK_EQ_INT(nb_audit_query_db(db, &f, &rows), NB_EINVAL);
    NB_CHECK(!nb_audit_kind_filter_valid("*"));
    NB_CHECK(!nb_audit_kind_filter_valid("a*b"));
    NB_CHECK(nb_audit_kind_filter_valid("vm.*"));
    env_close(&e);
}

static int got_rows = -1;
static int64_t got_first = -1;

static void on_rows(void *ud, int status, json_t *rows)
{
    env_t *e = ud;
    (void)e;
    got_rows = status == 0 ? (int)json_array_size(rows) : status;
    got_first = nb_json_int(json_array_get(rows, 0), "seq", -1);
    json_decref(rows);
}

static int verified = -1;
static void on_verify(void *ud, int status, const nb_audit_verify_t *v)
{
    verified = status == 0 && v->ok ? (int)v->rows : -2;
}

static void test_async_reads_see_own_writes(void)
{
    env_t e;
    nb_audit_filter_t f;
    nbt_rm_db(path);
    env_open(&e);
    /* Queued before the rows are on disk: the chain writes them first. */
    for (int i = 0; i < 10; i++)
        nb_audit_append(e.a, "inject", NULL, NULL, 0, NULL);
    nb_audit_filter_init(&f);
    NB_CHECK_EQ_INT(nb_audit_query(e.a, &f, on_rows, &e), 0);
    for (int i = 0; i < 5; i++)
        nb_audit_append(e.a, "leak", NULL, NULL, 0, NULL);
    NB_CHECK_EQ_INT(nb_audit_verify(e.a, on_verify, &e), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK(got_rows >= 10);
    NB_CHECK_EQ_INT(got_first, 1);
    NB_CHECK_EQ_INT(verified, 15);
    env_close(&e);
}

static void test_triggers_and_tampering(void)
{
    env_t e;
    nb_audit_verify_t v;
    nbt_rm_db(path);
    env_open(&e);
    for (int i = 0; i < 30; i++)
        nb_audit_append(e.a, "gate.decision", "dev", "x.example", 443,
                        json_pack("{s:s}", "decision", i % 2 ? "allow" : "deny"));
    uv_run(&e.loop, UV_RUN_DEFAULT);
    sqlite3 *db = nb_store_db(e.st);
    /* Append-only for anyone who goes through SQLite with the schema. */
    NB_CHECK(exec(db, "UPDATE audit SET detail = '{}' WHERE seq = 5") != SQLITE_OK);
    NB_CHECK(exec(db, "DELETE FROM audit WHERE seq = 5") != SQLITE_OK);
    NB_CHECK(exec(db, "INSERT INTO audit (seq, time_ms, kind, detail, prev_hash, hash) VALUES"
                      " (31, 0, 'x', '{}', 'bad', 'bad')") != SQLITE_OK);
    NB_CHECK(exec(db, "INSERT INTO audit (seq, time_ms, kind, detail, prev_hash, hash) VALUES"
                      " (40, 0, 'x', '{}', (SELECT hash FROM audit WHERE seq = 30), 'h')") !=
             SQLITE_OK);
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(v.ok);

    /* An attacker with the file drops the triggers and edits a row. */
    NB_CHECK_EQ_INT(exec(db, "DROP TRIGGER audit_no_update"), SQLITE_OK);
    NB_CHECK_EQ_INT(
        exec(db,
             "UPDATE audit SET detail = '{\"decision\":\"allow\",\"forged\":1}' WHERE seq = 12"),
        SQLITE_OK);
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 12);
    NB_CHECK_EQ_INT(v.head_seq, 11);
    NB_CHECK(strstr(v.reason, "modified") != NULL);

    /* Recomputing that row's hash moves the break to the next row. */
    {
        char h[65], prev[65];
        sqlite3_stmt *s = NULL;
        sqlite3_prepare_v2(db, "SELECT prev_hash, time_ms, detail FROM audit WHERE seq = 12", -1,
                           &s, NULL);
        NB_CHECK_EQ_INT(sqlite3_step(s), SQLITE_ROW);
        snprintf(prev, sizeof prev, "%s", (const char *)sqlite3_column_text(s, 0));
        const char *det = (const char *)sqlite3_column_text(s, 2);
        nb_audit_row_hash(prev, 12, sqlite3_column_int64(s, 1), "gate.decision", "dev", "x.example",
                          443, det, strlen(det), h);
        sqlite3_finalize(s);
        char sql[200];
        snprintf(sql, sizeof sql, "UPDATE audit SET hash = '%s' WHERE seq = 12", h);
        NB_CHECK_EQ_INT(exec(db, sql), SQLITE_OK);
    }
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 13);
    NB_CHECK(strstr(v.reason, "prev_hash") != NULL);

    /* A deleted row in the middle is a gap. */
    env_close(&e);
    nbt_rm_db(path);
    env_open(&e);
    for (int i = 0; i < 10; i++)
        nb_audit_append(e.a, "inject", NULL, NULL, 0, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    db = nb_store_db(e.st);
    NB_CHECK_EQ_INT(exec(db, "DROP TRIGGER audit_no_delete"), SQLITE_OK);
    NB_CHECK_EQ_INT(exec(db, "DELETE FROM audit WHERE seq = 4"), SQLITE_OK);
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 4);
    NB_CHECK(strstr(v.reason, "missing") != NULL);
    env_close(&e);
}

static void test_row_hash_is_canonical(void)
{
    char h1[65], h2[65], h3[65];
    NB_CHECK_EQ_INT(nb_audit_row_hash(NB_AUDIT_ZERO_HASH, 1, 1000, "k", "ab", "c", 1, "{}", 2, h1),
                    0);
    /* The same bytes shifted between fields give another hash. */
    NB_CHECK_EQ_INT(nb_audit_row_hash(NB_AUDIT_ZERO_HASH, 1, 1000, "k", "a", "bc", 1, "{}", 2, h2),
                    0);
    NB_CHECK_EQ_INT(nb_audit_row_hash(NB_AUDIT_ZERO_HASH, 1, 1000, "k", "ab", "c", 2, "{}", 2, h3),
                    0);
    NB_CHECK(strcmp(h1, h2) != 0);
    NB_CHECK(strcmp(h1, h3) != 0);
    NB_CHECK_EQ_INT(strlen(h1), 64);
    NB_CHECK_EQ_INT(nb_audit_row_hash("xyz", 1, 1, "k", NULL, NULL, 0, "{}", 2, h1), NB_EINVAL);
}

static void test_parse_time(void)
{
    int64_t ms = 0, now = 1800000000000LL;
    NB_CHECK_EQ_INT(nb_audit_parse_time("2026-01-02T03:04:05Z", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, 1767323045000LL);
    NB_CHECK_EQ_INT(nb_audit_parse_time("2026-01-02T03:04:05.250Z", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, 1767323045250LL);
    NB_CHECK_EQ_INT(nb_audit_parse_time("2026-01-02T05:04:05+02:00", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, 1767323045000LL);
    NB_CHECK_EQ_INT(nb_audit_parse_time("2026-01-02", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, 1767312000000LL);
    NB_CHECK_EQ_INT(nb_audit_parse_time("15m", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, now - 900000);
    NB_CHECK_EQ_INT(nb_audit_parse_time("7d", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, now - 7 * 86400000LL);
    NB_CHECK_EQ_INT(nb_audit_parse_time("1767323045000", now, &ms), 0);
    NB_CHECK_EQ_INT(ms, 1767323045000LL);
    const char *bad[] = {"",
                         "yesterday",
                         "2026-13-01",
                         "2026-01-02T03:04Z",
                         "15x",
                         "m",
                         "2026-01-02T03:04:05",
                         "2026-01-02T03:04:05Zjunk",
                         "-5m",
                         "99999999999999999999d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        NB_CHECK_EQ_INT(nb_audit_parse_time(bad[i], now, &ms), NB_EINVAL);
}

/* ------------------------------------------------ keyed chain, anchor, volume */

static char head_path[300];
static const uint8_t KEY[NB_AUDIT_KEY_BYTES] = "0123456789abcdef0123456789abcdef";

static void fresh(void)
{
    nbt_rm_db(path);
    unlink(head_path);
}

static void verify_keyed(env_t *e, nb_audit_verify_t *v)
{
    NB_CHECK_EQ_INT(nb_audit_verify_db_keyed(nb_store_db(e->st), KEY, head_path, v), 0);
}

static void test_keyed_chain_and_anchor(void)
{
    env_t e;
    nb_audit_verify_t v;
    fresh();
    env_open(&e);
    /* Rows before unlock are unkeyed; the first keyed row commits them. */
    for (int i = 0; i < 3; i++)
        NB_CHECK(nb_audit_append(e.a, NB_AUDIT_DAEMON, NULL, NULL, 0, NULL) > 0);
    NB_CHECK_EQ_INT(nb_audit_set_key(e.a, KEY), 0);
    uint8_t other[NB_AUDIT_KEY_BYTES] = {1};
    NB_CHECK_EQ_INT(nb_audit_set_key(e.a, other), NB_ESTATE);
    for (int i = 0; i < 7; i++)
        nb_audit_append(e.a, "rule.add", "dev", "x.example", 443, json_pack("{s:i}", "i", i));
    uv_run(&e.loop, UV_RUN_DEFAULT);
    sqlite3 *db = nb_store_db(e.st);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE mac = 0"), 3);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE mac = 1"), 7);
    verify_keyed(&e, &v);
    NB_CHECK(v.ok);
    NB_CHECK_EQ_INT(v.keyed_rows, 7);
    NB_CHECK_EQ_INT(v.unkeyed_rows, 3);
    NB_CHECK_EQ_INT(v.anchor_seq, 10);
    NB_CHECK_STR(v.anchor, "ok");
    /* The wrong key: every keyed row fails, starting with the first. */
    NB_CHECK_EQ_INT(nb_audit_verify_db_keyed(db, other, NULL, &v), 0);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 4);

    /* The anchor itself: edited, then removed. */
    {
        char saved[512];
        FILE *f = fopen(head_path, "r+");
        NB_CHECK(f != NULL);
        size_t sn = fread(saved, 1, sizeof saved, f);
        fseek(f, 21, SEEK_SET);
        fputc(saved[21] == '7' ? '8' : '7', f);
        fclose(f);
        verify_keyed(&e, &v);
        NB_CHECK(!v.ok);
        NB_CHECK(strstr(v.reason, "anchor") != NULL);
        unlink(head_path);
        verify_keyed(&e, &v);
        NB_CHECK(!v.ok);
        NB_CHECK(strstr(v.reason, "missing") != NULL);
        f = fopen(head_path, "w");
        fwrite(saved, 1, sn, f);
        fclose(f);
        verify_keyed(&e, &v);
        NB_CHECK(v.ok);
    }

    /* Truncation: the newest rows deleted (triggers dropped first). */
    NB_CHECK_EQ_INT(exec(db, "DROP TRIGGER audit_no_delete"), SQLITE_OK);
    NB_CHECK_EQ_INT(exec(db, "DELETE FROM audit WHERE seq > 8"), SQLITE_OK);
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(v.ok); /* without the anchor a cut tail is invisible */
    verify_keyed(&e, &v);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 9);
    NB_CHECK(strstr(v.reason, "deleted from the end") != NULL);
    env_close(&e);

    /* Rewrite: edit row 5 and recompute every later hash with the unkeyed
     * scheme (what an attacker without the key can do). */
    fresh();
    env_open(&e);
    NB_CHECK_EQ_INT(nb_audit_set_key(e.a, KEY), 0);
    for (int i = 0; i < 10; i++)
        nb_audit_append(e.a, "rule.add", "dev", "x.example", 443, json_pack("{s:i}", "i", i));
    uv_run(&e.loop, UV_RUN_DEFAULT);
    db = nb_store_db(e.st);
    NB_CHECK_EQ_INT(exec(db, "DROP TRIGGER audit_no_update"), SQLITE_OK);
    NB_CHECK_EQ_INT(exec(db, "UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 5"), SQLITE_OK);
    for (int64_t seq = 5; seq <= 10; seq++) {
        char h[65], prev[65], sql[300];
        sqlite3_stmt *s = NULL;
        sqlite3_prepare_v2(db,
                           "SELECT (SELECT hash FROM audit WHERE seq = a.seq - 1), time_ms, "
                           "kind, vm, host, port, detail FROM audit a WHERE seq = ?",
                           -1, &s, NULL);
        sqlite3_bind_int64(s, 1, seq);
        NB_CHECK_EQ_INT(sqlite3_step(s), SQLITE_ROW);
        snprintf(prev, sizeof prev, "%s", (const char *)sqlite3_column_text(s, 0));
        const char *det = (const char *)sqlite3_column_text(s, 6);
        nb_audit_row_hash(
            prev, seq, sqlite3_column_int64(s, 1), (const char *)sqlite3_column_text(s, 2),
            (const char *)sqlite3_column_text(s, 3), (const char *)sqlite3_column_text(s, 4),
            sqlite3_column_int(s, 5), det, strlen(det), h);
        sqlite3_finalize(s);
        /* Both spellings: keep mac = 1 (fails the MAC) or downgrade to 0. */
        snprintf(sql, sizeof sql,
                 "UPDATE audit SET prev_hash = '%s', hash = '%s', mac = %d WHERE seq = %lld", prev,
                 h, 0, (long long)seq);
        NB_CHECK_EQ_INT(exec(db, sql), SQLITE_OK);
    }
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(v.ok); /* the unkeyed chain alone is fooled */
    verify_keyed(&e, &v);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 10);
    NB_CHECK(strstr(v.reason, "rewritten") != NULL);
    NB_CHECK_EQ_INT(exec(db, "UPDATE audit SET mac = 1 WHERE seq >= 5"), SQLITE_OK);
    verify_keyed(&e, &v);
    NB_CHECK(!v.ok);
    NB_CHECK_EQ_INT(v.first_bad_seq, 5);
    NB_CHECK(strstr(v.reason, "keyed MAC") != NULL);

    env_close(&e);
}

static void test_tamper_found_at_unlock(void)
{
    env_t e;
    nb_audit_verify_t v;
    fresh();
    env_open(&e);
    NB_CHECK_EQ_INT(nb_audit_set_key(e.a, KEY), 0);
    for (int i = 0; i < 6; i++)
        nb_audit_append(e.a, "rule.add", NULL, "x.example", 0, NULL);
    env_close(&e);
    /* Offline: the newest rows cut. The next run's first keyed batch
     * would overwrite the anchor: it records what it found first. */
    {
        sqlite3 *db = NULL;
        NB_CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
        NB_CHECK_EQ_INT(exec(db, "DROP TRIGGER audit_no_delete"), SQLITE_OK);
        NB_CHECK_EQ_INT(exec(db, "DELETE FROM audit WHERE seq > 4"), SQLITE_OK);
        sqlite3_close(db);
    }
    env_open(&e);
    nb_audit_append(e.a, NB_AUDIT_DAEMON, NULL, NULL, 0, NULL);
    NB_CHECK_EQ_INT(nb_audit_set_key(e.a, KEY), 0);
    nb_audit_append(e.a, "rule.add", NULL, "y.example", 0, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    sqlite3 *db = nb_store_db(e.st);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE kind = 'audit.tamper'"), 1);
    verify_keyed(&e, &v);
    NB_CHECK(!v.ok);
    NB_CHECK(strstr(v.reason, "tampering") != NULL);
    NB_CHECK(strstr(v.reason, "deleted") != NULL);
    env_close(&e);
}

static void test_merge_and_cap(void)
{
    env_t e;
    fresh();
    env_open(&e);
    nb_audit_limits_t l = {60000, 50, 0, 0};
    nb_audit_set_limits(e.a, &l);
    /* 10000 identical leaks: one row now, one row with the count. */
    for (int i = 0; i < 10000; i++)
        nb_audit_append(e.a, NB_AUDIT_LEAK, "dev", "unbound.example", 443,
                        json_pack("{s:s}", "placeholder", "OPENAI_API_KEY"));
    NB_CHECK_EQ_INT(nb_audit_merged(e.a), 9999);
    /* Distinct rows from one VM: capped at 50 a minute, excess counted. */
    for (int i = 0; i < 1000; i++) {
        char host[64];
        snprintf(host, sizeof host, "h%d.example", i);
        nb_audit_append(e.a, NB_AUDIT_REFUSAL, "dev", host, 443, NULL);
    }
    NB_CHECK_EQ_INT(nb_audit_suppressed(e.a), 951);
    /* Another VM has its own budget; owner actions are never merged. */
    NB_CHECK(nb_audit_append(e.a, NB_AUDIT_REFUSAL, "other", "a.example", 443, NULL) > 0);
    NB_CHECK(nb_audit_append(e.a, "rule.add", "dev", "a.example", 0, NULL) > 0);
    NB_CHECK(nb_audit_append(e.a, "rule.add", "dev", "a.example", 0, NULL) > 0);
    nb_audit_flush_aggregates(e.a);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    sqlite3 *db = nb_store_db(e.st);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE kind = 'leak'"), 2);
    NB_CHECK_EQ_INT(count(db, "SELECT json_extract(detail, '$._repeated') FROM audit"
                              " WHERE kind = 'leak' AND seq = (SELECT max(seq) FROM audit"
                              " WHERE kind = 'leak')"),
                    9999);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE kind = 'refusal' AND vm = 'dev'"),
                    49);
    NB_CHECK_EQ_INT(count(db, "SELECT json_extract(detail, '$.suppressed') FROM audit"
                              " WHERE kind = 'audit.suppressed' AND vm = 'dev'"),
                    951);
    NB_CHECK_EQ_INT(count(db, "SELECT json_extract(detail, '$.kinds.refusal') FROM audit"
                              " WHERE kind = 'audit.suppressed'"),
                    951);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE kind = 'rule.add'"), 2);
    NB_CHECK(count(db, "SELECT count(*) FROM audit") < 60);
    nb_audit_verify_t v;
    NB_CHECK_EQ_INT(nb_audit_verify_db(db, &v), 0);
    NB_CHECK(v.ok);
    env_close(&e);
}

static void test_retention_keeps_chain(void)
{
    env_t e;
    nb_audit_verify_t v;
    fresh();
    env_open(&e);
    nb_audit_limits_t l = {0, 0, 100, 0};
    nb_audit_set_limits(e.a, &l);
    for (int i = 0; i < 20; i++)
        nb_audit_append(e.a, NB_AUDIT_DAEMON, NULL, NULL, 0, NULL); /* legacy prefix */
    NB_CHECK_EQ_INT(nb_audit_set_key(e.a, KEY), 0);
    for (int i = 0; i < 250; i++)
        nb_audit_append(e.a, "rule.add", NULL, "x.example", 0, json_pack("{s:i}", "i", i));
    uv_run(&e.loop, UV_RUN_DEFAULT);
    nb_audit_prune_now(e.a);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    sqlite3 *db = nb_store_db(e.st);
    int64_t n = count(db, "SELECT count(*) FROM audit");
    NB_CHECK(n <= 100);
    NB_CHECK(n >= 80);
    NB_CHECK_EQ_INT(count(db, "SELECT count(*) FROM audit WHERE kind = 'audit.pruned'"), 1);
    verify_keyed(&e, &v);
    NB_CHECK(v.ok);
    NB_CHECK(v.first_seq > 1);
    /* A prefix cut beyond the checkpoint is not covered. */
    NB_CHECK(exec(db, "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)") != SQLITE_OK);
    NB_CHECK_EQ_INT(exec(db, "DROP TRIGGER audit_no_delete"), SQLITE_OK);
    NB_CHECK_EQ_INT(exec(db, "DELETE FROM audit WHERE seq < (SELECT min(seq) + 3 FROM audit)"),
                    SQLITE_OK);
    verify_keyed(&e, &v);
    NB_CHECK(!v.ok);
    NB_CHECK(strstr(v.reason, "no retention checkpoint") != NULL);
    env_close(&e);
}

int main(void)
{
    if (sodium_init() < 0 || !mkdtemp(dir))
        return 1;
    snprintf(path, sizeof path, "%s/state.db", dir);
    snprintf(head_path, sizeof head_path, "%s/%s", dir, NB_AUDIT_HEAD_FILE);
    NB_RUN(test_row_hash_is_canonical);
    NB_RUN(test_append_and_verify);
    NB_RUN(test_refusals);
    NB_RUN(test_guard_redacts);
    NB_RUN(test_filters);
    NB_RUN(test_async_reads_see_own_writes);
    NB_RUN(test_triggers_and_tampering);
    NB_RUN(test_parse_time);
    NB_RUN(test_keyed_chain_and_anchor);
    NB_RUN(test_tamper_found_at_unlock);
    NB_RUN(test_merge_and_cap);
    NB_RUN(test_retention_keeps_chain);
    fresh();
    rmdir(dir);
    NB_TEST_MAIN_END();
}
