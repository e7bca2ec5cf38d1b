/* Token usage extractors: what the proxy reads from LLM responses as the
 * bytes pass (docs/internals/usage.md). Nothing here holds a response
 * back: the forwarder writes each chunk to the client and hands the same
 * bytes to a meter, which keeps only small bounded state (a JSON path,
 * one SSE event, one event-stream frame).
 *
 * - nb_ujson: an incremental JSON scanner that reports every scalar with
 *   its dotted path ("usage.prompt_tokens"; array elements are "[]").
 * - nb_evstream: the AWS event-stream framing (prelude, headers, payload,
 *   two CRC32s) that Bedrock streams use.
 * - nb_umeter: one response: decoding (gzip/deflate/br) for itself only,
 *   framing by content type (JSON, SSE, event-stream), and the usage
 *   fields the catalogue names, last value wins (Anthropic and Gemini
 *   repeat cumulative counts).
 *
 * Pure, no I/O; feed bytes in any split. Loop thread (or anywhere). */
#ifndef NB_USAGEX_H
#define NB_USAGEX_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/egress/decode.h"
#include "daemon/egress/llmcat.h"
#include "daemon/egress/sse.h"
#include "lib/buf.h"

/* ---- incremental JSON scanner ---- */

#define NB_UJSON_DEPTH 32
#define NB_UJSON_PATH 192   /* bytes of the current dotted path */
#define NB_UJSON_SCALAR 128 /* bytes of a scalar kept for the callback */

typedef enum { NB_UJSON_NUMBER = 1, NB_UJSON_STRING, NB_UJSON_LITERAL } nb_ujson_kind_t;

/* A scalar at `path` (NUL-terminated; "" for the root). `v` holds its text
 * (a string unescaped only for \" and \\; longer values are cut and
 * `cut` set). Non-zero stops the scanner with that value. */
typedef int (*nb_ujson_cb)(void *ctx, const char *path, size_t pathlen, nb_ujson_kind_t kind,
                           const char *v, size_t vlen, int cut);

/* A key at `path` (its own dotted path, NUL-terminated), reported when
 * its string ends, before its value (not when the path does not fit). */
typedef void (*nb_ujson_key_cb)(void *ctx, const char *path, size_t pathlen);

typedef struct {
    nb_ujson_cb cb;
    void *ctx;
    nb_ujson_key_cb kcb; /* optional (NULL after init) */
    /* With kcb set: keys holding an escape or a '.' (their paths are not
     * what a JSON parser reads: "\r" is taken as 'r', "a.b" looks
     * nested); a reader that must agree with a parser does not trust the
     * paths when > 0. */
    unsigned odd_keys;
    int vesc; /* the string value being reported held an escape */
    /* private */
    int state, depth, err;
    uint8_t stack[NB_UJSON_DEPTH]; /* 1 object, 2 array */
    uint16_t seg[NB_UJSON_DEPTH];  /* path length before this level's key */
    char path[NB_UJSON_PATH + 1];
    size_t plen;
    unsigned path_over; /* levels whose key did not fit (their scalars are not reported) */
    char val[NB_UJSON_SCALAR + 1];
    size_t vlen;
    int cut, esc, uhex, done, kodd;
    int stop_settled; /* stop after the byte that leaves nothing pending */
    size_t stopped;   /* bytes of the last feed taken before that stop, or 0 */
} nb_ujson_t;

void nb_ujson_init(nb_ujson_t *j, nb_ujson_cb cb, void *ctx);
/* 0, NB_EPROTO (not JSON; sticky), NB_ETOOBIG (nesting past the cap) or
 * the callback's value. */
int nb_ujson_feed(nb_ujson_t *j, const uint8_t *p, size_t len);
/* 0 when exactly one complete value was seen, else NB_EPROTO. */
int nb_ujson_finish(nb_ujson_t *j);

/* ---- AWS event-stream framing ---- */

#define NB_EVSTREAM_MAX_FRAME (1024 * 1024)

/* One frame whose CRCs matched: `type` is its :event-type (or
 * :exception-type) header, `mtype` its :message-type. Borrowed. */
typedef int (*nb_evstream_cb)(void *ctx, nb_iov_t mtype, nb_iov_t type, nb_iov_t payload);

typedef struct {
    nb_evstream_cb cb;
    void *ctx;
    nb_buf_t frame; /* the frame being read */
    int err;
    uint64_t frames;
} nb_evstream_t;

void nb_evstream_init(nb_evstream_t *e, nb_evstream_cb cb, void *ctx);
void nb_evstream_free(nb_evstream_t *e);
/* 0, NB_EPROTO (bad length, CRC or header; sticky), NB_ETOOBIG, -ENOMEM
 * or the callback's value. */
int nb_evstream_feed(nb_evstream_t *e, const uint8_t *p, size_t len);
/* 0 when no partial frame is left. */
int nb_evstream_finish(const nb_evstream_t *e);

/* ---- one response's meter ---- */

#define NB_USAGE_MAX_TOKENS 1000000000000LL /* larger counts are malformed */

typedef struct {
    int64_t v[NB_UF_N]; /* counts (NB_UF_MODEL unused); -1: not seen */
    char model[NB_LLM_MODEL_MAX];
    unsigned malformed; /* usage fields that were negative, huge or not integers */
    uint64_t bytes;     /* decoded body bytes seen */
    uint64_t events;    /* SSE events / event-stream frames / 1 for a JSON body */
    int failed;         /* the body could not be read to the end (parse error) */
} nb_usage_seen_t;

typedef struct nb_umeter nb_umeter_t;

/* Starts a meter for a response of `api` whose head said `ctype` and
 * `cenc` (Content-Type and Content-Encoding values, may be empty).
 * 0, NB_EUNSUPPORTED (an encoding this build cannot decode: the meter
 * then only counts bytes) or -ENOMEM. *out is set in both first cases. */
int nb_umeter_new(const nb_llm_api_t *api, nb_iov_t ctype, nb_iov_t cenc, nb_umeter_t **out);
void nb_umeter_free(nb_umeter_t *m);
/* Body bytes as received from upstream (still encoded). Never fails: a
 * body the meter cannot read makes its result an estimate. */
void nb_umeter_feed(nb_umeter_t *m, const uint8_t *p, size_t len);
/* The body ended (or was cut). */
void nb_umeter_finish(nb_umeter_t *m);
const nb_usage_seen_t *nb_umeter_seen(const nb_umeter_t *m);
/* Scans every SSE event and frame whole, without the shortcut that skips
 * the parts no usage field can be in: the reference the shortcut must
 * equal (unit tests, fuzz_usage). Call before the first feed. */
void nb_umeter_exhaustive(nb_umeter_t *m);
/* A usage header (Bedrock InvokeModel) from the response head. */
void nb_umeter_header(nb_umeter_t *m, nb_usage_field_t f, nb_iov_t value);

/* Strict token count: decimal digits only, 0..NB_USAGE_MAX_TOKENS. -1
 * otherwise. */
int64_t nb_usage_parse_count(const char *s, size_t len);

/* ---- request bodies ---- */

/* What a request body says for its reservation. */
typedef struct {
    char model[NB_LLM_MODEL_MAX]; /* the first model path holding a non-empty string, or "" */
    int64_t max_out;              /* the first output cap path with an integer > 0 (capped), or 0 */
    int stream;                   /* the stream path is true */
    int include_usage;            /* stream_options.include_usage is true */
    int has_options;              /* the object has a stream_options member */
    int object;                   /* the body is a JSON object (else all the rest is 0) */
} nb_usage_body_t;

/* Reads `api`'s request fields from a complete body with the bounded
 * scanner (no tree). 1 when the scan stands for a parse: a complete
 * object, no key with an escape or a '.', no escaped model name, no
 * relevant key (a wanted path or an object on its way) named twice, no
 * integer past int64; `out` then holds what nb_usage_body_parse would.
 * 0 otherwise (`out` cleared): call nb_usage_body_parse. Pure. */
int nb_usage_body_scan(const nb_llm_api_t *api, const uint8_t *p, size_t len, nb_usage_body_t *out);
/* The same fields read from a jansson tree (the reference). */
void nb_usage_body_parse(const nb_llm_api_t *api, const uint8_t *p, size_t len,
                         nb_usage_body_t *out);

#endif
