/* Token exchanges of OAuth bindings (docs/internals/oauth.md).
 *
 * A POST over intercepted TLS to the token endpoint an OAuth binding's
 * script declares is held whole (at most NB_OAUTH_BODY_MAX bytes), its
 * placeholder fields are swapped for the binding's values (oauth.c, in
 * locked memory) and it goes upstream. The response is held whole too,
 * read by the script in its sandbox, and every real token in it (and
 * every value we sent) is replaced by its placeholder before the guest
 * sees a byte. The new tokens are sealed through cfg.oauth_store; the
 * guest's response leaves only once they are in the credential snapshot,
 * so its very next API call can use the placeholder. A script failure or
 * an answer we cannot scrub becomes a 502 naming the script. */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "daemon/egress/proxy_int.h"
#include "lib/err.h"
#include "lib/log.h"

struct nb_px_oauth_op {
    struct nb_px_oauth_op *next, *prev;
    nb_proxy_t *px; /* NULL once the engine is gone */
    uint64_t listener, conn;
};

static const nb_oauth_provider_t *prov(const cconn_t *c)
{
    return &c->oa->set->v[c->oa->idx];
}

void nb_px_oauth_match(cconn_t *c)
{
    exch_t *x = &c->x;
    nb_px_oauth_reset(c);
    if (!c->px->oauth || !x->tls || strcmp(x->method, "POST") != 0)
        return;
    int i = nb_oauth_set_match(c->px->oauth, x->auth.host, x->auth.port, x->origin, c->l->vm);
    if (i < 0 || !(c->oa = calloc(1, sizeof *c->oa)))
        return;
    c->oa->set = nb_oauth_set_ref(c->px->oauth);
    c->oa->idx = i;
    nb_buf_init(&c->oa->body, 2 * NB_OAUTH_BODY_MAX);
    nb_buf_init(&c->oa->head, PX_RESP_HEAD_MAX);
    nb_buf_init(&c->oa->resp, NB_OAUTH_BODY_MAX);
    nb_buf_init(&c->oa->out, 2 * NB_OAUTH_BODY_MAX);
    nb_buf_init(&c->oa->outh, 2 * PX_RESP_HEAD_MAX);
    x->oauth = 1;
}

/* A slot's value: the binding's own secret, by the name its row holds
 * (never a name from the request or the script). */
static int slot_get(void *ctx, int slot, uint8_t *buf, size_t cap, size_t *len)
{
    cconn_t *c = ctx;
    nb_binding_t b;
    memset(&b, 0, sizeof b);
    snprintf(b.secret, sizeof b.secret, "%s", prov(c)->secret[slot]);
    return nb_pxcreds_get(c->creds, &b, buf, cap, len);
}

int nb_px_oauth_request(cconn_t *c)
{
    exch_t *x = &c->x;
    const nb_oauth_provider_t *p = prov(c);
    const char *ph[NB_OAUTH_SLOT_N];
    for (int i = 0; i < NB_OAUTH_SLOT_N; i++)
        ph[i] = p->secret[i];
    int n = 0;
    int r = nb_oauth_rewrite_request(&p->decl, ph, nb_buf_iov(&x->pending), slot_get, c,
                                     &c->oa->body, &n);
    nb_buf_reset(&x->pending);
    if (r == 0) {
        nb_log_conn(NB_LOG_INFO, c->id, "oauth %s: token request to %s, %d value(s) swapped",
                    p->name, x->auth.host, n);
        nb_px_record(c, "inject", x->auth.host, x->auth.port,
                     json_pack("{s:s, s:s, s:i}", "oauth", p->name, "placement", "token-request",
                               "swapped", n));
        return 0;
    }
    nb_px_conn_drop_up(c, 1);
    char msg[300];
    if (r == NB_ENOTFOUND) {
        snprintf(msg, sizeof msg, "the OAuth binding %s has a secret that is not set", p->name);
        nb_px_reply(c, 502, "bad-gateway", "oauth-secret-missing", x->auth.host, msg,
                    "set it with 'nilbox secret set NAME_CLIENT_SECRET'", 1);
    } else {
        snprintf(msg, sizeof msg, "the token request for OAuth binding %s cannot be rewritten (%s)",
                 p->name, nb_strerror(r));
        nb_px_reply(c, 502, "bad-gateway", "oauth-bad-request", x->auth.host, msg,
                    p->decl.request_json ? "send a JSON object body"
                                         : "send an application/x-www-form-urlencoded body",
                    1);
    }
    return -1;
}

nb_iov_t nb_px_oauth_body(cconn_t *c)
{
    return c->oa ? nb_buf_iov(&c->oa->body) : nb_iov(NULL, 0);
}

void nb_px_oauth_body_wipe(cconn_t *c)
{
    if (c->oa)
        nb_buf_free(&c->oa->body);
}

int nb_px_oauth_resp_head(cconn_t *c, const nb_http_head_t *h, const uint8_t *head, size_t len)
{
    struct nb_px_oauth *oa = c->oa;
    oa->status = h->status;
    const nb_http_header_t *ct = nb_http_head_find(h, "content-type");
    snprintf(oa->ctype, sizeof oa->ctype, "%.*s", ct ? (int)ct->value.len : 0,
             ct ? (const char *)ct->value.p : "");
    for (size_t i = 0; i < h->nheaders; i++)
        if (nb_iov_eq_nocase(h->headers[i].name, "content-encoding") &&
            !nb_iov_eq_nocase(h->headers[i].value, "identity")) {
            c->x.fail_token = "oauth-encoded-response";
            snprintf(c->x.fail_msg, sizeof c->x.fail_msg,
                     "the token endpoint answered with a compressed body, which the proxy "
                     "does not rewrite");
            return NB_EUNSUPPORTED;
        }
    nb_buf_reset(&oa->head);
    return nb_buf_append(&oa->head, head, len);
}

int nb_px_oauth_resp_body(cconn_t *c, const uint8_t *p, size_t len)
{
    int r = nb_buf_append(&c->oa->resp, p, len);
    if (r == NB_ETOOBIG) {
        c->x.fail_token = "oauth-response-too-large";
        snprintf(c->x.fail_msg, sizeof c->x.fail_msg,
                 "the token endpoint's answer is over %d bytes", NB_OAUTH_BODY_MAX);
    }
    return r;
}

static int sink(void *ud, const uint8_t *p, size_t len)
{
    cconn_t *c = ud;
    return nb_pxio_write_body(&c->io, p, len, !c->sink_raw && c->x.resp_out_chunked);
}

/* The held head and the scrubbed body go to the client. */
static int send_out(cconn_t *c)
{
    exch_t *x = &c->x;
    struct nb_px_oauth *oa = c->oa;
    int r;
    x->resp_head_sent = 1;
    if (x->resp_redact) {
        c->sink_raw = 1;
        r = nb_redact_feed(c->red, oa->outh.p, oa->outh.len, sink, c);
        c->sink_raw = 0;
        if (r == 0 && oa->out.len)
            r = nb_redact_feed(c->red, oa->out.p, oa->out.len, sink, c);
        if (r == 0)
            r = nb_redact_finish(c->red, sink, c);
    } else {
        r = nb_pxio_write(&c->io, oa->outh.p, oa->outh.len);
        if (r == 0 && oa->out.len)
            r = sink(c, oa->out.p, oa->out.len);
    }
    if (r == 0 && x->resp_out_chunked)
        r = nb_pxio_write(&c->io, "0\r\n\r\n", 5);
    nb_buf_free(&oa->out);
    nb_buf_free(&oa->outh);
    nb_buf_free(&oa->resp);
    return r;
}

/* Needles: values that must never reach the guest, each with its
 * placeholder; a value with '/' also in its JSON-escaped form. */
typedef struct {
    uint8_t *mem; /* locked, holds every needle */
    size_t used, cap;
    nb_iov_t v[12];
    const char *repl[12];
    size_t n;
} needles_t;

static void needle_add(needles_t *nd, const uint8_t *p, size_t len, const char *repl)
{
    if (!p || !len || nd->n + 2 > 12)
        return;
    for (int esc = 0; esc < 2; esc++) {
        size_t extra = 0;
        for (size_t i = 0; esc && i < len; i++)
            extra += p[i] == '/';
        if (esc && !extra)
            break;
        if (len + extra > nd->cap - nd->used)
            return;
        uint8_t *d = nd->mem + nd->used;
        size_t k = 0;
        for (size_t i = 0; i < len; i++) {
            if (esc && p[i] == '/')
                d[k++] = '\\';
            d[k++] = p[i];
        }
        nd->v[nd->n] = nb_iov(d, k);
        nd->repl[nd->n++] = repl;
        nd->used += k;
    }
}

static int scrub(cconn_t *c, const nb_oauth_tokens_t *t)
{
    struct nb_px_oauth *oa = c->oa;
    const nb_oauth_provider_t *p = prov(c);
    needles_t nd = {.cap = 6 * NB_OAUTH_TOKEN_MAX};
    if (!(nd.mem = sodium_malloc(nd.cap)))
        return -ENOMEM;
    uint8_t *tmp = sodium_malloc(NB_OAUTH_TOKEN_MAX);
    int r = tmp ? 0 : -ENOMEM;
    if (t) {
        needle_add(&nd, t->access, t->access_len, p->access);
        needle_add(&nd, t->refresh, t->refresh_len, p->secret[NB_OAUTH_SLOT_REFRESH_TOKEN]);
    }
    for (int s = 0; r == 0 && s < NB_OAUTH_SLOT_N; s++) {
        size_t len = 0;
        if (slot_get(c, s, tmp, NB_OAUTH_TOKEN_MAX, &len) == 0)
            needle_add(&nd, tmp, len, p->secret[s]);
    }
    sodium_free(tmp);
    if (r == 0)
        r = nb_oauth_replace(nb_buf_iov(&oa->resp), nd.v, nd.repl, nd.n, &oa->out);
    if (r == 0)
        r = nb_oauth_replace(nb_buf_iov(&oa->head), nd.v, nd.repl, nd.n, &oa->outh);
    sodium_free(nd.mem);
    return r;
}

static void on_stored(void *opv, int status)
{
    struct nb_px_oauth_op *op = opv;
    nb_proxy_t *px = op->px;
    if (!px) {
        free(op);
        return;
    }
    if (op->prev)
        op->prev->next = op->next;
    else
        px->oauth_ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    cconn_t *c = NULL;
    for (nb_proxy_listener_t *l = px->listeners; l && !c; l = l->next)
        if (l->id == op->listener)
            for (cconn_t *k = l->conns; k; k = k->next)
                if (k->id == op->conn) {
                    c = k;
                    break;
                }
    free(op);
    if (!c || !c->oa || !c->x.oauth_storing || c->state == CS_CLOSING)
        return;
    exch_t *x = &c->x;
    x->oauth_storing = 0;
    if (status < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "the tokens of OAuth binding %s could not be sealed (%s)",
                 prov(c)->name, nb_strerror(status));
        nb_px_reply(c, 502, "bad-gateway", "oauth-store-failed", x->auth.host, msg,
                    "check 'nilbox secret status' and retry", 1);
        return;
    }
    nb_pxio_cork(&c->io);
    int r = send_out(c);
    if (nb_pxio_uncork(&c->io) < 0 || r < 0) {
        nb_px_conn_close(c);
        return;
    }
    px->http_check_done(c);
}

static int fail(cconn_t *c, const char *token, const char *msg)
{
    c->x.fail_token = token;
    nb_str_copy(c->x.fail_msg, sizeof c->x.fail_msg, msg); /* cut to fit */
    nb_log_conn(NB_LOG_WARN, c->id, "%s", msg);
    return NB_EPROTO;
}

int nb_px_oauth_resp_complete(cconn_t *c)
{
    exch_t *x = &c->x;
    struct nb_px_oauth *oa = c->oa;
    const nb_oauth_provider_t *p = prov(c);
    nb_oauth_tokens_t t;
    char err[256];
    nb_oauth_limits_t lim;
    nb_oauth_limits_default(&lim);
    lim.quiet = 1;
    int r = nb_oauth_parse(p->src, p->srclen, p->script, &lim, oa->status, nb_buf_iov(&oa->resp),
                           nb_iov(oa->ctype, strlen(oa->ctype)), &t, err, sizeof err);
    if (r < 0) /* up_failed() answers 502 and writes the refusal row */
        return fail(c, "oauth-script-error", err);
    int have = r == 0;
    r = scrub(c, have ? &t : NULL);
    /* Whatever the rewrite missed (a token escaped in a way we do not
     * know) must not leave: the answer is refused instead. */
    if (r == 0 && have &&
        (memmem(oa->out.p ? oa->out.p : (uint8_t *)"", oa->out.len, t.access, t.access_len) ||
         (t.refresh &&
          memmem(oa->out.p ? oa->out.p : (uint8_t *)"", oa->out.len, t.refresh, t.refresh_len))))
        r = NB_EPROTO;
    if (r < 0) {
        nb_oauth_tokens_free(&t);
        snprintf(err, sizeof err, "oauth script %s: the token response cannot be rewritten",
                 p->script);
        return fail(c, "oauth-unscrubbable", err);
    }
    if (!have)
        return send_out(c); /* an error answer: nothing to seal */
    if (!c->px->cfg.oauth_store || c->px->closing) {
        nb_oauth_tokens_free(&t);
        return fail(c, "oauth-store-failed", "no token store is configured");
    }
    struct nb_px_oauth_op *op = calloc(1, sizeof *op);
    if (!op) {
        nb_oauth_tokens_free(&t);
        return -ENOMEM;
    }
    op->px = c->px;
    op->listener = c->l->id;
    op->conn = c->id;
    op->next = c->px->oauth_ops;
    if (op->next)
        op->next->prev = op;
    c->px->oauth_ops = op;
    x->oauth_storing = 1;
    nb_log_conn(NB_LOG_INFO, c->id, "oauth %s: new tokens (expires in %lld s), sealing", p->name,
                (long long)t.expires_in);
    r = c->px->cfg.oauth_store(c->px->cfg.oauth_ud, p, &t, on_stored, op);
    nb_oauth_tokens_free(&t);
    if (r < 0) {
        x->oauth_storing = 0;
        op->px = NULL;
        c->px->oauth_ops = op->next;
        if (op->next)
            op->next->prev = NULL;
        free(op);
        return fail(c, "oauth-store-failed", "the token store refused the tokens");
    }
    return 0;
}

void nb_px_oauth_engine_free(nb_proxy_t *px)
{
    for (struct nb_px_oauth_op *op = px->oauth_ops; op; op = op->next)
        op->px = NULL; /* freed by their completion */
    px->oauth_ops = NULL;
    nb_oauth_set_unref(px->oauth);
    px->oauth = NULL;
}
