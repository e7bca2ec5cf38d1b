/* libFuzzer target for the injector and the response redactor
 * (src/daemon/egress/inject.c, redact.c).
 *
 * Byte 0 bit 0 picks the mode.
 * Injector: the rest is a request, "METHOD TARGET\n" then "Name: value"
 * lines; it is injected for several destinations (bound host over TLS and
 * cleartext, an unbound host, a suffix-bound host, two VMs). Every secret
 * value contains '~', which the harness removes from the input, so a '~'
 * in the output can only come from an injection: checked against the
 * report. The value callback checks it is only asked for bindings of the
 * destination (A2), and the head always ends with CRLF CRLF.
 * Redactor: the rest is split into needles and a stream; the stream is fed
 * in pieces (byte 1 = step) and compared with a whole-buffer reference. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/hostname.h"
#include "daemon/egress/inject.h"
#include "daemon/egress/redact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nb_binding_t bind[4];
static const char *cur_host, *cur_vm;

static int get_value(void *ctx, const nb_binding_t *b, uint8_t *buf, size_t cap, size_t *len)
{
    (void)ctx;
    int hm = b->host[0] == '*' ? nb_host_pattern_match(b->host, cur_host)
                               : strcmp(b->host, cur_host) == 0;
    if (!hm || (b->vm[0] && strcmp(b->vm, cur_vm) != 0))
        abort(); /* A2: asked for a secret not bound to this destination */
    static const char v[] = "val~ue/+= 1";
    if (cap < sizeof(v) - 1)
        abort(); /* the work area always has room for a small value */
    memcpy(buf, v, sizeof(v) - 1);
    *len = sizeof(v) - 1;
    return 0;
}

static void init_bindings(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    if (sodium_init() < 0)
        abort();
    nb_binding_set_header(&bind[0], "Authorization: Bearer {secret}");
    memcpy(bind[0].secret, "KEY_A", 6);
    memcpy(bind[0].host, "api.a.test", 11);
    nb_binding_set_header(&bind[1], "x-k: {secret}");
    memcpy(bind[1].secret, "KEY_B", 6);
    memcpy(bind[1].host, "*.b.test", 9);
    memcpy(bind[1].path_prefix, "/v1", 4);
    memcpy(bind[1].vm, "vm1", 4);
    memset(&bind[2], 0, sizeof(bind[2]));
    bind[2].placement = NB_PLACE_QUERY;
    memcpy(bind[2].secret, "KEY_C", 6);
    memcpy(bind[2].host, "api.a.test", 11);
    memcpy(bind[2].param, "key", 4);
    memset(&bind[3], 0, sizeof(bind[3]));
    bind[3].placement = NB_PLACE_BASIC;
    memcpy(bind[3].secret, "KEY_D", 6);
    memcpy(bind[3].host, "api.a.test", 11);
    memcpy(bind[3].user, "u", 2);
    bind[3].allow_cleartext = 1;
    for (int i = 0; i < 4; i++) {
        bind[i].id = i + 1;
        if (nb_binding_normalize(&bind[i]) < 0)
            abort();
    }
}

static void fuzz_inject(const uint8_t *d, size_t n)
{
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = d[i] == '~' ? '-' : (char)d[i];
    s[n] = 0;
    nb_inject_header_t h[32];
    size_t nh = 0;
    char *nl = memchr(s, '\n', n);
    size_t l0 = nl ? (size_t)(nl - s) : n;
    char *sp = memchr(s, ' ', l0);
    nb_inject_req_t req;
    memset(&req, 0, sizeof(req));
    req.method = nb_iov(s, sp ? (size_t)(sp - s) : l0);
    req.target = sp ? nb_iov(sp + 1, l0 - (size_t)(sp + 1 - s)) : nb_iov(s + l0, 0);
    req.version_minor = 1;
    char *line = nl ? nl + 1 : s + n;
    while (line < s + n && nh < 32) {
        char *e = memchr(line, '\n', (size_t)(s + n - line));
        size_t len = e ? (size_t)(e - line) : (size_t)(s + n - line);
        char *colon = memchr(line, ':', len);
        if (colon) {
            h[nh].name = nb_iov(line, (size_t)(colon - line));
            char *v = colon + 1;
            while (v < line + len && *v == ' ')
                v++;
            h[nh].value = nb_iov(v, (size_t)(line + len - v));
            nh++;
        }
        line += len + 1;
    }
    req.headers = h;
    req.nheaders = nh;
    static const struct {
        const char *host, *vm;
        int tls;
    } dests[] = {{"api.a.test", "", 1},  {"api.a.test", "", 0}, {"x.b.test", "vm1", 1},
                 {"x.b.test", "vm2", 1}, {"evil.test", "", 1},  {"a.test", "", 1}};
    static const char *known[] = {"KEY_A", "KEY_X"};
    nb_inject_out_t o;
    if (nb_inject_out_init(&o, 4096) < 0)
        abort();
    for (size_t i = 0; i < sizeof(dests) / sizeof(dests[0]); i++) {
        nb_inject_dest_t dest = {.host = dests[i].host, .vm = dests[i].vm, .tls = dests[i].tls};
        cur_host = dests[i].host;
        cur_vm = dests[i].vm;
        nb_redact_t *red = NULL;
        nb_redact_new(&red);
        int r = nb_inject_head(&req, &dest, bind, 4, known, 2, get_value, NULL, red, &o);
        if (r == 0) {
            if (o.len < 4 || memcmp(o.p + o.len - 4, "\r\n\r\n", 4) != 0 || o.len > o.cap)
                abort();
            int tilde = memchr(o.p, '~', o.len) != NULL;
            if (tilde && o.ninjected == 0)
                abort(); /* a value left without being reported */
            if (o.ninjected && (i >= 4 || nb_redact_needles(red) == 0))
                abort(); /* unbound hosts never get anything */
        } else if (o.len != 0 || o.ninjected != 0) {
            abort(); /* on error nothing is left behind */
        }
        nb_inject_out_wipe(&o);
        nb_redact_free(red);
    }
    nb_inject_out_free(&o);
    free(s);
}

/* ---- redactor ---- */

typedef struct {
    uint8_t *p;
    size_t len;
} sink_t;

static int sink(void *ctx, const uint8_t *p, size_t n)
{
    sink_t *s = ctx;
    memcpy(s->p + s->len, p, n);
    s->len += n;
    return 0;
}

/* s spells t (n bytes): any ASCII case, or for base64 text (t in the
 * standard alphabet) the exact case with '-' and '_' read as '+' and '/'. */
static int ci_eq(const uint8_t *s, const uint8_t *t, size_t n, int b64)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t a = s[i], b = t[i];
        if (b64)
            a = a == '-' ? '+' : a == '_' ? '/' : a;
        else {
            a = a >= 'A' && a <= 'Z' ? (uint8_t)(a + 32) : a;
            b = b >= 'A' && b <= 'Z' ? (uint8_t)(b + 32) : b;
        }
        if (a != b)
            return 0;
    }
    return 1;
}

static void fuzz_redact(const uint8_t *d, size_t n)
{
    if (n < 2)
        return;
    size_t step = (size_t)d[0] + 1;
    d++;
    n--;
    /* Up to 3 needles of lowercase letters, separated by '|', then the
     * stream. Replacements are digits, so output cannot form a needle
     * (in any case). */
    const uint8_t *nd[3];
    size_t nlen[3], k = 0, i = 0;
    while (k < 3 && i < n) {
        size_t st = i;
        while (i < n && d[i] != '|')
            i++;
        if (i == n)
            break;
        nd[k] = d + st;
        nlen[k] = i - st;
        int ok = nlen[k] > 0 && nlen[k] <= 64;
        for (size_t j = st; j < i && ok; j++)
            ok = d[j] >= 'a' && d[j] <= 'z';
        if (ok)
            k++;
        i++;
    }
    /* The reference below is verbatim only: keep the escape introducers
     * ('%', '\\', '&', and NUL for UTF-16/32 spellings) out of the stream
     * (fuzz_reflect covers spellings). */
    size_t inl = n - i;
    uint8_t *in = malloc(inl ? inl : 1);
    for (size_t j = 0; j < inl; j++)
        in[j] = d[i + j] == '%' || d[i + j] == '\\' || d[i + j] == '&' || d[i + j] == 0 ? '.'
                                                                                        : d[i + j];
    static const char *reps[] = {"1", "22", "333"};
    nb_redact_t *r = NULL;
    nb_redact_new(&r);
    for (size_t j = 0; j < k; j++)
        nb_redact_add(r, nd[j], nlen[j], reps[j], strlen(reps[j]));
    size_t cap = inl * 3 + 16;
    sink_t got = {malloc(cap), 0}, want = {malloc(cap), 0};
    for (size_t off = 0; off < inl; off += step)
        if (nb_redact_feed(r, in + off, inl - off < step ? inl - off : step, sink, &got) != 0)
            abort();
    if (nb_redact_finish(r, sink, &got) != 0)
        abort();
    /* The encoded runs redact.c derives from each needle (its hex, and per
     * base64 alignment the characters made of its bits only), computed
     * here with libsodium; needles also match in any case. */
    typedef struct {
        char t[192];
        size_t len, owner;
        int b64;
    } run_t;
    run_t runs[12];
    size_t nr = 0, maxn = 0;
    for (size_t j = 0; j < k; j++) {
        maxn = nlen[j] > maxn ? nlen[j] : maxn;
        if (2 * nlen[j] >= NB_REDACT_MIN_ENC) {
            sodium_bin2hex(runs[nr].t, sizeof runs[nr].t, nd[j], nlen[j]);
            runs[nr].len = 2 * nlen[j];
            runs[nr].owner = j;
            runs[nr++].b64 = 0;
        }
        for (size_t a = 0; a < 3; a++) {
            uint8_t raw[80] = {0};
            char enc[128];
            memcpy(raw + a, nd[j], nlen[j]);
            sodium_bin2base64(enc, sizeof enc, raw, a + nlen[j], sodium_base64_VARIANT_ORIGINAL);
            size_t js = (8 * a + 5) / 6, je = 8 * (a + nlen[j]) / 6;
            if (je - js < NB_REDACT_MIN_ENC)
                continue;
            memcpy(runs[nr].t, enc + js, je - js);
            runs[nr].len = je - js;
            runs[nr].owner = j;
            runs[nr++].b64 = 1;
        }
    }
    for (size_t x = 0; x < nr; x++)
        maxn = runs[x].len > maxn ? runs[x].len : maxn;
    /* Reference: leftmost-longest over the whole buffer (a needle before
     * an encoded run of the same length, then the first needle), then the
     * end rule. */
    size_t pos = 0, last = 0;
    while (pos < inl) {
        size_t best = k, bl = 0;
        for (size_t j = 0; j < k; j++)
            if (nlen[j] <= inl - pos && ci_eq(in + pos, nd[j], nlen[j], 0) &&
                (best == k || nlen[j] > bl))
                best = j, bl = nlen[j];
        for (size_t x = 0; x < nr; x++)
            if (runs[x].len <= inl - pos && runs[x].len > bl &&
                ci_eq(in + pos, (const uint8_t *)runs[x].t, runs[x].len, runs[x].b64))
                best = runs[x].owner, bl = runs[x].len;
        if (best < k) {
            sink(&want, (const uint8_t *)reps[best], strlen(reps[best]));
            pos += bl;
            last = pos;
        } else {
            sink(&want, in + pos, 1);
            pos++;
        }
    }
    /* A tail (after the last match) that is a proper prefix of a needle or
     * of an encoded run, spelling at least NB_REDACT_MIN_PARTIAL needle
     * bytes, is replaced as well. */
    for (size_t l = inl - last < maxn ? inl - last : (maxn ? maxn - 1 : 0); l > 0; l--) {
        size_t w = k, g = 0;
        for (size_t j = 0; j < k; j++)
            if (nlen[j] > l && ci_eq(in + inl - l, nd[j], l, 0) && (w == k || l > g))
                w = j, g = l;
        for (size_t x = 0; x < nr; x++) {
            size_t gx = runs[x].b64 ? l * 6 / 8 : l / 2;
            if (runs[x].len > l &&
                ci_eq(in + inl - l, (const uint8_t *)runs[x].t, l, runs[x].b64) &&
                (w == k || gx > g))
                w = runs[x].owner, g = gx;
        }
        if (w < k) {
            if (g >= NB_REDACT_MIN_PARTIAL) {
                want.len -= l;
                sink(&want, (const uint8_t *)reps[w], strlen(reps[w]));
            }
            break;
        }
    }
    if (got.len != want.len || memcmp(got.p, want.p, got.len) != 0)
        abort();
    for (size_t j = 0; j < k; j++)
        if (got.len >= nlen[j])
            for (size_t x = 0; x + nlen[j] <= got.len; x++)
                if (ci_eq(got.p + x, nd[j], nlen[j], 0))
                    abort();
    free(got.p);
    free(want.p);
    free(in);
    nb_redact_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 16384)
        return 0;
    init_bindings();
    if (data[0] & 1)
        fuzz_redact(data + 1, size - 1);
    else
        fuzz_inject(data + 1, size - 1);
    return 0;
}
