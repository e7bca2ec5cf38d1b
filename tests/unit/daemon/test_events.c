/* Unit tests for src/daemon/base/events: stamping, the replay ring, in-process
 * subscribers and persistence (WebSocket fan-out is covered by the API
 * integration tests). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/base/events.h"
#include "daemon/base/store.h"
#include "lib/err.h"
#include "lib/json.h"
#include "nbtest.h"

static int seen;
static char last_type[64];

static void on_event(const json_t *e, void *ud)
{
    seen++;
    snprintf(last_type, sizeof last_type, "%s", nb_json_str(e, "type"));
    (*(int *)ud)++;
}

static void test_emit_and_ring(void)
{
    nb_events_t *ev = NULL;
    uv_loop_t loop;
    uint64_t h = 0;
    int mine = 0;
    NB_CHECK_EQ_INT(uv_loop_init(&loop), 0);
    NB_CHECK_EQ_INT(nb_events_new(&loop, NULL, &ev), 0);
    NB_CHECK_EQ_INT(nb_events_subscribe(ev, on_event, &mine, &h), 0);
    /* Modules cannot forge the envelope: id/type/time are overwritten. */
    int64_t id =
        nb_events_emit(ev, "test.one", json_pack("{s:s, s:i}", "type", "forged", "id", 99));
    NB_CHECK_EQ_INT(id, 1);
    NB_CHECK_STR(last_type, "test.one");
    NB_CHECK_EQ_INT(nb_events_emit(ev, "test.two", NULL), 2);
    NB_CHECK_EQ_INT(nb_events_emit(ev, "test.bad", json_string("not an object")), NB_EINVAL);
    NB_CHECK_EQ_INT(mine, 2);
    nb_events_unsubscribe(ev, h);
    for (int i = 0; i < NB_EVENTS_RING + 10; i++)
        nb_events_emit(ev, "test.many", json_pack("{s:i}", "i", i));
    NB_CHECK_EQ_INT(mine, 2); /* unsubscribed */
    NB_CHECK_EQ_INT(nb_events_last_id(ev), NB_EVENTS_RING + 12);

    json_t *all = nb_events_recent(ev, 0);
    NB_CHECK_EQ_INT(json_array_size(all), NB_EVENTS_RING);
    NB_CHECK_EQ_INT(nb_json_int(json_array_get(all, 0), "id", 0), 13);
    const char *t = nb_json_str(json_array_get(all, 0), "time");
    NB_CHECK(t && strlen(t) == 24 && t[23] == 'Z');
    json_decref(all);
    json_t *tail = nb_events_recent(ev, NB_EVENTS_RING + 10);
    NB_CHECK_EQ_INT(json_array_size(tail), 2);
    NB_CHECK_EQ_INT(nb_json_int(json_array_get(tail, 1), "i", -1), NB_EVENTS_RING + 9);
    json_decref(tail);
    json_t *none = nb_events_recent(ev, 1000000);
    NB_CHECK_EQ_INT(json_array_size(none), 0);
    json_decref(none);
    NB_CHECK_EQ_INT(nb_events_ws_count(ev), 0);
    nb_events_free(ev);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_persisted(void)
{
    char dir[] = "/tmp/nb-test-events-XXXXXX", path[128], err[256];
    nb_store_t *st = NULL;
    nb_events_t *ev = NULL;
    if (!mkdtemp(dir))
        return;
    snprintf(path, sizeof path, "%s/state.db", dir);
    NB_CHECK_EQ_INT(nb_store_open(path, &st, err, sizeof err), 0);
    NB_CHECK_EQ_INT(nb_events_new(NULL, st, &ev), 0);
    nb_events_emit(ev, "vm.started", json_pack("{s:s}", "vm", "dev"));
    nb_events_emit(ev, "daemon.started", NULL);
    /* A live event is published but keeps no row. */
    NB_CHECK_EQ_INT(nb_events_emit_live(ev, "usage.record", json_pack("{s:s}", "vm", "dev")), 3);
    json_t *recent = nb_events_recent(ev, 2);
    NB_CHECK_STR(nb_json_str(json_array_get(recent, 0), "type"), "usage.record");
    json_decref(recent);
    NB_CHECK_EQ_INT(nb_store_count(st, "events"), 2);
    sqlite3_stmt *s = NULL;
    sqlite3_prepare_v2(nb_store_db(st), "SELECT type, vm FROM events ORDER BY id", -1, &s, NULL);
    NB_CHECK(sqlite3_step(s) == SQLITE_ROW);
    NB_CHECK_STR((const char *)sqlite3_column_text(s, 0), "vm.started");
    NB_CHECK_STR((const char *)sqlite3_column_text(s, 1), "dev");
    NB_CHECK(sqlite3_step(s) == SQLITE_ROW);
    NB_CHECK(sqlite3_column_type(s, 1) == SQLITE_NULL);
    sqlite3_finalize(s);
    nb_events_free(ev);
    nb_store_close(st);
    unlink(path);
    rmdir(dir);
}

/* With a loop, rows are written in batches: none until the flush (the
 * point of batching: one transaction, not one WAL commit per event), all of
 * them, in order and with their fields, after it; the timer writes the next
 * batch by itself, and free writes what is left and closes the timer. */
static void test_persisted_batched(void)
{
    char dir[] = "/tmp/nb-test-events-XXXXXX", path[128], err[256];
    nb_store_t *st = NULL;
    nb_events_t *ev = NULL;
    uv_loop_t loop;
    if (!mkdtemp(dir))
        return;
    snprintf(path, sizeof path, "%s/state.db", dir);
    NB_CHECK_EQ_INT(uv_loop_init(&loop), 0);
    NB_CHECK_EQ_INT(nb_store_open(path, &st, err, sizeof err), 0);
    NB_CHECK_EQ_INT(nb_events_new(&loop, st, &ev), 0);
    for (int i = 0; i < 100; i++)
        nb_events_emit(ev, "test.tick",
                       json_pack("{s:s, s:i}", "vm", i % 2 ? "dev" : "ci", "i", i));
    NB_CHECK_EQ_INT(nb_store_count(st, "events"), 0);
    nb_events_flush(ev);
    NB_CHECK_EQ_INT(nb_store_count(st, "events"), 100);
    sqlite3_stmt *s = NULL;
    sqlite3_prepare_v2(nb_store_db(st), "SELECT type, vm, data FROM events ORDER BY id DESC", -1,
                       &s, NULL);
    NB_CHECK(sqlite3_step(s) == SQLITE_ROW);
    NB_CHECK_STR((const char *)sqlite3_column_text(s, 0), "test.tick");
    NB_CHECK_STR((const char *)sqlite3_column_text(s, 1), "dev");
    json_t *d = json_loads((const char *)sqlite3_column_text(s, 2), 0, NULL);
    NB_CHECK_EQ_INT(nb_json_int(d, "i", -1), 99);
    NB_CHECK(!json_object_get(d, "id") && !json_object_get(d, "type"));
    json_decref(d);
    sqlite3_finalize(s);

    /* The timer: no flush call, the loop runs until the batch is written. */
    nb_events_emit(ev, "vm.started", json_pack("{s:s}", "vm", "dev"));
    NB_CHECK_EQ_INT(nb_store_count(st, "events"), 100);
    for (int i = 0; i < 100 && nb_store_count(st, "events") == 100; i++)
        uv_run(&loop, UV_RUN_ONCE);
    NB_CHECK_EQ_INT(nb_store_count(st, "events"), 101);

    nb_events_emit(ev, "daemon.stopping", NULL);
    nb_events_free(ev);
    NB_CHECK_EQ_INT(nb_store_count(st, "events"), 102);
    uv_run(&loop, UV_RUN_DEFAULT); /* the timer's close callback */
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
    nb_store_close(st);
    unlink(path);
    rmdir(dir);
}

/* The stamp keeps the date of the last second it wrote: the same second
 * again, the next one, a jump back, a day and a year boundary, and an
 * output buffer too small for it. */
static void test_format_time(void)
{
    char t[32];
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        {1733450000000LL, "2024-12-06T01:53:20.000Z"},
        {1733450000999LL, "2024-12-06T01:53:20.999Z"},
        {1733450001007LL, "2024-12-06T01:53:21.007Z"},
        {1733450000042LL, "2024-12-06T01:53:20.042Z"},
        {1733529599999LL, "2024-12-06T23:59:59.999Z"},
        {1733529600000LL, "2024-12-07T00:00:00.000Z"},
        {1735689599500LL, "2024-12-31T23:59:59.500Z"},
        {1735689600000LL, "2025-01-01T00:00:00.000Z"},
        {0, "1970-01-01T00:00:00.000Z"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nb_events_format_time(cases[i].ms, t, sizeof t);
        NB_CHECK_STR(t, cases[i].want);
    }
    char small[11];
    nb_events_format_time(1733450000000LL, small, sizeof small);
    NB_CHECK_STR(small, "2024-12-06");
}

int main(void)
{
    NB_RUN(test_format_time);
    NB_RUN(test_emit_and_ring);
    NB_RUN(test_persisted);
    NB_RUN(test_persisted_batched);
    NB_TEST_MAIN_END();
}
