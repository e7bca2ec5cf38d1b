/* The audit log: validation, the append chain, lifecycle. Reading the log
 * (queries, verification, time filters) is in audit_read.c. */
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

#define DOMAIN_TAG "nilbox.audit.v1"
#define RETRY_MS 1000

/* A row hashed on the loop and waiting for the disk. */
typedef struct {
    int64_t seq, time_ms;
    int port;
    char kind[NB_AUDIT_KIND_MAX + 1];
    char *vm, *host, *detail; /* one malloc block: vm\0host\0detail\0 */
    size_t detail_len;
    char prev[65], hash[65];
} row_t;

enum { OP_FLUSH = 0, OP_QUERY = 1, OP_VERIFY = 2 };

typedef struct op {
    struct op *next;
    int kind;
    nb_audit_filter_t f;
    nb_audit_rows_fn rows_cb;
    nb_audit_verify_fn verify_cb;
    void *ud;
    int status;
    json_t *rows;
    nb_audit_verify_t ver;
} op_t;

typedef struct {
    nb_audit_t *a;
    row_t *rows;
    size_t n;
    int write_status;
    op_t *op;
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
    uint64_t appended, written;
    nb_audit_guard_fn guard;
    void *guard_ud;
    uv_timer_t retry;
};

static void run_next(nb_audit_t *a);

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
                           " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)",
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
            sqlite3_step(s) != SQLITE_DONE)
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

static void on_job_work(nb_store_t *st, void *ud)
{
    job_t *j = ud;
    nb_audit_t *a = j->a;
    (void)st;
    j->write_status = j->n ? write_rows(a->db, j->rows, j->n) : 0;
    if (!j->op)
        return;
    if (j->op->kind == OP_QUERY)
        j->op->status = nb_audit_query_db(a->db, &j->op->f, &j->op->rows);
    else if (j->op->kind == OP_VERIFY)
        j->op->status = nb_audit_verify_db(a->db, &j->op->ver);
}

static void op_finish(op_t *op, int status)
{
    if (status < 0 && op->status >= 0)
        op->status = status;
    if (op->kind == OP_QUERY && op->rows_cb) {
        json_t *rows = op->status < 0 ? NULL : op->rows;
        if (!rows)
            json_decref(op->rows);
        op->rows_cb(op->ud, op->status, rows);
    } else if (op->kind == OP_VERIFY && op->verify_cb) {
        op->verify_cb(op->ud, op->status, &op->ver);
    }
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
    if (j->op)
        op_finish(j->op, status < 0 ? status : 0);
    free(j);
    if (!a->closed && !uv_is_active((uv_handle_t *)&a->retry))
        run_next(a);
}

static void run_next(nb_audit_t *a)
{
    if (a->busy || a->closed || (!a->npending && !a->ops))
        return;
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->a = a;
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

int64_t nb_audit_append(nb_audit_t *a, const char *kind, const char *vm, const char *host, int port,
                        json_t *detail)
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
    nb_audit_row_hash(w->prev, w->seq, w->time_ms, w->kind, w->vm, w->host, w->port, w->detail,
                      w->detail_len, w->hash);
    memcpy(a->head, w->hash, sizeof a->head);
    a->npending++;
    a->next_seq++;
    a->appended++;
    r = w->seq;
    if (!uv_is_active((uv_handle_t *)&a->retry))
        run_next(a);
out:
    json_decref(redacted);
    json_decref(detail);
    return r;
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
    int64_t last;
    if ((r = read_head(a->db, &last, a->head)) < 0)
        goto fail;
    a->next_seq = last + 1;
    if ((r = uv_timer_init(loop, &a->retry)) < 0)
        goto fail;
    a->retry.data = a;
    if (ev && (r = nb_events_subscribe(ev, on_event, a, &a->ev_handle)) < 0) {
        uv_close((uv_handle_t *)&a->retry, (uv_close_cb)free);
        sqlite3_close_v2(a->db);
        return r;
    }
    a->ev = ev;
    *out = a;
    return 0;
fail:
    if (a->db)
        sqlite3_close_v2(a->db);
    free(a);
    return r;
}

void nb_audit_set_guard(nb_audit_t *a, nb_audit_guard_fn fn, void *ud)
{
    a->guard = fn;
    a->guard_ud = ud;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void nb_audit_close(nb_audit_t *a)
{
    if (!a)
        return;
    a->closed = 1;
    if (a->ev)
        nb_events_unsubscribe(a->ev, a->ev_handle);
    if (a->busy)
        nb_log(NB_LOG_ERR, "audit: closed while a write is in flight (bug)");
    else if (a->npending && write_rows(a->db, a->pending, a->npending) == 0)
        a->written += a->npending;
    else if (a->npending)
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
    uv_close((uv_handle_t *)&a->retry, on_timer_closed);
}

uint64_t nb_audit_appended(const nb_audit_t *a)
{
    return a->appended;
}

uint64_t nb_audit_written(const nb_audit_t *a)
{
    return a->written;
}

int64_t nb_audit_last_seq(const nb_audit_t *a)
{
    return a->next_seq - 1;
}

int nb_audit_query(nb_audit_t *a, const nb_audit_filter_t *f, nb_audit_rows_fn cb, void *ud)
{
    op_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    op->kind = OP_QUERY;
    op->f = *f;
    op->rows_cb = cb;
    op->ud = ud;
    return push_op(a, op);
}

int nb_audit_verify(nb_audit_t *a, nb_audit_verify_fn cb, void *ud)
{
    op_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    op->kind = OP_VERIFY;
    op->verify_cb = cb;
    op->ud = ud;
    return push_op(a, op);
}
