/* Unit tests for the A5 reflection defences (THREATS.md A5): the
 * redactor's spellings (percent-encoding in either hex case, JSON and HTML
 * escapes, mixed; base64, hex and case changes of the value), the streaming body decoder (gzip,
 * deflate, raw deflate, multi-member gzip, bombs) and the WebSocket frame scanner (whole,
 * fragmented, control frames interleaved, long frames streamed, protocol errors). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <zlib.h>
#ifdef NB_HAVE_BROTLI
#include <brotli/encode.h>
#endif

#include "daemon/egress/decode.h"
#include "daemon/egress/redact.h"
#include "daemon/egress/wsscan.h"
#include "lib/err.h"
#include "nbtest.h"

#define KEY "sk-live/Ab+9=Zq%x&y"
#define NAME "OPENAI_API_KEY"

typedef struct {
    uint8_t *p;
    size_t len, cap;
    size_t max_call;
} out_t;

static int out_sink(void *ctx, const uint8_t *p, size_t n)
{
    out_t *o = ctx;
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->p = realloc(o->p, o->cap);
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
    o->p[o->len] = 0;
    if (n > o->max_call)
        o->max_call = n;
    return 0;
}

static void out_free(out_t *o)
{
    free(o->p);
    memset(o, 0, sizeof *o);
}

static nb_redact_t *mk(void)
{
    nb_redact_t *r = NULL;
    NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
    NB_CHECK_EQ_INT(nb_redact_add(r, KEY, strlen(KEY), NAME, strlen(NAME)), 0);
    return r;
}

/* Feeds `in` in pieces of `step` bytes; returns the output (caller frees). */
static char *redact_str(const char *in, size_t step, uint64_t *count)
{
    nb_redact_t *r = mk();
    out_t o = {0};
    size_t n = strlen(in);
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in + off, k, out_sink, &o), 0);
    }
    NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
    if (count)
        *count = nb_redact_count(r);
    nb_redact_free(r);
    if (!o.p)
        return strdup("");
    return (char *)o.p;
}

static void check_spelling(const char *spelled)
{
    char in[512];
    snprintf(in, sizeof in, "{\"echo\":\"%s\",\"after\":1}", spelled);
    char want[512];
    snprintf(want, sizeof want, "{\"echo\":\"%s\",\"after\":1}", NAME);
    size_t steps[] = {1, 2, 3, 7, 1000};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        uint64_t n = 0;
        char *got = redact_str(in, steps[i], &n);
        if (strcmp(got, want) != 0)
            fprintf(stderr, "spelling %s, step %zu: got %s\n", spelled, steps[i], got);
        NB_CHECK_STR(got, want);
        NB_CHECK_EQ_INT((int)n, 1);
        free(got);
    }
}

static void test_spellings(void)
{
    /* KEY = sk-live/Ab+9=Zq%x&y */
    check_spelling(KEY);
    check_spelling("sk-live%2FAb%2B9%3DZq%25x%26y");                             /* upper hex */
    check_spelling("sk-live%2fAb%2b9%3dZq%25x%26y");                             /* lower hex */
    check_spelling("sk-live%2FAb%2b9=Zq%25x&y");                                 /* partly, mixed */
    check_spelling("%73%6B%2D%6c%69%76%65%2f%41%62%2B%39%3d%5A%71%25%78%26%79"); /* all */
    check_spelling("sk-live\\/Ab+9=Zq%x&y");                                     /* JSON \/ */
    check_spelling("sk-live\\u002fAb\\u002B9\\u003dZq\\u0025x\\u0026y");         /* JSON \u */
    check_spelling("sk-live&#x2F;Ab&#43;9&equals;Zq&percnt;x&amp;y");            /* HTML */
    check_spelling("sk-live&#X2f;Ab&plus;9&#61;Zq%x&#38;y");
    check_spelling("\\u0073k-live%2F%41b+9=Zq%x&y"); /* escapes mixed within one echo */
    /* HTML also decodes numeric references without ';' and with any
     * number of leading zeros (issue 16, outside attack suite). */
    check_spelling("sk-live&#47Ab&#x2b;9&#61Zq%x&#38y");
    /* percent-encoded twice or three times (a URL inside a URL) */
    check_spelling("sk-live%252FAb%252B9%253DZq%25x%2526y");
    check_spelling("sk-live%25252fAb%2B9%25253dZq%x&y");
    /* JSON inside a JSON string: the backslashes doubled */
    check_spelling("sk-live\\\\/Ab\\\\u002B9\\\\\\u003dZq%x&y");
    check_spelling("sk-live\\\\\\/Ab+9=Zq%x&y");
    check_spelling("sk-live&#0000000000000000047;Ab&#x00000000002B;9&#000061Zq%x&y");
    check_spelling("&#00115&#000107&#0045&#x006C&#x0069&#000118&#00101&#047&#X0041&#0098&#43"
                   "&#0057&#61&#90&#113&#37&#120&#38&#121");
}

/* UTF-16 and UTF-32 text (both byte orders) spells each ASCII byte with
 * NULs beside it; the guest reads it back with one decode call. */
static void test_utf16_utf32(void)
{
    static const char *const enc[] = {"utf16le", "utf16be", "utf32le", "utf32be"};
    size_t klen = strlen(KEY);
    for (size_t e = 0; e < 4; e++) {
        size_t w = e < 2 ? 2 : 4;
        uint8_t in[256];
        size_t n = 0;
        const char *pre = "{\"k\":\"";
        for (const char *q = pre; *q; q++) {
            memset(in + n, 0, w);
            in[n + (e % 2 ? w - 1 : 0)] = (uint8_t)*q;
            n += w;
        }
        size_t start = n;
        for (size_t i = 0; i < klen; i++) {
            memset(in + n, 0, w);
            in[n + (e % 2 ? w - 1 : 0)] = (uint8_t)KEY[i];
            n += w;
        }
        size_t end = n;
        for (int step = 1; step <= 9; step += 4) {
            nb_redact_t *r = mk();
            out_t o = {0};
            for (size_t off = 0; off < n; off += (size_t)step) {
                size_t k = n - off < (size_t)step ? n - off : (size_t)step;
                NB_CHECK_EQ_INT(nb_redact_feed(r, in + off, k, out_sink, &o), 0);
            }
            NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
            if (nb_redact_count(r) != 1)
                fprintf(stderr, "%s step %d: not redacted\n", enc[e], step);
            NB_CHECK_EQ_INT((int)nb_redact_count(r), 1);
            /* no 4 consecutive key bytes survive in any character */
            for (size_t i = 0; i + 4 <= klen; i++) {
                size_t m = 0;
                for (size_t j = 0; j + 4 * w <= o.len && !m; j++) {
                    size_t hit = 1;
                    for (size_t t = 0; t < 4 && hit; t++)
                        hit = o.p[j + t * w] == (uint8_t)KEY[i + t];
                    m = hit;
                }
                NB_CHECK(!m);
            }
            (void)start;
            (void)end;
            nb_redact_free(r);
            free(o.p);
        }
    }
}

/* Leading zeros past the second are squeezed out wherever they are (the
 * same character to an HTML reader); other text is unchanged. */
static void test_zeros_squeezed(void)
{
    size_t steps[] = {1, 2, 5, 1000};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        char *got =
            redact_str("a &#00000065; &#x0000041; &#00; 000 &0000 #000 &#1000;", steps[i], NULL);
        NB_CHECK_STR(got, "a &#0065; &#x0041; &#00; 000 &0000 #000 &#1000;");
        free(got);
    }
}

/* Random mixes: every byte of the value in a random spelling, inside
 * random text, fed in random pieces. */
static void test_random_spellings(void)
{
    static const char *named[][2] = {
        {"/", "&sol;"}, {"+", "&plus;"}, {"=", "&equals;"}, {"%", "&percnt;"}, {"&", "&amp;"}};
    srand(1234);
    for (int it = 0; it < 3000; it++) {
        char sp[512] = "";
        size_t o = 0;
        for (const char *k = KEY; *k; k++) {
            unsigned ch = (unsigned char)*k;
            switch (rand() % 8) {
            case 0:
                o += (size_t)snprintf(sp + o, sizeof sp - o, "%%%02X", ch);
                break;
            case 1:
                o += (size_t)snprintf(sp + o, sizeof sp - o, "%%%02x", ch);
                break;
            case 2:
                o +=
                    (size_t)snprintf(sp + o, sizeof sp - o, rand() % 2 ? "\\u%04x" : "\\u%04X", ch);
                break;
            case 3:
                o += (size_t)snprintf(sp + o, sizeof sp - o, rand() % 2 ? "&#x%0*X;" : "&#%0*u;",
                                      rand() % 12 + 1, ch);
                break;
            case 4:
                if (ch == '/') {
                    o += (size_t)snprintf(sp + o, sizeof sp - o, "\\/");
                    break;
                }
                for (size_t n = 0; n < sizeof named / sizeof named[0]; n++)
                    if (named[n][0][0] == (char)ch) {
                        o += (size_t)snprintf(sp + o, sizeof sp - o, "%s", named[n][1]);
                        ch = 0;
                    }
                if (ch)
                    sp[o++] = (char)ch;
                break;
            default:
                sp[o++] = (char)ch;
            }
            sp[o] = 0;
        }
        char in[700], want[700];
        const char *pre = rand() % 2 ? "x=1&y=" : "{\"a\":\"50% s";
        snprintf(in, sizeof in, "%s%s&tail\\n", pre, sp);
        snprintf(want, sizeof want, "%s%s&tail\\n", pre, NAME);
        uint64_t n = 0;
        char *got = redact_str(in, (size_t)(rand() % 40) + 1, &n);
        if (strcmp(got, want) != 0)
            fprintf(stderr, "random spelling %s: got %s\n", in, got);
        NB_CHECK_STR(got, want);
        free(got);
    }
}

static void test_not_spellings(void)
{
    /* Near misses pass unchanged: a different byte (in any case), a broken
     * escape, a decoded value that is not the key's byte. */
    const char *in[] = {
        "sk-live/Ab+9=Zq%x&z",      "sk-live%2GAb+9=Zq%x&y",    "sk-live%2EAb+9=Zq%x&y",
        "sk-live\\u002Ab+9=Zq%x&y", "sk-live&#x2F Ab+9=Zq%x&y", "SK-LIVE/AB+9=ZQ%X&Z",
    };
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        uint64_t n = 0;
        char *got = redact_str(in[i], 3, &n);
        NB_CHECK_STR(got, in[i]);
        NB_CHECK_EQ_INT((int)n, 0);
        free(got);
    }
}

/* Streaming: a chunk not ending in a possible start leaves at once, and a
 * chunk ending in the start of an escape is held only that far. */
static void test_streaming_holdback(void)
{
    nb_redact_t *r = mk();
    out_t o = {0};
    const char *a = "data: hello\n\n";
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)a, strlen(a), out_sink, &o), 0);
    NB_CHECK_EQ_INT((int)o.len, (int)strlen(a));
    const char *b = "data: sk-live%2";
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)b, strlen(b), out_sink, &o), 0);
    NB_CHECK_EQ_INT((int)o.len, (int)strlen(a) + 6); /* "data: " out, the rest held */
    const char *c = "fAb+9=Zq%x&y\n\n";
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)c, strlen(c), out_sink, &o), 0);
    NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
    NB_CHECK_STR((char *)o.p, "data: hello\n\ndata: " NAME "\n\n");
    out_free(&o);
    nb_redact_free(r);
}

/* A held-back escape that turns out not to be one is released intact. */
static void test_false_start(void)
{
    char *got = redact_str("100% sk-live&amp; done &#x", 1, NULL);
    NB_CHECK_STR(got, "100% sk-live&amp; done &#x");
    free(got);
}

/* ---- encodings and case (redact.c, "literal runs") ---- */

/* A value whose base64 holds '+' and '/' ('?' ending a group is '/', "~~~"
 * is "fn5+") at some alignments, so both alphabets matter. */
#define KEY2 "sk-live-x?>y?>Zq8Xw7Lm4Np2Rt6~~~"
#define NAME2 "ANTHROPIC_KEY"

/* One redactor with KEY2, fed `in` in two pieces split at k (k == n: one
 * feed); the output and the replacement count. */
static char *redact_split2(const char *key, const char *in, size_t n, size_t k, uint64_t *count)
{
    nb_redact_t *r = NULL;
    NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
    NB_CHECK_EQ_INT(nb_redact_add(r, key, strlen(key), NAME2, strlen(NAME2)), 0);
    out_t o = {0};
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in, k, out_sink, &o), 0);
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in + k, n - k, out_sink, &o), 0);
    NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
    if (count)
        *count = nb_redact_count(r);
    nb_redact_free(r);
    return o.p ? (char *)o.p : strdup("");
}

/* `in` gives `want`, with one replacement, at every split point. */
static void check_every_split(const char *key, const char *in, const char *want, int count)
{
    size_t n = strlen(in);
    for (size_t k = 0; k <= n; k++) {
        uint64_t c = 0;
        char *got = redact_split2(key, in, n, k, &c);
        if (strcmp(got, want) != 0 || (int)c != count)
            fprintf(stderr, "in %s split %zu: got %s (%d)\n", in, k, got, (int)c);
        NB_CHECK_STR(got, want);
        NB_CHECK_EQ_INT((int)c, count);
        free(got);
    }
}

static const int b64_variants[] = {
    sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
    sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};

/* base64 of (prefix, value, suffix): every alignment (prefix of 0 to 5
 * bytes), both alphabets, padded or not, at every split point. The
 * characters made of value bits only become the placeholder; the ones
 * mixing in the prefix, the suffix or padding bits stay. */
static void test_base64(void)
{
    const char *pre[] = {"", "B", "Be", "Bea", "Bear", "Beare"};
    const char *suf[] = {"", "\n", "!x"};
    size_t klen = strlen(KEY2);
    int saw_plus = 0, saw_dash = 0;
    for (size_t p = 0; p < 6; p++) {
        for (size_t s = 0; s < 3; s++) {
            for (size_t v = 0; v < 4; v++) {
                char raw[128], enc[256], in[512], want[512];
                size_t pl = strlen(pre[p]), rl;
                rl = (size_t)snprintf(raw, sizeof raw, "%s%s%s", pre[p], KEY2, suf[s]);
                sodium_bin2base64(enc, sizeof enc, (const uint8_t *)raw, rl, b64_variants[v]);
                saw_plus |= strpbrk(enc, "+/") != NULL;
                saw_dash |= strpbrk(enc, "-_") != NULL;
                size_t js = (8 * pl + 5) / 6, je = 8 * (pl + klen) / 6;
                snprintf(in, sizeof in, "{\"echo\":\"%s\"}", enc);
                snprintf(want, sizeof want, "{\"echo\":\"%.*s%s%s\"}", (int)js, enc, NAME2,
                         enc + je);
                check_every_split(KEY2, in, want, 1);
            }
        }
    }
    NB_CHECK(saw_plus && saw_dash); /* both alphabets were in play */
}

/* Hex of the value, lower, upper and mixed case, at every split point. */
static void test_hex(void)
{
    char hex[128], in[256], want[256];
    sodium_bin2hex(hex, sizeof hex, (const uint8_t *)KEY2, strlen(KEY2));
    snprintf(want, sizeof want, "x=%s;", NAME2);
    for (int mode = 0; mode < 3; mode++) {
        char h[128];
        snprintf(h, sizeof h, "%s", hex);
        for (size_t i = 0; h[i]; i++)
            if (mode == 1 || (mode == 2 && i % 3 == 0))
                h[i] = (char)(h[i] >= 'a' && h[i] <= 'f' ? h[i] - 32 : h[i]);
        snprintf(in, sizeof in, "x=%s;", h);
        check_every_split(KEY2, in, want, 1);
    }
}

/* The raw value upper- or lower-cased, also with per-byte spellings. */
static void test_case_changes(void)
{
    const char *in[] = {"[SK-LIVE-X?>Y?>ZQ8XW7LM4NP2RT6~~~]", "[sk-live-x?>y?>zq8xw7lm4np2rt6~~~]",
                        "[Sk-LiVe-X%3F&gt;y%3f>zQ8xW7lM4nP2rT6~~~]",
                        "[\\u0053K-LIVE-X?>Y?>ZQ8XW7LM4NP2RT6%7E~~]"};
    char want[64];
    snprintf(want, sizeof want, "[%s]", NAME2);
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        check_every_split(KEY2, in[i], want, 1);
    /* The first spelling of KEY, upper-cased (the near miss stays, see
     * test_not_spellings). */
    char *got = redact_str("SK-LIVE%2FAB+9=ZQ%X&Y", 2, NULL);
    NB_CHECK_STR(got, NAME);
    free(got);
}

/* Ordinary text and encodings of other data pass unchanged; so do runs
 * too short to tell (NB_REDACT_MIN_ENC) and a run with one wrong byte. */
static void test_encodings_not(void)
{
    uint8_t other[300];
    char b64[512], hex[700];
    uint32_t seed = 7;
    for (size_t i = 0; i < sizeof other; i++) {
        seed = seed * 1103515245 + 12345;
        other[i] = (uint8_t)(seed >> 16);
    }
    sodium_bin2base64(b64, sizeof b64, other, sizeof other, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2hex(hex, sizeof hex, other, sizeof other);
    char enc[128], bad[256];
    sodium_bin2base64(enc, sizeof enc, (const uint8_t *)KEY2, strlen(KEY2),
                      sodium_base64_VARIANT_ORIGINAL);
    enc[10] = enc[10] == 'A' ? 'B' : 'A';
    snprintf(bad, sizeof bad, "{\"b\":\"%s\"}", enc);
    const char *in[] = {"{\"text\":\"The quick brown fox jumps over the lazy dog 0123456789\"}",
                        b64, hex, bad, "sk-live-x?>y?>Zq8Xw7Lm4Np2Rt6~~!"};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        uint64_t c = 0;
        char *got = redact_split2(KEY2, in[i], strlen(in[i]), strlen(in[i]) / 2, &c);
        NB_CHECK_STR(got, in[i]);
        NB_CHECK_EQ_INT((int)c, 0);
        free(got);
    }
    /* A 5-byte value: its hex (10 characters) and base64 (6) are too short
     * to register and pass; the value itself is still caught. */
    uint64_t c = 0;
    char *got = redact_split2("k3y!Z", "6b3379215a azM5IVo= k3y!z", 25, 12, &c);
    NB_CHECK_STR(got, "6b3379215a azM5IVo= " NAME2);
    NB_CHECK_EQ_INT((int)c, 1);
    free(got);
}

/* Streaming: a chunk ending in a word that no run starts with leaves at
 * once; one ending in the start of a run is held that far; a stream
 * cut inside a run spelling NB_REDACT_MIN_PARTIAL bytes or more ends in
 * the placeholder, a shorter cut is released. */
static void test_encoded_holdback(void)
{
    char hex[128];
    sodium_bin2hex(hex, sizeof hex, (const uint8_t *)KEY2, strlen(KEY2));
    for (int cut = 0; cut < 2; cut++) {
        nb_redact_t *r = NULL;
        NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
        NB_CHECK_EQ_INT(nb_redact_add(r, KEY2, strlen(KEY2), NAME2, strlen(NAME2)), 0);
        out_t o = {0};
        const char *a = "data: hello world\n\n";
        NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)a, strlen(a), out_sink, &o), 0);
        NB_CHECK_EQ_INT((int)o.len, (int)strlen(a));
        char b[64];
        size_t bl = (size_t)snprintf(b, sizeof b, "data: %.*s", cut ? 16 : 10, hex);
        NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)b, bl, out_sink, &o), 0);
        NB_CHECK_EQ_INT((int)o.len, (int)strlen(a) + 6); /* the hex prefix held */
        NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
        char want[128];
        snprintf(want, sizeof want, "%sdata: %s", a, cut ? NAME2 : "736b2d6c69");
        NB_CHECK_STR((char *)o.p, want);
        out_free(&o);
        nb_redact_free(r);
    }
}

/* Random streams: every spelling of the value planted among base64 and
 * hex of other data, random chunking; the value never reaches the output
 * in any of them. */
static void test_encodings_random(void)
{
    size_t klen = strlen(KEY2);
    char runs[16][128];
    size_t nruns = 0;
    /* The determined runs of every alignment, both alphabets, and the hex. */
    for (size_t a = 0; a < 3; a++)
        for (size_t v = 0; v < 4; v += 2) {
            char raw[64], enc[128];
            memset(raw, 'Q', a);
            memcpy(raw + a, KEY2, klen);
            sodium_bin2base64(enc, sizeof enc, (const uint8_t *)raw, a + klen, b64_variants[v]);
            size_t js = (8 * a + 5) / 6, je = 8 * (a + klen) / 6;
            snprintf(runs[nruns++], sizeof runs[0], "%.*s", (int)(je - js), enc + js);
        }
    sodium_bin2hex(runs[nruns++], sizeof runs[0], (const uint8_t *)KEY2, klen);
    uint32_t seed = 99;
    for (int iter = 0; iter < 200; iter++) {
        static char in[8192];
        size_t n = 0;
        while (n < 6000) {
            seed = seed * 1103515245 + 12345;
            int c = (seed >> 16) % 8;
            char piece[256];
            uint8_t raw[64];
            size_t rl = 0;
            if (c < 3) { /* base64 of something holding the value */
                rl = (seed >> 8) % 5;
                memset(raw, 'z', rl);
                memcpy(raw + rl, KEY2, klen);
                rl += klen;
                sodium_bin2base64(piece, sizeof piece, raw, rl, b64_variants[(seed >> 4) % 4]);
            } else if (c == 3) {
                sodium_bin2hex(piece, sizeof piece, (const uint8_t *)KEY2, klen);
                if (seed & 1024)
                    for (size_t i = 0; piece[i]; i++)
                        piece[i] = (char)(piece[i] >= 'a' ? piece[i] - 32 : piece[i]);
            } else if (c == 4) {
                snprintf(piece, sizeof piece, "%s", "SK-LIVE-X?>Y?>ZQ8XW7LM4NP2RT6~~~");
            } else { /* base64 of other bytes */
                for (size_t i = 0; i < 20; i++)
                    raw[i] = (uint8_t)(seed >> (i % 24));
                sodium_bin2base64(piece, sizeof piece, raw, 20, sodium_base64_VARIANT_ORIGINAL);
            }
            size_t pl = strlen(piece);
            memcpy(in + n, piece, pl);
            n += pl;
            in[n++] = (seed & 64) ? ' ' : '"';
        }
        nb_redact_t *r = NULL;
        NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
        NB_CHECK_EQ_INT(nb_redact_add(r, KEY2, klen, NAME2, strlen(NAME2)), 0);
        out_t o = {0};
        for (size_t off = 0; off < n;) {
            seed = seed * 1103515245 + 12345;
            size_t k = 1 + (seed >> 16) % 300;
            if (k > n - off)
                k = n - off;
            NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in + off, k, out_sink, &o), 0);
            off += k;
        }
        NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
        for (size_t i = 0; i < nruns; i++)
            NB_CHECK(!strcasestr((char *)o.p, runs[i]));
        NB_CHECK(!strcasestr((char *)o.p, KEY2));
        out_free(&o);
        nb_redact_free(r);
    }
}

/* A full needle table: every needle's runs are registered and found. */
static void test_encodings_full_table(void)
{
    nb_redact_t *r = NULL;
    NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
    static char keys[NB_REDACT_MAX_NEEDLES][48];
    for (int i = 0; i < NB_REDACT_MAX_NEEDLES; i++) {
        snprintf(keys[i], sizeof keys[i], "key-%03d-Zq8Xw7Lm4Np2Rt6Vy9Bc3", i);
        NB_CHECK_EQ_INT(nb_redact_add(r, keys[i], strlen(keys[i]), NAME2, strlen(NAME2)), 0);
    }
    NB_CHECK_EQ_INT(nb_redact_add(r, "one-too-many-key", 16, "X", 1), NB_ETOOBIG);
    out_t o = {0};
    for (int i = 0; i < NB_REDACT_MAX_NEEDLES; i += 9) {
        char enc[128], hex[128], line[512];
        sodium_bin2base64(enc, sizeof enc, (const uint8_t *)keys[i], strlen(keys[i]),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        sodium_bin2hex(hex, sizeof hex, (const uint8_t *)keys[i], strlen(keys[i]));
        snprintf(line, sizeof line, "%s %s %s|", enc, hex, keys[i]);
        NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)line, strlen(line), out_sink, &o), 0);
    }
    NB_CHECK_EQ_INT(nb_redact_finish(r, out_sink, &o), 0);
    NB_CHECK_EQ_INT((int)nb_redact_count(r), 3 * ((NB_REDACT_MAX_NEEDLES + 8) / 9));
    NB_CHECK(!strstr((char *)o.p, "Zq8Xw7"));
    out_free(&o);
    nb_redact_free(r);
}

/* ---- decode ---- */

static size_t zcompress(int window_bits, const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    NB_CHECK_EQ_INT(deflateInit2(&z, 9, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    NB_CHECK_EQ_INT(deflate(&z, Z_FINISH), Z_STREAM_END);
    size_t len = z.total_out;
    deflateEnd(&z);
    return len;
}

static void decode_roundtrip(nb_decode_kind_t kind, int wbits, size_t step)
{
    const char *plain = "{\"stored\":\"" KEY "\"} and some more text to make it longer";
    uint8_t comp[4096];
    size_t cl = zcompress(wbits, (const uint8_t *)plain, strlen(plain), comp, sizeof comp);
    nb_decode_t *d = NULL;
    NB_CHECK_EQ_INT(nb_decode_new(kind, &d), 0);
    out_t o = {0};
    for (size_t off = 0; off < cl; off += step) {
        size_t k = cl - off < step ? cl - off : step;
        NB_CHECK_EQ_INT(nb_decode_feed(d, comp + off, k, out_sink, &o), 0);
    }
    NB_CHECK_EQ_INT(nb_decode_finish(d), 0);
    NB_CHECK_STR((char *)o.p, plain);
    out_free(&o);
    nb_decode_free(d);
}

static void test_decode(void)
{
    NB_CHECK_EQ_INT(nb_decode_kind("gzip", 4), NB_DECODE_GZIP);
    NB_CHECK_EQ_INT(nb_decode_kind(" X-GZip ", 8), NB_DECODE_GZIP);
    NB_CHECK_EQ_INT(nb_decode_kind("Deflate", 7), NB_DECODE_DEFLATE);
    NB_CHECK_EQ_INT(nb_decode_kind("identity", 8), NB_DECODE_IDENTITY);
    NB_CHECK_EQ_INT(nb_decode_kind("br", 2), NB_DECODE_BR);
    NB_CHECK_EQ_INT(nb_decode_kind("zstd", 4), NB_DECODE_UNSUPPORTED);
    NB_CHECK_EQ_INT(nb_decode_kind("gzip, gzip", 10), NB_DECODE_UNSUPPORTED);
    nb_decode_t *d = NULL;
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_UNSUPPORTED, &d), NB_EUNSUPPORTED);
    size_t steps[] = {1, 5, 4096};
    for (size_t i = 0; i < 3; i++) {
        decode_roundtrip(NB_DECODE_GZIP, 16 + 15, steps[i]);
        decode_roundtrip(NB_DECODE_DEFLATE, 15, steps[i]);
        decode_roundtrip(NB_DECODE_DEFLATE, -15, steps[i]); /* raw deflate as "deflate" */
    }
}

static void test_decode_br(void)
{
#ifdef NB_HAVE_BROTLI
    const char *plain = "{\"stored\":\"" KEY "\"} brotli body, long enough to compress a bit";
    uint8_t comp[1024];
    size_t cl = sizeof comp;
    NB_CHECK(BrotliEncoderCompress(5, 22, BROTLI_MODE_TEXT, strlen(plain), (const uint8_t *)plain,
                                   &cl, comp));
    for (size_t step = 1; step <= cl; step += 7) {
        nb_decode_t *d = NULL;
        out_t o = {0};
        NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_BR, &d), 0);
        for (size_t off = 0; off < cl; off += step)
            NB_CHECK_EQ_INT(
                nb_decode_feed(d, comp + off, cl - off < step ? cl - off : step, out_sink, &o), 0);
        NB_CHECK_EQ_INT(nb_decode_finish(d), 0);
        NB_CHECK_STR((char *)o.p, plain);
        out_free(&o);
        nb_decode_free(d);
    }
    nb_decode_t *d = NULL;
    out_t o = {0};
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_BR, &d), 0);
    NB_CHECK_EQ_INT(nb_decode_feed(d, comp, cl / 2, out_sink, &o), 0);
    NB_CHECK_EQ_INT(nb_decode_finish(d), NB_EPROTO); /* cut short */
    out_free(&o);
    nb_decode_free(d);
#else
    nb_decode_t *d = NULL;
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_BR, &d), NB_EUNSUPPORTED);
#endif
}

static void test_decode_gzip_members_and_errors(void)
{
    uint8_t comp[256], both[512];
    size_t a = zcompress(31, (const uint8_t *)"first ", 6, comp, sizeof comp);
    memcpy(both, comp, a);
    size_t b = zcompress(31, (const uint8_t *)"second", 6, both + a, sizeof both - a);
    nb_decode_t *d = NULL;
    out_t o = {0};
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_GZIP, &d), 0);
    NB_CHECK_EQ_INT(nb_decode_feed(d, both, a + b, out_sink, &o), 0);
    NB_CHECK_EQ_INT(nb_decode_finish(d), 0);
    NB_CHECK_STR((char *)o.p, "first second");
    nb_decode_free(d);
    out_free(&o);
    /* Cut short. */
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_GZIP, &d), 0);
    NB_CHECK_EQ_INT(nb_decode_feed(d, comp, a - 4, out_sink, &o), 0);
    NB_CHECK_EQ_INT(nb_decode_finish(d), NB_EPROTO);
    nb_decode_free(d);
    out_free(&o);
    /* Garbage. */
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_GZIP, &d), 0);
    NB_CHECK_EQ_INT(nb_decode_feed(d, (const uint8_t *)"not gzip at all", 15, out_sink, &o),
                    NB_EPROTO);
    nb_decode_free(d);
    out_free(&o);
}

static int count_sink(void *ctx, const uint8_t *p, size_t n)
{
    (void)p;
    *(uint64_t *)ctx += n;
    return 0;
}

static void test_decode_bomb(void)
{
    size_t n = 64u << 20;
    uint8_t *zeros = calloc(1, n);
    size_t cap = n / 100;
    uint8_t *comp = malloc(cap);
    size_t cl = zcompress(31, zeros, n, comp, cap);
    free(zeros);
    nb_decode_t *d = NULL;
    uint64_t got = 0;
    NB_CHECK_EQ_INT(nb_decode_new(NB_DECODE_GZIP, &d), 0);
    int r = nb_decode_feed(d, comp, cl, count_sink, &got);
    NB_CHECK_EQ_INT(r, NB_ETOOBIG);
    NB_CHECK(got <= NB_DECODE_FREE_BYTES + NB_DECODE_CHUNK);
    nb_decode_free(d);
    free(comp);
}

/* ---- WebSocket scanner ---- */

static size_t frame(uint8_t *o, int fin, int op, const char *payload, size_t n)
{
    size_t h = 2;
    o[0] = (uint8_t)((fin ? 0x80 : 0) | op);
    if (n < 126) {
        o[1] = (uint8_t)n;
    } else {
        o[1] = 126;
        o[2] = (uint8_t)(n >> 8);
        o[3] = (uint8_t)n;
        h = 4;
    }
    memcpy(o + h, payload, n);
    return h + n;
}

typedef struct {
    int op;
    char data[70000];
    size_t len;
} msg_t;

/* Reassembles the scanner's output with a strict client-side reading.
 * Returns the number of messages; control frames counted in *ctl. */
static int parse_out(const uint8_t *p, size_t n, msg_t *msgs, int max, int *ctl, char *ctl_data)
{
    size_t i = 0;
    int nm = 0, in = 0;
    *ctl = 0;
    while (i < n) {
        NB_CHECK(n - i >= 2);
        int fin = p[i] >> 7, op = p[i] & 15;
        NB_CHECK_EQ_INT(p[i] & 0x70, 0);
        NB_CHECK_EQ_INT(p[i + 1] & 0x80, 0);
        size_t len = p[i + 1] & 127, h = 2;
        if (len == 126) {
            len = ((size_t)p[i + 2] << 8) | p[i + 3];
            h = 4;
        } else if (len == 127) {
            len = 0;
            for (int k = 0; k < 8; k++)
                len = (len << 8) | p[i + 2 + k];
            h = 10;
        }
        NB_CHECK(n - i >= h + len);
        if (op >= 8) {
            NB_CHECK(fin && len <= 125);
            memcpy(ctl_data + strlen(ctl_data), p + i + h, len);
            (*ctl)++;
        } else {
            if (!in) {
                NB_CHECK(op == 1 || op == 2);
                NB_CHECK(nm < max);
                msgs[nm].op = op;
                msgs[nm].len = 0;
                in = 1;
            } else {
                NB_CHECK_EQ_INT(op, 0);
            }
            memcpy(msgs[nm].data + msgs[nm].len, p + i + h, len);
            msgs[nm].len += len;
            if (fin) {
                msgs[nm].data[msgs[nm].len] = 0;
                nm++;
                in = 0;
            }
        }
        i += h + len;
    }
    NB_CHECK(!in);
    return nm;
}

static void ws_run(const uint8_t *in, size_t n, size_t step, out_t *o)
{
    nb_redact_t *d = mk(), *c = mk();
    nb_wsscan_t *s = NULL;
    NB_CHECK_EQ_INT(nb_wsscan_new(d, c, &s), 0);
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        NB_CHECK_EQ_INT(nb_wsscan_feed(s, in + off, k, out_sink, o), 0);
    }
    NB_CHECK(!nb_wsscan_partial(s));
    nb_wsscan_free(s);
    nb_redact_free(d);
    nb_redact_free(c);
}

static void test_ws_scan(void)
{
    static uint8_t in[1 << 17];
    static msg_t msgs[4];
    size_t n = 0;
    /* 1: the whole value in one text frame. */
    n += frame(in + n, 1, 1, "{\"auth\":\"Bearer " KEY "\"}",
               strlen("{\"auth\":\"Bearer " KEY "\"}"));
    /* 2: split across a non-final frame and its continuation, a ping and a
     * pong carrying the value interleaved. */
    n += frame(in + n, 0, 1, "got sk-live/A", 13);
    n += frame(in + n, 1, 9, "ping " KEY, 5 + strlen(KEY));
    n += frame(in + n, 0, 0, "b+9=Z", 5);
    n += frame(in + n, 1, 10, "", 0);
    n += frame(in + n, 1, 0, "q%x&y!", 6);
    /* 3: a binary message, percent-encoded value. */
    n += frame(in + n, 1, 2, "sk-live%2fAb%2B9%3dZq%25x%26y", 29);
    size_t steps[] = {1, 2, 5, 64, sizeof in};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        out_t o = {0};
        ws_run(in, n, steps[i], &o);
        NB_CHECK(!memmem(o.p, o.len, "sk-live", 7));
        int nctl = 0;
        char ctl[512] = "";
        int nm = parse_out(o.p, o.len, msgs, 4, &nctl, ctl);
        NB_CHECK_EQ_INT(nm, 3);
        NB_CHECK_EQ_INT(nctl, 2);
        NB_CHECK_STR(msgs[0].data, "{\"auth\":\"Bearer " NAME "\"}");
        NB_CHECK_EQ_INT(msgs[0].op, 1);
        NB_CHECK_STR(msgs[1].data, "got " NAME "!");
        NB_CHECK_STR(msgs[2].data, NAME);
        NB_CHECK_EQ_INT(msgs[2].op, 2);
        NB_CHECK_STR(ctl, "ping " NAME);
        out_free(&o);
    }
}

/* A long frame is streamed: output leaves before the frame is complete. */
static void test_ws_long_frame_streams(void)
{
    static uint8_t in[70000];
    static char payload[65000];
    memset(payload, 'a', sizeof payload);
    memcpy(payload + 40000, KEY, strlen(KEY));
    size_t n = frame(in, 1, 2, payload, sizeof payload);
    nb_redact_t *d = mk(), *c = mk();
    nb_wsscan_t *s = NULL;
    out_t o = {0};
    NB_CHECK_EQ_INT(nb_wsscan_new(d, c, &s), 0);
    NB_CHECK_EQ_INT(nb_wsscan_feed(s, in, 20000, out_sink, &o), 0);
    NB_CHECK(o.len >= 19000); /* not buffered whole */
    NB_CHECK(nb_wsscan_partial(s));
    NB_CHECK_EQ_INT(nb_wsscan_feed(s, in + 20000, n - 20000, out_sink, &o), 0);
    NB_CHECK(!memmem(o.p, o.len, KEY, strlen(KEY)));
    static msg_t msgs[1];
    int nctl = 0;
    char ctl[8] = "";
    NB_CHECK_EQ_INT(parse_out(o.p, o.len, msgs, 1, &nctl, ctl), 1);
    NB_CHECK_EQ_INT((int)msgs[0].len, (int)(sizeof payload - strlen(KEY) + strlen(NAME)));
    out_free(&o);
    nb_wsscan_free(s);
    nb_redact_free(d);
    nb_redact_free(c);
}

static void ws_expect_error(const uint8_t *in, size_t n)
{
    nb_redact_t *d = mk(), *c = mk();
    nb_wsscan_t *s = NULL;
    out_t o = {0};
    NB_CHECK_EQ_INT(nb_wsscan_new(d, c, &s), 0);
    NB_CHECK_EQ_INT(nb_wsscan_feed(s, in, n, out_sink, &o), NB_EPROTO);
    NB_CHECK_EQ_INT(nb_wsscan_feed(s, in, 1, out_sink, &o), NB_EPROTO); /* final */
    out_free(&o);
    nb_wsscan_free(s);
    nb_redact_free(d);
    nb_redact_free(c);
}

static void test_ws_errors(void)
{
    uint8_t rsv1[] = {0xC1, 0x01, 'x'}; /* permessage-deflate bit */
    uint8_t masked[] = {0x81, 0x81, 1, 2, 3, 4, 'x'};
    uint8_t cont[] = {0x80, 0x01, 'x'}; /* continuation outside a message */
    uint8_t twice[] = {0x01, 0x01, 'x', 0x01, 0x01, 'y'};
    uint8_t bigctl[] = {0x89, 126, 0, 126};
    uint8_t fragctl[] = {0x09, 0x00};
    uint8_t badop[] = {0x83, 0x00};
    ws_expect_error(rsv1, sizeof rsv1);
    ws_expect_error(masked, sizeof masked);
    ws_expect_error(cont, sizeof cont);
    ws_expect_error(twice, sizeof twice);
    ws_expect_error(bigctl, sizeof bigctl);
    ws_expect_error(fragctl, sizeof fragctl);
    ws_expect_error(badop, sizeof badop);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    NB_RUN(test_spellings);
    NB_RUN(test_zeros_squeezed);
    NB_RUN(test_utf16_utf32);
    NB_RUN(test_random_spellings);
    NB_RUN(test_not_spellings);
    NB_RUN(test_streaming_holdback);
    NB_RUN(test_false_start);
    NB_RUN(test_base64);
    NB_RUN(test_hex);
    NB_RUN(test_case_changes);
    NB_RUN(test_encodings_not);
    NB_RUN(test_encoded_holdback);
    NB_RUN(test_encodings_random);
    NB_RUN(test_encodings_full_table);
    NB_RUN(test_decode);
    NB_RUN(test_decode_br);
    NB_RUN(test_decode_gzip_members_and_errors);
    NB_RUN(test_decode_bomb);
    NB_RUN(test_ws_scan);
    NB_RUN(test_ws_long_frame_streams);
    NB_RUN(test_ws_errors);
    NB_TEST_MAIN_END();
}
