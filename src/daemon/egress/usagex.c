/* Token usage extractors (usagex.h): JSON scanner, AWS event-stream
 * framing, and the per-response meter. */
#include "daemon/egress/usagex.h"

#include <errno.h>
#include <stddef.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "lib/buf.h"
#include "lib/err.h"

/* ================================================= JSON scanner */

enum {
    J_VALUE = 0, /* a value must come */
    J_ARR_FIRST, /* after '[': a value or ']' */
    J_KEY_FIRST, /* after '{': a key or '}' */
    J_KEY_NEXT,  /* after ',' in an object: a key */
    J_KEY,       /* inside a key string */
    J_COLON,
    J_AFTER, /* after a value: ',' or the container's end */
    J_STR,   /* inside a string value */
    J_NUM,
    J_LIT,
    J_END, /* the root value is complete: only blanks may follow */
};

void nb_ujson_init(nb_ujson_t *j, nb_ujson_cb cb, void *ctx)
{
    memset(j, 0, sizeof *j);
    j->cb = cb;
    j->ctx = ctx;
}

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void path_cut(nb_ujson_t *j, size_t n)
{
    j->plen = n;
    j->path[n] = '\0';
}

/* Appends a path segment (after a '.' unless at the root); 0, or -1 when
 * it does not fit (the level is then marked and its scalars unreported). */
static int path_add(nb_ujson_t *j, const char *s, size_t n)
{
    size_t need = (j->plen ? 1 : 0) + n;
    if (j->plen + need > NB_UJSON_PATH)
        return -1;
    if (j->plen)
        j->path[j->plen++] = '.';
    memcpy(j->path + j->plen, s, n);
    path_cut(j, j->plen + n);
    return 0;
}

static int push(nb_ujson_t *j, uint8_t kind)
{
    if (j->depth >= NB_UJSON_DEPTH)
        return NB_ETOOBIG;
    j->stack[j->depth] = kind;
    j->seg[j->depth] = (uint16_t)j->plen;
    j->path_over &= ~(1u << j->depth);
    if (kind == 2 && path_add(j, "[]", 2) < 0)
        j->path_over |= 1u << j->depth;
    j->depth++;
    return 0;
}

static void pop(nb_ujson_t *j)
{
    j->depth--;
    j->path_over &= ~(1u << j->depth);
    path_cut(j, j->seg[j->depth]);
}

/* A value ended: what may follow. */
static void value_done(nb_ujson_t *j)
{
    j->state = j->depth ? J_AFTER : J_END;
}

static int emit(nb_ujson_t *j, nb_ujson_kind_t kind)
{
    j->val[j->vlen] = '\0';
    if (j->path_over || !j->cb)
        return 0;
    return j->cb(j->ctx, j->path, j->plen, kind, j->val, j->vlen, j->cut);
}

static void val_put(nb_ujson_t *j, char c)
{
    if (j->vlen < NB_UJSON_SCALAR)
        j->val[j->vlen++] = c;
    else
        j->cut = 1;
}

static int lit_ok(const nb_ujson_t *j)
{
    return (j->vlen == 4 && (memcmp(j->val, "true", 4) == 0 || memcmp(j->val, "null", 4) == 0)) ||
           (j->vlen == 5 && memcmp(j->val, "false", 5) == 0);
}

/* The start of a value (state J_VALUE or J_ARR_FIRST after ws). */
static int begin_value(nb_ujson_t *j, uint8_t c)
{
    j->vlen = 0;
    j->cut = 0;
    if (c == '{') {
        j->state = J_KEY_FIRST;
        return push(j, 1);
    }
    if (c == '[') {
        j->state = J_ARR_FIRST;
        return push(j, 2);
    }
    if (c == '"') {
        j->state = J_STR;
        j->esc = 0;
        j->vesc = 0;
        return 0;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        j->state = J_NUM;
        val_put(j, (char)c);
        return 0;
    }
    if (c == 't' || c == 'f' || c == 'n') {
        j->state = J_LIT;
        val_put(j, (char)c);
        return 0;
    }
    return NB_EPROTO;
}

/* A string byte; 1 when the closing quote came. Escapes: \uXXXX becomes
 * '?', other escapes their letter (keys and values we read are ASCII). */
static int str_byte(nb_ujson_t *j, uint8_t c, int *bad)
{
    if (j->uhex) {
        int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (!hex)
            *bad = 1;
        if (--j->uhex == 0)
            val_put(j, '?');
        return 0;
    }
    if (j->esc) {
        j->esc = 0;
        if (c == 'u')
            j->uhex = 4;
        else if (strchr("\"\\/bfnrt", c) && c)
            val_put(j, (char)(c == 'n' ? '\n' : c == 't' ? '\t' : c));
        else
            *bad = 1;
        return 0;
    }
    if (c == '\\') {
        j->esc = 1;
        return 0;
    }
    if (c == '"')
        return 1;
    if (c < 0x20)
        *bad = 1;
    val_put(j, (char)c);
    return 0;
}

/* Inside a string, bytes str_byte would just keep: what most of a stream's
 * bytes are (text deltas), taken as a run instead of one by one. */
static const uint8_t plain_byte[256] = {
    [0x20 ... 0x21] = 1, [0x23 ... 0x5b] = 1, [0x5d ... 0xff] = 1}; /* not '"', '\\', controls */

static size_t plain_run(const nb_ujson_t *j, const uint8_t *p, size_t len)
{
    size_t n = 0;
    if ((j->state != J_STR && j->state != J_KEY) || j->esc || j->uhex)
        return 0;
    while (n < len && plain_byte[p[n]])
        n++;
    return n;
}

/* Nothing is pending: no key and no scalar begun. */
static int ujson_settled(const nb_ujson_t *j)
{
    return j->state == J_AFTER || j->state == J_END || j->state == J_KEY_FIRST ||
           j->state == J_ARR_FIRST || j->state == J_KEY_NEXT;
}

int nb_ujson_feed(nb_ujson_t *j, const uint8_t *p, size_t len)
{
    if (j->err)
        return j->err;
    int r = 0;
    for (size_t i = 0; i < len && r == 0; i++) {
        uint8_t c = p[i];
        int bad = 0;
        size_t run = plain_run(j, p + i, len - i);
        if (run) {
            size_t room = NB_UJSON_SCALAR - j->vlen;
            memcpy(j->val + j->vlen, p + i, run < room ? run : room);
            j->vlen += run < room ? run : room;
            if (run > room)
                j->cut = 1;
            i += run - 1;
            continue;
        }
    again:
        switch (j->state) {
        case J_VALUE:
            if (!is_ws(c))
                r = begin_value(j, c);
            break;
        case J_ARR_FIRST:
            if (is_ws(c))
                break;
            if (c == ']') {
                pop(j);
                value_done(j);
                break;
            }
            r = begin_value(j, c);
            break;
        case J_KEY_FIRST:
        case J_KEY_NEXT:
            if (is_ws(c))
                break;
            if (c == '}' && j->state == J_KEY_FIRST) {
                pop(j);
                value_done(j);
                break;
            }
            if (c != '"') {
                r = NB_EPROTO;
                break;
            }
            j->state = J_KEY;
            j->vlen = 0;
            j->cut = 0;
            j->esc = 0;
            j->kodd = 0;
            break;
        case J_KEY:
            if (c == '\\')
                j->kodd = 1;
            if (str_byte(j, c, &bad)) {
                int lvl = j->depth - 1;
                path_cut(j, j->seg[lvl]);
                j->path_over &= ~(1u << lvl);
                if (j->kcb && (j->kodd || memchr(j->val, '.', j->vlen)))
                    j->odd_keys++;
                if (j->cut || path_add(j, j->val, j->vlen) < 0)
                    j->path_over |= 1u << lvl;
                else if (j->kcb && !j->path_over)
                    j->kcb(j->ctx, j->path, j->plen);
                j->state = J_COLON;
            }
            if (bad)
                r = NB_EPROTO;
            break;
        case J_COLON:
            if (c == ':')
                j->state = J_VALUE;
            else if (!is_ws(c))
                r = NB_EPROTO;
            break;
        case J_AFTER:
            if (is_ws(c))
                break;
            if (c == ',') {
                j->state = j->stack[j->depth - 1] == 1 ? J_KEY_NEXT : J_VALUE;
            } else if ((c == '}' && j->stack[j->depth - 1] == 1) ||
                       (c == ']' && j->stack[j->depth - 1] == 2)) {
                pop(j);
                value_done(j);
            } else {
                r = NB_EPROTO;
            }
            break;
        case J_STR:
            if (c == '\\')
                j->vesc = 1;
            if (str_byte(j, c, &bad)) {
                r = emit(j, NB_UJSON_STRING);
                value_done(j);
            }
            if (bad)
                r = NB_EPROTO;
            break;
        case J_NUM:
            if ((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' ||
                c == '-') {
                val_put(j, (char)c);
                break;
            }
            if ((r = emit(j, NB_UJSON_NUMBER)) != 0)
                break;
            value_done(j);
            goto again;
        case J_LIT:
            if (c >= 'a' && c <= 'z') {
                val_put(j, (char)c);
                if (j->vlen > 5)
                    r = NB_EPROTO;
                break;
            }
            if (!lit_ok(j)) {
                r = NB_EPROTO;
                break;
            }
            if ((r = emit(j, NB_UJSON_LITERAL)) != 0)
                break;
            value_done(j);
            goto again;
        case J_END:
            if (!is_ws(c))
                r = NB_EPROTO;
            break;
        }
        if (j->stop_settled && r == 0 && ujson_settled(j)) {
            j->stopped = i + 1;
            break;
        }
    }
    if (r)
        j->err = r;
    return r;
}

int nb_ujson_finish(nb_ujson_t *j)
{
    if (j->err)
        return j->err;
    if (j->depth == 0 && j->state == J_NUM) {
        int r = emit(j, NB_UJSON_NUMBER);
        j->state = J_END;
        if (r)
            return j->err = r;
    }
    if (j->depth == 0 && j->state == J_LIT && lit_ok(j)) {
        int r = emit(j, NB_UJSON_LITERAL);
        j->state = J_END;
        if (r)
            return j->err = r;
    }
    return j->state == J_END ? 0 : NB_EPROTO;
}

/* ================================================= AWS event-stream */

void nb_evstream_init(nb_evstream_t *e, nb_evstream_cb cb, void *ctx)
{
    memset(e, 0, sizeof *e);
    e->cb = cb;
    e->ctx = ctx;
    nb_buf_init(&e->frame, NB_EVSTREAM_MAX_FRAME);
}

void nb_evstream_free(nb_evstream_t *e)
{
    nb_buf_free(&e->frame);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The headers of a complete frame: the two we use. Every value type of
 * the format is skipped by its size; a header running past the block is
 * an error. */
static int ev_headers(const uint8_t *h, size_t n, nb_iov_t *mtype, nb_iov_t *type)
{
    static const int fixed[10] = {0, 0, 1, 2, 4, 8, -1, -1, 8, 16};
    size_t i = 0;
    while (i < n) {
        size_t nl = h[i++];
        if (nl == 0 || i + nl + 1 > n)
            return NB_EPROTO;
        nb_iov_t name = nb_iov(h + i, nl);
        i += nl;
        uint8_t t = h[i++];
        if (t > 9)
            return NB_EPROTO;
        size_t vl;
        if (fixed[t] >= 0) {
            vl = (size_t)fixed[t];
        } else {
            if (i + 2 > n)
                return NB_EPROTO;
            vl = (size_t)h[i] << 8 | h[i + 1];
            i += 2;
        }
        if (i + vl > n)
            return NB_EPROTO;
        if (t == 7 && (nb_iov_eq(name, ":event-type") || nb_iov_eq(name, ":exception-type")))
            *type = nb_iov(h + i, vl);
        if (t == 7 && nb_iov_eq(name, ":message-type"))
            *mtype = nb_iov(h + i, vl);
        i += vl;
    }
    return 0;
}

static int ev_frame(nb_evstream_t *e, const uint8_t *f, size_t total)
{
    uint32_t hl = be32(f + 4);
    if (crc32(0, f, 8) != be32(f + 8))
        return NB_EPROTO;
    if (crc32(0, f, (uInt)(total - 4)) != be32(f + total - 4))
        return NB_EPROTO;
    nb_iov_t mtype = {0}, type = {0};
    int r = ev_headers(f + 12, hl, &mtype, &type);
    if (r < 0)
        return r;
    e->frames++;
    return e->cb ? e->cb(e->ctx, mtype, type, nb_iov(f + 12 + hl, total - 16 - hl)) : 0;
}

/* Checks a prelude: 0 and the frame's size, or NB_EPROTO / NB_ETOOBIG. */
static int ev_prelude(const uint8_t *f, size_t *total)
{
    uint32_t t = be32(f), hl = be32(f + 4);
    if (t < 16 || hl > t - 16)
        return NB_EPROTO;
    if (t > NB_EVSTREAM_MAX_FRAME)
        return NB_ETOOBIG;
    *total = t;
    return 0;
}

int nb_evstream_feed(nb_evstream_t *e, const uint8_t *p, size_t len)
{
    if (e->err)
        return e->err;
    int r = 0;
    while (len && r == 0) {
        /* Whole frames straight from the input when nothing is held. */
        size_t total;
        if (e->frame.len == 0 && len >= 12) {
            if ((r = ev_prelude(p, &total)) < 0)
                break;
            if (len >= total) {
                r = ev_frame(e, p, total);
                p += total;
                len -= total;
                continue;
            }
        }
        size_t need = 12;
        if (e->frame.len >= 12) {
            if ((r = ev_prelude(e->frame.p, &total)) < 0)
                break;
            need = total;
        }
        size_t take = need - e->frame.len < len ? need - e->frame.len : len;
        if ((r = nb_buf_append(&e->frame, p, take)) < 0)
            break;
        p += take;
        len -= take;
        if (e->frame.len == need && need > 12) {
            r = ev_frame(e, e->frame.p, e->frame.len);
            nb_buf_reset(&e->frame);
        }
    }
    if (r)
        e->err = r;
    return r;
}

int nb_evstream_finish(const nb_evstream_t *e)
{
    return e->err ? e->err : e->frame.len ? NB_EPROTO : 0;
}

/* ================================================= the meter */

enum { MODE_JSON = 0, MODE_SSE, MODE_EVENTSTREAM };

/* A needle: part of a wanted path's last segment that a key naming that
 * segment must hold byte for byte in the raw JSON (see needles_init). */
#define NEEDLE_SUFFIX 6

/* A usage path with its length (a scalar's path is compared to each). */
typedef struct {
    const char *path;
    size_t len;
    int field;
} want_t;

typedef struct {
    const char *p;
    size_t len;
} needle_t;

struct nb_umeter {
    const nb_llm_api_t *api;
    int mode;
    needle_t needles[NB_UF_N * NB_LLM_PATHS];
    want_t want[NB_UF_N * NB_LLM_PATHS]; /* the catalogue's usage paths, in its order */
    size_t nwant;
    size_t nneedles; /* 0: every event is scanned whole */
    nb_decode_t *dec;
    int undecodable;
    nb_ujson_t js; /* the JSON body, or the current SSE event / frame payload */
    nb_sse_t sse;
    nb_evstream_t ev;
    nb_usage_seen_t seen;
    int finished;
};

int64_t nb_usage_parse_count(const char *s, size_t len)
{
    if (len == 0 || len > 13)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= NB_USAGE_MAX_TOKENS ? v : -1;
}

static int on_scalar(void *ctx, const char *path, size_t pathlen, nb_ujson_kind_t kind,
                     const char *v, size_t vlen, int cut)
{
    nb_umeter_t *m = ctx;
    for (size_t i = 0; i < m->nwant; i++) {
        const want_t *w = &m->want[i];
        if (w->len != pathlen || w->path[0] != path[0] || memcmp(w->path, path, pathlen) != 0)
            continue;
        if (w->field == NB_UF_MODEL) {
            if (kind == NB_UJSON_STRING && vlen && !cut && vlen < sizeof m->seen.model) {
                memcpy(m->seen.model, v, vlen);
                m->seen.model[vlen] = '\0';
            }
            return 0;
        }
        if (kind == NB_UJSON_LITERAL && vlen == 4 && memcmp(v, "null", 4) == 0)
            return 0; /* OpenAI streams say "usage": null until the last chunk */
        int64_t n = kind == NB_UJSON_NUMBER && !cut ? nb_usage_parse_count(v, vlen) : -1;
        if (n < 0)
            m->seen.malformed++;
        else
            m->seen.v[w->field] = n;
        return 0;
    }
    return 0;
}

/* Can this byte of a wanted key come from something other than itself in
 * the raw JSON? Escapes: str_byte reports "\b" "\f" "\r" "\/" "\"" "\\" as
 * the letter, "\uXXXX" as '?', "\n" "\t" as controls. */
static int needle_byte_ok(char c)
{
    return !strchr("\"\\/bfr?", c) && (unsigned char)c >= 0x20;
}

/* The shortcut of scan_doc (nb_umeter_exhaustive turns it off): a scalar
 * is reported at a wanted path only after a key whose text ends with the
 * path's last segment, and such a key's raw text holds the longest run of
 * that segment made of bytes no escape can stand for, byte for byte (the
 * scanner reads "\r" as 'r', so "prompt_tokens" leaves "ompt_tokens").
 * One needle per wanted path; none (no shortcut) when a path has no such
 * run or ends in an array element. */
static void needles_init(nb_umeter_t *m)
{
    m->nneedles = 0;
    for (int f = 0; f < NB_UF_N; f++) {
        for (int k = 0; k < NB_LLM_PATHS && m->api->usage[f][k][0]; k++) {
            const char *path = m->api->usage[f][k];
            const char *leaf = strrchr(path, '.');
            leaf = leaf ? leaf + 1 : path;
            if (strcmp(leaf, "[]") == 0) {
                m->nneedles = 0;
                return;
            }
            needle_t best = {NULL, 0};
            for (const char *q = leaf; *q;) {
                size_t n = 0;
                while (q[n] && needle_byte_ok(q[n]))
                    n++;
                if (n > best.len)
                    best = (needle_t){q, n};
                q += n ? n : 1;
            }
            if (best.len == 0) {
                m->nneedles = 0;
                return;
            }
            size_t i = 0;
            while (i < m->nneedles && !(m->needles[i].len == best.len &&
                                        memcmp(m->needles[i].p, best.p, best.len) == 0))
                i++;
            if (i == m->nneedles)
                m->needles[m->nneedles++] = best;
        }
    }
    /* Needles sharing a suffix of NEEDLE_SUFFIX bytes or more are searched
     * as that suffix ("_tokens" for "ompt_tokens", "completion_tokens",
     * "cached_tokens"): one memmem instead of several. Each of its
     * occurrences ends where the longer needle's would, and more may be
     * found, so the scan may go further, never less far. */
    for (size_t a = 0; a < m->nneedles; a++)
        for (size_t b = a + 1; b < m->nneedles;) {
            needle_t *x = &m->needles[a], *y = &m->needles[b];
            size_t n = 0;
            while (n < x->len && n < y->len && x->p[x->len - 1 - n] == y->p[y->len - 1 - n])
                n++;
            if (n < NEEDLE_SUFFIX) {
                b++;
                continue;
            }
            x->p += x->len - n;
            x->len = n;
            m->needles[b] = m->needles[--m->nneedles];
            b = a + 1;
        }
}

/* The end of the last needle in p[0, len), or 0 when none is there. Only
 * an occurrence ending past the best so far is looked for. */
static size_t needles_last_end(const nb_umeter_t *m, const uint8_t *p, size_t len)
{
    size_t end = 0;
    for (size_t i = 0; i < m->nneedles; i++) {
        const needle_t *nd = &m->needles[i];
        size_t from = end >= nd->len ? end - nd->len + 1 : 0;
        const uint8_t *q;
        while (from < len && (q = memmem(p + from, len - from, nd->p, nd->len)) != NULL) {
            end = (size_t)(q - p) + nd->len;
            from = (size_t)(q - p) + 1;
        }
    }
    return end;
}

/* One complete JSON document (an SSE event's data, a frame's payload); a
 * bad one costs its own fields only. With needles, only its head is
 * scanned: up to the end of the last needle, then until the key or value
 * that needle is in is over. Any scalar after that point sits under a key
 * wholly past the last needle, which cannot name a wanted segment; so
 * exactly what the whole scan reports is reported. A stream's events cost
 * a search for the most part (OpenAI's name "model" early, then the text
 * delta, and carry "usage": null until the last). */
static void scan_doc(nb_umeter_t *m, const uint8_t *p, size_t len)
{
    nb_ujson_init(&m->js, on_scalar, m);
    if (!m->nneedles) {
        nb_ujson_feed(&m->js, p, len);
        nb_ujson_finish(&m->js);
        return;
    }
    size_t end = needles_last_end(m, p, len);
    if (end == 0 || nb_ujson_feed(&m->js, p, end) != 0)
        return;
    if (end < len && !ujson_settled(&m->js)) {
        /* On until the key or value the last needle is in is over. */
        m->js.stop_settled = 1;
        if (nb_ujson_feed(&m->js, p + end, len - end) != 0)
            return;
        end = m->js.stopped ? end + m->js.stopped : len;
    }
    if (end == len)
        nb_ujson_finish(&m->js); /* (it reports a root scalar only, at path "") */
}

static int on_sse(void *ctx, const nb_sse_event_t *ev)
{
    nb_umeter_t *m = ctx;
    m->seen.events++;
    if (ev->data.len && ev->data.p[0] != '[') /* "[DONE]" */
        scan_doc(m, ev->data.p, ev->data.len);
    return 0;
}

/* {"bytes": "<base64 of the model's JSON chunk>"} (InvokeModelWithResponseStream). */
static void scan_bytes_payload(nb_umeter_t *m, nb_iov_t payload)
{
    json_t *j = json_loadb((const char *)payload.p, payload.len, 0, NULL);
    const char *b64 = json_string_value(json_object_get(j, "bytes"));
    size_t n = b64 ? strlen(b64) : 0;
    if (n && n % 4 == 0 && n <= NB_EVSTREAM_MAX_FRAME) {
        uint8_t *out = malloc(n / 4 * 3 + 1);
        int dl = out ? EVP_DecodeBlock(out, (const uint8_t *)b64, (int)n) : -1;
        if (dl >= 0) {
            dl -= (b64[n - 1] == '=') + (b64[n - 2] == '=');
            scan_doc(m, out, (size_t)dl);
        }
        free(out);
    }
    json_decref(j);
}

static int on_frame(void *ctx, nb_iov_t mtype, nb_iov_t type, nb_iov_t payload)
{
    nb_umeter_t *m = ctx;
    (void)type;
    m->seen.events++;
    if (mtype.len && !nb_iov_eq(mtype, "event"))
        return 0; /* exceptions carry no usage */
    if (m->api->stream == NB_LLM_STREAM_EVENTSTREAM_BYTES)
        scan_bytes_payload(m, payload);
    else
        scan_doc(m, payload.p, payload.len);
    return 0;
}

static int ctype_is(nb_iov_t ct, const char *want)
{
    size_t n = strlen(want), i = 0;
    while (i < ct.len && (ct.p[i] == ' ' || ct.p[i] == '\t'))
        i++;
    if (ct.len - i < n)
        return 0;
    for (size_t k = 0; k < n; k++) {
        uint8_t c = ct.p[i + k];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (uint8_t)want[k])
            return 0;
    }
    return ct.len - i == n || ct.p[i + n] == ';' || ct.p[i + n] == ' ';
}

int nb_umeter_new(const nb_llm_api_t *api, nb_iov_t ctype, nb_iov_t cenc, nb_umeter_t **out)
{
    *out = NULL;
    nb_umeter_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->api = api;
    for (int f = 0; f < NB_UF_N; f++) {
        m->seen.v[f] = -1;
        for (int k = 0; k < NB_LLM_PATHS && api->usage[f][k][0]; k++)
            m->want[m->nwant++] = (want_t){api->usage[f][k], strlen(api->usage[f][k]), f};
    }
    if (ctype_is(ctype, "text/event-stream"))
        m->mode = MODE_SSE;
    else if (ctype_is(ctype, "application/vnd.amazon.eventstream"))
        m->mode = MODE_EVENTSTREAM;
    nb_ujson_init(&m->js, on_scalar, m);
    nb_sse_init(&m->sse, 0, 0, on_sse, m);
    nb_evstream_init(&m->ev, on_frame, m);
    if (m->mode != MODE_JSON)
        needles_init(m);
    int r = 0;
    nb_decode_kind_t k = nb_decode_kind((const char *)cenc.p, cenc.len);
    if (k != NB_DECODE_IDENTITY && (r = nb_decode_new(k, &m->dec)) < 0) {
        if (r == -ENOMEM) {
            nb_umeter_free(m);
            return r;
        }
        m->undecodable = 1;
        m->seen.failed = 1;
        r = NB_EUNSUPPORTED;
    }
    *out = m;
    return r;
}

void nb_umeter_free(nb_umeter_t *m)
{
    if (!m)
        return;
    nb_decode_free(m->dec);
    nb_sse_free(&m->sse);
    nb_evstream_free(&m->ev);
    free(m);
}

static int on_plain(void *ctx, const uint8_t *p, size_t len)
{
    nb_umeter_t *m = ctx;
    m->seen.bytes += len;
    int r = 0;
    if (m->seen.failed)
        return 0;
    if (m->mode == MODE_SSE)
        r = nb_sse_feed(&m->sse, p, len);
    else if (m->mode == MODE_EVENTSTREAM)
        r = nb_evstream_feed(&m->ev, p, len);
    else
        r = nb_ujson_feed(&m->js, p, len);
    if (r)
        m->seen.failed = 1;
    return 0;
}

void nb_umeter_feed(nb_umeter_t *m, const uint8_t *p, size_t len)
{
    if (m->finished)
        return;
    if (m->undecodable) {
        m->seen.bytes += len; /* an estimate from compressed bytes is all we have */
        return;
    }
    if (!m->dec) {
        on_plain(m, p, len);
        return;
    }
    if (nb_decode_feed(m->dec, p, len, on_plain, m) < 0) {
        m->seen.failed = 1;
        nb_decode_free(m->dec);
        m->dec = NULL;
        m->undecodable = 1;
    }
}

void nb_umeter_finish(nb_umeter_t *m)
{
    if (m->finished)
        return;
    m->finished = 1;
    if (m->dec && nb_decode_finish(m->dec) < 0)
        m->seen.failed = 1;
    if (m->seen.failed)
        return;
    if (m->mode == MODE_SSE) {
        nb_sse_finish(&m->sse); /* an unfinished last event is dropped, as clients do */
    } else if (m->mode == MODE_EVENTSTREAM) {
        if (nb_evstream_finish(&m->ev) < 0)
            m->seen.failed = 1;
    } else {
        m->seen.events = 1;
        if (nb_ujson_finish(&m->js) < 0)
            m->seen.failed = 1;
    }
}

void nb_umeter_exhaustive(nb_umeter_t *m)
{
    m->nneedles = 0;
}

const nb_usage_seen_t *nb_umeter_seen(const nb_umeter_t *m)
{
    return &m->seen;
}

void nb_umeter_header(nb_umeter_t *m, nb_usage_field_t f, nb_iov_t value)
{
    int64_t n = nb_usage_parse_count((const char *)value.p, value.len);
    if (n < 0)
        m->seen.malformed++;
    else
        m->seen.v[f] = n;
}

/* ================================================= request bodies */

/* The held request body read with the scanner for the fields a
 * reservation needs, with what a JSON parser would read. */
#define RQ_SEEN 16 /* relevant keys remembered (to catch a duplicate) */

typedef struct {
    const nb_llm_api_t *api;
    const nb_ujson_t *j;
    const char *target[2 * NB_LLM_PATHS + 3]; /* the paths read, NULL-terminated */
    char model[NB_LLM_PATHS][NB_LLM_MODEL_MAX];
    unsigned has_model; /* bit k: req_model[k] is a string */
    int64_t max[NB_LLM_PATHS];
    int stream, include_usage, has_options;
    int untrusted; /* a repeated relevant key, an escaped model, an integer past int64 */
    char seen[RQ_SEEN][NB_LLM_PATH_MAX];
    size_t nseen;
} rq_t;

/* Is `path` one of the targets, or an object on the way to one? */
static int rq_relevant(const rq_t *q, const char *path, size_t n)
{
    for (size_t i = 0; q->target[i]; i++) {
        const char *t = q->target[i];
        if (strncmp(t, path, n) == 0 && (t[n] == '\0' || t[n] == '.'))
            return 1;
    }
    return 0;
}

/* A relevant key named twice: a parser keeps the last one, which may be an
 * object the scalar callback never sees; the scan cannot stand for it. */
static void rq_key(void *ctx, const char *path, size_t n)
{
    rq_t *q = ctx;
    if (q->untrusted || !rq_relevant(q, path, n))
        return;
    if (n == 14 && memcmp(path, "stream_options", 14) == 0)
        q->has_options = 1;
    for (size_t i = 0; i < q->nseen; i++)
        if (strcmp(q->seen[i], path) == 0) {
            q->untrusted = 1;
            return;
        }
    if (q->nseen == RQ_SEEN || n >= NB_LLM_PATH_MAX) {
        q->untrusted = 1;
        return;
    }
    memcpy(q->seen[q->nseen++], path, n + 1);
}

/* What json_integer_value() gives for a number: its value when it is an
 * integer, 0 for a real; an integer past int64 fails jansson's parse. */
static int64_t rq_int(rq_t *q, const char *v, size_t n)
{
    size_t i = v[0] == '-';
    int64_t x = 0;
    for (; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        if (x > (INT64_MAX - (v[i] - '0')) / 10) {
            q->untrusted = 1;
            return 0;
        }
        x = x * 10 + (v[i] - '0');
    }
    return v[0] == '-' ? -x : x;
}

static int rq_scalar(void *ctx, const char *path, size_t n, nb_ujson_kind_t kind, const char *v,
                     size_t vlen, int cut)
{
    rq_t *q = ctx;
    const nb_llm_api_t *api = q->api;
    (void)cut; /* a cut model name is as long as the field keeps */
    if (!rq_relevant(q, path, n))
        return 0;
    for (int k = 0; k < NB_LLM_PATHS && api->req_model[k][0]; k++)
        if (kind == NB_UJSON_STRING && strcmp(path, api->req_model[k]) == 0) {
            if (q->j->vesc)
                q->untrusted = 1; /* "\u0061" is read as '?': the price could differ */
            size_t m = vlen < NB_LLM_MODEL_MAX - 1 ? vlen : NB_LLM_MODEL_MAX - 1;
            memcpy(q->model[k], v, m);
            q->model[k][m] = '\0';
            q->has_model |= 1u << k;
        }
    for (int k = 0; k < NB_LLM_PATHS && api->req_max[k][0]; k++)
        if (kind == NB_UJSON_NUMBER && strcmp(path, api->req_max[k]) == 0)
            q->max[k] = rq_int(q, v, vlen);
    int yes = kind == NB_UJSON_LITERAL && vlen == 4 && memcmp(v, "true", 4) == 0;
    if (api->req_stream[0] && strcmp(path, api->req_stream) == 0)
        q->stream = yes;
    if (strcmp(path, "stream_options.include_usage") == 0)
        q->include_usage = yes;
    return 0;
}

int nb_usage_body_scan(const nb_llm_api_t *api, const uint8_t *p, size_t len, nb_usage_body_t *out)
{
    memset(out, 0, sizeof *out);
    rq_t q;
    memset(&q, 0, offsetof(rq_t, seen)); /* not the 1.5 KiB of seen[] */
    q.nseen = 0;
    q.api = api;
    size_t t = 0;
    for (int k = 0; k < NB_LLM_PATHS && api->req_model[k][0]; k++)
        q.target[t++] = api->req_model[k];
    for (int k = 0; k < NB_LLM_PATHS && api->req_max[k][0]; k++)
        q.target[t++] = api->req_max[k];
    if (api->req_stream[0])
        q.target[t++] = api->req_stream;
    q.target[t++] = "stream_options.include_usage";
    q.target[t] = NULL;
    size_t i = 0;
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    if (i == len || p[i] != '{')
        return 0;
    nb_ujson_t j;
    nb_ujson_init(&j, rq_scalar, &q);
    j.kcb = rq_key;
    q.j = &j;
    if (nb_ujson_feed(&j, p, len) != 0 || nb_ujson_finish(&j) != 0 || j.odd_keys || q.untrusted)
        return 0;
    for (int k = 0; k < NB_LLM_PATHS && api->req_model[k][0] && !out->model[0]; k++)
        if (q.has_model & (1u << k))
            nb_str_copy(out->model, sizeof out->model, q.model[k]);
    for (int k = 0; k < NB_LLM_PATHS && api->req_max[k][0] && !out->max_out; k++)
        if (q.max[k] > 0)
            out->max_out = q.max[k] < NB_USAGE_MAX_TOKENS ? q.max[k] : NB_USAGE_MAX_TOKENS;
    out->stream = q.stream;
    out->include_usage = q.include_usage;
    out->has_options = q.has_options;
    out->object = 1;
    return 1;
}

static const json_t *dig(const json_t *j, const char *path)
{
    char seg[NB_LLM_PATH_MAX];
    while (j && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof seg)
            return NULL;
        memcpy(seg, path, n);
        seg[n] = '\0';
        j = json_object_get(j, seg);
        path += n + (dot ? 1 : 0);
    }
    return j;
}

void nb_usage_body_parse(const nb_llm_api_t *api, const uint8_t *p, size_t len,
                         nb_usage_body_t *out)
{
    memset(out, 0, sizeof *out);
    json_t *j = json_loadb((const char *)p, len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    for (int k = 0; k < NB_LLM_PATHS && api->req_model[k][0] && !out->model[0]; k++) {
        const char *s = json_string_value(dig(j, api->req_model[k]));
        if (s)
            nb_str_copy(out->model, sizeof out->model, s);
    }
    for (int k = 0; k < NB_LLM_PATHS && api->req_max[k][0] && !out->max_out; k++) {
        json_int_t v = json_integer_value(dig(j, api->req_max[k]));
        if (v > 0)
            out->max_out = v < NB_USAGE_MAX_TOKENS ? v : NB_USAGE_MAX_TOKENS;
    }
    out->stream = api->req_stream[0] && json_is_true(dig(j, api->req_stream));
    out->include_usage = json_is_true(dig(j, "stream_options.include_usage"));
    out->has_options = json_object_get(j, "stream_options") != NULL;
    out->object = 1;
    json_decref(j);
}
