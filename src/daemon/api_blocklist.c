/* Routes of the DNS blocklist service (blsvc.h): status, check, and
 * POST /v1/blocklist/load. See docs/api.md. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/blsvc.h"
#include "lib/hostname.h"
#include "lib/err.h"

static int have_blocklist(nb_api_ctx_t *ctx)
{
    if (ctx->d->blocklist)
        return 1;
    nb_api_reply_error(ctx, 409, "wrong-state", "the blocklist is not available");
    return 0;
}

static void on_status(nb_api_ctx_t *ctx)
{
    if (have_blocklist(ctx))
        nb_api_reply_json(ctx, 200, nb_blsvc_status_json(ctx->d->blocklist));
}

static void on_check(nb_api_ctx_t *ctx)
{
    nb_blsvc_t *s = ctx->d->blocklist;
    char raw[NB_HOSTNAME_BUFSZ + 8], name[NB_HOSTNAME_BUFSZ];
    int r = nb_api_query(ctx, "name", raw, sizeof raw);
    if (r <= 0) {
        nb_api_reply_error(ctx, 422, "invalid", "give the name to check: ?name=NAME");
        return;
    }
    if (!have_blocklist(ctx))
        return;
    int n = nb_hostname_normalize(raw, strlen(raw), name, sizeof name);
    if (n < 0) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "not a valid host name (letters, digits, "
                           "hyphens and dots; IP addresses are never listed)");
        return;
    }
    size_t m = 0;
    int hit = nb_blsvc_lookup(s, name, &m);
    json_t *o =
        json_pack("{s:s, s:b, s:b}", "name", name, "blocked", hit, "loaded", nb_blsvc_loaded(s));
    json_object_set_new(o, "matched", hit ? json_string(name + m) : json_null());
    /* Would an exact allow rule let it through anyway (gate.h, rules.h)? */
    const nb_rule_t *ar = NULL;
    nb_dest_t dst;
    if (hit && ctx->d->gate && nb_dest_set(&dst, NULL, name, (size_t)n, 0) == 0)
        ar = nb_rules_exact_allow(nb_gate_rules(ctx->d->gate), &dst);
    json_object_set_new(o, "allow_rule", ar ? json_integer(ar->id) : json_null());
    nb_api_reply_json(ctx, 200, o);
}

static void on_load_done(void *ud, int r, const char *err)
{
    nb_api_ctx_t *ctx = ud;
    nb_blsvc_t *s = ctx->d->blocklist;
    if (r < 0)
        nb_api_reply_error(ctx, 422, "refused", "%s; the previous blocklist stays loaded%s", err,
                           nb_blsvc_loaded(s) ? "" : " (none)");
    else
        nb_api_reply_json(ctx, 200, nb_blsvc_status_json(s));
}

static void on_load(nb_api_ctx_t *ctx)
{
    const char *path = NULL;
    json_t *p = ctx->body ? json_object_get(ctx->body, "path") : NULL;
    if (!have_blocklist(ctx))
        return;
    if (p) {
        path = json_string_value(p);
        if (!path || path[0] != '/' || strlen(path) >= PATH_MAX) {
            nb_api_reply_error(ctx, 422, "invalid", "\"path\" must be an absolute file path");
            return;
        }
    }
    int r = nb_blsvc_load(ctx->d->blocklist, path, on_load_done, ctx);
    if (r == NB_ESTATE)
        nb_api_reply_error(ctx, 409, "wrong-state", "a blocklist load is already running");
    else if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

const nb_api_route_t nb_api_routes_blocklist[] = {
    {"GET", "/v1/blocklist", on_status, 0},
    {"GET", "/v1/blocklist/check", on_check, 0},
    {"POST", "/v1/blocklist/load", on_load, 0},
    {0},
};
