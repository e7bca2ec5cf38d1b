/* Routes of port mappings (portsvc.h): list, add, remove. See docs/api.md
 * ("Port mappings"). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "daemon/api.h"
#include "daemon/portsvc.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"

static int have_ports(nb_api_ctx_t *ctx)
{
    if (ctx->d->ports)
        return 1;
    nb_api_reply_error(ctx, 409, "wrong-state", "port mappings are not available");
    return 0;
}

static void on_list(nb_api_ctx_t *ctx)
{
    char vm[80];
    int r = nb_api_query(ctx, "vm", vm, sizeof vm);
    if (r < 0 || (r > 0 && !nb_vm_valid_name(vm))) {
        nb_api_reply_error(ctx, 422, "invalid", "'vm' must be a VM name");
        return;
    }
    if (have_ports(ctx))
        nb_api_reply_json(
            ctx, 200,
            json_pack("{s:o}", "ports", nb_portsvc_list(ctx->d->ports, r > 0 ? vm : NULL)));
}

static int port_of(const json_t *j)
{
    if (!json_is_integer(j))
        return -1;
    json_int_t v = json_integer_value(j);
    return v >= 1 && v <= 65535 ? (int)v : -1;
}

static void on_add(nb_api_ctx_t *ctx)
{
    json_t *b = ctx->body;
    const char *vm = b ? nb_json_str(b, "vm") : NULL;
    int hp = b ? port_of(json_object_get(b, "host_port")) : -1;
    int gp = b ? port_of(json_object_get(b, "guest_port")) : -1;
    json_t *bind = b ? json_object_get(b, "bind") : NULL;
    json_t *pub = b ? json_object_get(b, "public") : NULL;
    if (!vm || !nb_vm_valid_name(vm)) {
        nb_api_reply_error(ctx, 422, "invalid", "'vm' must be a VM name");
        return;
    }
    if (hp < 0 || gp < 0) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'host_port' and 'guest_port' must be numbers from 1 to 65535");
        return;
    }
    if ((bind && !json_is_null(bind) && !json_is_string(bind)) || (pub && !json_is_boolean(pub))) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'bind' must be an IP address and 'public' true or false");
        return;
    }
    if (!have_ports(ctx))
        return;
    char err[300];
    json_t *out = NULL;
    int r = nb_portsvc_add(ctx->d->ports, vm, json_is_string(bind) ? json_string_value(bind) : NULL,
                           hp, gp, json_is_true(pub), &out, err, sizeof err);
    if (r == 0)
        nb_api_reply_json(ctx, 201, out);
    else if (r == NB_ENOTFOUND)
        nb_api_reply_error(ctx, 404, "not-found", "%s", err);
    else if (r == NB_EINVAL)
        nb_api_reply_error(ctx, 422, "invalid", "%s", err);
    else if (r == UV_EADDRINUSE || r == NB_EEXIST)
        nb_api_reply_error(ctx, 409, "port-busy", "%s", err);
    else if (r == UV_EACCES)
        nb_api_reply_error(ctx, 409, "port-denied", "%s (ports below 1024 need privileges)", err);
    else
        nb_api_reply_error(ctx, 500, "internal", "%s", err);
}

static void reply_rm(nb_api_ctx_t *ctx, int64_t id)
{
    if (id > 0 && nb_portsvc_rm(ctx->d->ports, id) == 0)
        nb_api_reply_json(ctx, 200, json_pack("{s:I, s:b}", "id", (json_int_t)id, "removed", 1));
    else
        nb_api_reply_error(ctx, 404, "not-found", "no such port mapping");
}

static int64_t parse_id(const char *s)
{
    char *end;
    errno = 0;
    long long v = s && *s ? strtoll(s, &end, 10) : -1;
    return (s && *s && !*end && !errno && v > 0) ? (int64_t)v : -1;
}

static void on_rm(nb_api_ctx_t *ctx)
{
    int64_t id = parse_id(nb_api_param(ctx, "id"));
    if (id < 0) {
        nb_api_reply_error(ctx, 422, "invalid", "the mapping id must be a positive number");
        return;
    }
    if (have_ports(ctx))
        reply_rm(ctx, id);
}

static void on_rm_vm(nb_api_ctx_t *ctx)
{
    const char *vm = nb_api_param(ctx, "vm");
    int64_t hp = parse_id(nb_api_param(ctx, "port"));
    if (!vm || !nb_vm_valid_name(vm) || hp < 1 || hp > 65535) {
        nb_api_reply_error(ctx, 422, "invalid", "give a VM name and a host port (1-65535)");
        return;
    }
    if (have_ports(ctx))
        reply_rm(ctx, nb_portsvc_find(ctx->d->ports, vm, (int)hp));
}

const nb_api_route_t nb_api_routes_ports[] = {
    {"GET", "/v1/ports", on_list, 0},
    {"POST", "/v1/ports", on_add, 0},
    {"DELETE", "/v1/ports/{id}", on_rm, 0},
    {"DELETE", "/v1/ports/{vm}/{port}", on_rm_vm, 0},
    {0},
};
