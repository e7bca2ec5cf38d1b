/* Routes of the OAuth service (oauthsvc.h): list, add, test. See
 * docs/api.md. No route carries a secret value: client secrets are set
 * with PUT /v1/secrets/NAME_CLIENT_SECRET, tokens come from exchanges. */
#include <stdio.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/oauthsvc.h"
#include "lib/err.h"

static int have_oauth(nb_api_ctx_t *ctx)
{
    if (ctx->d->oauth)
        return 1;
    nb_api_reply_error(ctx, 409, "wrong-state", "the OAuth service is not available");
    return 0;
}

static void on_list(nb_api_ctx_t *ctx)
{
    if (have_oauth(ctx))
        nb_api_reply_json(ctx, 200, nb_oauthsvc_list_json(ctx->d->oauth));
}

static void on_add_done(void *ud, int status, json_t *result, const char *err)
{
    nb_api_ctx_t *ctx = ud;
    if (status < 0)
        nb_api_reply_error(ctx, status == NB_ESTATE ? 409 : 422, "refused", "%s",
                           err ? err : nb_strerror(status));
    else
        nb_api_reply_json(ctx, 201, result);
}

static void on_add(nb_api_ctx_t *ctx)
{
    if (!have_oauth(ctx))
        return;
    const char *name = ctx->body ? json_string_value(json_object_get(ctx->body, "name")) : NULL;
    const char *script = ctx->body ? json_string_value(json_object_get(ctx->body, "script")) : NULL;
    const char *vm = ctx->body ? json_string_value(json_object_get(ctx->body, "vm")) : NULL;
    if (!name || !script) {
        nb_api_reply_error(ctx, 422, "invalid", "give {\"name\": NAME, \"script\": SCRIPT}");
        return;
    }
    char err[300];
    int r = nb_oauthsvc_add(ctx->d->oauth, name, script, vm ? vm : "", on_add_done, ctx, err,
                            sizeof err);
    if (r < 0)
        nb_api_reply_error(ctx,
                           r == NB_ESTATE      ? 409
                           : r == NB_ENOTFOUND ? 404
                                               : 422,
                           r == NB_ENOTFOUND ? "not-found" : "invalid", "%s", err);
}

static void on_test(nb_api_ctx_t *ctx)
{
    if (!have_oauth(ctx))
        return;
    const char *name = nb_api_param(ctx, "name");
    const char *script = ctx->body ? json_string_value(json_object_get(ctx->body, "script")) : NULL;
    const json_t *sample = ctx->body ? json_object_get(ctx->body, "sample") : NULL;
    if (!name && !script) {
        nb_api_reply_error(ctx, 422, "invalid", "give a binding name or {\"script\": SCRIPT}");
        return;
    }
    json_t *res =
        nb_oauthsvc_test(ctx->d->oauth, name, script, json_is_object(sample) ? sample : NULL);
    int status = 200;
    const char *e = json_string_value(json_object_get(res, "error"));
    if (e && (!strcmp(e, "no such OAuth binding") || !strcmp(e, "no such script")))
        status = 404;
    nb_api_reply_json(ctx, status, res);
}

const nb_api_route_t nb_api_routes_oauth[] = {
    {"GET", "/v1/oauth", on_list, 0},
    {"POST", "/v1/oauth", on_add, 0},
    {"POST", "/v1/oauth/test", on_test, 0},
    {"POST", "/v1/oauth/{name}/test", on_test, 0},
    {0},
};
