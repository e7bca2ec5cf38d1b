#include "daemon/egress/inject.h"

#include "daemon/egress/sigv4.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/hostname.h"
#include "lib/err.h"
#include "lib/log.h"

/* How a binding relates to this request, from least to most applicable. */
enum { ST_NONE, ST_OTHER_VM, ST_OTHER_PATH, ST_CLEARTEXT, ST_USABLE };

#define MAX_FETCH NB_INJECT_MAX_REPORT
#define MAX_CONSUMED 16
#define BASIC_MAX 1024

typedef struct {
    nb_iov_t path;  /* empty for authority-form and "*" */
    nb_iov_t query; /* after '?', without it; p == NULL when absent */
} target_t;

/* A value in the output's locked work area (an offset: the area may move). */
typedef struct {
    size_t off, len;
} val_t;

typedef struct {
    const nb_inject_req_t *req;
    const nb_inject_dest_t *dest;
    const nb_binding_t *b;
    size_t nb;
    const char *const *known;
    size_t nknown;
    nb_inject_get_fn get;
    void *ctx;
    nb_redact_t *redact;
    nb_inject_out_t *out;
    target_t t;
    struct {
        const nb_binding_t *b;
        val_t v;
    } fetched[MAX_FETCH];
    size_t nfetched;
    /* target ranges already substituted (offsets into req->target) */
    size_t cons_from[MAX_CONSUMED], cons_to[MAX_CONSUMED];
    size_t ncons;
} ictx_t;

const char *nb_inject_leak_threat(int kind)
{
    switch (kind) {
    case NB_LEAK_OTHER_HOST:
        return "A3";
    case NB_LEAK_PLACEMENT:
        return "A4";
    case NB_LEAK_CLEARTEXT:
        return "A7";
    case NB_LEAK_OTHER_VM:
        return "A9";
    default:
        return "?";
    }
}

int nb_inject_out_init(nb_inject_out_t *o, size_t cap)
{
    memset(o, 0, sizeof(*o));
    o->p = sodium_malloc(cap ? cap : 1);
    o->work = sodium_malloc(NB_INJECT_WORK_DEFAULT);
    if (!o->p || !o->work) {
        nb_inject_out_free(o);
        return -ENOMEM;
    }
    o->cap = cap;
    o->work_cap = NB_INJECT_WORK_DEFAULT;
    return 0;
}

void nb_inject_out_wipe(nb_inject_out_t *o)
{
    if (o->p)
        sodium_memzero(o->p, o->len);
    o->len = 0;
}

void nb_inject_out_free(nb_inject_out_t *o)
{
    sodium_free(o->p); /* wipes */
    sodium_free(o->work);
    memset(o, 0, sizeof(*o));
}

static uint8_t *W(const ictx_t *c, size_t off)
{
    return c->out->work + off;
}

/* Reserves n bytes of the locked work area; grows it (rarely) when full. */
static int work_alloc(ictx_t *c, size_t n, size_t *off)
{
    nb_inject_out_t *o = c->out;
    if (n > o->work_cap - o->work_used) {
        size_t nc = o->work_cap * 2;
        while (nc - o->work_used < n)
            nc *= 2;
        uint8_t *nw = sodium_malloc(nc);
        if (!nw)
            return -ENOMEM;
        memcpy(nw, o->work, o->work_used);
        sodium_free(o->work);
        o->work = nw;
        o->work_cap = nc;
    }
    *off = o->work_used;
    o->work_used += n;
    return 0;
}

static int put(ictx_t *c, const void *p, size_t n)
{
    nb_inject_out_t *o = c->out;
    if (n > o->cap - o->len)
        return NB_ETOOBIG;
    if (n)
        memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

static int is_word(uint8_t ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
}

static int iov_eq_str(nb_iov_t a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && memcmp(a.p, s, n) == 0;
}

/* ---- the request target ------------------------------------------------------ */

static int parse_target(ictx_t *c)
{
    nb_iov_t t = c->req->target;
    target_t *o = &c->t;
    memset(o, 0, sizeof(*o));
    size_t i = 0;
    if (t.len > 0 && t.p[0] != '/') {
        if (t.len == 1 && t.p[0] == '*')
            return 0;
        /* absolute-form: the authority must be the approved host (A1). */
        size_t sl = 0;
        if (t.len >= 7 && nb_iov_eq_nocase(nb_iov(t.p, 7), "http://"))
            sl = 7;
        else if (t.len >= 8 && nb_iov_eq_nocase(nb_iov(t.p, 8), "https://"))
            sl = 8;
        else
            return 0; /* authority-form (CONNECT): no path, no query */
        size_t a = sl;
        while (a < t.len && t.p[a] != '/' && t.p[a] != '?' && t.p[a] != '#')
            a++;
        nb_iov_t auth = nb_iov(t.p + sl, a - sl);
        if (memchr(auth.p, '@', auth.len))
            return NB_EDENIED; /* userinfo: never ours to interpret */
        size_t hl = auth.len;
        if (hl && auth.p[0] == '[') {
            const uint8_t *close = memchr(auth.p, ']', auth.len);
            hl = close ? (size_t)(close - auth.p) + 1 : 0;
        } else {
            const uint8_t *colon = memchr(auth.p, ':', auth.len);
            if (colon)
                hl = (size_t)(colon - auth.p);
        }
        char norm[NB_HOSTNAME_BUFSZ];
        nb_ipaddr_t ip;
        if (nb_ip_parse((const char *)auth.p, hl, &ip))
            nb_ip_format(&ip, norm, sizeof(norm));
        else if (nb_hostname_normalize((const char *)auth.p, hl, norm, sizeof(norm)) < 0)
            return NB_EDENIED;
        if (strcmp(norm, c->dest->host) != 0)
            return NB_EDENIED;
        i = a;
    }
    size_t ps = i;
    while (i < t.len && t.p[i] != '?' && t.p[i] != '#')
        i++;
    o->path = nb_iov(t.p + ps, i - ps);
    if (i < t.len && t.p[i] == '?') {
        size_t qs = ++i;
        while (i < t.len && t.p[i] != '#')
            i++;
        o->query = nb_iov(t.p + qs, i - qs);
    }
    return 0;
}

/* ---- bindings ------------------------------------------------------------------ */

static int binding_state(const ictx_t *c, const nb_binding_t *b)
{
    if (!nb_binding_host_ok(b, c->dest->host))
        return ST_NONE;
    const char *vm = c->dest->vm ? c->dest->vm : "";
    if (b->vm[0] && strcmp(b->vm, vm) != 0)
        return ST_OTHER_VM;
    if (!nb_binding_path_ok(b, c->t.path))
        return ST_OTHER_PATH;
    if (!c->dest->tls && !b->allow_cleartext)
        return ST_CLEARTEXT;
    return ST_USABLE;
}

/* The secret of a matched binding, fetched once per request into the
 * locked work area. */
static int fetch(ictx_t *c, const nb_binding_t *b, val_t *out)
{
    for (size_t i = 0; i < c->nfetched; i++) {
        if (strcmp(c->fetched[i].b->secret, b->secret) == 0) {
            *out = c->fetched[i].v;
            return 0;
        }
    }
    nb_inject_out_t *o = c->out;
    size_t len = 0;
    int r = c->get(c->ctx, b, o->work + o->work_used, o->work_cap - o->work_used, &len);
    if (r == NB_ETOOBIG) {
        size_t off;
        /* Make room for the largest value, then give the space back. */
        if ((r = work_alloc(c, NB_SECRETS_VALUE_MAX, &off)) < 0)
            return r;
        o->work_used = off;
        r = c->get(c->ctx, b, o->work + o->work_used, o->work_cap - o->work_used, &len);
    }
    if (r < 0)
        return r;
    if (len == 0 || len > o->work_cap - o->work_used)
        return NB_EINVAL;
    out->off = o->work_used;
    out->len = len;
    o->work_used += len;
    if (c->nfetched < MAX_FETCH) { /* past that, fetched again when needed */
        c->fetched[c->nfetched].b = b;
        c->fetched[c->nfetched++].v = *out;
    }
    return 0;
}

static void note_injection(ictx_t *c, const nb_binding_t *b)
{
    nb_inject_out_t *o = c->out;
    for (size_t i = 0; i < o->ninjected; i++)
        if (o->injected[i].binding_id == b->id && strcmp(o->injected[i].secret, b->secret) == 0)
            return;
    if (o->ninjected == NB_INJECT_MAX_REPORT)
        return;
    nb_inject_done_t *d = &o->injected[o->ninjected++];
    snprintf(d->secret, sizeof(d->secret), "%s", b->secret);
    d->binding_id = b->id;
    d->placement = b->placement;
}

static int redact_add(ictx_t *c, const void *v, size_t vl, const void *rep, size_t rl)
{
    if (!c->redact)
        return 0;
    int r = nb_redact_add(c->redact, v, vl, rep, rl);
    return r == NB_ETOOBIG ? 0 : r; /* full: the earlier pairs still protect */
}

/* ---- leak reports ------------------------------------------------------------ */

static void report(ictx_t *c, const char *name, size_t nl, const char *where, nb_iov_t wname)
{
    int best = -1;
    for (size_t i = 0; i < c->nb; i++) {
        if (strlen(c->b[i].secret) == nl && memcmp(c->b[i].secret, name, nl) == 0) {
            int st = binding_state(c, &c->b[i]);
            if (st > best)
                best = st;
        }
    }
    int kind = best == ST_USABLE || best == ST_OTHER_PATH ? NB_LEAK_PLACEMENT
               : best == ST_CLEARTEXT                     ? NB_LEAK_CLEARTEXT
               : best == ST_OTHER_VM                      ? NB_LEAK_OTHER_VM
                                                          : NB_LEAK_OTHER_HOST;
    char w[NB_INJECT_WHERE_MAX];
    char esc[NB_INJECT_WHERE_MAX];
    if (wname.len)
        snprintf(w, sizeof(w), "%s:%s", where, nb_log_escape(esc, 64, wname.p, wname.len));
    else
        snprintf(w, sizeof(w), "%s", where);
    nb_inject_out_t *o = c->out;
    size_t keep = o->nleaks < NB_INJECT_MAX_REPORT ? o->nleaks : NB_INJECT_MAX_REPORT;
    for (size_t i = 0; i < keep; i++)
        if (o->leaks[i].kind == kind && strlen(o->leaks[i].secret) == nl &&
            memcmp(o->leaks[i].secret, name, nl) == 0 && strcmp(o->leaks[i].where, w) == 0)
            return;
    if (o->nleaks < NB_INJECT_MAX_REPORT) {
        nb_inject_leak_t *l = &o->leaks[o->nleaks];
        memcpy(l->secret, name, nl);
        l->secret[nl] = '\0';
        l->kind = kind;
        snprintf(l->where, sizeof(l->where), "%s", w);
    }
    o->nleaks++;
}

static int known_name(const ictx_t *c, const uint8_t *p, size_t n, const char **name)
{
    for (size_t i = 0; i < c->nb; i++)
        if (strlen(c->b[i].secret) == n && memcmp(c->b[i].secret, p, n) == 0) {
            *name = c->b[i].secret;
            return 1;
        }
    for (size_t i = 0; i < c->nknown; i++)
        if (strlen(c->known[i]) == n && memcmp(c->known[i], p, n) == 0) {
            *name = c->known[i];
            return 1;
        }
    return 0;
}

/* Reports every whole-token occurrence of a known name in `s`. For the
 * target, offsets inside substituted ranges are skipped. */
static void scan(ictx_t *c, nb_iov_t s, const char *where, nb_iov_t wname, int is_target)
{
    size_t i = 0;
    while (i < s.len) {
        if (!is_word(s.p[i])) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < s.len && is_word(s.p[j]))
            j++;
        const char *name;
        int skip = 0;
        if (is_target) {
            size_t off = (size_t)(s.p + i - c->req->target.p);
            for (size_t k = 0; k < c->ncons; k++)
                skip |= off >= c->cons_from[k] && off < c->cons_to[k];
        }
        if (!skip && j - i <= NB_SECRETS_NAME_MAX && known_name(c, s.p + i, j - i, &name))
            report(c, name, j - i, where, wname);
        i = j;
    }
}

/* ---- Basic credentials ------------------------------------------------------- */

/* Decodes "Basic <b64>" into buf; returns the length or -1. */
static int basic_decode(nb_iov_t v, uint8_t *buf, size_t cap)
{
    if (v.len < 6 || !nb_iov_eq_nocase(nb_iov(v.p, 6), "basic "))
        return -1;
    size_t i = 6;
    while (i < v.len && v.p[i] == ' ')
        i++;
    size_t bl = 0;
    const char *end = NULL;
    if (i == v.len ||
        sodium_base642bin(buf, cap, (const char *)v.p + i, v.len - i, NULL, &bl, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != (const char *)v.p + v.len)
        return -1;
    return (int)bl;
}

static int redact_basic(ictx_t *c, const nb_binding_t *b, const char *enc);
static int watch_all(ictx_t *c);

/* base64("user:value") of Basic binding b into the work area (*eoff). */
static int encode_basic(ictx_t *c, const nb_binding_t *b, val_t v, size_t *eoff)
{
    size_t ul = strlen(b->user), cl = ul + 1 + v.len, coff;
    size_t el = sodium_base64_ENCODED_LEN(cl, sodium_base64_VARIANT_ORIGINAL);
    int r;
    if ((r = work_alloc(c, cl, &coff)) < 0 || (r = work_alloc(c, el, eoff)) < 0)
        return r;
    uint8_t *cred = W(c, coff);
    memcpy(cred, b->user, ul);
    cred[ul] = ':';
    memcpy(cred + ul + 1, W(c, v.off), v.len);
    sodium_bin2base64((char *)W(c, *eoff), el, cred, cl, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(cred, cl);
    return 0;
}

static int write_basic(ictx_t *c, nb_iov_t name, const nb_binding_t *b, val_t v)
{
    size_t eoff;
    int r;
    if ((r = encode_basic(c, b, v, &eoff)) < 0)
        return r;
    const char *enc = (const char *)W(c, eoff);
    if ((r = put(c, name.p, name.len)) < 0 || (r = put(c, ": Basic ", 8)) < 0 ||
        (r = put(c, enc, strlen(enc))) < 0 || (r = put(c, "\r\n", 2)) < 0)
        return r;
    /* The echo of either the value or the whole credential is redacted. */
    if ((r = redact_add(c, W(c, v.off), v.len, b->secret, strlen(b->secret))) < 0)
        return r;
    return redact_basic(c, b, enc);
}

/* Registers the base64 credential `enc` of Basic binding b, replaced by
 * the base64 of "user:NAME" (what the guest sent). */
static int redact_basic(ictx_t *c, const nb_binding_t *b, const char *enc)
{
    size_t ul = strlen(b->user);
    char ph[BASIC_MAX * 2];
    uint8_t phc[BASIC_MAX];
    size_t pcl = ul + 1 + strlen(b->secret);
    if (pcl > sizeof(phc))
        return 0;
    memcpy(phc, b->user, ul);
    phc[ul] = ':';
    memcpy(phc + ul + 1, b->secret, strlen(b->secret));
    sodium_bin2base64(ph, sizeof(ph), phc, pcl, sodium_base64_VARIANT_ORIGINAL);
    return redact_add(c, enc, strlen(enc), ph, strlen(ph));
}

/* ---- headers ------------------------------------------------------------------- */

static int value_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f)
            return 0;
    return 1;
}

/* 1 when `v` equals tmpl with "{secret}" replaced by `name`. */
static int matches_template(nb_iov_t v, const char *tmpl, const char *name, size_t *pre,
                            size_t *post)
{
    const char *ph = strstr(tmpl, "{secret}");
    if (!ph)
        return 0;
    size_t pl = (size_t)(ph - tmpl), sl = strlen(ph + 8), nl = strlen(name);
    *pre = pl;
    *post = sl;
    return v.len == pl + nl + sl && memcmp(v.p, tmpl, pl) == 0 && memcmp(v.p + pl, name, nl) == 0 &&
           memcmp(v.p + pl + nl, ph + 8, sl) == 0;
}

/* 1 when usable HEADER binding b fills header h: pre and post are the
 * template's text around the value. */
static int header_fills(const ictx_t *c, const nb_binding_t *b, const nb_inject_header_t *h,
                        size_t *pre, size_t *post)
{
    return b->placement == NB_PLACE_HEADER && nb_iov_eq_nocase(h->name, b->header) &&
           binding_state(c, b) == ST_USABLE &&
           matches_template(h->value, b->tmpl, b->secret, pre, post);
}

/* 1 when usable BASIC binding b fills the decoded Basic credential
 * cred[0..cl) ("user:PLACEHOLDER"; cl < 0: none). */
static int basic_fills(const ictx_t *c, const nb_binding_t *b, const uint8_t *cred, int cl)
{
    size_t ul = strlen(b->user), nl = strlen(b->secret);
    return b->placement == NB_PLACE_BASIC && cl >= 0 && (size_t)cl == ul + 1 + nl &&
           memcmp(cred, b->user, ul) == 0 && cred[ul] == ':' &&
           memcmp(cred + ul + 1, b->secret, nl) == 0 && binding_state(c, b) == ST_USABLE;
}

/* The Basic credential of header h decoded into cred (an Authorization
 * header only), or -1. */
static int header_basic(const nb_inject_header_t *h, uint8_t *cred, size_t cap)
{
    return nb_iov_eq_nocase(h->name, "authorization") ? basic_decode(h->value, cred, cap) : -1;
}

/* 1 when some usable binding would put its value into header h (what
 * do_header decides, without fetching anything). */
static int substitutes(const ictx_t *c, const nb_inject_header_t *h)
{
    uint8_t cred[BASIC_MAX];
    int cl = header_basic(h, cred, sizeof(cred)), hit = 0;
    for (size_t i = 0; i < c->nb && !hit; i++) {
        size_t pre, post;
        hit = header_fills(c, &c->b[i], h, &pre, &post) || basic_fills(c, &c->b[i], cred, cl);
    }
    sodium_memzero(cred, sizeof(cred));
    return hit;
}

/* One `&`-separated parameter of a query: all of it, its name (all of it
 * when there is no '='), its value (p NULL when there is no '='), and
 * whether it is the last one. */
typedef struct {
    nb_iov_t all, name, value;
    int last;
} qparam_t;

/* The parameter from *i on; *i moves past it. 0 once the query is used up. */
static int next_param(nb_iov_t q, size_t *i, qparam_t *p)
{
    if (*i > q.len)
        return 0;
    size_t e = *i;
    while (e < q.len && q.p[e] != '&')
        e++;
    p->all = nb_iov(q.p + *i, e - *i);
    const uint8_t *eq = memchr(p->all.p, '=', p->all.len);
    p->name = nb_iov(p->all.p, eq ? (size_t)(eq - p->all.p) : p->all.len);
    p->value = eq ? nb_iov(eq + 1, p->all.len - p->name.len - 1) : nb_iov(NULL, 0);
    p->last = e >= q.len;
    *i = e + 1;
    return 1;
}

/* A credential header that appears more than once (another field of the
 * same name, whatever its value), or a credential query parameter named
 * twice, would leave it to the upstream which one counts, and could make
 * it combine the real value with text the guest chose: such a request
 * gets no value at all (NB_EPROTO, A4). */
static int ambiguous_query(const ictx_t *c)
{
    nb_iov_t q = c->t.query;
    for (size_t k = 0; q.p && k < c->nb; k++) {
        const nb_binding_t *b = &c->b[k];
        if (b->placement != NB_PLACE_QUERY)
            continue;
        size_t named = 0, filled = 0, i = 0;
        qparam_t p;
        while (next_param(q, &i, &p))
            if (iov_eq_str(p.name, b->param)) {
                named++;
                filled += p.value.p && iov_eq_str(p.value, b->secret);
            }
        if (named > 1 && filled && binding_state(c, b) == ST_USABLE)
            return 1;
    }
    return 0;
}

static int ambiguous_credentials(const ictx_t *c)
{
    const nb_inject_req_t *q = c->req;
    if (ambiguous_query(c))
        return 1;
    for (size_t i = 0; i < q->nheaders; i++) {
        if (!substitutes(c, &q->headers[i]))
            continue;
        for (size_t j = 0; j < q->nheaders; j++)
            if (j != i && q->headers[j].name.len == q->headers[i].name.len &&
                nb_iov_eq_nocase_n(q->headers[j].name, (const char *)q->headers[i].name.p,
                                   q->headers[i].name.len))
                return 1;
    }
    return 0;
}

static int do_header(ictx_t *c, const nb_inject_header_t *h)
{
    int r;
    val_t v;
    for (size_t i = 0; i < c->nb; i++) {
        const nb_binding_t *b = &c->b[i];
        size_t pre, post;
        if (!header_fills(c, b, h, &pre, &post))
            continue;
        if ((r = fetch(c, b, &v)) < 0)
            return r;
        if (!value_ok(W(c, v.off), v.len)) {
            nb_log(NB_LOG_ERR, "inject: the value of %s cannot go in a header (control bytes)",
                   b->secret);
            return NB_EINVAL;
        }
        if ((r = put(c, h->name.p, h->name.len)) < 0 || (r = put(c, ": ", 2)) < 0 ||
            (r = put(c, b->tmpl, pre)) < 0 || (r = put(c, W(c, v.off), v.len)) < 0 ||
            (r = put(c, b->tmpl + strlen(b->tmpl) - post, post)) < 0 || (r = put(c, "\r\n", 2)) < 0)
            return r;
        note_injection(c, b);
        return redact_add(c, W(c, v.off), v.len, b->secret, strlen(b->secret));
    }
    uint8_t cred[BASIC_MAX];
    int cl = header_basic(h, cred, sizeof(cred));
    if (cl >= 0) {
        for (size_t i = 0; i < c->nb; i++) {
            const nb_binding_t *b = &c->b[i];
            if (!basic_fills(c, b, cred, cl))
                continue;
            if ((r = fetch(c, b, &v)) < 0 || (r = write_basic(c, h->name, b, v)) < 0)
                return r;
            note_injection(c, b);
            return 0;
        }
        scan(c, nb_iov(cred, (size_t)cl), "basic", h->name, 0);
    }
    scan(c, h->value, "header", h->name, 0);
    scan(c, h->name, "header-name", nb_iov(NULL, 0), 0);
    if ((r = put(c, h->name.p, h->name.len)) < 0 || (r = put(c, ": ", 2)) < 0 ||
        (r = put(c, h->value.p, h->value.len)) < 0 || (r = put(c, "\r\n", 2)) < 0)
        return r;
    return 0;
}

/* ---- query ----------------------------------------------------------------------- */

/* Writes value v percent-encoded (unreserved kept) and registers both
 * spellings with the redactor. */
static int put_pct(ictx_t *c, val_t v, const char *name)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t eoff, o = 0;
    int r = work_alloc(c, 3 * v.len, &eoff);
    if (r < 0)
        return r;
    const uint8_t *p = W(c, v.off);
    char *enc = (char *)W(c, eoff);
    for (size_t i = 0; i < v.len; i++) {
        uint8_t ch = p[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            enc[o++] = (char)ch;
        } else {
            enc[o++] = '%';
            enc[o++] = hex[ch >> 4];
            enc[o++] = hex[ch & 15];
        }
    }
    if ((r = put(c, enc, o)) < 0 || (r = redact_add(c, p, v.len, name, strlen(name))) < 0)
        return r;
    return redact_add(c, enc, o, name, strlen(name));
}

/* Writes the target, substituting query parameters per QUERY bindings. */
static int do_target(ictx_t *c)
{
    nb_iov_t t = c->req->target, q = c->t.query;
    if (!q.p)
        return put(c, t.p, t.len);
    size_t qoff = (size_t)(q.p - t.p);
    int r;
    if ((r = put(c, t.p, qoff)) < 0)
        return r;
    size_t i = 0;
    qparam_t p;
    while (next_param(q, &i, &p)) {
        int done = 0;
        for (size_t k = 0; p.value.p && k < c->nb && !done; k++) {
            const nb_binding_t *b = &c->b[k];
            if (b->placement != NB_PLACE_QUERY || !iov_eq_str(p.name, b->param) ||
                !iov_eq_str(p.value, b->secret) || binding_state(c, b) != ST_USABLE)
                continue;
            val_t v;
            if ((r = fetch(c, b, &v)) < 0 || (r = put(c, p.name.p, p.name.len + 1)) < 0 ||
                (r = put_pct(c, v, b->secret)) < 0)
                return r;
            note_injection(c, b);
            if (c->ncons < MAX_CONSUMED) {
                c->cons_from[c->ncons] = (size_t)(p.value.p - t.p);
                c->cons_to[c->ncons++] = (size_t)(p.value.p - t.p) + p.value.len;
            }
            done = 1;
        }
        if (!done && (r = put(c, p.all.p, p.all.len)) < 0)
            return r;
        if (!p.last && (r = put(c, "&", 1)) < 0)
            return r;
    }
    size_t rest = qoff + q.len;
    return put(c, t.p + rest, t.len - rest); /* a fragment, if any */
}

int nb_inject_head(const nb_inject_req_t *req, const nb_inject_dest_t *dest,
                   const nb_binding_t *bindings, size_t nbindings, const char *const *known,
                   size_t nknown, nb_inject_get_fn get, void *ctx, nb_redact_t *redact,
                   nb_inject_out_t *out)
{
    ictx_t cs = {.req = req,
                 .dest = dest,
                 .b = bindings,
                 .nb = nbindings,
                 .known = known,
                 .nknown = nknown,
                 .get = get,
                 .ctx = ctx,
                 .redact = redact,
                 .out = out};
    ictx_t *c = &cs;
    nb_inject_out_wipe(out);
    out->ninjected = out->nleaks = 0;
    int r;
    if ((r = parse_target(c)) < 0)
        goto out;
    if (ambiguous_credentials(c)) {
        r = NB_EPROTO;
        goto out;
    }
    const char *ver = req->version_minor ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n";
    if ((r = put(c, req->method.p, req->method.len)) < 0 || (r = put(c, " ", 1)) < 0 ||
        (r = do_target(c)) < 0 || (r = put(c, ver, 11)) < 0)
        goto out;
    scan(c, req->target, "target", nb_iov(NULL, 0), 1);
    for (size_t i = 0; i < req->nheaders; i++)
        if ((r = do_header(c, &req->headers[i])) < 0)
            goto out;
    r = put(c, "\r\n", 2);
    if (r == 0 && dest->watch && redact)
        r = watch_all(c);
out:
    sodium_memzero(out->work, out->work_used);
    out->work_used = 0;
    if (r < 0) {
        nb_inject_out_wipe(out);
        out->ninjected = 0;
    }
    return r;
}

/* AWS credentials: each part is watched for with its placeholder as the
 * replacement. The secret key is never sent (it only signs), the key id
 * and session token are; an upstream echoing any of them gives the guest
 * the placeholder (A5). */
static int watch_sigv4(ictx_t *c, val_t v)
{
    nb_sigv4_creds_t cr;
    if (nb_sigv4_creds_parse(nb_iov(W(c, v.off), v.len), &cr) < 0)
        return 0; /* not usable: never signed with, nothing to watch for */
    int r = nb_redact_add(c->redact, cr.secret.p, cr.secret.len, NB_SIGV4_PH_SECRET,
                          strlen(NB_SIGV4_PH_SECRET));
    if (r >= 0)
        r = nb_redact_add(c->redact, cr.akid.p, cr.akid.len, NB_SIGV4_PH_AKID,
                          strlen(NB_SIGV4_PH_AKID));
    if (r >= 0 && cr.token.len)
        r = nb_redact_add(c->redact, cr.token.p, cr.token.len, NB_SIGV4_PH_TOKEN,
                          strlen(NB_SIGV4_PH_TOKEN));
    return r;
}

/* Registers every secret bound for the VM (see nb_inject_watch). Values
 * already fetched for injection are reused. */
static int watch_all(ictx_t *c)
{
    const char *vm = c->dest->vm ? c->dest->vm : "";
    int r = 0;
    for (size_t i = 0; i < c->nb && r >= 0; i++) {
        const nb_binding_t *b = &c->b[i];
        /* Bound for this VM (to any host: one service may store what
         * another serves), or bound to this host for any VM (another VM's
         * value stored here and fetched by this one, A9). */
        if (b->vm[0] && strcmp(b->vm, vm) != 0 && binding_state(c, b) == ST_NONE)
            continue;
        val_t v;
        size_t eoff;
        if ((r = fetch(c, b, &v)) == NB_ENOTFOUND) {
            r = 0; /* a binding whose secret is gone: nothing to watch for */
            continue;
        }
        if (r < 0)
            break;
        if (b->placement == NB_PLACE_SIGV4) {
            r = watch_sigv4(c, v);
            continue;
        }
        r = nb_redact_add(c->redact, W(c, v.off), v.len, b->secret, strlen(b->secret));
        if (r >= 0 && b->placement == NB_PLACE_BASIC && (r = encode_basic(c, b, v, &eoff)) >= 0)
            r = redact_basic(c, b, (const char *)W(c, eoff));
    }
    /* Unlike injected values (whose request is then simply not scanned for
     * the surplus), a secret we cannot watch for must not be reachable:
     * fail closed with a distinct code. */
    return r == NB_ETOOBIG ? NB_EUNSUPPORTED : r < 0 ? r : 0;
}

int nb_inject_watch(const nb_inject_dest_t *dest, const nb_binding_t *bindings, size_t nbindings,
                    nb_inject_get_fn get, void *ctx, nb_redact_t *redact, nb_inject_out_t *out)
{
    ictx_t cs = {.dest = dest,
                 .b = bindings,
                 .nb = nbindings,
                 .get = get,
                 .ctx = ctx,
                 .redact = redact,
                 .out = out};
    ictx_t *c = &cs;
    int r = watch_all(c);
    sodium_memzero(out->work, out->work_used);
    out->work_used = 0;
    return r;
}
