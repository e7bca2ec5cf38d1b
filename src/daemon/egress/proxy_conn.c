/* The lifecycle of the proxy's connections and listeners (closing,
 * lingering, freeing, read back-pressure), audit records and the gate
 * helpers every layer above uses. */
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/proxy_int.h"
#include "lib/log.h"

#define LINGER_MS 2000 /* read-and-discard after our last reply */

static void on_linger_timer(uv_timer_t *t)
{
    nb_px_conn_close(t->data); /* the lingering time is over */
}

void nb_px_record(cconn_t *c, const char *kind, const char *host, int port, json_t *detail)
{
    nb_proxy_t *px = c->px;
    if (!detail)
        detail = json_object();
    if (detail) {
        json_object_set_new(detail, "conn", json_integer((json_int_t)c->id));
        json_object_set_new(detail, "listener", json_integer((json_int_t)c->l->id));
    }
    if (px->cfg.record)
        px->cfg.record(px->cfg.record_ud, kind, c->l->vm, host, port, detail);
    else
        json_decref(detail);
}

static void conn_maybe_free(cconn_t *c)
{
    if (!c->io_closed || !c->timer_closed)
        return;
    nb_proxy_listener_t *l = c->l;
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    l->nconns--;
    l->px->nconns--;
    if (c->refusing) {
        l->nrefusing--;
        l->px->nrefusing--;
    }
    if (c->unauth)
        l->nunauth--;
    l->px->st.conns_open--;
    nb_http_parser_free(c->rp);
    nb_buf_free(&c->in);
    nb_buf_free(&c->x.pending);
    nb_buf_free(&c->scratch);
    nb_inject_out_free(&c->inj);
    nb_pxsv4_free(c->sv);
    nb_redact_free(c->red);
    nb_wsscan_free(c->ws);
    nb_redact_free(c->red_ctl);
    if (c->x.us)
        c->px->usage_drop(c);
    nb_decode_free(c->x.dec);
    nb_pxcreds_unref(c->creds);
    nb_px_oauth_reset(c);
    free(c->hdrs);
    free(c);
    nb_px_listener_maybe_free(l);
}

static void on_io_closed(nb_pxio_t *io)
{
    cconn_t *c = io->ud;
    c->io_closed = 1;
    conn_maybe_free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    cconn_t *c = h->data;
    c->timer_closed = 1;
    conn_maybe_free(c);
}

void nb_px_conn_summarize(cconn_t *c)
{
    if (c->summarized)
        return;
    c->summarized = 1;
    for (size_t k = 0; k < c->ntally; k++) {
        if (c->tally[k].count < 2)
            continue;
        const char *pl = nb_binding_placement_name(c->tally[k].placement);
        nb_px_record(c, "inject", c->tally[k].host, c->tally[k].port,
                     json_pack("{s:[s], s:I, s:s, s:I, s:b}", "secrets", c->tally[k].secret,
                               "binding", (json_int_t)c->tally[k].binding_id, "placement",
                               pl ? pl : "?", "count", (json_int_t)c->tally[k].count, "summary",
                               1));
    }
    if (c->leaks_unrecorded)
        nb_px_record(
            c, "leak", c->tunnel ? c->auth.host : NULL, c->tunnel ? c->auth.port : 0,
            json_pack("{s:I, s:b}", "more", (json_int_t)c->leaks_unrecorded, "summary", 1));
}

void nb_px_conn_drop_up(cconn_t *c, int reusable)
{
    upconn_t *u = c->up;
    if (!u)
        return;
    c->up = NULL;
    nb_px_up_release(u, reusable);
}

void nb_px_conn_close(cconn_t *c)
{
    if (c->state == CS_CLOSING && c->io.closing)
        return;
    nb_px_conn_summarize(c);
    c->state = CS_CLOSING;
    nb_gate_cancel(c->wait);
    c->wait = NULL;
    nb_px_conn_drop_up(c, 0);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    nb_pxio_close(&c->io, on_io_closed);
}

/* Ends the connection gracefully once everything queued is written: our
 * sending side is shut down, then incoming bytes are read and dropped for
 * a moment so that a client still sending does not get a reset that
 * destroys the reply in flight. */
void nb_px_conn_linger(cconn_t *c)
{
    if (c->state == CS_CLOSING)
        return;
    nb_px_conn_drop_up(c, 0);
    nb_gate_cancel(c->wait);
    c->wait = NULL;
    c->state = CS_CLOSING;
    nb_pxio_shutdown(&c->io);
    if (c->io.failed || c->io.eof_reported || c->client_eof) {
        nb_px_conn_close(c);
        return;
    }
    nb_pxio_read_start(&c->io);
    uv_timer_start(&c->timer, on_linger_timer, LINGER_MS, 0);
}

/* Reads from the client only while nothing downstream is full. */
void nb_px_conn_update_read(cconn_t *c)
{
    int want = 0;
    switch (c->state) {
    case CS_START:
    case CS_HTTP:
        want = !(c->parse_paused && c->in.len >= IN_PAUSED_MAX) &&
               c->x.pending.len < NB_PXIO_HIGH_WATER &&
               !(c->up && c->x.head_sent && nb_pxio_queued(&c->up->io) > NB_PXIO_HIGH_WATER);
        break;
    case CS_SNIFF:
    case CS_CLOSING:
        want = 1;
        break;
    case CS_GATE:
        /* A raw tunnel answered before its verdict: keep its first bytes
         * (and notice a client that leaves) without sending anything. */
        want = c->held && c->in.len < IN_PAUSED_MAX;
        break;
    case CS_PIPE:
        want = !c->pipe_c_eof && c->up && nb_pxio_queued(&c->up->io) <= NB_PXIO_HIGH_WATER;
        break;
    default:
        want = 0;
    }
    if (want && !c->io.want_read)
        nb_pxio_read_start(&c->io);
    else if (!want && c->io.want_read)
        nb_pxio_read_stop(&c->io);
}

void nb_px_burst_row(nb_proxy_t *px, nb_proxy_listener_t *l, nb_px_burst_t *b, uint64_t conn,
                     const char *reason, const char *threat, const char *msg)
{
    uint64_t now = uv_now(px->loop);
    if (b->last_row && now - b->last_row < PX_BURST_MS) {
        b->suppressed++;
        return;
    }
    json_t *d = json_pack("{s:s, s:s, s:s, s:I, s:I}", "reason", reason, "threat", threat, "stage",
                          "accept", "listener", (json_int_t)l->id, "earlier_unrecorded",
                          (json_int_t)b->suppressed);
    if (d && conn)
        json_object_set_new(d, "conn", json_integer((json_int_t)conn));
    nb_log(NB_LOG_NOTICE,
           "proxy listener %" PRIu64 " (vm '%s'): %s (%" PRIu64 " more since the last report)",
           l->id, l->vm, msg, b->suppressed);
    b->suppressed = 0;
    b->last_row = now;
    if (px->cfg.record)
        px->cfg.record(px->cfg.record_ud, "refusal", l->vm, NULL, 0, d);
    else
        json_decref(d);
}

/* The counts of refusals not yet in a row, when the listener closes. */
void nb_px_burst_flush(nb_proxy_listener_t *l, nb_px_burst_t *b, const char *reason,
                       const char *threat)
{
    nb_proxy_t *px = l->px;
    if (!b->suppressed)
        return;
    json_t *d = json_pack("{s:s, s:s, s:s, s:I, s:I, s:b}", "reason", reason, "threat", threat,
                          "stage", "accept", "listener", (json_int_t)l->id, "earlier_unrecorded",
                          (json_int_t)b->suppressed, "summary", 1);
    b->suppressed = 0;
    if (px->cfg.record)
        px->cfg.record(px->cfg.record_ud, "refusal", l->vm, NULL, 0, d);
    else
        json_decref(d);
}

void nb_px_record_gate(cconn_t *c, const char *host, int port, const nb_gate_verdict_t *v,
                       const char *how)
{
    json_t *det = json_pack("{s:s, s:s, s:s}", "decision", v->allowed ? "allow" : "deny", "reason",
                            nb_gate_why_name(v->why), "via", how);
    if (det && v->rule_id)
        json_object_set_new(det, "rule", json_integer((json_int_t)v->rule_id));
    if (det && v->prompt_id)
        json_object_set_new(det, "prompt", json_integer((json_int_t)v->prompt_id));
    nb_px_record(c, "gate.decision", host, port, det);
    c->reply_rule = v->allowed ? 0 : v->rule_id;
}

int nb_px_gate_check(cconn_t *c, const nb_dest_t *d, nb_gate_verdict_t *v, nb_gate_done_fn done)
{
    /* Without a callback the gate decides at once: no rule, no prompt. */
    if (c->l->ip_no_prompt && d->is_ip)
        done = NULL;
    return nb_gate_check(c->px->cfg.gate, d, v, done, c, &c->wait);
}

void nb_px_engine_maybe_free(nb_proxy_t *px)
{
    if (!px->closing || px->listeners)
        return;
    SSL_CTX_free(px->server_ctx);
    nb_pxcreds_unref(px->creds);
    if (px->reserve_fd >= 0)
        close(px->reserve_fd);
    void (*done)(void *) = px->done;
    void *ud = px->done_ud;
    free(px);
    if (done)
        done(ud);
}

void nb_px_listener_maybe_free(nb_proxy_listener_t *l)
{
    if (!l->closing || !l->srv_closed || l->conns || l->pool.nups)
        return;
    nb_proxy_t *px = l->px;
    if (l->prev)
        l->prev->next = l->next;
    else
        px->listeners = l->next;
    if (l->next)
        l->next->prev = l->prev;
    SSL_CTX_free(l->pool.client_ctx);
    sodium_memzero(l->token, sizeof l->token);
    free(l);
    nb_px_engine_maybe_free(px);
}

void nb_px_record_up_failure(cconn_t *c, const upconn_t *u, const char *host, int port)
{
    json_t *d = json_pack("{s:s, s:s}", "reason", u->fail_token, "message", u->fail_msg);
    if (d && strcmp(u->fail_token, "internal-address") == 0)
        json_object_set_new(d, "threat", json_string("A13"));
    nb_px_record(c, "refusal", host, port, d);
    c->px->st.upstream_errors++;
    snprintf(c->reply_addr, sizeof c->reply_addr, "%s", u->fail_addr);
    c->reply_port = u->fail_port;
}
