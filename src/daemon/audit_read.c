/* The audit log, read side: filters, queries and hash-chain verification
 * straight on a database handle (any thread that owns one), the time
 * syntax of the filters, and the loop-side reads (nb_audit_query,
 * nb_audit_verify) as jobs of the writer's chain (nb_audit_run). Depends on
 * the writer's public functions (audit.c, audit_chain.c), never the
 * reverse. */
#include "daemon/audit.h"

#include <errno.h>
#include <stdarg.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "daemon/base/events.h"
#include "daemon/secrets/binding.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* ---------------------------------------------------------------- reading */

void nb_audit_filter_init(nb_audit_filter_t *f)
{
    memset(f, 0, sizeof *f);
    f->limit = 1000;
}

static json_t *row_json(sqlite3_stmt *s)
{
    char t[40];
    int64_t ms = sqlite3_column_int64(s, 1);
    const char *vm = (const char *)sqlite3_column_text(s, 3);
    const char *host = (const char *)sqlite3_column_text(s, 4);
    int port = sqlite3_column_int(s, 5);
    const char *det = (const char *)sqlite3_column_text(s, 6);
    nb_events_format_time(ms, t, sizeof t);
    json_t *d = NULL;
    if (det && nb_json_parse(nb_iov(det, strlen(det)), &d, NULL, 0) < 0)
        d = json_string(det); /* a tampered row: show it as it is */
    json_t *o = json_pack(
        "{s:I, s:s, s:I, s:s, s:o, s:o, s:o, s:o, s:s, s:s}", "seq",
        (json_int_t)sqlite3_column_int64(s, 0), "time", t, "time_ms", (json_int_t)ms, "kind",
        (const char *)sqlite3_column_text(s, 2), "vm", vm && vm[0] ? json_string(vm) : json_null(),
        "host", host && host[0] ? json_string(host) : json_null(), "port",
        port ? json_integer(port) : json_null(), "detail", d ? d : json_object(), "prev_hash",
        (const char *)sqlite3_column_text(s, 7), "hash", (const char *)sqlite3_column_text(s, 8));
    if (o)
        json_object_set_new(o, "chain",
                            json_string(sqlite3_column_int(s, 9) == 1 ? "keyed" : "sha256"));
    return o;
}

int nb_audit_query_db(sqlite3 *db, const nb_audit_filter_t *f, json_t **rows)
{
    char sql[512];
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL, i = 1;
    *rows = NULL;
    if (f->limit < 1 || f->limit > NB_AUDIT_QUERY_MAX ||
        (f->kind[0] && !nb_audit_kind_filter_valid(f->kind)))
        return NB_EINVAL;
    int star = f->kind[0] && f->kind[strlen(f->kind) - 1] == '*';
    /* The kind filter is validated to [a-z0-9._-] plus a final '*', so it
     * is safe as a GLOB pattern; it is still bound, never spliced. */
    snprintf(sql, sizeof sql,
             "SELECT seq, time_ms, kind, vm, host, port, detail, prev_hash, hash, mac FROM audit"
             " WHERE seq > ?%s%s%s ORDER BY seq %s LIMIT ?",
             f->kind[0] ? (star ? " AND kind GLOB ?" : " AND kind = ?") : "",
             f->vm[0] ? " AND vm = ?" : "", f->since_ms > 0 ? " AND time_ms >= ?" : "",
             f->newest_first ? "DESC" : "ASC");
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(s, i++, f->after_seq);
    if (f->kind[0])
        sqlite3_bind_text(s, i++, f->kind, -1, SQLITE_STATIC);
    if (f->vm[0])
        sqlite3_bind_text(s, i++, f->vm, -1, SQLITE_STATIC);
    if (f->since_ms > 0)
        sqlite3_bind_int64(s, i++, f->since_ms);
    sqlite3_bind_int64(s, i++, f->limit);
    json_t *arr = json_array();
    if (!arr) {
        r = -ENOMEM;
        goto out;
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        json_t *o = row_json(s);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            r = -ENOMEM;
            goto out;
        }
    }
    if (rc != SQLITE_DONE) {
        json_decref(arr);
        goto out;
    }
    *rows = arr;
    r = 0;
out:
    if (r == NB_EINTERNAL)
        nb_log(NB_LOG_ERR, "audit: query failed: %s", sqlite3_errmsg(db));
    sqlite3_finalize(s);
    return r;
}

static int64_t one_int(sqlite3 *db, const char *sql, int64_t arg, int64_t def)
{
    sqlite3_stmt *s = NULL;
    int64_t v = def;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, arg);
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
            v = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
    return v;
}

static void fail(nb_audit_verify_t *res, int64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(nb_audit_verify_t *res, int64_t seq, const char *fmt, ...)
{
    va_list ap;
    res->ok = 0;
    res->first_bad_seq = seq;
    va_start(ap, fmt);
    vsnprintf(res->reason, sizeof res->reason, fmt, ap);
    va_end(ap);
}

int nb_audit_verify_db(sqlite3 *db, nb_audit_verify_t *res)
{
    return nb_audit_verify_db_keyed(db, NULL, NULL, res);
}

int nb_audit_verify_db_keyed(sqlite3 *db, const uint8_t *key, const char *anchor_path,
                             nb_audit_verify_t *res)
{
    sqlite3_stmt *s = NULL;
    char prev[65], h[65], ahash[65] = "";
    int r = NB_EINTERNAL, rc, ar = NB_ENOTFOUND;
    int64_t aseq = 0, tamper_seq = 0, last = 0;
    char tamper[200] = "";
    memset(res, 0, sizeof *res);
    res->anchor_seq = -1;
    res->keyed = key != NULL;
    snprintf(res->anchor, sizeof res->anchor, "unchecked");
    snprintf(prev, sizeof prev, "%s", NB_AUDIT_ZERO_HASH);
    snprintf(res->head_hash, sizeof res->head_hash, "%s", NB_AUDIT_ZERO_HASH);
    res->ok = 1;
    if (key && anchor_path) {
        ar = nb_audit_anchor_read(anchor_path, key, &aseq, ahash);
        if (ar == 0) {
            res->anchor_seq = aseq;
        } else if (ar == NB_ECRYPTO || ar == NB_EINVAL) {
            fail(res, 0, "the head anchor file (%s) %s", NB_AUDIT_HEAD_FILE,
                 ar == NB_ECRYPTO ? "does not verify: it was edited or replaced" : "is malformed");
            return 0;
        }
    }
    /* A log pruned by retention starts after a prefix that a keyed
     * checkpoint row ("audit.pruned", detail.through) accounts for. */
    int64_t first = one_int(db, "SELECT min(seq) FROM audit WHERE seq > ?", 0, 1);
    int64_t cp = 0;
    res->first_seq = first;
    if (first > 1) {
        cp = one_int(db,
                     "SELECT max(seq) FROM audit WHERE kind = '" NB_AUDIT_PRUNED "' AND mac = 1"
                     " AND json_valid(detail) AND json_extract(detail, '$.through') = ?",
                     first - 1, 0);
        if (!cp) {
            int64_t covered =
                one_int(db,
                        "SELECT max(json_extract(detail, '$.through')) FROM audit WHERE kind = "
                        "'" NB_AUDIT_PRUNED "' AND mac = 1 AND json_valid(detail)"
                        " AND json_extract(detail, '$.through') < ?",
                        first - 1, 0);
            fail(res, covered + 1,
                 "rows %lld to %lld are missing and no retention checkpoint covers them "
                 "(deleted)",
                 (long long)(covered + 1), (long long)(first - 1));
            return 0;
        }
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, time_ms, kind, vm, host, port, detail, prev_hash, hash,"
                           " mac FROM audit ORDER BY seq",
                           -1, &s, NULL) != SQLITE_OK)
        goto out;
    int64_t expect = first;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(s, 0);
        const char *kind = (const char *)sqlite3_column_text(s, 2);
        const char *vm = (const char *)sqlite3_column_text(s, 3);
        const char *host = (const char *)sqlite3_column_text(s, 4);
        const char *det = (const char *)sqlite3_column_text(s, 6);
        int detlen = sqlite3_column_bytes(s, 6);
        const char *ph = (const char *)sqlite3_column_text(s, 7);
        const char *hh = (const char *)sqlite3_column_text(s, 8);
        int mac = sqlite3_column_int(s, 9);
        int64_t tms = sqlite3_column_int64(s, 1);
        int port = sqlite3_column_int(s, 5);
        const char *why = NULL;
        res->rows++;
        if (seq == first && first > 1 && ph && strlen(ph) == 64)
            snprintf(prev, sizeof prev, "%s", ph); /* vouched for by the checkpoint's MAC */
        if (seq != expect)
            why = seq > expect ? "rows are missing before this one (deleted)"
                               : "sequence numbers are out of order";
        else if (!ph || strcmp(ph, prev) != 0)
            why = "prev_hash does not match the previous row's hash (rows removed, reordered "
                  "or rewritten)";
        else if (!kind || !det || !hh)
            why = "the row is incomplete (modified)";
        else if (mac == 1) {
            res->keyed_rows++;
            if (key && (nb_audit_row_mac(key, prev, seq, tms, kind, vm, host, port, det,
                                         (size_t)detlen, h) < 0 ||
                        sodium_memcmp(h, hh, 64) != 0))
                why = "the row does not match its keyed MAC (modified, or forged without the "
                      "master key)";
        } else if (mac == 0) {
            res->unkeyed_rows++;
            if (nb_audit_row_hash(prev, seq, tms, kind, vm, host, port, det, (size_t)detlen, h) <
                    0 ||
                strcmp(h, hh) != 0)
                why = "the row's content does not match its hash (modified)";
            else if (seq == cp)
                why = "the retention checkpoint is not keyed (forged)";
            else if (res->anchor_seq >= 0 && seq > res->anchor_seq)
                res->unanchored_rows++;
        } else {
            why = "unknown chain scheme in column mac (modified)";
        }
        if (why) {
            /* For a gap, the first missing seq is what broke. */
            fail(res, seq > expect ? expect : seq, "%s", why);
            break;
        }
        if (seq == aseq && strcmp(hh, ahash) != 0) {
            fail(res, seq,
                 "this row is not the one the head anchor recorded: the chain was rewritten "
                 "(here or before)");
            break;
        }
        if (key && mac == 1 && !tamper[0] && strcmp(kind, NB_AUDIT_TAMPER) == 0) {
            json_t *tj = NULL;
            tamper_seq = seq;
            if (nb_json_parse(nb_iov(det, (size_t)detlen), &tj, NULL, 0) == 0 &&
                nb_json_str(tj, "reason"))
                snprintf(tamper, sizeof tamper, "%.190s", nb_json_str(tj, "reason"));
            else
                snprintf(tamper, sizeof tamper, "%.190s", det);
            json_decref(tj);
        }
        snprintf(prev, sizeof prev, "%s", hh);
        res->head_seq = seq;
        snprintf(res->head_hash, sizeof res->head_hash, "%s", hh);
        last = seq;
        expect = seq + 1;
    }
    if (res->ok && rc != SQLITE_DONE)
        goto out;
    r = 0;
    if (!res->ok || !key || !anchor_path)
        goto out;
    if (ar == 0) {
        snprintf(res->anchor, sizeof res->anchor, "ok");
        if (aseq > last) {
            snprintf(res->anchor, sizeof res->anchor, "ahead");
            fail(res, last + 1,
                 "rows %lld to %lld were deleted from the end (the head anchor records seq %lld)",
                 (long long)(last + 1), (long long)aseq, (long long)aseq);
        } else if (aseq < first && aseq > 0) {
            fail(res, aseq, "the head anchor is older than the first row kept (replaced)");
        }
    } else if (res->keyed_rows > 0) {
        snprintf(res->anchor, sizeof res->anchor, "missing");
        fail(res, 0,
             "the head anchor file (%s) is missing although the log has keyed rows "
             "(deleted?)",
             NB_AUDIT_HEAD_FILE);
    } else {
        snprintf(res->anchor, sizeof res->anchor, "none");
    }
    if (res->ok && tamper[0])
        fail(res, tamper_seq,
             "row %lld (audit.tamper) records tampering found when the key was loaded: %s",
             (long long)tamper_seq, tamper);
out:
    if (r < 0)
        nb_log(NB_LOG_ERR, "audit: verify failed: %s", sqlite3_errmsg(db));
    sqlite3_finalize(s);
    return r;
}

/* ------------------------------------------------------------ time parsing */

static int parse_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int nb_audit_parse_time(const char *s, int64_t now_ms, int64_t *out_ms)
{
    size_t n = s ? strlen(s) : 0;
    *out_ms = 0;
    if (n == 0 || n > 40)
        return NB_EINVAL;
    /* A duration back from now: digits + unit. */
    char unit = s[n - 1];
    if (n >= 2 && (unit == 's' || unit == 'm' || unit == 'h' || unit == 'd')) {
        int64_t v = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            if (s[i] < '0' || s[i] > '9' || v > 100000000)
                return NB_EINVAL;
            v = v * 10 + (s[i] - '0');
        }
        int64_t mult = unit == 's' ? 1000 : unit == 'm' ? 60000 : unit == 'h' ? 3600000 : 86400000;
        if (v > now_ms / mult)
            return NB_EINVAL;
        *out_ms = now_ms - v * mult;
        return 0;
    }
    /* Milliseconds since the epoch. */
    size_t k = 0;
    while (k < n && s[k] >= '0' && s[k] <= '9')
        k++;
    if (k == n) {
        if (n > 15)
            return NB_EINVAL;
        int64_t v = 0;
        for (size_t i = 0; i < n; i++)
            v = v * 10 + (s[i] - '0');
        *out_ms = v;
        return 0;
    }
    /* YYYY-MM-DD[THH:MM:SS[.fff][Z|+hh:mm|-hh:mm]] */
    struct tm tm;
    int y, mo, d, hh = 0, mi = 0, ss = 0, ms = 0, off = 0;
    memset(&tm, 0, sizeof tm);
    if (n < 10 || parse_digits(s, 4, &y) < 0 || s[4] != '-' || parse_digits(s + 5, 2, &mo) < 0 ||
        s[7] != '-' || parse_digits(s + 8, 2, &d) < 0)
        return NB_EINVAL;
    const char *p = s + 10;
    if (*p) {
        if ((*p != 'T' && *p != 't' && *p != ' ') || strlen(p) < 9 ||
            parse_digits(p + 1, 2, &hh) < 0 || p[3] != ':' || parse_digits(p + 4, 2, &mi) < 0 ||
            p[6] != ':' || parse_digits(p + 7, 2, &ss) < 0)
            return NB_EINVAL;
        p += 9;
        if (*p == '.') {
            int digits = 0;
            p++;
            while (*p >= '0' && *p <= '9') {
                if (digits < 3)
                    ms = ms * 10 + (*p - '0');
                digits++;
                p++;
            }
            if (digits == 0)
                return NB_EINVAL;
            for (; digits < 3; digits++)
                ms *= 10;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int oh, om;
            if (strlen(p) != 6 || parse_digits(p + 1, 2, &oh) < 0 || p[3] != ':' ||
                parse_digits(p + 4, 2, &om) < 0 || oh > 23 || om > 59)
                return NB_EINVAL;
            off = (oh * 60 + om) * (*p == '+' ? 1 : -1);
            p += 6;
        } else {
            return NB_EINVAL;
        }
        if (*p)
            return NB_EINVAL;
    }
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || hh > 23 || mi > 59 || ss > 60)
        return NB_EINVAL;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = hh;
    tm.tm_min = mi;
    tm.tm_sec = ss;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return NB_EINVAL;
    *out_ms = ((int64_t)t - (int64_t)off * 60) * 1000 + ms;
    return 0;
}

/* ------------------------------------------------------------ async reads */

typedef struct {
    int verify; /* 0: a query */
    nb_audit_filter_t f;
    json_t *rows;
    nb_audit_verify_t ver;
    nb_audit_rows_fn rows_cb;
    nb_audit_verify_fn verify_cb;
    void *ud;
} read_t;

static int read_work(sqlite3 *db, const uint8_t *key, const char *anchor_path, void *ud)
{
    read_t *q = ud;
    return q->verify ? nb_audit_verify_db_keyed(db, key, anchor_path, &q->ver)
                     : nb_audit_query_db(db, &q->f, &q->rows);
}

static void read_done(void *ud, int status)
{
    read_t *q = ud;
    json_t *rows = status < 0 ? NULL : q->rows;
    if (!rows)
        json_decref(q->rows);
    if (q->rows_cb)
        q->rows_cb(q->ud, status, rows);
    else if (q->verify_cb)
        q->verify_cb(q->ud, status, &q->ver);
    free(q);
}

/* Takes q (NULL: out of memory). */
static int read_run(nb_audit_t *a, read_t *q)
{
    int r = q ? nb_audit_run(a, read_work, read_done, q) : -ENOMEM;
    if (r < 0)
        free(q);
    return r;
}

int nb_audit_query(nb_audit_t *a, const nb_audit_filter_t *f, nb_audit_rows_fn cb, void *ud)
{
    read_t *q = calloc(1, sizeof *q);
    if (q) {
        q->f = *f;
        q->rows_cb = cb;
        q->ud = ud;
    }
    return read_run(a, q);
}

int nb_audit_verify(nb_audit_t *a, nb_audit_verify_fn cb, void *ud)
{
    read_t *q = calloc(1, sizeof *q);
    if (q) {
        q->verify = 1;
        q->verify_cb = cb;
        q->ud = ud;
    }
    return read_run(a, q);
}
