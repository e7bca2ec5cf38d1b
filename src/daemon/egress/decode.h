/* Streaming decoder for compressed HTTP response bodies (THREATS.md A5).
 *
 * An upstream may answer gzip, deflate or br although the proxy asked for
 * identity. The redactor must see the plain bytes, so the proxy decodes
 * such bodies on the way and forwards them as identity (Content-Encoding
 * removed, chunked framing). Output leaves through the sink as it is
 * produced, NB_DECODE_CHUNK bytes at most per call, so streaming stays
 * streaming and memory stays bounded whatever the body's size.
 *
 * Decompression bombs: once more than NB_DECODE_FREE_BYTES have come out,
 * the output may not exceed NB_DECODE_MAX_RATIO times the input; past that
 * the feed fails with NB_ETOOBIG (the proxy cuts the response).
 *
 * Pure (zlib, brotli); not thread-safe per decoder. */
#ifndef NB_DECODE_H
#define NB_DECODE_H

#include <stddef.h>
#include <stdint.h>

#define NB_DECODE_CHUNK 16384
#define NB_DECODE_FREE_BYTES (16u << 20)
#define NB_DECODE_MAX_RATIO 200

typedef enum {
    NB_DECODE_IDENTITY = 0,
    NB_DECODE_GZIP = 1,    /* "gzip", "x-gzip" (several members allowed) */
    NB_DECODE_DEFLATE = 2, /* "deflate": zlib-wrapped, or raw deflate as some servers send */
    NB_DECODE_BR = 3,      /* "br" (when built with brotli) */
    NB_DECODE_UNSUPPORTED = -1,
} nb_decode_kind_t;

typedef struct nb_decode nb_decode_t;

/* Receives decoded bytes (borrowed for the call); non-zero aborts. */
typedef int (*nb_decode_sink)(void *ctx, const uint8_t *p, size_t len);

/* Maps a Content-Encoding value to a kind: one coding (case-insensitive,
 * surrounding blanks ignored). An empty value or "identity" is IDENTITY;
 * a list of codings, "compress", "zstd" and anything unknown are
 * UNSUPPORTED (the proxy refuses those with a 502). */
nb_decode_kind_t nb_decode_kind(const char *v, size_t len);

/* 0, NB_EUNSUPPORTED (a kind this build cannot decode) or -ENOMEM. */
int nb_decode_new(nb_decode_kind_t kind, nb_decode_t **out);
void nb_decode_free(nb_decode_t *d); /* NULL is a no-op */

/* Decodes `len` bytes. 0, the sink's error, NB_EPROTO (corrupt data, or
 * data after the end of the stream) or NB_ETOOBIG (ratio cap). */
int nb_decode_feed(nb_decode_t *d, const uint8_t *p, size_t len, nb_decode_sink sink, void *ctx);

/* End of input: NB_EPROTO when the compressed stream was cut short. */
int nb_decode_finish(nb_decode_t *d);

/* Compressed bytes fed and decoded bytes produced so far. */
uint64_t nb_decode_in(const nb_decode_t *d);
uint64_t nb_decode_out(const nb_decode_t *d);

#endif
