/* Raw byte pipes between the client and the upstream: raw TCP tunnels
 * after the gate, and WebSocket connections after the 101 answer. Bytes
 * are forwarded as they come, each direction paused while the other side
 * has more than NB_PXIO_HIGH_WATER bytes queued; an EOF on one side is
 * passed on as a half-close, and the connection ends once both directions
 * are finished and flushed.
 *
 * WebSocket connections to hosts with bindings are not raw: the
 * upstream's frames go through nb_wsscan (parsed, payloads redacted,
 * re-framed) so that an echoed value never reaches the guest (A5). The
 * guest's frames pass as they are: they come from the guest, which never
 * holds a real value. */
#include <inttypes.h>

#include "daemon/egress/proxy_int.h"
#include "lib/err.h"
#include "lib/log.h"

static void up_update_read(cconn_t *c)
{
    upconn_t *u = c->up;
    if (!u)
        return;
    int want = !c->pipe_u_eof && nb_pxio_queued(&c->io) <= NB_PXIO_HIGH_WATER;
    if (want && !u->io.want_read)
        nb_pxio_read_start(&u->io);
    else if (!want && u->io.want_read)
        nb_pxio_read_stop(&u->io);
}

static void maybe_done(cconn_t *c)
{
    upconn_t *u = c->up;
    if (!c->pipe_c_eof || !c->pipe_u_eof)
        return;
    if ((c->io.shut && !c->io.shut_done) || (u && u->io.shut && !u->io.shut_done))
        return; /* on_shutdown brings us back */
    nb_px_conn_close(c);
}

static const nb_px_up_cbs_t up_cbs;

void nb_px_pipe_start(cconn_t *c, const uint8_t *cpre, size_t cprelen)
{
    c->state = CS_PIPE;
    nb_px_up_attach(c->up, &up_cbs, c);
    if (cprelen && nb_pxio_write(&c->up->io, cpre, cprelen) < 0) {
        nb_px_conn_close(c);
        return;
    }
    if (c->client_eof) {
        c->pipe_c_eof = 1;
        nb_pxio_shutdown(&c->up->io);
    }
    nb_px_conn_update_read(c);
    up_update_read(c);
}

void nb_px_pipe_client_data(cconn_t *c, const uint8_t *p, size_t len)
{
    if (!c->up || nb_pxio_write(&c->up->io, p, len) < 0) {
        nb_px_conn_close(c);
        return;
    }
    nb_px_conn_update_read(c);
}

int nb_px_pipe_scan_ws(cconn_t *c)
{
    int r;
    if (!c->red_ctl && (r = nb_redact_new(&c->red_ctl)) < 0)
        return r;
    if ((r = nb_redact_copy(c->red_ctl, c->red)) < 0)
        return r;
    nb_wsscan_free(c->ws);
    c->ws = NULL;
    c->ws_reported = nb_redact_count(c->red);
    return nb_wsscan_new(c->red, c->red_ctl, &c->ws);
}

static int ws_sink(void *ud, const uint8_t *p, size_t len)
{
    cconn_t *c = ud;
    return nb_pxio_write(&c->io, p, len);
}

/* Audits replacements made in WebSocket frames since the last row. */
static void ws_audit(cconn_t *c)
{
    uint64_t n = nb_redact_count(c->red) + nb_redact_count(c->red_ctl);
    if (n <= c->ws_reported)
        return;
    uint64_t d = n - c->ws_reported;
    c->ws_reported = n;
    if (c->leak_rows >= PX_LEAK_ROWS_MAX) {
        c->leaks_unrecorded += d;
        return;
    }
    c->leak_rows++;
    nb_log_conn(NB_LOG_NOTICE, c->id,
                "%s echoed a secret in a WebSocket frame: %" PRIu64
                " occurrence(s) replaced by the placeholder",
                c->x.auth.host, d);
    nb_px_record(c, "leak", c->x.auth.host, c->x.auth.port,
                 json_pack("{s:s, s:s, s:I, s:s}", "threat", "A5", "action", "redacted", "replaced",
                           (json_int_t)d, "where", "websocket"));
}

int nb_px_pipe_up_to_client(cconn_t *c, const uint8_t *p, size_t len)
{
    if (!c->ws)
        return nb_pxio_write(&c->io, p, len);
    int r = nb_wsscan_feed(c->ws, p, len, ws_sink, c);
    ws_audit(c);
    if (r == NB_EPROTO)
        nb_log_conn(NB_LOG_NOTICE, c->id,
                    "%s sent a WebSocket frame the proxy cannot scan (extension bits, masking or "
                    "bad framing): connection closed",
                    c->x.auth.host);
    return r;
}

static void up_data(upconn_t *u, const uint8_t *p, size_t len)
{
    cconn_t *c = u->ud;
    nb_px_conn_touch(c);
    if (nb_px_pipe_up_to_client(c, p, len) < 0) {
        nb_px_conn_close(c);
        return;
    }
    up_update_read(c);
}

void nb_px_pipe_client_eof(cconn_t *c)
{
    c->pipe_c_eof = 1;
    if (c->up)
        nb_pxio_shutdown(&c->up->io);
    nb_px_conn_update_read(c);
    maybe_done(c);
}

static void up_eof(upconn_t *u)
{
    cconn_t *c = u->ud;
    c->pipe_u_eof = 1;
    if (u->io.failed || (c->ws && nb_wsscan_partial(c->ws))) {
        /* Cut mid-frame: held-back bytes may be part of a value, and the
         * client cannot use half a frame anyway. */
        nb_px_conn_close(c);
        return;
    }
    nb_pxio_shutdown(&c->io);
    up_update_read(c);
    maybe_done(c);
}

void nb_px_pipe_client_drain(cconn_t *c)
{
    up_update_read(c);
}

static void up_drain(upconn_t *u)
{
    nb_px_conn_update_read(u->ud);
}

void nb_px_pipe_shutdown_done(cconn_t *c)
{
    maybe_done(c);
}

static void up_shutdown(upconn_t *u)
{
    maybe_done(u->ud);
}

static const nb_px_up_cbs_t up_cbs = {
    .data = up_data, .eof = up_eof, .drain = up_drain, .shutdown = up_shutdown};
