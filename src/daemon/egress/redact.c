#include "daemon/egress/redact.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/err.h"

typedef struct {
    uint8_t *n; /* in the arena: a secret or an encoding of one */
    size_t nlen;
    uint8_t *rep; /* in the arena: the placeholder */
    size_t rlen;
} needle_t;

/* Everything secret lives in one locked arena, allocated once and reused
 * across responses (nb_redact_reset): sodium_malloc costs several system
 * calls, far too many for each request. */
struct nb_redact {
    needle_t nd[NB_REDACT_MAX_NEEDLES];
    size_t count;
    size_t maxlen;
    uint8_t *arena; /* sodium_malloc */
    size_t cap, used;
    uint8_t *hold; /* in the arena, maxlen bytes: may hold part of a secret */
    size_t hlen;
    uint8_t *scratch; /* in the arena, 2 * maxlen bytes */
    int started;
    uint64_t replaced;
};

int nb_redact_new(nb_redact_t **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : -ENOMEM;
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
    r->count = r->maxlen = r->used = r->hlen = 0;
    r->hold = r->scratch = NULL;
    r->started = 0;
    r->replaced = 0;
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
    r->used += nlen + rlen;
    if (nlen > r->maxlen)
        r->maxlen = nlen;
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

/* Leftmost complete match starting in [from, limit); the longest needle
 * wins at equal positions. Returns the position, or SIZE_MAX. */
static size_t find_match(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                         size_t limit, size_t *which)
{
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < r->count; i++) {
        const needle_t *d = &r->nd[i];
        if (from >= len || d->nlen > len - from)
            continue;
        const uint8_t *m = memmem(buf + from, len - from, d->n, d->nlen);
        if (!m)
            continue;
        size_t pos = (size_t)(m - buf);
        if (pos >= limit)
            continue;
        if (pos < best || (pos == best && d->nlen > r->nd[*which].nlen)) {
            best = pos;
            *which = i;
        }
    }
    return best;
}

/* Longest tail of buf[from, len) that is a proper prefix of some needle. */
static size_t tail_prefix(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                          size_t *which)
{
    size_t avail = len - from, maxl = r->maxlen - 1;
    for (size_t l = avail < maxl ? avail : maxl; l > 0; l--) {
        const uint8_t *t = buf + len - l;
        for (size_t i = 0; i < r->count; i++) {
            const needle_t *d = &r->nd[i];
            if (d->nlen > l && d->n[0] == t[0] && memcmp(d->n, t, l) == 0) {
                if (which)
                    *which = i;
                return l;
            }
        }
    }
    return 0;
}

/* The first position in [from, m] where a needle may start that runs past
 * the end of buf (at m itself: only needles longer than `l`). Such a
 * pending occurrence would be leftmost (or longer) than the complete match
 * at m, so that match is not decided yet. SIZE_MAX when there is none. */
static size_t pending_start(const nb_redact_t *r, const uint8_t *buf, size_t len, size_t from,
                            size_t m, size_t l)
{
    size_t q = len - from < r->maxlen ? from : len - r->maxlen + 1;
    for (; q <= m; q++) {
        for (size_t i = 0; i < r->count; i++) {
            const needle_t *d = &r->nd[i];
            if (d->nlen > len - q && (q < m || d->nlen > l) && d->n[0] == buf[q] &&
                memcmp(d->n, buf + q, len - q) == 0)
                return q;
        }
    }
    return SIZE_MAX;
}

/* Emits buf[0, len) with every match starting before `limit` replaced.
 * Returns through *end the first byte not yet emitted. Unless `final`, it
 * stops where an occurrence still pending at the end of buf would take
 * precedence over the next complete match (leftmost, then longest). */
static int run_matches(nb_redact_t *r, const uint8_t *buf, size_t len, size_t limit, int final,
                       size_t *end, int *deferred, nb_redact_sink sink, void *ctx)
{
    size_t pos = 0, which = 0;
    int rc;
    *deferred = 0;
    for (;;) {
        size_t m = find_match(r, buf, len, pos, limit, &which);
        if (m == SIZE_MAX)
            break;
        size_t q = final ? SIZE_MAX : pending_start(r, buf, len, pos, m, r->nd[which].nlen);
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
        pos = m + r->nd[which].nlen;
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
    size_t keep = deferred ? len - pos : tail_prefix(r, buf, len, pos, NULL);
    if ((rc = emit(sink, ctx, buf + pos, len - pos - keep)) != 0)
        return rc;
    memmove(r->hold, buf + len - keep, keep); /* buf may be scratch, never hold */
    r->hlen = keep;
    return 0;
}

static int start(nb_redact_t *r)
{
    if (r->started)
        return 0;
    if (r->count > 0) {
        int rc = arena_reserve(r, 3 * r->maxlen);
        if (rc < 0)
            return rc;
        r->hold = r->arena + r->used;
        r->scratch = r->hold + r->maxlen;
        r->used += 3 * r->maxlen;
    }
    r->started = 1;
    return 0;
}

int nb_redact_feed(nb_redact_t *r, const uint8_t *p, size_t len, nb_redact_sink sink, void *ctx)
{
    int rc;
    if ((rc = start(r)) < 0)
        return rc;
    if (r->count == 0)
        return emit(sink, ctx, p, len);
    if (len == 0)
        return 0;
    size_t m1 = r->maxlen - 1;
    if (r->hlen + len <= 2 * r->maxlen && len < r->maxlen) {
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

int nb_redact_finish(nb_redact_t *r, nb_redact_sink sink, void *ctx)
{
    int rc, deferred;
    if ((rc = start(r)) < 0 || r->hlen == 0)
        return rc;
    size_t end = 0, which = 0;
    if ((rc = run_matches(r, r->hold, r->hlen, r->hlen, 1, &end, &deferred, sink, ctx)) != 0)
        goto out;
    size_t rest = r->hlen - end;
    size_t l = rest ? tail_prefix(r, r->hold, r->hlen, end, &which) : 0;
    if (rest && l == rest && l >= NB_REDACT_MIN_PARTIAL) {
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
