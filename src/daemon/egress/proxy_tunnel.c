/* CONNECT (and transparent connections, which are CONNECTs without the
 * exchange): the gate's verdict, tunnels answered before it (held), what
 * the tunnel carries (TLS to terminate, plain HTTP, or raw bytes), and raw
 * tunnels' upstream connections. */
#include <stdio.h>
#include <string.h>

#include "daemon/egress/proxy_int.h"
#include "lib/err.h"
#include "lib/log.h"

static void connect_allowed(cconn_t *c);
static void tunnel_ready(upconn_t *u, int r);
static const nb_px_up_cbs_t tunnel_up_cbs = {.ready = tunnel_ready};

void nb_px_tunnel_sniff(cconn_t *c)
{
    if (c->in.len == 0)
        return;
    if (c->in.p[0] == 0x16) {
        /* TLS ClientHello: terminate TLS with a leaf for the approved
         * name; the CA's SNI callback refuses any other name (A8). */
        c->state = CS_HANDSHAKE;
        c->tls = 1;
        int r = nb_pxio_tls_server(&c->io, c->px->server_ctx, c->auth.host, c->in.p, c->in.len);
        nb_buf_reset(&c->in);
        if (r < 0) {
            nb_log_conn(NB_LOG_WARN, c->id, "cannot start TLS: %s", nb_strerror(r));
            nb_px_conn_close(c);
        }
        return;
    }
    /* Plain HTTP inside the tunnel (CONNECT to port 80). */
    c->state = CS_HTTP;
    c->tls = 0;
    if (nb_px_conn_start_http(c) < 0) {
        nb_px_conn_close(c);
        return;
    }
    nb_px_conn_feed(c);
}

static void tunnel_established(cconn_t *c)
{
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    if (c->transparent)
        return; /* the client never sent a CONNECT: nothing to answer */
    if (nb_pxio_write(&c->io, ok, sizeof ok - 1) < 0)
        nb_px_conn_close(c);
}

/* A5: a value injected into a request to a bound host may be stored there
 * and served back later on any connection to that host. Inspected
 * connections are scanned; a raw tunnel cannot be (it may be TLS end to end
 * with the upstream), so none is opened to a host that any binding names.
 * The user can have such a port inspected instead (`--http` on its rule).
 * 1 when refused (the connection is answered or closed). */
static int raw_refused(cconn_t *c)
{
    if (!nb_pxcreds_host_bound_any(c->px->creds, c->auth.host))
        return 0;
    char msg[400], hint[400];
    snprintf(msg, sizeof msg,
             "secrets are bound to %s, and a connection nilbox cannot inspect could carry one "
             "back",
             c->auth.host);
    snprintf(hint, sizeof hint,
             "to let nilbox inspect it: nilbox rule add allow %s --port %u --http", c->auth.host,
             (unsigned)c->auth.port);
    json_t *d = json_pack("{s:s, s:s, s:s}", "reason", "raw-tunnel-bound-host", "threat", "A5",
                          "message", msg);
    nb_px_record(c, "refusal", c->auth.host, c->auth.port, d);
    nb_log_conn(NB_LOG_INFO, c->id, "raw tunnel to bound host %s:%u refused", c->auth.host,
                (unsigned)c->auth.port);
    c->px->st.denied++;
    if (c->early || c->transparent)
        nb_px_conn_close(c); /* a raw stream has no place for a reason */
    else
        nb_px_reply(c, 403, "refused", "raw-tunnel-bound-host", c->auth.host, msg, hint, 1);
    return 1;
}

static void deny(cconn_t *c, const nb_gate_verdict_t *v)
{
    c->px->st.denied++;
    c->deny = 1;
    c->deny_why = v->why;
    snprintf(c->deny_reason, sizeof c->deny_reason, "%s", nb_gate_why_name(v->why));
    nb_log_conn(NB_LOG_INFO, c->id, "CONNECT %s:%u denied (%s)", c->auth.host, c->auth.port,
                c->deny_reason);
}

/* The tunnel carries HTTP: TLS to terminate or plain, by its first byte
 * (the TLS handshake is timed like a request head). */
static void start_inspect(cconn_t *c)
{
    c->inspect = 1;
    c->state = CS_SNIFF;
    c->head_started = uv_now(c->px->loop);
    nb_px_conn_update_read(c);
    nb_px_tunnel_sniff(c);
}

/* The verdict of a CONNECT answered before it (connect_hold). Nothing
 * has gone upstream yet: an HTTP port's held request goes on or gets its
 * 403 inside the tunnel; a raw port's held bytes go to a new upstream
 * connection, or the tunnel is closed. */
static void held_verdict(cconn_t *c, const nb_gate_verdict_t *v)
{
    c->held = 0;
    if (!v->allowed)
        deny(c, v);
    if (c->state == CS_GATE) {
        if (!v->allowed) {
            nb_px_conn_close(c); /* a raw tunnel has no way to carry a reason */
            return;
        }
        c->rule_http = v->http != 0;
        c->inspect = v->http != 0;
        if (c->inspect) {
            start_inspect(c);
            return;
        }
        if (raw_refused(c))
            return;
        c->state = CS_CONNECTING;
        nb_px_conn_update_read(c);
        if (nb_px_up_acquire(&c->l->pool, c->auth.host, c->auth.is_ip, c->auth.port, 0, 1,
                             &tunnel_up_cbs, c, &c->up) < 0)
            nb_px_conn_close(c);
        return;
    }
    if (c->x.gate_waiting) {
        c->x.gate_waiting = 0;
        nb_px_http_release(c);
        if (c->state != CS_CLOSING)
            nb_px_conn_update_read(c);
    }
}

static void connect_verdict(cconn_t *c, const nb_gate_verdict_t *v)
{
    nb_px_record_gate(c, c->auth.host, c->auth.port, v, "connect");
    c->pol_gen = nb_gate_generation(c->px->cfg.gate);
    c->pol_why = v->why;
    if (c->held) {
        held_verdict(c, v);
        return;
    }
    int http_port = c->auth.port == 80 || c->auth.port == 443;
    if (v->allowed) {
        c->rule_http = v->http != 0;
        connect_allowed(c);
        return;
    }
    deny(c, v);
    if (http_port) {
        /* Tell the agent why, in a form it reads: finish the tunnel (and
         * TLS, with a minted leaf) and answer its request with a 403. */
        tunnel_established(c);
        start_inspect(c);
        return;
    }
    nb_px_reply(c, 403, "denied", c->deny_reason, c->auth.host, "the destination is not allowed",
                nb_px_why_hint(v->why), 1);
}

static void on_connect_gate(void *ud, const nb_gate_verdict_t *v)
{
    cconn_t *c = ud;
    c->wait = NULL;
    connect_verdict(c, v);
}

/* The gate prompts for the CONNECT's destination: answer the CONNECT now
 * and hold what follows until the verdict, so that a client with a short
 * connect timeout (undici: 10 s) waits under its response timeout
 * instead of giving up while the user decides. An HTTP port gets its TLS
 * handshake at once, with a leaf minted for the CONNECT name (no upstream
 * contact, no resolution), and its first request waits (start() in
 * proxy_http.c); a raw port's first bytes are read and kept in c->in. */
static void connect_hold(cconn_t *c)
{
    c->held = 1;
    c->early = 1;
    tunnel_established(c);
    if (c->state == CS_CLOSING)
        return;
    if (c->auth.port == 80 || c->auth.port == 443)
        start_inspect(c);
    else
        nb_px_conn_update_read(c);
}

/* A CONNECT request was read completely (any bytes after it are in c->in). */
void nb_px_tunnel_connect(cconn_t *c)
{
    nb_proxy_t *px = c->px;
    c->tunnel = 1;
    nb_px_exch_reset(c); /* the CONNECT exchange is over; the tunnel's requests start fresh */
    c->head_started = 0;
    px->st.tunnels++;
    c->state = CS_GATE;
    nb_px_conn_update_read(c);
    nb_gate_verdict_t v;
    int r = nb_px_gate_check(c, &c->dest, &v, on_connect_gate);
    if (r == 1)
        connect_verdict(c, &v);
    else
        connect_hold(c);
}

static void connect_allowed(cconn_t *c)
{
    c->inspect = c->auth.port == 80 || c->auth.port == 443 || c->rule_http;
    if (c->inspect) {
        tunnel_established(c);
        if (c->state != CS_CLOSING)
            start_inspect(c);
        return;
    }
    if (raw_refused(c))
        return;
    /* Raw tunnel: connect first, so a failure can still be a 502. */
    c->state = CS_CONNECTING;
    int r = nb_px_up_acquire(&c->l->pool, c->auth.host, c->auth.is_ip, c->auth.port, 0, 1,
                             &tunnel_up_cbs, c, &c->up);
    if (r < 0)
        nb_px_reply(c, 502, "bad-gateway", "internal-error", c->auth.host,
                    "cannot start the upstream connection", "retry later", 1);
}

/* A raw tunnel's upstream connection is ready (or failed). */
static void tunnel_ready(upconn_t *u, int r)
{
    cconn_t *c = u->ud;
    if (r < 0) {
        c->up = NULL;
        nb_px_record_up_failure(c, u, c->auth.host, c->auth.port);
        if (c->early) {
            /* Already answered 200: the raw stream has no place for a 502. */
            nb_px_up_close(u);
            nb_px_conn_close(c);
            return;
        }
        nb_px_reply(c, u->fail_status, "bad-gateway", u->fail_token, c->auth.host, u->fail_msg,
                    "check the destination; internal addresses need an explicit IP rule", 1);
        nb_px_up_close(u);
        return;
    }
    c->up = u;
    if (!c->early)
        tunnel_established(c);
    if (c->state == CS_CLOSING)
        return;
    c->state = CS_PIPE;
    nb_buf_t held = c->in;
    nb_buf_init(&c->in, IN_CAP);
    nb_px_pipe_start(c, held.p, held.len);
    nb_buf_free(&held);
}
