/* App store routes (docs/api.md, "App store"): the catalogue, and apps
 * installed in a VM. Adapters over appstore.h; they own nothing. */
#include <stdio.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/appstore.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"

static int have_store(nb_api_ctx_t *ctx)
{
    if (ctx->d->appstore)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "the app store is not running");
    return 0;
}

/* Loads the catalogue or answers the reason it was refused (A22). */
static int catalogue(nb_api_ctx_t *ctx, nb_appcat_t *cat)
{
    char err[900];
    if (!have_store(ctx))
        return -1;
    if (nb_appstore_catalogue(ctx->d->appstore, cat, err, sizeof err) < 0) {
        nb_api_reply_error(ctx, 502, "catalogue-refused", "%s", err);
        return -1;
    }
    return 0;
}

static void on_catalogue(nb_api_ctx_t *ctx)
{
    nb_appcat_t cat;
    json_t *apps = json_array(), *e;
    size_t i;
    if (catalogue(ctx, &cat) < 0) {
        json_decref(apps);
        return;
    }
    json_array_foreach (cat.apps, i, e)
        json_array_append_new(
            apps, json_pack("{s:O, s:O, s:O, s:O, s:O, s:O}", "id", json_object_get(e, "id"),
                            "name", json_object_get(e, "name"), "kind", json_object_get(e, "kind"),
                            "summary", json_object_get(e, "summary"), "image",
                            json_object_get(e, "image"), "vendor", json_object_get(e, "vendor")));
    nb_api_reply_json(ctx, 200,
                      json_pack("{s:s, s:s, s:o, s:O}", "version", cat.version, "source",
                                cat.source, "apps", apps, "refused", cat.refused));
    nb_appcat_clear(&cat);
}

/* The entry named by {app}, or an answer (NULL). */
static const json_t *find_app(nb_api_ctx_t *ctx, nb_appcat_t *cat)
{
    const char *id = nb_api_param(ctx, "app");
    if (catalogue(ctx, cat) < 0)
        return NULL;
    const json_t *e = nb_appcat_valid_id(id) ? nb_appcat_find(cat, id) : NULL;
    if (!e) {
        nb_api_reply_error(ctx, 404, "not-found",
                           "no app '%.64s' in the catalogue (see 'nilbox store ls')", id ? id : "");
        nb_appcat_clear(cat);
    }
    return e;
}

static void on_show(nb_api_ctx_t *ctx)
{
    nb_appcat_t cat;
    const json_t *e = find_app(ctx, &cat);
    if (!e)
        return;
    nb_api_reply_json(ctx, 200, json_deep_copy(e));
    nb_appcat_clear(&cat);
}

static int vm_ok(nb_api_ctx_t *ctx, const char *vm)
{
    if (vm && nb_vm_valid_name(vm) && ctx->d->vmm && nb_vmm_find(ctx->d->vmm, vm))
        return 1;
    nb_api_reply_error(ctx, 404, "not-found", "no VM named '%.64s' (see 'nilbox vm ls')",
                       vm ? vm : "");
    return 0;
}

static void on_installed(nb_api_ctx_t *ctx)
{
    const char *vm = nb_api_param(ctx, "name");
    if (!have_store(ctx) || !vm_ok(ctx, vm))
        return;
    nb_api_reply_json(ctx, 200, nb_appstore_installed(ctx->d->appstore, vm));
}

/* What an install of {app} in {name} would need: the rules not accepted
 * yet, the secrets it uses, whether the VM's image fits. */
static void on_plan(nb_api_ctx_t *ctx)
{
    const char *vm = nb_api_param(ctx, "name");
    nb_appcat_t cat;
    if (!have_store(ctx) || !vm_ok(ctx, vm))
        return;
    const json_t *e = find_app(ctx, &cat);
    if (!e)
        return;
    json_t *vj = nb_vm_json(nb_vmm_find(ctx->d->vmm, vm), 0);
    const char *image = nb_json_str(vj, "image"), *want = nb_json_str(e, "image");
    nb_api_reply_json(ctx, 200,
                      json_pack("{s:s, s:s, s:O?, s:o, s:O?, s:b, s:s, s:s, s:o, s:s}", "vm", vm,
                                "app", nb_json_str(e, "id"), "rules", json_object_get(e, "rules"),
                                "missing_rules", nb_appstore_missing_rules(ctx->d->appstore, e, vm),
                                "secrets", json_object_get(e, "secrets"), "image_ok",
                                image && !strcmp(image, want), "image", want, "vm_image",
                                image ? image : "", "mcp", nb_appcat_mcp(e), "mcp_policy",
                                NB_APPSTORE_MCP_POLICY));
    json_decref(vj);
    nb_appcat_clear(&cat);
}

static void on_install(nb_api_ctx_t *ctx)
{
    const char *vm = nb_api_param(ctx, "name");
    nb_appcat_t cat;
    char msg[600];
    if (!have_store(ctx) || !vm_ok(ctx, vm))
        return;
    const json_t *e = find_app(ctx, &cat);
    if (!e)
        return;
    int r = nb_appstore_install(ctx->d->appstore, vm, e, cat.version, msg, sizeof msg);
    if (r == NB_EDENIED) {
        json_t *body =
            json_pack("{s:s, s:s, s:o, s:O}", "error", "rules-needed", "message", msg,
                      "missing_rules", nb_appstore_missing_rules(ctx->d->appstore, e, vm),
                      "secrets", json_object_get(e, "secrets") ?: json_null());
        nb_api_reply_json(ctx, 409, body);
    } else if (r == NB_EINVAL) {
        nb_api_reply_error(ctx, 422, "wrong-image", "%s", msg);
    } else if (r == NB_EEXIST) {
        nb_api_reply_error(ctx, 409, "mcp-name-taken", "%s", msg);
    } else if (r < 0) {
        nb_api_reply_error(ctx, 409, "wrong-state", "%s", msg);
    } else {
        nb_api_reply_json(
            ctx, 202,
            json_pack("{s:s, s:s, s:b}", "vm", vm, "app", nb_json_str(e, "id"), "installing", 1));
    }
    nb_appcat_clear(&cat);
}

static void removed(void *ud, int r, const char *msg, const json_t *res)
{
    nb_api_ctx_t *ctx = ud;
    if (r < 0)
        nb_api_reply_error(ctx, 500, "remove-failed", "%s", msg);
    else
        nb_api_reply_json(ctx, 200,
                          json_pack("{s:b, s:O}", "removed", 1, "mcp_removed",
                                    json_object_get(res, "mcp_removed")));
}

static void on_remove(nb_api_ctx_t *ctx)
{
    const char *vm = nb_api_param(ctx, "name");
    nb_appcat_t cat;
    char msg[600];
    if (!have_store(ctx) || !vm_ok(ctx, vm))
        return;
    const json_t *e = find_app(ctx, &cat);
    if (!e)
        return;
    /* The handler answers from `removed`, later. */
    if (nb_appstore_remove(ctx->d->appstore, vm, e, removed, ctx, msg, sizeof msg) < 0)
        nb_api_reply_error(ctx, 409, "wrong-state", "%s", msg);
    nb_appcat_clear(&cat);
}

const nb_api_route_t nb_api_routes_store[] = {
    {"GET", "/v1/store", on_catalogue, 0},
    {"GET", "/v1/store/apps/{app}", on_show, 0},
    {"GET", "/v1/vms/{name}/apps", on_installed, 0},
    {"GET", "/v1/vms/{name}/apps/{app}/plan", on_plan, 0},
    {"POST", "/v1/vms/{name}/apps/{app}", on_install, 0},
    {"DELETE", "/v1/vms/{name}/apps/{app}", on_remove, 0},
    {NULL, NULL, NULL, 0},
};
