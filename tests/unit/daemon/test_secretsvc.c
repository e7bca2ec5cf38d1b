/* Unit tests for src/daemon/secretsvc: the key-file provider (refusals,
 * creation, wrong key), the serialised operations, the snapshot and its
 * watchers, and the audit guard that keeps values out of the audit log. */
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/secretsvc.h"
#include "lib/err.h"
#include "lib/json.h"
#include "nbtest.h"

static char dir[] = "/tmp/nb-test-secretsvc-XXXXXX";
static char dbpath[300], kf[300];

typedef struct {
    uv_loop_t loop;
    nb_store_t *st;
    nb_audit_t *audit;
    nb_secretsvc_t *svc;
    nb_home_t home;
    char err[512];
} env_t;

static int env_open(env_t *e, const char *key_file)
{
    memset(e, 0, sizeof *e);
    uv_loop_init(&e->loop);
    snprintf(e->home.home, sizeof e->home.home, "%s", dir);
    NB_CHECK_EQ_INT(nb_store_open(dbpath, &e->st, e->err, sizeof e->err), 0);
    NB_CHECK_EQ_INT(nb_audit_open(&e->loop, e->st, NULL, &e->audit), 0);
    nb_secretsvc_cfg_t cfg = {.key_file = key_file, .no_keyring = 1};
    int r = nb_secretsvc_new(&e->loop, e->st, e->audit, NULL, &e->home, &cfg, &e->svc, e->err,
                             sizeof e->err);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    return r;
}

static void env_close(env_t *e)
{
    uv_run(&e->loop, UV_RUN_DEFAULT);
    nb_secretsvc_close(e->svc);
    nb_audit_close(e->audit);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    nb_store_close(e->st);
    NB_CHECK_EQ_INT(uv_loop_close(&e->loop), 0);
}

static void wipe_files(void)
{
    char p[320];
    unlink(dbpath);
    snprintf(p, sizeof p, "%s-wal", dbpath);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", dbpath);
    unlink(p);
    unlink(kf);
}

static int last_status;
static json_t *last_result;

static void on_done(void *ud, int status, json_t *result)
{
    last_status = status;
    json_decref(last_result);
    last_result = result;
}

static int changes;
static void on_change(void *ud, const nb_secretsvc_snap_t *snap)
{
    changes++;
}

static int64_t count(nb_store_t *st, const char *sql)
{
    sqlite3_stmt *s = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(nb_store_db(st), sql, -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

static const char VALUE[] = "s3cr3t-value-XYZ-0123456789";

static void test_keyfile_store_and_guard(void)
{
    env_t e;
    wipe_files();
    NB_CHECK_EQ_INT(env_open(&e, kf), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_state(e.svc), NB_SECRETSVC_OPEN);
    NB_CHECK_STR(nb_secretsvc_provider(e.svc), "keyfile");
    NB_CHECK(nb_secretsvc_ca(e.svc) != NULL);
    struct stat st;
    NB_CHECK(stat(kf, &st) == 0 && (st.st_mode & 0777) == 0600);
    uint64_t w = nb_secretsvc_watch(e.svc, on_change, NULL);
    changes = 0;

    NB_CHECK_EQ_INT(nb_secretsvc_set(e.svc, "TOKEN", VALUE, strlen(VALUE), on_done, NULL), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_set(e.svc, "SHORT", "abc", 3, on_done, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(last_status, 0);
    NB_CHECK_EQ_INT(changes, 2);
    const nb_secretsvc_snap_t *sn = nb_secretsvc_snapshot(e.svc);
    NB_CHECK(sn && sn->nsealed == 2);
    NB_CHECK_STR(sn ? sn->names[0] : NULL, "SHORT");

    /* The guard finds a value alone and inside a longer string. */
    NB_CHECK(nb_secretsvc_guard(e.svc, VALUE, strlen(VALUE)));
    char buf[200];
    snprintf(buf, sizeof buf, "Authorization: Bearer %s; and more", VALUE);
    NB_CHECK(nb_secretsvc_guard(e.svc, buf, strlen(buf)));
    NB_CHECK(!nb_secretsvc_guard(e.svc, VALUE, strlen(VALUE) - 1));
    NB_CHECK(!nb_secretsvc_guard(e.svc, "TOKEN", 5));
    NB_CHECK(nb_secretsvc_guard(e.svc, "abc", 3)); /* short values: whole strings only */
    NB_CHECK(!nb_secretsvc_guard(e.svc, "xabcx", 5));

    /* ...and so the audit log never stores it, whatever a caller passes. */
    nb_audit_append(e.audit, "refusal", NULL, "x.example", 443, json_pack("{s:s}", "reason", buf));
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(count(e.st, "SELECT count(*) FROM audit WHERE detail LIKE '%s3cr3t%'"), 0);
    NB_CHECK_EQ_INT(count(e.st, "SELECT count(*) FROM audit WHERE kind = 'refusal' AND detail "
                                "LIKE '%[redacted]%'"),
                    1);
    NB_CHECK_EQ_INT(count(e.st, "SELECT count(*) FROM audit WHERE kind = 'secret.set'"), 2);

    /* Bindings: unknown secret, duplicates. */
    nb_binding_t b;
    memset(&b, 0, sizeof b);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "x-api-key: {secret}"), 0);
    snprintf(b.secret, sizeof b.secret, "TOKEN");
    snprintf(b.host, sizeof b.host, "API.Example.com");
    NB_CHECK_EQ_INT(nb_secretsvc_bind(e.svc, &b, on_done, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(last_status, 0);
    NB_CHECK_STR(nb_json_str(last_result, "host"), "api.example.com");
    NB_CHECK_EQ_INT(nb_secretsvc_bind(e.svc, &b, on_done, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(last_status, NB_EEXIST);
    snprintf(b.secret, sizeof b.secret, "NOPE");
    NB_CHECK_EQ_INT(nb_secretsvc_bind(e.svc, &b, on_done, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(last_status, NB_ENOTFOUND);
    NB_CHECK(nb_secretsvc_snapshot(e.svc)->nbindings == 1);

    /* Bad input is refused before any work is queued. */
    NB_CHECK_EQ_INT(nb_secretsvc_set(e.svc, "bad-name", "v", 1, on_done, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_secretsvc_set(e.svc, "EMPTY", "", 0, on_done, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_secretsvc_unlock(e.svc, "passphrase", 10, on_done, NULL), NB_ESTATE);

    /* Removing forgets the fingerprint too. */
    NB_CHECK_EQ_INT(nb_secretsvc_rm(e.svc, "TOKEN", on_done, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(last_status, 0);
    NB_CHECK(!nb_secretsvc_guard(e.svc, VALUE, strlen(VALUE)));
    NB_CHECK(nb_secretsvc_snapshot(e.svc)->nbindings == 0);
    NB_CHECK_EQ_INT(nb_secretsvc_list(e.svc, on_done, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(json_array_size(json_object_get(last_result, "secrets")), 1);
    nb_secretsvc_unwatch(e.svc, w);
    json_decref(last_result);
    last_result = NULL;
    env_close(&e);

    /* A restart with the same key sees the secret and rebuilds the guard. */
    NB_CHECK_EQ_INT(env_open(&e, kf), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_state(e.svc), NB_SECRETSVC_OPEN);
    NB_CHECK(nb_secretsvc_guard(e.svc, "abc", 3));
    env_close(&e);
}

static void write_key(const char *path, mode_t mode)
{
    unsigned char k[32];
    char hex[66];
    randombytes_buf(k, sizeof k);
    sodium_bin2hex(hex, sizeof hex, k, sizeof k);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    NB_CHECK(fd >= 0);
    NB_CHECK(write(fd, hex, 64) == 64);
    close(fd);
    chmod(path, mode);
}

static void test_wrong_and_unsafe_key_files(void)
{
    env_t e;
    char other[320];
    snprintf(other, sizeof other, "%s/other.key", dir);
    wipe_files();
    NB_CHECK_EQ_INT(env_open(&e, kf), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_set(e.svc, "K", "value-k", 7, on_done, NULL), 0);
    env_close(&e);

    /* Readable by others: refused, with the fix in the message. */
    write_key(other, 0644);
    NB_CHECK(env_open(&e, other) < 0);
    NB_CHECK(strstr(e.err, "mode 0644") && strstr(e.err, "chmod 600"));
    NB_CHECK(e.svc == NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    nb_audit_close(e.audit);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    nb_store_close(e.st);
    uv_loop_close(&e.loop);

    /* Private but wrong: the service runs, in the error state, reads nothing. */
    chmod(other, 0600);
    NB_CHECK_EQ_INT(env_open(&e, other), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_state(e.svc), NB_SECRETSVC_ERROR);
    NB_CHECK(strstr(nb_secretsvc_message(e.svc), "does not open this secret store") != NULL);
    NB_CHECK(nb_secretsvc_snapshot(e.svc) == NULL && nb_secretsvc_ca(e.svc) == NULL);
    NB_CHECK_EQ_INT(nb_secretsvc_list(e.svc, on_done, NULL), NB_ESTATE);
    NB_CHECK_EQ_INT(nb_secretsvc_set(e.svc, "K", "x", 1, on_done, NULL), NB_ESTATE);
    json_t *doc = json_pack("{s:b, s:[]}", "ok", 1, "checks");
    nb_secretsvc_doctor(e.svc, doc);
    NB_CHECK(!nb_json_bool(doc, "ok", 1));
    json_decref(doc);
    env_close(&e);

    /* Without the flag, the key file recorded at first use is found. */
    NB_CHECK_EQ_INT(env_open(&e, NULL), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_state(e.svc), NB_SECRETSVC_OPEN);
    env_close(&e);

    /* No key file known at all for a store sealed by one: a clear error. */
    sqlite3 *db = NULL;
    NB_CHECK_EQ_INT(sqlite3_open(dbpath, &db), SQLITE_OK);
    NB_CHECK_EQ_INT(
        sqlite3_exec(db, "DELETE FROM settings WHERE key = 'secrets.key_file'", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    NB_CHECK_EQ_INT(env_open(&e, NULL), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_state(e.svc), NB_SECRETSVC_ERROR);
    NB_CHECK(strstr(nb_secretsvc_message(e.svc), "--key-file") != NULL);
    env_close(&e);
    unlink(other);
}

static void test_new_store_without_keyring_waits_for_passphrase(void)
{
    env_t e;
    wipe_files();
    NB_CHECK_EQ_INT(env_open(&e, NULL), 0);
    NB_CHECK_EQ_INT(nb_secretsvc_state(e.svc), NB_SECRETSVC_LOCKED);
    NB_CHECK(strstr(nb_secretsvc_message(e.svc), "nilbox secret unlock") != NULL);
    NB_CHECK_EQ_INT(nb_secretsvc_unlock(e.svc, "short", 5, on_done, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_secretsvc_list(e.svc, on_done, NULL), NB_ESTATE);
    env_close(&e);
}

int main(void)
{
    if (sodium_init() < 0 || !mkdtemp(dir))
        return 1;
    snprintf(dbpath, sizeof dbpath, "%s/state.db", dir);
    snprintf(kf, sizeof kf, "%s/master.key", dir);
    NB_RUN(test_keyfile_store_and_guard);
    NB_RUN(test_wrong_and_unsafe_key_files);
    NB_RUN(test_new_store_without_keyring_waits_for_passphrase);
    wipe_files();
    rmdir(dir);
    NB_TEST_MAIN_END();
}
