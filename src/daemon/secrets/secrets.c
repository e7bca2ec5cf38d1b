#include "daemon/secrets/secrets.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "lib/hostname.h"
#include "lib/err.h"
#include "lib/log.h"

const char nb_secrets_migration_sql[] =
    "CREATE TABLE IF NOT EXISTS secret_meta (\n"
    "  k TEXT PRIMARY KEY,\n"
    "  v BLOB NOT NULL\n"
    ");\n"
    "CREATE TABLE IF NOT EXISTS secrets (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  kind TEXT NOT NULL CHECK (kind IN ('user', 'internal')),\n"
    "  name TEXT NOT NULL,\n"
    "  version INTEGER NOT NULL,\n"
    "  nonce BLOB NOT NULL,\n"
    "  ct BLOB NOT NULL,\n"
    "  created_at INTEGER NOT NULL,\n"
    "  updated_at INTEGER NOT NULL,\n"
    "  UNIQUE (kind, name)\n"
    ");\n"
    "CREATE TABLE IF NOT EXISTS secret_bindings (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  secret_id INTEGER NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,\n"
    "  host TEXT NOT NULL,\n"
    "  path_prefix TEXT NOT NULL DEFAULT '',\n"
    "  placement TEXT NOT NULL CHECK (placement IN ('header', 'basic', 'query')),\n"
    "  header TEXT NOT NULL DEFAULT '',\n"
    "  tmpl TEXT NOT NULL DEFAULT '',\n"
    "  user TEXT NOT NULL DEFAULT '',\n"
    "  param TEXT NOT NULL DEFAULT '',\n"
    "  vm TEXT NOT NULL DEFAULT '',\n"
    "  allow_cleartext INTEGER NOT NULL DEFAULT 0,\n"
    "  mac BLOB NOT NULL,\n"
    "  created_at INTEGER NOT NULL,\n"
    "  UNIQUE (secret_id, host, path_prefix, placement, header, user, param, vm)\n"
    ");\n"
    "CREATE INDEX IF NOT EXISTS secret_bindings_secret ON secret_bindings(secret_id);\n";

#define AEAD_NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define AEAD_TAG crypto_aead_xchacha20poly1305_ietf_ABYTES
#define DK_BLOB_LEN (1 + AEAD_NONCE + NB_SECRETS_KEY_BYTES + AEAD_TAG)
#define DK_AD "nilbox:datakey:v1"
#define KDF_BLOB_LEN (1 + NB_MKEY_SALT_BYTES + 8 + 8)

_Static_assert(sizeof(((nb_sealed_t *)0)->nonce) == AEAD_NONCE, "nonce size");

struct nb_secrets {
    sqlite3 *db;
    uint8_t *dk;      /* data key, sodium_malloc */
    uint8_t *bindkey; /* MAC key for binding rows, derived from dk */
};

void nb_secret_value_free(nb_secret_value_t *v)
{
    if (!v)
        return;
    sodium_free(v->p); /* wipes */
    v->p = NULL;
    v->len = 0;
}

/* kind "user": nb_secrets_name_valid; "internal": "nilbox.*". */
static int name_valid(const char *kind, const char *name)
{
    if (!strcmp(kind, "user"))
        return nb_secrets_name_valid(name);
    size_t n = strlen(name);
    return n > 7 && n <= NB_SECRETS_NAME_MAX && memcmp(name, "nilbox.", 7) == 0;
}

/* ---- sqlite helpers ------------------------------------------------------ */

static int db_err(sqlite3 *db, const char *what)
{
    /* Parameters are bound, never spliced: the message cannot hold a value. */
    nb_log(NB_LOG_ERR, "secrets: %s: %s", what, sqlite3_errmsg(db));
    int ec = sqlite3_errcode(db);
    if (ec == SQLITE_CONSTRAINT)
        return NB_EEXIST;
    if (ec == SQLITE_NOMEM)
        return -ENOMEM;
    return NB_EINTERNAL;
}

/* Room for element `cnt` of a growing array (capacity doubling from
 * `first`). Returns the array, moved or not, or NULL when out of memory
 * (the old one stays valid and the caller frees it). */
static void *grow(void *v, size_t cnt, size_t *cap, size_t elsz, size_t first)
{
    if (cnt < *cap)
        return v;
    size_t nc = *cap ? *cap * 2 : first;
    void *nv = realloc(v, nc * elsz);
    if (nv)
        *cap = nc;
    return nv;
}

static int prep(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
        return db_err(db, "prepare");
    return 0;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return db_err(db, "exec");
    return 0;
}

/* Savepoints nest inside whatever transaction the caller has open. */
static int tx_begin(sqlite3 *db)
{
    return exec_sql(db, "SAVEPOINT nb_secrets");
}

static int tx_end(sqlite3 *db, int r)
{
    if (r < 0) {
        sqlite3_exec(db, "ROLLBACK TO nb_secrets; RELEASE nb_secrets", NULL, NULL, NULL);
        return r;
    }
    return exec_sql(db, "RELEASE nb_secrets");
}

/* Reads meta value `k` into buf (exactly `len` bytes expected).
 * 1 found, 0 absent, <0 error (NB_EPARSE for a wrong length). */
static int meta_get(sqlite3 *db, const char *k, void *buf, size_t len)
{
    sqlite3_stmt *st;
    int r = prep(db, "SELECT v FROM secret_meta WHERE k = ?", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 0);
        if ((size_t)sqlite3_column_bytes(st, 0) != len || (len && !p)) {
            r = NB_EPARSE;
        } else {
            memcpy(buf, p, len);
            r = 1;
        }
    } else if (s == SQLITE_DONE) {
        r = 0;
    } else {
        r = db_err(db, "meta_get");
    }
    sqlite3_finalize(st);
    return r;
}

static int meta_put(sqlite3 *db, const char *k, const void *v, size_t len)
{
    sqlite3_stmt *st;
    int r = prep(db,
                 "INSERT INTO secret_meta (k, v) VALUES (?, ?) "
                 "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                 &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, v, (int)len, SQLITE_STATIC);
    r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_err(db, "meta_put");
    sqlite3_finalize(st);
    return r;
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t rd_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

int nb_secrets_kdf_params(sqlite3 *db, nb_kdf_params_t *out)
{
    uint8_t blob[KDF_BLOB_LEN];
    int r = meta_get(db, "kdf", blob, sizeof(blob));
    if (r < 0)
        return r;
    if (r == 1) {
        if (blob[0] != 1)
            return NB_EPARSE;
        memcpy(out->salt, blob + 1, NB_MKEY_SALT_BYTES);
        out->opslimit = rd_be64(blob + 1 + NB_MKEY_SALT_BYTES);
        out->memlimit = rd_be64(blob + 1 + NB_MKEY_SALT_BYTES + 8);
        return 0;
    }
    nb_kdf_params_default(out);
    blob[0] = 1;
    memcpy(blob + 1, out->salt, NB_MKEY_SALT_BYTES);
    be64(blob + 1 + NB_MKEY_SALT_BYTES, out->opslimit);
    be64(blob + 1 + NB_MKEY_SALT_BYTES + 8, out->memlimit);
    return meta_put(db, "kdf", blob, sizeof(blob));
}

int nb_secrets_provider(sqlite3 *db, char *out, size_t outsz)
{
    sqlite3_stmt *st;
    out[0] = '\0';
    int r = prep(db, "SELECT v FROM secret_meta WHERE k = 'provider'", &st);
    if (r < 0)
        return r;
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(out, outsz, "%s", t ? (const char *)t : "");
        r = 0;
    } else {
        r = s == SQLITE_DONE ? 0 : db_err(db, "provider");
    }
    sqlite3_finalize(st);
    return r;
}

/* ---- open / data key ----------------------------------------------------- */

static int wrap_dk(nb_secrets_t *s, const nb_mkey_t *mk)
{
    uint8_t blob[DK_BLOB_LEN];
    blob[0] = 1;
    randombytes_buf(blob + 1, AEAD_NONCE);
    crypto_aead_xchacha20poly1305_ietf_encrypt(blob + 1 + AEAD_NONCE, NULL, s->dk,
                                               NB_SECRETS_KEY_BYTES, (const uint8_t *)DK_AD,
                                               strlen(DK_AD), NULL, blob + 1, nb_mkey_bytes(mk));
    int r = tx_begin(s->db);
    if (r < 0)
        return r;
    r = meta_put(s->db, "datakey", blob, sizeof(blob));
    if (r == 0) {
        const char *pn = nb_mkey_kind_name(nb_mkey_kind(mk));
        r = meta_put(s->db, "provider", pn, strlen(pn));
    }
    return tx_end(s->db, r);
}

int nb_secrets_open(sqlite3 *db, const nb_mkey_t *mk, nb_secrets_t **out)
{
    *out = NULL;
    int r;
    uint8_t blob[DK_BLOB_LEN];
    nb_secrets_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->db = db;
    s->dk = sodium_malloc(NB_SECRETS_KEY_BYTES);
    s->bindkey = sodium_malloc(crypto_generichash_KEYBYTES);
    if (!s->dk || !s->bindkey) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = meta_get(db, "datakey", blob, sizeof(blob))) < 0)
        goto out;
    if (r == 0) {
        crypto_aead_xchacha20poly1305_ietf_keygen(s->dk);
        if ((r = wrap_dk(s, mk)) < 0)
            goto out;
        nb_log(NB_LOG_NOTICE, "secrets: new store, data key sealed by the %s provider",
               nb_mkey_kind_name(nb_mkey_kind(mk)));
    } else {
        unsigned long long dlen = 0;
        if (blob[0] != 1 ||
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                s->dk, &dlen, NULL, blob + 1 + AEAD_NONCE, DK_BLOB_LEN - 1 - AEAD_NONCE,
                (const uint8_t *)DK_AD, strlen(DK_AD), blob + 1, nb_mkey_bytes(mk)) != 0 ||
            dlen != NB_SECRETS_KEY_BYTES) {
            r = NB_EAUTH;
            goto out;
        }
    }
    crypto_kdf_derive_from_key(s->bindkey, crypto_generichash_KEYBYTES, 1, "nbbind01", s->dk);
    *out = s;
    s = NULL;
    r = 0;
out:
    nb_secrets_close(s);
    return r;
}

void nb_secrets_close(nb_secrets_t *s)
{
    if (!s)
        return;
    sodium_free(s->dk);
    sodium_free(s->bindkey);
    free(s);
}

int nb_secrets_rekey(nb_secrets_t *s, const nb_mkey_t *new_mk)
{
    return wrap_dk(s, new_mk);
}

/* ---- values -------------------------------------------------------------- */

#define AD_PREFIX "nilbox:secret:v1"
#define AD_MAX (sizeof(AD_PREFIX) + 1 + 8 + 8 + NB_SECRETS_NAME_MAX)

/* Associated data: ties the ciphertext to kind, row id, version and name. */
static size_t make_ad(uint8_t *ad, char kind, int64_t id, int64_t version, const char *name)
{
    size_t n = 0, nl = strlen(name);
    memcpy(ad, AD_PREFIX, sizeof(AD_PREFIX)); /* with its NUL as separator */
    n += sizeof(AD_PREFIX);
    ad[n++] = (uint8_t)kind;
    be64(ad + n, (uint64_t)id);
    n += 8;
    be64(ad + n, (uint64_t)version);
    n += 8;
    memcpy(ad + n, name, nl);
    return n + nl;
}

static int put_value(nb_secrets_t *s, const char *kind, const char *name, const void *value,
                     size_t len)
{
    if (!name_valid(kind, name) || len == 0 || len > NB_SECRETS_VALUE_MAX)
        return NB_EINVAL;
    sqlite3_stmt *st = NULL;
    uint8_t *ct = NULL;
    int r = tx_begin(s->db);
    if (r < 0)
        return r;
    int64_t id = 0, version = 1, now = (int64_t)time(NULL);
    int exists = 0;
    if ((r = prep(s->db, "SELECT id, version FROM secrets WHERE kind = ? AND name = ?", &st)) < 0)
        goto out;
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        exists = 1;
        id = sqlite3_column_int64(st, 0);
        version = sqlite3_column_int64(st, 1) + 1;
    } else if (step != SQLITE_DONE) {
        r = db_err(s->db, "lookup");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (!exists) {
        if ((r = prep(s->db, "SELECT COALESCE(MAX(id), 0) + 1 FROM secrets", &st)) < 0)
            goto out;
        if (sqlite3_step(st) != SQLITE_ROW) {
            r = db_err(s->db, "next id");
            goto out;
        }
        id = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        st = NULL;
    }
    uint8_t ad[AD_MAX], nonce[AEAD_NONCE];
    size_t adlen = make_ad(ad, kind[0], id, version, name);
    if (!(ct = malloc(len + AEAD_TAG))) {
        r = -ENOMEM;
        goto out;
    }
    randombytes_buf(nonce, sizeof(nonce));
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct, NULL, value, len, ad, adlen, NULL, nonce, s->dk);
    if (exists)
        r = prep(s->db,
                 "UPDATE secrets SET version = ?3, nonce = ?4, ct = ?5, updated_at = ?6 "
                 "WHERE id = ?1",
                 &st);
    else
        r = prep(s->db,
                 "INSERT INTO secrets (id, kind, name, version, nonce, ct, created_at, updated_at) "
                 "VALUES (?1, ?2, ?7, ?3, ?4, ?5, ?6, ?6)",
                 &st);
    if (r < 0)
        goto out;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 3, version);
    sqlite3_bind_blob(st, 4, nonce, sizeof(nonce), SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, ct, (int)(len + AEAD_TAG), SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, now);
    if (!exists) {
        sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, name, -1, SQLITE_STATIC);
    }
    r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_err(s->db, "store");
out:
    sqlite3_finalize(st);
    free(ct); /* ciphertext only: nothing to wipe */
    return tx_end(s->db, r);
}

/* Opens one sealed record into locked memory. Pure: only reads s->dk. */
static int open_value(const nb_secrets_t *s, char kind, int64_t id, int64_t version,
                      const char *name, const uint8_t *nonce, size_t nlen, const uint8_t *ct,
                      size_t clen, nb_secret_value_t *out)
{
    if (!nonce || nlen != AEAD_NONCE || !ct || clen <= AEAD_TAG ||
        clen > NB_SECRETS_VALUE_MAX + AEAD_TAG || strlen(name) > NB_SECRETS_NAME_MAX)
        return NB_ECRYPTO;
    uint8_t ad[AD_MAX];
    size_t adlen = make_ad(ad, kind, id, version, name);
    uint8_t *pt = sodium_malloc(clen - AEAD_TAG + 1);
    if (!pt)
        return -ENOMEM;
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(pt, &plen, NULL, ct, clen, ad, adlen, nonce,
                                                   s->dk) != 0) {
        sodium_free(pt);
        nb_log(NB_LOG_ERR, "secrets: record %lld failed authentication (tampered or moved)",
               (long long)id);
        return NB_ECRYPTO;
    }
    pt[plen] = 0;
    out->p = pt;
    out->len = (size_t)plen;
    return 0;
}

static int get_value(nb_secrets_t *s, const char *kind, const char *name, nb_secret_value_t *out)
{
    out->p = NULL;
    out->len = 0;
    if (!name_valid(kind, name))
        return NB_ENOTFOUND;
    sqlite3_stmt *st;
    int r =
        prep(s->db, "SELECT id, version, nonce, ct FROM secrets WHERE kind = ? AND name = ?", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        r = open_value(s, kind[0], sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1), name,
                       sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                       sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3), out);
    else
        r = step == SQLITE_DONE ? NB_ENOTFOUND : db_err(s->db, "get");
    sqlite3_finalize(st);
    return r;
}

int nb_secrets_load_sealed(nb_secrets_t *s, nb_sealed_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    nb_sealed_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int r = prep(s->db,
                 "SELECT id, version, name, nonce, ct FROM secrets WHERE kind = 'user' "
                 "ORDER BY name",
                 &st);
    if (r < 0)
        return r;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 2);
        const void *nonce = sqlite3_column_blob(st, 3), *ct = sqlite3_column_blob(st, 4);
        size_t clen = (size_t)sqlite3_column_bytes(st, 4);
        if (!name || !nb_secrets_name_valid(name) || !nonce ||
            sqlite3_column_bytes(st, 3) != AEAD_NONCE || !ct || clen <= AEAD_TAG ||
            clen > NB_SECRETS_VALUE_MAX + AEAD_TAG)
            continue; /* unseal would refuse it anyway */
        nb_sealed_t *nv = grow(v, cnt, &cap, sizeof(*v), 16);
        if (!nv) {
            r = -ENOMEM;
            goto out;
        }
        v = nv;
        nb_sealed_t *e = &v[cnt];
        memset(e, 0, sizeof(*e));
        if (!(e->ct = malloc(clen))) {
            r = -ENOMEM;
            goto out;
        }
        cnt++;
        e->id = sqlite3_column_int64(st, 0);
        e->version = sqlite3_column_int64(st, 1);
        snprintf(e->name, sizeof(e->name), "%s", name);
        memcpy(e->nonce, nonce, AEAD_NONCE);
        memcpy(e->ct, ct, clen);
        e->ctlen = clen;
    }
    if (step != SQLITE_DONE) {
        r = db_err(s->db, "load sealed");
        goto out;
    }
    *out = v;
    *n = cnt;
    v = NULL;
    cnt = 0;
    r = 0;
out:
    nb_sealed_free(v, cnt);
    sqlite3_finalize(st);
    return r;
}

void nb_sealed_free(nb_sealed_t *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i].ct); /* ciphertext: nothing to wipe */
    free(v);
}

int nb_secrets_unseal_to(const nb_secrets_t *s, const nb_sealed_t *e, uint8_t *buf, size_t cap,
                         size_t *len)
{
    *len = 0;
    if (!memchr(e->name, 0, sizeof(e->name)) || !nb_secrets_name_valid(e->name) || !e->ct ||
        e->ctlen <= AEAD_TAG || e->ctlen > NB_SECRETS_VALUE_MAX + AEAD_TAG)
        return NB_ECRYPTO;
    if (cap < e->ctlen - AEAD_TAG)
        return NB_ETOOBIG;
    uint8_t ad[AD_MAX];
    size_t adlen = make_ad(ad, 'u', e->id, e->version, e->name);
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(buf, &plen, NULL, e->ct, e->ctlen, ad, adlen,
                                                   e->nonce, s->dk) != 0) {
        sodium_memzero(buf, e->ctlen - AEAD_TAG);
        nb_log(NB_LOG_ERR, "secrets: record %lld failed authentication (tampered or moved)",
               (long long)e->id);
        return NB_ECRYPTO;
    }
    *len = (size_t)plen;
    return 0;
}

int nb_secrets_audit_key(const nb_secrets_t *s, uint8_t *out, size_t len)
{
    if (!s || !s->dk || len < crypto_kdf_BYTES_MIN || len > crypto_kdf_BYTES_MAX)
        return NB_EINVAL;
    /* Subkey 2 of the data key ("nbbind01" is subkey 1 of another context):
     * constant across master key rotations (rekey re-wraps the same data
     * key), out of reach without the master key. */
    crypto_kdf_derive_from_key(out, len, 2, "nbaudit1", s->dk);
    return 0;
}

int nb_secrets_unseal(const nb_secrets_t *s, const nb_sealed_t *e, nb_secret_value_t *out)
{
    out->p = NULL;
    out->len = 0;
    if (!memchr(e->name, 0, sizeof(e->name)) || !nb_secrets_name_valid(e->name))
        return NB_ECRYPTO;
    return open_value(s, 'u', e->id, e->version, e->name, e->nonce, sizeof(e->nonce), e->ct,
                      e->ctlen, out);
}

int nb_secrets_set(nb_secrets_t *s, const char *name, const void *value, size_t len)
{
    return put_value(s, "user", name, value, len);
}

int nb_secrets_get(nb_secrets_t *s, const char *name, nb_secret_value_t *out)
{
    return get_value(s, "user", name, out);
}

int nb_secrets_put_internal(nb_secrets_t *s, const char *name, const void *value, size_t len)
{
    return put_value(s, "internal", name, value, len);
}

int nb_secrets_get_internal(nb_secrets_t *s, const char *name, nb_secret_value_t *out)
{
    return get_value(s, "internal", name, out);
}

int nb_secrets_rm(nb_secrets_t *s, const char *name)
{
    if (!nb_secrets_name_valid(name))
        return NB_ENOTFOUND;
    sqlite3_stmt *st = NULL;
    int r = tx_begin(s->db);
    if (r < 0)
        return r;
    /* Explicit, so it holds even when the caller runs without foreign keys. */
    if ((r = prep(s->db,
                  "DELETE FROM secret_bindings WHERE secret_id IN "
                  "(SELECT id FROM secrets WHERE kind = 'user' AND name = ?)",
                  &st)) < 0)
        goto out;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        r = db_err(s->db, "rm bindings");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if ((r = prep(s->db, "DELETE FROM secrets WHERE kind = 'user' AND name = ?", &st)) < 0)
        goto out;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        r = db_err(s->db, "rm");
        goto out;
    }
    r = sqlite3_changes(s->db) == 1 ? 0 : NB_ENOTFOUND;
out:
    sqlite3_finalize(st);
    return tx_end(s->db, r);
}

int nb_secrets_ls(nb_secrets_t *s, nb_secret_info_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    nb_secret_info_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int r = prep(s->db,
                 "SELECT s.name, s.version, s.created_at, s.updated_at, "
                 "(SELECT COUNT(*) FROM secret_bindings b WHERE b.secret_id = s.id) "
                 "FROM secrets s WHERE s.kind = 'user' ORDER BY s.name",
                 &st);
    if (r < 0)
        return r;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (!name || !nb_secrets_name_valid(name))
            continue; /* a row we would never have written */
        nb_secret_info_t *nv = grow(v, cnt, &cap, sizeof(*v), 16);
        if (!nv) {
            r = -ENOMEM;
            goto out;
        }
        v = nv;
        nb_secret_info_t *e = &v[cnt++];
        memset(e, 0, sizeof(*e));
        snprintf(e->name, sizeof(e->name), "%s", name);
        e->version = sqlite3_column_int64(st, 1);
        e->created_at = sqlite3_column_int64(st, 2);
        e->updated_at = sqlite3_column_int64(st, 3);
        e->nbindings = sqlite3_column_int(st, 4);
    }
    if (step != SQLITE_DONE) {
        r = db_err(s->db, "ls");
        goto out;
    }
    *out = v;
    *n = cnt;
    v = NULL;
    r = 0;
out:
    free(v);
    sqlite3_finalize(st);
    return r;
}

/* ---- bindings ------------------------------------------------------------ */

/* MAC over the binding's meaning, so an edited row (secret steered to
 * another host) is ignored instead of obeyed. */
static void binding_mac(const nb_secrets_t *s, const nb_binding_t *b, uint8_t mac[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, s->bindkey, crypto_generichash_KEYBYTES, 32);
    const char *fields[] = {b->secret, b->host, b->path_prefix, b->header,
                            b->tmpl,   b->user, b->param,       b->vm};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        uint8_t len[8];
        be64(len, strlen(fields[i]));
        crypto_generichash_update(&h, len, 8);
        crypto_generichash_update(&h, (const uint8_t *)fields[i], strlen(fields[i]));
    }
    uint8_t tail[2] = {(uint8_t)b->placement, (uint8_t)b->allow_cleartext};
    crypto_generichash_update(&h, tail, 2);
    crypto_generichash_final(&h, mac, 32);
}

/* A SigV4 binding is stored as a 'header' row (the table's CHECK predates
 * it and SQLite cannot change a CHECK in place) marked by this header and
 * template; its MAC covers the SigV4 meaning, so a build that does not
 * know the kind ignores the row instead of using it as a header binding. */
#define SIGV4_ROW_HEADER "authorization"
#define SIGV4_ROW_TMPL "AWS4-HMAC-SHA256 {secret} (nilbox sigv4 binding)"

int nb_secrets_bind(nb_secrets_t *s, const nb_binding_t *in, int64_t *id)
{
    if (id)
        *id = 0;
    nb_binding_t b = *in;
    if (nb_binding_normalize(&b) < 0)
        return NB_EINVAL;
    uint8_t mac[32];
    binding_mac(s, &b, mac);
    sqlite3_stmt *st;
    int r = prep(s->db,
                 "INSERT INTO secret_bindings (secret_id, host, path_prefix, placement, header, "
                 "tmpl, user, param, vm, allow_cleartext, mac, created_at) "
                 "SELECT id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 FROM secrets "
                 "WHERE kind = 'user' AND name = ?1",
                 &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, b.secret, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, b.host, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, b.path_prefix, -1, SQLITE_STATIC);
    int v4 = b.placement == NB_PLACE_SIGV4;
    sqlite3_bind_text(st, 4, v4 ? "header" : nb_binding_placement_name(b.placement), -1,
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 5, v4 ? SIGV4_ROW_HEADER : b.header, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, v4 ? SIGV4_ROW_TMPL : b.tmpl, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, b.user, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, b.param, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, b.vm, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 10, b.allow_cleartext);
    sqlite3_bind_blob(st, 11, mac, sizeof(mac), SQLITE_STATIC);
    sqlite3_bind_int64(st, 12, (int64_t)time(NULL));
    if (sqlite3_step(st) != SQLITE_DONE)
        r = db_err(s->db, "bind");
    else if (sqlite3_changes(s->db) != 1)
        r = NB_ENOTFOUND;
    else if (id)
        *id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    return r;
}

int nb_secrets_unbind(nb_secrets_t *s, int64_t id)
{
    sqlite3_stmt *st;
    int r = prep(s->db, "DELETE FROM secret_bindings WHERE id = ?", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_DONE)
        r = db_err(s->db, "unbind");
    else
        r = sqlite3_changes(s->db) == 1 ? 0 : NB_ENOTFOUND;
    sqlite3_finalize(st);
    return r;
}

static int col_copy(sqlite3_stmt *st, int col, char *dst, size_t dstsz)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (n >= dstsz || (t && memchr(t, 0, n)))
        return -1;
    memcpy(dst, t ? (const char *)t : "", n);
    dst[n] = '\0';
    return 0;
}

int nb_secrets_bindings(nb_secrets_t *s, nb_binding_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    nb_binding_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int r = prep(s->db,
                 "SELECT b.id, s.name, b.host, b.path_prefix, b.placement, b.header, b.tmpl, "
                 "b.user, b.param, b.vm, b.allow_cleartext, b.mac FROM secret_bindings b "
                 "JOIN secrets s ON s.id = b.secret_id WHERE s.kind = 'user' ORDER BY b.id",
                 &st);
    if (r < 0)
        return r;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        nb_binding_t *nv = grow(v, cnt, &cap, sizeof(*v), 8);
        if (!nv) {
            r = -ENOMEM;
            goto out;
        }
        v = nv;
        nb_binding_t *b = &v[cnt];
        memset(b, 0, sizeof(*b));
        b->id = sqlite3_column_int64(st, 0);
        const char *pl = (const char *)sqlite3_column_text(st, 4);
        b->placement = pl ? nb_binding_placement_parse(pl) : 0;
        b->allow_cleartext = sqlite3_column_int(st, 10);
        const uint8_t *mac = sqlite3_column_blob(st, 11);
        uint8_t want[32];
        int bad = col_copy(st, 1, b->secret, sizeof(b->secret)) ||
                  col_copy(st, 2, b->host, sizeof(b->host)) ||
                  col_copy(st, 3, b->path_prefix, sizeof(b->path_prefix)) ||
                  col_copy(st, 5, b->header, sizeof(b->header)) ||
                  col_copy(st, 6, b->tmpl, sizeof(b->tmpl)) ||
                  col_copy(st, 7, b->user, sizeof(b->user)) ||
                  col_copy(st, 8, b->param, sizeof(b->param)) ||
                  col_copy(st, 9, b->vm, sizeof(b->vm)) || !b->placement || !mac ||
                  sqlite3_column_bytes(st, 11) != 32;
        if (!bad && b->placement == NB_PLACE_HEADER && strcmp(b->header, SIGV4_ROW_HEADER) == 0 &&
            strcmp(b->tmpl, SIGV4_ROW_TMPL) == 0) {
            b->placement = NB_PLACE_SIGV4;
            b->header[0] = b->tmpl[0] = '\0';
        }
        if (!bad) {
            binding_mac(s, b, want);
            bad = crypto_verify_32(mac, want) != 0;
        }
        if (bad) {
            nb_log(NB_LOG_ERR, "secrets: binding %lld failed its integrity check; ignored",
                   (long long)b->id);
            continue;
        }
        cnt++;
    }
    if (step != SQLITE_DONE) {
        r = db_err(s->db, "bindings");
        goto out;
    }
    *out = v;
    *n = cnt;
    v = NULL;
    r = 0;
out:
    free(v);
    sqlite3_finalize(st);
    return r;
}
