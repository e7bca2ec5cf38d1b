#include "daemon/egress/sigv4.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sodium.h>

#include "lib/err.h"

void nb_sigv4_sha256_hex(const void *p, size_t len, char hex[NB_SIGV4_HEX + 1])
{
    uint8_t d[32];
    SHA256(p, len, d);
    sodium_bin2hex(hex, NB_SIGV4_HEX + 1, d, 32);
}

int nb_sigv4_is_hex64(nb_iov_t s)
{
    if (s.len != NB_SIGV4_HEX)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!((s.p[i] >= '0' && s.p[i] <= '9') || (s.p[i] >= 'a' && s.p[i] <= 'f')))
            return 0;
    return 1;
}

int nb_sigv4_sig_eq(nb_iov_t a, const char *b)
{
    return a.len == NB_SIGV4_HEX && strlen(b) == NB_SIGV4_HEX &&
           CRYPTO_memcmp(a.p, b, NB_SIGV4_HEX) == 0;
}

static void hmac(const uint8_t *k, size_t kl, const void *m, size_t ml, uint8_t out[32])
{
    unsigned int ol = 32;
    HMAC(EVP_sha256(), k, (int)kl, m, ml, out, &ol);
}

/* ---- parsing ---- */

static int is_scope_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
}

static int all(nb_iov_t s, int (*ok)(uint8_t))
{
    for (size_t i = 0; i < s.len; i++)
        if (!ok(s.p[i]))
            return 0;
    return 1;
}

static int is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int is_sh_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == ';' || c == '_' ||
           c == '.';
}

/* "AKID/YYYYMMDD/region/service/aws4_request" */
static int parse_credential(nb_iov_t v, nb_sigv4_auth_t *a)
{
    nb_iov_t part[5];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= v.len; i++) {
        if (i == v.len || v.p[i] == '/') {
            if (n == 5)
                return NB_EINVAL;
            part[n++] = nb_iov(v.p + start, i - start);
            start = i + 1;
        }
    }
    if (n != 5 || !nb_iov_eq(part[4], "aws4_request") || part[0].len == 0 || part[0].len > 128 ||
        !all(part[0], is_scope_char) || part[1].len != 8 || !all(part[1], is_digit) ||
        part[2].len == 0 || part[2].len >= 32 || !all(part[2], is_scope_char) || part[3].len == 0 ||
        part[3].len >= 64 || !all(part[3], is_scope_char))
        return NB_EINVAL;
    a->akid = part[0];
    a->date = part[1];
    a->region = part[2];
    a->service = part[3];
    return 0;
}

/* SignedHeaders: non-empty names, lower-case, strictly ascending. */
static int check_signed_headers(nb_iov_t v)
{
    if (v.len == 0 || v.len > 2048 || !all(v, is_sh_char))
        return 0;
    nb_iov_t prev = {NULL, 0};
    size_t start = 0;
    for (size_t i = 0; i <= v.len; i++) {
        if (i < v.len && v.p[i] != ';')
            continue;
        nb_iov_t cur = nb_iov(v.p + start, i - start);
        if (cur.len == 0)
            return 0;
        if (prev.p) {
            size_t m = prev.len < cur.len ? prev.len : cur.len;
            int c = memcmp(prev.p, cur.p, m);
            if (c > 0 || (c == 0 && prev.len >= cur.len))
                return 0;
        }
        prev = cur;
        start = i + 1;
    }
    return 1;
}

int nb_sigv4_parse_auth(nb_iov_t v, nb_sigv4_auth_t *a)
{
    memset(a, 0, sizeof *a);
    size_t al = sizeof NB_SIGV4_ALGO - 1;
    if (v.len <= al || memcmp(v.p, NB_SIGV4_ALGO, al) != 0 || v.p[al] != ' ')
        return NB_EINVAL;
    size_t i = al;
    int have = 0;
    while (i < v.len) {
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == ','))
            i++;
        size_t ks = i;
        while (i < v.len && v.p[i] != '=' && v.p[i] != ',' && v.p[i] != ' ')
            i++;
        if (i >= v.len || v.p[i] != '=')
            return NB_EINVAL;
        nb_iov_t k = nb_iov(v.p + ks, i - ks);
        size_t vs = ++i;
        while (i < v.len && v.p[i] != ',' && v.p[i] != ' ')
            i++;
        nb_iov_t val = nb_iov(v.p + vs, i - vs);
        int bit;
        if (nb_iov_eq(k, "Credential")) {
            bit = 1;
            if (parse_credential(val, a) < 0)
                return NB_EINVAL;
        } else if (nb_iov_eq(k, "SignedHeaders")) {
            bit = 2;
            if (!check_signed_headers(val))
                return NB_EINVAL;
            a->signed_headers = val;
        } else if (nb_iov_eq(k, "Signature")) {
            bit = 4;
            if (!nb_sigv4_is_hex64(val))
                return NB_EINVAL;
            a->signature = val;
        } else {
            return NB_EINVAL;
        }
        if (have & bit)
            return NB_EINVAL;
        have |= bit;
    }
    return have == 7 ? 0 : NB_EINVAL;
}

/* Percent-decodes s into dst (cap bytes). Length or -1. '+' stays '+':
 * SigV4 clients encode spaces as %20. */
static long pct_decode(nb_iov_t s, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < s.len; i++) {
        uint8_t c = s.p[i];
        if (c == '%') {
            int h, l;
            if (i + 2 >= s.len || (h = nb_hexval(s.p[i + 1])) < 0 ||
                (l = nb_hexval(s.p[i + 2])) < 0)
                return -1;
            c = (uint8_t)(h * 16 + l);
            i += 2;
        }
        if (o >= cap)
            return -1;
        dst[o++] = (char)c;
    }
    return (long)o;
}

int nb_sigv4_parse_query(nb_iov_t target, nb_sigv4_auth_t *a)
{
    memset(a, 0, sizeof *a);
    const uint8_t *q = memchr(target.p, '?', target.len);
    if (!q)
        return NB_ENOTFOUND;
    nb_iov_t qs = nb_iov(q + 1, target.len - (size_t)(q + 1 - target.p));
    nb_iov_t algo = {0}, cred = {0}, date = {0}, sh = {0}, sig = {0};
    int found_sig = 0;
    size_t start = 0;
    for (size_t i = 0; i <= qs.len; i++) {
        if (i < qs.len && qs.p[i] != '&')
            continue;
        nb_iov_t pair = nb_iov(qs.p + start, i - start);
        start = i + 1;
        const uint8_t *eq = memchr(pair.p, '=', pair.len);
        if (!eq)
            continue;
        nb_iov_t k = nb_iov(pair.p, (size_t)(eq - pair.p));
        nb_iov_t v = nb_iov(eq + 1, pair.len - k.len - 1);
        nb_iov_t *slot = nb_iov_eq(k, "X-Amz-Algorithm")       ? &algo
                         : nb_iov_eq(k, "X-Amz-Credential")    ? &cred
                         : nb_iov_eq(k, "X-Amz-Date")          ? &date
                         : nb_iov_eq(k, "X-Amz-SignedHeaders") ? &sh
                         : nb_iov_eq(k, "X-Amz-Signature")     ? &sig
                                                               : NULL;
        if (!slot)
            continue;
        if (slot->p)
            return NB_EINVAL; /* twice: ambiguous */
        *slot = v;
        if (slot == &sig)
            found_sig = 1;
    }
    if (!found_sig)
        return NB_ENOTFOUND;
    if (!algo.p || !cred.p || !date.p || !sh.p)
        return NB_EINVAL;
    /* Decode the values into a->buf (they may carry %2F and %3B). */
    size_t used = 0;
    nb_iov_t *fields[] = {&algo, &cred, &date, &sh};
    for (size_t f = 0; f < 4; f++) {
        long n = pct_decode(*fields[f], a->buf + used, sizeof a->buf - used);
        if (n < 0)
            return NB_EINVAL;
        *fields[f] = nb_iov(a->buf + used, (size_t)n);
        used += (size_t)n;
    }
    if (!nb_iov_eq(algo, NB_SIGV4_ALGO) || parse_credential(cred, a) < 0 ||
        !check_signed_headers(sh) || !nb_sigv4_is_hex64(sig) || date.len != 16 ||
        date.p[8] != 'T' || date.p[15] != 'Z')
        return NB_EINVAL;
    a->signed_headers = sh;
    a->signature = sig;
    a->amzdate = date;
    a->presigned = 1;
    return 0;
}

/* ---- canonical request ---- */

static int unreserved(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

static int put_enc(nb_buf_t *out, const uint8_t *p, size_t n, int keep_slash)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        int r;
        if (unreserved(c) || (keep_slash && c == '/')) {
            r = nb_buf_append(out, &c, 1);
        } else {
            char e[3] = {'%', "0123456789ABCDEF"[c >> 4], "0123456789ABCDEF"[c & 15]};
            r = nb_buf_append(out, e, 3);
        }
        if (r < 0)
            return NB_ETOOBIG;
    }
    return 0;
}

/* The non-S3 path: remove "." and ".." segments and empty ones (as the
 * SDKs do), then encode the sent bytes again ('%' becomes %25). */
static int put_uri_enc(nb_buf_t *out, nb_iov_t path)
{
    nb_iov_t seg[128];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= path.len; i++) {
        if (i < path.len && path.p[i] != '/')
            continue;
        nb_iov_t s = nb_iov(path.p + start, i - start);
        start = i + 1;
        if (s.len == 0 || nb_iov_eq(s, "."))
            continue;
        if (nb_iov_eq(s, "..")) {
            if (n)
                n--;
            continue;
        }
        if (n == sizeof seg / sizeof seg[0])
            return NB_EINVAL;
        seg[n++] = s;
    }
    if (n == 0)
        return nb_buf_append(out, "/", 1) < 0 ? NB_ETOOBIG : 0;
    for (size_t i = 0; i < n; i++) {
        if (nb_buf_append(out, "/", 1) < 0 || put_enc(out, seg[i].p, seg[i].len, 0) < 0)
            return NB_ETOOBIG;
    }
    if (path.len > 1 && path.p[path.len - 1] == '/' && nb_buf_append(out, "/", 1) < 0)
        return NB_ETOOBIG;
    return 0;
}

typedef struct {
    nb_iov_t k, v;
    uint8_t kb[256], vb[1024]; /* normalised forms (Q_NORM) */
} qpair_t;

static int qcmp(const qpair_t *a, const qpair_t *b)
{
    size_t m = a->k.len < b->k.len ? a->k.len : b->k.len;
    int c = memcmp(a->k.p, b->k.p, m);
    if (c || a->k.len != b->k.len)
        return c ? c : (a->k.len < b->k.len ? -1 : 1);
    m = a->v.len < b->v.len ? a->v.len : b->v.len;
    c = memcmp(a->v.p, b->v.p, m);
    if (c || a->v.len != b->v.len)
        return c ? c : (a->v.len < b->v.len ? -1 : 1);
    return 0;
}

/* Decodes then encodes s strictly into dst. Length or -1. */
static long norm(nb_iov_t s, uint8_t *dst, size_t cap)
{
    char dec[1024];
    long n = pct_decode(s, dec, sizeof dec);
    if (n < 0)
        return -1;
    size_t o = 0;
    for (long i = 0; i < n; i++) {
        uint8_t c = (uint8_t)dec[i];
        if (unreserved(c)) {
            if (o + 1 > cap)
                return -1;
            dst[o++] = c;
        } else {
            if (o + 3 > cap)
                return -1;
            dst[o++] = '%';
            dst[o++] = (uint8_t) "0123456789ABCDEF"[c >> 4];
            dst[o++] = (uint8_t) "0123456789ABCDEF"[c & 15];
        }
    }
    return (long)o;
}

#define MAX_QPAIRS 64

static int put_query(nb_buf_t *out, nb_iov_t qs, int mode)
{
    static __thread qpair_t pairs[MAX_QPAIRS];
    size_t n = 0, start = 0;
    for (size_t i = 0; qs.len && i <= qs.len; i++) {
        if (i < qs.len && qs.p[i] != '&')
            continue;
        nb_iov_t pair = nb_iov(qs.p + start, i - start);
        start = i + 1;
        if (pair.len == 0)
            continue;
        if (n == MAX_QPAIRS)
            return NB_EINVAL;
        qpair_t *q = &pairs[n];
        const uint8_t *eq = memchr(pair.p, '=', pair.len);
        q->k = nb_iov(pair.p, eq ? (size_t)(eq - pair.p) : pair.len);
        q->v = eq ? nb_iov(eq + 1, pair.len - q->k.len - 1) : nb_iov("", 0);
        if ((mode & NB_SIGV4_Q_PRESIGN) && nb_iov_eq(q->k, "X-Amz-Signature"))
            continue;
        if (mode & NB_SIGV4_Q_NORM) {
            long kl = norm(q->k, q->kb, sizeof q->kb), vl = norm(q->v, q->vb, sizeof q->vb);
            if (kl < 0 || vl < 0)
                return NB_EINVAL;
            q->k = nb_iov(q->kb, (size_t)kl);
            q->v = nb_iov(q->vb, (size_t)vl);
        }
        n++;
    }
    /* Insertion sort: at most MAX_QPAIRS. */
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && qcmp(&pairs[j - 1], &pairs[j]) > 0; j--) {
            qpair_t t;
            memcpy(&t, &pairs[j], sizeof t);
            memcpy(&pairs[j], &pairs[j - 1], sizeof t);
            memcpy(&pairs[j - 1], &t, sizeof t);
            /* the slices of normalised pairs point into their own struct */
            if (mode & NB_SIGV4_Q_NORM) {
                pairs[j].k.p = pairs[j].kb;
                pairs[j].v.p = pairs[j].vb;
                pairs[j - 1].k.p = pairs[j - 1].kb;
                pairs[j - 1].v.p = pairs[j - 1].vb;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if ((i && nb_buf_append(out, "&", 1) < 0) ||
            nb_buf_append(out, pairs[i].k.p, pairs[i].k.len) < 0 ||
            nb_buf_append(out, "=", 1) < 0 || nb_buf_append(out, pairs[i].v.p, pairs[i].v.len) < 0)
            return NB_ETOOBIG;
    }
    return 0;
}

static int is_sp(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* Appends a header value trimmed, inner runs of spaces collapsed. */
static int put_value(nb_buf_t *out, nb_iov_t v)
{
    size_t i = 0, e = v.len;
    while (i < e && is_sp(v.p[i]))
        i++;
    while (e > i && is_sp(v.p[e - 1]))
        e--;
    int sp = 0;
    for (; i < e; i++) {
        if (is_sp(v.p[i])) {
            sp = 1;
            continue;
        }
        if ((sp && nb_buf_append(out, " ", 1) < 0) || nb_buf_append(out, &v.p[i], 1) < 0)
            return NB_ETOOBIG;
        sp = 0;
    }
    return 0;
}

int nb_sigv4_canonical(nb_iov_t method, nb_iov_t target, const nb_sigv4_header_t *headers,
                       size_t nheaders, nb_iov_t signed_headers, nb_iov_t payload, int mode,
                       nb_buf_t *out)
{
    if (!check_signed_headers(signed_headers) || method.len == 0 || target.len == 0 ||
        target.p[0] != '/')
        return NB_EINVAL;
    const uint8_t *q = memchr(target.p, '?', target.len);
    nb_iov_t path = nb_iov(target.p, q ? (size_t)(q - target.p) : target.len);
    nb_iov_t qs = q ? nb_iov(q + 1, target.len - path.len - 1) : nb_iov("", 0);
    int r;
    if (nb_buf_append(out, method.p, method.len) < 0 || nb_buf_append(out, "\n", 1) < 0)
        return NB_ETOOBIG;
    if (mode & NB_SIGV4_URI_ENC)
        r = put_uri_enc(out, path);
    else
        r = nb_buf_append(out, path.p, path.len) < 0 ? NB_ETOOBIG : 0;
    if (r < 0 || nb_buf_append(out, "\n", 1) < 0)
        return r < 0 ? r : NB_ETOOBIG;
    if ((r = put_query(out, qs, mode)) < 0)
        return r;
    if (nb_buf_append(out, "\n", 1) < 0)
        return NB_ETOOBIG;
    size_t start = 0;
    for (size_t i = 0; i <= signed_headers.len; i++) {
        if (i < signed_headers.len && signed_headers.p[i] != ';')
            continue;
        nb_iov_t name = nb_iov(signed_headers.p + start, i - start);
        start = i + 1;
        if (nb_buf_append(out, name.p, name.len) < 0 || nb_buf_append(out, ":", 1) < 0)
            return NB_ETOOBIG;
        int seen = 0;
        for (size_t h = 0; h < nheaders; h++) {
            nb_iov_t hn = headers[h].name;
            if (hn.len != name.len ||
                strncasecmp((const char *)hn.p, (const char *)name.p, name.len) != 0)
                continue;
            if ((seen && nb_buf_append(out, ",", 1) < 0) ||
                (r = put_value(out, headers[h].value)) < 0)
                return NB_ETOOBIG;
            seen = 1;
        }
        if (!seen)
            return NB_EINVAL;
        if (nb_buf_append(out, "\n", 1) < 0)
            return NB_ETOOBIG;
    }
    if (nb_buf_append(out, "\n", 1) < 0 ||
        nb_buf_append(out, signed_headers.p, signed_headers.len) < 0 ||
        nb_buf_append(out, "\n", 1) < 0 || nb_buf_append(out, payload.p, payload.len) < 0)
        return NB_ETOOBIG;
    return 0;
}

/* ---- signing ---- */

void nb_sigv4_key(const uint8_t *secret, size_t slen, nb_iov_t date, nb_iov_t region,
                  nb_iov_t service, uint8_t key[32])
{
    uint8_t k0[4 + 256];
    size_t l = slen < 256 ? slen : 256;
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, secret, l);
    uint8_t a[32], b[32];
    hmac(k0, 4 + l, date.p, date.len, a);
    hmac(a, 32, region.p, region.len, b);
    hmac(b, 32, service.p, service.len, a);
    hmac(a, 32, "aws4_request", 12, key);
    OPENSSL_cleanse(k0, sizeof k0);
    OPENSSL_cleanse(a, sizeof a);
    OPENSSL_cleanse(b, sizeof b);
}

/* "DATE/REGION/SERVICE/aws4_request" into buf; its length. */
static size_t scope(char *buf, size_t cap, nb_iov_t date, nb_iov_t region, nb_iov_t service)
{
    int n = snprintf(buf, cap, "%.*s/%.*s/%.*s/aws4_request", (int)date.len, date.p,
                     (int)region.len, region.p, (int)service.len, service.p);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

void nb_sigv4_sign(const uint8_t key[32], nb_iov_t amzdate, nb_iov_t date, nb_iov_t region,
                   nb_iov_t service, nb_iov_t canonical, char sig[NB_SIGV4_HEX + 1])
{
    char sts[512], ch[NB_SIGV4_HEX + 1], sc[256];
    nb_sigv4_sha256_hex(canonical.p, canonical.len, ch);
    scope(sc, sizeof sc, date, region, service);
    int n = snprintf(sts, sizeof sts, NB_SIGV4_ALGO "\n%.*s\n%s\n%s", (int)amzdate.len, amzdate.p,
                     sc, ch);
    uint8_t mac[32];
    hmac(key, 32, sts, n < 0 ? 0 : (size_t)n < sizeof sts ? (size_t)n : sizeof sts - 1, mac);
    sodium_bin2hex(sig, NB_SIGV4_HEX + 1, mac, 32);
}

void nb_sigv4_chunk_sign(const uint8_t key[32], nb_iov_t amzdate, nb_iov_t date, nb_iov_t region,
                         nb_iov_t service, nb_iov_t prev, const uint8_t chash[32],
                         char sig[NB_SIGV4_HEX + 1])
{
    char sts[640], sc[256], hx[NB_SIGV4_HEX + 1];
    /* SHA-256 of the empty string: the chunk's (absent) headers. */
    static const char empty[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    scope(sc, sizeof sc, date, region, service);
    sodium_bin2hex(hx, NB_SIGV4_HEX + 1, chash, 32);
    int n = snprintf(sts, sizeof sts, NB_SIGV4_ALGO "-PAYLOAD\n%.*s\n%s\n%.*s\n%s\n%s",
                     (int)amzdate.len, amzdate.p, sc, (int)prev.len, prev.p, empty, hx);
    uint8_t mac[32];
    hmac(key, 32, sts, n < 0 ? 0 : (size_t)n < sizeof sts ? (size_t)n : sizeof sts - 1, mac);
    sodium_bin2hex(sig, NB_SIGV4_HEX + 1, mac, 32);
}

void nb_sigv4_trailer_sign(const uint8_t key[32], nb_iov_t amzdate, nb_iov_t date, nb_iov_t region,
                           nb_iov_t service, nb_iov_t prev, const uint8_t thash[32],
                           char sig[NB_SIGV4_HEX + 1])
{
    char sts[640], sc[256], hx[NB_SIGV4_HEX + 1];
    scope(sc, sizeof sc, date, region, service);
    sodium_bin2hex(hx, NB_SIGV4_HEX + 1, thash, 32);
    int n = snprintf(sts, sizeof sts, NB_SIGV4_ALGO "-TRAILER\n%.*s\n%s\n%.*s\n%s",
                     (int)amzdate.len, amzdate.p, sc, (int)prev.len, prev.p, hx);
    uint8_t mac[32];
    hmac(key, 32, sts, n < 0 ? 0 : (size_t)n < sizeof sts ? (size_t)n : sizeof sts - 1, mac);
    sodium_bin2hex(sig, NB_SIGV4_HEX + 1, mac, 32);
}

/* ---- credentials ---- */

static int cred_char(uint8_t c)
{
    return c > 0x20 && c < 0x7f;
}

static nb_iov_t trim(nb_iov_t s)
{
    while (s.len && (is_sp(s.p[0]) || s.p[0] == '\r'))
        s = nb_iov(s.p + 1, s.len - 1);
    while (s.len && (is_sp(s.p[s.len - 1]) || s.p[s.len - 1] == '\r'))
        s.len--;
    return s;
}

int nb_sigv4_creds_parse(nb_iov_t v, nb_sigv4_creds_t *c)
{
    memset(c, 0, sizeof *c);
    nb_iov_t pos[3];
    size_t npos = 0, start = 0;
    int kv = 0;
    for (size_t i = 0; i <= v.len; i++) {
        if (i < v.len && v.p[i] != '\n')
            continue;
        nb_iov_t line = trim(nb_iov(v.p + start, i - start));
        start = i + 1;
        if (line.len == 0 || line.p[0] == '#' || line.p[0] == '[')
            continue;
        const uint8_t *eq = memchr(line.p, '=', line.len);
        nb_iov_t k = eq ? trim(nb_iov(line.p, (size_t)(eq - line.p))) : nb_iov("", 0);
        nb_iov_t *slot = !eq                                            ? NULL
                         : nb_iov_eq_nocase(k, "aws_access_key_id")     ? &c->akid
                         : nb_iov_eq_nocase(k, "aws_secret_access_key") ? &c->secret
                         : nb_iov_eq_nocase(k, "aws_session_token")     ? &c->token
                                                                        : NULL;
        if (slot) {
            kv = 1;
            *slot = trim(nb_iov(eq + 1, line.len - (size_t)(eq + 1 - line.p)));
            continue;
        }
        if (eq && !all(line, cred_char))
            return NB_EINVAL; /* some other "key = value" line */
        if (npos == 3)
            return NB_EINVAL;
        pos[npos++] = line;
    }
    if (kv && npos)
        return NB_EINVAL;
    if (!kv) {
        if (npos < 2)
            return NB_EINVAL;
        c->akid = pos[0];
        c->secret = pos[1];
        c->token = npos == 3 ? pos[2] : nb_iov("", 0);
    }
    if (c->akid.len == 0 || c->akid.len > 128 || !all(c->akid, is_scope_char) ||
        c->secret.len == 0 || c->secret.len > 256 || !all(c->secret, cred_char) ||
        c->token.len > 4096 || !all(c->token, cred_char))
        return NB_EINVAL;
    return 0;
}

/* ---- aws-chunked stream ---- */

/* A chunk's header line carries the signature of the data that follows, so
 * the line can only go out once that data was hashed: one chunk is held,
 * never more. AWS clients send chunks of 8-128 KiB; a larger chunk ends
 * re-signing (plain kind: passes as sent, the upstream refuses it; trailer
 * kinds: refused). Unsigned chunks are not held: each line is checked,
 * then the data streams through. The trailing headers are held whole
 * (NB_SIGV4_TRAILER_MAX) and go out only once they all parsed. */
enum { ST_LINE = 0, ST_DATA, ST_CR, ST_LF, ST_TRAILER, ST_DONE };

static int copy_str(char *dst, size_t cap, nb_iov_t s)
{
    if (s.len >= cap)
        return NB_EINVAL;
    memcpy(dst, s.p, s.len);
    dst[s.len] = '\0';
    return 0;
}

int nb_sigv4_stream_init(nb_sigv4_stream_t *s, const uint8_t *key_ph, const uint8_t *key_real,
                         nb_iov_t amzdate, nb_iov_t date, nb_iov_t region, nb_iov_t service,
                         nb_iov_t seed_ph, const char *seed_real)
{
    memset(s, 0, sizeof *s);
    nb_buf_init(&s->hold, NB_SIGV4_CHUNK_MAX + 256);
    if (copy_str(s->amzdate, sizeof s->amzdate, amzdate) < 0 ||
        copy_str(s->date, sizeof s->date, date) < 0 ||
        copy_str(s->region, sizeof s->region, region) < 0 ||
        copy_str(s->service, sizeof s->service, service) < 0 ||
        copy_str(s->prev_ph, sizeof s->prev_ph, seed_ph) < 0 || strlen(seed_real) != NB_SIGV4_HEX)
        return NB_EINVAL;
    memcpy(s->prev_real, seed_real, NB_SIGV4_HEX + 1);
    s->key_ph = key_ph;
    s->key_real = key_real;
    return 0;
}

int nb_sigv4_stream_trailers(nb_sigv4_stream_t *s, int kind, nb_iov_t declared)
{
    if ((kind != NB_SIGV4_CHUNKS_SIGNED_TRAILER && kind != NB_SIGV4_CHUNKS_UNSIGNED_TRAILER) ||
        copy_str(s->declared, sizeof s->declared, declared) < 0)
        return NB_EINVAL;
    for (char *c = s->declared; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    s->kind = kind;
    return 0;
}

static nb_iov_t cs(const char *s)
{
    return nb_iov(s, strlen(s));
}

static int fail(nb_sigv4_stream_t *s, int err, const char *why)
{
    s->why = why;
    return err;
}

/* A complete chunk header line (no CRLF): "HEX;chunk-signature=SIG" when
 * signed, "HEX" when not. Its size, or -1. */
static int64_t chunk_size(nb_iov_t l, int is_signed)
{
    static const char ext[] = ";chunk-signature=";
    const uint8_t *semi = memchr(l.p, ';', l.len);
    if (!is_signed && semi)
        return -1; /* unsigned chunks carry no extension */
    const uint8_t *end = is_signed ? semi : l.p + l.len;
    if (!end || end == l.p || (size_t)(end - l.p) > 8)
        return -1;
    int64_t size = 0;
    for (const uint8_t *p = l.p; p < end; p++) {
        int h = nb_hexval(*p);
        if (h < 0)
            return -1;
        size = size * 16 + h;
    }
    if (!is_signed)
        return size;
    size_t el = sizeof ext - 1;
    nb_iov_t rest = nb_iov(semi, l.len - (size_t)(semi - l.p));
    if (rest.len != el + NB_SIGV4_HEX || memcmp(rest.p, ext, el) != 0 ||
        !nb_sigv4_is_hex64(nb_iov(rest.p + el, NB_SIGV4_HEX)))
        return -1;
    return size;
}

/* The held chunk (line CRLF data, then `tail` bytes: its CRLF, or none for
 * a final chunk followed by trailers) is complete: check the guest's
 * signature in the line, put ours in its place. 0, or -1 when it does not
 * verify. */
static int resign_held(nb_sigv4_stream_t *s, size_t tail)
{
    uint8_t *b = s->hold.p;
    size_t ll = s->line_len; /* without CRLF */
    uint8_t h[32];
    SHA256(b + ll + 2, s->hold.len - ll - 2 - tail, h);
    nb_iov_t got = nb_iov(b + ll - NB_SIGV4_HEX, NB_SIGV4_HEX);
    char want[NB_SIGV4_HEX + 1], ours[NB_SIGV4_HEX + 1];
    nb_sigv4_chunk_sign(s->key_ph, cs(s->amzdate), cs(s->date), cs(s->region), cs(s->service),
                        cs(s->prev_ph), h, want);
    if (!nb_sigv4_sig_eq(got, want))
        return -1;
    nb_sigv4_chunk_sign(s->key_real, cs(s->amzdate), cs(s->date), cs(s->region), cs(s->service),
                        cs(s->prev_real), h, ours);
    memcpy(s->prev_ph, want, sizeof want);
    memcpy(s->prev_real, ours, sizeof ours);
    memcpy(b + ll - NB_SIGV4_HEX, ours, NB_SIGV4_HEX);
    s->chunks++;
    return 0;
}

static int flush(nb_sigv4_stream_t *s, nb_sigv4_sink sink, void *ctx)
{
    int r = s->hold.len ? sink(ctx, s->hold.p, s->hold.len) : 0;
    nb_buf_reset(&s->hold);
    return r;
}

static int tr_name_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* 1 when `name` is one of the comma-separated names of `list`. */
static int listed(const char *list, nb_iov_t name)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == name.len && name.len && memcmp(p, name.p, name.len) == 0)
            return 1;
        p = e;
    }
    return 0;
}

/* The held trailer ("name:value" CRLF lines, then an empty line) is
 * complete. Checks every line; for the signed kind the last line must be
 * x-amz-trailer-signature, verified over the canonical form of the others
 * ("name:value\n" each, value trimmed) and replaced by ours. */
static int finish_trailer(nb_sigv4_stream_t *s)
{
    uint8_t *b = s->hold.p;
    size_t end = s->hold.len - 2; /* the empty line */
    /* The canonical form is never longer than the lines it comes from. */
    uint8_t canon[NB_SIGV4_TRAILER_MAX] = {0};
    size_t cl = 0;
    nb_iov_t names[16];
    size_t nn = 0, sigoff = 0;
    int have_sig = 0;
    for (size_t i = 0; i < end;) {
        const uint8_t *eol = memchr(b + i, '\r', end - i);
        if (!eol || (size_t)(eol - b) + 1 >= s->hold.len || eol[1] != '\n')
            return fail(s, NB_EPARSE, "a trailing header line does not end with CRLF");
        nb_iov_t line = nb_iov(b + i, (size_t)(eol - (b + i)));
        i = (size_t)(eol - b) + 2;
        const uint8_t *colon = memchr(line.p, ':', line.len);
        if (!colon || colon == line.p)
            return fail(s, NB_EPARSE, "a trailing header is not 'name:value'");
        nb_iov_t name = nb_iov(line.p, (size_t)(colon - line.p));
        nb_iov_t value = trim(nb_iov(colon + 1, line.len - name.len - 1));
        if (!all(name, tr_name_char))
            return fail(s, NB_EPARSE,
                        "a trailing header name is not lower-case letters, digits, '-'");
        if (value.len == 0 || !all(value, cred_char))
            return fail(s, NB_EPARSE, "a trailing header value is empty or not printable ASCII");
        if (have_sig)
            return fail(s, NB_EPARSE, "x-amz-trailer-signature is not the last trailing header");
        if (nb_iov_eq(name, "x-amz-trailer-signature")) {
            if (s->kind != NB_SIGV4_CHUNKS_SIGNED_TRAILER)
                return fail(s, NB_EPARSE, "a trailer signature in an unsigned-payload upload");
            if (!nb_sigv4_is_hex64(value))
                return fail(s, NB_EPARSE, "x-amz-trailer-signature is not 64 hex digits");
            have_sig = 1;
            sigoff = (size_t)(value.p - b);
            continue;
        }
        if (!listed(s->declared, name))
            return fail(s, NB_EPARSE, "a trailing header that x-amz-trailer does not declare");
        for (size_t k = 0; k < nn; k++)
            if (names[k].len == name.len && memcmp(names[k].p, name.p, name.len) == 0)
                return fail(s, NB_EPARSE, "a trailing header sent twice");
        if (nn == sizeof names / sizeof names[0])
            return fail(s, NB_EPARSE, "too many trailing headers");
        names[nn++] = name;
        memcpy(canon + cl, name.p, name.len);
        cl += name.len;
        canon[cl++] = ':';
        memcpy(canon + cl, value.p, value.len);
        cl += value.len;
        canon[cl++] = '\n';
    }
    uint8_t th[32];
    SHA256(canon, cl, th);
    if (s->kind != NB_SIGV4_CHUNKS_SIGNED_TRAILER)
        return 0;
    if (!have_sig)
        return fail(s, NB_EPARSE, "the trailer has no x-amz-trailer-signature");
    char want[NB_SIGV4_HEX + 1], ours[NB_SIGV4_HEX + 1];
    nb_sigv4_trailer_sign(s->key_ph, cs(s->amzdate), cs(s->date), cs(s->region), cs(s->service),
                          cs(s->prev_ph), th, want);
    if (!nb_sigv4_sig_eq(nb_iov(b + sigoff, NB_SIGV4_HEX), want))
        return fail(s, NB_EAUTH,
                    "the trailer signature does not verify with the placeholder credentials");
    nb_sigv4_trailer_sign(s->key_real, cs(s->amzdate), cs(s->date), cs(s->region), cs(s->service),
                          cs(s->prev_real), th, ours);
    memcpy(b + sigoff, ours, NB_SIGV4_HEX);
    OPENSSL_cleanse(want, sizeof want);
    return 0;
}

/* A complete chunk line is in hold. Next state, or a negative error. */
static int on_line(nb_sigv4_stream_t *s, nb_sigv4_sink sink, void *ctx)
{
    int is_signed = s->kind != NB_SIGV4_CHUNKS_UNSIGNED_TRAILER;
    int64_t size = chunk_size(nb_iov(s->hold.p, s->line_len), is_signed);
    if (size < 0)
        return fail(s, NB_EPARSE,
                    is_signed ? "a chunk line is not 'HEX;chunk-signature=SIG'"
                              : "a chunk line is not a hexadecimal size");
    s->left = (uint64_t)size;
    s->last = size == 0;
    int trailer = s->kind != NB_SIGV4_CHUNKS_SIGNED;
    if (is_signed && size > NB_SIGV4_CHUNK_MAX) {
        if (trailer)
            return fail(s, NB_ETOOBIG, "a signed chunk is larger than 1 MiB");
        s->passthru = 1;
        int r = flush(s, sink, ctx);
        return r < 0 ? r : ST_LINE;
    }
    if (!is_signed) {
        int r = flush(s, sink, ctx); /* nothing to sign: the line goes now */
        if (r < 0)
            return r;
        if (size == 0) {
            s->chunks++;
            return ST_TRAILER;
        }
    }
    if (size == 0 && trailer) {
        /* The final chunk is followed by the trailer, not by CRLF. */
        if (resign_held(s, 0) < 0)
            return fail(s, NB_EAUTH,
                        "a chunk signature does not verify with the placeholder credentials");
        int r = flush(s, sink, ctx);
        return r < 0 ? r : ST_TRAILER;
    }
    return size ? ST_DATA : ST_CR;
}

int nb_sigv4_stream_feed(nb_sigv4_stream_t *s, const uint8_t *p, size_t len, nb_sigv4_sink sink,
                         void *ctx)
{
    int r;
    int held = s->kind != NB_SIGV4_CHUNKS_UNSIGNED_TRAILER; /* data held to sign it */
    s->why = NULL;
    while (len) {
        if (s->passthru)
            return sink(ctx, p, len);
        switch (s->state) {
        case ST_LINE: {
            if (nb_buf_append(&s->hold, p, 1) < 0)
                return -ENOMEM;
            p++;
            len--;
            size_t n = s->hold.len;
            if (n >= 2 && s->hold.p[n - 2] == '\r' && s->hold.p[n - 1] == '\n') {
                s->line_len = n - 2;
                if ((r = on_line(s, sink, ctx)) < 0)
                    return r;
                s->state = r;
            } else if (n > 128) {
                return fail(s, NB_EPARSE, "a chunk line is longer than 128 bytes");
            }
            break;
        }
        case ST_DATA: {
            size_t take = len < s->left ? len : (size_t)s->left;
            if (!held) {
                if ((r = sink(ctx, p, take)) < 0)
                    return r;
            } else if (nb_buf_append(&s->hold, p, take) < 0) {
                return -ENOMEM;
            }
            p += take;
            len -= take;
            s->left -= take;
            if (!s->left)
                s->state = ST_CR;
            break;
        }
        case ST_CR:
        case ST_LF:
            if (*p != (s->state == ST_CR ? '\r' : '\n'))
                return fail(s, NB_EPARSE, "a chunk's data is not followed by CRLF");
            if (nb_buf_append(&s->hold, p, 1) < 0)
                return -ENOMEM;
            p++;
            len--;
            if (s->state == ST_CR) {
                s->state = ST_LF;
                break;
            }
            if (held && resign_held(s, 2) < 0) {
                if (s->kind != NB_SIGV4_CHUNKS_SIGNED)
                    return fail(s, NB_EAUTH,
                                "a chunk signature does not verify with the "
                                "placeholder credentials");
                s->passthru = 1; /* not signed with the placeholder: sent as is */
            }
            if (!held)
                s->chunks++;
            if ((r = flush(s, sink, ctx)) < 0)
                return r;
            s->state = s->last ? ST_DONE : ST_LINE;
            break;
        case ST_TRAILER: {
            /* Up to the empty line: "\r\n" alone (no trailing headers) or
             * "...\r\n\r\n". */
            if (nb_buf_append(&s->hold, p, 1) < 0)
                return -ENOMEM;
            p++;
            len--;
            size_t n = s->hold.len;
            const uint8_t *h = s->hold.p;
            if (n > NB_SIGV4_TRAILER_MAX)
                return fail(s, NB_ETOOBIG, "the trailing headers are larger than 4 KiB");
            if (n >= 2 && h[n - 2] == '\r' && h[n - 1] == '\n' &&
                (n == 2 || (n >= 4 && h[n - 4] == '\r' && h[n - 3] == '\n'))) {
                if ((r = finish_trailer(s)) < 0)
                    return r;
                if ((r = flush(s, sink, ctx)) < 0)
                    return r;
                s->state = ST_DONE;
            }
            break;
        }
        default:
            return fail(s, NB_EPARSE, "bytes after the final chunk");
        }
    }
    return 0;
}

int nb_sigv4_stream_done(const nb_sigv4_stream_t *s)
{
    return s->state == ST_DONE || s->passthru;
}

const char *nb_sigv4_stream_why(const nb_sigv4_stream_t *s)
{
    return s->why;
}

void nb_sigv4_stream_free(nb_sigv4_stream_t *s)
{
    if (!s)
        return;
    nb_buf_wipe_free(&s->hold);
    OPENSSL_cleanse(s, sizeof *s);
}
