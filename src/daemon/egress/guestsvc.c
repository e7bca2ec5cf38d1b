/* Guest-opened channel services (egress, dns) and VM provisioning; see
 * guestsvc.h and docs/internals/guestsvc.md. */
#include "daemon/egress/guestsvc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "daemon/audit.h"
#include "daemon/egress/fakedns.h"
#include "daemon/egress/gate.h"
#include "daemon/egress/proxy.h"
#include "daemon/events.h"
#include "daemon/secretsvc.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/stream.h"

/* Where things live in the guest (images/tiny, images/debian and the
 * agent's ctl allowlist agree on these). */
#define GUEST_PROXY_URL "http://127.0.0.1:8088"
#define GUEST_NO_PROXY "localhost,127.0.0.1,::1"
#define GUEST_CA_FILE "/etc/nilbox/ca.pem"
#define GUEST_CA_LOCAL "/usr/local/share/ca-certificates/nilbox/nilbox-ca.crt"
#define GUEST_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define GUEST_ENV_FILE "/etc/nilbox/env"
#define GUEST_PROFILE "/etc/profile.d/nilbox-env.sh"
#define GUEST_ENVIRONMENT "/etc/environment"

#define PROV_OP_TIMEOUT_MS 60000 /* one write or command in a (slow, emulated) guest */
#define PROV_ANSWER_MAX 4096
#define ARGS_MAX 1024        /* egress/dns OPEN arguments are tiny */
#define DNS_AUDIT_PER_MIN 30 /* dns.blocked rows per VM and minute; then only counted */

typedef struct gvm gvm_t;
typedef struct prov prov_t;

struct nb_guestsvc {
    nb_daemon_t *d;
    uv_loop_t *loop;
    nb_guestsvc_engine_fn engine;
    gvm_t *vms;
    uint64_t watch;
    uint64_t evsub;
    char *test_ca;
    nb_proxy_resolve_t resolve[NB_PROXY_MAX_RESOLVE];
    size_t nresolve;
    unsigned live; /* queries and provisioning jobs not yet freed */
    int freed;     /* nb_guestsvc_free ran: free once live is 0 */
    nb_guestsvc_stats_t st;
};

/* Per-VM state: the fake-IP pool, the proxy channel listener, the
 * provisioning state. Dropped when the VM stops. */
struct gvm {
    gvm_t *next;
    char name[NB_RULES_VM_MAX];
    nb_fakedns_t *dns;
    uint64_t listener; /* nb_proxy_listener_id, 0: none yet */
    prov_t *prov;      /* running job */
    int prov_again;
    int prov_forced;       /* the next job rewrites even unchanged content */
    uint8_t done_hash[16]; /* content of the last complete provisioning */
    int have_done;
    int64_t audit_min; /* minute of the dns.blocked rows counted in audit_rows */
    unsigned audit_rows;
};

static void g_unref(nb_guestsvc_t *g);
static void prov_orphan(prov_t *p);

/* ------------------------------------------------------------ per VM */

static gvm_t *vm_find(nb_guestsvc_t *g, const char *name)
{
    for (gvm_t *v = g->vms; v; v = v->next)
        if (strcmp(v->name, name) == 0)
            return v;
    return NULL;
}

static gvm_t *vm_get(nb_guestsvc_t *g, const char *name)
{
    gvm_t *v = vm_find(g, name);
    if (v)
        return v;
    if (strlen(name) >= sizeof v->name || !nb_rules_vm_valid(name))
        return NULL;
    if (!(v = calloc(1, sizeof *v)))
        return NULL;
    snprintf(v->name, sizeof v->name, "%s", name);
    if (nb_fakedns_new(NULL, &v->dns) < 0) {
        free(v);
        return NULL;
    }
    v->next = g->vms;
    g->vms = v;
    return v;
}

static void vm_drop(nb_guestsvc_t *g, gvm_t *v)
{
    for (gvm_t **pp = &g->vms; *pp; pp = &(*pp)->next) {
        if (*pp == v) {
            *pp = v->next;
            break;
        }
    }
    if (v->listener) {
        char err[200];
        nb_proxy_t *px = g->engine && !g->freed ? g->engine(g->d, err, sizeof err) : NULL;
        nb_proxy_listener_t *l = px ? nb_proxy_listener_find(px, v->listener) : NULL;
        if (l)
            nb_proxy_listener_close(l);
    }
    nb_fakedns_free(v->dns);
    if (v->prov)
        prov_orphan(v->prov);
    free(v);
}

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
    g->st.egress_refused++;
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
    g->st.egress_refused++;
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
    gvm_t *v = vm_get(g, vm);
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
    g->st.egress_streams++;
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
    g_unref(g);
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
    gvm_t *v = vm_get(g, q->vm);
    uint8_t out[NB_DNS_REPLY_MAX];
    size_t n = 0;
    nb_fakedns_result_t res;
    if (v) {
        dnspol_t pol = {g, q->vm, 0};
        n = nb_fakedns_answer(v->dns, nb_buf_iov(&q->q), (uint64_t)uv_now(g->loop), dns_policy,
                              &pol, out, sizeof out, &res);
        g->st.dns_queries++;
        if (res.rcode == NB_DNS_NXDOMAIN)
            g->st.dns_nxdomain++;
        if (res.blocked) {
            g->st.dns_blocked++;
            dns_audit_blocked(g, v, res.qname, nb_gate_why_name(pol.why));
        }
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

/* ------------------------------------------------------------ environment */

/* Names that must never be overwritten by a placeholder. */
static int env_name_reserved(const char *n)
{
    static const char *const names[] = {
        "PATH",
        "HOME",
        "SHELL",
        "USER",
        "LOGNAME",
        "TERM",
        "PWD",
        "IFS",
        "ENV",
        "BASH_ENV",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(n, names[i]) == 0)
            return 1;
    return strncmp(n, "LD_", 3) == 0;
}

static int env_name_ok(const char *n)
{
    if (!((*n >= 'A' && *n <= 'Z') || (*n >= 'a' && *n <= 'z') || *n == '_'))
        return 0;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return 0;
    return !env_name_reserved(n);
}

/* 1 when secret `name` is visible to `vm`: it has no binding at all, or a
 * binding for every VM or for this one. */
static int secret_visible(const nb_secretsvc_snap_t *s, const char *name, const char *vm)
{
    int bound = 0;
    for (size_t i = 0; i < s->nbindings; i++) {
        const nb_binding_t *b = &s->bindings[i];
        if (strcmp(b->secret, name) != 0)
            continue;
        bound = 1;
        if (!b->vm[0] || strcmp(b->vm, vm) == 0)
            return 1;
    }
    return !bound;
}

json_t *nb_guestsvc_env_json(nb_guestsvc_t *g, const char *vm)
{
    json_t *env = json_object();
    if (!env)
        return NULL;
    int have_ca = g->d->secrets && nb_secretsvc_ca(g->d->secrets);
    json_object_set_new(env, "HTTP_PROXY", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "HTTPS_PROXY", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "http_proxy", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "https_proxy", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "NO_PROXY", json_string(GUEST_NO_PROXY));
    json_object_set_new(env, "no_proxy", json_string(GUEST_NO_PROXY));
    static const char *const bundle_vars[] = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                                              "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE"};
    for (size_t i = 0; i < sizeof bundle_vars / sizeof *bundle_vars; i++)
        json_object_set_new(env, bundle_vars[i], json_string(GUEST_BUNDLE));
    /* Node adds this file to its own roots; naming a missing file makes it
     * warn on every start, so only once the CA is there. */
    if (have_ca)
        json_object_set_new(env, "NODE_EXTRA_CA_CERTS", json_string(GUEST_CA_FILE));
    const nb_secretsvc_snap_t *s = g->d->secrets ? nb_secretsvc_snapshot(g->d->secrets) : NULL;
    for (size_t i = 0; s && i < s->nsealed; i++) {
        const char *n = s->names[i];
        if (env_name_ok(n) && secret_visible(s, n, vm))
            json_object_set_new(env, n, json_string(n));
    }
    return env;
}

/* ------------------------------------------------------------ provisioning */

enum { OP_WRITE = 1, OP_RUN, OP_HOSTNAME };

typedef struct {
    int kind;
    const char *path;
    int mode;
    char *content;
    size_t len;
    const char *const *argv;
} op_t;

#define PROV_MAX_OPS 8

struct prov {
    nb_guestsvc_t *g;
    gvm_t *owner; /* NULL once the VM's state is gone */
    char vm[NB_RULES_VM_MAX];
    op_t ops[PROV_MAX_OPS];
    size_t nops, cur;
    nb_muxsess_stream_t *st;
    nb_buf_t answer;
    int exit_code;
    int errors;
    uint8_t hash[16];
    uv_timer_t timer; /* next step, and the deadline of the op in flight */
    int finished;
};

static void prov_step(prov_t *p);
static void prov_start(nb_guestsvc_t *g, gvm_t *v);

/* The VM's state is going away: the job ends at its next step. */
static void prov_orphan(prov_t *p)
{
    p->owner = NULL;
}

static void prov_freed(uv_handle_t *h)
{
    prov_t *p = h->data;
    nb_guestsvc_t *g = p->g;
    for (size_t i = 0; i < p->nops; i++)
        free(p->ops[i].content);
    nb_buf_free(&p->answer);
    free(p);
    g_unref(g);
}

static void prov_finish(prov_t *p, const char *why)
{
    if (p->finished)
        return;
    p->finished = 1;
    nb_guestsvc_t *g = p->g;
    gvm_t *v = p->owner;
    if (p->st) {
        nb_muxsess_stream_reset(p->st, NB_MUX_E_CANCEL, "cancelled");
        p->st = NULL;
    }
    if (why || p->errors) {
        g->st.provision_errors++;
        nb_log(NB_LOG_WARN, "vm %s: provisioning %s", p->vm,
               why ? why : "finished with errors (see above)");
    } else {
        g->st.provisions++;
        nb_log(NB_LOG_INFO, "vm %s: guest environment and CA provisioned", p->vm);
    }
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, prov_freed);
    if (v) {
        v->prov = NULL;
        if (!why && !p->errors) {
            memcpy(v->done_hash, p->hash, sizeof v->done_hash);
            v->have_done = 1;
        }
        if (v->prov_again && !g->freed) {
            v->prov_again = 0;
            prov_start(g, v);
        }
    }
}

static void prov_timer(uv_timer_t *t)
{
    prov_t *p = t->data;
    if (p->st) {
        prov_finish(p, "timed out waiting for the agent");
        return;
    }
    prov_step(p);
}

static void prov_next(prov_t *p)
{
    /* From the loop, not from inside the session's callback. */
    p->cur++;
    uv_timer_start(&p->timer, prov_timer, 0, 0);
}

static void prov_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    prov_t *p = ud;
    if (p->ops[p->cur].kind == OP_RUN) {
        json_t *m = NULL;
        if (chan == NB_MUX_CHAN_CTL && nb_json_parse(d, &m, NULL, 0) == 0) {
            json_t *e = json_object_get(m, "exit");
            p->exit_code = json_is_integer(e) ? (int)json_integer_value(e) : 128;
        }
        json_decref(m);
        return;
    }
    if (chan == NB_MUX_CHAN_STDIO)
        nb_buf_append(&p->answer, d.p, d.len); /* a longer answer is not ours: checked below */
}

static void prov_closed(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    prov_t *p = ud;
    op_t *op = &p->ops[p->cur];
    p->st = NULL;
    uv_timer_stop(&p->timer);
    if (err) {
        char why[400];
        snprintf(why, sizeof why, "stopped at %s: %s", op->kind != OP_RUN ? op->path : op->argv[0],
                 msg);
        prov_finish(p, why);
        return;
    }
    if (op->kind != OP_RUN) {
        json_t *a = NULL;
        if (nb_json_parse(nb_buf_iov(&p->answer), &a, NULL, 0) < 0 ||
            !json_is_true(json_object_get(a, "ok"))) {
            const char *e = nb_json_str(a, "error");
            char esc[300];
            nb_log(NB_LOG_WARN, "vm %s: writing %s failed: %s", p->vm, op->path,
                   e ? nb_log_escape(esc, sizeof esc, e, strlen(e)) : "no answer");
            p->errors++;
        }
        json_decref(a);
    } else if (p->exit_code != 0) {
        nb_log(NB_LOG_WARN, "vm %s: %s exited with %d", p->vm, op->argv[0], p->exit_code);
        p->errors++;
    }
    prov_next(p);
}

static const nb_muxsess_stream_cbs_t prov_cbs = {
    .on_data = prov_data, .on_close = prov_closed, .auto_consume = 1};

static nb_muxsess_t *session_of(nb_guestsvc_t *g, const char *vm)
{
    nb_vm_t *v = g->d->vmm ? nb_vmm_find(g->d->vmm, vm) : NULL;
    return v ? nb_vm_session(v) : NULL;
}

static void prov_step(prov_t *p)
{
    if (p->finished)
        return;
    if (p->cur >= p->nops) {
        prov_finish(p, NULL);
        return;
    }
    if (p->g->freed || !p->owner) {
        prov_finish(p, "cancelled: the VM stopped");
        return;
    }
    nb_muxsess_t *s = session_of(p->g, p->vm);
    if (!s) {
        prov_finish(p, "stopped: the agent is not connected");
        return;
    }
    op_t *op = &p->ops[p->cur];
    json_t *args;
    if (op->kind == OP_HOSTNAME) {
        args = json_pack("{s:s, s:s}", "call", "hostname", "set", p->vm);
    } else if (op->kind == OP_WRITE) {
        args = json_pack("{s:s, s:s, s:i, s:b}", "call", "write_file", "path", op->path, "mode",
                         op->mode, "mkdirs", 1);
    } else {
        json_t *argv = json_array();
        for (size_t i = 0; argv && op->argv[i]; i++)
            json_array_append_new(argv, json_string(op->argv[i]));
        args = json_pack("{s:o?, s:b}", "argv", argv, "stdin", 0);
    }
    char *js = args ? json_dumps(args, JSON_COMPACT) : NULL;
    json_decref(args);
    if (!js) {
        prov_finish(p, "out of memory");
        return;
    }
    nb_buf_reset(&p->answer);
    p->exit_code = 0;
    int r = nb_muxsess_open(s, op->kind != OP_RUN ? "ctl" : "exec", nb_iov(js, strlen(js)),
                            &prov_cbs, p, &p->st);
    free(js);
    if (r == 0 && op->kind == OP_WRITE && op->len)
        r = nb_muxsess_stream_write(p->st, NB_MUX_CHAN_STDIO, op->content, op->len);
    if (r == 0)
        r = nb_muxsess_stream_fin(p->st);
    if (r < 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot open a stream: %s", nb_strerror(r));
        prov_finish(p, why);
        return;
    }
    uv_timer_start(&p->timer, prov_timer, PROV_OP_TIMEOUT_MS, 0);
}

static int add_write(prov_t *p, const char *path, int mode, nb_buf_t *content)
{
    if (p->nops >= PROV_MAX_OPS)
        return NB_ETOOBIG;
    op_t *op = &p->ops[p->nops++];
    op->kind = OP_WRITE;
    op->path = path;
    op->mode = mode;
    op->len = content->len;
    op->content = (char *)content->p; /* the op owns it now */
    nb_buf_init(content, content->max);
    return 0;
}

/* Renders the environment three ways. Values are URLs, paths and secret
 * names ([A-Za-z0-9_]): none needs escaping, and none is a secret. */
static int render_env(json_t *env, nb_buf_t *plain, nb_buf_t *sh, nb_buf_t *etc)
{
    const char *k;
    json_t *val;
    int r = 0;
    r |= nb_buf_append_str(sh, "# Written by nilbox (placeholders and the egress proxy). The real\n"
                               "# secrets never enter this VM: the host swaps them in.\n");
    json_object_foreach (env, k, val) {
        const char *v = json_string_value(val);
        r |= nb_buf_printf(plain, "%s=%s\n", k, v);
        r |= nb_buf_printf(sh, "export %s='%s'\n", k, v);
        r |= nb_buf_printf(etc, "%s=\"%s\"\n", k, v);
    }
    return r ? NB_ETOOBIG : 0;
}

static void prov_start(nb_guestsvc_t *g, gvm_t *v)
{
    /* Adds the CA to the system bundle at once. Debian's
     * update-ca-certificates would too (it takes the file under
     * /usr/local/share/ca-certificates on its next run), but it takes most
     * of a minute in an emulated guest. The tiny image's bundle is a
     * symlink to the CA file: nothing to do there. */
    static const char *const trust_argv[] = {
        "/bin/sh", "-c",
        "ca=" GUEST_CA_FILE "; b=" GUEST_BUNDLE "; [ -s \"$ca\" ] || exit 0; "
        "if [ -f \"$b\" ] && [ ! -L \"$b\" ]; then "
        "l=$(sed -n 2p \"$ca\"); grep -qF -- \"$l\" \"$b\" || cat \"$ca\" >>\"$b\"; "
        "if command -v openssl >/dev/null 2>&1; then "
        "h=$(openssl x509 -hash -noout -in \"$ca\" 2>/dev/null) && "
        "ln -sf \"$ca\" \"/etc/ssl/certs/$h.0\"; fi; fi; exit 0",
        NULL};
    if (v->prov) {
        v->prov_again = 1;
        return;
    }
    int forced = v->prov_forced;
    v->prov_forced = 0;
    prov_t *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->g = g;
    p->owner = v;
    snprintf(p->vm, sizeof p->vm, "%s", v->name);
    nb_buf_init(&p->answer, PROV_ANSWER_MAX);

    nb_buf_t plain, sh, etc, ca;
    nb_buf_init(&plain, 256 * 1024);
    nb_buf_init(&sh, 256 * 1024);
    nb_buf_init(&etc, 256 * 1024);
    nb_buf_init(&ca, 64 * 1024);
    char *pem = NULL;
    size_t pemlen = 0;
    nb_ca_t *cao = g->d->secrets ? nb_secretsvc_ca(g->d->secrets) : NULL;
    if (cao && nb_ca_cert_pem(cao, &pem, &pemlen) == 0)
        nb_buf_append(&ca, pem, pemlen);
    free(pem);
    json_t *env = nb_guestsvc_env_json(g, v->name);
    int r = env ? render_env(env, &plain, &sh, &etc) : -ENOMEM;
    json_decref(env);

    int have_ca = ca.len > 0;
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, sizeof p->hash);
    crypto_generichash_update(&hs, ca.p ? ca.p : (const uint8_t *)"", ca.len);
    crypto_generichash_update(&hs, plain.p ? plain.p : (const uint8_t *)"", plain.len);
    crypto_generichash_final(&hs, p->hash, sizeof p->hash);

    /* The guest's hostname is the VM's name (the images say "nilbox"). */
    p->ops[p->nops].kind = OP_HOSTNAME;
    p->ops[p->nops++].path = "hostname";
    if (r == 0 && have_ca) {
        nb_buf_t ca2;
        nb_buf_init(&ca2, ca.max);
        r = nb_buf_append(&ca2, ca.p, ca.len);
        if (r == 0)
            r = add_write(p, GUEST_CA_FILE, 0644, &ca);
        if (r == 0)
            r = add_write(p, GUEST_CA_LOCAL, 0644, &ca2);
        nb_buf_free(&ca2);
    }
    if (r == 0)
        r = add_write(p, GUEST_ENV_FILE, 0644, &plain);
    if (r == 0)
        r = add_write(p, GUEST_PROFILE, 0644, &sh);
    if (r == 0)
        r = add_write(p, GUEST_ENVIRONMENT, 0644, &etc);
    /* Last, so that the bundle is rebuilt from the files just written. */
    if (r == 0 && have_ca && p->nops < PROV_MAX_OPS) {
        op_t *op = &p->ops[p->nops++];
        op->kind = OP_RUN;
        op->argv = trust_argv;
    }
    nb_buf_free(&plain);
    nb_buf_free(&sh);
    nb_buf_free(&etc);
    nb_buf_free(&ca);
    if (r < 0 || (!forced && v->have_done && memcmp(v->done_hash, p->hash, sizeof p->hash) == 0)) {
        if (r < 0)
            nb_log(NB_LOG_WARN, "vm %s: cannot build the guest environment: %s", v->name,
                   nb_strerror(r));
        for (size_t i = 0; i < p->nops; i++)
            free(p->ops[i].content);
        nb_buf_free(&p->answer);
        free(p);
        return;
    }
    uv_timer_init(g->loop, &p->timer);
    p->timer.data = p;
    g->live++;
    v->prov = p;
    uv_timer_start(&p->timer, prov_timer, 0, 0);
}

void nb_guestsvc_provision(nb_guestsvc_t *g, const char *vm)
{
    if (!g || g->freed)
        return;
    gvm_t *v = vm_get(g, vm);
    if (!v)
        return;
    v->prov_forced = 1; /* a (re)booted guest: write everything again */
    prov_start(g, v);
}

/* ------------------------------------------------------------ watchers */

static void on_secrets_changed(void *ud, const nb_secretsvc_snap_t *snap)
{
    nb_guestsvc_t *g = ud;
    /* Every VM whose agent is up gets the new placeholders (and the CA,
     * once the store opened); unchanged content is not rewritten. */
    for (gvm_t *v = g->vms; v; v = v->next)
        if (session_of(g, v->name))
            prov_start(g, v);
}

static void on_event(const json_t *ev, void *ud)
{
    nb_guestsvc_t *g = ud;
    const char *type = nb_json_str(ev, "type");
    const char *vm = nb_json_str(ev, "vm");
    if (!type || !vm)
        return;
    if (strcmp(type, "vm.stopped") == 0 || strcmp(type, "vm.crashed") == 0 ||
        strcmp(type, "vm.removed") == 0) {
        /* A new boot starts with an empty guest resolver cache. */
        gvm_t *v = vm_find(g, vm);
        if (v)
            vm_drop(g, v);
    }
}

static int hook_open(void *ud, const char *vm, nb_muxsess_stream_t *st, const char *service,
                     nb_iov_t args)
{
    return nb_guestsvc_on_open(ud, vm, st, service, args);
}

static void hook_up(void *ud, const char *vm)
{
    nb_guestsvc_provision(ud, vm);
}

static json_t *hook_env(void *ud, const char *vm)
{
    return nb_guestsvc_env_json(ud, vm);
}

/* ------------------------------------------------------------ lifecycle */

static int test_settings(nb_guestsvc_t *g, char *err, size_t errsz)
{
    const char *tm = getenv("NILBOX_TEST_MODE");
    const char *ca = getenv("NILBOX_TEST_UPSTREAM_CA");
    const char *rv = getenv("NILBOX_TEST_RESOLVE");
    if (!tm || strcmp(tm, "1") != 0) {
        if ((ca && *ca) || (rv && *rv))
            nb_log(NB_LOG_WARN, "NILBOX_TEST_UPSTREAM_CA / NILBOX_TEST_RESOLVE ignored: they "
                                "need NILBOX_TEST_MODE=1");
        return 0;
    }
    if (ca && *ca) {
        if (access(ca, R_OK) != 0) {
            snprintf(err, errsz, "NILBOX_TEST_UPSTREAM_CA: cannot read '%.200s'", ca);
            return NB_EINVAL;
        }
        if (!(g->test_ca = strdup(ca)))
            return -ENOMEM;
    }
    if (rv && *rv) {
        const char *s = rv;
        while (*s) {
            const char *c = strchr(s, ',');
            size_t n = c ? (size_t)(c - s) : strlen(s);
            char one[NB_HOSTNAME_BUFSZ + 64];
            if (n >= sizeof one || g->nresolve >= NB_PROXY_MAX_RESOLVE) {
                snprintf(err, errsz, "NILBOX_TEST_RESOLVE: too many or too long entries");
                return NB_EINVAL;
            }
            memcpy(one, s, n);
            one[n] = '\0';
            if (n && nb_proxy_resolve_parse(one, &g->resolve[g->nresolve++]) < 0) {
                snprintf(err, errsz, "NILBOX_TEST_RESOLVE: bad entry '%.100s'", one);
                return NB_EINVAL;
            }
            if (!n)
                g->nresolve--;
            s += n;
            if (*s == ',')
                s++;
        }
    }
    if (g->test_ca || g->nresolve)
        nb_log(NB_LOG_WARN,
               "guest egress in TEST MODE: extra upstream CA %s, %zu resolve "
               "overrides",
               g->test_ca ? g->test_ca : "(none)", g->nresolve);
    return 0;
}

int nb_guestsvc_new(nb_daemon_t *d, nb_guestsvc_engine_fn engine, nb_guestsvc_t **out, char *err,
                    size_t errsz)
{
    *out = NULL;
    nb_guestsvc_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->d = d;
    g->loop = d->loop;
    g->engine = engine;
    int r = test_settings(g, err, errsz);
    if (r < 0) {
        free(g->test_ca);
        free(g);
        return r;
    }
    if (d->secrets)
        g->watch = nb_secretsvc_watch(d->secrets, on_secrets_changed, g);
    if (d->events && (r = nb_events_subscribe(d->events, on_event, g, &g->evsub)) < 0)
        g->evsub = 0;
    d->guest.on_open = hook_open;
    d->guest.on_agent_up = hook_up;
    d->guest.env = hook_env;
    d->guest.ud = g;
    d->guestsvc = g;
    *out = g;
    return 0;
}

static void g_unref(nb_guestsvc_t *g)
{
    g->live--;
    if (g->freed && g->live == 0) {
        free(g->test_ca);
        free(g);
    }
}

void nb_guestsvc_free(nb_guestsvc_t *g)
{
    if (!g || g->freed)
        return;
    nb_daemon_t *d = g->d;
    if (d->guest.ud == g) {
        d->guest.on_open = NULL;
        d->guest.on_agent_up = NULL;
        d->guest.env = NULL;
        d->guest.ud = NULL;
    }
    if (d->guestsvc == g)
        d->guestsvc = NULL;
    if (d->secrets && g->watch)
        nb_secretsvc_unwatch(d->secrets, g->watch);
    if (d->events && g->evsub)
        nb_events_unsubscribe(d->events, g->evsub);
    g->freed = 1;
    while (g->vms)
        vm_drop(g, g->vms);
    g->live++;
    g_unref(g); /* frees now unless bridges or jobs are still closing */
}

void nb_guestsvc_stats(const nb_guestsvc_t *g, nb_guestsvc_stats_t *st)
{
    *st = g->st;
}
