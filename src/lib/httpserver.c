/* HTTP/1.1 + WebSocket server on libuv. See httpserver.h and
 * docs/internals/http.md.
 *
 * Connection life (conn_t):
 *   C_HTTP    reading requests. At most one request is with the handler at a
 *             time (c->inflight); while it is, the parser is not fed and reads
 *             are stopped, so pipelined requests wait in c->in and responses
 *             leave in request order.
 *   C_WS      upgraded; frames go through the nb_ws codec.
 *   C_LINGER  the last response is queued; after it is written we shut down
 *             our side and drain input for a short while, so that the peer
 *             reads the response instead of a reset.
 *   C_CLOSING uv_close() was called on both handles; freed in the close
 *             callback once both are closed.
 * A request handed to the handler is owned by the handler until
 * nb_httpd_respond()/nb_httpd_ws_accept(); when the connection dies first,
 * the request is orphaned (req->conn = NULL) and the late call just frees it.
 */
#include "lib/httpserver.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lib/err.h"
#include "lib/http.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/httpserver_int.h"
#include "lib/ws.h"

typedef struct {
    uv_write_t w;
    conn_t *c;
    uint8_t *mem;
    size_t len;
} wreq_t;

static void conn_close(conn_t *c);
static void conn_process(conn_t *c);
/* Starts or stops reading by the connection's state and write queue. */
static void nb_httpd_conn_update_reading(conn_t *c);
/* The connection timer: timeouts, WebSocket pings and close waits. */
static void nb_httpd_conn_on_timer(uv_timer_t *t);
static void nb_httpd_ws_finish(nb_ws_t *ws, int code);
static void nb_httpd_ws_on_input(conn_t *c);

void nb_httpd_cfg_default(nb_httpd_cfg_t *cfg)
{
    cfg->max_start_line = 8 * 1024;
    cfg->max_header_bytes = 32 * 1024;
    cfg->max_headers = 100;
    cfg->max_body = 1024 * 1024;
    cfg->max_conns = 256;
    cfg->idle_timeout_ms = 60 * 1000;
    cfg->request_timeout_ms = 30 * 1000;
    cfg->evict_idle = 0;
    cfg->max_conns_per_uid = 0;
    cfg->unauth_timeout_ms = 0;
    cfg->max_unauth_conns = 0;
}

/* --- requests --- */

/* Frees a request (also an orphaned one). */
static void nb_httpd_req_free(nb_httpd_req_t *req)
{
    if (!req)
        return;
    nb_buf_free(&req->strs);
    nb_buf_free(&req->body);
    nb_buf_free(&req->resp_hdrs);
    free(req->hdr_off);
    free(req);
}

static int strs_add(nb_httpd_req_t *req, const void *p, size_t n, size_t *off)
{
    int r;
    *off = req->strs.len;
    if ((r = nb_buf_append(&req->strs, p, n)) < 0)
        return r;
    return nb_buf_append(&req->strs, "", 1);
}

const char *nb_httpd_req_method(const nb_httpd_req_t *req)
{
    return (const char *)req->strs.p + req->method_off;
}

const char *nb_httpd_req_path(const nb_httpd_req_t *req)
{
    return (const char *)req->strs.p + req->path_off;
}

const char *nb_httpd_req_query(const nb_httpd_req_t *req)
{
    return (const char *)req->strs.p + req->query_off;
}

const char *nb_httpd_req_header(const nb_httpd_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->nhdrs; i++) {
        const char *n = (const char *)req->strs.p + req->hdr_off[2 * i];
        if (strcasecmp(n, name) == 0)
            return (const char *)req->strs.p + req->hdr_off[2 * i + 1];
    }
    return NULL;
}

nb_iov_t nb_httpd_req_body(const nb_httpd_req_t *req)
{
    return nb_buf_iov(&req->body);
}

int nb_httpd_req_is_unix(const nb_httpd_req_t *req)
{
    return req->is_unix;
}

uint64_t nb_httpd_req_conn_id(const nb_httpd_req_t *req)
{
    return req->conn_id;
}

void nb_httpd_req_set_authed(nb_httpd_req_t *req)
{
    conn_t *c = req->conn;
    if (!c || c->authed || c->state == C_CLOSING)
        return;
    c->authed = 1;
    if (c->l)
        c->l->nunauth--;
}

void nb_httpd_req_set_sensitive(nb_httpd_req_t *req)
{
    req->sensitive = 1;
}

static int header_ok(const char *name, const char *value)
{
    if (!name[0])
        return 0;
    for (const char *s = name; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == ':' || (unsigned char)*s >= 0x7f)
            return 0;
    for (const char *s = value; *s; s++)
        if (*s == '\r' || *s == '\n' || ((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return 0;
    return 1;
}

int nb_httpd_add_header(nb_httpd_req_t *req, const char *name, const char *value)
{
    if (!header_ok(name, value))
        return NB_EINVAL;
    return nb_buf_printf(&req->resp_hdrs, "%s: %s\r\n", name, value);
}

int nb_httpd_set_default_header(nb_httpd_t *srv, const char *name, const char *value)
{
    if (!header_ok(name, value))
        return NB_EINVAL;
    return nb_buf_printf(&srv->defhdrs, "%s: %s\r\n", name, value);
}

/* --- writing --- */

static void on_shutdown(uv_shutdown_t *sh, int status)
{
    conn_t *c = sh->data;
    (void)status;
    free(sh);
    /* Nothing more will come from a peer that already sent EOF. */
    if (c->state != C_CLOSING && c->eof)
        conn_close(c);
}

/* Our side is done: send FIN, then drain input until EOF or the linger
 * time, so that the peer reads our last response rather than a reset. */
static void conn_shutdown(conn_t *c)
{
    uv_shutdown_t *sh;

    if (c->shut)
        return;
    c->shut = 1;
    c->linger_start = uv_now(c->srv->loop);
    if (!(sh = calloc(1, sizeof(*sh))))
        goto fail;
    sh->data = c;
    if (uv_shutdown(sh, &c->u.s, on_shutdown) < 0) {
        free(sh);
        goto fail;
    }
    nb_httpd_conn_update_reading(c);
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, NB_HTTPD_LINGER_MS, 0);
    return;
fail:
    conn_close(c); /* the peer is gone already */
}

/* Ends the connection once queued writes are out. */
static void nb_httpd_conn_end(conn_t *c)
{
    if (c->state == C_CLOSING)
        return;
    c->state = C_LINGER;
    if (c->wq == 0)
        conn_shutdown(c);
    else /* bounded even if the peer never reads what is queued */
        uv_timer_start(&c->timer, nb_httpd_conn_on_timer, NB_HTTPD_LINGER_MS, 0);
}

static void on_write(uv_write_t *w, int status)
{
    wreq_t *wr = (wreq_t *)w;
    conn_t *c = wr->c;

    c->wq -= wr->len;
    free(wr->mem);
    free(wr);
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        nb_log_conn(NB_LOG_DEBUG, c->id, "write failed: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    c->last_activity = uv_now(c->srv->loop);
    if (c->state == C_LINGER && c->wq == 0) {
        c->linger_start = uv_now(c->srv->loop);
        conn_shutdown(c);
        return;
    }
    if (c->state == C_HTTP)
        conn_process(c);
    else
        nb_httpd_conn_update_reading(c);
}

/* Queues `len` bytes taken from `mem` (ownership passes to the write). */
static int conn_write(conn_t *c, uint8_t *mem, size_t len)
{
    wreq_t *wr;
    uv_buf_t b;
    int r;

    if (c->state == C_CLOSING) {
        free(mem);
        return NB_ECLOSED;
    }
    if (!(wr = calloc(1, sizeof(*wr)))) {
        free(mem);
        return -ENOMEM;
    }
    wr->c = c;
    wr->mem = mem;
    wr->len = len;
    b = uv_buf_init((char *)mem, (unsigned)len);
    if ((r = uv_write(&wr->w, &c->u.s, &b, 1, on_write)) < 0) {
        free(mem);
        free(wr);
        conn_close(c);
        return r;
    }
    c->wq += len;
    return 0;
}

/* Queues b's bytes for writing on c, taking them (b is left empty). Returns
 * 0 or a negative code (the connection is then closing). */
static int nb_httpd_conn_write_buf(conn_t *c, nb_buf_t *b)
{
    uint8_t *mem = b->p;
    size_t len = b->len;
    nb_buf_init(b, b->max);
    return conn_write(c, mem, len);
}

static void fmt_date(char *out, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Builds and queues one response. `extra` holds "Name: v\r\n" lines (may be
 * NULL). When `close` is set, the connection lingers out afterwards. */
static int conn_send_response(conn_t *c, int status, const char *ctype, const nb_buf_t *extra,
                              const void *body, size_t len, int head_only, int keep_alive_10,
                              int close)
{
    nb_buf_t b;
    char date[64];
    int r, bodyless = status == 204 || status == 304;

    nb_buf_init(&b, NB_HTTPD_MAX_RESP_HEADERS + len);
    fmt_date(date, sizeof(date));
    if ((r = nb_buf_printf(&b, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status,
                           nb_http_status_text(status), date)) < 0)
        goto out;
    if (ctype && !bodyless && (r = nb_buf_printf(&b, "Content-Type: %s\r\n", ctype)) < 0)
        goto out;
    if (!bodyless && (r = nb_buf_printf(&b, "Content-Length: %zu\r\n", len)) < 0)
        goto out;
    if ((r = nb_buf_append(&b, c->srv->defhdrs.p, c->srv->defhdrs.len)) < 0)
        goto out;
    if (extra && (r = nb_buf_append(&b, extra->p, extra->len)) < 0)
        goto out;
    if (close)
        r = nb_buf_append_str(&b, "Connection: close\r\n\r\n");
    else if (keep_alive_10)
        r = nb_buf_append_str(&b, "Connection: keep-alive\r\n\r\n");
    else
        r = nb_buf_append_str(&b, "\r\n");
    if (r < 0)
        goto out;
    if (!head_only && !bodyless && len && (r = nb_buf_append(&b, body, len)) < 0)
        goto out;
    if (close)
        c->state = C_LINGER;
    r = nb_httpd_conn_write_buf(c, &b);
    if (r == 0 && close)
        uv_timer_start(&c->timer, nb_httpd_conn_on_timer, NB_HTTPD_LINGER_MS, 0);
out:
    nb_buf_free(&b);
    if (r < 0 && c->state != C_CLOSING)
        conn_close(c);
    return r;
}

/* Refuses the current input with a JSON error and closes afterwards. */
static void conn_fail(conn_t *c, int status, const char *reason, const char *msg)
{
    nb_buf_t body, extra;
    json_t *j;
    char esc[128];

    nb_log_conn(NB_LOG_INFO, c->id, "refusing request: %d %s", status,
                nb_log_escape(esc, sizeof(esc), reason, strlen(reason)));
    if (c->state != C_HTTP || c->inflight) {
        conn_close(c);
        return;
    }
    nb_buf_init(&body, 4096);
    nb_buf_init(&extra, 1024);
    j = json_pack("{s:s, s:s}", "error", reason, "message", msg);
    if (!j || nb_json_dump(j, &body) < 0 ||
        nb_buf_printf(&extra, "X-Nilbox-Reason: %s\r\n", reason) < 0) {
        json_decref(j);
        nb_buf_free(&body);
        nb_buf_free(&extra);
        conn_close(c);
        return;
    }
    json_decref(j);
    conn_send_response(c, status, "application/json", &extra, body.p, body.len, 0, 0, 1);
    nb_buf_free(&body);
    nb_buf_free(&extra);
    if (c->state == C_LINGER)
        nb_httpd_conn_update_reading(c);
}

/* --- parser callbacks --- */

static int on_head(void *ud, const nb_http_head_t *h)
{
    conn_t *c = ud;
    nb_httpd_req_t *req;
    const uint8_t *q;
    size_t plen;
    int r;

    if (h->target.p[0] != '/') {
        /* The server takes origin-form only: absolute-form and CONNECT
         * belong to the proxy. */
        c->err_status = 400;
        c->err_reason = "invalid-target";
        return NB_EPROTO;
    }
    if (h->has_expect && !h->expect_continue) {
        c->err_status = 417;
        c->err_reason = "unsupported-expectation";
        return NB_EPROTO;
    }
    if (!(req = calloc(1, sizeof(*req))))
        return -ENOMEM;
    /* the head's bytes plus one NUL per string */
    nb_buf_init(&req->strs, c->srv->cfg.max_start_line + c->srv->cfg.max_header_bytes +
                                2 * c->srv->cfg.max_headers + 16);
    nb_buf_init(&req->body, c->srv->cfg.max_body);
    nb_buf_init(&req->resp_hdrs, NB_HTTPD_MAX_RESP_HEADERS);
    req->conn = c;
    req->conn_id = c->id;
    req->is_unix = c->is_unix;
    req->keep_alive = h->keep_alive;
    req->version_minor = h->version_minor;
    req->upgrade = h->upgrade;
    req->head_method = nb_iov_eq(h->method, "HEAD");
    q = memchr(h->target.p, '?', h->target.len);
    plen = q ? (size_t)(q - h->target.p) : h->target.len;
    if ((r = strs_add(req, h->method.p, h->method.len, &req->method_off)) < 0 ||
        (r = strs_add(req, h->target.p, plen, &req->path_off)) < 0 ||
        (r = strs_add(req, q ? q + 1 : (const uint8_t *)"", q ? h->target.len - plen - 1 : 0,
                      &req->query_off)) < 0)
        goto fail;
    if (h->nheaders && !(req->hdr_off = calloc(2 * h->nheaders, sizeof(size_t)))) {
        r = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < h->nheaders; i++) {
        const nb_http_header_t *hd = &h->headers[i];
        /* Values may hold obs-text but never NUL (the parser refuses CTLs),
         * so C strings are exact. */
        if ((r = strs_add(req, hd->name.p, hd->name.len, &req->hdr_off[2 * i])) < 0 ||
            (r = strs_add(req, hd->value.p, hd->value.len, &req->hdr_off[2 * i + 1])) < 0)
            goto fail;
    }
    req->nhdrs = h->nheaders;
    c->req = req;
    if (h->expect_continue && (h->chunked || h->content_length > 0)) {
        /* The client waits for this before sending the body. */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uint8_t *m = malloc(sizeof(cont) - 1);
        if (!m)
            return -ENOMEM;
        memcpy(m, cont, sizeof(cont) - 1);
        if ((r = conn_write(c, m, sizeof(cont) - 1)) < 0)
            return r;
    }
    return 0;
fail:
    nb_httpd_req_free(req);
    return r;
}

static int on_body(void *ud, const uint8_t *p, size_t len)
{
    conn_t *c = ud;
    if (!c->req)
        return NB_EINTERNAL;
    return nb_buf_append(&c->req->body, p, len);
}

static const nb_http_cbs_t parser_cbs = {
    .on_head = on_head,
    .on_body = on_body,
};

/* --- connection processing --- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn_t *c = h->data;
    (void)hint;
    if (nb_buf_reserve(&c->in, NB_HTTPD_READ_CHUNK) < 0) {
        /* Cannot happen while reading is gated on c->in's fill; be safe. */
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    size_t room = (c->in.cap < c->in.max ? c->in.cap : c->in.max) - c->in.len;
    *buf = uv_buf_init((char *)c->in.p + c->in.len, (unsigned)room);
}

static void dispatch(conn_t *c)
{
    nb_httpd_req_t *req = c->req;

    c->req = NULL;
    c->inflight = req;
    c->req_started = 0;
    c->srv->on_request(req, c->srv->ud);
    /* A sensitive request still with its handler keeps no secret bytes:
     * the handler has copied them by now (c->inflight is NULL when it
     * answered, and the request is gone, wiped by nb_httpd_req_free). */
    if (c->inflight == req && req->sensitive) {
        nb_buf_reset(&req->body);
        nb_http_parser_idle(c->parser);
    }
}

/* Feeds buffered input to the parser until a request is with the handler,
 * more bytes are needed, or the connection stops. */
static void conn_process(conn_t *c)
{
    if (c->processing)
        return;
    c->processing = 1;
    while (c->state == C_HTTP && !c->inflight && !c->upgraded && c->in.len > 0 &&
           c->wq < NB_HTTPD_WRITE_HWM) {
        size_t used = 0;
        int r;

        if (!c->req_started) {
            c->req_started = 1;
            c->req_start = uv_now(c->srv->loop);
        }
        c->err_status = 0;
        r = nb_http_parser_feed(c->parser, c->in.p, c->in.len, &used);
        nb_buf_consume(&c->in, used);
        if (r < 0) {
            nb_http_err_t e = nb_http_parser_error(c->parser);
            nb_httpd_req_free(c->req);
            c->req = NULL;
            if (c->err_status)
                conn_fail(c, c->err_status, c->err_reason,
                          c->err_status == 417 ? "only 100-continue is supported"
                                               : "only origin-form request targets are served");
            else if (e == NB_HTTP_ERR_CALLBACK)
                conn_fail(c, r == NB_ETOOBIG ? 413 : 500,
                          r == NB_ETOOBIG ? "body-too-large" : "internal", nb_strerror(r));
            else
                conn_fail(c, nb_http_err_status(e), nb_http_err_token(e), nb_http_err_message(e));
            break;
        }
        if (r == NB_HTTP_MORE) {
            if (!nb_http_parser_in_message(c->parser))
                c->req_started = 0; /* only stray empty lines so far */
            break;
        }
        if (r == NB_HTTP_UPGRADED)
            c->upgraded = 1;
        dispatch(c);
    }
    c->processing = 0;
    if (c->state == C_HTTP && c->eof && !c->inflight && !c->upgraded && c->in.len == 0) {
        nb_httpd_conn_end(c); /* half-closed peer: every complete request was answered */
        return;
    }
    if (c->state != C_CLOSING)
        nb_httpd_conn_update_reading(c);
}

static void nb_httpd_conn_update_reading(conn_t *c)
{
    int want;

    if (c->state == C_CLOSING)
        return;
    if (c->state == C_LINGER)
        want = !c->eof;
    else if (c->state == C_WS)
        want = !c->eof && c->wq < NB_HTTPD_WRITE_HWM && c->in.len < NB_HTTPD_IN_MAX;
    else
        want = !c->eof && !c->inflight && !c->upgraded && c->wq < NB_HTTPD_WRITE_HWM &&
               c->in.len < NB_HTTPD_IN_MAX;
    if (want && !c->reading) {
        if (uv_read_start(&c->u.s, on_alloc, on_read) == 0)
            c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop(&c->u.s);
        c->reading = 0;
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    (void)buf;

    if (c->state == C_CLOSING)
        return;
    if (nread > 0) {
        c->last_activity = c->last_rx = uv_now(c->srv->loop);
        if (c->state == C_LINGER)
            return; /* drained and dropped */
        c->in.len += (size_t)nread;
        if (c->state == C_WS)
            nb_httpd_ws_on_input(c);
        else
            conn_process(c);
        return;
    }
    if (nread == 0)
        return;
    if (nread != UV_EOF) {
        nb_log_conn(NB_LOG_DEBUG, c->id, "read failed: %s", uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->eof = 1;
    uv_read_stop(&c->u.s);
    c->reading = 0;
    if (c->state == C_LINGER || c->state == C_WS) {
        conn_close(c);
        return;
    }
    /* Half-closed: requests already received are still answered. */
    if (c->inflight)
        return;
    conn_process(c);
}

/* Bytes written by us but not yet taken by the peer: libuv's queue plus the
 * kernel's unsent send queue. */
static size_t pending_out(conn_t *c)
{
    size_t q = uv_stream_get_write_queue_size(&c->u.s);
    uv_os_fd_t fd;
    int n = 0;

    if (uv_fileno(&c->u.h, &fd) == 0 && ioctl(fd, TIOCOUTQ, &n) == 0 && n > 0)
        q += (size_t)n;
    return q;
}

static void nb_httpd_conn_on_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    const nb_httpd_cfg_t *cfg = &c->srv->cfg;
    uint64_t now = uv_now(c->srv->loop), next = cfg->idle_timeout_ms;

    if (c->state == C_CLOSING)
        return;
    if (c->wq) {
        /* A large response trickling out to a slow reader is not idleness:
         * any progress of our queue or the kernel's send queue counts. */
        size_t q = pending_out(c);
        if (q != c->last_wqs) {
            c->last_wqs = q;
            c->last_activity = now;
        }
    }
    if (c->state == C_LINGER) {
        if (c->shut && now - c->linger_start >= NB_HTTPD_LINGER_MS) {
            conn_close(c);
            return;
        }
        if (!c->shut && now - c->last_activity >= cfg->idle_timeout_ms) {
            conn_close(c); /* the peer is not reading our last response */
            return;
        }
        next = c->shut ? c->linger_start + NB_HTTPD_LINGER_MS - now : NB_HTTPD_LINGER_MS;
        uv_timer_start(&c->timer, nb_httpd_conn_on_timer, next < 10 ? 10 : next, 0);
        return;
    }
    if (c->state == C_WS && c->ws->raw) {
        /* A raw stream (SSE) is idle by nature; its owner sends keep-alives
         * and a peer that goes away ends it with EOF. */
        uv_timer_start(&c->timer, nb_httpd_conn_on_timer, cfg->idle_timeout_ms, 0);
        return;
    }
    if (c->state == C_WS) {
        nb_ws_t *ws = c->ws;
        if (c->in.len && !ws->close_recv) {
            nb_httpd_ws_on_input(c); /* frames that came with the upgrade request */
            if (c->state != C_WS)
                return;
        }
        /* Only bytes from the peer prove it is alive: our own pings always
         * "succeed" into the kernel buffer. */
        if ((ws->close_sent && now - ws->close_at >= NB_WS_CLOSE_WAIT_MS) ||
            now - c->last_rx >= cfg->idle_timeout_ms) {
            conn_close(c); /* on_close gets the close code, or 1006 */
            return;
        }
        if (!ws->close_sent && now - c->last_rx >= cfg->idle_timeout_ms / 2 &&
            now - ws->last_ping >= cfg->idle_timeout_ms / 2) {
            /* Keep-alive probe; a live peer answers with a pong. */
            nb_buf_t b;
            nb_buf_init(&b, 16);
            ws->last_ping = now;
            if (nb_ws_frame_append(&b, NB_WS_OP_PING, NULL, 0, NULL) == 0)
                nb_httpd_conn_write_buf(c, &b);
            nb_buf_free(&b);
        }
        next = ws->close_sent ? NB_WS_CLOSE_WAIT_MS : cfg->idle_timeout_ms / 4;
        uv_timer_start(&c->timer, nb_httpd_conn_on_timer, next < 50 ? 50 : next, 0);
        return;
    }
    /* C_HTTP */
    uint64_t idle_ms = cfg->idle_timeout_ms, req_ms = cfg->request_timeout_ms;
    if (!c->authed) {
        /* Who has not shown a credential gets little of our time (and of
         * our descriptors): its budget is shared with any local user. */
        idle_ms = cfg->unauth_timeout_ms < idle_ms ? cfg->unauth_timeout_ms : idle_ms;
        req_ms = cfg->unauth_timeout_ms < req_ms ? cfg->unauth_timeout_ms : req_ms;
    }
    if (c->inflight) {
        /* Waiting for our own handler is not the peer's idleness. */
        c->last_activity = now;
    } else if (c->req_started && now - c->req_start >= req_ms) {
        conn_fail(c, 408, "request-timeout", "the request was not received in time");
        return;
    } else if (now - c->last_activity >= idle_ms) {
        if (c->req_started) {
            conn_fail(c, 408, "request-timeout", "the connection was idle");
        } else {
            nb_log_conn(NB_LOG_DEBUG, c->id, "idle timeout");
            conn_close(c);
        }
        return;
    }
    next = c->last_activity + idle_ms - now;
    if (c->req_started && c->req_start + req_ms - now < next)
        next = c->req_start + req_ms - now;
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, next < 10 ? 10 : next, 0);
}

/* --- lifecycle --- */

static void srv_maybe_free(nb_httpd_t *srv)
{
    void (*done)(void *);
    void *ud;

    if (!srv->closing || srv->handles)
        return;
    done = srv->done;
    ud = srv->done_ud;
    nb_buf_free(&srv->defhdrs);
    if (srv->reserve_fd >= 0)
        close(srv->reserve_fd);
    free(srv);
    if (done)
        done(ud);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    nb_httpd_t *srv = c->srv;

    if (--c->open_handles > 0)
        return;
    nb_httpd_req_free(c->req);
    nb_http_parser_free(c->parser);
    nb_buf_free(&c->in);
    if (c->ws) {
        nb_ws_parser_free(c->ws->parser);
        free(c->ws);
    }
    free(c);
    srv->handles--;
    srv_maybe_free(srv);
}

static void conn_close(conn_t *c)
{
    nb_httpd_t *srv = c->srv;

    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    if (c->inflight) {
        c->inflight->conn = NULL; /* the handler's later respond() is dropped */
        c->inflight = NULL;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    if (c->l) {
        c->l->nconns--;
        if (!c->authed)
            c->l->nunauth--;
        c->l = NULL;
    }
    uv_close(&c->u.h, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    /* Last: the user's on_close may call back into us (even nb_httpd_close),
     * which is safe now that this connection is fully closing. */
    if (c->ws)
        nb_httpd_ws_finish(c->ws, 1006);
}

static long peer_uid(conn_t *c)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    uv_os_fd_t fd;
    if (uv_fileno(&c->u.h, &fd) < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return -1;
    return (long)cr.uid;
}

/* A connection that may be closed to make room: nothing of a request is
 * pending or with the handler, nothing is being written, not a WebSocket
 * (those are live sessions: a shell, an event stream). */
static int conn_idle(const conn_t *c)
{
    return c->state == C_HTTP && !c->inflight && !c->req_started && !c->upgraded &&
           c->in.len == 0 && c->wq == 0;
}

/* The oldest live connection of listener `l` matching: `unauth` only
 * unauthenticated ones, `uid` >= 0 only that peer, `idle` only conn_idle()
 * ones. The list is newest first, so the last match is the oldest. */
static conn_t *oldest(nb_httpd_t *srv, listener_t *l, int unauth, long uid, int idle)
{
    conn_t *found = NULL;
    for (conn_t *c = srv->conns; c; c = c->next) {
        if ((l && c->l != l) || (unauth && c->authed) || (uid >= 0 && c->uid != uid) ||
            (idle && !conn_idle(c)))
            continue;
        found = c;
    }
    return found;
}

static void evict(conn_t *v, const char *why)
{
    nb_log_conn(NB_LOG_DEBUG, v->id, "closed to make room (%s)", why);
    conn_close(v);
}

/* Applies the listener's budgets to new connection `c` (not yet counted).
 * Returns 1 when it may stay (maybe after closing an older one), 0 when it
 * must be closed. */
static int admit(nb_httpd_t *srv, listener_t *l, conn_t *c)
{
    const nb_httpd_cfg_t *cfg = &srv->cfg;
    conn_t *v;
    if (!c->authed && l->nunauth >= cfg->max_unauth_conns) {
        /* Unauthenticated ones make room for each other, oldest first: a
         * flood churns through its own budget, a real client's request
         * (sent at once) gets in. */
        if (!(v = oldest(srv, l, 1, -1, 1)) && !(v = oldest(srv, l, 1, -1, 0)))
            return 0;
        evict(v, "unauthenticated budget");
    }
    if (l->is_unix && cfg->max_conns_per_uid) {
        size_t n = 0;
        for (conn_t *x = srv->conns; x; x = x->next)
            n += x->l == l && x->uid == c->uid;
        if (n >= cfg->max_conns_per_uid) {
            if (!cfg->evict_idle || !(v = oldest(srv, l, 0, c->uid, 1)))
                return 0;
            evict(v, "per-peer budget");
        }
    }
    if (l->nconns >= cfg->max_conns) {
        if (!cfg->evict_idle || !(v = oldest(srv, l, 0, -1, 1)))
            return 0;
        evict(v, "listener budget");
    }
    return 1;
}

/* Out of descriptors on accept (EMFILE/ENFILE). libuv retries accept() at
 * once, and once its own spare descriptor is used up it would call us in a
 * tight loop: free one descriptor each time, so that the next accept takes
 * a connection (and the backlog drains) instead of spinning. Best an idle
 * connection (the new one may be the owner's), else our spare, else the
 * oldest connection of this listener. */
static void accept_short(nb_httpd_t *srv, listener_t *l)
{
    uint64_t now = uv_now(srv->loop);
    conn_t *v;
    if (now - srv->last_limit_log >= 1000 || !srv->last_limit_log) {
        srv->last_limit_log = now;
        nb_log(NB_LOG_WARN, "out of file descriptors accepting connections (%zu open)",
               srv->nconns);
    }
    if ((v = oldest(srv, l, 1, -1, 0)) || (v = oldest(srv, l, 0, -1, 1)) ||
        (v = oldest(srv, NULL, 0, -1, 1))) {
        evict(v, "out of descriptors");
        return;
    }
    if (srv->reserve_fd >= 0) {
        close(srv->reserve_fd);
        srv->reserve_fd = -1;
        return;
    }
    if ((v = oldest(srv, l, 0, -1, 0)))
        evict(v, "out of descriptors");
}

/* Takes the spare descriptor back after accept_short() gave it up; when
 * there is still none, the connection just accepted makes room for it. */
static int reserve_restore(nb_httpd_t *srv)
{
    if (srv->reserve_fd >= 0)
        return 0;
    srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return srv->reserve_fd >= 0 ? 0 : -1;
}

static void on_connection(uv_stream_t *ls, int status)
{
    listener_t *l = ls->data;
    nb_httpd_t *srv = l->srv;
    nb_http_limits_t lim;
    conn_t *c;
    int r;

    if (srv->closing)
        return;
    if (status < 0) {
        if (status == UV_EMFILE || status == UV_ENFILE)
            accept_short(srv, l);
        return;
    }
    if (!(c = calloc(1, sizeof(*c))))
        return;
    c->srv = srv;
    c->is_unix = l->is_unix;
    c->id = nb_log_next_conn_id();
    if (l->is_unix)
        r = uv_pipe_init(srv->loop, &c->u.pipe, 0);
    else
        r = uv_tcp_init(srv->loop, &c->u.tcp);
    if (r < 0) {
        free(c);
        return;
    }
    c->u.h.data = c;
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    srv->handles++;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    c->state = C_HTTP;
    nb_buf_init(&c->in, NB_HTTPD_IN_MAX + NB_HTTPD_READ_CHUNK);
    c->uid = -1;
    c->authed = 1;
    c->created = uv_now(srv->loop);
    if ((r = uv_accept(ls, &c->u.s)) < 0) {
        conn_close(c);
        return;
    }
    if (reserve_restore(srv) < 0) {
        conn_close(c); /* its descriptor becomes the spare */
        reserve_restore(srv);
        return;
    }
    if (l->is_unix)
        c->uid = peer_uid(c);
    else if (srv->cfg.unauth_timeout_ms)
        c->authed = 0;
    if (!admit(srv, l, c)) {
        uint64_t now = uv_now(srv->loop);
        if (now - srv->last_limit_log >= 1000 || !srv->last_limit_log) {
            srv->last_limit_log = now; /* a flood must not flood the log too */
            nb_log(NB_LOG_WARN,
                   "connection limit of a %s listener reached (%zu, %zu unauthenticated); "
                   "closing new connections",
                   l->is_unix ? "unix" : "tcp", l->nconns, l->nunauth);
        }
        conn_close(c);
        return;
    }
    c->l = l;
    l->nconns++;
    if (!c->authed)
        l->nunauth++;
    if (!l->is_unix)
        uv_tcp_nodelay(&c->u.tcp, 1);
    nb_http_limits_default(&lim);
    lim.max_start_line = srv->cfg.max_start_line;
    lim.max_header_bytes = srv->cfg.max_header_bytes;
    lim.max_headers = srv->cfg.max_headers;
    lim.max_body = srv->cfg.max_body ? srv->cfg.max_body : 1;
    if ((r = nb_http_parser_new(NB_HTTP_REQUEST, &lim, &parser_cbs, c, &c->parser)) < 0) {
        conn_close(c);
        return;
    }
    c->last_activity = uv_now(srv->loop);
    uint64_t first = srv->cfg.idle_timeout_ms < srv->cfg.request_timeout_ms
                         ? srv->cfg.idle_timeout_ms
                         : srv->cfg.request_timeout_ms;
    if (!c->authed && srv->cfg.unauth_timeout_ms < first)
        first = srv->cfg.unauth_timeout_ms;
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, first, 0);
    nb_log_conn(NB_LOG_DEBUG, c->id, "accepted (%s)", l->is_unix ? "unix" : "tcp");
    nb_httpd_conn_update_reading(c);
}

int nb_httpd_new(uv_loop_t *loop, const nb_httpd_cfg_t *cfg, nb_httpd_handler_fn on_request,
                 void *ud, nb_httpd_t **out)
{
    nb_httpd_t *srv;

    *out = NULL;
    if (!loop || !on_request)
        return NB_EINVAL;
    if (!(srv = calloc(1, sizeof(*srv))))
        return -ENOMEM;
    srv->loop = loop;
    if (cfg)
        srv->cfg = *cfg;
    else
        nb_httpd_cfg_default(&srv->cfg);
    if (!srv->cfg.idle_timeout_ms || !srv->cfg.request_timeout_ms || !srv->cfg.max_conns ||
        !srv->cfg.max_headers || !srv->cfg.max_start_line) {
        free(srv);
        return NB_EINVAL;
    }
    if (srv->cfg.unauth_timeout_ms && !srv->cfg.max_unauth_conns)
        srv->cfg.max_unauth_conns = 64;
    srv->on_request = on_request;
    srv->ud = ud;
    srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    nb_buf_init(&srv->defhdrs, NB_HTTPD_MAX_RESP_HEADERS);
    *out = srv;
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    listener_t *l = h->data;
    nb_httpd_t *srv = l->srv;
    free(l);
    srv->handles--;
    srv_maybe_free(srv);
}

static int listener_new(nb_httpd_t *srv, int is_unix, listener_t **out)
{
    listener_t *l;
    int r;

    *out = NULL;
    if (srv->closing)
        return NB_ESTATE;
    if (srv->nlisteners >= NB_HTTPD_MAX_LISTENERS)
        return NB_ETOOBIG;
    if (!(l = calloc(1, sizeof(*l))))
        return -ENOMEM;
    l->srv = srv;
    l->is_unix = is_unix;
    r = is_unix ? uv_pipe_init(srv->loop, &l->u.pipe, 0) : uv_tcp_init(srv->loop, &l->u.tcp);
    if (r < 0) {
        free(l);
        return r;
    }
    l->u.h.data = l;
    srv->handles++;
    *out = l;
    return 0;
}

int nb_httpd_listen_unix(nb_httpd_t *srv, const char *path, int mode)
{
    listener_t *l;
    struct stat st;
    int r;

    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -ENAMETOOLONG; /* never let the path be truncated */
    if ((r = listener_new(srv, 1, &l)) < 0)
        return r;
    /* Replace a stale socket, but never another kind of file. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            r = -EEXIST;
            goto fail;
        }
        unlink(path);
    }
    {
        /* Create the socket with its final mode: a chmod afterwards would
         * leave a window in which others can connect. umask is process-wide;
         * a file another thread creates in this instant only gets stricter
         * permissions. The chmod below stays for modes umask cannot give. */
        mode_t old = umask((mode_t)(~mode & 0777));
        r = uv_pipe_bind(&l->u.pipe, path);
        umask(old);
        if (r < 0)
            goto fail;
    }
    if (chmod(path, (mode_t)mode) < 0) {
        r = -errno;
        unlink(path);
        goto fail;
    }
    if ((r = uv_listen(&l->u.s, 128, on_connection)) < 0) {
        unlink(path);
        goto fail;
    }
    srv->listeners[srv->nlisteners++] = l;
    return 0;
fail:
    uv_close(&l->u.h, on_listener_closed);
    return r;
}

int nb_httpd_listen_tcp(nb_httpd_t *srv, const char *ip, int port, int *bound_port)
{
    listener_t *l;
    struct sockaddr_storage ss;
    int r, len = sizeof(ss);

    if (bound_port)
        *bound_port = 0;
    if (port < 0 || port > 65535)
        return NB_EINVAL;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) < 0 &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss) < 0)
        return NB_EINVAL;
    if ((r = listener_new(srv, 0, &l)) < 0)
        return r;
    if ((r = uv_tcp_bind(&l->u.tcp, (struct sockaddr *)&ss, 0)) < 0 ||
        (r = uv_listen(&l->u.s, 128, on_connection)) < 0)
        goto fail;
    if ((r = uv_tcp_getsockname(&l->u.tcp, (struct sockaddr *)&ss, &len)) < 0)
        goto fail;
    if (bound_port)
        *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                     : ((struct sockaddr_in *)&ss)->sin_port);
    srv->listeners[srv->nlisteners++] = l;
    return 0;
fail:
    uv_close(&l->u.h, on_listener_closed);
    return r;
}

void nb_httpd_close(nb_httpd_t *srv, void (*done)(void *ud), void *ud)
{
    if (!srv || srv->closing)
        return;
    srv->closing = 1;
    srv->done = done;
    srv->done_ud = ud;
    for (int i = 0; i < srv->nlisteners; i++)
        uv_close(&srv->listeners[i]->u.h, on_listener_closed);
    srv->nlisteners = 0;
    while (srv->conns) {
        conn_t *c = srv->conns;
        if (c->ws && !c->ws->close_sent) {
            /* Best effort "going away": queued before uv_close, which
             * cancels it if the socket cannot take it right now. */
            nb_buf_t b;
            nb_buf_init(&b, 64);
            if (nb_ws_close_frame_append(&b, 1001, "server shutting down") == 0)
                nb_httpd_conn_write_buf(c, &b);
            nb_buf_free(&b);
            c->ws->close_sent = 1;
            c->ws->close_code = 1001;
        }
        conn_close(c);
    }
    if (srv->handles == 0) {
        /* Nothing was ever opened: finish on the next loop turn would need a
         * handle; finishing now is fine for callers. */
        srv_maybe_free(srv);
    }
}

/* --- responding --- */

int nb_httpd_respond(nb_httpd_req_t *req, int status, const char *content_type, const void *body,
                     size_t len)
{
    conn_t *c = req->conn;
    int r, close;

    if (!c) {
        nb_httpd_req_free(req);
        return NB_ECLOSED;
    }
    if (c->inflight != req) {
        /* Misuse (double respond); never corrupt the connection. */
        nb_log_conn(NB_LOG_ERR, c->id, "respond on a request that is not in flight");
        return NB_ESTATE;
    }
    if (status < 200 || status > 599) {
        nb_log_conn(NB_LOG_ERR, c->id, "handler used status %d; sending 500", status);
        status = 500;
    }
    /* A half-closed peer still gets answers to requests it already sent. */
    close = !req->keep_alive || req->upgrade || c->srv->closing || (c->eof && c->in.len == 0);
    c->inflight = NULL;
    r = conn_send_response(c, status, content_type, &req->resp_hdrs, body, len, req->head_method,
                           req->version_minor == 0 && !close, close);
    nb_httpd_req_free(req);
    if (r < 0)
        return r;
    if (c->state == C_HTTP)
        conn_process(c);
    else if (c->state != C_CLOSING)
        nb_httpd_conn_update_reading(c);
    return 0;
}

int nb_httpd_respond_error(nb_httpd_req_t *req, int status, const char *code, const char *msg)
{
    nb_buf_t b;
    json_t *j;
    int r;

    nb_buf_init(&b, 64 * 1024);
    j = json_pack("{s:s, s:s}", "error", code ? code : "error", "message", msg ? msg : "");
    if (!j || nb_json_dump(j, &b) < 0) {
        json_decref(j);
        nb_buf_free(&b);
        return nb_httpd_respond(req, 500, "application/json",
                                "{\"error\":\"internal\",\"message\":\"out of memory\"}", 47);
    }
    json_decref(j);
    r = nb_httpd_respond(req, status, "application/json", b.p, b.len);
    nb_buf_free(&b);
    return r;
}

/* ------------------------------------------------------------ WebSocket
 * The upgrade handshake (nb_httpd_ws_accept), frames in and out through
 * the nb_ws codec, and the close handshake. */

/* Reports the end to the user once. */
static void nb_httpd_ws_finish(nb_ws_t *ws, int code)
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

/* Feeds the bytes in c->in (a C_WS connection) to the frame parser. */
static void nb_httpd_ws_on_input(conn_t *c)
{
    nb_ws_t *ws = c->ws;
    size_t used = 0;
    int r;

    if (ws->close_recv || ws->raw) {
        c->in.len = 0; /* a raw stream's peer has nothing more to say */
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
        c->in.len = 0;
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

/* The connection becomes ws's (C_WS) and the head built in b (r: how that
 * went) goes out; a head that could not be built is a 500 and ws is freed.
 * No callback may run before the caller has its handle: on a failed write
 * the connection closes without on_close (the error is returned). */
static int take_over(conn_t *c, nb_httpd_req_t *req, nb_ws_t *ws, nb_buf_t *b, int r)
{
    if (r < 0) {
        nb_buf_free(b);
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
    ws->closed_cb_done = 1;
    r = nb_httpd_conn_write_buf(c, b);
    nb_buf_free(b);
    if (r < 0)
        return r;
    ws->closed_cb_done = 0;
    c->last_activity = c->last_rx = uv_now(c->srv->loop);
    return 0;
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
    if ((r = take_over(c, req, ws, &b, r)) < 0)
        return r;
    nb_log_conn(NB_LOG_DEBUG, c->id, "websocket accepted");
    *out = ws;
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
    if (ws->raw) {
        uint8_t *m = malloc(len ? len : 1);
        if (!m)
            return -ENOMEM;
        memcpy(m, data, len);
        return conn_write(c, m, len);
    }
    if (text && !nb_utf8_valid(data, len))
        return NB_EINVAL;
    return ws_send_frame(ws, text ? NB_WS_OP_TEXT : NB_WS_OP_BINARY, data, len);
}

void nb_ws_close(nb_ws_t *ws, int code, const char *reason)
{
    conn_t *c = ws->c;

    if (ws->close_sent || ws->closed_cb_done || c->state != C_WS)
        return;
    if (ws->raw) {
        /* The end of the body is the end of the connection. */
        ws->close_sent = 1;
        ws->close_code = 1000;
        nb_httpd_conn_end(c);
        return;
    }
    if (!nb_ws_close_code_sendable(code))
        code = 1000;
    ws->close_code = code;
    ws_send_close(ws, code, reason);
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, NB_WS_CLOSE_WAIT_MS, 0);
}

/* ------------------------------------------------------------ raw streams
 * A response whose body is written piece by piece until the server ends
 * it (Server-Sent Events): the head goes out with Connection: close and no
 * length, the connection becomes a C_WS one in raw mode (nb_ws_send writes
 * bytes as they are, nb_ws_close ends the body and the connection). */

int nb_httpd_stream_accept(nb_httpd_req_t *req, int status, const char *content_type,
                           const nb_ws_cbs_t *cbs, void *ud, nb_ws_t **out)
{
    conn_t *c = req->conn;
    nb_buf_t b;
    nb_ws_t *ws;
    char date[64];
    int r;

    *out = NULL;
    if (!c) {
        nb_httpd_req_free(req);
        return NB_ECLOSED;
    }
    if (c->inflight != req)
        return NB_ESTATE;
    if (!(ws = calloc(1, sizeof(*ws)))) {
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return -ENOMEM;
    }
    ws->c = c;
    ws->raw = 1;
    if (cbs)
        ws->cbs = *cbs;
    ws->ud = ud;
    fmt_date(date, sizeof(date));
    nb_buf_init(&b, NB_HTTPD_MAX_RESP_HEADERS);
    r = nb_buf_printf(&b, "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n", status,
                      nb_http_status_text(status), date, content_type);
    if (r == 0)
        r = nb_buf_append(&b, c->srv->defhdrs.p, c->srv->defhdrs.len);
    if (r == 0)
        r = nb_buf_append(&b, req->resp_hdrs.p, req->resp_hdrs.len);
    if (r == 0)
        r = nb_buf_append_str(&b, "Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    if ((r = take_over(c, req, ws, &b, r)) < 0)
        return r;
    *out = ws;
    uv_timer_start(&c->timer, nb_httpd_conn_on_timer, c->srv->cfg.idle_timeout_ms, 0);
    nb_httpd_conn_update_reading(c);
    return 0;
}
