/* Routes of LLM usage accounting and limits (egress/usage.h): the summary
 * and records, and the limits (list, set, remove). Quick sqlite reads on
 * the loop thread, as the ledger does. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "daemon/egress/usage.h"
#include "daemon/services.h"
#include "lib/err.h"
#include "lib/json.h"

static int have_usage(nb_api_ctx_t *ctx)
{
    if (ctx->d->usage)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "usage accounting is not running");
    return 0;
}

/* ?vm= (optional) into vm; 0, or -1 after answering 400. */
static int query_vm(nb_api_ctx_t *ctx, char *vm, size_t vmsz)
{
    int q = nb_api_query(ctx, "vm", vm, vmsz);
    if (q < 0) {
        nb_api_reply_error(ctx, 400, "bad_request", "unusable vm parameter");
        return -1;
    }
    if (q == 0)
        vm[0] = '\0';
    return 0;
}

static void on_summary(nb_api_ctx_t *ctx)
{
    char vm[NB_USAGE_WHO_MAX], by[16] = "provider", days[16] = "30";
    if (!have_usage(ctx) || query_vm(ctx, vm, sizeof vm) < 0)
        return;
    if (nb_api_query(ctx, "by", by, sizeof by) < 0 ||
        nb_api_query(ctx, "days", days, sizeof days) < 0) {
        nb_api_reply_error(ctx, 400, "bad_request", "unusable by or days parameter");
        return;
    }
    char *end;
    long d = strtol(days, &end, 10);
    if (*end || d < 1 || d > 3660) {
        nb_api_reply_error(ctx, 422, "invalid", "days is a number from 1 to 3660");
        return;
    }
    int64_t since = (int64_t)time(NULL) * 1000 - (int64_t)d * 86400000;
    json_t *j = nb_usage_summary(ctx->d->usage, vm[0] ? vm : NULL, by, since);
    if (!j) {
        nb_api_reply_error(ctx, 422, "invalid", "by is provider, model, vm or day");
        return;
    }
    json_object_set_new(j, "days", json_integer(d));
    nb_api_reply_json(ctx, 200, j);
}

static void on_records(nb_api_ctx_t *ctx)
{
    char vm[NB_USAGE_WHO_MAX], n[16] = "100";
    if (!have_usage(ctx) || query_vm(ctx, vm, sizeof vm) < 0)
        return;
    if (nb_api_query(ctx, "n", n, sizeof n) < 0) {
        nb_api_reply_error(ctx, 400, "bad_request", "unusable n parameter");
        return;
    }
    json_t *a = nb_usage_records(ctx->d->usage, vm[0] ? vm : NULL, (int)strtol(n, NULL, 10));
    nb_api_reply_json(ctx, 200, json_pack("{s:o}", "records", a ? a : json_array()));
}

static void on_limits(nb_api_ctx_t *ctx)
{
    if (!have_usage(ctx))
        return;
    nb_api_reply_json(ctx, 200, json_pack("{s:o}", "limits", nb_usage_limits_json(ctx->d->usage)));
}

static void on_limit_set(nb_api_ctx_t *ctx)
{
    if (!have_usage(ctx))
        return;
    nb_usage_limit_t l;
    char err[200];
    if (nb_usage_limit_parse(ctx->body, &l, err, sizeof err) < 0) {
        nb_api_reply_error(ctx, 422, "invalid", "%s", err);
        return;
    }
    int64_t id;
    int r = nb_usage_limit_set(ctx->d->usage, &l, &id);
    if (r < 0) {
        nb_api_reply_errno(ctx, r, "cannot store the limit");
        return;
    }
    json_t *all = nb_usage_limits_json(ctx->d->usage), *mine = NULL, *x;
    size_t i;
    json_array_foreach (all, i, x)
        if (nb_json_int(x, "id", 0) == id)
            mine = json_incref(x);
    json_decref(all);
    if (ctx->d->audit)
        nb_audit_append(ctx->d->audit, "limit", l.scope == 1 ? l.who : NULL, NULL, 0,
                        json_pack("{s:s, s:O}", "action", "set", "limit", mine));
    if (ctx->d->events)
        nb_events_emit(ctx->d->events, "usage.limit",
                       json_pack("{s:s, s:O}", "action", "set", "limit", mine));
    nb_api_reply_json(ctx, 200, mine);
}

static void on_limit_rm(nb_api_ctx_t *ctx)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    long long id = strtoll(s, &end, 10);
    if (!have_usage(ctx))
        return;
    if (!s[0] || *end || id < 1) {
        nb_api_reply_error(ctx, 422, "invalid", "a limit id is a number >= 1, not '%.40s'", s);
        return;
    }
    int r = nb_usage_limit_rm(ctx->d->usage, id);
    if (r < 0) {
        nb_api_reply_errno(ctx, r, "no such limit (see 'nilbox limit ls')");
        return;
    }
    if (ctx->d->audit)
        nb_audit_append(ctx->d->audit, "limit", NULL, NULL, 0,
                        json_pack("{s:s, s:I}", "action", "removed", "id", (json_int_t)id));
    if (ctx->d->events)
        nb_events_emit(ctx->d->events, "usage.limit",
                       json_pack("{s:s, s:I}", "action", "removed", "id", (json_int_t)id));
    nb_api_reply_json(ctx, 200, json_pack("{s:I}", "removed", (json_int_t)id));
}

const nb_api_route_t nb_api_routes_usage[] = {
    {"GET", "/v1/usage", on_summary, 0},           {"GET", "/v1/usage/records", on_records, 0},
    {"GET", "/v1/limits", on_limits, 0},           {"POST", "/v1/limits", on_limit_set, 0},
    {"DELETE", "/v1/limits/{id}", on_limit_rm, 0}, {0},
};
