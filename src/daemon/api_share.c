/* Routes of folder mapping (sharesvc.h):
 *   GET    /v1/shares[?vm=VM]   list
 *   POST   /v1/shares           {"vm", "host", "guest", "ro"}: add (answers once mounted, or at
 *                               once when the VM is not running)
 *   DELETE /v1/shares/{id}      remove (unmounts) */
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/sharesvc.h"
#include "lib/err.h"
#include "lib/json.h"

static int have_svc(nb_api_ctx_t *ctx)
{
    if (ctx->d->shares)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "the share service is not running");
    return 0;
}

static void on_list(nb_api_ctx_t *ctx)
{
    char vm[128];
    if (!have_svc(ctx))
        return;
    int r = nb_api_query(ctx, "vm", vm, sizeof vm);
    if (r < 0) {
        nb_api_reply_errno(ctx, NB_EINVAL, "bad vm parameter");
        return;
    }
    nb_api_reply_json(ctx, 200, nb_sharesvc_list(ctx->d->shares, r == 1 ? vm : NULL));
}

static void add_done(void *ud, int r, const char *msg, json_t *share)
{
    nb_api_ctx_t *ctx = ud;
    if (r < 0)
        nb_api_reply_errno(ctx, r, msg);
    else
        nb_api_reply_json(ctx, 201, json_incref(share));
}

static void on_add(nb_api_ctx_t *ctx)
{
    char err[512];
    if (!have_svc(ctx))
        return;
    json_t *b = ctx->body;
    const char *vm = nb_json_str(b, "vm"), *host = nb_json_str(b, "host");
    const char *guest = nb_json_str(b, "guest");
    json_t *ro = json_object_get(b, "ro");
    if (!vm || !host || !guest || (ro && !json_is_boolean(ro))) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "need {\"vm\": NAME, \"host\": DIR, \"guest\": DIR, \"ro\": bool}");
        return;
    }
    int r = nb_sharesvc_add(ctx->d->shares, vm, host, guest, ro && json_is_true(ro), add_done, ctx,
                            err, sizeof err);
    if (r < 0)
        nb_api_reply_errno(ctx, r, err);
}

static void on_rm(nb_api_ctx_t *ctx)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    long long id = strtoll(s, &end, 10);
    if (!have_svc(ctx))
        return;
    if (!s[0] || *end || id < 1) {
        nb_api_reply_error(ctx, 422, "invalid", "a share id is a number >= 1, not '%.40s'", s);
        return;
    }
    int r = nb_sharesvc_rm(ctx->d->shares, id);
    if (r < 0)
        nb_api_reply_errno(ctx, r, r == NB_ENOTFOUND ? "no such share" : NULL);
    else
        nb_api_reply_json(ctx, 200, json_pack("{s:I}", "removed", (json_int_t)id));
}

const nb_api_route_t nb_api_routes_share[] = {
    {"GET", "/v1/shares", on_list, 0},
    {"POST", "/v1/shares", on_add, 0},
    {"DELETE", "/v1/shares/{id}", on_rm, 0},
    {0},
};
