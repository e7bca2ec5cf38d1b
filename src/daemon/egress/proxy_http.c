/* One inspected HTTP exchange: request head checks (A1), the gate for
 * plain proxy requests, credential injection (A2-A4, A7, A9), streaming
 * of the request body, the response head and body with redaction (A5),
 * 100-continue, WebSocket upgrades, keep-alive on both sides. Redirects
 * are ordinary responses here: they go back to the client (A6). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/egress/proxy_auth.h"
#include "daemon/egress/proxy_int.h"
#include "lib/err.h"
#include "lib/log.h"

static void check_done(cconn_t *c);
/* Re-judges a tunnel's destination before one of its requests goes
 * upstream: 2 when the policy did not change or still allows it (go on,
 * nothing to record), 1 with *v filled (record and apply it), 0 when it
 * waits on a prompt (gate_verdict runs later). */
static int tunnel_rejudge(cconn_t *c, nb_gate_verdict_t *v);
/* A tunnel in deny mode whose destination a rule now allows leaves deny
 * mode (1); otherwise 0. */
static int tunnel_undeny(cconn_t *c);

/* ---- helpers ---- */

/* 1 when header i of h must not be forwarded: hop-by-hop (RFC 9110
 * 7.6.1) or named in one of the message's Connection headers. Uses the
 * kinds the parser gave each name: this runs for every header of every
 * request and response. */
static int is_hop(const nb_http_head_t *h, size_t i)
{
    switch ((nb_http_hdr_kind_t)h->kinds[i]) {
    case NB_HDR_HOST:
        /* The proxy owns Host: a client naming it in Connection must not
         * make the upstream request lose the name that was checked (A1). */
        return 0;
    case NB_HDR_CONNECTION:
    case NB_HDR_KEEP_ALIVE:
    case NB_HDR_PROXY_CONNECTION:
    case NB_HDR_PROXY_AUTHORIZATION:
    case NB_HDR_PROXY_AUTHENTICATE:
    case NB_HDR_TE:
    case NB_HDR_TRAILER:
    case NB_HDR_TRANSFER_ENCODING:
    case NB_HDR_CONTENT_LENGTH:
    case NB_HDR_UPGRADE:
        return 1;
    default:
        break;
    }
    if (!(h->kinds_seen & (1u << NB_HDR_CONNECTION)))
        return 0;
    nb_iov_t name = h->headers[i].name;
    for (size_t j = 0; j < h->nheaders; j++) {
        if (h->kinds[j] != NB_HDR_CONNECTION)
            continue;
        nb_iov_t v = h->headers[j].value;
        size_t s = 0;
        while (s < v.len) {
            while (s < v.len && (v.p[s] == ',' || v.p[s] == ' ' || v.p[s] == '\t'))
                s++;
            size_t e = s;
            while (e < v.len && v.p[e] != ',' && v.p[e] != ' ' && v.p[e] != '\t')
                e++;
            /* (a header name holds no NUL: strncasecmp sees all of it) */
            if (e > s && name.len == e - s &&
                strncasecmp((const char *)name.p, (const char *)v.p + s, name.len) == 0)
                return 1;
            s = e;
        }
    }
    return 0;
}

__attribute__((format(printf, 4, 5))) static int reject(cconn_t *c, int status, const char *token,
                                                        const char *fmt, ...)
{
    exch_t *x = &c->x;
    if (x->reject_status)
        return 0;
    x->reject_status = status;
    x->reject_token = token;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->reject_msg, sizeof x->reject_msg, fmt, ap);
    va_end(ap);
    return 0;
}

void nb_px_exch_reset(cconn_t *c)
{
    nb_px_usage_drop(c);
    nb_buf_t pending = c->x.pending;
    nb_buf_reset(&pending);
    nb_decode_free(c->x.dec);
    nb_pxsv4_reset(c->sv); /* values and keys of the last request */
    nb_px_oauth_reset(c);
    memset(&c->x, 0, sizeof c->x);
    c->x.pending = pending;
}

/* ---- request head ---- */

/* AWS SigV4 (proxy_sigv4.h): a request signed with the placeholder toward
 * a host with a SigV4 binding. Without a payload hash header its body is
 * held (at most NB_PXSV4_BODY_MAX) until complete: the signature covers
 * the body's hash, so the head cannot go before the body was read. */
static int sigv4_classify(cconn_t *c, const nb_http_head_t *h)
{
    exch_t *x = &c->x;
    if (c->sv)
        nb_pxsv4_reset(c->sv);
    if (!nb_pxcreds_host_bound_any(c->px->creds, x->auth.host))
        return 0;
    if (!c->sv && nb_pxsv4_new(&c->sv) < 0)
        return reject(c, 503, "out-of-memory", "the proxy is out of memory");
    size_t nb;
    const nb_binding_t *bind = nb_pxcreds_bindings(c->px->creds, &nb);
    nb_inject_dest_t d = {.host = x->auth.host, .vm = c->l->vm, .tls = x->tls};
    _Static_assert(sizeof(nb_sigv4_header_t) == sizeof(nb_http_header_t), "same slices");
    int cls =
        nb_pxsv4_classify(c->sv, &d, bind, nb, (const nb_sigv4_header_t *)h->headers, h->nheaders,
                          x->origin.len ? x->origin : NB_IOV_STR("/"), x->req_has_body);
    if (cls == 2 && h->content_length > NB_PXSV4_BODY_MAX)
        return reject(c, 413, "body-too-large",
                      "a SigV4 request without x-amz-content-sha256 is re-signed over its body, "
                      "held up to %d MiB",
                      NB_PXSV4_BODY_MAX >> 20);
    return 0;
}

static int sigv4_holding(const cconn_t *c)
{
    return c->sv && nb_pxsv4_classify_result(c->sv) == 2;
}

static int req_on_head(cconn_t *c, const nb_http_head_t *h)
{
    exch_t *x = &c->x;
    char esc[128];
    x->active = 1;
    x->head = *h;
    x->t0 = uv_now(c->px->loop);
    c->head_started = 0;
    const nb_http_header_t *ua = nb_http_head_find(h, "user-agent");
    x->git_client = ua && ua->value.len >= 4 && memcmp(ua->value.p, "git/", 4) == 0;
    x->npm_client = ua && ua->value.len >= 4 && memcmp(ua->value.p, "npm/", 4) == 0;
    if (h->method.len >= sizeof x->method)
        return reject(c, 405, "method-not-allowed", "method too long");
    memcpy(x->method, h->method.p, h->method.len);
    x->method[h->method.len] = '\0';
    int is_connect = strcmp(x->method, "CONNECT") == 0;

    if (!c->tunnel) {
        if (is_connect) {
            int r = nb_pxurl_authority(h->target.p, h->target.len, 0, &c->auth);
            if (r < 0)
                return reject(c, 400, "invalid-connect-target", "CONNECT needs host:port, got '%s'",
                              nb_log_escape(esc, sizeof esc, h->target.p, h->target.len));
            if (nb_dest_set(&c->dest, c->l->vm, c->auth.host, strlen(c->auth.host), c->auth.port) <
                0)
                return reject(c, 400, "invalid-connect-target", "unusable CONNECT target");
            x->is_connect = 1;
            return 0;
        }
        nb_pxurl_abs_t abs;
        int r = nb_pxurl_absolute(h->target.p, h->target.len, &abs);
        if (r == NB_EUNSUPPORTED)
            return reject(c, 400, "unsupported-scheme", "only http:// URLs can be proxied");
        if (r < 0) {
            if (h->target.len && h->target.p[0] == '/')
                return reject(c, 400, "not-a-proxy-request",
                              "this is a proxy: send absolute-form requests or CONNECT");
            return reject(c, 400, "invalid-target", "cannot parse the request target '%s'",
                          nb_log_escape(esc, sizeof esc, h->target.p, h->target.len));
        }
        if (abs.https)
            return reject(c, 400, "https-needs-connect",
                          "https:// URLs go through CONNECT, not as plain requests");
        x->absolute = 1;
        x->auth = abs.auth;
        x->origin = abs.origin;
        x->tls = 0;
        if (nb_dest_set(&x->dest, c->l->vm, x->auth.host, strlen(x->auth.host), x->auth.port) < 0)
            return reject(c, 400, "invalid-target", "unusable destination");
    } else {
        if (c->deny && !tunnel_undeny(c))
            return reject(c, 403, c->deny_reason, "the destination is not allowed");
        if (is_connect)
            return reject(c, 405, "connect-in-tunnel", "CONNECT inside a tunnel is refused");
        x->auth = c->auth;
        x->dest = c->dest;
        x->tls = c->tls;
        if (h->target.len && h->target.p[0] != '/' &&
            !(h->target.len == 1 && h->target.p[0] == '*')) {
            nb_pxurl_abs_t abs;
            if (nb_pxurl_absolute(h->target.p, h->target.len, &abs) < 0)
                return reject(c, 400, "invalid-target", "cannot parse the request target");
            /* A1: the URL may not name another host than the tunnel's. */
            if (strcmp(abs.auth.host, c->auth.host) != 0 || abs.auth.port != c->auth.port)
                return reject(c, 403, "host-mismatch",
                              "the request names another host than the tunnel (%s)", c->auth.host);
            x->origin = abs.origin;
        } else {
            x->origin = h->target;
        }
    }
    /* A1: Host must name the approved destination, exactly. */
    const nb_http_header_t *host = nb_http_head_find(h, "host");
    if (!host)
        return reject(c, 400, "missing-host", "the request has no Host header");
    if (!nb_pxurl_host_matches(host->value, x->auth.host, x->auth.port))
        return reject(c, 403, "host-mismatch", "Host '%s' is not the destination %s",
                      nb_log_escape(esc, sizeof esc, host->value.p, host->value.len), x->auth.host);
    if (h->has_expect && !h->expect_continue)
        return reject(c, 417, "expectation-failed", "only Expect: 100-continue is supported");
    if (h->upgrade) {
        const nb_http_header_t *up = nb_http_head_find(h, "upgrade");
        if (!up || !nb_http_list_has_token(up->value, "websocket"))
            return reject(c, 400, "unsupported-upgrade", "only WebSocket upgrades pass");
        x->upgrade = 1;
    }
    x->req_chunked = h->chunked != 0;
    x->req_has_body = h->chunked || h->content_length > 0;
    nb_px_oauth_match(c); /* a token exchange of an OAuth binding? */
    x->head_ok = 1;
    nb_px_usage_head(c);
    return sigv4_classify(c, h);
}

/* ---- upstream head (injection happens here) ---- */

static void record_inject_report(cconn_t *c)
{
    exch_t *x = &c->x;
    nb_inject_out_t *o = &c->inj;
    nb_proxy_t *px = c->px;
    size_t nl = o->nleaks < NB_INJECT_MAX_REPORT ? o->nleaks : NB_INJECT_MAX_REPORT;
    for (size_t i = 0; i < nl; i++) {
        const nb_inject_leak_t *lk = &o->leaks[i];
        if (c->leak_rows >= PX_LEAK_ROWS_MAX) {
            c->leaks_unrecorded++;
            continue;
        }
        c->leak_rows++;
        nb_log_conn(NB_LOG_NOTICE, c->id, "placeholder %s in %s toward %s (%s): %s", lk->secret,
                    lk->where, x->auth.host, nb_inject_leak_threat(lk->kind),
                    px->cfg.block_leaks ? "request refused" : "sent as the dummy");
        nb_px_record(c, "leak", x->auth.host, x->auth.port,
                     json_pack("{s:[s], s:s, s:s, s:s}", "secrets", lk->secret, "threat",
                               nb_inject_leak_threat(lk->kind), "where", lk->where, "action",
                               px->cfg.block_leaks ? "blocked" : "dummy-forwarded"));
    }
    if (o->nleaks > nl)
        c->leaks_unrecorded += o->nleaks - nl;
    px->st.leaks += o->nleaks;
    for (size_t i = 0; i < o->ninjected && i < NB_INJECT_MAX_REPORT; i++) {
        const nb_inject_done_t *d = &o->injected[i];
        size_t k;
        for (k = 0; k < c->ntally; k++)
            if (c->tally[k].binding_id == d->binding_id && c->tally[k].port == x->auth.port &&
                strcmp(c->tally[k].host, x->auth.host) == 0)
                break;
        if (k < c->ntally) {
            c->tally[k].count++; /* a repeat: summed up when the connection closes */
            continue;
        }
        if (c->ntally < PX_TALLY_MAX) {
            c->tally[k].binding_id = d->binding_id;
            snprintf(c->tally[k].secret, sizeof c->tally[k].secret, "%s", d->secret);
            snprintf(c->tally[k].host, sizeof c->tally[k].host, "%s", x->auth.host);
            c->tally[k].port = x->auth.port;
            c->tally[k].placement = d->placement;
            c->tally[k].count = 1;
            c->ntally++;
        }
        const char *pl = nb_binding_placement_name(d->placement);
        nb_px_record(c, "inject", x->auth.host, x->auth.port,
                     json_pack("{s:[s], s:I, s:s, s:s}", "secrets", d->secret, "binding",
                               (json_int_t)d->binding_id, "placement", pl ? pl : "?", "method",
                               x->method));
    }
    px->st.injected += o->ninjected;
    x->ninjected = (int)o->ninjected;
}

/* Signs a SigV4 request again with the real credentials (hv and the
 * target are changed in place). 1 re-signed, 0 left as sent, or < 0 after
 * having answered. */
static int sigv4_resign(cconn_t *c, nb_inject_header_t *hv, nb_inject_req_t *ireq)
{
    exch_t *x = &c->x;
    if (!c->sv || !nb_pxsv4_classify_result(c->sv))
        return 0;
    const nb_http_head_t *h = &x->head;
    size_t nb, nh = ireq->nheaders;
    const nb_binding_t *bind = nb_pxcreds_bindings(c->creds, &nb);
    nb_inject_dest_t d = {.host = x->auth.host, .vm = c->l->vm, .tls = x->tls};
    nb_iov_t target = ireq->target;
    int r = nb_pxsv4_resign(c->sv, &d, bind, nb, nb_pxcreds_get, c->creds, h->method,
                            (const nb_sigv4_header_t *)h->headers, h->nheaders, ireq->target,
                            (nb_sigv4_header_t *)hv, &nh, PX_MAX_HEADERS + 8, &target);
    if (r < 0) {
        nb_px_conn_drop_up(c, 1);
        nb_log_conn(NB_LOG_WARN, c->id, "SigV4 re-signing toward %s failed: %s", x->auth.host,
                    nb_strerror(r));
        nb_px_reply(c, 502, "bad-gateway", "secret-unusable", x->auth.host,
                    "the AWS credentials bound here cannot be used (they need an access key id "
                    "and a secret key, one per line)",
                    "set them again with 'nilbox secret set'", 1);
        return -1;
    }
    if (r == 0) {
        nb_log_conn(NB_LOG_NOTICE, c->id, "SigV4 request toward %s sent as signed: %s",
                    x->auth.host, nb_pxsv4_why(c->sv));
        return 0;
    }
    ireq->nheaders = nh;
    ireq->target = target;
    return 1;
}

/* Builds and writes the upstream head. Returns 0, or < 0 after having
 * answered the client itself. */
static int send_head(cconn_t *c, upconn_t *u)
{
    exch_t *x = &c->x;
    nb_proxy_t *px = c->px;
    const nb_http_head_t *h = &x->head;
    int r;
    if (nb_px_usage_prepare(c) < 0)
        goto oom;
    nb_pxcreds_unref(c->creds);
    c->creds = nb_pxcreds_ref(px->creds);
    /* A5: a host some binding names (for any VM) may hold a value; its
     * responses are scanned, whatever this request carries. */
    int identity = nb_pxcreds_host_bound_any(c->creds, x->auth.host) || x->oauth;
    if (x->oauth) {
        if (nb_px_oauth_request(c) < 0)
            return -1;
        x->req_chunked = 0; /* the rewritten body has a length */
    }
    if (!c->hdrs && !(c->hdrs = calloc(PX_MAX_HEADERS + 8, sizeof *c->hdrs)))
        goto oom;
    nb_inject_header_t *hv = (nb_inject_header_t *)c->hdrs;
    _Static_assert(sizeof(nb_inject_header_t) == sizeof(nb_http_header_t),
                   "header slices share a layout");
    size_t n = 0;
    for (size_t i = 0; i < h->nheaders && n < PX_MAX_HEADERS; i++) {
        nb_iov_t name = h->headers[i].name;
        nb_http_hdr_kind_t kind = h->kinds[i];
        if (is_hop(h, i))
            continue;
        if (identity && kind == NB_HDR_ACCEPT_ENCODING)
            continue;
        if (nb_px_usage_skip_header(c, kind))
            continue;
        /* No WebSocket extension on a scanned host: permessage-deflate
         * would hide echoed values from the frame scanner (A5). */
        if (identity && kind == NB_HDR_SEC_WEBSOCKET_EXTENSIONS)
            continue;
        hv[n].name = name;
        hv[n].value = h->headers[i].value;
        n++;
    }
    if (x->req_chunked) {
        hv[n].name = NB_IOV_STR("Transfer-Encoding");
        hv[n++].value = NB_IOV_STR("chunked");
    } else if (h->content_length >= 0 || x->oauth) {
        long long len =
            x->oauth ? (long long)nb_px_oauth_body(c).len : (long long)h->content_length;
        int cl = snprintf(c->clbuf, sizeof c->clbuf, "%lld", len);
        hv[n].name = NB_IOV_STR("Content-Length");
        hv[n++].value = nb_iov(c->clbuf, (size_t)cl);
    }
    if (identity) {
        /* The redactor must see echoed values: no compressed responses. */
        hv[n].name = NB_IOV_STR("Accept-Encoding");
        hv[n++].value = NB_IOV_STR("identity");
    }
    nb_px_usage_upstream_headers(c, hv, &n, identity);
    if (x->upgrade) {
        const nb_http_header_t *uh = nb_http_head_find_kind(h, NB_HDR_UPGRADE);
        hv[n].name = NB_IOV_STR("Connection");
        hv[n++].value = NB_IOV_STR("Upgrade");
        hv[n].name = NB_IOV_STR("Upgrade");
        hv[n++].value = uh->value;
    }
    nb_inject_req_t ireq = {
        .method = h->method,
        .target = x->origin.len ? x->origin : NB_IOV_STR("/"),
        .version_minor = 1,
        .headers = hv,
        .nheaders = n,
    };
    /* On a host with bindings every response is scanned for every secret
     * bound for the VM, not only what this request injected (A5). */
    nb_inject_dest_t idest = {
        .host = x->auth.host, .vm = c->l->vm, .tls = x->tls, .watch = identity};
    if (!c->inj_ready) {
        if ((r = nb_inject_out_init(&c->inj, PX_INJECT_CAP)) < 0)
            goto oom;
        c->inj_ready = 1;
    }
    if (!c->red && nb_redact_new(&c->red) < 0)
        goto oom;
    nb_redact_reset(c->red);
    size_t nb, nn;
    const nb_binding_t *bind = nb_pxcreds_bindings(c->creds, &nb);
    const char *const *names = nb_pxcreds_names(c->creds, &nn);
    if (ireq.target.len && ireq.target.p[0] == '?') {
        /* "http://host?q" means "/?q": the injector wants an origin-form path. */
        nb_buf_reset(&c->scratch);
        if (nb_buf_append(&c->scratch, "/", 1) < 0 ||
            nb_buf_append(&c->scratch, ireq.target.p, ireq.target.len) < 0)
            goto oom;
        ireq.target = nb_buf_iov(&c->scratch);
    }
    int resigned = sigv4_resign(c, hv, &ireq);
    if (resigned < 0)
        return resigned;
    r = nb_inject_head(&ireq, &idest, bind, nb, names, nn, nb_pxcreds_get, c->creds, c->red,
                       &c->inj);
    if (r == 0 && resigned && c->inj.ninjected < NB_INJECT_MAX_REPORT) {
        /* Audited like an injection (first per destination at once, repeats summed). */
        nb_inject_done_t *d = &c->inj.injected[c->inj.ninjected++];
        snprintf(d->secret, sizeof d->secret, "%s", nb_pxsv4_secret(c->sv));
        d->binding_id = nb_pxsv4_binding(c->sv);
        d->placement = NB_PLACE_SIGV4;
    }
    record_inject_report(c);
    if (r < 0) {
        nb_inject_out_wipe(&c->inj);
        nb_px_conn_drop_up(c, 1); /* nothing was sent on it */
        if (r == NB_EDENIED) {
            nb_px_record(c, "refusal", x->auth.host, x->auth.port,
                         json_pack("{s:s, s:s}", "reason", "host-mismatch", "threat", "A1"));
            nb_px_reply(c, 403, "refused", "host-mismatch", x->auth.host,
                        "the request names another host than the approved destination",
                        "send requests only to the host of the tunnel", 1);
        } else if (r == NB_EPROTO) {
            nb_px_record(
                c, "refusal", x->auth.host, x->auth.port,
                json_pack("{s:s, s:s}", "reason", "ambiguous-credentials", "threat", "A4"));
            nb_px_reply(c, 400, "bad-request", "ambiguous-credentials", x->auth.host,
                        "a header that a secret goes into appears more than once",
                        "send each credential header once", 1);
        } else if (r == NB_ETOOBIG) {
            nb_px_reply(c, 431, "refused", "headers-too-large", x->auth.host,
                        "the request head is too large after injection", "send smaller headers", 1);
        } else if (r == NB_EUNSUPPORTED) {
            nb_log_conn(NB_LOG_WARN, c->id,
                        "too many secrets bound for this VM to scan responses from %s (A5)",
                        x->auth.host);
            nb_px_reply(c, 502, "bad-gateway", "too-many-secrets", x->auth.host,
                        "more secrets are bound for this VM than the response scanner can watch",
                        "unbind secrets this VM does not need ('nilbox secret unbind')", 1);
        } else {
            nb_log_conn(NB_LOG_WARN, c->id, "injection toward %s failed: %s", x->auth.host,
                        nb_strerror(r));
            nb_px_reply(c, 502, "bad-gateway", "secret-unusable", x->auth.host,
                        "a bound secret cannot be used (unreadable, or not a valid header value)",
                        "check the secret with 'nilbox secret ls' and set it again", 1);
        }
        return -1;
    }
    if (px->cfg.block_leaks && c->inj.nleaks) {
        nb_inject_out_wipe(&c->inj);
        nb_px_conn_drop_up(c, 1);
        nb_px_reply(c, 403, "refused", "secret-leak", x->auth.host,
                    "the request carries a secret placeholder where that secret may not go",
                    "bind the secret to this host and placement, or remove the placeholder", 1);
        return -1;
    }
    if (nb_px_usage_reserve(c) < 0)
        return -1; /* refused by a limit (a 429 went out) */
    x->resp_redact = nb_redact_needles(c->red) > 0;
    r = nb_pxio_write(&u->io, c->inj.p, c->inj.len);
    nb_inject_out_wipe(&c->inj);
    if (r == 0 && x->oauth) {
        nb_iov_t ob = nb_px_oauth_body(c);
        r = ob.len ? nb_pxio_write(&u->io, ob.p, ob.len) : 0;
        nb_px_oauth_body_wipe(c);
    }
    if (r < 0) {
        nb_px_conn_drop_up(c, 0);
        nb_px_reply(c, 502, "bad-gateway", "upstream-error", x->auth.host,
                    "cannot write to the upstream", "retry", 1);
        return -1;
    }
    px->st.requests++;
    return 0;
oom:
    nb_px_conn_drop_up(c, 1);
    nb_px_reply(c, 503, "unavailable", "out-of-memory", x->auth.host, "the proxy is out of memory",
                "retry later", 1);
    return -1;
}

/* ---- request body ---- */

static void finish_request(cconn_t *c)
{
    exch_t *x = &c->x;
    if (x->req_sent)
        return;
    if (x->req_chunked && nb_pxio_write(&c->up->io, "0\r\n\r\n", 5) < 0)
        return;
    x->req_sent = 1;
}

/* Re-signed aws-chunked bytes toward the upstream. */
static int sigv4_sink(void *ud, const uint8_t *p, size_t len)
{
    cconn_t *c = ud;
    return nb_pxio_write_body(&c->up->io, p, len, c->x.req_chunked) < 0 ? NB_ECLOSED : 0;
}

/* An aws-chunked body the re-signer refuses (bad framing or trailer, a
 * signature that is not the placeholder's): the upstream request is
 * aborted, never completed (after_feed drops it), and the client told why. */
static void sigv4_refuse(cconn_t *c, int r, const char *why)
{
    exch_t *x = &c->x;
    nb_log_conn(NB_LOG_NOTICE, c->id, "aws-chunked upload toward %s refused: %s", x->auth.host,
                why);
    if (r == NB_EAUTH) {
        /* after_feed leaves 403s to the gate's own records: this one is ours. */
        nb_px_record(c, "refusal", x->auth.host, x->auth.port,
                     json_pack("{s:s, s:s, s:s}", "reason", "sigv4-chunk-signature", "message", why,
                               "threat", "A15"));
        c->px->st.refused++;
        reject(c, 403, "sigv4-chunk-signature", "the aws-chunked upload was refused: %s", why);
    } else if (r == NB_ETOOBIG) {
        reject(c, 413, "aws-chunk-too-large", "the aws-chunked upload was refused: %s", why);
    } else {
        reject(c, 400, "bad-aws-chunked", "the aws-chunked upload was refused: %s", why);
    }
}

/* Body bytes through the aws-chunked re-signer. 0, 1 refused (the reject
 * is set), or NB_ECLOSED (the upstream write failed). */
static int sigv4_feed(cconn_t *c, const uint8_t *p, size_t len)
{
    int r = nb_pxsv4_feed(c->sv, p, len, sigv4_sink, c);
    if (r >= 0)
        return 0;
    const char *why = nb_pxsv4_feed_why(c->sv);
    if (!why)
        return NB_ECLOSED;
    sigv4_refuse(c, r, why);
    return 1;
}

static int req_on_body(void *ud, const uint8_t *p, size_t len)
{
    cconn_t *c = ud;
    exch_t *x = &c->x;
    if (x->reject_status || !x->head_ok || c->state == CS_CLOSING)
        return 0;
    if (x->head_sent && c->up) {
        if (nb_pxsv4_streaming(c->sv))
            return sigv4_feed(c, p, len) < 0 ? NB_ECLOSED : 0;
        if (nb_pxio_write_body(&c->up->io, p, len, c->x.req_chunked) < 0)
            return NB_ECLOSED;
        return 0;
    }
    if (sigv4_holding(c)) {
        if (nb_pxsv4_hold(c->sv, p, len) < 0)
            return reject(c, 413, "body-too-large",
                          "a SigV4 request without x-amz-content-sha256 is re-signed over its "
                          "body, held up to %d MiB",
                          NB_PXSV4_BODY_MAX >> 20);
        return 0;
    }
    if (x->oauth && len > NB_OAUTH_BODY_MAX - x->pending.len)
        return NB_ETOOBIG; /* a token request is held whole, and is small */
    return nb_buf_append(&x->pending, p, len);
}

static int req_on_complete(void *ud)
{
    cconn_t *c = ud;
    exch_t *x = &c->x;
    if (x->head_sent && c->up && !x->reject_status) {
        if (!nb_pxsv4_done(c->sv)) {
            sigv4_refuse(c, NB_EPARSE, "the body ended before its final chunk or trailer");
            return 0;
        }
        finish_request(c);
    }
    return 0;
}

/* ---- gate (plain proxy requests) ---- */

static const nb_px_up_cbs_t up_cbs;

static void acquire(cconn_t *c)
{
    exch_t *x = &c->x;
    if (x->oauth && !x->req_done) {
        x->oauth_wait = 1; /* the body is rewritten whole (after_feed resumes) */
        return;
    }
    int r = nb_px_up_acquire(&c->l->pool, x->auth.host, x->auth.is_ip, x->auth.port, x->tls,
                             x->retried, &up_cbs, c, &c->up);
    if (r < 0)
        nb_px_reply(c, 503, "unavailable", "out-of-memory", x->auth.host,
                    "cannot start the upstream connection", "retry later", 1);
}

static void gate_verdict(cconn_t *c, const nb_gate_verdict_t *v)
{
    exch_t *x = &c->x;
    nb_px_record_gate(c, x->auth.host, x->auth.port, v, "http");
    c->pol_why = v->why; /* a WebSocket after this request follows rule changes */
    if (!v->allowed) {
        c->px->st.denied++;
        nb_px_reply(c, 403, "denied", nb_gate_why_name(v->why), x->auth.host,
                    "the destination is not allowed", nb_px_why_hint(v->why), 1);
        return;
    }
    acquire(c);
}

void nb_px_http_release(cconn_t *c)
{
    exch_t *x = &c->x;
    if (c->deny) {
        nb_px_reply(c, 403, "denied", c->deny_reason, x->auth.host,
                    "the destination is not allowed", nb_px_why_hint(c->deny_why), 1);
        return;
    }
    acquire(c);
}

static void on_req_gate(void *ud, const nb_gate_verdict_t *v)
{
    cconn_t *c = ud;
    c->wait = NULL;
    c->x.gate_waiting = 0;
    gate_verdict(c, v);
    if (c->state != CS_CLOSING)
        nb_px_conn_update_read(c);
}

static void start(cconn_t *c)
{
    exch_t *x = &c->x;
    nb_gate_verdict_t v;
    int r;
    if (c->tunnel) {
        if (c->held) {
            /* The CONNECT was answered before its verdict: its first
             * request waits for it (nb_px_http_release). */
            x->gate_waiting = 1;
            return;
        }
        /* Rules apply to every request, not only to the CONNECT. */
        if ((r = tunnel_rejudge(c, &v)) == 2)
            acquire(c);
        else if (r == 0)
            x->gate_waiting = 1;
        else
            gate_verdict(c, &v);
        return;
    }
    r = nb_px_gate_check(c, &x->dest, &v, on_req_gate);
    if (r == 0) {
        x->gate_waiting = 1;
        return;
    }
    gate_verdict(c, &v);
}

static const char *refusal_threat(const char *token)
{
    if (strcmp(token, "host-mismatch") == 0)
        return "A1";
    return "A15";
}

static void after_feed(cconn_t *c)
{
    exch_t *x = &c->x;
    if (c->state == CS_CLOSING)
        return;
    if (x->reject_status && !x->resp_head_sent) {
        const char *host = x->auth.host[0] ? x->auth.host : (c->tunnel ? c->auth.host : "");
        if (x->reject_status != 403 || strcmp(x->reject_token, "host-mismatch") == 0) {
            nb_px_record(c, "refusal", host, x->auth.port,
                         json_pack("{s:s, s:s, s:s}", "reason", x->reject_token, "message",
                                   x->reject_msg, "threat", refusal_threat(x->reject_token)));
            c->px->st.refused++;
        }
        nb_px_conn_drop_up(c, 0);
        nb_px_reply(c, x->reject_status, x->reject_status == 403 ? "denied" : "bad-request",
                    x->reject_token, host, x->reject_msg,
                    c->deny ? nb_px_why_hint(c->deny_why) : "fix the request", 1);
        return;
    }
    if (x->is_connect && x->req_done) {
        x->is_connect = 0;
        c->px->tunnel(c); /* proxy_tunnel.c, a layer above */
        return;
    }
    if (x->head_ok && !x->started && (!sigv4_holding(c) || x->req_done) && !nb_px_usage_hold(c)) {
        x->started = 1;
        start(c);
        if (c->state == CS_CLOSING)
            return;
    }
    if (x->oauth_wait && x->req_done) {
        x->oauth_wait = 0;
        acquire(c);
        if (c->state == CS_CLOSING)
            return;
    }
    check_done(c);
}

/* ---- upstream ready ---- */

static void up_ready(upconn_t *u, int r)
{
    cconn_t *c = u->ud;
    exch_t *x = &c->x;
    if (r < 0) {
        c->up = NULL;
        nb_px_record_up_failure(c, u, x->auth.host, x->auth.port);
        nb_px_reply(c, u->fail_status, "bad-gateway", u->fail_token, x->auth.host, u->fail_msg,
                    strcmp(u->fail_token, "internal-address") == 0
                        ? "internal addresses need an explicit IP rule ('nilbox rule add')"
                        : "check that the destination is up and has a valid certificate",
                    1);
        nb_px_up_close(u);
        return;
    }
    c->up = u;
    if (nb_px_up_expect(u, x->method) < 0) {
        nb_px_conn_drop_up(c, 0);
        nb_px_reply(c, 503, "unavailable", "out-of-memory", x->auth.host,
                    "the proxy is out of memory", "retry later", 1);
        return;
    }
    if (send_head(c, u) < 0)
        return;
    x->head_sent = 1;
    nb_px_up_arm_response(u);
    if (sigv4_holding(c) && nb_pxsv4_held(c->sv).len) {
        nb_iov_t held = nb_pxsv4_held(c->sv);
        if (nb_pxio_write_body(&c->up->io, held.p, held.len, x->req_chunked) < 0) {
            nb_px_conn_close(c);
            return;
        }
    }
    if (x->pending.len) {
        int wr = nb_pxsv4_streaming(c->sv)
                     ? sigv4_feed(c, x->pending.p, x->pending.len)
                     : nb_pxio_write_body(&c->up->io, x->pending.p, x->pending.len, x->req_chunked);
        if (wr < 0) {
            nb_px_conn_close(c);
            return;
        }
        nb_buf_reset(&x->pending);
        if (wr > 0) {
            after_feed(c); /* refused: answers, and drops the upstream request */
            return;
        }
    }
    if (x->req_done && !nb_pxsv4_done(c->sv)) {
        sigv4_refuse(c, NB_EPARSE, "the body ended before its final chunk or trailer");
        after_feed(c);
        return;
    }
    if (x->req_done)
        finish_request(c);
    nb_pxio_read_start(&u->io);
    nb_px_conn_update_read(c);
}

/* ---- response ---- */

static int body_sink(void *ud, const uint8_t *p, size_t len)
{
    cconn_t *c = ud;
    return nb_pxio_write_body(&c->io, p, len, !c->sink_raw && c->x.resp_out_chunked);
}

/* The response's Content-Encoding for an error message. The upstream
 * writes that value, so it is named only when it is a known token (the
 * guest must never see upstream text that was not scanned, A5). */
static const char *coding_name(const nb_http_head_t *h)
{
    static const char *const known[] = {"zstd",         "compress",  "x-compress", "br",
                                        "gzip",         "x-gzip",    "deflate",    "exi",
                                        "pack200-gzip", "aes128gcm", NULL};
    size_t n = 0;
    const nb_http_header_t *ce = NULL;
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->kinds[i] == NB_HDR_CONTENT_ENCODING) {
            ce = &h->headers[i];
            n++;
        }
    if (n != 1 || memchr(ce->value.p, ',', ce->value.len))
        return "with several codings";
    for (size_t i = 0; known[i]; i++)
        if (nb_iov_eq_nocase(ce->value, known[i]))
            return known[i];
    return "of an unknown coding";
}

/* Head building appends known pieces: no printf (it formatted twice per
 * call, sizing then writing) and one reservation per header line. */
static int append_dec(nb_buf_t *b, uint64_t v)
{
    char d[20];
    size_t n = 0;
    do
        d[sizeof d - ++n] = (char)('0' + v % 10);
    while ((v /= 10) && n < sizeof d);
    return nb_buf_append(b, d + sizeof d - n, n);
}

static int append_field(nb_buf_t *b, nb_iov_t name, nb_iov_t value)
{
    int r = nb_buf_reserve(b, name.len + value.len + 4);
    if (r < 0)
        return r;
    uint8_t *o = b->p + b->len;
    memcpy(o, name.p, name.len);
    o += name.len;
    *o++ = ':';
    *o++ = ' ';
    if (value.len)
        memcpy(o, value.p, value.len);
    o += value.len;
    *o++ = '\r';
    *o++ = '\n';
    b->len += name.len + value.len + 4;
    return 0;
}

static int resp_on_head(upconn_t *u, const nb_http_head_t *h)
{
    cconn_t *c = u->ud;
    exch_t *x = &c->x;
    nb_px_up_disarm(u);
    if (h->status < 200 && h->status != 101) {
        x->interim = 1;
        if (h->status == 100 && x->head.version_minor >= 1 && x->head.expect_continue)
            return nb_pxio_write(&c->io, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        return 0; /* other 1xx (102, 103) are dropped */
    }
    x->interim = 0;
    x->resp_status = h->status;
    if (h->status == 101 && !x->upgrade)
        return NB_EPROTO;
    if (x->us) {
        int ur = nb_px_usage_resp_head(c, h);
        if (ur < 0)
            return ur;
    }
    int bodyless =
        strcmp(x->method, "HEAD") == 0 || h->status == 204 || h->status == 304 || h->status == 101;
    int ka = x->head.keep_alive && !c->close_after && !c->client_eof && !x->upgrade;
    nb_decode_kind_t enc = NB_DECODE_IDENTITY;
    if (x->resp_redact && !bodyless) {
        /* The upstream may ignore "Accept-Encoding: identity": decode
         * what we can for the redactor, refuse what we cannot (A5). */
        for (size_t i = 0; i < h->nheaders; i++) {
            if (h->kinds[i] != NB_HDR_CONTENT_ENCODING)
                continue;
            nb_decode_kind_t k =
                nb_decode_kind((const char *)h->headers[i].value.p, h->headers[i].value.len);
            if (k != NB_DECODE_IDENTITY && enc != NB_DECODE_IDENTITY)
                k = NB_DECODE_UNSUPPORTED; /* stacked codings */
            if (k != NB_DECODE_IDENTITY)
                enc = k;
        }
        int r = enc == NB_DECODE_IDENTITY ? 0 : nb_decode_new(enc, &x->dec);
        if (r < 0) {
            x->fail_token = r == NB_EUNSUPPORTED ? "undecodable-encoding" : "out-of-memory";
            snprintf(x->fail_msg, sizeof x->fail_msg,
                     "the upstream answered with Content-Encoding %s, which the proxy cannot "
                     "decode to check it for secrets",
                     coding_name(h));
            return r == NB_EUNSUPPORTED ? NB_EUNSUPPORTED : r;
        }
    }
    nb_buf_t *b = &c->scratch;
    nb_buf_reset(b);
    int r = nb_buf_append(b, "HTTP/1.1 ", 9);
    if (r == 0)
        r = append_dec(b, (uint64_t)h->status); /* 3 digits: checked by the parser */
    if (r == 0)
        r = nb_buf_append(b, " ", 1);
    if (r == 0 && h->reason.len)
        r = nb_buf_append(b, h->reason.p, h->reason.len);
    else if (r == 0)
        r = nb_buf_append_str(b, nb_http_status_text(h->status));
    if (r == 0)
        r = nb_buf_append(b, "\r\n", 2);
    for (size_t i = 0; r == 0 && i < h->nheaders; i++) {
        nb_iov_t name = h->headers[i].name, value = h->headers[i].value;
        nb_http_hdr_kind_t kind = h->kinds[i];
        int keep_cl = bodyless && h->status != 101 && kind == NB_HDR_CONTENT_LENGTH;
        if (!keep_cl && is_hop(h, i))
            continue;
        if (x->dec && kind == NB_HDR_CONTENT_ENCODING)
            continue; /* forwarded decoded */
        if (h->status == 101 && x->resp_redact && kind == NB_HDR_SEC_WEBSOCKET_EXTENSIONS)
            continue; /* never offered (A5): the scanner refuses compressed frames */
        r = append_field(b, name, value);
    }
    if (r == 0 && h->status == 101) {
        const nb_http_header_t *uh = nb_http_head_find_kind(h, NB_HDR_UPGRADE);
        r = nb_buf_append_str(b, "Connection: Upgrade\r\nUpgrade: ");
        if (r == 0 && uh)
            r = nb_buf_append(b, uh->value.p, uh->value.len);
        if (r == 0)
            r = nb_buf_append(b, "\r\n", 2);
    } else if (r == 0 && !bodyless) {
        if (!x->resp_redact && !x->oauth && !nb_px_usage_rewrites(c) && h->content_length >= 0) {
            r = nb_buf_append_str(b, "Content-Length: ");
            if (r == 0)
                r = append_dec(b, (uint64_t)h->content_length); /* >= 0 here */
            if (r == 0)
                r = nb_buf_append(b, "\r\n", 2);
        } else if (x->head.version_minor >= 1) {
            x->resp_out_chunked = 1;
            r = nb_buf_append_str(b, "Transfer-Encoding: chunked\r\n");
        } else {
            x->resp_out_close = 1;
            ka = 0;
        }
    }
    if (r == 0 && h->status != 101)
        r = nb_buf_append_str(b, ka ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    if (r == 0)
        r = nb_px_usage_warn_header(c, b);
    if (r == 0)
        r = nb_buf_append(b, "\r\n", 2);
    if (r < 0)
        return r;
    x->client_keepalive = ka;
    x->resp_keepalive = h->keep_alive != 0;
    if (x->oauth) /* held until the body is rewritten (proxy_oauth.c) */
        return nb_px_oauth_resp_head(c, h, b->p, b->len);
    x->resp_head_sent = 1;
    if (x->resp_redact) {
        /* Response headers can echo a secret too (A5). Values never hold
         * CR or LF, so nothing is held back across the head's end. */
        c->sink_raw = 1;
        r = nb_redact_feed(c->red, b->p, b->len, body_sink, c);
        c->sink_raw = 0;
        return r;
    }
    return nb_pxio_write(&c->io, b->p, b->len);
}

static int redact_sink(void *ud, const uint8_t *p, size_t len)
{
    cconn_t *c = ud;
    return nb_redact_feed(c->red, p, len, body_sink, c);
}

/* A compressed body that cannot be decoded further: the head is out, so
 * the response is cut (the held-back bytes never leave). */
static void decode_failed(cconn_t *c, int r)
{
    exch_t *x = &c->x;
    const char *why = r == NB_ETOOBIG ? "decompression-bomb" : "corrupt-encoding";
    nb_log_conn(NB_LOG_NOTICE, c->id, "%s: compressed body from %s, response cut", why,
                x->auth.host);
    nb_px_record(c, "refusal", x->auth.host, x->auth.port,
                 json_pack("{s:s, s:s}", "reason", why, "threat", "A5"));
}

/* Response body bytes on their way to the client (after the meter). */
static int forward_body(cconn_t *c, const uint8_t *p, size_t len)
{
    if (c->x.dec) {
        int r = nb_decode_feed(c->x.dec, p, len, redact_sink, c);
        if (r == NB_ETOOBIG || r == NB_EPROTO)
            decode_failed(c, r);
        return r;
    }
    if (c->x.resp_redact)
        return nb_redact_feed(c->red, p, len, body_sink, c);
    return body_sink(c, p, len);
}

static int resp_on_body(upconn_t *u, const uint8_t *p, size_t len)
{
    cconn_t *c = u->ud;
    if (c->x.interim)
        return 0;
    if (c->x.oauth)
        return nb_px_oauth_resp_body(c, p, len);
    if (c->x.us)
        return nb_px_usage_body(c, p, len, forward_body);
    return forward_body(c, p, len);
}

static int resp_on_complete(upconn_t *u)
{
    cconn_t *c = u->ud;
    exch_t *x = &c->x;
    if (x->interim)
        return 0;
    int r = 0;
    if (x->oauth) {
        if ((r = nb_px_oauth_resp_complete(c)) == 0)
            x->resp_done = 1; /* sent now, or once the tokens are sealed */
        return r;
    }
    if ((r = nb_px_usage_end(c, forward_body)) != 0)
        return r;
    if (x->dec) {
        r = nb_decode_finish(x->dec);
        nb_decode_free(x->dec);
        x->dec = NULL;
        if (r < 0) {
            decode_failed(c, r);
            return r; /* cut: the tail held back is not released */
        }
    }
    if (x->resp_redact) {
        r = nb_redact_finish(c->red, body_sink, c);
        uint64_t n = nb_redact_count(c->red);
        if (n) {
            nb_log_conn(NB_LOG_NOTICE, c->id,
                        "%s echoed an injected secret: %" PRIu64
                        " occurrence(s) replaced by the placeholder",
                        x->auth.host, n);
            nb_px_record(c, "leak", x->auth.host, x->auth.port,
                         json_pack("{s:s, s:s, s:I}", "threat", "A5", "action", "redacted",
                                   "replaced", (json_int_t)n));
        }
    }
    if (r == 0 && x->resp_out_chunked)
        r = nb_pxio_write(&c->io, "0\r\n\r\n", 5);
    x->resp_done = 1;
    return r;
}

/* The response is complete: hand the upstream back and either read the
 * client's next request or end the connection. */
static void exchange_done(cconn_t *c)
{
    exch_t *x = &c->x;
    upconn_t *u = c->up;
    int reusable = u && x->req_sent && x->resp_keepalive && !x->upgrade;
    nb_px_conn_drop_up(c, reusable);
    nb_pxcreds_unref(c->creds);
    c->creds = NULL;
    nb_log_conn(NB_LOG_DEBUG, c->id, "%s %s -> %d (%" PRIu64 " ms)", x->method, x->auth.host,
                x->resp_status, uv_now(c->px->loop) - x->t0);
    if (!x->client_keepalive || c->close_after || x->resp_out_close || !x->req_done || x->upgrade) {
        nb_px_conn_linger(c);
        return;
    }
    nb_px_exch_reset(c);
    c->parse_paused = 0;
    if (c->in.len)
        nb_px_conn_feed(c);
    else
        nb_px_conn_update_read(c);
}

static void check_done(cconn_t *c)
{
    if (c->state == CS_CLOSING || c->feeding)
        return;
    if (c->x.active && c->x.resp_done && c->x.head_sent && !c->x.oauth_storing)
        exchange_done(c);
}

void nb_px_http_check_done(cconn_t *c)
{
    check_done(c);
}

static void switch_to_pipe(cconn_t *c, const uint8_t *up_left, size_t up_len)
{
    upconn_t *u = c->up;
    nb_px_up_disarm(u);
    if (c->x.resp_redact && nb_px_pipe_scan_ws(c) < 0) {
        nb_px_conn_close(c);
        return;
    }
    if (up_len && nb_px_pipe_up_to_client(c, up_left, up_len) < 0) {
        nb_px_conn_close(c);
        return;
    }
    nb_buf_t held = c->in;
    nb_buf_init(&c->in, held.max);
    nb_px_pipe_start(c, held.p, held.len);
    nb_buf_free(&held);
}

static void up_failed(cconn_t *c, upconn_t *u, const char *token, const char *msg)
{
    exch_t *x = &c->x;
    if (x->resp_head_sent) {
        nb_px_conn_close(c); /* the client sees a truncated response */
        return;
    }
    nb_px_conn_drop_up(c, 0);
    c->px->st.upstream_errors++;
    json_t *d = json_pack("{s:s, s:s}", "reason", token, "message", msg);
    if (d && x->fail_token && !x->oauth)
        json_object_set_new(d, "threat", json_string("A5"));
    if (d && x->oauth && c->oa) { /* which binding and script failed */
        json_object_set_new(d, "oauth", json_string(c->oa->set->v[c->oa->idx].name));
        json_object_set_new(d, "script", json_string(c->oa->set->v[c->oa->idx].script));
    }
    nb_px_record(c, "refusal", x->auth.host, x->auth.port, d);
    nb_px_reply(c, 502, "bad-gateway", token, x->auth.host, msg,
                x->oauth        ? "check the OAuth binding's script ('nilbox oauth test NAME')"
                : x->fail_token ? "the upstream must answer uncompressed, gzip, deflate or br"
                                : "retry; the upstream misbehaved",
                1);
}

static void up_data(upconn_t *u, const uint8_t *p, size_t len)
{
    cconn_t *c = u->ud;
    exch_t *x = &c->x;
    nb_px_conn_touch(c);
    if (!x->head_sent) {
        up_failed(c, u, "upstream-protocol", "the upstream spoke before being asked");
        return;
    }
    size_t off = 0;
    int upgraded = 0;
    c->feeding++;
    nb_pxio_cork(&c->io); /* head + chunk + terminator leave as one record */
    while (off < len) {
        size_t used = 0;
        int r = nb_http_parser_feed(u->rp, p + off, len - off, &used);
        off += used;
        if (c->state == CS_CLOSING) {
            c->feeding--;
            return; /* closing drops what the cork holds */
        }
        if (r == NB_HTTP_MORE)
            continue;
        if (r == NB_HTTP_DONE) {
            if (x->resp_done)
                break;
            continue; /* a 1xx ended; the final response follows */
        }
        if (r == NB_HTTP_UPGRADED) {
            upgraded = 1;
            break;
        }
        c->feeding--;
        nb_pxio_uncork(&c->io);
        if (x->fail_token) {
            up_failed(c, u, x->fail_token, x->fail_msg);
            return;
        }
        char msg[160];
        snprintf(msg, sizeof msg, "the upstream sent a malformed response (%s)",
                 nb_http_err_token(nb_http_parser_error(u->rp)));
        up_failed(c, u, "upstream-protocol", msg);
        return;
    }
    c->feeding--;
    if (nb_pxio_uncork(&c->io) < 0) {
        nb_px_conn_close(c);
        return;
    }
    if (upgraded) {
        switch_to_pipe(c, p + off, len - off);
        return;
    }
    if (x->resp_done) {
        if (off < len)
            x->resp_keepalive = 0; /* bytes after the response: never reuse */
        check_done(c);
        return;
    }
    if (nb_pxio_queued(&c->io) > NB_PXIO_HIGH_WATER)
        nb_pxio_read_stop(&u->io);
}

static void up_eof(upconn_t *u)
{
    cconn_t *c = u->ud;
    exch_t *x = &c->x;
    if (!u->io.failed && x->head_sent) {
        int r = nb_http_parser_finish(u->rp);
        if (c->state == CS_CLOSING)
            return;
        if (r == NB_HTTP_DONE && x->resp_done) {
            x->resp_keepalive = 0;
            check_done(c);
            return;
        }
    }
    if (x->resp_done) {
        x->resp_keepalive = 0;
        check_done(c);
        return;
    }
    /* A pooled connection the upstream had closed: send the request once
     * more on a fresh connection when nothing of it could have been used. */
    if (u->reused && !x->retried && !x->req_has_body && !x->resp_head_sent &&
        !nb_http_parser_in_message(u->rp) && !x->interim) {
        x->retried = 1;
        x->head_sent = 0;
        x->req_sent = 0;
        nb_px_conn_drop_up(c, 0);
        acquire(c);
        return;
    }
    up_failed(c, u, "upstream-closed", "the upstream closed the connection before answering");
}

static void up_timeout(upconn_t *u)
{
    cconn_t *c = u->ud;
    exch_t *x = &c->x;
    if (x->resp_head_sent) {
        nb_px_conn_close(c);
        return;
    }
    nb_px_conn_drop_up(c, 0);
    c->px->st.upstream_errors++;
    nb_px_reply(c, 504, "gateway-timeout", "upstream-timeout", x->auth.host,
                "the upstream did not answer in time", "retry later", 1);
}

void nb_px_http_client_drain(cconn_t *c)
{
    upconn_t *u = c->up;
    if (u && c->x.head_sent && !c->x.resp_done && !u->io.want_read)
        nb_pxio_read_start(&u->io);
}

static void up_drain(upconn_t *u)
{
    nb_px_conn_update_read(u->ud);
}

static const nb_px_up_cbs_t up_cbs = {
    .ready = up_ready,
    .head = resp_on_head,
    .body = resp_on_body,
    .end = resp_on_complete,
    .data = up_data,
    .eof = up_eof,
    .drain = up_drain,
    .timeout = up_timeout,
};

/* ---- client requests ---- */

/* Client authentication (A26): a TCP listener is reachable by every
 * local user; what tells the owner's clients apart is the listener's token
 * in Proxy-Authorization. 0: the request may go on; 1: no credentials; 2:
 * wrong or ambiguous. */
static int auth_check(const cconn_t *c, const nb_http_head_t *h)
{
    const nb_http_header_t *found = NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (h->kinds[i] != NB_HDR_PROXY_AUTHORIZATION)
            continue;
        if (found)
            return 2; /* two credentials: which one would count? neither */
        found = &h->headers[i];
    }
    if (!found)
        return 1;
    return nb_proxy_auth_check((const uint8_t *)c->l->token, c->l->token_len, found->value.p,
                               found->value.len)
               ? 0
               : 2;
}

/* 407: no gate, no upstream, nothing of the request is looked at. */
static void auth_refuse(cconn_t *c)
{
    static const char body[] =
        "{\"error\":\"proxy-auth-required\",\"host\":\"\",\"reason\":\"this proxy needs the "
        "token that 'nilbox proxy' printed\",\"hint\":\"use the proxy URL "
        "http://nilbox:TOKEN@HOST:PORT (Proxy-Authorization: Basic)\"}\n";
    const char *why = c->auth_failed == 1 ? "proxy-auth-required" : "proxy-auth-wrong";
    char head[320];
    nb_px_burst_row(c->px, c->l, &c->l->auth_burst, c->id, why, "A26",
                    c->auth_failed == 1 ? "client without proxy credentials refused (407)"
                                        : "client with wrong proxy credentials refused (407)");
    c->px->st.refused++;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 407 Proxy Authentication Required\r\n"
                     "Proxy-Authenticate: Basic realm=\"nilbox\"\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Nilbox-Reason: %s\r\n"
                     "Cache-Control: no-store\r\n"
                     "Connection: close\r\n\r\n",
                     sizeof body - 1, why);
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)n),
                        uv_buf_init((char *)body, (unsigned)(sizeof body - 1))};
    c->x.resp_head_sent = 1;
    c->x.resp_done = 1;
    nb_pxio_writev(&c->io, bufs, 2);
    nb_px_conn_linger(c);
}

static int rp_on_head(void *ud, const nb_http_head_t *h)
{
    cconn_t *c = ud;
    /* Before anything else looks at the request: requests inside an
     * authenticated CONNECT are covered by it; the guest channel has no
     * token (its one client is the VM). */
    if (!c->tunnel && c->l->token_len && (c->auth_failed = auth_check(c, h)) != 0)
        return NB_EAUTH; /* the parser stops; parse_failed() answers 407 */
    if (c->unauth) {
        c->unauth = 0; /* leaves the unauthenticated budget */
        c->l->nunauth--;
    }
    return req_on_head(c, h);
}

static const nb_http_cbs_t req_cbs = {rp_on_head, req_on_body, req_on_complete};

/* A fresh request parser for the HTTP stream inside a tunnel or on the
 * plain proxy connection. Bodies stream: no body cap. */
int nb_px_conn_start_http(cconn_t *c)
{
    nb_http_limits_t lim;
    nb_http_limits_default(&lim);
    lim.max_body = 0;
    nb_http_parser_free(c->rp);
    c->rp = NULL;
    int r = nb_http_parser_new(NB_HTTP_REQUEST, &lim, &req_cbs, c, &c->rp);
    if (r < 0)
        return r;
    c->parse_paused = 0;
    return 0;
}

static void parse_failed(cconn_t *c)
{
    if (c->auth_failed) {
        auth_refuse(c);
        return;
    }
    nb_http_err_t e = nb_http_parser_error(c->rp);
    if (c->x.reject_status)
        return; /* on_head refused it already; after_feed replies */
    const char *tok = nb_http_err_token(e);
    nb_log_conn(NB_LOG_INFO, c->id, "refusing a malformed request: %s", tok);
    json_t *d = json_pack("{s:s, s:s, s:s}", "reason", tok, "threat", "A15", "stage", "request");
    nb_px_record(c, "refusal", c->tunnel ? c->auth.host : NULL, c->tunnel ? c->auth.port : 0, d);
    c->px->st.refused++;
    if (c->x.resp_head_sent || c->x.head_sent) {
        nb_px_conn_close(c);
        return;
    }
    nb_px_conn_drop_up(c, 0);
    nb_px_reply(c, nb_http_err_status(e), "bad-request", tok, c->tunnel ? c->auth.host : "",
                nb_http_err_message(e), "fix the client: the proxy refuses ambiguous HTTP", 1);
}

/* Feeds held client bytes to the request parser until a message ends (the
 * parser then pauses until the exchange is over). */
void nb_px_conn_feed(cconn_t *c)
{
    if (c->feeding)
        return;
    c->feeding = 1;
    while (!c->parse_paused && c->in.len > 0 && (c->state == CS_START || c->state == CS_HTTP)) {
        size_t used = 0;
        if (!c->head_started && !c->x.head_ok)
            c->head_started = uv_now(c->px->loop);
        int r = nb_http_parser_feed(c->rp, c->in.p, c->in.len, &used);
        nb_buf_consume(&c->in, used);
        if (r == NB_HTTP_MORE)
            continue;
        if (r == NB_HTTP_DONE || r == NB_HTTP_UPGRADED) {
            c->x.req_done = 1;
            c->parse_paused = 1;
            continue;
        }
        c->feeding = 0;
        parse_failed(c);
        return;
    }
    c->feeding = 0;
    if (c->state == CS_START || c->state == CS_HTTP)
        after_feed(c);
    if (c->state != CS_CLOSING)
        nb_px_conn_update_read(c);
}

/* The tunnel's verdict came from a prompt while one of its requests
 * waited (the rule that admitted it was gone). */
static void on_tunnel_regate(void *ud, const nb_gate_verdict_t *v)
{
    cconn_t *c = ud;
    c->wait = NULL;
    c->x.gate_waiting = 0;
    c->pol_gen = nb_gate_generation(c->px->cfg.gate);
    c->pol_why = v->why;
    gate_verdict(c, v);
    if (c->state != CS_CLOSING)
        nb_px_conn_update_read(c);
}

static int tunnel_rejudge(cconn_t *c, nb_gate_verdict_t *v)
{
    nb_gate_t *g = c->px->cfg.gate;
    uint64_t gen = nb_gate_generation(g);
    if (c->pol_gen == gen)
        return 2;
    if (nb_gate_rules_verdict(g, &c->dest, v)) {
        c->pol_gen = gen;
        if (v->allowed) {
            /* An allow-once admission outlives the rule that covers it now. */
            if (c->pol_why != NB_GATE_WHY_ALLOW_ONCE)
                c->pol_why = v->why;
            return 2;
        }
        nb_log_conn(NB_LOG_INFO, c->id, "%s:%u is no longer allowed (%s): request refused",
                    c->auth.host, c->auth.port, nb_gate_why_name(v->why));
        return 1;
    }
    /* No rule decides. An allow-once answer holds for this connection;
     * an admission by a rule that is gone does not: ask again. */
    if (c->pol_why == NB_GATE_WHY_ALLOW_ONCE) {
        c->pol_gen = gen;
        return 2;
    }
    int r = nb_px_gate_check(c, &c->dest, v, on_tunnel_regate);
    if (r == 1) {
        c->pol_gen = gen;
        c->pol_why = v->why;
    }
    return r;
}

static int tunnel_undeny(cconn_t *c)
{
    nb_gate_t *g = c->px->cfg.gate;
    uint64_t gen = nb_gate_generation(g);
    nb_gate_verdict_t v;
    if (c->pol_gen == gen)
        return 0;
    c->pol_gen = gen;
    if (!nb_gate_rules_verdict(g, &c->dest, &v) || !v.allowed)
        return 0;
    nb_px_record_gate(c, c->auth.host, c->auth.port, &v, "policy-change");
    c->deny = 0;
    c->pol_why = v.why;
    return 1;
}
