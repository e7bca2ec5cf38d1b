/* Routes of the audit log: query, verify, export (JSON lines). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"

#define DEFAULT_LIMIT 100

static int num_param(nb_api_ctx_t *ctx, const char *name, int64_t min, int64_t max, int64_t *out)
{
    char buf[32], *end;
    int r = nb_api_query(ctx, name, buf, sizeof buf);
    if (r == 0)
        return 0;
    long long v = r == 1 ? strtoll(buf, &end, 10) : 0;
    if (r < 0 || !buf[0] || *end || v < min || v > max) {
        nb_api_reply_error(ctx, 400, "bad-request", "'%s' must be a number from %lld to %lld", name,
                           (long long)min, (long long)max);
        return -1;
    }
    *out = v;
    return 1;
}

/* Fills `f` from the query string; answers and returns -1 on bad input.
 * *tail is set when no `after` was given (the newest rows are wanted). */
static int parse_filter(nb_api_ctx_t *ctx, nb_audit_filter_t *f, int64_t max_limit, int *tail)
{
    char buf[NB_AUDIT_FIELD_MAX];
    int64_t v;
    int r;
    nb_audit_filter_init(f);
    f->limit = 0; /* the caller picks the default */
    *tail = 1;
    if ((r = nb_api_query(ctx, "kind", buf, sizeof buf)) == 1 && buf[0]) {
        if (!nb_audit_kind_filter_valid(buf)) {
            nb_api_reply_error(ctx, 400, "bad-request",
                               "'kind' is a kind such as gate.decision, or a prefix ending in "
                               "'*' (secret.*)");
            return -1;
        }
        memcpy(f->kind, buf, strlen(buf) + 1); /* valid: at most NB_AUDIT_KIND_MAX + 1 */
    } else if (r < 0) {
        nb_api_reply_error(ctx, 400, "bad-request", "'kind' is malformed");
        return -1;
    }
    if ((r = nb_api_query(ctx, "vm", f->vm, sizeof f->vm)) < 0) {
        nb_api_reply_error(ctx, 400, "bad-request", "'vm' is malformed or too long");
        return -1;
    }
    if ((r = nb_api_query(ctx, "since", buf, sizeof buf)) == 1 && buf[0]) {
        if (nb_audit_parse_time(buf, nb_events_now_ms(), &f->since_ms) < 0) {
            nb_api_reply_error(ctx, 400, "bad-request",
                               "'since' is a time: RFC 3339 (2026-01-02T03:04:05Z), a date "
                               "(2026-01-02), milliseconds since the epoch, or a duration back "
                               "from now (90s, 15m, 2h, 7d)");
            return -1;
        }
    } else if (r < 0) {
        nb_api_reply_error(ctx, 400, "bad-request", "'since' is malformed");
        return -1;
    }
    if ((r = num_param(ctx, "after", 0, INT64_MAX / 2, &v)) < 0)
        return -1;
    if (r == 1) {
        f->after_seq = v;
        *tail = 0;
    }
    if ((r = num_param(ctx, "limit", 1, max_limit, &v)) < 0)
        return -1;
    if (r == 1)
        f->limit = v;
    f->newest_first = *tail;
    return 0;
}

typedef struct {
    nb_api_ctx_t *ctx;
    int tail;
    int jsonl;
} query_job_t;

static void on_rows(void *ud, int status, json_t *rows)
{
    query_job_t *q = ud;
    nb_api_ctx_t *ctx = q->ctx;
    int tail = q->tail, jsonl = q->jsonl;
    free(q);
    if (status < 0 || !rows) {
        json_decref(rows);
        nb_api_reply_errno(ctx, status < 0 ? status : -ENOMEM, "the audit log cannot be read");
        return;
    }
    if (tail) {
        /* Asked newest-first to get the last N rows; show them in order. */
        size_t n = json_array_size(rows);
        for (size_t i = 0; i < n / 2; i++) {
            json_t *a = json_incref(json_array_get(rows, i));
            json_t *b = json_incref(json_array_get(rows, n - 1 - i));
            json_array_set_new(rows, i, b);
            json_array_set_new(rows, n - 1 - i, a);
        }
    }
    int64_t last = ctx->d->audit ? nb_audit_last_seq(ctx->d->audit) : 0;
    if (!jsonl) {
        nb_api_reply_json(ctx, 200,
                          json_pack("{s:o, s:I}", "rows", rows, "last_seq", (json_int_t)last));
        return;
    }
    nb_buf_t b;
    size_t i;
    json_t *row;
    int r = 0;
    nb_buf_init(&b, 256u << 20);
    json_array_foreach (rows, i, row) {
        if ((r = nb_json_dump(row, &b)) < 0 || (r = nb_buf_append(&b, "\n", 1)) < 0)
            break;
    }
    json_decref(rows);
    if (r < 0) {
        nb_buf_free(&b);
        nb_api_reply_errno(ctx, r, "the export page does not fit in memory; use a smaller limit");
        return;
    }
    nb_httpd_req_t *req = nb_api_take_req(ctx);
    char hdr[32];
    snprintf(hdr, sizeof hdr, "%lld", (long long)last);
    nb_httpd_add_header(req, "X-Nilbox-Audit-Last-Seq", hdr);
    nb_httpd_respond(req, 200, "application/x-ndjson", b.p ? (const char *)b.p : "", b.len);
    nb_buf_free(&b);
}

static void run_query(nb_api_ctx_t *ctx, int jsonl)
{
    nb_audit_filter_t f;
    int tail;
    if (!ctx->d->audit) {
        nb_api_reply_error(ctx, 503, "unavailable", "the audit log is not open");
        return;
    }
    if (parse_filter(ctx, &f, NB_AUDIT_QUERY_MAX, &tail) < 0)
        return;
    if (jsonl && tail) {
        /* An export walks forward from the start unless told otherwise. */
        tail = 0;
        f.newest_first = 0;
    }
    if (!f.limit)
        f.limit = jsonl ? NB_AUDIT_QUERY_MAX : DEFAULT_LIMIT;
    query_job_t *q = calloc(1, sizeof *q);
    if (!q) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    q->ctx = ctx;
    q->tail = tail;
    q->jsonl = jsonl;
    int r = nb_audit_query(ctx->d->audit, &f, on_rows, q);
    if (r < 0) {
        free(q);
        nb_api_reply_errno(ctx, r, NULL);
    }
}

static void on_query(nb_api_ctx_t *ctx)
{
    run_query(ctx, 0);
}

static void on_export(nb_api_ctx_t *ctx)
{
    run_query(ctx, 1);
}

static void on_verified(void *ud, int status, const nb_audit_verify_t *v)
{
    nb_api_ctx_t *ctx = ud;
    if (status < 0) {
        nb_api_reply_errno(ctx, status, "the audit log cannot be read");
        return;
    }
    json_t *j = json_pack(
        "{s:b, s:I, s:I, s:s, s:b, s:I, s:I, s:I, s:s, s:I, s:I}", "ok", v->ok, "rows",
        (json_int_t)v->rows, "head_seq", (json_int_t)v->head_seq, "head_hash", v->head_hash,
        "keyed", v->keyed, "keyed_rows", (json_int_t)v->keyed_rows, "unkeyed_rows",
        (json_int_t)v->unkeyed_rows, "first_seq", (json_int_t)v->first_seq, "anchor", v->anchor,
        "anchor_seq", (json_int_t)v->anchor_seq, "unanchored_rows", (json_int_t)v->unanchored_rows);
    if (j && !v->ok) {
        json_object_set_new(j, "first_bad_seq", json_integer(v->first_bad_seq));
        json_object_set_new(j, "reason", json_string(v->reason));
    }
    nb_api_reply_json(ctx, 200, j);
}

static void on_verify(nb_api_ctx_t *ctx)
{
    if (!ctx->d->audit) {
        nb_api_reply_error(ctx, 503, "unavailable", "the audit log is not open");
        return;
    }
    int r = nb_audit_verify(ctx->d->audit, on_verified, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

const nb_api_route_t nb_api_routes_audit[] = {
    {"GET", "/v1/audit", on_query, 0},
    {"GET", "/v1/audit/verify", on_verify, 0},
    {"GET", "/v1/audit/export", on_export, 0},
    {0},
};
