/* libFuzzer target for the A5 reflection defences: the redactor's
 * spelling matcher (redact.c), the body decoder (decode.c) and the
 * WebSocket frame scanner (wsscan.c).
 *
 * Byte 0 picks the part (mod 3), byte 1 a split step. Invariants:
 *  - redactor: feeding in pieces gives the same output as one feed; no
 *    needle is left in the output, in any case, nor the long needle's hex
 *    or base64.
 *  - decoder: pieces and one feed give the same output and the same
 *    result; the output respects the bomb cap.
 *  - scanner: pieces and one feed give the same result, and the same
 *    messages once the output is read back with a strict client-side
 *    frame parser (which must accept it); no needle verbatim in any
 *    message or control payload. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "daemon/egress/decode.h"
#include "daemon/egress/redact.h"
#include "daemon/egress/wsscan.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *p;
    size_t len, cap;
} out_t;

static int out_sink(void *ctx, const uint8_t *p, size_t n)
{
    out_t *o = ctx;
    if (n == 0)
        return 0;
    if (o->len + n > o->cap) {
        size_t nc = (o->len + n) * 2 + 64;
        uint8_t *np = realloc(o->p, nc);
        if (!np)
            abort();
        o->p = np;
        o->cap = nc;
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

/* Needles: letters and '/', '+', '%', '&' (spelled forms in play), one
 * long enough for its hex and base64 runs to count (NB_REDACT_MIN_ENC);
 * replacements are '!' runs, in no needle and no encoded run, so that
 * output cannot form one. */
#define NNEEDLES 4
static const char *const needles[NNEEDLES] = {"sk/ab+cd", "k%&z", "zzzzzzzzzz", "ZxwuPhjkVeXp"};
static const char *const reps[NNEEDLES] = {"!", "!!", "!!!", "!!!!"};

static nb_redact_t *mk(void)
{
    nb_redact_t *r = NULL;
    if (nb_redact_new(&r) != 0)
        abort();
    for (size_t i = 0; i < NNEEDLES; i++)
        if (nb_redact_add(r, needles[i], strlen(needles[i]), reps[i], strlen(reps[i])) != 0)
            abort();
    return r;
}

static uint8_t lc(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* memmem without ASCII case. */
static int has_ci(const uint8_t *p, size_t n, const char *s)
{
    size_t l = strlen(s);
    for (size_t i = 0; l <= n && i <= n - l; i++) {
        size_t k = 0;
        while (k < l && lc(p[i + k]) == lc((uint8_t)s[k]))
            k++;
        if (k == l)
            return 1;
    }
    return 0;
}

/* No needle in any case, and for the long one no hex (any case) and no
 * base64 run (3 alignments, both alphabets: the characters made of its
 * bits only), computed here with libsodium. */
static void no_needle(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < NNEEDLES; i++)
        if (has_ci(p, n, needles[i]))
            abort();
    const char *v = needles[NNEEDLES - 1];
    size_t vl = strlen(v);
    char hex[64], raw[32], enc[64], run[64];
    sodium_bin2hex(hex, sizeof hex, (const uint8_t *)v, vl);
    if (has_ci(p, n, hex))
        abort();
    for (size_t a = 0; a < 3; a++) {
        memset(raw, 0, a);
        memcpy(raw + a, v, vl);
        for (int url = 0; url < 2; url++) {
            sodium_bin2base64(enc, sizeof enc, (const uint8_t *)raw, a + vl,
                              url ? sodium_base64_VARIANT_URLSAFE : sodium_base64_VARIANT_ORIGINAL);
            size_t js = (8 * a + 5) / 6, je = 8 * (a + vl) / 6;
            memcpy(run, enc + js, je - js);
            if (n && memmem(p, n, run, je - js))
                abort();
        }
    }
}

static void redact_run(const uint8_t *d, size_t n, size_t step, out_t *o)
{
    nb_redact_t *r = mk();
    for (size_t off = 0; off < n; off += step)
        if (nb_redact_feed(r, d + off, n - off < step ? n - off : step, out_sink, o) != 0)
            abort();
    if (nb_redact_finish(r, out_sink, o) != 0)
        abort();
    nb_redact_free(r);
}

static void fuzz_redact(const uint8_t *d, size_t n, size_t step)
{
    out_t a = {0}, b = {0};
    redact_run(d, n, n ? n : 1, &a);
    redact_run(d, n, step, &b);
    if (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len) != 0))
        abort();
    no_needle(a.p, a.len);
    free(a.p);
    free(b.p);
}

static int decode_run(nb_decode_kind_t k, const uint8_t *d, size_t n, size_t step, out_t *o)
{
    nb_decode_t *dec = NULL;
    if (nb_decode_new(k, &dec) != 0)
        return 1;
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += step)
        rc = nb_decode_feed(dec, d + off, n - off < step ? n - off : step, out_sink, o);
    if (rc == 0)
        rc = nb_decode_finish(dec);
    if (nb_decode_out(dec) > NB_DECODE_FREE_BYTES + NB_DECODE_CHUNK &&
        nb_decode_out(dec) / NB_DECODE_MAX_RATIO > nb_decode_in(dec) + NB_DECODE_CHUNK)
        abort();
    nb_decode_free(dec);
    return rc;
}

static void fuzz_decode(const uint8_t *d, size_t n, size_t step)
{
    if (n < 1)
        return;
    nb_decode_kind_t k = (nb_decode_kind_t)(1 + d[0] % 3);
    d++;
    n--;
    out_t a = {0}, b = {0};
    int ra = decode_run(k, d, n, n ? n : 1, &a);
    int rb = decode_run(k, d, n, step, &b);
    /* Same result; the same output up to where the one-shot run stopped
     * (a piecewise run may emit a little more before hitting an error). */
    if (ra == NB_ETOOBIG || rb == NB_ETOOBIG) {
        free(a.p);
        free(b.p);
        return; /* the ratio is checked as input arrives: piecewise may stop earlier */
    }
    if (ra != rb || (ra == 0 && (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len) != 0))))
        abort();
    free(a.p);
    free(b.p);
}

/* Strict reading of the scanner's output into a transcript: 'M' op len
 * payload for messages, 'C' op len payload for control frames. */
static void read_back(const uint8_t *p, size_t n, out_t *t)
{
    size_t i = 0;
    int in = 0;
    out_t cur = {0};
    uint8_t op0 = 0;
    while (i < n) {
        if (n - i < 2)
            abort();
        int fin = p[i] >> 7, op = p[i] & 15;
        if ((p[i] & 0x70) || (p[i + 1] & 0x80))
            abort();
        size_t len = p[i + 1] & 127, h = 2;
        if (len == 126) {
            if (n - i < 4)
                abort();
            len = ((size_t)p[i + 2] << 8) | p[i + 3];
            h = 4;
        } else if (len == 127) {
            if (n - i < 10)
                abort();
            len = 0;
            for (int k = 0; k < 8; k++)
                len = (len << 8) | p[i + 2 + k];
            h = 10;
        }
        if (len > n - i - h)
            abort();
        const uint8_t *pl = p + i + h;
        if (op >= 8) {
            if (!fin || len > 125)
                abort();
            no_needle(pl, len);
            uint8_t tag[2] = {'C', (uint8_t)op};
            out_sink(t, tag, 2);
            out_sink(t, pl, len);
        } else {
            if (!in) {
                if (op != 1 && op != 2)
                    abort();
                op0 = (uint8_t)op;
                in = 1;
                cur.len = 0;
            } else if (op != 0) {
                abort();
            }
            out_sink(&cur, pl, len);
            if (fin) {
                no_needle(cur.p, cur.len);
                uint8_t tag[2] = {'M', op0};
                out_sink(t, tag, 2);
                out_sink(t, cur.p, cur.len);
                in = 0;
            }
        }
        i += h + len;
    }
    if (in)
        no_needle(cur.p, cur.len); /* unfinished: how much was released may differ */
    free(cur.p);
}

static int ws_run(const uint8_t *d, size_t n, size_t step, out_t *t)
{
    nb_redact_t *a = mk(), *c = mk();
    nb_wsscan_t *s = NULL;
    out_t o = {0};
    if (nb_wsscan_new(a, c, &s) != 0)
        abort();
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += step)
        rc = nb_wsscan_feed(s, d + off, n - off < step ? n - off : step, out_sink, &o);
    read_back(o.p, o.len, t);
    nb_wsscan_free(s);
    nb_redact_free(a);
    nb_redact_free(c);
    free(o.p);
    return rc;
}

static void fuzz_ws(const uint8_t *d, size_t n, size_t step)
{
    out_t a = {0}, b = {0};
    int ra = ws_run(d, n, n ? n : 1, &a);
    int rb = ws_run(d, n, step, &b);
    /* Complete messages must agree; a message cut by the end of input or
     * an error may differ in how much of it was released. */
    if (ra != rb || (ra == 0 && (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len) != 0))))
        abort();
    free(a.p);
    free(b.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        if (sodium_init() < 0)
            abort();
        init = 1;
    }
    if (size < 2)
        return 0;
    int which = data[0] % 3;
    size_t step = (size_t)data[1] % 64 + 1;
    data += 2;
    size_t n = size - 2;
    if (which == 0)
        fuzz_redact(data, n, step);
    else if (which == 1)
        fuzz_decode(data, n, step);
    else
        fuzz_ws(data, n, step);
    return 0;
}
