/* Streaming body decoder (see decode.h). */
#include "daemon/egress/decode.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#ifdef NB_HAVE_BROTLI
#include <brotli/decode.h>
#endif

#include "lib/err.h"

struct nb_decode {
    nb_decode_kind_t kind;
    z_stream z;
    int z_open;
    uint8_t hdr[2]; /* "deflate": the first two bytes, to tell zlib from raw */
    size_t nhdr;
    int mode_set;
    int ended; /* the compressed stream ended (a gzip member may follow) */
#ifdef NB_HAVE_BROTLI
    BrotliDecoderState *br;
#endif
    uint64_t in, out;
    uint8_t buf[NB_DECODE_CHUNK];
};

static int ieq(const char *a, size_t n, const char *lit)
{
    if (strlen(lit) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != lit[i])
            return 0;
    }
    return 1;
}

nb_decode_kind_t nb_decode_kind(const char *v, size_t len)
{
    while (len && (v[0] == ' ' || v[0] == '\t')) {
        v++;
        len--;
    }
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0 || ieq(v, len, "identity"))
        return NB_DECODE_IDENTITY;
    if (ieq(v, len, "gzip") || ieq(v, len, "x-gzip"))
        return NB_DECODE_GZIP;
    if (ieq(v, len, "deflate"))
        return NB_DECODE_DEFLATE;
    if (ieq(v, len, "br"))
        return NB_DECODE_BR;
    return NB_DECODE_UNSUPPORTED;
}

static int z_start(nb_decode_t *d, int window_bits)
{
    if (d->z_open)
        inflateEnd(&d->z);
    memset(&d->z, 0, sizeof d->z);
    if (inflateInit2(&d->z, window_bits) != Z_OK)
        return -ENOMEM;
    d->z_open = 1;
    return 0;
}

int nb_decode_new(nb_decode_kind_t kind, nb_decode_t **out)
{
    *out = NULL;
    if (kind != NB_DECODE_GZIP && kind != NB_DECODE_DEFLATE && kind != NB_DECODE_BR)
        return NB_EUNSUPPORTED;
#ifndef NB_HAVE_BROTLI
    if (kind == NB_DECODE_BR)
        return NB_EUNSUPPORTED;
#endif
    nb_decode_t *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->kind = kind;
    int r = 0;
    if (kind == NB_DECODE_GZIP)
        r = z_start(d, 16 + MAX_WBITS);
        /* "deflate" starts once two bytes tell zlib-wrapped from raw. */
#ifdef NB_HAVE_BROTLI
    else if (!(d->br = BrotliDecoderCreateInstance(NULL, NULL, NULL)))
        r = -ENOMEM;
#endif
    if (r < 0) {
        nb_decode_free(d);
        return r;
    }
    *out = d;
    return 0;
}

void nb_decode_free(nb_decode_t *d)
{
    if (!d)
        return;
    if (d->z_open)
        inflateEnd(&d->z);
#ifdef NB_HAVE_BROTLI
    if (d->br)
        BrotliDecoderDestroyInstance(d->br);
#endif
    free(d);
}

/* Hands n decoded bytes on, after the bomb check. */
static int put(nb_decode_t *d, size_t n, nb_decode_sink sink, void *ctx)
{
    if (n == 0)
        return 0;
    d->out += n;
    if (d->out > NB_DECODE_FREE_BYTES && d->out / NB_DECODE_MAX_RATIO > d->in)
        return NB_ETOOBIG;
    return sink(ctx, d->buf, n);
}

static int feed_zlib(nb_decode_t *d, const uint8_t *p, size_t len, nb_decode_sink sink, void *ctx)
{
    int rc;
    while (len > 0) {
        if (d->ended) {
            /* gzip: another member may follow; anything else is junk. */
            if (d->kind != NB_DECODE_GZIP)
                return NB_EPROTO;
            if (inflateReset(&d->z) != Z_OK)
                return NB_EPROTO;
            d->ended = 0;
        }
        size_t take = len > (1u << 30) ? (1u << 30) : len;
        d->z.next_in = (Bytef *)p;
        d->z.avail_in = (uInt)take;
        do {
            d->z.next_out = d->buf;
            d->z.avail_out = sizeof d->buf;
            int zr = inflate(&d->z, Z_NO_FLUSH);
            if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR)
                return NB_EPROTO;
            if ((rc = put(d, sizeof d->buf - d->z.avail_out, sink, ctx)) != 0)
                return rc;
            if (zr == Z_STREAM_END) {
                d->ended = 1;
                break;
            }
            if (zr == Z_BUF_ERROR && d->z.avail_in == 0)
                break;
        } while (d->z.avail_in > 0 || d->z.avail_out == 0);
        size_t used = take - d->z.avail_in;
        p += used;
        len -= used;
        if (!d->ended && used == 0 && len > 0)
            return NB_EPROTO; /* no progress: cannot happen with valid data */
    }
    return 0;
}

#ifdef NB_HAVE_BROTLI
static int feed_br(nb_decode_t *d, const uint8_t *p, size_t len, nb_decode_sink sink, void *ctx)
{
    size_t avail_in = len;
    const uint8_t *next_in = p;
    for (;;) {
        size_t avail_out = sizeof d->buf;
        uint8_t *next_out = d->buf;
        BrotliDecoderResult br =
            BrotliDecoderDecompressStream(d->br, &avail_in, &next_in, &avail_out, &next_out, NULL);
        if (br == BROTLI_DECODER_RESULT_ERROR)
            return NB_EPROTO;
        int rc = put(d, sizeof d->buf - avail_out, sink, ctx);
        if (rc != 0)
            return rc;
        if (br == BROTLI_DECODER_RESULT_SUCCESS) {
            d->ended = 1;
            return avail_in ? NB_EPROTO : 0;
        }
        if (br == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT)
            return 0;
    }
}
#endif

/* "deflate" means zlib-wrapped (RFC 9110), but some servers send raw
 * deflate: a valid zlib header (CM 8, window <= 32K, FCHECK) decides. */
static int deflate_start(nb_decode_t *d, const uint8_t **p, size_t *len, nb_decode_sink sink,
                         void *ctx)
{
    while (d->nhdr < 2 && *len > 0) {
        d->hdr[d->nhdr++] = **p;
        (*p)++;
        (*len)--;
    }
    if (d->nhdr < 2)
        return 0;
    unsigned h = ((unsigned)d->hdr[0] << 8) | d->hdr[1];
    int zlib = (d->hdr[0] & 0x0f) == 8 && (d->hdr[0] >> 4) <= 7 && h % 31 == 0;
    int rc = z_start(d, zlib ? MAX_WBITS : -MAX_WBITS);
    if (rc < 0)
        return rc;
    d->mode_set = 1;
    return feed_zlib(d, d->hdr, 2, sink, ctx);
}

int nb_decode_feed(nb_decode_t *d, const uint8_t *p, size_t len, nb_decode_sink sink, void *ctx)
{
    if (len == 0)
        return 0;
    d->in += len;
    if (d->kind == NB_DECODE_DEFLATE && !d->mode_set) {
        int rc = deflate_start(d, &p, &len, sink, ctx);
        if (rc != 0 || len == 0)
            return rc;
    }
#ifdef NB_HAVE_BROTLI
    if (d->kind == NB_DECODE_BR) {
        if (d->ended)
            return NB_EPROTO;
        return feed_br(d, p, len, sink, ctx);
    }
#endif
    return feed_zlib(d, p, len, sink, ctx);
}

int nb_decode_finish(nb_decode_t *d)
{
    if (d->kind == NB_DECODE_DEFLATE && !d->mode_set)
        return d->in ? NB_EPROTO : 0;
    if (d->in == 0)
        return 0; /* an empty body (e.g. a 200 with nothing): nothing to decode */
    return d->ended ? 0 : NB_EPROTO;
}

/* Bytes fed and produced so far: the fuzzer checks the expansion cap with
 * them (fuzz_reflect). */
uint64_t nb_decode_in(const nb_decode_t *d)
{
    return d->in;
}

uint64_t nb_decode_out(const nb_decode_t *d)
{
    return d->out;
}
