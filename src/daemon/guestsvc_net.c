/* Guest networking: the egress streams (handed to the proxy engine) and
 * the DNS streams (fake IPs). */
#include "daemon/guestsvc_int.h"
#include "daemon/portsvc.h"

/* ------------------------------------------------------------ egress */

static nb_proxy_listener_t *vm_listener(nb_guestsvc_t *g, gvm_t *v, nb_proxy_t *px, char *err,
                                        size_t errsz)
{
    nb_proxy_listener_t *l = v->listener ? nb_proxy_listener_find(px, v->listener) : NULL;
    if (l)
        return l;
    nb_proxy_listen_opts_t o = {
        .vm = v->name,
        .upstream_ca_file = g->test_ca,
        .resolve = g->resolve,
        .nresolve = g->nresolve,
        .ip_no_prompt = 1,
    };
    int r = nb_proxy_attach(px, &o, &l);
    if (r < 0) {
        snprintf(err, errsz, "cannot attach the proxy: %s", nb_strerror(r));
        return NULL;
    }
    v->listener = nb_proxy_listener_id(l);
    return l;
}

static void refused(nb_guestsvc_t *g, const char *vm, const char *msg)
{
    char esc[300];
    nb_log(NB_LOG_INFO, "vm %s: egress refused: %s", vm,
           nb_log_escape(esc, sizeof esc, msg, strlen(msg)));
}

static void reject(nb_guestsvc_t *g, nb_muxsess_stream_t *st, uint32_t code, const char *vm,
                   const char *msg)
{
    refused(g, vm, msg);
    nb_muxsess_stream_reject(st, code, msg);
}

static const nb_muxsess_stream_cbs_t drop_cbs = {.auto_consume = 1};

/* The egress engine is not available (the secret store is locked, so there
 * is no CA): an explicit-proxy client gets a 503 it can show, whatever it
 * sent (a CONNECT or a plain request), and the stream ends. */
static void unavailable(nb_guestsvc_t *g, nb_muxsess_stream_t *st, const char *vm, const char *why)
{
    char body[400], resp[700];
    json_t *j = json_pack("{s:s, s:s, s:s}", "error", "unavailable", "reason", why, "hint",
                          "ask the user to unlock the secret store ('nilbox secret unlock')");
    char *js = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    snprintf(body, sizeof body, "%s\n", js ? js : "{\"error\":\"unavailable\"}");
    free(js);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nX-Nilbox-Reason: egress-unavailable\r\n"
                     "Connection: close\r\n\r\n%s",
                     strlen(body), body);
    char esc[300];
    nb_log(NB_LOG_INFO, "vm %s: egress unavailable: %s", vm,
           nb_log_escape(esc, sizeof esc, why, strlen(why)));
    nb_muxsess_stream_set_cbs(st, &drop_cbs, NULL);
    if (nb_muxsess_stream_accept(st) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_REFUSED, why);
        return;
    }
    if (n > 0 && (size_t)n < sizeof resp)
        nb_muxsess_stream_write(st, NB_MUX_CHAN_STDIO, resp, (size_t)n);
    nb_muxsess_stream_fin(st);
}

static int egress_open(nb_guestsvc_t *g, const char *vm, nb_muxsess_stream_t *st, nb_iov_t args)
{
    char err[256];
    json_t *a = NULL;
    nb_proxy_dest_t dest, *destp = NULL;
    char host[NB_HOSTNAME_BUFSZ];
    gvm_t *v = nb_gsv_vm_get(g, vm);
    if (!v) {
        reject(g, st, NB_MUX_E_INTERNAL, vm, "no state for this VM");
        return 0;
    }
    if (args.len > ARGS_MAX || nb_json_parse(args, &a, NULL, 0) < 0 || !json_is_object(a)) {
        json_decref(a);
        reject(g, st, NB_MUX_E_BAD_ARGS, vm, "egress arguments must be a small JSON object");
        return 0;
    }
    const char *mode = nb_json_str(a, "mode");
    if (mode && strcmp(mode, "transparent") == 0) {
        const char *ip = nb_json_str(a, "ip");
        json_int_t port = nb_json_int(a, "port", 0);
        struct in_addr in;
        if (!ip || inet_pton(AF_INET, ip, &in) != 1 || port < 1 || port > 65535) {
            json_decref(a);
            reject(g, st, NB_MUX_E_BAD_ARGS, vm,
                   "transparent egress needs an IPv4 'ip' and 'port'");
            return 0;
        }
        uint32_t ip4 = ntohl(in.s_addr);
        /* A fake address stands for its name; any other address is an IP
         * destination, judged as such (A12). */
        if (!nb_fakedns_lookup(v->dns, ip4, (uint64_t)uv_now(g->loop), host, sizeof host))
            snprintf(host, sizeof host, "%s", ip);
        else if (strcmp(host, NB_HOST_SERVICE_NAME) == 0 && g->d->ports) {
            /* A host-service grant, not the egress engine (A14). */
            json_decref(a);
            nb_portsvc_host_open(g->d->ports, vm, st, (uint16_t)port);
            return 0;
        }
        dest.host = host;
        dest.port = (uint16_t)port;
        destp = &dest;
    } else if (!mode || strcmp(mode, "proxy") != 0) {
        json_decref(a);
        reject(g, st, NB_MUX_E_BAD_ARGS, vm, "egress mode must be 'proxy' or 'transparent'");
        return 0;
    }
    json_decref(a);

    nb_proxy_t *px = g->engine ? g->engine(g->d, err, sizeof err) : NULL;
    if (!px) {
        if (!g->engine)
            snprintf(err, sizeof err, "no egress engine");
        if (!destp) {
            unavailable(g, st, vm, err); /* a proxy client can read an HTTP answer */
            return 0;
        }
        reject(g, st, NB_MUX_E_REFUSED, vm, err);
        return 0;
    }
    nb_proxy_listener_t *l = vm_listener(g, v, px, err, sizeof err);
    if (!l) {
        reject(g, st, NB_MUX_E_INTERNAL, vm, err);
        return 0;
    }
    /* The proxy engine adopts the stream itself; the guest gets OPEN_OK
     * only once it did (anything the proxy writes first waits for it). */
    nb_stream_t *s;
    if (nb_stream_mux_new(g->loop, st, NB_MUX_CHAN_STDIO, NULL, &s) < 0) {
        reject(g, st, NB_MUX_E_INTERNAL, vm, "out of memory");
        return 0;
    }
    int r = nb_proxy_adopt_stream(l, s, destp);
    if (r < 0) {
        /* -EBUSY: this VM's connection budget is used up (A28; recorded) */
        const char *why = r == NB_EINVAL ? "unusable destination"
                          : r == -EBUSY  ? "too many open connections from this VM"
                                         : "the proxy refused the connection";
        refused(g, vm, why);
        nb_stream_mux_reset(s,
                            r == NB_EINVAL ? NB_MUX_E_BAD_ARGS
                            : r == -EBUSY  ? NB_MUX_E_BUSY
                                           : NB_MUX_E_INTERNAL,
                            why);
        return 0;
    }
    if (nb_muxsess_stream_accept(st) < 0)
        return 0; /* the session is going down: the stream's close ends the connection */
    return 0;
}

/* ------------------------------------------------------------ dns */

typedef struct {
    nb_guestsvc_t *g;
    char vm[NB_RULES_VM_MAX];
    nb_buf_t q;
} dnsq_t;

typedef struct {
    nb_guestsvc_t *g;
    const char *vm;
    int why; /* nb_gate_why_t of a blocked name */
} dnspol_t;

/* Names a deny rule covers on every port (or the blocklist, when the gate
 * has one) get NXDOMAIN; everything else is judged per connection. */
static int dns_policy(void *ud, const char *name)
{
    dnspol_t *p = ud;
    if (!p->g->d->gate)
        return 0;
    nb_dest_t d;
    p->why = NB_GATE_WHY_ERROR;
    if (nb_dest_set(&d, p->vm, name, strlen(name), 0) < 0)
        return 1;
    /* The rules and the gate's blocklist hook (deny -> blocklist -> allow). */
    nb_gate_verdict_t v;
    if (!nb_gate_rules_verdict(p->g->d->gate, &d, &v) || v.allowed)
        return 0;
    p->why = v.why;
    return 1;
}

static void dnsq_free(dnsq_t *q)
{
    nb_guestsvc_t *g = q->g;
    nb_buf_free(&q->q);
    free(q);
    nb_gsv_unref(g);
}

static void dns_audit_blocked(nb_guestsvc_t *g, gvm_t *v, const char *name, const char *reason)
{
    int64_t minute = nb_events_now_ms() / 60000;
    if (v->audit_min != minute) {
        v->audit_min = minute;
        v->audit_rows = 0;
    }
    if (!g->d->audit || v->audit_rows >= DNS_AUDIT_PER_MIN)
        return;
    v->audit_rows++;
    nb_audit_append(g->d->audit, "dns.blocked", v->name, name, 0,
                    json_pack("{s:s, s:s}", "answer", "NXDOMAIN", "reason", reason));
}

static void dns_fin(nb_muxsess_stream_t *st, void *ud)
{
    dnsq_t *q = ud;
    nb_guestsvc_t *g = q->g;
    gvm_t *v = nb_gsv_vm_get(g, q->vm);
    uint8_t out[NB_DNS_REPLY_MAX];
    size_t n = 0;
    nb_fakedns_result_t res;
    if (v) {
        dnspol_t pol = {g, q->vm, 0};
        n = nb_fakedns_answer(v->dns, nb_buf_iov(&q->q), (uint64_t)uv_now(g->loop), dns_policy,
                              &pol, out, sizeof out, &res);
        if (res.blocked)
            dns_audit_blocked(g, v, res.qname, nb_gate_why_name(pol.why));
        char esc[300];
        nb_log(NB_LOG_DEBUG, "vm %s: dns %s type %u -> rcode %d", q->vm,
               nb_log_escape(esc, sizeof esc, res.qname, strlen(res.qname)), res.qtype, res.rcode);
    }
    if (n > 0)
        nb_muxsess_stream_write(st, NB_MUX_CHAN_STDIO, out, n);
    nb_muxsess_stream_fin(st);
}

static void dns_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    dnsq_t *q = ud;
    if (chan != NB_MUX_CHAN_STDIO || nb_buf_append(&q->q, d.p, d.len) < 0) {
        nb_muxsess_stream_reset(st, NB_MUX_E_BAD_ARGS, "one DNS query of at most 4096 bytes");
        dnsq_free(q);
    }
}

static void dns_closed(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    dnsq_free(ud);
}

static const nb_muxsess_stream_cbs_t dns_cbs = {
    .on_data = dns_data, .on_fin = dns_fin, .on_close = dns_closed, .auto_consume = 1};

static int dns_open(nb_guestsvc_t *g, const char *vm, nb_muxsess_stream_t *st)
{
    dnsq_t *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->g = g;
    snprintf(q->vm, sizeof q->vm, "%s", vm);
    nb_buf_init(&q->q, NB_DNS_QUERY_MAX);
    g->live++;
    nb_muxsess_stream_set_cbs(st, &dns_cbs, q);
    if (nb_muxsess_stream_accept(st) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_INTERNAL, "accept failed");
        dnsq_free(q);
    }
    return 0;
}

int nb_guestsvc_on_open(nb_guestsvc_t *g, const char *vm, nb_muxsess_stream_t *st,
                        const char *service, nb_iov_t args)
{
    if (!g || g->freed)
        return NB_EUNSUPPORTED;
    if (strcmp(service, "egress") == 0)
        return egress_open(g, vm, st, args);
    if (strcmp(service, "dns") == 0)
        return dns_open(g, vm, st);
    return NB_EUNSUPPORTED;
}
