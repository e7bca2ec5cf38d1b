/* The audit log, read side: filters, queries and hash-chain verification
 * straight on a database handle (any thread that owns one), and the time
 * syntax of the filters. Pure functions of their inputs; the loop-side
 * wrappers (nb_audit_query, nb_audit_verify) are in audit.c. */
#include "daemon/audit.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "daemon/events.h"
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
             "SELECT seq, time_ms, kind, vm, host, port, detail, prev_hash, hash FROM audit"
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

int nb_audit_verify_db(sqlite3 *db, nb_audit_verify_t *res)
{
    sqlite3_stmt *s = NULL;
    char prev[65], h[65];
    int64_t expect = 1;
    int r = NB_EINTERNAL, rc;
    memset(res, 0, sizeof *res);
    snprintf(prev, sizeof prev, "%s", NB_AUDIT_ZERO_HASH);
    snprintf(res->head_hash, sizeof res->head_hash, "%s", NB_AUDIT_ZERO_HASH);
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, time_ms, kind, vm, host, port, detail, prev_hash, hash,"
                           " typeof(detail) FROM audit ORDER BY seq",
                           -1, &s, NULL) != SQLITE_OK)
        goto out;
    res->ok = 1;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(s, 0);
        const char *kind = (const char *)sqlite3_column_text(s, 2);
        const char *vm = (const char *)sqlite3_column_text(s, 3);
        const char *host = (const char *)sqlite3_column_text(s, 4);
        const char *det = (const char *)sqlite3_column_text(s, 6);
        int detlen = sqlite3_column_bytes(s, 6);
        const char *ph = (const char *)sqlite3_column_text(s, 7);
        const char *hh = (const char *)sqlite3_column_text(s, 8);
        const char *why = NULL;
        res->rows++;
        if (seq != expect)
            why = seq > expect ? "rows are missing before this one (deleted)"
                               : "sequence numbers are out of order";
        else if (!ph || strcmp(ph, prev) != 0)
            why = "prev_hash does not match the previous row's hash (rows removed, reordered "
                  "or rewritten)";
        else if (!kind || !det ||
                 nb_audit_row_hash(prev, seq, sqlite3_column_int64(s, 1), kind, vm, host,
                                   sqlite3_column_int(s, 5), det, (size_t)detlen, h) < 0 ||
                 !hh || strcmp(h, hh) != 0)
            why = "the row's content does not match its hash (modified)";
        if (why) {
            res->ok = 0;
            /* For a gap, the first missing seq is what broke. */
            res->first_bad_seq = seq > expect ? expect : seq;
            snprintf(res->reason, sizeof res->reason, "%s", why);
            break;
        }
        snprintf(prev, sizeof prev, "%s", hh);
        res->head_seq = seq;
        snprintf(res->head_hash, sizeof res->head_hash, "%s", hh);
        expect = seq + 1;
    }
    if (res->ok && rc != SQLITE_DONE)
        goto out;
    r = 0;
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
