/* The audit log, write side: validation, the append chain, volume,
 * lifecycle, and nb_audit_run for the read side (audit_read.c: queries,
 * verification, time filters), which builds on it and never the reverse.
 * Row hashes, the anchor and the schema are in audit_chain.c. */
#include "daemon/audit.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "daemon/base/events.h"
#include "daemon/secrets/binding.h"
#include "lib/buf.h"
#include "lib/env.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define RETRY_MS 1000
#define TICK_MS 1000
#define PRUNE_EVERY_ROWS 10000
#define PRUNE_EVERY_MS (3600 * 1000)
#define VM_BUCKETS 256

/* A row hashed on the loop and waiting for the disk. */
typedef struct {
    int64_t seq, time_ms;
    int port;
    char kind[NB_AUDIT_KIND_MAX + 1];
    char *vm, *host, *detail; /* one malloc block: vm\0host\0detail\0 */
    size_t detail_len;
    char prev[65], hash[65];
    int mac; /* 1: keyed */
} row_t;

/* A traffic row being merged: repeats within the window only count. */
typedef struct {
    uint64_t h;
    char *key; /* kind \x1f vm \x1f host \x1f port \x1f detail: exact match */
    char kind[NB_AUDIT_KIND_MAX + 1];
    char *vm, *host; /* point into key's copies below */
    int port;
    json_t *detail;
    int64_t end_ms;
    uint64_t count;
} agg_t;

/* Traffic rows of one VM in the current minute. */
typedef struct {
    char *vm;
    int64_t minute;
    int64_t rows;
    uint64_t suppressed;
    json_t *kinds; /* {"leak": n, ...} of the suppressed rows */
} bucket_t;

enum { OP_FLUSH = 0, OP_RUN = 1, OP_PRUNE_PLAN = 3, OP_PRUNE_EXEC = 4 };

typedef struct op {
    struct op *next;
    nb_audit_t *a;
    int kind;
    nb_audit_job_fn work; /* OP_RUN */
    nb_audit_done_fn done;
    void *ud;
    int status;
    nb_audit_limits_t lim;
    int64_t now_ms;
    int64_t through; /* prune: last seq to drop (0: nothing) */
    char why[16];    /* prune: "max-rows" / "max-age" */
    int64_t nrows;   /* prune: rows dropped */
} op_t;

typedef struct {
    nb_audit_t *a;
    row_t *rows;
    size_t n;
    int write_status;
    op_t *op;
    int keyed;        /* the key is set: keep the anchor */
    int check_anchor; /* first keyed job: compare the anchor with the log first */
    char tamper[200]; /* what the check found wrong ("" = fine) */
    int64_t tamper_seq;
} job_t;

struct nb_audit {
    uv_loop_t *loop;
    nb_store_t *st;
    sqlite3 *db; /* own connection: transactions never interleave with other modules' */
    nb_events_t *ev;
    uint64_t ev_handle;
    int64_t next_seq;
    char head[65];
    row_t *pending;
    size_t npending, cap;
    op_t *ops, **ops_tail;
    int busy;
    int closed;
    uint64_t written;
    nb_audit_guard_fn guard;
    void *guard_ud;
    uv_timer_t retry;
    uv_timer_t tick; /* aggregates, cap minutes, periodic retention */
    int open_handles;
    uint8_t *key; /* sodium_malloc'd; set once, read by jobs (after set: happens-before) */
    int have_key;
    int anchor_checked;
    char *anchor_path;
    nb_audit_limits_t lim;
    agg_t **aggs;
    size_t naggs;
    bucket_t buckets[VM_BUCKETS];
    size_t nbuckets;
    uint64_t merged, suppressed;
    uint64_t rows_since_prune;
    int64_t last_prune_ms;
    int pruning;
    int closing; /* nb_audit_close runs: flush without starting jobs */
};

static void run_next(nb_audit_t *a);

/* --------------------------------------------------------------- validation */

static int kind_valid(const char *k, int allow_star)
{
    size_t n = strlen(k);
    if (n == 0 || n > NB_AUDIT_KIND_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (allow_star && c == '*' && i == n - 1 && i > 0)
            continue;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int nb_audit_kind_filter_valid(const char *kind)
{
    return kind_valid(kind, 1);
}

/* Keys that could only ever hold a value. A caller using one is a bug. */
static int key_forbidden(const char *k)
{
    static const char *const bad[] = {
        "value",     "secret_value", "password", "passphrase", "plaintext",
        "key_bytes", "master_key",   "data_key", "credential", "authorization_value"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (strcasecmp(k, bad[i]) == 0)
            return 1;
    return 0;
}

/* Walks `j`, refusing forbidden keys and non-name "secret" fields, and
 * replacing strings the guard flags. `path` names the field for the note. */
static int check_json(nb_audit_t *a, json_t *j, const char *path, json_t *redacted, int depth)
{
    if (depth > 16)
        return NB_EINVAL;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach (j, k, v) {
            char sub[160];
            if (key_forbidden(k)) {
                nb_log(NB_LOG_ERR,
                       "audit detail key '%.64s' is forbidden (values never go to "
                       "the audit log)",
                       k);
                return NB_EINVAL;
            }
            if (depth == 0 && strcmp(k, "secret") == 0 &&
                !(json_is_string(v) && nb_secrets_name_valid(json_string_value(v)))) {
                nb_log(NB_LOG_ERR, "audit detail 'secret' must be a secret name");
                return NB_EINVAL;
            }
            if (depth == 0 && strcmp(k, "secrets") == 0) {
                size_t i;
                json_t *x;
                if (!json_is_array(v))
                    return NB_EINVAL;
                json_array_foreach (v, i, x)
                    if (!json_is_string(x) || !nb_secrets_name_valid(json_string_value(x)))
                        return NB_EINVAL;
            }
            snprintf(sub, sizeof sub, "%s%s%.64s", path, path[0] ? "." : "", k);
            int r = check_json(a, v, sub, redacted, depth + 1);
            if (r < 0)
                return r;
        }
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach (j, i, v) {
            int r = check_json(a, v, path, redacted, depth + 1);
            if (r < 0)
                return r;
        }
    } else if (json_is_string(j) && a->guard) {
        if (a->guard(a->guard_ud, json_string_value(j), json_string_length(j))) {
            json_string_set(j, "[redacted]");
            json_array_append_new(redacted, json_string(path));
        }
    }
    return 0;
}

/* Copies a vm/host field, cut to NB_AUDIT_FIELD_MAX, through the guard. */
static const char *field(nb_audit_t *a, const char *s, const char *name, json_t *redacted,
                         char *buf, size_t bufsz)
{
    if (!s)
        return "";
    snprintf(buf, bufsz, "%s", s);
    if (a->guard && a->guard(a->guard_ud, buf, strlen(buf))) {
        json_array_append_new(redacted, json_string(name));
        return "[redacted]";
    }
    return buf;
}

/* ------------------------------------------------------------------ writing */

static void rows_free(row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(rows[i].vm);
    free(rows);
}

static int write_rows(sqlite3 *db, const row_t *rows, size_t n)
{
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "audit: cannot begin: %s", sqlite3_errmsg(db));
        return NB_EINTERNAL;
    }
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO audit (seq, time_ms, kind, vm, host, port, detail,"
                           " prev_hash, hash, mac) VALUES (?,?,?,?,?,?,?,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const row_t *w = &rows[i];
        sqlite3_reset(s);
        if (sqlite3_bind_int64(s, 1, w->seq) != SQLITE_OK ||
            sqlite3_bind_int64(s, 2, w->time_ms) != SQLITE_OK ||
            sqlite3_bind_text(s, 3, w->kind, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_text(s, 4, w->vm, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_text(s, 5, w->host, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_int(s, 6, w->port) != SQLITE_OK ||
            sqlite3_bind_text(s, 7, w->detail, (int)w->detail_len, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_text(s, 8, w->prev, 64, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_text(s, 9, w->hash, 64, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_int(s, 10, w->mac) != SQLITE_OK || sqlite3_step(s) != SQLITE_DONE)
            goto out;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    r = 0;
out:
    if (r < 0) {
        nb_log(NB_LOG_ERR, "audit: cannot write %zu rows: %s", n, sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    sqlite3_finalize(s);
    return r;
}

/* --------------------------------------------------------------- job chain */

/* Pool: is the anchor consistent with the log as it is before this
 * run's first keyed batch? Fills j->tamper when not. */
static void check_anchor(nb_audit_t *a, job_t *j)
{
    int64_t aseq = 0;
    char ahash[65];
    int r = nb_audit_anchor_read(a->anchor_path, a->key, &aseq, ahash);
    sqlite3_stmt *s = NULL;
    if (r == NB_ENOTFOUND) {
        if (sqlite3_prepare_v2(a->db, "SELECT seq FROM audit WHERE mac = 1 LIMIT 1", -1, &s,
                               NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
            snprintf(j->tamper, sizeof j->tamper,
                     "the head anchor file is missing although keyed rows exist");
        sqlite3_finalize(s);
        return;
    }
    if (r == NB_ECRYPTO || r == NB_EINVAL) {
        snprintf(j->tamper, sizeof j->tamper, "the head anchor file %s",
                 r == NB_ECRYPTO ? "does not verify (edited or replaced)" : "is malformed");
        return;
    }
    if (r < 0)
        return;
    j->tamper_seq = aseq;
    if (aseq == 0)
        return;
    if (sqlite3_prepare_v2(a->db,
                           "SELECT hash, (SELECT max(seq) FROM audit) FROM audit WHERE seq = ?", -1,
                           &s, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(s, 1, aseq);
    if (sqlite3_step(s) != SQLITE_ROW)
        snprintf(j->tamper, sizeof j->tamper,
                 "row %lld recorded in the head anchor is gone: the newest rows were deleted",
                 (long long)aseq);
    else if (strcmp((const char *)sqlite3_column_text(s, 0), ahash) != 0)
        snprintf(j->tamper, sizeof j->tamper,
                 "row %lld differs from the anchored head: the chain was rewritten",
                 (long long)aseq);
    sqlite3_finalize(s);
}

/* Pool: which prefix retention drops (op->through, 0 for none). */
static int prune_plan(sqlite3 *db, op_t *op)
{
    sqlite3_stmt *s = NULL;
    int64_t mn = 0, mx = 0, n = 0, p = 0;
    op->through = 0;
    if (sqlite3_prepare_v2(db, "SELECT min(seq), max(seq), count(*) FROM audit", -1, &s, NULL) !=
            SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
        sqlite3_finalize(s);
        return NB_EINTERNAL;
    }
    mn = sqlite3_column_int64(s, 0);
    mx = sqlite3_column_int64(s, 1);
    n = sqlite3_column_int64(s, 2);
    sqlite3_finalize(s);
    if (n == 0)
        return 0;
    if (op->lim.max_rows > 0 && n > op->lim.max_rows) {
        /* Down to 90 %, so that retention runs in chunks, not per row. */
        p = mn + (n - op->lim.max_rows * 9 / 10) - 1;
        snprintf(op->why, sizeof op->why, "max-rows");
    }
    if (op->lim.max_days > 0 &&
        sqlite3_prepare_v2(db, "SELECT max(seq) FROM audit WHERE time_ms < ?", -1, &s, NULL) ==
            SQLITE_OK) {
        sqlite3_bind_int64(s, 1, op->now_ms - op->lim.max_days * 86400000LL);
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int64(s, 0) > p) {
            p = sqlite3_column_int64(s, 0);
            snprintf(op->why, sizeof op->why, "max-age");
        }
        sqlite3_finalize(s);
    }
    if (p >= mx)
        p = mx - 1; /* the newest row stays: the chain continues from it */
    if (p >= mn) {
        op->through = p;
        op->nrows = p - mn + 1;
    }
    return 0;
}

/* Pool: drops the prefix a checkpoint (written in this same job) covers. */
static int prune_exec(sqlite3 *db, int64_t through)
{
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL;
    if (sqlite3_prepare_v2(db, "DELETE FROM audit WHERE seq <= ?", -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, through);
        if (sqlite3_step(s) == SQLITE_DONE)
            r = 0;
    }
    if (r < 0)
        nb_log(NB_LOG_ERR, "audit: retention could not drop rows up to %lld: %s",
               (long long)through, sqlite3_errmsg(db));
    sqlite3_finalize(s);
    return r;
}

static void on_job_work(nb_store_t *st, void *ud)
{
    job_t *j = ud;
    nb_audit_t *a = j->a;
    (void)st;
    if (j->check_anchor)
        check_anchor(a, j);
    j->write_status = j->n ? write_rows(a->db, j->rows, j->n) : 0;
    /* The anchor follows every committed batch (tmp + rename: a reader
     * sees the old or the new head, never half of one). */
    if (j->keyed && j->n && j->write_status == 0 &&
        nb_audit_anchor_write(a->anchor_path, a->key, j->rows[j->n - 1].seq,
                              j->rows[j->n - 1].hash) < 0)
        nb_log(NB_LOG_ERR, "audit: cannot update the head anchor %s", a->anchor_path);
    if (!j->op)
        return;
    if (j->op->kind == OP_RUN)
        j->op->status = j->op->work(a->db, j->keyed ? a->key : NULL, a->anchor_path, j->op->ud);
    else if (j->op->kind == OP_PRUNE_PLAN)
        j->op->status = prune_plan(a->db, j->op);
    else if (j->op->kind == OP_PRUNE_EXEC)
        j->op->status = j->write_status < 0 ? j->write_status : prune_exec(a->db, j->op->through);
}

static int push_op(nb_audit_t *a, op_t *op);
static int64_t queue_row(nb_audit_t *a, const char *kind, const char *vm, const char *host,
                         int port, json_t *detail);

/* Loop: a retention plan came back: checkpoint, then drop. */
static void prune_planned(op_t *op)
{
    nb_audit_t *a = op->a;
    a->pruning = 0;
    if (op->status < 0 || op->through <= 0 || a->closed || !a->have_key)
        return;
    /* The checkpoint is keyed: only the key holder can authorise a cut
     * (the DELETE trigger and verify both look for it). */
    int64_t seq = queue_row(a, NB_AUDIT_PRUNED, NULL, NULL, 0,
                            json_pack("{s:I, s:I, s:s, s:I, s:I}", "through",
                                      (json_int_t)op->through, "rows", (json_int_t)op->nrows,
                                      "reason", op->why, "max_rows", (json_int_t)op->lim.max_rows,
                                      "max_days", (json_int_t)op->lim.max_days));
    if (seq <= 0)
        return;
    op_t *x = calloc(1, sizeof *x);
    if (!x)
        return;
    x->kind = OP_PRUNE_EXEC;
    x->through = op->through;
    x->a = a;
    a->pruning = 1;
    nb_log(NB_LOG_NOTICE, "audit: retention (%s) drops rows up to seq %lld (%lld rows)", op->why,
           (long long)op->through, (long long)op->nrows);
    push_op(a, x);
}

static void op_finish(op_t *op, int status)
{
    if (status < 0 && op->status >= 0)
        op->status = status;
    if (op->kind == OP_PRUNE_PLAN && status != UV_ECANCELED)
        prune_planned(op);
    else if (op->kind == OP_PRUNE_EXEC && op->a)
        op->a->pruning = 0;
    if (op->kind == OP_RUN)
        op->done(op->ud, op->status);
    free(op);
}

/* Puts unwritten rows back in front of the queue, keeping seq order. */
static void requeue(nb_audit_t *a, row_t *rows, size_t n)
{
    row_t *m = malloc((a->npending + n) * sizeof *m);
    if (!m) {
        nb_log(NB_LOG_ERR, "audit: out of memory; %zu rows lost", n);
        rows_free(rows, n);
        return;
    }
    memcpy(m, rows, n * sizeof *m);
    if (a->npending)
        memcpy(m + n, a->pending, a->npending * sizeof *m);
    free(a->pending);
    free(rows);
    a->pending = m;
    a->npending += n;
    a->cap = a->npending;
}

static void on_retry(uv_timer_t *t)
{
    run_next(t->data);
}

static void on_job_done(void *ud, int status)
{
    job_t *j = ud;
    nb_audit_t *a = j->a;
    a->busy = 0;
    if (status == 0 && j->write_status == 0) {
        a->written += j->n;
        rows_free(j->rows, j->n);
    } else if (j->n) {
        requeue(a, j->rows, j->n);
        if (!a->closed)
            uv_timer_start(&a->retry, on_retry, RETRY_MS, 0);
    } else {
        free(j->rows);
    }
    if (j->tamper[0] && !a->closed) {
        nb_log(NB_LOG_ERR, "audit: TAMPERING: %s (recorded as an audit.tamper row)", j->tamper);
        queue_row(
            a, NB_AUDIT_TAMPER, NULL, NULL, 0,
            json_pack("{s:s, s:I}", "reason", j->tamper, "anchor_seq", (json_int_t)j->tamper_seq));
    }
    if (j->op)
        op_finish(j->op, status < 0 ? status : 0);
    free(j);
    if (!a->closed && !uv_is_active((uv_handle_t *)&a->retry))
        run_next(a);
}

static void run_next(nb_audit_t *a)
{
    if (a->busy || a->closed || a->closing || (!a->npending && !a->ops))
        return;
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->a = a;
    j->keyed = a->have_key;
    if (a->have_key && !a->anchor_checked) {
        j->check_anchor = 1;
        a->anchor_checked = 1;
    }
    j->rows = a->pending;
    j->n = a->npending;
    a->pending = NULL;
    a->npending = a->cap = 0;
    if (a->ops) {
        j->op = a->ops;
        a->ops = j->op->next;
        if (!a->ops)
            a->ops_tail = &a->ops;
        j->op->next = NULL;
    }
    a->busy = 1;
    int r = nb_store_queue(a->st, a->loop, on_job_work, on_job_done, j);
    if (r < 0) {
        a->busy = 0;
        nb_log(NB_LOG_ERR, "audit: cannot queue a write: %s", uv_strerror(r));
        requeue(a, j->rows, j->n);
        if (j->op)
            op_finish(j->op, NB_EINTERNAL);
        free(j);
        uv_timer_start(&a->retry, on_retry, RETRY_MS, 0);
    }
}

static int push_op(nb_audit_t *a, op_t *op)
{
    if (a->closed) {
        free(op);
        return NB_ESTATE;
    }
    op->next = NULL;
    *a->ops_tail = op;
    a->ops_tail = &op->next;
    run_next(a);
    return 0;
}

/* ------------------------------------------------------------------ append */

/* Validates, guards and serialises a row, then queues it (no merging, no
 * cap). Takes `detail` (may be NULL). Returns the seq or an error. */
static int64_t queue_row(nb_audit_t *a, const char *kind, const char *vm, const char *host,
                         int port, json_t *detail)
{
    json_t *redacted = NULL;
    int64_t r;
    char vmb[NB_AUDIT_FIELD_MAX], hostb[NB_AUDIT_FIELD_MAX];
    if (!a || a->closed) {
        r = NB_ESTATE;
        goto out;
    }
    if (!kind || !kind_valid(kind, 0) || port < 0 || port > 65535 ||
        (detail && !json_is_object(detail))) {
        nb_log(NB_LOG_ERR, "audit: refused a malformed row (kind '%.40s')", kind ? kind : "");
        r = NB_EINVAL;
        goto out;
    }
    if (a->npending >= NB_AUDIT_PENDING_MAX) {
        nb_log(NB_LOG_ERR, "audit: %zu rows wait for the disk; row of kind %s dropped", a->npending,
               kind);
        r = NB_ETOOBIG;
        goto out;
    }
    if (!detail && !(detail = json_object())) {
        r = -ENOMEM;
        goto out;
    }
    if (!(redacted = json_array())) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = check_json(a, detail, "", redacted, 0)) < 0)
        goto out;
    const char *v = field(a, vm, "vm", redacted, vmb, sizeof vmb);
    const char *h = field(a, host, "host", redacted, hostb, sizeof hostb);
    if (json_array_size(redacted) > 0) {
        nb_log(NB_LOG_WARN, "audit: a row of kind %s carried a secret value; redacted", kind);
        json_object_set(detail, "_redacted", redacted);
    }
    char *txt = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
    if (!txt) {
        r = -ENOMEM;
        goto out;
    }
    if (strlen(txt) > NB_AUDIT_DETAIL_MAX) {
        free(txt);
        txt = strdup("{\"_truncated\":true}");
        if (!txt) {
            r = -ENOMEM;
            goto out;
        }
    }
    if (a->npending == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 16;
        row_t *m = realloc(a->pending, nc * sizeof *m);
        if (!m) {
            free(txt);
            r = -ENOMEM;
            goto out;
        }
        a->pending = m;
        a->cap = nc;
    }
    size_t lv = strlen(v), lh = strlen(h), ld = strlen(txt);
    char *blk = malloc(lv + lh + ld + 3);
    if (!blk) {
        free(txt);
        r = -ENOMEM;
        goto out;
    }
    row_t *w = &a->pending[a->npending];
    memset(w, 0, sizeof *w);
    w->vm = blk;
    memcpy(w->vm, v, lv + 1);
    w->host = w->vm + lv + 1;
    memcpy(w->host, h, lh + 1);
    w->detail = w->host + lh + 1;
    memcpy(w->detail, txt, ld + 1);
    w->detail_len = ld;
    free(txt);
    snprintf(w->kind, sizeof w->kind, "%s", kind);
    w->port = port;
    w->seq = a->next_seq;
    w->time_ms = nb_events_now_ms();
    memcpy(w->prev, a->head, sizeof w->prev);
    if (a->have_key) {
        w->mac = 1;
        nb_audit_row_mac(a->key, w->prev, w->seq, w->time_ms, w->kind, w->vm, w->host, w->port,
                         w->detail, w->detail_len, w->hash);
    } else {
        nb_audit_row_hash(w->prev, w->seq, w->time_ms, w->kind, w->vm, w->host, w->port, w->detail,
                          w->detail_len, w->hash);
    }
    memcpy(a->head, w->hash, sizeof a->head);
    a->npending++;
    a->next_seq++;
    a->rows_since_prune++;
    r = w->seq;
    if (a->have_key && !a->pruning && a->rows_since_prune >= PRUNE_EVERY_ROWS)
        nb_audit_prune_now(a);
    if (!uv_is_active((uv_handle_t *)&a->retry))
        run_next(a);
out:
    json_decref(redacted);
    json_decref(detail);
    return r;
}

/* ------------------------------------------------------- volume: merge, cap */

/* Rows a guest (or a proxy client) can cause at will; everything else is
 * the owner's doing or the daemon's, rare, and never merged. */
static int traffic_kind(const char *k)
{
    static const char *const t[] = {NB_AUDIT_GATE,    NB_AUDIT_INJECT, NB_AUDIT_LEAK,
                                    NB_AUDIT_REFUSAL, NB_AUDIT_LIMIT,  "dns.blocked"};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(k, t[i]) == 0)
            return 1;
    return 0;
}

/* Detail fields that differ per connection or request (proxy.c px_record). */
static const char *const volatile_keys[] = {"conn", "listener", "request", "stream"};

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

/* Keys hold the row's text before the guard ran: wiped like any buffer
 * that could (by a caller's bug) hold a value. */
static void key_free(char *key)
{
    if (key) {
        sodium_memzero(key, strlen(key));
        free(key);
    }
}

static void agg_free(agg_t *g)
{
    if (!g)
        return;
    key_free(g->key);
    json_decref(g->detail);
    free(g);
}

static void on_tick(uv_timer_t *t);

static void tick_start(nb_audit_t *a)
{
    if (!a->closed && !uv_is_active((uv_handle_t *)&a->tick))
        uv_timer_start(&a->tick, on_tick, TICK_MS, TICK_MS);
}

static bucket_t *bucket_get(nb_audit_t *a, const char *vm, int64_t minute)
{
    for (size_t i = 0; i < a->nbuckets; i++)
        if (strcmp(a->buckets[i].vm, vm) == 0)
            return &a->buckets[i];
    bucket_t *b = NULL;
    if (a->nbuckets < VM_BUCKETS) {
        b = &a->buckets[a->nbuckets];
    } else {
        /* Full: reuse a quiet one; failing that, the last slot is shared. */
        for (size_t i = 0; i < a->nbuckets && !b; i++)
            if (a->buckets[i].minute != minute && !a->buckets[i].suppressed)
                b = &a->buckets[i];
        if (!b)
            return &a->buckets[VM_BUCKETS - 1];
        free(b->vm);
        json_decref(b->kinds);
        a->nbuckets--;
    }
    memset(b, 0, sizeof *b);
    if (!(b->vm = strdup(vm)))
        return NULL;
    b->minute = minute;
    a->nbuckets++;
    return b;
}

/* Loop (tick): summaries of the minutes that ended. */
static void buckets_roll(nb_audit_t *a, int64_t minute, int all)
{
    for (size_t i = 0; i < a->nbuckets; i++) {
        bucket_t *b = &a->buckets[i];
        if (b->minute == minute && !all)
            continue;
        if (b->suppressed) {
            json_t *d = json_pack("{s:I, s:O, s:I, s:I}", "suppressed", (json_int_t)b->suppressed,
                                  "kinds", b->kinds, "per_min", (json_int_t)a->lim.vm_per_min,
                                  "minute_ms", (json_int_t)(b->minute * 60000));
            queue_row(a, NB_AUDIT_SUPPRESSED, b->vm[0] ? b->vm : NULL, NULL, 0, d);
        }
        json_decref(b->kinds);
        b->kinds = NULL;
        b->suppressed = 0;
        b->rows = 0;
        b->minute = minute;
    }
}

static void flush(nb_audit_t *a, int all)
{
    int64_t now = nb_events_now_ms();
    size_t k = 0;
    for (size_t i = 0; i < a->naggs; i++) {
        agg_t *g = a->aggs[i];
        if (!all && now < g->end_ms) {
            a->aggs[k++] = g;
            continue;
        }
        if (g->count) {
            json_t *d = json_deep_copy(g->detail);
            if (d) {
                json_object_set_new(d, "_repeated", json_integer((json_int_t)g->count));
                json_object_set_new(d, "_window_ms", json_integer(a->lim.agg_window_ms));
                queue_row(a, g->kind, g->vm[0] ? g->vm : NULL, g->host[0] ? g->host : NULL, g->port,
                          d);
            }
        }
        agg_free(g);
    }
    a->naggs = k;
    buckets_roll(a, now / 60000, all);
    if (a->have_key && !a->pruning && a->lim.max_days > 0 &&
        now - a->last_prune_ms >= PRUNE_EVERY_MS)
        nb_audit_prune_now(a);
}

void nb_audit_flush_aggregates(nb_audit_t *a)
{
    if (a && !a->closed)
        flush(a, 1);
}

/* Called from the tick timer with the timer as argument: see tick_start. */
static void on_tick(uv_timer_t *t)
{
    nb_audit_t *a = t->data;
    flush(a, 0);
    if (!a->naggs) {
        int busy = 0;
        for (size_t i = 0; i < a->nbuckets; i++)
            busy |= a->buckets[i].suppressed != 0 || a->buckets[i].rows != 0;
        if (!busy && !a->have_key)
            uv_timer_stop(&a->tick);
    }
}

int64_t nb_audit_append(nb_audit_t *a, const char *kind, const char *vm, const char *host, int port,
                        json_t *detail)
{
    if (!a || a->closed || !kind || !traffic_kind(kind) ||
        (!a->lim.agg_window_ms && !a->lim.vm_per_min) || (detail && !json_is_object(detail)) ||
        port < 0 || port > 65535)
        return queue_row(a, kind, vm, host, port, detail);
    int64_t now = nb_events_now_ms();
    const char *v = vm ? vm : "", *h = host ? host : "";
    /* The merge key leaves out what names one connection: the same event
     * over many connections is still one kind of event. */
    json_t *kd = detail ? json_copy(detail) : NULL;
    for (size_t i = 0; kd && i < sizeof volatile_keys / sizeof volatile_keys[0]; i++)
        json_object_del(kd, volatile_keys[i]);
    char *txt = kd ? json_dumps(kd, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    char portb[8];
    snprintf(portb, sizeof portb, "%d", port);
    size_t lk = strlen(kind), lv = strlen(v), lh = strlen(h), lp = strlen(portb),
           lt = txt ? strlen(txt) : 0;
    size_t klen = lk + lv + lh + lp + lt + 4;
    char *key = malloc(klen + 1 + lv + 1 + lh + 1);
    if (!key) {
        key_free(txt);
        json_decref(kd);
        return queue_row(a, kind, vm, host, port, detail);
    }
    snprintf(key, klen + 1, "%s\x1f%s\x1f%s\x1f%s\x1f%s", kind, v, h, portb, txt ? txt : "");
    key_free(txt);
    uint64_t hv = fnv(key, klen);
    if (a->lim.agg_window_ms > 0) {
        for (size_t i = 0; i < a->naggs; i++) {
            agg_t *g = a->aggs[i];
            if (g->h == hv && strcmp(g->key, key) == 0 && now < g->end_ms) {
                g->count++;
                a->merged++;
                key_free(key);
                json_decref(kd);
                json_decref(detail);
                return 0;
            }
        }
    }
    if (a->lim.vm_per_min > 0) {
        bucket_t *b = bucket_get(a, v, now / 60000);
        if (b && b->minute != now / 60000)
            buckets_roll(a, now / 60000, 0);
        if (b && b->rows >= a->lim.vm_per_min) {
            if (!b->kinds)
                b->kinds = json_object();
            json_t *c = b->kinds ? json_object_get(b->kinds, kind) : NULL;
            if (b->kinds)
                json_object_set_new(b->kinds, kind,
                                    json_integer(c ? json_integer_value(c) + 1 : 1));
            b->suppressed++;
            a->suppressed++;
            tick_start(a);
            key_free(key);
            json_decref(kd);
            json_decref(detail);
            return 0;
        }
        if (b)
            b->rows++;
        tick_start(a);
    }
    agg_t *g = NULL;
    if (a->lim.agg_window_ms > 0 && a->naggs < NB_AUDIT_AGG_MAX && (g = calloc(1, sizeof *g))) {
        if (!a->aggs && !(a->aggs = calloc(NB_AUDIT_AGG_MAX, sizeof *a->aggs))) {
            free(g);
            g = NULL;
        }
    }
    if (g) {
        g->h = hv;
        g->key = key;
        key = NULL;
        g->vm = g->key + klen + 1;
        memcpy(g->vm, v, lv + 1);
        g->host = g->vm + lv + 1;
        memcpy(g->host, h, lh + 1);
        snprintf(g->kind, sizeof g->kind, "%s", kind);
        g->port = port;
        g->detail = kd ? json_deep_copy(kd) : json_object();
        g->end_ms = now + a->lim.agg_window_ms;
        a->aggs[a->naggs++] = g;
        tick_start(a);
    }
    key_free(key);
    json_decref(kd);
    int64_t r = queue_row(a, kind, vm, host, port, detail);
    if (r < 0 && g) {
        /* The first row failed: nothing to merge into. */
        a->naggs--;
        agg_free(g);
    }
    return r;
}

/* ---------------------------------------------------------------- key, limits */

int nb_audit_set_key(nb_audit_t *a, const uint8_t key[NB_AUDIT_KEY_BYTES])
{
    if (!a || a->closed || !key)
        return NB_ESTATE;
    if (a->have_key)
        return sodium_memcmp(a->key, key, NB_AUDIT_KEY_BYTES) == 0 ? 0 : NB_ESTATE;
    memcpy(a->key, key, NB_AUDIT_KEY_BYTES);
    sodium_mprotect_readonly(a->key);
    a->have_key = 1;
    /* Retention runs from now on: only a keyed checkpoint may cut. */
    tick_start(a);
    nb_audit_prune_now(a);
    run_next(a); /* the first keyed job checks the anchor */
    return 0;
}

void nb_audit_set_limits(nb_audit_t *a, const nb_audit_limits_t *l)
{
    a->lim = *l;
}

void nb_audit_prune_now(nb_audit_t *a)
{
    if (!a || a->closed || a->closing || !a->have_key || a->pruning ||
        (a->lim.max_rows <= 0 && a->lim.max_days <= 0))
        return;
    op_t *op = calloc(1, sizeof *op);
    if (!op)
        return;
    op->kind = OP_PRUNE_PLAN;
    op->a = a;
    op->lim = a->lim;
    op->now_ms = nb_events_now_ms();
    a->pruning = 1;
    a->rows_since_prune = 0;
    a->last_prune_ms = op->now_ms;
    push_op(a, op);
}

uint64_t nb_audit_merged(const nb_audit_t *a)
{
    return a->merged;
}

uint64_t nb_audit_suppressed(const nb_audit_t *a)
{
    return a->suppressed;
}

/* -------------------------------------------------------------- event hook */

static void on_event(const json_t *e, void *ud)
{
    nb_audit_t *a = ud;
    const char *type = nb_json_str(e, "type");
    const char *kind = NULL;
    if (!type)
        return;
    if (strncmp(type, "vm.", 3) == 0)
        kind = NB_AUDIT_VM;
    else if (strcmp(type, "daemon.started") == 0 || strcmp(type, "daemon.stopping") == 0)
        kind = NB_AUDIT_DAEMON;
    if (!kind)
        return;
    json_t *d = json_deep_copy(e);
    if (!d)
        return;
    json_object_del(d, "id");
    json_object_del(d, "time");
    json_object_set_new(d, "event", json_string(type));
    json_object_del(d, "type");
    const char *vm = nb_json_str(e, "vm");
    if (!vm)
        vm = nb_json_str(e, "name");
    nb_audit_append(a, kind, vm, NULL, 0, d);
}

/* ---------------------------------------------------------------- lifecycle */

static int read_head(sqlite3 *db, int64_t *seq, char head[65])
{
    sqlite3_stmt *s = NULL;
    int r = NB_EINTERNAL;
    *seq = 0;
    snprintf(head, 65, "%s", NB_AUDIT_ZERO_HASH);
    if (sqlite3_prepare_v2(db, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", -1, &s,
                           NULL) != SQLITE_OK)
        goto out;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(s, 1);
        *seq = sqlite3_column_int64(s, 0);
        if (h && strlen(h) == 64)
            snprintf(head, 65, "%s", h);
        else
            nb_log(NB_LOG_ERR,
                   "audit: the last row (seq %lld) has no valid hash; new rows "
                   "will not link (run 'nilbox audit verify')",
                   (long long)*seq);
        r = 0;
    } else if (rc == SQLITE_DONE) {
        r = 0;
    }
out:
    if (r < 0)
        nb_log(NB_LOG_ERR, "audit: cannot read the chain head: %s", sqlite3_errmsg(db));
    sqlite3_finalize(s);
    return r;
}

static void on_timer_closed(uv_handle_t *h)
{
    nb_audit_t *a = h->data;
    if (--a->open_handles > 0)
        return;
    sodium_free(a->key);
    free(a->anchor_path);
    free(a);
}

int nb_audit_open(uv_loop_t *loop, nb_store_t *st, nb_events_t *ev, nb_audit_t **out)
{
    nb_audit_t *a = NULL;
    int r;
    *out = NULL;
    const char *path = sqlite3_db_filename(nb_store_db(st), "main");
    if (!path || !path[0])
        return NB_EINVAL;
    if (!(a = calloc(1, sizeof *a)))
        return -ENOMEM;
    a->loop = loop;
    a->st = st;
    a->ops_tail = &a->ops;
    if (sqlite3_open_v2(path, &a->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
                        NULL) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "audit: cannot open %s: %s", path, a->db ? sqlite3_errmsg(a->db) : "?");
        r = NB_EINTERNAL;
        goto fail;
    }
    sqlite3_busy_timeout(a->db, 5000);
    sqlite3_extended_result_codes(a->db, 1);
    if ((r = nb_audit_upgrade_db(a->db)) < 0)
        goto fail;
    int64_t last;
    if ((r = read_head(a->db, &last, a->head)) < 0)
        goto fail;
    a->next_seq = last + 1;
    if (!(a->key = sodium_malloc(NB_AUDIT_KEY_BYTES))) {
        r = -ENOMEM;
        goto fail;
    }
    {
        const char *slash = strrchr(path, '/');
        int dl = slash ? (int)(slash - path) : 1;
        size_t n = (size_t)dl + sizeof NB_AUDIT_HEAD_FILE + 2;
        if (!(a->anchor_path = malloc(n))) {
            r = -ENOMEM;
            goto fail;
        }
        snprintf(a->anchor_path, n, "%.*s/%s", dl, slash ? path : ".", NB_AUDIT_HEAD_FILE);
    }
    a->lim.agg_window_ms =
        (int64_t)nb_env_u64("NILBOX_AUDIT_AGG_WINDOW_MS", 0, INT64_MAX, NB_AUDIT_AGG_WINDOW_MS);
    a->lim.vm_per_min =
        (int64_t)nb_env_u64("NILBOX_AUDIT_VM_PER_MIN", 0, INT64_MAX, NB_AUDIT_VM_PER_MIN);
    a->lim.max_rows = (int64_t)nb_env_u64("NILBOX_AUDIT_MAX_ROWS", 0, INT64_MAX, NB_AUDIT_MAX_ROWS);
    a->lim.max_days = (int64_t)nb_env_u64("NILBOX_AUDIT_MAX_DAYS", 0, INT64_MAX, NB_AUDIT_MAX_DAYS);
    if ((r = uv_timer_init(loop, &a->retry)) < 0)
        goto fail;
    a->retry.data = a;
    uv_timer_init(loop, &a->tick);
    a->tick.data = a;
    uv_unref((uv_handle_t *)&a->tick); /* housekeeping never keeps the loop alive */
    a->open_handles = 2;
    if (ev && (r = nb_events_subscribe(ev, on_event, a, &a->ev_handle)) < 0) {
        a->closed = 1;
        sqlite3_close_v2(a->db);
        a->db = NULL;
        uv_close((uv_handle_t *)&a->retry, on_timer_closed);
        uv_close((uv_handle_t *)&a->tick, on_timer_closed);
        return r;
    }
    a->ev = ev;
    *out = a;
    return 0;
fail:
    if (a->db)
        sqlite3_close_v2(a->db);
    sodium_free(a->key);
    free(a->anchor_path);
    free(a);
    return r;
}

void nb_audit_set_guard(nb_audit_t *a, nb_audit_guard_fn fn, void *ud)
{
    a->guard = fn;
    a->guard_ud = ud;
}

void nb_audit_close(nb_audit_t *a)
{
    if (!a)
        return;
    /* Open merges and cap summaries are rows too: they go in first. */
    a->closing = 1;
    flush(a, 1);
    a->closed = 1;
    for (size_t i = 0; i < a->nbuckets; i++) {
        free(a->buckets[i].vm);
        json_decref(a->buckets[i].kinds);
    }
    a->nbuckets = 0;
    free(a->aggs);
    a->aggs = NULL;
    if (a->ev)
        nb_events_unsubscribe(a->ev, a->ev_handle);
    if (a->busy)
        nb_log(NB_LOG_ERR, "audit: closed while a write is in flight (bug)");
    else if (a->npending && write_rows(a->db, a->pending, a->npending) == 0) {
        a->written += a->npending;
        if (a->have_key && a->anchor_checked &&
            nb_audit_anchor_write(a->anchor_path, a->key, a->pending[a->npending - 1].seq,
                                  a->pending[a->npending - 1].hash) < 0)
            nb_log(NB_LOG_ERR, "audit: cannot update the head anchor at shutdown");
    } else if (a->npending)
        nb_log(NB_LOG_ERR, "audit: %zu rows could not be written at shutdown", a->npending);
    rows_free(a->pending, a->npending);
    a->pending = NULL;
    a->npending = 0;
    while (a->ops) {
        op_t *op = a->ops;
        a->ops = op->next;
        op_finish(op, UV_ECANCELED);
    }
    sqlite3_close_v2(a->db);
    a->db = NULL;
    uv_timer_stop(&a->retry);
    uv_timer_stop(&a->tick);
    uv_close((uv_handle_t *)&a->retry, on_timer_closed);
    uv_close((uv_handle_t *)&a->tick, on_timer_closed);
}

uint64_t nb_audit_written(const nb_audit_t *a)
{
    return a->written;
}

int64_t nb_audit_last_seq(const nb_audit_t *a)
{
    return a->next_seq - 1;
}

int nb_audit_run(nb_audit_t *a, nb_audit_job_fn work, nb_audit_done_fn done, void *ud)
{
    op_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    op->kind = OP_RUN;
    op->work = work;
    op->done = done;
    op->ud = ud;
    return push_op(a, op);
}
