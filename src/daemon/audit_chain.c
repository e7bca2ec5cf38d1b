/* The audit log's tamper evidence, shared by the writer (audit.c) and the
 * verifier (audit_read.c), which both call it and it neither: the row
 * hash and MAC schemes, the head anchor file and the keyed-chain schema.
 * Pure functions of their inputs (and the anchor file). See audit.h. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon/audit.h"
#include "lib/err.h"
#include "lib/log.h"

#define DOMAIN_TAG "nilbox.audit.v1"
#define DOMAIN_TAG_KEYED "nilbox.audit.v2"

/* ------------------------------------------------------------------ hashing */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void hash_num(crypto_hash_sha256_state *h, uint64_t v)
{
    uint8_t b[8];
    put_be64(b, v);
    crypto_hash_sha256_update(h, b, sizeof b);
}

/* Length-prefixed, so that no shift of bytes between fields can produce
 * the same input for different rows. */
static void hash_str(crypto_hash_sha256_state *h, const char *s, size_t len)
{
    hash_num(h, len);
    crypto_hash_sha256_update(h, (const uint8_t *)s, len);
}

/* The keyed scheme: the same encoding under BLAKE2b-256 keyed with K. */
static void mac_num(crypto_generichash_state *h, uint64_t v)
{
    uint8_t b[8];
    put_be64(b, v);
    crypto_generichash_update(h, b, sizeof b);
}

static void mac_str(crypto_generichash_state *h, const char *s, size_t len)
{
    mac_num(h, len);
    crypto_generichash_update(h, (const uint8_t *)s, len);
}

int nb_audit_row_mac(const uint8_t key[NB_AUDIT_KEY_BYTES], const char *prev_hex, int64_t seq,
                     int64_t time_ms, const char *kind, const char *vm, const char *host, int port,
                     const char *detail, size_t detail_len, char out_hex[65])
{
    uint8_t prev[32], out[32];
    size_t bin = 0;
    out_hex[0] = '\0';
    if (!key || !prev_hex || strlen(prev_hex) != 64 ||
        sodium_hex2bin(prev, sizeof prev, prev_hex, 64, NULL, &bin, NULL) != 0 || bin != 32)
        return NB_EINVAL;
    crypto_generichash_state h;
    crypto_generichash_init(&h, key, NB_AUDIT_KEY_BYTES, sizeof out);
    crypto_generichash_update(&h, prev, sizeof prev);
    crypto_generichash_update(&h, (const uint8_t *)DOMAIN_TAG_KEYED, sizeof DOMAIN_TAG_KEYED);
    mac_num(&h, (uint64_t)seq);
    mac_num(&h, (uint64_t)time_ms);
    mac_str(&h, kind, strlen(kind));
    mac_str(&h, vm ? vm : "", vm ? strlen(vm) : 0);
    mac_str(&h, host ? host : "", host ? strlen(host) : 0);
    mac_num(&h, (uint64_t)port);
    mac_str(&h, detail, detail_len);
    crypto_generichash_final(&h, out, sizeof out);
    sodium_bin2hex(out_hex, 65, out, sizeof out);
    sodium_memzero(&h, sizeof h);
    return 0;
}

int nb_audit_row_hash(const char *prev_hex, int64_t seq, int64_t time_ms, const char *kind,
                      const char *vm, const char *host, int port, const char *detail,
                      size_t detail_len, char out_hex[65])
{
    uint8_t prev[32], out[32];
    size_t bin = 0;
    out_hex[0] = '\0';
    if (!prev_hex || strlen(prev_hex) != 64 ||
        sodium_hex2bin(prev, sizeof prev, prev_hex, 64, NULL, &bin, NULL) != 0 || bin != 32)
        return NB_EINVAL;
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    crypto_hash_sha256_update(&h, prev, sizeof prev);
    crypto_hash_sha256_update(&h, (const uint8_t *)DOMAIN_TAG, sizeof DOMAIN_TAG); /* with NUL */
    hash_num(&h, (uint64_t)seq);
    hash_num(&h, (uint64_t)time_ms);
    hash_str(&h, kind, strlen(kind));
    hash_str(&h, vm ? vm : "", vm ? strlen(vm) : 0);
    hash_str(&h, host ? host : "", host ? strlen(host) : 0);
    hash_num(&h, (uint64_t)port);
    hash_str(&h, detail, detail_len);
    crypto_hash_sha256_final(&h, out);
    sodium_bin2hex(out_hex, 65, out, sizeof out);
    return 0;
}

/* ------------------------------------------------------------ the anchor */

#define ANCHOR_TAG "nilbox.audit.head.v1"
#define ANCHOR_MAGIC "nilbox-audit-head v1"

static void anchor_mac(const uint8_t *key, int64_t seq, const uint8_t hash[32], char out_hex[65])
{
    uint8_t b[8], out[32];
    put_be64(b, (uint64_t)seq);
    crypto_generichash_state h;
    crypto_generichash_init(&h, key, NB_AUDIT_KEY_BYTES, sizeof out);
    crypto_generichash_update(&h, (const uint8_t *)ANCHOR_TAG, sizeof ANCHOR_TAG);
    crypto_generichash_update(&h, b, sizeof b);
    crypto_generichash_update(&h, hash, 32);
    crypto_generichash_final(&h, out, sizeof out);
    sodium_bin2hex(out_hex, 65, out, sizeof out);
}

int nb_audit_anchor_write(const char *path, const uint8_t key[NB_AUDIT_KEY_BYTES], int64_t seq,
                          const char *hash_hex)
{
    uint8_t hb[32];
    size_t bin = 0;
    char mac[65], tmp[4096], line[256];
    if (!path || !key || !hash_hex || strlen(hash_hex) != 64 ||
        sodium_hex2bin(hb, sizeof hb, hash_hex, 64, NULL, &bin, NULL) != 0 || bin != 32 ||
        snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return NB_EINVAL;
    anchor_mac(key, seq, hb, mac);
    int n =
        snprintf(line, sizeof line, "%s %lld %s %s\n", ANCHOR_MAGIC, (long long)seq, hash_hex, mac);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    /* fsync before rename: after a crash the anchor is the old or the new
     * head, never an empty file. */
    if (write(fd, line, (size_t)n) != n || fsync(fd) < 0) {
        int e = -errno;
        close(fd);
        unlink(tmp);
        return e ? e : NB_EINTERNAL;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
        int e = -errno;
        unlink(tmp);
        return e;
    }
    return 0;
}

int nb_audit_anchor_read(const char *path, const uint8_t key[NB_AUDIT_KEY_BYTES], int64_t *seq,
                         char hash_hex[65])
{
    char buf[512], mac[65], want[65];
    *seq = 0;
    hash_hex[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? NB_ENOTFOUND : -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return NB_EINVAL;
    buf[n] = '\0';
    if (strlen(buf) != (size_t)n) /* a NUL would hide what follows it */
        return NB_EINVAL;
    long long sq = 0;
    char hh[80], mm[80];
    int used = 0;
    if (strncmp(buf, ANCHOR_MAGIC " ", sizeof ANCHOR_MAGIC) != 0 ||
        sscanf(buf + sizeof ANCHOR_MAGIC, "%lld %79s %79s%n", &sq, hh, mm, &used) != 3 || sq < 0 ||
        strlen(hh) != 64 || strlen(mm) != 64 || strcmp(buf + sizeof ANCHOR_MAGIC + used, "\n") != 0)
        return NB_EINVAL;
    /* Only the exact form nb_audit_anchor_write makes: sscanf also takes
     * other blanks (CR, tabs, runs of spaces) and signs, which would give one
     * anchor several spellings. */
    char canon[sizeof buf];
    snprintf(canon, sizeof canon, "%s %lld %s %s\n", ANCHOR_MAGIC, sq, hh, mm);
    if (strcmp(canon, buf) != 0)
        return NB_EINVAL;
    uint8_t hb[32];
    size_t bin = 0;
    if (sodium_hex2bin(hb, sizeof hb, hh, 64, NULL, &bin, NULL) != 0 || bin != 32)
        return NB_EINVAL;
    snprintf(mac, sizeof mac, "%s", mm);
    anchor_mac(key, (int64_t)sq, hb, want);
    if (sodium_memcmp(want, mac, 64) != 0)
        return NB_ECRYPTO;
    *seq = sq;
    snprintf(hash_hex, 65, "%s", hh);
    return 0;
}

/* ------------------------------------------------------------ schema v2 */

int nb_audit_upgrade_db(sqlite3 *db)
{
    sqlite3_stmt *s = NULL;
    int have = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info('audit') WHERE name = 'mac'",
                           -1, &s, NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
        sqlite3_finalize(s);
        nb_log(NB_LOG_ERR, "audit: cannot read the schema: %s", sqlite3_errmsg(db));
        return NB_EINTERNAL;
    }
    have = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    if (have)
        return 0;
    /* Rows already there keep mac 0: they verify as unkeyed (legacy) rows,
     * and the first keyed row commits them. DELETE stays refused except
     * for a prefix a keyed retention checkpoint covers. */
    char *msg = NULL;
    if (sqlite3_exec(db,
                     "BEGIN IMMEDIATE;"
                     "ALTER TABLE audit ADD COLUMN mac INTEGER NOT NULL DEFAULT 0;"
                     "DROP TRIGGER IF EXISTS audit_no_delete;"
                     "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit"
                     "  WHEN OLD.seq > coalesce((SELECT max(json_extract(detail, '$.through'))"
                     "    FROM audit WHERE kind = '" NB_AUDIT_PRUNED "' AND mac = 1), 0)"
                     "  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
                     "COMMIT;",
                     NULL, NULL, &msg) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "audit: cannot upgrade the schema: %s", msg ? msg : "?");
        sqlite3_free(msg);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return NB_EINTERNAL;
    }
    return 0;
}
