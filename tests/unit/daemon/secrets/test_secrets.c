/* Unit tests for src/daemon/secrets: the sealed store, master key
 * providers and bindings. THREATS.md A23 (no value at rest or in logs)
 * and A24 (no master key -> nothing; tampering and swapping detected).
 *
 * `test_secrets --keyring-live` runs only the real OS keyring round trip;
 * tests/integ/test_keyring.py calls it inside a private D-Bus session with
 * gnome-keyring. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "daemon/secrets/masterkey.h"
#include "daemon/secrets/secrets.h"
#include "lib/err.h"
#include "nbtest.h"

static char tmpdir[256];
static char logpath[300];
static int saved_stderr = -1;

static const char *VALUE1 = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0";
static const char *VALUE2 = "ghp_ZZtopSecretValue0123456789abcdefXY";

static sqlite3 *open_db(const char *name)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return NULL;
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (sqlite3_exec(db, nb_secrets_migration_sql, NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

static nb_mkey_t *raw_key(uint8_t fill)
{
    uint8_t k[NB_MKEY_BYTES];
    memset(k, fill, sizeof(k));
    nb_mkey_t *mk = NULL;
    nb_mkey_from_bytes(NB_MKEY_RAW, k, &mk);
    return mk;
}

/* 1 when `needle` occurs anywhere in the file's bytes. */
static int file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t cap = 1 << 20, len = 0, n;
    char *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    int found = buf && memmem(buf, len, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

/* Flips one bit of the stored ciphertext of `name`. */
static int flip_ct_bit(sqlite3 *db, const char *name, int at)
{
    sqlite3_stmt *st;
    uint8_t ct[1024];
    int n = -1;
    sqlite3_prepare_v2(db, "SELECT ct FROM secrets WHERE name = ?", -1, &st, NULL);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) <= (int)sizeof(ct)) {
        n = sqlite3_column_bytes(st, 0);
        memcpy(ct, sqlite3_column_blob(st, 0), (size_t)n);
    }
    sqlite3_finalize(st);
    if (n <= at)
        return -1;
    ct[at] ^= 1;
    sqlite3_prepare_v2(db, "UPDATE secrets SET ct = ? WHERE name = ?", -1, &st, NULL);
    sqlite3_bind_blob(st, 1, ct, n, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    int r = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    return r;
}

static void test_names(void)
{
    NB_CHECK(nb_secrets_name_valid("OPENAI_API_KEY"));
    NB_CHECK(nb_secrets_name_valid("_x1"));
    NB_CHECK(!nb_secrets_name_valid(""));
    NB_CHECK(!nb_secrets_name_valid("1ABC"));
    NB_CHECK(!nb_secrets_name_valid("A-B"));
    NB_CHECK(!nb_secrets_name_valid("nilbox.ca.key"));
    NB_CHECK(!nb_secrets_name_valid("A B"));
    char longname[200];
    memset(longname, 'A', sizeof(longname));
    longname[129] = 0;
    NB_CHECK(!nb_secrets_name_valid(longname));
    longname[128] = 0;
    NB_CHECK(nb_secrets_name_valid(longname));
}

static void test_roundtrip(void)
{
    sqlite3 *db = open_db("rt.db");
    nb_mkey_t *mk = raw_key(7);
    nb_secrets_t *s = NULL;
    NB_CHECK(db && mk);
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    char prov[32];
    NB_CHECK_EQ_INT(nb_secrets_provider(db, prov, sizeof(prov)), 0);
    NB_CHECK_STR(prov, "raw");

    NB_CHECK_EQ_INT(nb_secrets_set(s, "OPENAI_API_KEY", VALUE1, strlen(VALUE1)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "GITHUB_TOKEN", VALUE2, strlen(VALUE2)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "bad name", "x", 1), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "EMPTY", "", 0), NB_EINVAL);

    nb_secret_value_t v;
    NB_CHECK_EQ_INT(nb_secrets_get(s, "OPENAI_API_KEY", &v), 0);
    NB_CHECK(v.len == strlen(VALUE1) && memcmp(v.p, VALUE1, v.len) == 0);
    nb_secret_value_free(&v);
    NB_CHECK(v.p == NULL);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "NOPE", &v), NB_ENOTFOUND);

    /* Replace: version goes up, the old value is gone. */
    NB_CHECK_EQ_INT(nb_secrets_set(s, "OPENAI_API_KEY", "new-value", 9), 0);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "OPENAI_API_KEY", &v), 0);
    NB_CHECK(v.len == 9 && memcmp(v.p, "new-value", 9) == 0);
    NB_CHECK_STR((const char *)v.p, "new-value");
    nb_secret_value_free(&v);

    nb_secret_info_t *ls = NULL;
    size_t n = 0;
    NB_CHECK_EQ_INT(nb_secrets_ls(s, &ls, &n), 0);
    NB_CHECK_EQ_INT(n, 2);
    if (n == 2) {
        NB_CHECK_STR(ls[0].name, "GITHUB_TOKEN");
        NB_CHECK_EQ_INT(ls[0].version, 1);
        NB_CHECK_STR(ls[1].name, "OPENAI_API_KEY");
        NB_CHECK_EQ_INT(ls[1].version, 2);
        NB_CHECK(ls[1].created_at > 0 && ls[1].updated_at >= ls[1].created_at);
    }
    free(ls);

    /* Internal records: own namespace, invisible to user-facing calls (A2). */
    NB_CHECK_EQ_INT(nb_secrets_put_internal(s, "nilbox.ca.key", "PRIVKEY", 7), 0);
    NB_CHECK_EQ_INT(nb_secrets_put_internal(s, "OPENAI_API_KEY", "x", 1), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "nilbox.ca.key", &v), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_secrets_get_internal(s, "nilbox.ca.key", &v), 0);
    NB_CHECK(v.len == 7 && memcmp(v.p, "PRIVKEY", 7) == 0);
    nb_secret_value_free(&v);
    NB_CHECK_EQ_INT(nb_secrets_get_internal(s, "OPENAI_API_KEY", &v), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_secrets_ls(s, &ls, &n), 0);
    NB_CHECK_EQ_INT(n, 2);
    free(ls);

    NB_CHECK_EQ_INT(nb_secrets_rm(s, "GITHUB_TOKEN"), 0);
    NB_CHECK_EQ_INT(nb_secrets_rm(s, "GITHUB_TOKEN"), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "GITHUB_TOKEN", &v), NB_ENOTFOUND);
    nb_secrets_close(s);

    /* Reopen with the same key: values survive. */
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "OPENAI_API_KEY", &v), 0);
    NB_CHECK(v.len == 9);
    nb_secret_value_free(&v);
    nb_secrets_close(s);
    nb_mkey_free(mk);
    sqlite3_close(db);
}

/* A24: without the master key the store yields nothing. */
static void test_A24_wrong_master_key(void)
{
    sqlite3 *db = open_db("a24key.db");
    nb_mkey_t *good = raw_key(1), *bad = raw_key(2);
    nb_secrets_t *s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, good, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "K", VALUE1, strlen(VALUE1)), 0);
    nb_secrets_close(s);
    s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, bad, &s), NB_EAUTH);
    NB_CHECK(s == NULL);

    /* Tampered wrapped data key: refused even with the right master key. */
    sqlite3_exec(db,
                 /* Always a different byte (the old one may happen to be 0). */
                 "UPDATE secret_meta SET v = substr(v, 1, 40) || "
                 "CASE WHEN substr(v, 41, 1) = x'00' THEN x'01' ELSE x'00' END || "
                 "substr(v, 42) WHERE k = 'datakey'",
                 NULL, NULL, NULL);
    NB_CHECK_EQ_INT(nb_secrets_open(db, good, &s), NB_EAUTH);

    /* Re-keying: the old master key stops working, the new one works. */
    sqlite3 *db2 = open_db("rekey.db");
    NB_CHECK_EQ_INT(nb_secrets_open(db2, good, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "K", VALUE1, strlen(VALUE1)), 0);
    NB_CHECK_EQ_INT(nb_secrets_rekey(s, bad), 0);
    nb_secrets_close(s);
    NB_CHECK_EQ_INT(nb_secrets_open(db2, good, &s), NB_EAUTH);
    NB_CHECK_EQ_INT(nb_secrets_open(db2, bad, &s), 0);
    nb_secret_value_t v;
    NB_CHECK_EQ_INT(nb_secrets_get(s, "K", &v), 0);
    NB_CHECK(v.len == strlen(VALUE1));
    nb_secret_value_free(&v);
    nb_secrets_close(s);
    sqlite3_close(db2);
    nb_mkey_free(good);
    nb_mkey_free(bad);
    sqlite3_close(db);
}

/* A24: a flipped bit, swapped ciphertexts, a renamed or re-versioned record
 * all fail to open. */
static void test_A24_tamper_and_swap(void)
{
    sqlite3 *db = open_db("a24tamper.db");
    nb_mkey_t *mk = raw_key(3);
    nb_secrets_t *s = NULL;
    nb_secret_value_t v;
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "AAA", VALUE1, strlen(VALUE1)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "BBB", VALUE2, strlen(VALUE2)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "CCC", "c-value", 7), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "DDD", "d-value", 7), 0);

    /* Swap AAA's and BBB's (nonce, ct). */
    NB_CHECK_EQ_INT(sqlite3_exec(db,
                                 "CREATE TEMP TABLE t AS SELECT name, nonce, ct FROM secrets;"
                                 "UPDATE secrets SET nonce = (SELECT nonce FROM t WHERE name = "
                                 "'BBB'), ct = (SELECT ct FROM t WHERE name = 'BBB') "
                                 "WHERE name = 'AAA';"
                                 "UPDATE secrets SET nonce = (SELECT nonce FROM t WHERE name = "
                                 "'AAA'), ct = (SELECT ct FROM t WHERE name = 'AAA') "
                                 "WHERE name = 'BBB';",
                                 NULL, NULL, NULL),
                    SQLITE_OK);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "AAA", &v), NB_ECRYPTO);
    NB_CHECK(v.p == NULL);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "BBB", &v), NB_ECRYPTO);

    /* Flip one ciphertext bit of CCC. */
    NB_CHECK_EQ_INT(flip_ct_bit(db, "CCC", 3), 0);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "CCC", &v), NB_ECRYPTO);

    /* Version rolled back: the AD no longer matches. */
    sqlite3_exec(db, "UPDATE secrets SET version = version + 1 WHERE name = 'DDD'", NULL, NULL,
                 NULL);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "DDD", &v), NB_ECRYPTO);

    /* Renamed record: DDD's row renamed to EEE is not readable as EEE. */
    NB_CHECK_EQ_INT(nb_secrets_set(s, "FFF", "f-value", 7), 0);
    sqlite3_exec(db, "UPDATE secrets SET name = 'EEE' WHERE name = 'FFF'", NULL, NULL, NULL);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "EEE", &v), NB_ECRYPTO);

    /* A user record moved into the internal namespace stays sealed. */
    NB_CHECK_EQ_INT(nb_secrets_set(s, "GGG", "g-value", 7), 0);
    sqlite3_exec(db, "UPDATE secrets SET kind = 'internal', name = 'nilbox.GGG' WHERE name='GGG'",
                 NULL, NULL, NULL);
    NB_CHECK_EQ_INT(nb_secrets_get_internal(s, "nilbox.GGG", &v), NB_ECRYPTO);
    nb_secrets_close(s);
    nb_mkey_free(mk);
    sqlite3_close(db);
}

/* The in-memory sealed copies used on the proxy's hot path: same checks. */
static void test_sealed_snapshot(void)
{
    sqlite3 *db = open_db("sealed.db");
    nb_mkey_t *mk = raw_key(11);
    nb_secrets_t *s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "BBB", VALUE2, strlen(VALUE2)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "AAA", VALUE1, strlen(VALUE1)), 0);
    NB_CHECK_EQ_INT(nb_secrets_put_internal(s, "nilbox.x", "internal", 8), 0);
    nb_sealed_t *v = NULL;
    size_t n = 0;
    NB_CHECK_EQ_INT(nb_secrets_load_sealed(s, &v, &n), 0);
    NB_CHECK_EQ_INT(n, 2); /* user secrets only */
    nb_secret_value_t out;
    if (n == 2) {
        NB_CHECK_STR(v[0].name, "AAA");
        NB_CHECK(!memmem(v[0].ct, v[0].ctlen, VALUE1, strlen(VALUE1)));
        NB_CHECK_EQ_INT(nb_secrets_unseal(s, &v[0], &out), 0);
        NB_CHECK(out.len == strlen(VALUE1) && memcmp(out.p, VALUE1, out.len) == 0);
        nb_secret_value_free(&out);
        /* Into caller memory (the injector's locked work area). */
        uint8_t *buf = sodium_malloc(64);
        size_t len = 99;
        NB_CHECK_EQ_INT(nb_secrets_unseal_to(s, &v[0], buf, 10, &len), NB_ETOOBIG);
        NB_CHECK_EQ_INT(len, 0);
        NB_CHECK_EQ_INT(nb_secrets_unseal_to(s, &v[0], buf, 64, &len), 0);
        NB_CHECK(len == strlen(VALUE1) && memcmp(buf, VALUE1, len) == 0);
        nb_sealed_t bad = v[0];
        bad.version = 77;
        NB_CHECK_EQ_INT(nb_secrets_unseal_to(s, &bad, buf, 64, &len), NB_ECRYPTO);
        int zero = 1;
        for (size_t i = 0; i < strlen(VALUE1); i++)
            zero &= buf[i] == 0;
        NB_CHECK(zero); /* nothing of the value left behind */
        sodium_free(buf);
        /* Renamed in memory: refused. */
        nb_sealed_t e = v[1];
        snprintf(e.name, sizeof(e.name), "AAA");
        NB_CHECK_EQ_INT(nb_secrets_unseal(s, &e, &out), NB_ECRYPTO);
        NB_CHECK(out.p == NULL);
        e = v[1];
        e.version++;
        NB_CHECK_EQ_INT(nb_secrets_unseal(s, &e, &out), NB_ECRYPTO);
        v[1].ct[0] ^= 0x80;
        NB_CHECK_EQ_INT(nb_secrets_unseal(s, &v[1], &out), NB_ECRYPTO);
    }
    nb_sealed_free(v, n);
    nb_sealed_free(NULL, 0);
    nb_secrets_close(s);
    nb_mkey_free(mk);
    sqlite3_close(db);
}

/* A23: the value never appears in the database files or in the logs. */
static void test_A23_no_value_at_rest(void)
{
    sqlite3 *db = open_db("a23.db");
    nb_mkey_t *mk = raw_key(9);
    nb_secrets_t *s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "OPENAI_API_KEY", VALUE1, strlen(VALUE1)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "GITHUB_TOKEN", VALUE2, strlen(VALUE2)), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "GITHUB_TOKEN", VALUE2, strlen(VALUE2)), 0);
    nb_secret_value_t v;
    NB_CHECK_EQ_INT(nb_secrets_get(s, "GITHUB_TOKEN", &v), 0);
    nb_secret_value_free(&v);
    /* A failing get logs: make sure that path prints no value either. */
    sqlite3_exec(db, "UPDATE secrets SET version = 99 WHERE name = 'GITHUB_TOKEN'", NULL, NULL,
                 NULL);
    NB_CHECK_EQ_INT(nb_secrets_get(s, "GITHUB_TOKEN", &v), NB_ECRYPTO);
    nb_secrets_close(s);
    nb_mkey_free(mk);
    char path[400];
    snprintf(path, sizeof(path), "%s/a23.db-wal", tmpdir);
    NB_CHECK(access(path, F_OK) == 0); /* the WAL exists: it is checked too */
    NB_CHECK(!file_contains(path, VALUE1));
    NB_CHECK(!file_contains(path, VALUE2));
    NB_CHECK(!file_contains(path, "sk-live"));
    sqlite3_close(db); /* checkpoints into the main file */
    snprintf(path, sizeof(path), "%s/a23.db", tmpdir);
    NB_CHECK(file_contains(path, "OPENAI_API_KEY")); /* names are not secret... */
    NB_CHECK(!file_contains(path, VALUE1));          /* ...values are */
    NB_CHECK(!file_contains(path, VALUE2));
    NB_CHECK(!file_contains(path, "sk-live"));
    fflush(stderr);
    NB_CHECK(!file_contains(logpath, VALUE1));
    NB_CHECK(!file_contains(logpath, VALUE2));
}

static void test_keyfile(void)
{
    char path[400], link[400];
    snprintf(path, sizeof(path), "%s/master.key", tmpdir);
    snprintf(link, sizeof(link), "%s/master.link", tmpdir);
    nb_mkey_t *a = NULL, *b = NULL;
    NB_CHECK_EQ_INT(nb_mkey_keyfile_create(path, &a), 0);
    NB_CHECK(a != NULL);
    struct stat st;
    NB_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_size == 65);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_create(path, &b), -EEXIST);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(path, &b), 0);
    NB_CHECK(b && a && memcmp(nb_mkey_bytes(a), nb_mkey_bytes(b), NB_MKEY_BYTES) == 0);
    NB_CHECK(b && nb_mkey_kind(b) == NB_MKEY_KEYFILE);
    nb_mkey_free(b);
    b = NULL;
    /* Other modes are refused before anything is read. */
    chmod(path, 0640);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(path, &b), -EPERM);
    chmod(path, 0604);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(path, &b), -EPERM);
    chmod(path, 0400);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(path, &b), 0);
    nb_mkey_free(b);
    b = NULL;
    chmod(path, 0600);
    NB_CHECK(symlink(path, link) == 0);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(link, &b), -ELOOP);
    NB_CHECK(b == NULL);
    /* Garbage content. */
    int fd = open(path, O_WRONLY | O_TRUNC);
    NB_CHECK(fd >= 0 && write(fd, "not hex\n", 8) == 8);
    close(fd);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(path, &b), NB_EPARSE);
    char missing[420];
    snprintf(missing, sizeof(missing), "%s/none.key", tmpdir);
    NB_CHECK_EQ_INT(nb_mkey_keyfile_load(missing, &b), -ENOENT);
    nb_mkey_free(a);
}

static void test_passphrase(void)
{
    sqlite3 *db = open_db("pass.db");
    nb_kdf_params_t kp, kp2;
    NB_CHECK_EQ_INT(nb_secrets_kdf_params(db, &kp), 0);
    NB_CHECK_EQ_INT(nb_secrets_kdf_params(db, &kp2), 0);
    NB_CHECK(memcmp(kp.salt, kp2.salt, sizeof(kp.salt)) == 0); /* stored, reused */
    NB_CHECK(kp.opslimit == crypto_pwhash_OPSLIMIT_MODERATE);
    /* Keep the unit test quick: small limits (the stored ones are MODERATE). */
    kp.opslimit = crypto_pwhash_OPSLIMIT_MIN;
    kp.memlimit = crypto_pwhash_MEMLIMIT_MIN;
    nb_mkey_t *a = NULL, *b = NULL;
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase("correct horse", 13, &kp, &a), 0);
    nb_secrets_t *s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, a, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "K", "v", 1), 0);
    nb_secrets_close(s);
    s = NULL;
    char prov[32];
    nb_secrets_provider(db, prov, sizeof(prov));
    NB_CHECK_STR(prov, "passphrase");
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase("correct horsE", 13, &kp, &b), 0);
    NB_CHECK_EQ_INT(nb_secrets_open(db, b, &s), NB_EAUTH);
    nb_mkey_free(b);
    b = NULL;
    /* Same passphrase from a private file (trailing newline dropped). */
    char path[400];
    snprintf(path, sizeof(path), "%s/pass.txt", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    NB_CHECK(fd >= 0 && write(fd, "correct horse\n", 14) == 14);
    close(fd);
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase_file(path, &kp, &b), 0);
    NB_CHECK_EQ_INT(nb_secrets_open(db, b, &s), 0);
    nb_secrets_close(s);
    nb_mkey_free(b);
    b = NULL;
    chmod(path, 0644);
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase_file(path, &kp, &b), -EPERM);
    /* A tampered database cannot make us burn CPU or memory. */
    nb_kdf_params_t evil = kp;
    evil.memlimit = 1ULL << 40;
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase("x", 1, &evil, &b), NB_EINVAL);
    evil = kp;
    evil.opslimit = 1000000;
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase("x", 1, &evil, &b), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_mkey_from_passphrase("", 0, &kp, &b), NB_EINVAL);
    nb_mkey_free(a);
    sqlite3_close(db);
}

/* Headless machine: the keyring is reported unavailable, quickly. */
static void test_keyring_headless(void)
{
    nb_mkey_t *mk = NULL;
    unsetenv("DBUS_SESSION_BUS_ADDRESS");
    unsetenv("XDG_RUNTIME_DIR");
    NB_CHECK_EQ_INT(nb_mkey_from_keyring("/tmp/nilbox-test", 1, 2000, &mk), NB_EUNSUPPORTED);
    NB_CHECK(mk == NULL);
    /* A bus address that leads nowhere: an error, not a hang. */
    char addr[400];
    snprintf(addr, sizeof(addr), "unix:path=%s/no-such-bus", tmpdir);
    setenv("DBUS_SESSION_BUS_ADDRESS", addr, 1);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = nb_mkey_from_keyring("/tmp/nilbox-test", 1, 3000, &mk);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    NB_CHECK(r == NB_EUNSUPPORTED || r == NB_ETIMEOUT);
    NB_CHECK(mk == NULL);
    NB_CHECK(t1.tv_sec - t0.tv_sec <= 4); /* bounded by the timeout */
    unsetenv("DBUS_SESSION_BUS_ADDRESS");
}

/* One decision for "is this path under the prefix" (A4) and for "does
 * this binding name the host", for every placement: the injector, the
 * SigV4 re-signer and the response scanner's choice all use them. */
static void test_binding_path_ok(void)
{
    nb_binding_t b;
    memset(&b, 0, sizeof(b));
    NB_CHECK(nb_binding_path_ok(&b, NB_IOV_STR("/../anything"))); /* no prefix: any path */
    snprintf(b.path_prefix, sizeof(b.path_prefix), "/v1");
    static const char *const good[] = {
        "/v1",     "/v1/", "/v1/models", "/v1?x=/../", "/v1/a#/../..", "/v1/a.b/c..d/.e",
        "/v1/%41", NULL};
    for (size_t i = 0; good[i]; i++)
        NB_CHECK(nb_binding_path_ok(&b, nb_iov(good[i], strlen(good[i]))));
    static const char *const bad[] = {
        "/v1/../admin", "/v1/..",     "/v1/.",  "/v1/./x",   "/v1//x",     "/v1/%2e%2e/x",
        "/v1/%2E%2E/x", "/v1%2f..",   "/v1%2F", "/v1/x%5cy", "/v1/x%00",   "/v1/..;/x",
        "/v1;x",        "/v1\\..\\x", "/v10",   "/v",        "v1/x",       "",
        "/V1/x",        "*",          "/x/v1",  "//v1/x",    "/v1/a/../b", "/v1/%252e%252e/x",
        "/v1%252f..",   NULL};
    for (size_t i = 0; bad[i]; i++)
        NB_CHECK(!nb_binding_path_ok(&b, nb_iov(bad[i], strlen(bad[i]))));
    /* Hosts: exact, or one more label under a wildcard. */
    snprintf(b.host, sizeof(b.host), "api.example.com");
    NB_CHECK(nb_binding_host_ok(&b, "api.example.com"));
    NB_CHECK(!nb_binding_host_ok(&b, "x.api.example.com") &&
             !nb_binding_host_ok(&b, "example.com"));
    snprintf(b.host, sizeof(b.host), "*.example.com");
    NB_CHECK(nb_binding_host_ok(&b, "a.example.com") && nb_binding_host_ok(&b, "a.b.example.com"));
    NB_CHECK(!nb_binding_host_ok(&b, "example.com") && !nb_binding_host_ok(&b, ".example.com"));
    NB_CHECK(!nb_binding_host_ok(&b, "aexample.com") &&
             !nb_binding_host_ok(&b, "example.com.evil"));
    snprintf(b.host, sizeof(b.host), "10.0.0.1");
    NB_CHECK(nb_binding_host_ok(&b, "10.0.0.1") && !nb_binding_host_ok(&b, "10.0.0.10"));
}

static void test_bindings(void)
{
    sqlite3 *db = open_db("bind.db");
    nb_mkey_t *mk = raw_key(5);
    nb_secrets_t *s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    NB_CHECK_EQ_INT(nb_secrets_set(s, "OPENAI_API_KEY", VALUE1, strlen(VALUE1)), 0);

    nb_binding_t b;
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Authorization: Bearer {secret}"), 0);
    NB_CHECK_STR(b.header, "Authorization");
    NB_CHECK_STR(b.tmpl, "Bearer {secret}");
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "x-api-key:{secret}"), 0);
    NB_CHECK_STR(b.tmpl, "{secret}");
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Authorization: Bearer"), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Authorization: {secret} {secret}"), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Bad Header: {secret}"), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Host: {secret}"), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "X: a\r\nY: {secret}"), NB_EINVAL);

    /* nb_binding_set_header validates a binding without a secret name: fill it after. */
    memset(&b, 0, sizeof(b));
    snprintf(b.secret, sizeof(b.secret), "OPENAI_API_KEY");
    snprintf(b.host, sizeof(b.host), "API.OpenAI.com.");
    snprintf(b.header, sizeof(b.header), "Authorization");
    snprintf(b.tmpl, sizeof(b.tmpl), "Bearer {secret}");
    snprintf(b.path_prefix, sizeof(b.path_prefix), "/v1/");
    b.placement = NB_PLACE_HEADER;
    int64_t id1 = 0, id2 = 0, id3 = 0;
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &b, &id1), 0);
    NB_CHECK(id1 > 0);
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &b, NULL), NB_EEXIST);

    nb_binding_t q = b;
    q.placement = NB_PLACE_QUERY;
    snprintf(q.param, sizeof(q.param), "key");
    snprintf(q.host, sizeof(q.host), "*.googleapis.com");
    q.path_prefix[0] = 0;
    snprintf(q.vm, sizeof(q.vm), "dev");
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &q, &id2), 0);

    nb_binding_t u = b;
    u.placement = NB_PLACE_BASIC;
    snprintf(u.user, sizeof(u.user), "apikey");
    snprintf(u.host, sizeof(u.host), "10.0.0.1");
    u.allow_cleartext = 7;
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &u, &id3), 0);

    nb_binding_t bad = b;
    snprintf(bad.secret, sizeof(bad.secret), "NOT_THERE");
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &bad, NULL), NB_ENOTFOUND);
    bad = b;
    snprintf(bad.host, sizeof(bad.host), "exa mple.com");
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &bad, NULL), NB_EINVAL);
    bad = b;
    snprintf(bad.path_prefix, sizeof(bad.path_prefix), "/v1/../admin");
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &bad, NULL), NB_EINVAL);
    bad = u;
    snprintf(bad.user, sizeof(bad.user), "a:b");
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &bad, NULL), NB_EINVAL);
    bad = q;
    snprintf(bad.param, sizeof(bad.param), "k&x");
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &bad, NULL), NB_EINVAL);
    bad = b;
    bad.placement = 9;
    NB_CHECK_EQ_INT(nb_secrets_bind(s, &bad, NULL), NB_EINVAL);

    nb_binding_t *list = NULL;
    size_t n = 0;
    NB_CHECK_EQ_INT(nb_secrets_bindings(s, &list, &n), 0);
    NB_CHECK_EQ_INT(n, 3);
    if (n == 3) {
        NB_CHECK_STR(list[0].host, "api.openai.com");
        NB_CHECK_STR(list[0].path_prefix, "/v1");
        NB_CHECK_STR(list[0].tmpl, "Bearer {secret}");
        NB_CHECK_EQ_INT(list[0].placement, NB_PLACE_HEADER);
        NB_CHECK_STR(list[1].host, "*.googleapis.com");
        NB_CHECK_STR(list[1].param, "key");
        NB_CHECK_STR(list[1].vm, "dev");
        NB_CHECK_STR(list[2].header, "Authorization");
        NB_CHECK_STR(list[2].user, "apikey");
        NB_CHECK_EQ_INT(list[2].allow_cleartext, 1);
    }
    free(list);

    nb_secret_info_t *ls = NULL;
    NB_CHECK_EQ_INT(nb_secrets_ls(s, &ls, &n), 0);
    NB_CHECK(n == 1 && ls[0].nbindings == 3);
    free(ls);

    /* A row edited behind our back (secret steered elsewhere) is ignored. */
    sqlite3_exec(db, "UPDATE secret_bindings SET host = 'evil.example' WHERE id = 1", NULL, NULL,
                 NULL);
    NB_CHECK_EQ_INT(nb_secrets_bindings(s, &list, &n), 0);
    NB_CHECK_EQ_INT(n, 2);
    for (size_t i = 0; i < n; i++)
        NB_CHECK(strcmp(list[i].host, "evil.example") != 0);
    free(list);

    NB_CHECK_EQ_INT(nb_secrets_unbind(s, id2), 0);
    NB_CHECK_EQ_INT(nb_secrets_unbind(s, id2), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_secrets_rm(s, "OPENAI_API_KEY"), 0);
    NB_CHECK_EQ_INT(nb_secrets_bindings(s, &list, &n), 0);
    NB_CHECK_EQ_INT(n, 0);
    free(list);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM secret_bindings", -1, &st, NULL);
    NB_CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 0);
    sqlite3_finalize(st);
    nb_secrets_close(s);
    nb_mkey_free(mk);
    sqlite3_close(db);
}

/* The real OS keyring (needs a Secret Service on the session bus). */
static int keyring_live(void)
{
    char id[64];
    snprintf(id, sizeof(id), "/tmp/nilbox-keyring-test-%d", (int)getpid());
    nb_mkey_t *a = NULL, *b = NULL;
    NB_CHECK_EQ_INT(nb_mkey_from_keyring(id, 0, 10000, &a), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_mkey_from_keyring(id, 1, 10000, &a), 0);
    NB_CHECK_EQ_INT(nb_mkey_from_keyring(id, 0, 10000, &b), 0);
    NB_CHECK(a && b && memcmp(nb_mkey_bytes(a), nb_mkey_bytes(b), NB_MKEY_BYTES) == 0);
    NB_CHECK(a && nb_mkey_kind(a) == NB_MKEY_KEYRING);
    NB_CHECK_EQ_INT(nb_mkey_keyring_clear(id, 10000), 0);
    nb_mkey_free(b);
    b = NULL;
    NB_CHECK_EQ_INT(nb_mkey_from_keyring(id, 0, 10000, &b), NB_ENOTFOUND);
    nb_mkey_free(a);
    NB_TEST_MAIN_END();
}

static void cleanup(void)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 1;
    if (argc > 1 && strcmp(argv[1], "--keyring-live") == 0)
        return keyring_live();
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/nb-test-secrets-XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    /* Capture our own log output to check it for secret values (A23). */
    snprintf(logpath, sizeof(logpath), "%s/log.txt", tmpdir);
    saved_stderr = dup(2);
    int lfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (lfd >= 0) {
        dup2(lfd, 2);
        close(lfd);
    }
    NB_RUN(test_names);
    NB_RUN(test_binding_path_ok);
    NB_RUN(test_roundtrip);
    NB_RUN(test_A24_wrong_master_key);
    NB_RUN(test_A24_tamper_and_swap);
    NB_RUN(test_sealed_snapshot);
    NB_RUN(test_A23_no_value_at_rest);
    NB_RUN(test_keyfile);
    NB_RUN(test_passphrase);
    NB_RUN(test_keyring_headless);
    NB_RUN(test_bindings);
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    if (nbt_failures) { /* show what the code logged */
        FILE *f = fopen(logpath, "r");
        char line[512];
        while (f && fgets(line, sizeof(line), f))
            fputs(line, stderr);
        if (f)
            fclose(f);
    }
    cleanup();
    NB_TEST_MAIN_END();
}
