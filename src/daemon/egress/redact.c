#include "daemon/egress/redact.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/buf.h"
#include "lib/err.h"

typedef struct {
    uint8_t *n; /* in the arena: a secret or an encoding of one */
    size_t nlen;
    int ambiguous; /* holds '%', '\\' or '&': a literal and an escape may compete */
    uint8_t *rep;  /* in the arena: the placeholder */
    size_t rlen;
} needle_t;

/* A run of characters to look for as it is, derived from a needle at
 * start(): the needle itself (its literal occurrences, any ASCII case),
 * its hex (any case) or one base64 alignment of it (either alphabet). */
enum { PAT_RAW, PAT_HEX, PAT_B64 };

typedef struct {
    uint64_t h;   /* hash of the first `win` folded bytes */
    size_t off;   /* text: arena offset */
    size_t len;   /* characters */
    size_t owner; /* needle index: the replacement */
    int cls;      /* PAT_* */
} pat_t;

#define PAT_BITS 16 /* 2^16-bit filter of window hashes */

/* Everything secret lives in one locked arena, allocated once and reused
 * across responses (nb_redact_reset): sodium_malloc costs several system
 * calls, far too many for each request. */
struct nb_redact {
    needle_t nd[NB_REDACT_MAX_NEEDLES];
    size_t count;
    size_t maxlen;
    size_t span;           /* longest occurrence in the stream: maxlen spelled out */
    uint8_t starts[256];   /* bytes that may start an occurrence */
    uint8_t inneedle[256]; /* bytes some needle holds */
    uint8_t *arena;        /* sodium_malloc */
    size_t cap, used;
    uint8_t *hold; /* in the arena, maxlen bytes: may hold part of a secret */
    size_t hlen;
    uint8_t *scratch; /* in the arena, 2 * maxlen bytes */
    int started;
    uint64_t replaced;
    /* Numeric character reference in progress across feeds, for
     * squeeze_zeros: 0 none, 1 after '&', 2 after "&#", 3 after "&#x";
     * zeros: leading zeros seen since. */
    int ref_state;
    unsigned ref_zeros;
    /* Literal runs (pat_t), built by start() in the arena (they are the
     * secrets, spelled out): npat entries sorted by hash, the hash filter
     * `bits`, and `pfirst` marking the folded first byte of every encoded
     * run. win: the hashed window, the shortest run (at most
     * NB_REDACT_MIN_ENC); q: the sampled q-gram (pat_first), gbits its
     * filter; patmax: longest encoded run. */
    pat_t *pat;
    size_t npat, win, q, patmax;
    uint8_t *bits, *gbits, *pfirst;
    uint8_t fold[256]; /* ASCII lower case, '-' -> '+', '_' -> '/' */
};

int nb_redact_new(nb_redact_t **out)
{
    *out = calloc(1, sizeof(**out));
    if (!*out)
        return -ENOMEM;
    for (unsigned c = 0; c < 256; c++)
        (*out)->fold[c] = c == '-' ? '+' : c == '_' ? '/' : c >= 'A' && c <= 'Z' ? c + 32 : c;
    return 0;
}

void nb_redact_free(nb_redact_t *r)
{
    if (!r)
        return;
    sodium_free(r->arena); /* wipes */
    free(r);
}

void nb_redact_reset(nb_redact_t *r)
{
    if (r->arena)
        sodium_memzero(r->arena, r->used);
    r->count = r->maxlen = r->span = r->used = r->hlen = 0;
    memset(r->starts, 0, sizeof r->starts);
    memset(r->inneedle, 0, sizeof r->inneedle);
    r->hold = r->scratch = NULL;
    r->pat = NULL;
    r->bits = r->gbits = r->pfirst = NULL;
    r->npat = r->win = r->q = r->patmax = 0;
    r->started = 0;
    r->replaced = 0;
    r->ref_state = 0;
    r->ref_zeros = 0;
}

/* Equal but for ASCII case. */
static int ieq(unsigned a, unsigned b)
{
    return a == b ||
           (a < 256 && b < 256 && nb_ascii_lower((uint8_t)a) == nb_ascii_lower((uint8_t)b));
}

static int arena_reserve(nb_redact_t *r, size_t need)
{
    if (need <= r->cap - r->used)
        return 0;
    size_t nc = r->cap ? r->cap : 4096;
    while (nc - r->used < need)
        nc *= 2;
    uint8_t *na = sodium_malloc(nc);
    if (!na)
        return -ENOMEM;
    if (r->used)
        memcpy(na, r->arena, r->used);
    for (size_t i = 0; i < r->count; i++) {
        r->nd[i].n = na + (r->nd[i].n - r->arena);
        r->nd[i].rep = na + (r->nd[i].rep - r->arena);
    }
    sodium_free(r->arena);
    r->arena = na;
    r->cap = nc;
    return 0;
}

int nb_redact_add(nb_redact_t *r, const void *needle, size_t nlen, const void *repl, size_t rlen)
{
    if (r->started)
        return NB_ESTATE;
    if (nlen == 0 || nlen > NB_REDACT_MAX_NEEDLE || rlen > NB_REDACT_MAX_NEEDLE)
        return NB_EINVAL;
    for (size_t i = 0; i < r->count; i++)
        if (r->nd[i].nlen == nlen && sodium_memcmp(r->nd[i].n, needle, nlen) == 0)
            return 0;
    if (r->count == NB_REDACT_MAX_NEEDLES)
        return NB_ETOOBIG;
    int rc = arena_reserve(r, nlen + rlen);
    if (rc < 0)
        return rc;
    needle_t *d = &r->nd[r->count++];
    d->n = r->arena + r->used;
    memcpy(d->n, needle, nlen);
    d->rep = d->n + nlen;
    if (rlen)
        memcpy(d->rep, repl, rlen);
    d->nlen = nlen;
    d->rlen = rlen;
    d->ambiguous = memchr(needle, '%', nlen) || memchr(needle, '\\', nlen) ||
                   memchr(needle, '&', nlen) || memchr(needle, '\0', nlen);
    /* Matched in any ASCII case: an upstream may upper- or lower-case
     * what it echoes. */
    r->starts[nb_ascii_lower(d->n[0])] = r->starts[nb_ascii_upper(d->n[0])] = 1;
    for (size_t k = 0; k < nlen; k++)
        r->inneedle[nb_ascii_lower(d->n[k])] = r->inneedle[nb_ascii_upper(d->n[k])] = 1;
    r->starts['%'] = r->starts['\\'] = r->starts['&'] = r->starts[0] = 1;
    r->used += nlen + rlen;
    if (nlen > r->maxlen)
        r->maxlen = nlen;
    return 0;
}

int nb_redact_copy(nb_redact_t *dst, const nb_redact_t *src)
{
    nb_redact_reset(dst);
    for (size_t i = 0; i < src->count; i++) {
        const needle_t *d = &src->nd[i];
        int rc = nb_redact_add(dst, d->n, d->nlen, d->rep, d->rlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

size_t nb_redact_needles(const nb_redact_t *r)
{
    return r->count;
}

uint64_t nb_redact_count(const nb_redact_t *r)
{
    return r->replaced;
}

static int emit(nb_redact_sink sink, void *ctx, const uint8_t *p, size_t n)
{
    return n ? sink(ctx, p, n) : 0;
}

/* ---- spellings ----
 *
 * An upstream may echo a value in another spelling than the one it was
 * sent in: percent-encoded (either hex case, any subset of the bytes),
 * JSON-escaped ("\/", "\u002F"), or as HTML character references
 * ("&#x2F;", "&#47;", "&sol;"), or as UTF-16/UTF-32 text (the byte with
 * one to three NULs beside it). The matcher decodes these per byte while it
 * compares (and without ASCII case), so one needle catches every mix of
 * them without listing the combinations. Base64 and hex of the value are
 * runs of their own ("literal runs" below). What is neither (a value split
 * across messages, an encoding of an encoding) stays out of reach; see
 * docs/security.md (A5). */

/* Reads `n` hex digits of s (avail bytes). 1 with *v, 0 not hex, -1 ran out. */
static int hexn(const uint8_t *s, size_t avail, size_t n, unsigned *v)
{
    *v = 0;
    for (size_t i = 0; i < n; i++) {
        if (i >= avail)
            return -1;
        int h = nb_hexval(s[i]);
        if (h < 0)
            return 0;
        *v = *v * 16 + (unsigned)h;
    }
    return 1;
}

static const struct {
    const char *name; /* without '&' and ';' */
    uint8_t ch;
} entities[] = {
    {"amp", '&'},    {"lt", '<'},     {"gt", '>'},     {"quot", '"'},  {"apos", '\''},
    {"sol", '/'},    {"plus", '+'},   {"equals", '='}, {"colon", ':'}, {"percnt", '%'},
    {"bsol", '\\'},  {"num", '#'},    {"excl", '!'},   {"quest", '?'}, {"period", '.'},
    {"lowbar", '_'}, {"hyphen", '-'}, {"dollar", '$'}, {"comma", ','}, {"semi", ';'},
};

/* An HTML character reference for byte b at s ('&' already seen). */
static int spell_entity(uint8_t b, const uint8_t *s, size_t avail, size_t *used)
{
    if (avail < 2)
        return -1;
    if (s[1] == '#') {
        size_t i = 2;
        int hex = 0;
        if (i < avail && (s[i] == 'x' || s[i] == 'X')) {
            hex = 1;
            i++;
        }
        unsigned v = 0;
        size_t digits = 0;
        for (;; i++) {
            if (i >= NB_REDACT_SPELL_MAX)
                return 0;
            if (i >= avail)
                return -1;
            int d = hex ? nb_hexval(s[i]) : (s[i] >= '0' && s[i] <= '9' ? s[i] - '0' : -1);
            if (d < 0)
                break;
            v = v * (hex ? 16u : 10u) + (unsigned)d;
            if (v > 0xff)
                return 0;
            digits++;
        }
        /* HTML decodes a numeric reference without its ';' too ("&#47x"
         * is "/x"); the digits end at the first non-digit either way. */
        if (!digits || !ieq(v, b))
            return 0;
        *used = i + (s[i] == ';');
        return 1;
    }
    int partial = 0;
    for (size_t e = 0; e < sizeof entities / sizeof entities[0]; e++) {
        if (entities[e].ch != b)
            continue;
        size_t nl = strlen(entities[e].name), k;
        for (k = 0; k < nl + 1; k++) {
            uint8_t want = k < nl ? (uint8_t)entities[e].name[k] : ';';
            if (1 + k >= avail) {
                partial = 1;
                break;
            }
            if (s[1 + k] != want)
                break;
        }
        if (k == nl + 1) {
            *used = nl + 2;
            return 1;
        }
    }
    return partial ? -1 : 0;
}

/* An escaped spelling of byte b at s: 1 (*used bytes), 0 none, -1 the input
 * ends inside what could still be one. */
static int spell_escape(uint8_t b, const uint8_t *s, size_t avail, size_t *used)
{
    unsigned v;
    int r;
    switch (s[0]) {
    case '%': {
        /* Percent-encoded once, or more: "%252F" is "%2F" after one
         * decode (a URL inside a URL), "%25252F" after two. */
        size_t at = 1;
        for (;;) {
            if ((r = hexn(s + at, avail - at, 2, &v)) <= 0)
                return r;
            at += 2;
            if (ieq(v, b)) {
                *used = at;
                return 1;
            }
            if (v != '%' || at + 2 > NB_REDACT_SPELL_MAX)
                return 0;
        }
    }
    case '\\': {
        if (avail < 2)
            return -1;
        if (s[1] == b && (b == '/' || b == '"' || b == '\\')) {
            *used = 2;
            return 1;
        }
        /* JSON inside a JSON string doubles the backslashes ("\\\\/",
         * "\\\\u002f"): a run of them spells what one would. */
        size_t k = 1;
        while (k < avail && s[k] == '\\' && k < NB_REDACT_SPELL_MAX - 1)
            k++;
        if (k >= avail)
            return -1;
        if (k > 1 && s[k] == b && (b == '/' || b == '"')) {
            *used = k + 1;
            return 1;
        }
        if (s[k] != 'u' || b >= 0x80 || k + 5 > NB_REDACT_SPELL_MAX)
            return 0;
        if ((r = hexn(s + k + 1, avail - k - 1, 4, &v)) <= 0)
            return r;
        if (!ieq(v, b))
            return 0;
        *used = k + 5;
        return 1;
    }
    case '&':
        return spell_entity(b, s, avail, used);
    case '\0': {
        /* UTF-16 or UTF-32 text (either byte order) spells an ASCII byte
         * with one to three NULs beside it: "s\0k\0" reads as 's' then
         * "\0k", and "\0\0\0s" as one spelling (issue 16). */
        size_t z = 1;
        while (z < 3 && z < avail && s[z] == 0)
            z++;
        if (z >= avail)
            return -1;
        if (!ieq(s[z], b))
            return 0;
        *used = z + 1;
        return 1;
    }
    default:
        return 0;
    }
}

/* Matches needle d at s (avail bytes). 1: complete, *used stream bytes;
 * 0: no; -1: the input ends while it still matches (*got needle bytes).
 * `lit` prefers the literal byte where both a literal and an escape could
 * apply (only needles holding '%', '\\' or '&' are ambiguous). */
static int match_mode(const needle_t *d, const uint8_t *s, size_t avail, size_t *used, size_t *got,
                      int lit)
{
    size_t pos = 0;
    for (size_t i = 0; i < d->nlen; i++) {
        if (pos >= avail) {
            *got = i;
            return -1;
        }
        uint8_t b = d->n[i];
        size_t u = 0;
        if (lit && ieq(s[pos], b)) {
            pos++;
            continue;
        }
        int r = spell_escape(b, s + pos, avail - pos, &u);
        if (r == 1) {
            pos += u;
            continue;
        }
        if (r < 0) {
            *got = i;
            return -1;
        }
        if (!ieq(s[pos], b))
            return 0;
        pos++;
    }
    *used = pos;
    return 1;
}

static int match_at(const needle_t *d, const uint8_t *s, size_t avail, size_t *used, size_t *got)
{
    int r = match_mode(d, s, avail, used, got, 1);
    if (r == 1 || !d->ambiguous)
        return r;
    size_t g2 = 0;
    int r2 = match_mode(d, s, avail, used, &g2, 0);
    if (r2 == 1)
        return 1;
    if (r2 < 0 && (r == 0 || g2 > *got))
        *got = g2;
    return r < 0 || r2 < 0 ? -1 : 0;
}

/* Longest complete match at pos (0 when none); *which gets the needle. */
static size_t match_here(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t pos,
                         size_t *which)
{
    size_t best = 0;
    uint8_t b = buf[pos];
    int esc = b == '%' || b == '\\' || b == '&' || b == 0;
    for (size_t i = 0; i < r->count; i++) {
        const needle_t *d = &r->nd[i];
        size_t used = 0, got = 0;
        if (!esc && !ieq(d->n[0], b))
            continue;
        /* Cheap reject before the full matcher: the second byte must be
         * the needle's, or start an escape. */
        if (!esc && d->nlen > 1 && pos + 1 < len && !ieq(buf[pos + 1], d->n[1]) &&
            buf[pos + 1] != '%' && buf[pos + 1] != '\\' && buf[pos + 1] != '&' && buf[pos + 1] != 0)
            continue;
        if (match_at(d, buf + pos, len - pos, &used, &got) == 1 && used > best) {
            best = used;
            *which = i;
        }
    }
    return best;
}

/* The byte an escape at s spells: 0-255, -1 when it is no escape, -2 when
 * the input ends inside one. Same forms as spell_escape. */
static int escape_value(const uint8_t *s, size_t avail)
{
    unsigned v;
    int r;
    if (s[0] == '%') {
        /* Same nesting as spell_escape: "%25" followed by a hex pair is
         * that pair's byte (a lone "%25" is '%'). */
        size_t at = 1;
        int last = -1;
        for (;;) {
            r = hexn(s + at, avail - at, 2, &v);
            if (r < 0)
                return last == '%' || last < 0 ? -2 : last;
            if (r == 0)
                return last;
            at += 2;
            last = (int)v;
            if (v != '%' || at + 2 > NB_REDACT_SPELL_MAX)
                return last;
        }
    }
    if (s[0] == 0) {
        size_t z = 1;
        while (z < 3 && z < avail && s[z] == 0)
            z++;
        return z >= avail ? -2 : s[z] ? s[z] : -1;
    }
    if (s[0] == '\\') {
        if (avail < 2)
            return -2;
        if (s[1] == '/' || s[1] == '"')
            return s[1];
        size_t k = 1;
        while (k < avail && s[k] == '\\' && k < NB_REDACT_SPELL_MAX - 1)
            k++;
        if (k >= avail)
            return -2;
        if (k > 1 && (s[k] == '/' || s[k] == '"'))
            return s[k];
        if (s[k] != 'u' || k + 5 > NB_REDACT_SPELL_MAX)
            return k > 1 ? '\\' : -1;
        r = hexn(s + k + 1, avail - k - 1, 4, &v);
        return r < 0 ? -2 : r == 0 || v >= 0x80 ? (k > 1 ? '\\' : -1) : (int)v;
    }
    /* '&': the numeric value, or the named reference's byte. */
    if (avail < 2)
        return -2;
    if (s[1] == '#') {
        /* spell_entity checks one byte; numbers spell exactly one value. */
        size_t i = 2;
        int hex = 0;
        if (i < avail && (s[i] == 'x' || s[i] == 'X'))
            hex = 1, i++;
        unsigned val = 0, digits = 0;
        for (;; i++) {
            if (i >= NB_REDACT_SPELL_MAX)
                return -1;
            if (i >= avail)
                return -2;
            int d = hex ? nb_hexval(s[i]) : (s[i] >= '0' && s[i] <= '9' ? s[i] - '0' : -1);
            if (d < 0)
                break;
            val = val * (hex ? 16u : 10u) + (unsigned)d;
            if (val > 0xff)
                return -1;
            digits++;
        }
        return digits ? (int)val : -1;
    }
    if (!((s[1] >= 'a' && s[1] <= 'z') || (s[1] >= 'A' && s[1] <= 'Z')))
        return -1; /* "& ", "&&": the common case in text */
    int partial = 0;
    for (size_t e = 0; e < sizeof entities / sizeof entities[0]; e++) {
        const char *nm = entities[e].name;
        size_t k = 0;
        for (; nm[k]; k++) {
            if (1 + k >= avail) {
                partial = 1;
                break;
            }
            if (s[1 + k] != (uint8_t)nm[k])
                break;
        }
        if (nm[k] || 1 + k >= avail) {
            partial |= !nm[k] && 1 + k >= avail;
            continue;
        }
        if (s[1 + k] == ';')
            return entities[e].ch;
    }
    return partial ? -2 : -1;
}

/* 1 when the introducer at e may belong to an occurrence: it is a needle
 * byte itself, or its escape spells one (or is cut by the end). */
static int intro_relevant(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t e)
{
    if (r->inneedle[buf[e]])
        return 1;
    int v = escape_value(buf + e, len - e);
    return v == -2 || (v >= 0 && r->inneedle[v]);
}

/* Next position in [from, end) holding a relevant '%', '\\' or '&', or
 * `end`. nx caches the next of each (SIZE_MAX: not looked up yet). */
static size_t next_intro(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                         size_t end, size_t nx[4])
{
    static const uint8_t intro[4] = {'%', '\\', '&', 0};
    for (;;) {
        size_t best = end;
        for (size_t k = 0; k < 4; k++) {
            if (nx[k] == SIZE_MAX || nx[k] < from) {
                const uint8_t *q = from < end ? memchr(buf + from, intro[k], end - from) : NULL;
                nx[k] = q ? (size_t)(q - buf) : end;
            }
            if (nx[k] < best)
                best = nx[k];
        }
        if (best >= end || intro_relevant(r, buf, len, best))
            return best;
        from = best + 1;
    }
}

/* ---- literal runs: any case, hex, base64 ----
 *
 * Three transforms are not per-byte spellings and need runs of their own,
 * derived from each needle by start():
 *  - case changes: the needle's literal occurrences in any ASCII case (an
 *    upstream upper- or lower-casing what it echoes; the per-byte matcher
 *    above compares without case too, so "%2f" of an upper-cased value is
 *    caught as well);
 *  - hex of the value, in any case ("736b2d...", "736B2D...");
 *  - base64 of the value, either alphabet ('+' '/' or '-' '_'), padded or
 *    not, wherever it starts in the encoded stream. The value's first byte
 *    falls at one of 3 positions of a 3-byte group, so there is one run per
 *    alignment: the characters made of value bits only. The leading
 *    character(s) mixing in the unknown preceding byte and the trailing one
 *    mixing in the unknown following byte (or padding bits) are left out.
 * An encoded run shorter than NB_REDACT_MIN_ENC is not registered: too
 * short to tell a secret from ordinary text (a 12-character base64 run is
 * 72 bits, a 12-digit hex run 48).
 *
 * What the guest then sees: the run replaced by the placeholder. Around a
 * base64 run, the one or two characters left out stay, so at most the
 * first and the last byte of the value (a few bits of each alignment) can
 * reach the guest, never the rest.
 *
 * Base64 and hex alphabets make almost every byte a possible start, so
 * these runs are not tried at every position. Each run is known by its
 * first `win` bytes (folded: lower case, '-' as '+', '_' as '/'). One
 * q-gram in every win - q + 1 bytes is looked up in a 2^16-bit filter of
 * the q-grams of those windows (pat_first); only on a hit are the nearby
 * starts hashed, checked against a second filter of window hashes, and
 * looked up (binary search) among the runs with that hash, each then
 * compared for real. Linear, about one table lookup per 9 bytes whatever
 * the number of needles; the needles' literal occurrences are found the
 * same way. */

#define HASH_B 0x100000001b3ULL

static uint64_t win_hash(const nb_redact_t *r, const uint8_t *s)
{
    uint64_t h = 0;
    for (size_t k = 0; k < r->win; k++)
        h = h * HASH_B + r->fold[s[k]];
    return h;
}

static size_t bucket(uint64_t h)
{
    return (size_t)((h * 0x9E3779B97F4A7C15ULL) >> (64 - PAT_BITS));
}

/* 1 when the n bytes at s spell the first n characters of p. */
static int pat_eq(const nb_redact_t *r, const pat_t *p, const uint8_t *s, size_t n)
{
    const uint8_t *t = r->arena + p->off;
    if (p->cls == PAT_B64) {
        for (size_t i = 0; i < n; i++) {
            uint8_t c = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
            if (c != t[i])
                return 0;
        }
        return 1;
    }
    return nb_iov_eq_nocase_n(nb_iov(s, n), (const char *)t, n);
}

/* Longest run (encoded ones only with enc_only) complete at pos, whose
 * window hashes to h; 0 when none. *which gets its needle. */
static size_t pat_match(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t pos,
                        uint64_t h, int enc_only, size_t *which)
{
    size_t lo = 0, hi = r->npat, best = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->pat[mid].h < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < r->npat && r->pat[lo].h == h; lo++) {
        const pat_t *p = &r->pat[lo];
        /* Longest; among equals, the first needle (deterministic). */
        if ((enc_only && p->cls == PAT_RAW) || p->len > len - pos || p->len < best ||
            (p->len == best && p->owner > *which))
            continue;
        if (pat_eq(r, p, buf + pos, p->len)) {
            best = p->len;
            *which = p->owner;
        }
    }
    return best;
}

/* q-gram of the window (at most 4 folded bytes) -> filter bit. */
static size_t gram(const nb_redact_t *r, const uint8_t *s)
{
    const uint8_t *f = r->fold;
    uint64_t g = 0;
    if (r->q == 4) /* the usual case, unrolled */
        g = (uint64_t)f[s[0]] << 24 | (uint64_t)f[s[1]] << 16 | (uint64_t)f[s[2]] << 8 | f[s[3]];
    else
        for (size_t k = 0; k < r->q; k++)
            g = g << 8 | f[s[k]];
    return (size_t)(((g + 1) * 0x9E3779B97F4A7C15ULL) >> (64 - PAT_BITS));
}

/* Leftmost position in [from, limit) where a run is complete, or SIZE_MAX.
 *
 * Sampled: every window of `win` bytes holds exactly one q-gram starting
 * at a multiple of win - q + 1 (from `from`), so only those q-grams are
 * looked up in `gbits` (every q-gram of every run's window); a hit checks
 * the win - q + 1 starts whose window holds it. About one lookup per 9
 * bytes for the usual 12-byte window. */
static size_t pat_first(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                        size_t limit)
{
    size_t w = r->win, q = r->q, st = w - q + 1, which;
    if (len < w || from > len - w)
        return SIZE_MAX;
    if (limit > len - w + 1)
        limit = len - w + 1;
    if (from >= limit)
        return SIZE_MAX;
    for (size_t g = from; g < limit + w - q; g += st) {
        size_t b = gram(r, buf + g);
        if (!((r->gbits[b >> 3] >> (b & 7)) & 1))
            continue;
        size_t c = g >= from + w - q ? g - (w - q) : from;
        for (; c <= g && c < limit; c++) {
            uint64_t h = win_hash(r, buf + c);
            size_t hb = bucket(h);
            if ((r->bits[hb >> 3] >> (hb & 7)) & 1 && pat_match(r, buf, len, c, h, 0, &which))
                return c;
        }
    }
    return SIZE_MAX;
}

static int enc_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' ||
           c == '/' || c == '-' || c == '_';
}

/* First position in [from, last] where an encoded run is still matching
 * when buf ends, or SIZE_MAX. *got: the value bytes that prefix spells. */
static size_t pat_partial(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                          size_t last, size_t *which, size_t *got)
{
    if (r->patmax < 2)
        return SIZE_MAX;
    size_t lo = len > r->patmax - 1 ? len - (r->patmax - 1) : 0;
    if (lo < from)
        lo = from;
    size_t q = len;
    while (q > lo && enc_char(buf[q - 1])) /* a run's prefix is all alphabet */
        q--;
    for (; q < len && q <= last; q++) {
        if (!r->pfirst[r->fold[buf[q]]])
            continue;
        size_t best = 0;
        int found = 0;
        for (size_t i = 0; i < r->npat; i++) {
            const pat_t *p = &r->pat[i];
            if (p->cls == PAT_RAW || p->len <= len - q || !pat_eq(r, p, buf + q, len - q))
                continue;
            size_t g = p->cls == PAT_HEX ? (len - q) / 2 : (len - q) * 6 / 8;
            if (!found || g > best) {
                best = g;
                *which = p->owner;
            }
            found = 1;
        }
        if (found) {
            *got = best;
            return q;
        }
    }
    return SIZE_MAX;
}

/* Leftmost complete match starting in [from, limit); the longest wins at
 * equal positions. Returns the position (*mlen its length), or SIZE_MAX.
 *
 * Fast path: an occurrence is either verbatim (memmem finds it) or holds
 * an escape introducer ('%', '\\', '&', NUL). If e is its first introducer,
 * everything before e is literal, so it starts at most maxlen - 1 bytes
 * before e. Only those short windows before introducers (found by memchr)
 * go through the per-byte matcher; plain text passes at memmem speed. */
static size_t find_match(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                         size_t limit, size_t *which, size_t *mlen)
{
    if (limit > len)
        limit = len;
    if (from >= limit)
        return SIZE_MAX;
    size_t m1 = pat_first(r, buf, len, from, limit);
    size_t iend = limit + r->maxlen - 1 < len ? limit + r->maxlen - 1 : len;
    size_t nx[4] = {SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX}, scanned = from;
    for (size_t e = next_intro(r, buf, len, from, iend, nx);;
         e = next_intro(r, buf, len, e + 1, iend, nx)) {
        if (e >= iend)
            break;
        size_t ws = e >= r->maxlen - 1 ? e - (r->maxlen - 1) : 0;
        if (ws < scanned)
            ws = scanned;
        size_t we = e < limit - 1 ? e : limit - 1;
        if (ws > m1 || ws >= limit)
            break;
        for (size_t p = ws; p <= we && p < m1; p++) {
            if (!r->starts[buf[p]])
                continue;
            size_t l = match_here(r, buf, len, p, which);
            if (l) {
                *mlen = l;
                return p;
            }
        }
        scanned = we + 1;
    }
    if (m1 == SIZE_MAX)
        return SIZE_MAX;
    /* The longest there: the needle in any spelling, or an encoded run. */
    size_t w2 = 0, l2 = pat_match(r, buf, len, m1, win_hash(r, buf + m1), 1, &w2);
    *mlen = match_here(r, buf, len, m1, which);
    if (l2 > *mlen) {
        *mlen = l2;
        *which = w2;
    }
    return m1;
}

/* The first position in [from, last] (and not before the last span-1
 * bytes) where some needle is still matching when buf ends. SIZE_MAX when
 * there is none. As in find_match, only positions that can start such an
 * occurrence are tried: within maxlen - 1 bytes of the end (all literal),
 * or within maxlen - 1 bytes before an escape introducer (its first one). */
static size_t raw_partial(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                          size_t last, size_t *which, size_t *got_out)
{
    size_t q = len - from < r->span ? from : len - r->span + 1;
    size_t tail = len >= r->maxlen ? len - r->maxlen + 1 : 0;
    size_t nx[4] = {SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX};
    while (q <= last && q < len) {
        size_t hi = len - 1; /* candidates run from q to hi */
        if (q < tail) {
            size_t e = next_intro(r, buf, len, q, len, nx);
            size_t ws = e >= len ? len : e >= r->maxlen - 1 ? e - (r->maxlen - 1) : 0;
            size_t cand = ws < tail ? ws : tail;
            if (q < cand) {
                q = cand;
                continue;
            }
            hi = e; /* q is in e's window (so e < len) */
        }
        for (; q <= hi && q <= last; q++) {
            if (!r->starts[buf[q]])
                continue;
            for (size_t i = 0; i < r->count; i++) {
                size_t used = 0, got = 0;
                if (match_at(&r->nd[i], buf + q, len - q, &used, &got) < 0) {
                    if (which)
                        *which = i;
                    if (got_out)
                        *got_out = got;
                    return q;
                }
            }
        }
    }
    return SIZE_MAX;
}

/* The first position in [from, last] where a needle, in a spelling or an
 * encoding, is still matching when buf ends (SIZE_MAX: none). *got: the
 * needle bytes matched, or spelled by the encoded prefix. */
static size_t first_partial(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                            size_t last, size_t *which, size_t *got)
{
    size_t w1 = 0, g1 = 0, w2 = 0, g2 = 0;
    size_t q1 = raw_partial(r, buf, len, from, last, &w1, &g1);
    size_t q2 = pat_partial(r, buf, len, from, q1 == SIZE_MAX ? last : q1, &w2, &g2);
    if (q2 < q1 || (q2 == q1 && q2 != SIZE_MAX && g2 > g1)) {
        q1 = q2;
        w1 = w2;
        g1 = g2;
    }
    if (which)
        *which = w1;
    if (got)
        *got = g1;
    return q1;
}

/* Length of the tail of buf[from, len) that may still start a needle. */
static size_t tail_prefix(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                          size_t *which, size_t *got)
{
    size_t q = first_partial(r, buf, len, from, len - 1, which, got);
    return q == SIZE_MAX ? 0 : len - q;
}

/* Emits buf[0, len) with every match starting before `limit` replaced.
 * Returns through *end the first byte not yet emitted. Unless `final`, it
 * stops where an occurrence still pending at the end of buf would take
 * precedence over the next complete match (leftmost, then longest). */
static int run_matches(nb_redact_t *r, const uint8_t *buf, size_t len, size_t limit, int final,
                       size_t *end, int *deferred, nb_redact_sink sink, void *ctx)
{
    size_t pos = 0, which = 0, ml = 0;
    int rc;
    *deferred = 0;
    for (;;) {
        size_t m = find_match(r, buf, len, pos, limit, &which, &ml);
        if (m == SIZE_MAX)
            break;
        size_t q = final ? SIZE_MAX : first_partial(r, buf, len, pos, m, NULL, NULL);
        if (q != SIZE_MAX) {
            if ((rc = emit(sink, ctx, buf + pos, q - pos)) != 0)
                return rc;
            pos = q;
            *deferred = 1;
            break;
        }
        if ((rc = emit(sink, ctx, buf + pos, m - pos)) != 0 ||
            (rc = emit(sink, ctx, r->nd[which].rep, r->nd[which].rlen)) != 0)
            return rc;
        r->replaced++;
        pos = m + ml;
    }
    *end = pos;
    return 0;
}

/* Full pass over buf: replace, emit, keep the tail that may start a needle. */
static int process(nb_redact_t *r, const uint8_t *buf, size_t len, nb_redact_sink sink, void *ctx)
{
    size_t pos;
    int deferred, rc = run_matches(r, buf, len, len, 0, &pos, &deferred, sink, ctx);
    if (rc != 0)
        return rc;
    size_t keep = deferred ? len - pos : tail_prefix(r, buf, len, pos, NULL, NULL);
    if ((rc = emit(sink, ctx, buf + pos, len - pos - keep)) != 0)
        return rc;
    memmove(r->hold, buf + len - keep, keep); /* buf may be scratch, never hold */
    r->hlen = keep;
    return 0;
}

/* Base64 alignment a (value bytes before it in its group): the first
 * character made of value bits only, through *js, and how many follow. */
static size_t b64_run(size_t a, size_t n, size_t *js)
{
    size_t je = 8 * (a + n) / 6; /* past the last character ending in the value */
    *js = (8 * a + 5) / 6;       /* the first one starting in it */
    return je > *js ? je - *js : 0;
}

/* Character j of the standard base64 of (a zero bytes, then v). */
static uint8_t b64_char(const uint8_t *v, size_t n, size_t a, size_t j)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t bit = 6 * j, k = bit / 8;
    unsigned hi = k >= a && k - a < n ? v[k - a] : 0;
    unsigned lo = k + 1 >= a && k + 1 - a < n ? v[k + 1 - a] : 0;
    return (uint8_t)al[((hi << 8 | lo) >> (10 - bit % 8)) & 63];
}

static int pat_cmp(const void *a, const void *b)
{
    uint64_t x = ((const pat_t *)a)->h, y = ((const pat_t *)b)->h;
    return x < y ? -1 : x > y;
}

static void pat_put(nb_redact_t *r, size_t off, size_t len, size_t owner, int cls)
{
    r->pat[r->npat++] = (pat_t){.off = off, .len = len, .owner = owner, .cls = cls};
    if (cls != PAT_RAW && len > r->patmax)
        r->patmax = len;
}

/* Builds the runs of every needle (see "literal runs") in the arena. */
static int build_pats(nb_redact_t *r)
{
    size_t np = 0, text = 0, js;
    r->win = NB_REDACT_MIN_ENC;
    for (size_t i = 0; i < r->count; i++) {
        size_t n = r->nd[i].nlen;
        np++;
        if (n < r->win)
            r->win = n;
        if (2 * n >= NB_REDACT_MIN_ENC)
            np++, text += 2 * n + 1; /* sodium_bin2hex's NUL */
        for (size_t a = 0; a < 3; a++) {
            size_t l = b64_run(a, n, &js);
            if (l >= NB_REDACT_MIN_ENC)
                np++, text += l;
        }
    }
    size_t pad = (8 - r->used % 8) % 8, bytes = (size_t)1 << (PAT_BITS - 3);
    int rc = arena_reserve(r, pad + np * sizeof(pat_t) + 2 * bytes + 256 + text);
    if (rc < 0)
        return rc;
    r->used += pad;
    r->pat = (pat_t *)(void *)(r->arena + r->used);
    r->used += np * sizeof(pat_t);
    r->bits = r->arena + r->used;
    r->gbits = r->bits + bytes;
    r->pfirst = r->gbits + bytes;
    memset(r->bits, 0, 2 * bytes + 256);
    r->used += 2 * bytes + 256;
    for (size_t i = 0; i < r->count; i++) {
        const uint8_t *v = r->nd[i].n;
        size_t n = r->nd[i].nlen;
        pat_put(r, (size_t)(v - r->arena), n, i, PAT_RAW);
        if (2 * n >= NB_REDACT_MIN_ENC) {
            sodium_bin2hex((char *)r->arena + r->used, 2 * n + 1, v, n);
            pat_put(r, r->used, 2 * n, i, PAT_HEX);
            r->used += 2 * n + 1;
        }
        for (size_t a = 0; a < 3; a++) {
            size_t l = b64_run(a, n, &js);
            if (l < NB_REDACT_MIN_ENC)
                continue;
            uint8_t *t = r->arena + r->used;
            for (size_t j = 0; j < l; j++)
                t[j] = b64_char(v, n, a, js + j);
            pat_put(r, r->used, l, i, PAT_B64);
            r->used += l;
        }
    }
    r->q = r->win < 4 ? r->win : 4;
    for (size_t i = 0; i < r->npat; i++) {
        pat_t *p = &r->pat[i];
        const uint8_t *t = r->arena + p->off;
        p->h = win_hash(r, t);
        size_t b = bucket(p->h);
        r->bits[b >> 3] |= (uint8_t)(1u << (b & 7));
        for (size_t k = 0; k + r->q <= r->win; k++) {
            size_t g = gram(r, t + k);
            r->gbits[g >> 3] |= (uint8_t)(1u << (g & 7));
        }
        if (p->cls != PAT_RAW)
            r->pfirst[r->fold[t[0]]] = 1;
    }
    qsort(r->pat, r->npat, sizeof(pat_t), pat_cmp);
    return 0;
}

static int start(nb_redact_t *r)
{
    if (r->started)
        return 0;
    if (r->count > 0) {
        r->span = r->maxlen * NB_REDACT_SPELL_MAX;
        int rc = arena_reserve(r, 3 * r->span);
        if (rc < 0)
            return rc;
        size_t hold = r->used;
        r->used += 3 * r->span;
        if ((rc = build_pats(r)) < 0)
            return rc;
        /* Only now: build_pats may have moved the arena. */
        r->hold = r->arena + hold;
        r->scratch = r->hold + r->span;
    }
    r->started = 1;
    return 0;
}

static int feed_raw(nb_redact_t *r, const uint8_t *p, size_t len, nb_redact_sink sink, void *ctx)
{
    int rc;
    if ((rc = start(r)) < 0)
        return rc;
    if (r->count == 0)
        return emit(sink, ctx, p, len);
    if (len == 0)
        return 0;
    size_t m1 = r->span - 1;
    if (r->hlen + len <= 2 * r->span && len < r->span) {
        /* Small chunk: work on hold + chunk as one buffer. */
        memcpy(r->scratch, r->hold, r->hlen);
        memcpy(r->scratch + r->hlen, p, len);
        size_t n = r->hlen + len;
        rc = process(r, r->scratch, n, sink, ctx);
        sodium_memzero(r->scratch, n);
        return rc;
    }
    size_t off = 0;
    if (r->hlen > 0) {
        /* Matches that start in the held bytes end within the next m1 bytes. */
        size_t take = len < m1 ? len : m1, n = r->hlen + take, end;
        int deferred;
        memcpy(r->scratch, r->hold, r->hlen);
        memcpy(r->scratch + r->hlen, p, take);
        /* Every match starting there is decidable now: final = 1. */
        rc = run_matches(r, r->scratch, n, r->hlen, 1, &end, &deferred, sink, ctx);
        if (rc == 0 && end < r->hlen)
            rc = emit(sink, ctx, r->scratch + end, r->hlen - end);
        off = end > r->hlen ? end - r->hlen : 0;
        sodium_memzero(r->scratch, n);
        r->hlen = 0;
        if (rc != 0)
            return rc;
    }
    return process(r, p + off, len - off, sink, ctx);
}

/* HTML allows any number of leading zeros in a numeric character reference
 * ("&#0000000047;" is "/"), which no bounded hold-back could cover. So
 * zeros past the second are dropped from the stream before matching: the
 * reference keeps its meaning and every spelling of one byte stays within
 * NB_REDACT_SPELL_MAX ("&#x002F;", "&#00047;"). Only "&#" or "&#x"
 * followed by three or more zeros is changed; the state carries across
 * feeds, so a run cut by a chunk boundary is squeezed the same way. The
 * kept runs are passed on as slices of p: no copy. */
int nb_redact_feed(nb_redact_t *r, const uint8_t *p, size_t len, nb_redact_sink sink, void *ctx)
{
    if (r->count == 0)
        return feed_raw(r, p, len, sink, ctx); /* nothing to find: bytes unchanged */
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        if (r->ref_state == 0) {
            /* Nothing in progress: only an '&' can start a reference. */
            const uint8_t *amp = memchr(p + i, '&', len - i);
            if (!amp)
                break;
            i = (size_t)(amp - p);
        }
        uint8_t ch = p[i];
        switch (r->ref_state) {
        case 1:
            r->ref_state = ch == '#' ? 2 : 0;
            r->ref_zeros = 0;
            break;
        case 2:
        case 3:
            if (ch == '0') {
                if (++r->ref_zeros > 2) {
                    int rc = i > from ? feed_raw(r, p + from, i - from, sink, ctx) : 0;
                    if (rc != 0)
                        return rc;
                    from = i + 1;
                    r->ref_zeros = 2;
                }
                continue;
            }
            if (r->ref_state == 2 && r->ref_zeros == 0 && (ch == 'x' || ch == 'X')) {
                r->ref_state = 3;
                continue;
            }
            r->ref_state = 0;
            break;
        default:
            break;
        }
        if (ch == '&')
            r->ref_state = 1;
    }
    return from < len ? feed_raw(r, p + from, len - from, sink, ctx) : 0;
}

int nb_redact_finish(nb_redact_t *r, nb_redact_sink sink, void *ctx)
{
    r->ref_state = 0;
    r->ref_zeros = 0;

    int rc, deferred;
    if ((rc = start(r)) < 0 || r->hlen == 0)
        return rc;
    size_t end = 0, which = 0, got = 0;
    if ((rc = run_matches(r, r->hold, r->hlen, r->hlen, 1, &end, &deferred, sink, ctx)) != 0)
        goto out;
    size_t rest = r->hlen - end;
    size_t l = rest ? tail_prefix(r, r->hold, r->hlen, end, &which, &got) : 0;
    if (rest && l == rest && got >= NB_REDACT_MIN_PARTIAL) {
        rc = emit(sink, ctx, r->nd[which].rep, r->nd[which].rlen);
        r->replaced++;
    } else {
        rc = emit(sink, ctx, r->hold + end, rest);
    }
out:
    sodium_memzero(r->hold, r->hlen);
    r->hlen = 0;
    return rc;
}
