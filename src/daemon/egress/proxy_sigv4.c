#include "daemon/egress/proxy_sigv4.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "lib/err.h"

#define TARGET_MAX 16384
#define AUTH_MAX 2560

struct nb_pxsv4 {
    /* per request */
    int cls; /* classify's answer */
    int64_t binding_id;
    char secret[NB_SECRETS_NAME_MAX + 1];
    const char *why;
    int streaming;
    nb_buf_t body; /* held body (heap; the guest's own bytes) */
    nb_sigv4_stream_t st;
    int st_live;
    nb_buf_t canon; /* wipe-on-free buffer: a canonical request may hold the token */
    /* locked */
    uint8_t kph[32], kreal[32];
    char auth[AUTH_MAX];
    char sh2[2048 + 32];
    char target[TARGET_MAX];
    size_t vlen;
    uint8_t val[NB_SECRETS_VALUE_MAX]; /* last: only its used part is wiped */
};

int nb_pxsv4_new(nb_pxsv4_t **out)
{
    nb_pxsv4_t *s = sodium_malloc(sizeof *s);
    *out = NULL;
    if (!s)
        return -ENOMEM;
    memset(s, 0, sizeof *s);
    nb_buf_init(&s->body, NB_PXSV4_BODY_MAX);
    nb_buf_init(&s->canon, NB_SIGV4_CANON_MAX);
    *out = s;
    return 0;
}

void nb_pxsv4_reset(nb_pxsv4_t *s)
{
    if (!s)
        return;
    if (s->st_live)
        nb_sigv4_stream_free(&s->st);
    nb_buf_t body = s->body, canon = s->canon;
    nb_buf_reset(&body);
    nb_buf_reset(&canon);
    sodium_memzero(s->val, s->vlen);
    /* The locked part (keys, Authorization, SignedHeaders, target: 21 KiB)
     * is written only by nb_pxsv4_resign, which does nothing unless
     * classify said SigV4 (cls != 0); cls stays set until this reset. So
     * with cls == 0 that part is still all zero from the last reset, and
     * wiping it again was a third of the proxy's instructions for every
     * request that is not SigV4 (reset runs three times a request). */
    sodium_memzero(s, s->cls ? offsetof(nb_pxsv4_t, val) : offsetof(nb_pxsv4_t, kph));
    s->body = body;
    s->canon = canon;
}

void nb_pxsv4_free(nb_pxsv4_t *s)
{
    if (!s)
        return;
    nb_pxsv4_reset(s);
    nb_buf_wipe_free(&s->body);
    nb_buf_wipe_free(&s->canon);
    sodium_free(s);
}

static const nb_sigv4_header_t *find(const nb_sigv4_header_t *h, size_t n, const char *name)
{
    const nb_sigv4_header_t *f = NULL;
    for (size_t i = 0; i < n; i++) {
        if (nb_iov_eq_nocase(h[i].name, name)) {
            if (f)
                return NULL; /* twice: ambiguous, not ours to sign */
            f = &h[i];
        }
    }
    return f;
}

static int count(const nb_sigv4_header_t *h, size_t n, const char *name)
{
    int c = 0;
    for (size_t i = 0; i < n; i++)
        c += nb_iov_eq_nocase(h[i].name, name);
    return c;
}

/* The guest's signature fields: header form, else presigned query. */
static int parse_sig(const nb_sigv4_header_t *h, size_t nh, nb_iov_t target, nb_sigv4_auth_t *a)
{
    int na = count(h, nh, "authorization");
    if (na > 1)
        return NB_EINVAL;
    if (na == 1) {
        const nb_sigv4_header_t *au = find(h, nh, "authorization");
        return nb_sigv4_parse_auth(au->value, a);
    }
    return nb_sigv4_parse_query(target, a);
}

static const nb_binding_t *pick(const nb_inject_dest_t *dest, const nb_binding_t *b, size_t nb,
                                const nb_sigv4_auth_t *a, nb_iov_t target, const char **why)
{
    const char *vm = dest->vm ? dest->vm : "";
    *why = "no SigV4 binding for this host";
    for (size_t i = 0; i < nb; i++) {
        const nb_binding_t *x = &b[i];
        if (x->placement != NB_PLACE_SIGV4)
            continue;
        if (!nb_binding_host_ok(x, dest->host))
            continue;
        if (x->vm[0] && strcmp(x->vm, vm) != 0) {
            *why = "the SigV4 binding is for another VM";
            continue;
        }
        if (!dest->tls && !x->allow_cleartext) {
            *why = "plain HTTP: the SigV4 binding needs TLS";
            continue;
        }
        if (!nb_binding_path_ok(x, target)) {
            *why = "the path is outside the binding's prefix";
            continue;
        }
        if ((x->user[0] && !nb_iov_eq(a->region, x->user)) ||
            (x->param[0] && !nb_iov_eq(a->service, x->param))) {
            *why = "the credential scope names another region or service";
            continue;
        }
        return x;
    }
    return NULL;
}

int nb_pxsv4_classify(nb_pxsv4_t *s, const nb_inject_dest_t *dest, const nb_binding_t *b, size_t nb,
                      const nb_sigv4_header_t *h, size_t nh, nb_iov_t target, int has_body)
{
    nb_pxsv4_reset(s);
    nb_sigv4_auth_t a;
    if (parse_sig(h, nh, target, &a) < 0) {
        s->why = "not SigV4-signed";
        return 0;
    }
    if (!nb_iov_eq(a.akid, NB_SIGV4_PH_AKID)) {
        s->why = "signed with another key id";
        return 0;
    }
    if (!pick(dest, b, nb, &a, target, &s->why))
        return 0;
    s->cls = 1;
    if (!a.presigned && has_body && count(h, nh, "x-amz-content-sha256") == 0)
        s->cls = 2;
    return s->cls;
}

int nb_pxsv4_hold(nb_pxsv4_t *s, const uint8_t *p, size_t len)
{
    return nb_buf_append(&s->body, p, len) < 0 ? NB_ETOOBIG : 0;
}

nb_iov_t nb_pxsv4_held(const nb_pxsv4_t *s)
{
    return nb_buf_iov(&s->body);
}

/* Percent-encodes (RFC 3986 unreserved kept) into dst; length or -1. */
static long pct(const uint8_t *p, size_t n, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        int un = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == '~';
        if (o + (un ? 1 : 3) >= cap)
            return -1;
        if (un) {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '%';
            dst[o++] = "0123456789ABCDEF"[c >> 4];
            dst[o++] = "0123456789ABCDEF"[c & 15];
        }
    }
    dst[o] = '\0';
    return (long)o;
}

static const int modes[] = {0, NB_SIGV4_Q_NORM, NB_SIGV4_URI_ENC,
                            NB_SIGV4_URI_ENC | NB_SIGV4_Q_NORM};

/* The mode (see sigv4.h) under which the guest's signature verifies with
 * the placeholder key, or -1. */
static int verify(nb_pxsv4_t *s, const nb_sigv4_auth_t *a, nb_iov_t amzdate, nb_iov_t method,
                  nb_iov_t target, const nb_sigv4_header_t *h, size_t nh, nb_iov_t payload,
                  int extra)
{
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        nb_buf_reset(&s->canon);
        if (nb_sigv4_canonical(method, target, h, nh, a->signed_headers, payload, modes[i] | extra,
                               &s->canon) < 0)
            continue;
        char sig[NB_SIGV4_HEX + 1];
        nb_sigv4_sign(s->kph, amzdate, a->date, a->region, a->service, nb_buf_iov(&s->canon), sig);
        if (nb_sigv4_sig_eq(a->signature, sig))
            return modes[i] | extra;
    }
    return -1;
}

/* SignedHeaders for the upstream request: the guest's names that are
 * still there, with the token header in or out as the real credentials
 * need. Sorted, like the guest's list. */
static int build_sh2(nb_pxsv4_t *s, nb_iov_t sh, const nb_sigv4_header_t *hv, size_t nhv,
                     int with_token)
{
    static const char tok[] = "x-amz-security-token";
    size_t o = 0, start = 0;
    int placed = !with_token;
    for (size_t i = 0; i <= sh.len; i++) {
        if (i < sh.len && sh.p[i] != ';')
            continue;
        nb_iov_t name = nb_iov(sh.p + start, i - start);
        start = i + 1;
        int is_tok = nb_iov_eq(name, tok);
        if (!placed) {
            size_t m = name.len < sizeof tok - 1 ? name.len : sizeof tok - 1;
            int c = memcmp(name.p, tok, m);
            if (c > 0 || (c == 0 && name.len > sizeof tok - 1)) {
                if (o + sizeof tok + 1 >= sizeof s->sh2)
                    return NB_ETOOBIG;
                o += (size_t)snprintf(s->sh2 + o, sizeof s->sh2 - o, "%s%s", o ? ";" : "", tok);
                placed = 1;
            }
        }
        if (is_tok)
            continue; /* written above (or dropped) */
        int present = 0;
        for (size_t k = 0; k < nhv && !present; k++)
            present = hv[k].name.len == name.len &&
                      strncasecmp((const char *)hv[k].name.p, (const char *)name.p, name.len) == 0;
        if (!present)
            continue;
        if (o + name.len + 2 >= sizeof s->sh2)
            return NB_ETOOBIG;
        o += (size_t)snprintf(s->sh2 + o, sizeof s->sh2 - o, "%s%.*s", o ? ";" : "", (int)name.len,
                              name.p);
    }
    if (!placed) {
        if (o + sizeof tok + 1 >= sizeof s->sh2)
            return NB_ETOOBIG;
        o += (size_t)snprintf(s->sh2 + o, sizeof s->sh2 - o, "%s%s", o ? ";" : "", tok);
    }
    return o ? 0 : NB_EINVAL;
}

/* The presigned target with the real key id and token, and 64 '0' where
 * the signature goes (*sigoff). */
static int build_target(nb_pxsv4_t *s, nb_iov_t t, const nb_sigv4_auth_t *a,
                        const nb_sigv4_creds_t *cr, size_t *sigoff)
{
    const uint8_t *q = memchr(t.p, '?', t.len);
    size_t o = (size_t)(q - t.p) + 1, cap = sizeof s->target;
    if (o >= cap)
        return NB_ETOOBIG;
    memcpy(s->target, t.p, o);
    nb_iov_t qs = nb_iov(q + 1, t.len - o);
    int first = 1, had_token = 0;
    size_t start = 0;
    char cred[512];
    int cl = snprintf(cred, sizeof cred, "%.*s/%.*s/%.*s/%.*s/aws4_request", (int)cr->akid.len,
                      cr->akid.p, (int)a->date.len, a->date.p, (int)a->region.len, a->region.p,
                      (int)a->service.len, a->service.p);
    if (cl < 0 || (size_t)cl >= sizeof cred)
        return NB_ETOOBIG;
    for (size_t i = 0; i <= qs.len; i++) {
        if (i < qs.len && qs.p[i] != '&')
            continue;
        nb_iov_t pair = nb_iov(qs.p + start, i - start);
        start = i + 1;
        const uint8_t *eq = memchr(pair.p, '=', pair.len);
        nb_iov_t k = nb_iov(pair.p, eq ? (size_t)(eq - pair.p) : pair.len);
        const uint8_t *vp = NULL;
        size_t vl = 0;
        int sig = 0;
        if (nb_iov_eq(k, "X-Amz-Credential")) {
            vp = (const uint8_t *)cred;
            vl = (size_t)cl;
        } else if (nb_iov_eq(k, "X-Amz-Security-Token")) {
            had_token = 1;
            if (!cr->token.len)
                continue; /* real credentials without a token: none sent */
            vp = cr->token.p;
            vl = cr->token.len;
        } else if (nb_iov_eq(k, "X-Amz-Signature")) {
            sig = 1;
        } else {
            if (o + pair.len + 1 >= cap)
                return NB_ETOOBIG;
            if (!first)
                s->target[o++] = '&';
            memcpy(s->target + o, pair.p, pair.len);
            o += pair.len;
            first = 0;
            continue;
        }
        if (o + k.len + 2 >= cap)
            return NB_ETOOBIG;
        if (!first)
            s->target[o++] = '&';
        memcpy(s->target + o, k.p, k.len);
        o += k.len;
        s->target[o++] = '=';
        first = 0;
        if (sig) {
            if (o + NB_SIGV4_HEX >= cap)
                return NB_ETOOBIG;
            *sigoff = o;
            memset(s->target + o, '0', NB_SIGV4_HEX);
            o += NB_SIGV4_HEX;
            continue;
        }
        long n = pct(vp, vl, s->target + o, cap - o);
        if (n < 0)
            return NB_ETOOBIG;
        o += (size_t)n;
    }
    if (!had_token && cr->token.len) {
        static const char tk[] = "&X-Amz-Security-Token=";
        if (o + sizeof tk >= cap)
            return NB_ETOOBIG;
        memcpy(s->target + o, tk, sizeof tk - 1);
        o += sizeof tk - 1;
        long n = pct(cr->token.p, cr->token.len, s->target + o, cap - o);
        if (n < 0)
            return NB_ETOOBIG;
        o += (size_t)n;
    }
    s->target[o] = '\0';
    return (int)o;
}

/* The guest's token (header or query) must be the placeholder, or absent. */
static int token_is_ours(const nb_sigv4_header_t *h, size_t nh, nb_iov_t target, int presigned)
{
    if (!presigned) {
        int n = count(h, nh, "x-amz-security-token");
        const nb_sigv4_header_t *t = find(h, nh, "x-amz-security-token");
        return n == 0 || (t && nb_iov_eq(t->value, NB_SIGV4_PH_TOKEN));
    }
    const uint8_t *q = memchr(target.p, '?', target.len);
    static const char k[] = "X-Amz-Security-Token=";
    for (const uint8_t *p = q; p && p < target.p + target.len; p++) {
        if ((*p == '?' || *p == '&') && (size_t)(target.p + target.len - p - 1) >= sizeof k - 1 &&
            memcmp(p + 1, k, sizeof k - 1) == 0) {
            const uint8_t *v = p + sizeof k;
            size_t vl = 0;
            while (v + vl < target.p + target.len && v[vl] != '&')
                vl++;
            return nb_iov_eq(nb_iov(v, vl), NB_SIGV4_PH_TOKEN);
        }
    }
    return 1;
}

int nb_pxsv4_resign(nb_pxsv4_t *s, const nb_inject_dest_t *dest, const nb_binding_t *b, size_t nb,
                    nb_inject_get_fn get, void *ctx, nb_iov_t method, const nb_sigv4_header_t *orig,
                    size_t norig, nb_iov_t orig_target, nb_sigv4_header_t *hv, size_t *nhv,
                    size_t hcap, nb_iov_t *target)
{
    if (!s->cls)
        return 0;
    nb_sigv4_auth_t a;
    if (parse_sig(orig, norig, orig_target, &a) < 0)
        return 0;
    /* Picked again: the snapshot may have changed since the head arrived. */
    const nb_binding_t *bind = pick(dest, b, nb, &a, orig_target, &s->why);
    if (!bind)
        return 0;
    s->binding_id = bind->id;
    snprintf(s->secret, sizeof s->secret, "%s", bind->secret);
    if (!token_is_ours(orig, norig, orig_target, a.presigned)) {
        s->why = "the session token is not the placeholder";
        return 0;
    }
    /* Timestamp and payload line, as the guest signed them. */
    nb_iov_t amzdate = a.amzdate, payload;
    char bodyhash[NB_SIGV4_HEX + 1];
    if (!a.presigned) {
        const nb_sigv4_header_t *d = find(orig, norig, "x-amz-date");
        if (!d || d->value.len != 16) {
            s->why = "no X-Amz-Date header";
            return 0;
        }
        amzdate = d->value;
    }
    if (memcmp(amzdate.p, a.date.p, 8) != 0) {
        s->why = "the timestamp and the credential scope name different days";
        return 0;
    }
    const nb_sigv4_header_t *ph = find(orig, norig, "x-amz-content-sha256");
    if (a.presigned) {
        payload = NB_IOV_STR(NB_SIGV4_UNSIGNED);
    } else if (ph) {
        payload = ph->value;
    } else {
        nb_sigv4_sha256_hex(s->body.p ? s->body.p : (const uint8_t *)"", s->body.len, bodyhash);
        payload = nb_iov(bodyhash, NB_SIGV4_HEX);
    }
    /* The placeholder key: what the guest signed with, if it is ours. */
    nb_sigv4_key((const uint8_t *)NB_SIGV4_PH_SECRET, strlen(NB_SIGV4_PH_SECRET), a.date, a.region,
                 a.service, s->kph);
    int extra = a.presigned ? NB_SIGV4_Q_PRESIGN : 0;
    int mode = verify(s, &a, amzdate, method, orig_target, orig, norig, payload, extra);
    if (mode < 0 && a.presigned) {
        static const char empty[] =
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        payload = NB_IOV_STR(empty);
        mode = verify(s, &a, amzdate, method, orig_target, orig, norig, payload, extra);
    }
    if (mode < 0) {
        s->why = "the signature does not verify with the placeholder credentials";
        return 0;
    }
    /* An aws-chunked body is read (and its signatures redone) as it passes. */
    int kind = a.presigned                                      ? -1
               : nb_iov_eq(payload, NB_SIGV4_STREAMING)         ? NB_SIGV4_CHUNKS_SIGNED
               : nb_iov_eq(payload, NB_SIGV4_STREAMING_TRAILER) ? NB_SIGV4_CHUNKS_SIGNED_TRAILER
               : nb_iov_eq(payload, NB_SIGV4_UNSIGNED_TRAILER)  ? NB_SIGV4_CHUNKS_UNSIGNED_TRAILER
                                                                : -1;
    nb_iov_t declared = NB_IOV_STR("");
    if (kind > NB_SIGV4_CHUNKS_SIGNED) {
        const nb_sigv4_header_t *tr = find(orig, norig, "x-amz-trailer");
        if (count(orig, norig, "x-amz-trailer") > 1 ||
            (tr && tr->value.len >= sizeof s->st.declared)) {
            s->why = "x-amz-trailer is sent twice or is longer than 255 bytes";
            return 0;
        }
        declared = tr ? tr->value : declared;
    }
    /* Ours: the real credentials, in locked memory. */
    size_t vl = 0;
    int r = get(ctx, bind, s->val, sizeof s->val, &vl);
    s->vlen = vl <= sizeof s->val ? vl : sizeof s->val;
    if (r < 0)
        return r;
    nb_sigv4_creds_t cr;
    if (nb_sigv4_creds_parse(nb_iov(s->val, vl), &cr) < 0)
        return NB_EINVAL;
    nb_sigv4_key(cr.secret.p, cr.secret.len, a.date, a.region, a.service, s->kreal);
    char sig[NB_SIGV4_HEX + 1];
    if (a.presigned) {
        size_t sigoff = 0;
        int tl = build_target(s, *target, &a, &cr, &sigoff);
        if (tl < 0)
            return tl;
        nb_buf_reset(&s->canon);
        if ((r = nb_sigv4_canonical(method, nb_iov(s->target, (size_t)tl), hv, *nhv,
                                    a.signed_headers, payload, mode, &s->canon)) < 0)
            return r;
        nb_sigv4_sign(s->kreal, amzdate, a.date, a.region, a.service, nb_buf_iov(&s->canon), sig);
        memcpy(s->target + sigoff, sig, NB_SIGV4_HEX);
        *target = nb_iov(s->target, (size_t)tl);
        return 1;
    }
    /* Header form: the token header, then SignedHeaders, then the value. */
    size_t n = *nhv, w = 0;
    int have_tok = 0;
    for (size_t i = 0; i < n; i++) {
        if (nb_iov_eq_nocase(hv[i].name, "x-amz-security-token")) {
            if (!cr.token.len)
                continue; /* dropped */
            hv[i].value = cr.token;
            have_tok = 1;
        }
        hv[w++] = hv[i];
    }
    n = w;
    if (!have_tok && cr.token.len) {
        if (n >= hcap)
            return NB_ETOOBIG;
        hv[n].name = NB_IOV_STR("X-Amz-Security-Token");
        hv[n++].value = cr.token;
    }
    if ((r = build_sh2(s, a.signed_headers, hv, n, cr.token.len > 0)) < 0)
        return r;
    nb_iov_t sh2 = nb_iov(s->sh2, strlen(s->sh2));
    nb_buf_reset(&s->canon);
    if ((r = nb_sigv4_canonical(method, *target, hv, n, sh2, payload, mode, &s->canon)) < 0)
        return r;
    nb_sigv4_sign(s->kreal, amzdate, a.date, a.region, a.service, nb_buf_iov(&s->canon), sig);
    int al = snprintf(s->auth, sizeof s->auth,
                      NB_SIGV4_ALGO " Credential=%.*s/%.*s/%.*s/%.*s/aws4_request, "
                                    "SignedHeaders=%s, Signature=%s",
                      (int)cr.akid.len, cr.akid.p, (int)a.date.len, a.date.p, (int)a.region.len,
                      a.region.p, (int)a.service.len, a.service.p, s->sh2, sig);
    if (al < 0 || (size_t)al >= sizeof s->auth)
        return NB_ETOOBIG;
    for (size_t i = 0; i < n; i++)
        if (nb_iov_eq_nocase(hv[i].name, "authorization"))
            hv[i].value = nb_iov(s->auth, (size_t)al);
    *nhv = n;
    if (kind >= 0) {
        if ((r = nb_sigv4_stream_init(&s->st, s->kph, s->kreal, amzdate, a.date, a.region,
                                      a.service, a.signature, sig)) < 0)
            return r;
        s->st_live = 1;
        s->streaming = 1;
        if (kind != NB_SIGV4_CHUNKS_SIGNED &&
            (r = nb_sigv4_stream_trailers(&s->st, kind, declared)) < 0)
            return r;
    }
    return 1;
}

int nb_pxsv4_classify_result(const nb_pxsv4_t *s)
{
    return s ? s->cls : 0;
}

int nb_pxsv4_streaming(const nb_pxsv4_t *s)
{
    return s && s->streaming;
}

int nb_pxsv4_feed(nb_pxsv4_t *s, const uint8_t *p, size_t len, nb_sigv4_sink sink, void *ctx)
{
    return nb_sigv4_stream_feed(&s->st, p, len, sink, ctx);
}

int nb_pxsv4_done(const nb_pxsv4_t *s)
{
    return !s || !s->streaming || nb_sigv4_stream_done(&s->st);
}

const char *nb_pxsv4_feed_why(const nb_pxsv4_t *s)
{
    return s && s->st_live ? nb_sigv4_stream_why(&s->st) : NULL;
}

const char *nb_pxsv4_why(const nb_pxsv4_t *s)
{
    return s->why ? s->why : "";
}

int64_t nb_pxsv4_binding(const nb_pxsv4_t *s)
{
    return s->binding_id;
}

const char *nb_pxsv4_secret(const nb_pxsv4_t *s)
{
    return s->secret;
}

uint64_t nb_pxsv4_chunks(const nb_pxsv4_t *s)
{
    return s->st_live ? s->st.chunks : 0;
}
