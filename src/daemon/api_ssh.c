/* Route of the SSH gateway (sshgw.h): its status, for `nilbox ssh status`
 * and `nilbox ssh-config`. See docs/api.md. */
#include "daemon/api.h"
#include "daemon/sshgw.h"

static void on_status(nb_api_ctx_t *ctx)
{
    if (!ctx->d->sshgw) {
        nb_api_reply_json(ctx, 200,
                          json_pack("{s:b, s:s}", "enabled", 0, "message",
                                    "the SSH gateway is off (NILBOX_SSH_PORT=off)"));
        return;
    }
    nb_api_reply_json(ctx, 200, nb_sshgw_status(ctx->d->sshgw));
}

const nb_api_route_t nb_api_routes_ssh[] = {
    {"GET", "/v1/ssh", on_status, 0},
    {0},
};
