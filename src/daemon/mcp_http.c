/* A registered MCP server's loopback endpoint: MCP Streamable HTTP
 * (2025-06-18) on http://127.0.0.1:PORT/mcp, one nb_httpd per server.
 *
 * Admission, before anything else: Host must name the loopback endpoint
 * and a present Origin must be that same loopback origin (DNS rebinding:
 * a web page cannot reach it through a name it controls), then
 * `Authorization: Bearer <token>` (constant-time compare; another local
 * account does not have the token, A26).
 *
 * POST /mcp carries one JSON-RPC message. `initialize` without a session
 * header makes a session (Mcp-Session-Id: 32 hex); every other message
 * names its session (unknown: 404, so the client initializes again). A
 * request is answered with an SSE stream (or one JSON body when the client
 * accepts no event stream) that carries what the server sends while it
 * works (progress) and ends with its response; notifications and responses
 * get 202. GET /mcp opens the session's stream for server-initiated
 * messages that no POST stream is waiting for; DELETE ends the session.
 * GET /sse and POST /message are the older HTTP+SSE transport (mcp_sse.c). */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/mcp_int.h"
#include "lib/err.h"
#include "lib/http.h"
#include "lib/log.h"

#define BACKLOG_MAX 64

typedef struct hstream hstream_t;

struct hstream {
    hstream_t *next;
    mcp_hsess_t *h;      /* NULL once the session is gone */
    nb_ws_t *ws;         /* SSE stream, or NULL */
    nb_httpd_req_t *req; /* JSON mode: the request waiting for its answer */
    char key[160];       /* the request id this stream answers; "" for GET */
};

struct mcp_hsess {
    mcp_hsess_t *next;
    mcp_server_t *srv;
    char id[33];
    nb_mcp_sess_t *s;
    hstream_t *streams; /* newest first */
    json_t *backlog;    /* server messages no stream took yet */
    uint64_t last_used;
};

/* ------------------------------------------------------------ streams */

static void stream_unlink(hstream_t *st)
{
    if (!st->h)
        return;
    st->h->last_used = uv_hrtime(); /* idle from the end of its last stream */
    for (hstream_t **pp = &st->h->streams; *pp; pp = &(*pp)->next)
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    st->h = NULL;
}

static void on_stream_close(nb_ws_t *ws, int code, void *ud)
{
    hstream_t *st = ud;
    (void)ws;
    (void)code;
    stream_unlink(st);
    free(st);
}

static const nb_ws_cbs_t stream_cbs = {NULL, on_stream_close, 0};

static int sse_send(hstream_t *st, const json_t *msg)
{
    char *t = json_dumps(msg, JSON_COMPACT);
    if (!t)
        return -ENOMEM;
    size_t n = strlen(t);
    char *ev = malloc(n + 32);
    int r = -ENOMEM;
    if (ev) {
        int k = snprintf(ev, n + 32, "event: message\ndata: %s\n\n", t);
        r = nb_ws_send(st->ws, 1, ev, (size_t)k);
    }
    free(ev);
    free(t);
    return r;
}

/* Ends a stream: SSE closes, a JSON request gets `final` (or 503). */
static void stream_end(hstream_t *st, const json_t *final)
{
    stream_unlink(st);
    if (st->ws) {
        nb_ws_close(st->ws, 1000, NULL); /* on_stream_close frees st */
        return;
    }
    if (st->req) {
        char *t = final ? json_dumps(final, JSON_COMPACT) : NULL;
        if (t)
            nb_httpd_respond(st->req, 200, "application/json", t, strlen(t));
        else
            nb_httpd_respond_error(st->req, 503, "unavailable", "the MCP session ended");
        free(t);
    }
    free(st);
}

/* The client cancelled a request: the server will not answer it (the
 * session drops an answer that comes anyway), so its stream ends here
 * rather than stay open, with its connection, until the session ends. */
static void stream_cancelled(mcp_hsess_t *h, const json_t *id)
{
    char key[160] = "";
    nb_jsonrpc_id_key(id, key, sizeof key);
    for (hstream_t *st = h->streams; st && key[0]; st = st->next)
        if (!strcmp(st->key, key)) {
            json_t *e = nb_jsonrpc_error(id, NB_JSONRPC_CANCELLED, "cancelled by the client");
            stream_end(st, e); /* SSE: closes (no answer); JSON mode: this error */
            json_decref(e);
            return;
        }
}

/* ------------------------------------------------------------ sessions */

static void on_sess_msg(void *ud, const json_t *msg)
{
    mcp_hsess_t *h = ud;
    char key[160] = "";
    int is_resp = !json_object_get(msg, "method");
    if (is_resp)
        nb_jsonrpc_id_key(json_object_get(msg, "id"), key, sizeof key);
    hstream_t *to = NULL, *get = NULL;
    for (hstream_t *st = h->streams; st && !to; st = st->next) {
        if (is_resp ? key[0] && !strcmp(st->key, key) : st->ws && st->key[0])
            to = st; /* its request's stream; else the newest POST stream */
        else if (!st->key[0])
            get = st;
    }
    if (!to && !is_resp)
        to = get;
    if (to && is_resp) {
        if (to->ws)
            sse_send(to, msg);
        stream_end(to, msg);
        return;
    }
    if (to && to->ws && sse_send(to, msg) == 0)
        return;
    if (json_array_size(h->backlog) >= BACKLOG_MAX)
        json_array_remove(h->backlog, 0);
    json_array_append(h->backlog, (json_t *)msg);
}

static void hsess_free(mcp_hsess_t *h, int close_sess)
{
    mcp_server_t *srv = h->srv;
    for (mcp_hsess_t **pp = &srv->hsess; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            srv->nhsess--;
            break;
        }
    while (h->streams)
        stream_end(h->streams, NULL);
    if (close_sess)
        nb_mcp_sess_close(h->s);
    json_decref(h->backlog);
    free(h);
}

static void on_sess_end(void *ud, const char *why)
{
    (void)why;
    hsess_free(ud, 0); /* the session is gone already */
}

static const nb_mcp_sess_cbs_t sess_cbs = {on_sess_msg, on_sess_end};

static mcp_hsess_t *hsess_find(mcp_server_t *srv, const char *id)
{
    for (mcp_hsess_t *h = srv->hsess; h && id; h = h->next)
        if (strlen(id) == 32 && sodium_memcmp(h->id, id, 32) == 0)
            return h;
    return NULL;
}

static mcp_hsess_t *hsess_new(mcp_server_t *srv)
{
    if (srv->nhsess >= NB_MCP_HTTP_SESS_MAX) {
        /* The least recently used session makes room. */
        mcp_hsess_t *old = srv->hsess;
        for (mcp_hsess_t *h = srv->hsess; h; h = h->next)
            if (h->last_used < old->last_used)
                old = h;
        hsess_free(old, 1);
    }
    mcp_hsess_t *h = calloc(1, sizeof *h);
    if (!h || !(h->backlog = json_array())) {
        free(h);
        return NULL;
    }
    h->srv = srv;
    uint8_t raw[16];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(h->id, sizeof h->id, raw, sizeof raw);
    if (nb_mcp_sess_open(srv->m, srv->vm, srv->name, &sess_cbs, h, &h->s) < 0) {
        json_decref(h->backlog);
        free(h);
        return NULL;
    }
    h->next = srv->hsess;
    srv->hsess = h;
    srv->nhsess++;
    return h;
}

/* ------------------------------------------------------------ requests */

static int host_ok(const mcp_server_t *srv, const char *host)
{
    char a[64], b[64], c[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", srv->port);
    snprintf(b, sizeof b, "localhost:%d", srv->port);
    snprintf(c, sizeof c, "[::1]:%d", srv->port);
    return host && (!strcmp(host, a) || !strcasecmp(host, b) || !strcmp(host, c));
}

static int origin_ok(const mcp_server_t *srv, const char *origin)
{
    if (!origin)
        return 1; /* not a browser */
    char a[64], b[64];
    snprintf(a, sizeof a, "http://127.0.0.1:%d", srv->port);
    snprintf(b, sizeof b, "http://localhost:%d", srv->port);
    return !strcmp(origin, a) || !strcasecmp(origin, b);
}

static int token_ok(const mcp_server_t *srv, const char *auth)
{
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return 0;
    const char *t = auth + 7;
    return strlen(t) == 64 && sodium_memcmp(t, srv->token, 64) == 0;
}

static int accepts(const char *accept, const char *type)
{
    return accept && strstr(accept, type) != NULL;
}

static void on_post(mcp_server_t *srv, nb_httpd_req_t *req)
{
    nb_jsonrpc_msg_t msg;
    if (nb_mcp_parse_post(srv, req, &msg) < 0)
        return;
    const char *sid = nb_httpd_req_header(req, "Mcp-Session-Id");
    mcp_hsess_t *h = NULL;
    if (msg.kind == NB_JSONRPC_REQUEST && !strcmp(msg.method, "initialize") && !sid) {
        if (!(h = hsess_new(srv))) {
            nb_mcp_respond_rpc_error(req, 503, msg.id, NB_JSONRPC_UNAVAILABLE,
                                     "cannot open an MCP session now");
            nb_jsonrpc_msg_clear(&msg);
            return;
        }
    } else if (!(h = hsess_find(srv, sid))) {
        nb_mcp_respond_rpc_error(req, sid ? 404 : 400, msg.id, NB_JSONRPC_INVALID_REQUEST,
                                 sid ? "unknown or expired session" : "Mcp-Session-Id is missing");
        nb_jsonrpc_msg_clear(&msg);
        return;
    }
    h->last_used = uv_hrtime();
    nb_httpd_add_header(req, "Mcp-Session-Id", h->id);
    if (msg.kind != NB_JSONRPC_REQUEST) {
        nb_httpd_respond(req, 202, NULL, "", 0);
        if (msg.kind == NB_JSONRPC_NOTIFICATION && !strcmp(msg.method, "notifications/cancelled"))
            stream_cancelled(h, json_object_get(json_object_get(msg.msg, "params"), "requestId"));
        nb_mcp_sess_submit(h->s, &msg);
        return;
    }
    hstream_t *st = calloc(1, sizeof *st);
    if (!st) {
        nb_mcp_respond_rpc_error(req, 500, msg.id, NB_JSONRPC_INTERNAL, "out of memory");
        nb_jsonrpc_msg_clear(&msg);
        return;
    }
    nb_jsonrpc_id_key(msg.id, st->key, sizeof st->key);
    if (accepts(nb_httpd_req_header(req, "Accept"), "text/event-stream")) {
        if (nb_httpd_stream_accept(req, 200, "text/event-stream", &stream_cbs, st, &st->ws) < 0) {
            free(st);
            nb_jsonrpc_msg_clear(&msg);
            return;
        }
    } else {
        st->req = req;
    }
    st->h = h;
    st->next = h->streams;
    h->streams = st;
    nb_mcp_sess_submit(h->s, &msg);
}

static void on_get(mcp_server_t *srv, nb_httpd_req_t *req)
{
    mcp_hsess_t *h = hsess_find(srv, nb_httpd_req_header(req, "Mcp-Session-Id"));
    if (!accepts(nb_httpd_req_header(req, "Accept"), "text/event-stream")) {
        nb_httpd_respond_error(req, 406, "not-acceptable", "GET /mcp is an event stream");
        return;
    }
    if (!h) {
        nb_httpd_respond_error(req, 404, "not-found", "unknown or missing Mcp-Session-Id");
        return;
    }
    for (hstream_t *st = h->streams; st; st = st->next)
        if (!st->key[0]) {
            nb_httpd_respond_error(req, 409, "conflict", "this session has its stream open");
            return;
        }
    hstream_t *st = calloc(1, sizeof *st);
    if (!st) {
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    if (nb_httpd_stream_accept(req, 200, "text/event-stream", &stream_cbs, st, &st->ws) < 0) {
        free(st);
        return;
    }
    st->h = h;
    st->next = h->streams;
    h->streams = st;
    h->last_used = uv_hrtime();
    /* What waited for a stream goes out now. */
    json_t *b = h->backlog;
    h->backlog = json_array();
    size_t i;
    json_t *v;
    json_array_foreach (b, i, v)
        sse_send(st, v);
    json_decref(b);
}

static void on_request(nb_httpd_req_t *req, void *ud)
{
    mcp_server_t *srv = ud;
    const char *method = nb_httpd_req_method(req);
    if (!host_ok(srv, nb_httpd_req_header(req, "Host"))) {
        nb_httpd_respond_error(req, 403, "bad-host", "Host must be this loopback endpoint");
        return;
    }
    if (!origin_ok(srv, nb_httpd_req_header(req, "Origin"))) {
        nb_httpd_respond_error(req, 403, "bad-origin", "foreign Origin refused");
        return;
    }
    if (!token_ok(srv, nb_httpd_req_header(req, "Authorization"))) {
        nb_httpd_add_header(req, "WWW-Authenticate", "Bearer realm=\"nilbox-mcp\"");
        nb_httpd_respond_error(req, 401, "unauthorized",
                               "a bearer token is required (nilbox mcp config prints it)");
        return;
    }
    nb_httpd_req_set_authed(req);
    const char *path = nb_httpd_req_path(req);
    if (!strcmp(path, "/sse") && !strcmp(method, "GET")) {
        nb_mcp_sse_get(srv, req); /* the older HTTP+SSE transport */
        return;
    }
    if (!strcmp(path, "/message") && !strcmp(method, "POST")) {
        nb_mcp_sse_post(srv, req);
        return;
    }
    if (strcmp(path, "/mcp") != 0) {
        nb_httpd_respond_error(req, 404, "not-found",
                               "the MCP endpoint is /mcp (HTTP+SSE: GET /sse)");
        return;
    }
    if (!strcmp(method, "POST")) {
        on_post(srv, req);
    } else if (!strcmp(method, "GET")) {
        on_get(srv, req);
    } else if (!strcmp(method, "DELETE")) {
        mcp_hsess_t *h = hsess_find(srv, nb_httpd_req_header(req, "Mcp-Session-Id"));
        if (h)
            hsess_free(h, 1);
        nb_httpd_respond(req, h ? 200 : 404, NULL, "", 0);
    } else {
        nb_httpd_add_header(req, "Allow", "GET, POST, DELETE");
        nb_httpd_respond_error(req, 405, "method-not-allowed", "GET, POST or DELETE");
    }
}

int nb_mcp_http_start(mcp_server_t *s, char *err, size_t errsz)
{
    nb_httpd_cfg_t cfg;
    nb_httpd_cfg_default(&cfg);
    cfg.max_body = nb_mcp_frame_max(s->m) + 1024; /* over the cap: a JSON-RPC error of ours */
    cfg.max_conns = 64;
    cfg.evict_idle = 1;
    cfg.unauth_timeout_ms = 5000;
    cfg.idle_timeout_ms = 300000;
    int r = nb_httpd_new(s->m->loop, &cfg, on_request, s, &s->httpd);
    if (r < 0) {
        snprintf(err, errsz, "cannot create the endpoint: %s", nb_strerror(r));
        return r;
    }
    int port = s->port;
    if ((r = nb_httpd_listen_tcp(s->httpd, "127.0.0.1", port, &port)) < 0) {
        snprintf(err, errsz, "cannot listen on 127.0.0.1:%d: %s", s->port, nb_strerror(r));
        nb_httpd_close(s->httpd, NULL, NULL);
        s->httpd = NULL;
        return r;
    }
    s->port = port;
    return 0;
}

void nb_mcp_http_expire(mcp_server_t *s, uint64_t now, uint64_t idle_ns)
{
    for (mcp_hsess_t *h = s->hsess, *n; h; h = n) {
        n = h->next;
        if (h->streams || now - h->last_used < idle_ns)
            continue;
        nb_log(NB_LOG_INFO, "mcp %s/%s: HTTP session idle for %" PRIu64 " s ended", s->vm, s->name,
               (now - h->last_used) / 1000000000u);
        hsess_free(h, 1);
    }
}

void nb_mcp_http_stop(mcp_server_t *s)
{
    while (s->hsess)
        hsess_free(s->hsess, 1);
    nb_mcp_sse_stop(s);
    if (s->httpd)
        nb_httpd_close(s->httpd, NULL, NULL);
    s->httpd = NULL;
}
