/* Routes of the MCP bridge (docs/api.md, "MCP"): the registry (list, add,
 * remove, policy, logs) and the session WebSocket that `nilbox mcp stdio`
 * speaks: one text message per JSON-RPC message, both ways. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/mcp.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define LOG_TAIL (64 * 1024)

static int have_mcp(nb_api_ctx_t *ctx)
{
    if (ctx->d->mcp)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "the MCP bridge is not running");
    return 0;
}

static void done(void *ud, int r, const char *msg, json_t *result)
{
    nb_api_ctx_t *ctx = ud;
    if (r < 0)
        nb_api_reply_errno(ctx, r, msg);
    else
        nb_api_reply_json(ctx, 200, json_incref(result));
}

static void on_list(nb_api_ctx_t *ctx)
{
    char vm[64];
    if (!have_mcp(ctx))
        return;
    int q = nb_api_query(ctx, "vm", vm, sizeof vm);
    nb_api_reply_json(ctx, 200, nb_mcp_list(ctx->d->mcp, q == 1 ? vm : NULL));
}

static void on_add(nb_api_ctx_t *ctx)
{
    if (!have_mcp(ctx))
        return;
    json_t *argv = json_object_get(ctx->body, "command");
    const char *url = nb_json_str(ctx->body, "url");
    nb_mcp_add(ctx->d->mcp, nb_json_str(ctx->body, "vm"), nb_json_str(ctx->body, "name"), argv, url,
               done, ctx);
}

static void on_get(nb_api_ctx_t *ctx)
{
    char v[8];
    if (!have_mcp(ctx))
        return;
    /* The token only on request (`mcp config`): listings never carry it. */
    int secret = nb_api_query(ctx, "token", v, sizeof v) == 1 && !strcmp(v, "1");
    json_t *j = nb_mcp_get(ctx->d->mcp, nb_api_param(ctx, "vm"), nb_api_param(ctx, "name"), secret);
    if (!j) {
        nb_api_reply_error(ctx, 404, "not-found", "no MCP server '%.32s' in VM '%.32s'",
                           nb_api_param(ctx, "name"), nb_api_param(ctx, "vm"));
        return;
    }
    nb_api_reply_json(ctx, 200, j);
}

static void on_rm(nb_api_ctx_t *ctx)
{
    if (have_mcp(ctx))
        nb_mcp_rm(ctx->d->mcp, nb_api_param(ctx, "vm"), nb_api_param(ctx, "name"), done, ctx);
}

static void on_policy(nb_api_ctx_t *ctx)
{
    if (have_mcp(ctx))
        nb_mcp_policy_set(ctx->d->mcp, nb_api_param(ctx, "vm"), nb_api_param(ctx, "name"),
                          nb_json_str(ctx->body, "tool"), nb_json_str(ctx->body, "action"), done,
                          ctx);
}

/* The last LOG_TAIL bytes of the server's stderr log, as text. */
static void on_logs(nb_api_ctx_t *ctx)
{
    char path[NB_HOME_PATH_MAX + 160];
    if (!have_mcp(ctx))
        return;
    json_t *j = nb_mcp_get(ctx->d->mcp, nb_api_param(ctx, "vm"), nb_api_param(ctx, "name"), 0);
    if (!j) {
        nb_api_reply_error(ctx, 404, "not-found", "no such MCP server");
        return;
    }
    json_decref(j);
    nb_mcp_log_path(ctx->d->mcp, nb_api_param(ctx, "vm"), nb_api_param(ctx, "name"), path,
                    sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    char *buf = malloc(LOG_TAIL);
    ssize_t n = 0;
    if (fd >= 0 && buf) {
        struct stat st;
        off_t off = fstat(fd, &st) == 0 && st.st_size > LOG_TAIL ? st.st_size - LOG_TAIL : 0;
        n = pread(fd, buf, LOG_TAIL, off);
    }
    if (fd >= 0)
        close(fd);
    json_t *body = json_pack("{s:s%}", "log", buf ? buf : "", (size_t)(n > 0 ? n : 0));
    free(buf);
    nb_api_reply_json(ctx, 200, body ? body : json_pack("{s:s}", "log", ""));
}

/* ------------------------------------------------------------ sessions */

typedef struct {
    nb_ws_t *ws;
    nb_mcp_sess_t *s;
    size_t frame_max;
} wsess_t;

static void ws_send_json(nb_ws_t *ws, const json_t *msg)
{
    char *t = json_dumps(msg, JSON_COMPACT);
    if (t && nb_ws_send(ws, 1, t, strlen(t)) < 0)
        nb_ws_close(ws, 1011, "the client does not keep up");
    free(t);
}

static void on_sess_msg(void *ud, const json_t *msg)
{
    wsess_t *w = ud;
    if (w->ws)
        ws_send_json(w->ws, msg);
}

static void on_sess_end(void *ud, const char *why)
{
    wsess_t *w = ud;
    w->s = NULL;
    if (w->ws)
        nb_ws_close(w->ws, 1001, why);
}

static const nb_mcp_sess_cbs_t sess_cbs = {on_sess_msg, on_sess_end};

static void ws_message(nb_ws_t *ws, int text, const uint8_t *data, size_t len, void *ud)
{
    wsess_t *w = ud;
    nb_jsonrpc_msg_t msg;
    json_t *err_id = NULL;
    char why[128];
    int r = text ? nb_jsonrpc_parse(nb_iov(data, len), w->frame_max, &msg, &err_id, why, sizeof why)
                 : NB_JSONRPC_PARSE_ERROR;
    if (!text)
        snprintf(why, sizeof why, "messages are JSON text");
    if (r < 0) {
        json_t *e = nb_jsonrpc_error(err_id, r, why);
        if (e)
            ws_send_json(ws, e);
        json_decref(e);
        json_decref(err_id);
        return;
    }
    if (w->s)
        nb_mcp_sess_submit(w->s, &msg);
    else
        nb_jsonrpc_msg_clear(&msg);
}

static void ws_closed(nb_ws_t *ws, int code, void *ud)
{
    wsess_t *w = ud;
    (void)ws;
    (void)code;
    nb_mcp_sess_close(w->s);
    free(w);
}

static const nb_ws_cbs_t ws_cbs_base = {ws_message, ws_closed, 0};

static void on_session(nb_api_ctx_t *ctx)
{
    if (!have_mcp(ctx))
        return;
    if (!nb_api_is_upgrade(ctx)) {
        nb_api_reply_error(ctx, 400, "bad-request", "this route is a WebSocket");
        return;
    }
    wsess_t *w = calloc(1, sizeof *w);
    if (!w) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    w->frame_max = nb_mcp_frame_max(ctx->d->mcp);
    int r = nb_mcp_sess_open(ctx->d->mcp, nb_api_param(ctx, "vm"), nb_api_param(ctx, "name"),
                             &sess_cbs, w, &w->s);
    if (r < 0) {
        free(w);
        nb_api_reply_errno(ctx, r, r == NB_ENOTFOUND ? "no such MCP server" : "too many sessions");
        return;
    }
    /* Twice the cap: a bigger frame still arrives whole and gets a
     * JSON-RPC error of ours instead of a WebSocket close. */
    nb_ws_cbs_t cbs = ws_cbs_base;
    cbs.max_message = 2 * w->frame_max;
    if (nb_httpd_ws_accept(nb_api_take_req(ctx), &cbs, w, &w->ws) < 0) {
        nb_mcp_sess_close(w->s);
        free(w);
    }
}

const nb_api_route_t nb_api_routes_mcp[] = {
    {"GET", "/v1/mcp", on_list, 0},
    {"POST", "/v1/mcp", on_add, 0},
    {"GET", "/v1/mcp/{vm}/{name}", on_get, 0},
    {"DELETE", "/v1/mcp/{vm}/{name}", on_rm, 0},
    {"PUT", "/v1/mcp/{vm}/{name}/policy", on_policy, 0},
    {"GET", "/v1/mcp/{vm}/{name}/logs", on_logs, 0},
    {"GET", "/v1/mcp/{vm}/{name}/session", on_session, 0},
    {0},
};
