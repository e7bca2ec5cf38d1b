/* WebSocket connections of the HTTP server: the upgrade handshake
 * (nb_httpd_ws_accept), frames in and out through the nb_ws codec, and the
 * close handshake. Module map: httpserver_int.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/http.h"
#include "lib/httpserver.h"
#include "lib/httpserver_int.h"
#include "lib/log.h"
#include "lib/ws.h"

/* Reports the end to the user once. */
void nb_httpd_ws_finish(nb_ws_t *ws, int code)
{
    if (ws->closed_cb_done)
        return;
    ws->closed_cb_done = 1;
    if (ws->cbs.on_close)
        ws->cbs.on_close(ws, ws->close_code ? ws->close_code : code, ws->ud);
}

static int ws_send_frame(nb_ws_t *ws, int opcode, const void *data, size_t len)
{
    nb_buf_t b;
    int r;

    nb_buf_init(&b, len + 16);
    if ((r = nb_ws_frame_append(&b, opcode, data, len, NULL)) == 0)
        r = nb_httpd_conn_write_buf(ws->c, &b);
    nb_buf_free(&b);
    return r;
}

static void ws_send_close(nb_ws_t *ws, int code, const char *reason)
{
    nb_buf_t b;

    if (ws->close_sent)
        return;
    ws->close_sent = 1;
    ws->close_at = uv_now(ws->c->srv->loop);
    nb_buf_init(&b, 256);
    if (nb_ws_close_frame_append(&b, code, reason) == 0)
        nb_httpd_conn_write_buf(ws->c, &b);
    nb_buf_free(&b);
}

static int ws_on_message(void *ud, int opcode, const uint8_t *p, size_t len)
{
    nb_ws_t *ws = ud;
    if (ws->close_sent || ws->closed_cb_done)
        return 0; /* closing: data is dropped (RFC 6455 5.5.1) */
    if (ws->cbs.on_message)
        ws->cbs.on_message(ws, opcode == NB_WS_OP_TEXT, p, len, ws->ud);
    return 0;
}

static int ws_on_control(void *ud, int opcode, const uint8_t *p, size_t len)
{
    nb_ws_t *ws = ud;

    if (opcode == NB_WS_OP_PING) {
        if (!ws->close_sent)
            ws_send_frame(ws, NB_WS_OP_PONG, p, len);
        return 0;
    }
    if (opcode != NB_WS_OP_CLOSE)
        return 0; /* pong */
    ws->close_recv = 1;
    if (!ws->close_code)
        ws->close_code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
    if (!ws->close_sent) {
        /* Echo the code (RFC 6455 5.5.1); 1005 is never sent on the wire. */
        ws_send_close(ws, len >= 2 ? (p[0] << 8 | p[1]) : 1000, NULL);
    }
    return 1; /* stop parsing: nothing after a close frame counts */
}

void nb_httpd_ws_on_input(conn_t *c)
{
    nb_ws_t *ws = c->ws;
    size_t used = 0;
    int r;

    if (ws->close_recv) {
        nb_buf_reset(&c->in);
        return;
    }
    r = nb_ws_parser_feed(ws->parser, c->in.p, c->in.len, &used);
    if (c->state == C_CLOSING)
        return;
    nb_buf_consume(&c->in, used);
    if (r < 0) {
        int code = nb_ws_parser_close_code(ws->parser);
        nb_log_conn(NB_LOG_INFO, c->id, "websocket protocol error: %s (close %d)",
                    nb_ws_parser_reason(ws->parser), code);
        ws->close_code = code;
        ws_send_close(ws, code, nb_ws_parser_reason(ws->parser));
        nb_buf_reset(&c->in);
        ws->close_recv = 1; /* nothing more is read; wait for the write, then end */
    }
    if (ws->close_recv && ws->close_sent) {
        nb_httpd_ws_finish(ws, ws->close_code);
        /* Let the close frame leave, then shut down and drain. */
        nb_httpd_conn_end(c);
        return;
    }
    nb_httpd_conn_update_reading(c);
}

static void ws_reject(nb_httpd_req_t *req, const char *why)
{
    nb_httpd_respond_error(req, 400, "bad-websocket-request", why);
}

int nb_httpd_ws_accept(nb_httpd_req_t *req, const nb_ws_cbs_t *cbs, void *ud, nb_ws_t **out)
{
    conn_t *c = req->conn;
    const char *up, *conn_hdr, *ver, *key;
    char accept[NB_WS_ACCEPT_LEN + 1];
    nb_buf_t b;
    nb_ws_t *ws;
    nb_ws_parser_cbs_t pcbs = {.on_message = ws_on_message, .on_control = ws_on_control};
    int r;

    *out = NULL;
    if (!c) {
        nb_httpd_req_free(req);
        return NB_ECLOSED;
    }
    if (c->inflight != req)
        return NB_ESTATE;
    up = nb_httpd_req_header(req, "Upgrade");
    conn_hdr = nb_httpd_req_header(req, "Connection");
    ver = nb_httpd_req_header(req, "Sec-WebSocket-Version");
    key = nb_httpd_req_header(req, "Sec-WebSocket-Key");
    if (strcmp(nb_httpd_req_method(req), "GET") != 0 || req->version_minor != 1 || !req->upgrade ||
        !up || !nb_http_list_has_token(nb_iov(up, strlen(up)), "websocket") || !conn_hdr ||
        !nb_http_list_has_token(nb_iov(conn_hdr, strlen(conn_hdr)), "upgrade")) {
        ws_reject(req, "not a WebSocket upgrade request");
        return NB_EPROTO;
    }
    if (!ver || strcmp(ver, "13") != 0) {
        ws_reject(req, "Sec-WebSocket-Version must be 13");
        return NB_EPROTO;
    }
    if (!key || nb_ws_accept_key(key, accept) < 0) {
        ws_reject(req, "invalid Sec-WebSocket-Key");
        return NB_EPROTO;
    }
    if (!(ws = calloc(1, sizeof(*ws)))) {
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return -ENOMEM;
    }
    ws->c = c;
    if (cbs)
        ws->cbs = *cbs;
    ws->ud = ud;
    if (!ws->cbs.max_message)
        ws->cbs.max_message = 1024 * 1024;
    if ((r = nb_ws_parser_new(NB_WS_ROLE_SERVER, ws->cbs.max_message, &pcbs, ws, &ws->parser)) <
        0) {
        free(ws);
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return r;
    }
    nb_buf_init(&b, NB_HTTPD_MAX_RESP_HEADERS);
    r = nb_buf_printf(&b,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
                      accept);
    if (r == 0)
        r = nb_buf_append(&b, req->resp_hdrs.p, req->resp_hdrs.len);
    if (r == 0)
        r = nb_buf_append_str(&b, "\r\n");
    if (r < 0) {
        nb_buf_free(&b);
        nb_ws_parser_free(ws->parser);
        free(ws);
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return r;
    }
    c->inflight = NULL;
    nb_httpd_req_free(req);
    c->state = C_WS;
    c->ws = ws;
    c->req_started = 0;
    /* No callback may run before the caller has its handle: on a failed
     * write the connection closes without on_close (we return the error). */
    ws->closed_cb_done = 1;
    r = nb_httpd_conn_write_buf(c, &b);
    nb_buf_free(&b);
    if (r < 0)
        return r;
    ws->closed_cb_done = 0;
    nb_log_conn(NB_LOG_DEBUG, c->id, "websocket accepted");
    *out = ws;
    c->last_activity = c->last_rx = uv_now(c->srv->loop);
    /* Frames that arrived right behind the request are parsed from the
     * timer on the next loop turn, never inside this call. */
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, 0, 0);
    nb_httpd_conn_update_reading(c);
    return 0;
}

int nb_ws_send(nb_ws_t *ws, int text, const void *data, size_t len)
{
    conn_t *c = ws->c;

    if (ws->close_sent || ws->closed_cb_done || c->state != C_WS)
        return NB_ECLOSED;
    if (c->wq + len > NB_WS_SEND_CAP)
        return NB_ETOOBIG;
    if (text && !nb_utf8_valid(data, len))
        return NB_EINVAL;
    return ws_send_frame(ws, text ? NB_WS_OP_TEXT : NB_WS_OP_BINARY, data, len);
}

void nb_ws_close(nb_ws_t *ws, int code, const char *reason)
{
    conn_t *c = ws->c;

    if (ws->close_sent || ws->closed_cb_done || c->state != C_WS)
        return;
    if (!nb_ws_close_code_sendable(code))
        code = 1000;
    ws->close_code = code;
    ws_send_close(ws, code, reason);
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, NB_WS_CLOSE_WAIT_MS, 0);
}
