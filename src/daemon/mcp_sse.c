/* A registered MCP server's loopback endpoint, older transport: MCP
 * HTTP+SSE (2024-11-05), for clients that predate Streamable HTTP. Same
 * port, same admission (Host, Origin, bearer token: mcp_http.c checks them
 * before it hands a request here), same sessions, so the same policy.
 *
 * GET /sse opens a session and its event stream; the first event is
 * `endpoint` with the POST URL (/message?sessionId=32 hex). Every client
 * message is POSTed there and answered 202 at once (a malformed or
 * oversized one: 400/413 with its JSON-RPC error); everything the server
 * sends (responses, progress, list_changed, its own requests) goes out as
 * `message` events on that one stream. The stream closing ends the
 * session (the server process stops). */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/apiroute.h"
#include "daemon/mcp_int.h"
#include "lib/err.h"
#include "lib/log.h"

struct mcp_ssess {
    mcp_ssess_t *next;
    mcp_server_t *srv;
    char id[33];
    nb_mcp_sess_t *s; /* NULL once ended */
    nb_ws_t *ws;      /* the event stream; NULL once closed */
    uint64_t last_used;
};

void nb_mcp_respond_rpc_error(nb_httpd_req_t *req, int status, const json_t *id, int code,
                              const char *msg)
{
    json_t *e = nb_jsonrpc_error(id, code, msg);
    char *t = e ? json_dumps(e, JSON_COMPACT) : NULL;
    if (t)
        nb_httpd_respond(req, status, "application/json", t, strlen(t));
    else
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
    free(t);
    json_decref(e);
}

int nb_mcp_parse_post(mcp_server_t *srv, nb_httpd_req_t *req, nb_jsonrpc_msg_t *msg)
{
    json_t *err_id = NULL;
    char why[128];
    int r = nb_jsonrpc_parse(nb_httpd_req_body(req), nb_mcp_frame_max(srv->m), msg, &err_id, why,
                             sizeof why);
    if (r < 0)
        nb_mcp_respond_rpc_error(req, r == NB_JSONRPC_TOO_BIG ? 413 : 400, err_id, r, why);
    json_decref(err_id);
    return r;
}

static void unlink_ss(mcp_ssess_t *ss)
{
    mcp_server_t *srv = ss->srv;
    if (!srv)
        return; /* the endpoint stopped first */
    for (mcp_ssess_t **pp = &srv->ssess; *pp; pp = &(*pp)->next)
        if (*pp == ss) {
            *pp = ss->next;
            srv->nssess--;
            return;
        }
}

/* Closes the stream (and with close_sess the session now, else when the
 * stream is gone); `ss` is freed by on_stream_close. */
static void ss_end(mcp_ssess_t *ss, int close_sess)
{
    nb_mcp_sess_t *s = ss->s;
    if (s && close_sess) {
        ss->s = NULL;
        nb_mcp_sess_close(s);
    }
    if (ss->ws) {
        nb_ws_t *ws = ss->ws;
        ss->ws = NULL;
        nb_ws_close(ws, 1000, NULL);
    }
}

static void on_stream_close(nb_ws_t *ws, int code, void *ud)
{
    mcp_ssess_t *ss = ud;
    (void)ws;
    (void)code;
    ss->ws = NULL;
    ss_end(ss, 1); /* the client went away: so does its server process */
    unlink_ss(ss);
    free(ss);
}

static const nb_ws_cbs_t stream_cbs = {NULL, on_stream_close, 0};

static void on_sess_msg(void *ud, const json_t *msg)
{
    mcp_ssess_t *ss = ud;
    if (!ss->ws)
        return;
    char *t = json_dumps(msg, JSON_COMPACT);
    size_t n = t ? strlen(t) : 0;
    char *ev = t ? malloc(n + 32) : NULL;
    int r = -ENOMEM;
    if (ev) {
        int k = snprintf(ev, n + 32, "event: message\ndata: %s\n\n", t);
        r = nb_ws_send(ss->ws, 1, ev, (size_t)k);
    }
    free(ev);
    free(t);
    if (r < 0) {
        /* A client that does not read (or no memory): dropping a message
         * would leave it waiting forever, so the session ends instead. */
        nb_log(NB_LOG_WARN, "mcp %s/%s: SSE session %.8s ended: %s", ss->srv->vm, ss->srv->name,
               ss->id, nb_strerror(r));
        ss_end(ss, 0); /* not from inside the session's callback: on_stream_close */
    }
}

static void on_sess_end(void *ud, const char *why)
{
    mcp_ssess_t *ss = ud;
    (void)why;
    ss->s = NULL; /* the session is gone already */
    ss_end(ss, 0);
}

static const nb_mcp_sess_cbs_t sess_cbs = {on_sess_msg, on_sess_end};

void nb_mcp_sse_get(mcp_server_t *srv, nb_httpd_req_t *req)
{
    const char *accept = nb_httpd_req_header(req, "Accept");
    if (accept && !strstr(accept, "text/event-stream") && !strstr(accept, "*/*")) {
        nb_httpd_respond_error(req, 406, "not-acceptable", "GET /sse is an event stream");
        return;
    }
    if (srv->nssess >= NB_MCP_HTTP_SESS_MAX) {
        /* The least recently used session makes room, as with Streamable HTTP. */
        mcp_ssess_t *old = NULL;
        for (mcp_ssess_t *ss = srv->ssess; ss; ss = ss->next)
            if (ss->ws && (!old || ss->last_used < old->last_used))
                old = ss;
        if (old)
            ss_end(old, 1);
    }
    mcp_ssess_t *ss = calloc(1, sizeof *ss);
    if (!ss) {
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    ss->srv = srv;
    uint8_t raw[16];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(ss->id, sizeof ss->id, raw, sizeof raw);
    if (nb_mcp_sess_open(srv->m, srv->vm, srv->name, &sess_cbs, ss, &ss->s) < 0) {
        free(ss);
        nb_httpd_respond_error(req, 503, "unavailable", "cannot open an MCP session now");
        return;
    }
    nb_mcp_sess_t *s = ss->s;
    if (nb_httpd_stream_accept(req, 200, "text/event-stream", &stream_cbs, ss, &ss->ws) < 0) {
        nb_mcp_sess_close(s);
        free(ss);
        return;
    }
    ss->last_used = uv_hrtime();
    ss->next = srv->ssess;
    srv->ssess = ss;
    srv->nssess++;
    char ev[96];
    int k = snprintf(ev, sizeof ev, "event: endpoint\ndata: /message?sessionId=%s\n\n", ss->id);
    if (nb_ws_send(ss->ws, 1, ev, (size_t)k) < 0)
        ss_end(ss, 1);
}

static mcp_ssess_t *ss_find(mcp_server_t *srv, const char *query)
{
    char id[40];
    if (nb_apiroute_query_get(query, "sessionId", id, sizeof id) != 1 || strlen(id) != 32)
        return NULL;
    for (mcp_ssess_t *ss = srv->ssess; ss; ss = ss->next)
        if (ss->s && ss->ws && sodium_memcmp(ss->id, id, 32) == 0)
            return ss;
    return NULL;
}

void nb_mcp_sse_post(mcp_server_t *srv, nb_httpd_req_t *req)
{
    mcp_ssess_t *ss = ss_find(srv, nb_httpd_req_query(req));
    if (!ss) {
        nb_httpd_respond_error(req, 404, "not-found", "unknown or ended SSE session");
        return;
    }
    nb_jsonrpc_msg_t msg;
    if (nb_mcp_parse_post(srv, req, &msg) < 0)
        return;
    ss->last_used = uv_hrtime();
    nb_httpd_respond(req, 202, "text/plain", "Accepted", 8);
    nb_mcp_sess_submit(ss->s, &msg); /* answers (even a deny) go out on the stream */
}

void nb_mcp_sse_stop(mcp_server_t *srv)
{
    /* Streams close asynchronously; the sessions end now, and on_stream_close
     * frees what is left (it must not find srv gone: unlink first). */
    while (srv->ssess) {
        mcp_ssess_t *ss = srv->ssess;
        srv->ssess = ss->next;
        srv->nssess--;
        ss->srv = NULL;
        ss_end(ss, 1);
    }
}
