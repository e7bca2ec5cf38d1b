/* Host-service grants (THREATS.md A14): a guest connection to
 * host.nilbox.internal:PORT, judged by the gate for that exact name and
 * port, then spliced to 127.0.0.1:PORT. See portsvc.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/portsvc_int.h"
#include "host/sockdiag.h"
#include "lib/err.h"
#include "lib/log.h"

static void audit(nb_portsvc_t *ps, const char *vm, uint16_t port, int allowed, const char *why)
{
    if (!ps->d->audit)
        return;
    if (allowed) {
        /* Refusals are traffic rows the audit log merges and caps per VM;
         * grants are not: at most one row per second. */
        uint64_t now = uv_now(ps->loop);
        if (ps->last_grant_ms && now - ps->last_grant_ms < 1000)
            return;
        ps->last_grant_ms = now;
    }
    nb_audit_append(ps->d->audit, allowed ? "host.connect" : "refusal", vm, NB_HOST_SERVICE_NAME,
                    port,
                    allowed ? json_pack("{s:s}", "reason", why)
                            : json_pack("{s:s, s:s}", "threat", "A14", "reason", why));
}

static void hc_stream_closed(nb_stream_t *s, void *ud)
{
    (void)s;
    hconn_t *c = ud;
    if (++c->nclosed < c->nstreams)
        return;
    nb_portsvc_t *ps = c->ps;
    if (c->prev)
        c->prev->next = c->next;
    else
        ps->hconns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ps->nhconns--;
    free(c);
    ps->live--;
    nb_ports_maybe_free(ps);
}

/* Ends the connection; `why` (not NULL) resets the guest's stream with a
 * sentence the agent logs. */
static void hc_close(hconn_t *c, uint32_t code, const char *why)
{
    if (c->closing)
        return;
    c->closing = 1;
    nb_gate_cancel(c->wait);
    c->wait = NULL;
    nb_stream_set_cbs(c->mux, NULL, NULL, hc_stream_closed, c);
    if (why)
        nb_stream_mux_reset(c->mux, code, why);
    else
        nb_stream_close(c->mux, 0);
    if (c->tcp) {
        nb_stream_set_cbs(c->tcp, NULL, NULL, hc_stream_closed, c);
        nb_stream_close(c->tcp, why != NULL);
    }
}

static void hc_done(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud)
{
    (void)sp;
    (void)failed;
    hconn_t *c = ud;
    hc_close(c, NB_MUX_E_FAILED, err ? "host service: connection lost" : NULL);
}

static void hc_connected(uv_connect_t *req, int status)
{
    hconn_t *c = req->data;
    c->connecting = 0;
    if (c->closing)
        return; /* the close callback of tcp follows */
    if (status < 0) {
        char why[96];
        snprintf(why, sizeof why, "host port %u: %s", c->port, uv_strerror(status));
        hc_close(c, NB_MUX_E_FAILED, why);
        return;
    }
    uv_tcp_nodelay((uv_tcp_t *)nb_stream_uv_handle(c->tcp), 1);
    nb_splice_opts_t o = {.on_done = hc_done, .ud = c};
    if (nb_stream_splice(c->mux, c->tcp, &o, NULL) < 0)
        hc_close(c, NB_MUX_E_INTERNAL, "out of memory");
}

/* A grant is an exact `allow host.nilbox.internal:PORT` (a rule naming the
 * port, or a prompt answer, which is always for one port): a wildcard
 * (`*.internal`) or any-port rule opens no host port. */
static int granted(nb_portsvc_t *ps, const nb_gate_verdict_t *v)
{
    if (!v->allowed)
        return 0;
    if (v->why != NB_GATE_WHY_ALLOW_RULE)
        return v->why == NB_GATE_WHY_ALLOW_ONCE || v->why == NB_GATE_WHY_ALLOW_ALWAYS;
    const nb_ruleset_t *rs = ps->d->gate ? nb_gate_rules(ps->d->gate) : NULL;
    for (size_t i = 0; rs && i < rs->n; i++)
        if (rs->v[i].id == v->rule_id)
            return rs->v[i].kind == NB_RULE_NAME && rs->v[i].port != 0;
    return 0;
}

static void decide(hconn_t *c, const nb_gate_verdict_t *v)
{
    nb_portsvc_t *ps = c->ps;
    if (!granted(ps, v)) {
        const char *why = v->allowed ? "not-exact-grant" : nb_gate_why_name(v->why);
        audit(ps, c->vm, c->port, 0, why);
        char msg[160];
        snprintf(msg, sizeof msg,
                 "host port %u is not granted to this VM (nilbox rule add allow host:%u --vm "
                 "%s)",
                 c->port, c->port, c->vm);
        hc_close(c, NB_MUX_E_REFUSED, msg);
        return;
    }
    audit(ps, c->vm, c->port, 1, nb_gate_why_name(v->why));
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", c->port, &sa);
    int r = nb_stream_tcp_new(ps->loop, &c->tcp);
    if (r == 0) {
        c->nstreams = 2;
        nb_stream_set_cbs(c->tcp, NULL, NULL, hc_stream_closed, c);
        c->req.data = c;
        r = uv_tcp_connect(&c->req, (uv_tcp_t *)nb_stream_uv_handle(c->tcp), (struct sockaddr *)&sa,
                           hc_connected);
        c->connecting = r == 0;
    }
    if (r < 0)
        hc_close(c, NB_MUX_E_INTERNAL, "cannot connect to the host");
}

static void on_verdict(void *ud, const nb_gate_verdict_t *v)
{
    hconn_t *c = ud;
    c->wait = NULL;
    decide(c, v);
}

/* A RST from the guest while the prompt waits. */
static void hc_early_read(nb_stream_t *s, ssize_t n, uint8_t *p, void *ud)
{
    (void)s;
    free(p);
    if (n < 0 && n != UV_EOF)
        hc_close(ud, 0, NULL);
}

void nb_portsvc_host_open(nb_portsvc_t *ps, const char *vm, nb_muxsess_stream_t *st, uint16_t port)
{
    nb_daemon_t *d = ps->d;
    char msg[160];
    /* The daemon's own ports (API, proxies, mappings, gateways) are never
     * a host service, whatever the rules say. */
    if ((d->api && port == nb_api_port(d->api)) || nb_sockdiag_self_listens(port)) {
        audit(ps, vm, port, 0, "daemon-port");
        snprintf(msg, sizeof msg, "host port %u belongs to nilboxd and is never reachable", port);
        nb_log(NB_LOG_INFO, "vm %s: %s", vm, msg);
        nb_muxsess_stream_reject(st, NB_MUX_E_REFUSED, msg);
        return;
    }
    unsigned mine = 0;
    for (hconn_t *h = ps->hconns; h; h = h->next)
        mine += strcmp(h->vm, vm) == 0;
    if (!d->gate || ps->freed || ps->nhconns >= NB_PORTS_MAX_GRANTS ||
        mine >= NB_PORTS_MAX_GRANTS_VM) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BUSY, "no host-service connection possible now");
        return;
    }
    nb_dest_t dest;
    if (nb_dest_set(&dest, vm, NB_HOST_SERVICE_NAME, strlen(NB_HOST_SERVICE_NAME), port) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, "bad destination");
        return;
    }
    hconn_t *c = calloc(1, sizeof *c);
    if (!c || nb_stream_mux_new(ps->loop, st, NB_MUX_CHAN_STDIO, NULL, &c->mux) < 0) {
        free(c);
        nb_muxsess_stream_reject(st, NB_MUX_E_INTERNAL, "out of memory");
        return;
    }
    c->ps = ps;
    c->port = port;
    c->nstreams = 1;
    snprintf(c->vm, sizeof c->vm, "%s", vm);
    c->next = ps->hconns;
    if (ps->hconns)
        ps->hconns->prev = c;
    ps->hconns = c;
    ps->nhconns++;
    ps->live++;
    nb_stream_set_cbs(c->mux, hc_early_read, NULL, hc_stream_closed, c);
    /* Accepted at once, like the egress engine: a prompt may take a while
     * and the guest's connect() already returned. */
    if (nb_muxsess_stream_accept(st) < 0) {
        hc_close(c, 0, NULL);
        return;
    }
    nb_gate_verdict_t v;
    if (nb_gate_check(d->gate, &dest, &v, on_verdict, c, &c->wait) == 1)
        decide(c, &v);
}

/* Here rather than in portsvc.c so that calls go one way only (the
 * mappings call into this file, never back). */
void nb_ports_maybe_free(nb_portsvc_t *ps)
{
    if (ps->freed && ps->live == 0)
        free(ps);
}

void nb_ports_host_close_all(nb_portsvc_t *ps)
{
    ps->live++;
    for (hconn_t *c = ps->hconns, *next; c; c = next) {
        next = c->next;
        hc_close(c, NB_MUX_E_FAILED, "nilboxd is stopping");
    }
    ps->live--;
}
