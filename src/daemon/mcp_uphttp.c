/* One client message to an HTTP MCP server in the guest (`mcp add --url`):
 * a `tcp` stream to the guest's loopback port, one HTTP/1.1 POST with
 * Connection: close, the answer parsed (lib/http.c) as one JSON message or
 * as an event stream (egress/sse.c) whose events are messages. Every
 * message goes to the session's line handler, exactly like a stdio line,
 * so the same caps, checks and policy apply. The server's Mcp-Session-Id
 * is kept by the session and sent with every later POST. Without a message
 * the exchange is the session's GET stream: what the server sends outside
 * any request (list_changed, its own requests), as long as it keeps it open. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/sse.h"
#include "daemon/mcp_int.h"
#include "lib/err.h"
#include "lib/http.h"
#include "lib/log.h"
#include "lib/mux.h"

struct nb_mcp_uphttp {
    nb_mcp_up_cbs_t cbs;
    nb_muxsess_stream_t *st;
    nb_http_parser_t *parser;
    nb_sse_t sse;
    nb_buf_t body; /* a JSON answer */
    int is_sse, status, done, sse_over;
    char *sid;  /* the session's buffer (NB_MCP_SID_MAX) */
    json_t *id; /* the request's id, or NULL for notifications/responses */
    size_t frame_max;
};

static void finish(nb_mcp_uphttp_t *x, const char *why)
{
    if (x->done)
        return;
    x->done = 1;
    if (why && x->id)
        x->cbs.on_fail(x->cbs.ud, x->id, why);
    x->cbs.on_done(x->cbs.ud, x);
}

static void up_free(nb_mcp_uphttp_t *x)
{
    nb_http_parser_free(x->parser);
    nb_sse_free(&x->sse);
    nb_buf_free(&x->body);
    json_decref(x->id);
    free(x);
}

static int on_event(void *ud, const nb_sse_event_t *ev)
{
    nb_mcp_uphttp_t *x = ud;
    if (nb_iov_eq(ev->type, "message") && ev->data.len)
        x->cbs.on_line(x->cbs.ud, ev->data, ev->data.len > x->frame_max);
    return 0;
}

static int on_head(void *ud, const nb_http_head_t *h)
{
    nb_mcp_uphttp_t *x = ud;
    x->status = h->status;
    const nb_http_header_t *sid = nb_http_head_find(h, "Mcp-Session-Id");
    if (sid && sid->value.len && sid->value.len < NB_MCP_SID_MAX) {
        memcpy(x->sid, sid->value.p, sid->value.len);
        x->sid[sid->value.len] = 0;
    }
    const nb_http_header_t *ct = nb_http_head_find(h, "Content-Type");
    x->is_sse = ct && ct->value.len >= 17 &&
                !strncasecmp((const char *)ct->value.p, "text/event-stream", 17);
    return 0;
}

static int on_body(void *ud, const uint8_t *p, size_t len)
{
    nb_mcp_uphttp_t *x = ud;
    if (x->status >= 300)
        return 0;
    if (x->is_sse) {
        /* An event over the cap stops the parser (sticky): said once. */
        if (nb_sse_feed(&x->sse, p, len) == NB_ETOOBIG && !x->sse_over) {
            x->sse_over = 1;
            x->cbs.on_line(x->cbs.ud, nb_iov(NULL, 0), 1);
        }
        return 0;
    }
    if (nb_buf_append(&x->body, p, len) < 0) {
        x->body.len = 0;
        x->body.max = 0; /* over the cap: reported once at the end */
    }
    return 0;
}

static int on_complete(void *ud)
{
    nb_mcp_uphttp_t *x = ud;
    char why[120];
    if (x->status >= 300) {
        snprintf(why, sizeof why, "the MCP server in the VM answered HTTP %d", x->status);
        finish(x, why);
        return 0;
    }
    if (!x->is_sse && (x->body.len || x->body.max == 0))
        x->cbs.on_line(x->cbs.ud, nb_buf_iov(&x->body), x->body.max == 0);
    finish(x, NULL);
    return 0;
}

static const nb_http_cbs_t http_cbs = {on_head, on_body, on_complete};

static void st_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    nb_mcp_uphttp_t *x = ud;
    size_t off = 0;
    while (chan == NB_MUX_CHAN_STDIO && !x->done && off < d.len) {
        size_t used = 0;
        int r = nb_http_parser_feed(x->parser, d.p + off, d.len - off, &used);
        off += used;
        if (r < 0) {
            finish(x, "the MCP server in the VM sent a malformed HTTP answer");
            break;
        }
        if (r != NB_HTTP_MORE)
            break;
    }
    nb_muxsess_stream_consume(st, d.len);
}

static void st_fin(nb_muxsess_stream_t *st, void *ud)
{
    nb_mcp_uphttp_t *x = ud;
    if (!x->done && nb_http_parser_finish(x->parser) < 0)
        finish(x, "the MCP server in the VM closed the connection mid-answer");
    else if (!x->done && x->status == 0)
        finish(x, "the MCP server in the VM closed the connection without answering");
    nb_muxsess_stream_fin(st);
}

static void st_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    nb_mcp_uphttp_t *x = ud;
    (void)st;
    (void)code;
    char why[300];
    x->st = NULL;
    snprintf(why, sizeof why, "cannot reach the MCP server in the VM: %s",
             err ? msg : "the connection closed");
    finish(x, why);
    up_free(x);
}

static const nb_muxsess_stream_cbs_t st_cbs = {
    .on_data = st_data, .on_fin = st_fin, .on_close = st_close};

int nb_mcp_uphttp_post(nb_muxsess_t *ms, uint16_t port, const char *path, char *sid,
                       const json_t *msg, size_t frame_max, const nb_mcp_up_cbs_t *cbs,
                       nb_mcp_uphttp_t **out)
{
    *out = NULL;
    nb_mcp_uphttp_t *x = calloc(1, sizeof *x);
    char *body = msg ? json_dumps(msg, JSON_COMPACT) : strdup("");
    nb_buf_t req;
    nb_buf_init(&req, frame_max + 4096);
    int r = -ENOMEM;
    if (!x || !body)
        goto fail;
    x->cbs = *cbs;
    x->sid = sid;
    x->frame_max = frame_max;
    json_t *id = json_object_get(msg, "id");
    if (id && json_object_get(msg, "method"))
        x->id = json_incref(id);
    if (!msg)
        body[0] = 0; /* the GET stream */
    nb_buf_init(&x->body, frame_max);
    nb_sse_init(&x->sse, frame_max + 64, frame_max, on_event, x);
    nb_http_limits_t lim;
    nb_http_limits_default(&lim);
    lim.max_body = 0; /* event streams are long; each event is capped by the SSE parser */
    if ((r = nb_http_parser_new(NB_HTTP_RESPONSE, &lim, &http_cbs, x, &x->parser)) < 0)
        goto fail;
    nb_http_parser_expect_response_to(x->parser, msg ? "POST" : "GET");
    if (msg)
        r = nb_buf_printf(&req,
                          "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Type: "
                          "application/json\r\nAccept: application/json, text/event-stream\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n",
                          path, port, strlen(body));
    else
        r = nb_buf_printf(&req,
                          "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nAccept: text/event-stream\r\n"
                          "Connection: close\r\n",
                          path, port);
    if (r == 0 && sid[0])
        r = nb_buf_printf(&req, "Mcp-Session-Id: %s\r\n", sid);
    if (r == 0)
        r = nb_buf_printf(&req, "\r\n%s", body);
    if (r < 0)
        goto fail;
    char args[64];
    snprintf(args, sizeof args, "{\"port\":%u}", port);
    if ((r = nb_muxsess_open(ms, "tcp", nb_iov(args, strlen(args)), &st_cbs, x, &x->st)) < 0)
        goto fail;
    if ((r = nb_muxsess_stream_write(x->st, NB_MUX_CHAN_STDIO, req.p, req.len)) < 0) {
        nb_muxsess_stream_reset(x->st, NB_MUX_E_INTERNAL, "cannot queue the request");
        goto fail;
    }
    free(body);
    nb_buf_free(&req);
    *out = x;
    return 0;
fail:
    free(body);
    nb_buf_free(&req);
    if (x)
        up_free(x);
    return r;
}

int nb_mcp_uphttp_status(const nb_mcp_uphttp_t *x)
{
    return x->status;
}

void nb_mcp_uphttp_cancel(nb_mcp_uphttp_t *x)
{
    if (!x)
        return;
    x->done = 1;
    if (x->st) {
        nb_muxsess_stream_reset(x->st, NB_MUX_E_CANCEL, "MCP client gone");
        x->st = NULL;
    }
    up_free(x);
}
