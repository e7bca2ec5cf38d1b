/* libFuzzer target for the SigV4 pieces (src/daemon/egress/sigv4.c): the
 * canonical-request builder, the Authorization / presigned-query /
 * credentials parsers and the aws-chunked re-signer.
 *
 * Input: NUL-separated fields: method, target, headers ("name:value"
 * lines), SignedHeaders, payload line, then one mode byte and the rest
 * as an aws-chunked body.
 * Checks: never reads past `size` (ASan); the canonical request is
 * deterministic and stays under its cap; a parsed Authorization names a
 * sorted, lower-case SignedHeaders list that the builder accepts; the
 * re-signer with the same key and seed on both sides is the identity (what
 * it emits is always a prefix of what it was fed), for the three body kinds
 * (plain, signed with a trailer, unsigned with a trailer); a refused body
 * always says why.
 *
 * The signed-trailer kind is also fed a body the harness signs itself (the
 * fuzzer cannot forge an HMAC chain): the first body byte is the size of
 * one data chunk, the rest is taken as the trailer block, followed, unless
 * it has one, by a valid x-amz-trailer-signature over it (its CRLFs as
 * LFs: the canonical form of well-formed lines), so the trailer parser and
 * the signature check are reached past the chunk chain. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "daemon/egress/sigv4.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nb_iov_t field(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *z = memchr(*p, 0, (size_t)(end - *p));
    nb_iov_t v = nb_iov(*p, z ? (size_t)(z - *p) : (size_t)(end - *p));
    *p = z ? z + 1 : end;
    return v;
}

typedef struct {
    const uint8_t *in;
    size_t in_len, out;
} cmp_t;

static int sink_cmp(void *ctx, const uint8_t *p, size_t len)
{
    cmp_t *c = ctx;
    if (c->out + len > c->in_len || memcmp(c->in + c->out, p, len) != 0)
        abort();
    c->out += len;
    return 0;
}

static const char seed[] = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
#define DECLARED "x-amz-checksum-crc32, x-amz-checksum-sha256"

/* Feeds `body` to a re-signer of `kind` (same key both sides) in uneven
 * slices; aborts when the output is not a prefix of the input, when a
 * refusal says nothing, or when a complete body did not come out whole. */
static void run_stream(const uint8_t key[32], int kind, nb_iov_t body)
{
    nb_sigv4_stream_t st;
    if (nb_sigv4_stream_init(&st, key, key, NB_IOV_STR("20130524T000000Z"), NB_IOV_STR("20130524"),
                             NB_IOV_STR("us-east-1"), NB_IOV_STR("s3"), NB_IOV_STR(seed),
                             seed) != 0 ||
        (kind != NB_SIGV4_CHUNKS_SIGNED &&
         nb_sigv4_stream_trailers(&st, kind, NB_IOV_STR(DECLARED)) != 0))
        abort();
    cmp_t c = {body.p, body.len, 0};
    size_t off = 0;
    int r = 0;
    while (off < body.len) {
        size_t n = (body.len - off) < 7 ? body.len - off : 7 + (body.p[off] % 200);
        if (n > body.len - off)
            n = body.len - off;
        if ((r = nb_sigv4_stream_feed(&st, body.p + off, n, sink_cmp, &c)) < 0)
            break;
        off += n;
    }
    if (r < 0 && !nb_sigv4_stream_why(&st))
        abort(); /* the sink never fails here: every refusal has its reason */
    if (r == 0 && nb_sigv4_stream_done(&st) && !st.passthru && c.out != body.len)
        abort();
    nb_sigv4_stream_free(&st);
}

/* The signed-trailer body the harness signs (see the top comment). */
static void signed_trailer_body(const uint8_t key[32], nb_iov_t in, nb_buf_t *out)
{
    nb_iov_t dt = NB_IOV_STR("20130524T000000Z"), d = NB_IOV_STR("20130524"),
             rg = NB_IOV_STR("us-east-1"), sv = NB_IOV_STR("s3");
    size_t k = in.len ? in.p[0] : 0;
    if (in.len)
        in = nb_iov(in.p + 1, in.len - 1);
    if (k > in.len)
        k = in.len;
    char prev[NB_SIGV4_HEX + 1], sig[NB_SIGV4_HEX + 1];
    uint8_t h[32];
    memcpy(prev, seed, sizeof prev);
    if (k) {
        SHA256(in.p, k, h);
        nb_sigv4_chunk_sign(key, dt, d, rg, sv, nb_iov(prev, NB_SIGV4_HEX), h, sig);
        nb_buf_printf(out, "%zx;chunk-signature=%s\r\n", k, sig);
        nb_buf_append(out, in.p, k);
        nb_buf_append(out, "\r\n", 2);
        memcpy(prev, sig, sizeof prev);
    }
    SHA256((const uint8_t *)"", 0, h);
    nb_sigv4_chunk_sign(key, dt, d, rg, sv, nb_iov(prev, NB_SIGV4_HEX), h, sig);
    nb_buf_printf(out, "0;chunk-signature=%s\r\n", sig);
    memcpy(prev, sig, sizeof prev);
    nb_iov_t t = nb_iov(in.p + k, in.len - k);
    nb_buf_append(out, t.p, t.len);
    if (memmem(t.p, t.len, "x-amz-trailer-signature", 23))
        return;
    uint8_t canon[4096];
    size_t cl = 0;
    for (size_t i = 0; i < t.len && cl < sizeof canon; i++) {
        if (t.p[i] == '\r' && i + 1 < t.len && t.p[i + 1] == '\n')
            continue;
        canon[cl++] = t.p[i];
    }
    SHA256(canon, cl, h);
    nb_sigv4_trailer_sign(key, dt, d, rg, sv, nb_iov(prev, NB_SIGV4_HEX), h, sig);
    nb_buf_printf(out, "x-amz-trailer-signature:%s\r\n\r\n", sig);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    nb_iov_t method = field(&p, end), target = field(&p, end), hdrs = field(&p, end);
    nb_iov_t sh = field(&p, end), payload = field(&p, end);
    int mode = p < end ? *p++ : 0;
    nb_iov_t body = nb_iov(p, (size_t)(end - p));

    nb_sigv4_header_t h[32];
    size_t nh = 0, start = 0;
    for (size_t i = 0; i <= hdrs.len && nh < 32; i++) {
        if (i < hdrs.len && hdrs.p[i] != '\n')
            continue;
        nb_iov_t line = nb_iov(hdrs.p + start, i - start);
        start = i + 1;
        const uint8_t *c = memchr(line.p, ':', line.len);
        if (!c)
            continue;
        h[nh].name = nb_iov(line.p, (size_t)(c - line.p));
        h[nh].value = nb_iov(c + 1, line.len - h[nh].name.len - 1);
        nh++;
    }

    nb_buf_t a, b;
    nb_buf_init(&a, 4096);
    nb_buf_init(&b, 4096);
    int r1 = nb_sigv4_canonical(method, target, h, nh, sh, payload, mode, &a);
    int r2 = nb_sigv4_canonical(method, target, h, nh, sh, payload, mode, &b);
    if (r1 != r2 || a.len > 4096 || (r1 == 0 && (a.len != b.len || memcmp(a.p, b.p, a.len))))
        abort();

    nb_sigv4_auth_t au;
    for (size_t i = 0; i < nh; i++) {
        if (nb_sigv4_parse_auth(h[i].value, &au) == 0) {
            if (au.signed_headers.len == 0 || !nb_sigv4_is_hex64(au.signature) || au.date.len != 8)
                abort();
            nb_buf_reset(&a);
            /* A parsed list is one the builder accepts (missing headers aside). */
            int r = nb_sigv4_canonical(NB_IOV_STR("GET"), NB_IOV_STR("/"), NULL, 0,
                                       au.signed_headers, NB_IOV_STR(""), 0, &a);
            if (r != NB_EINVAL && r != 0 && r != NB_ETOOBIG)
                abort();
        }
    }
    if (nb_sigv4_parse_query(target, &au) == 0 && (!au.presigned || au.amzdate.len != 16))
        abort();
    nb_sigv4_creds_t cr;
    if (nb_sigv4_creds_parse(hdrs, &cr) == 0 && (!cr.akid.len || !cr.secret.len))
        abort();

    uint8_t key[32];
    nb_sigv4_key((const uint8_t *)"k", 1, NB_IOV_STR("20130524"), NB_IOV_STR("us-east-1"),
                 NB_IOV_STR("s3"), key);
    run_stream(key, NB_SIGV4_CHUNKS_SIGNED, body);
    run_stream(key, NB_SIGV4_CHUNKS_SIGNED_TRAILER, body);
    run_stream(key, NB_SIGV4_CHUNKS_UNSIGNED_TRAILER, body);
    nb_buf_t sb;
    nb_buf_init(&sb, 1 << 16);
    signed_trailer_body(key, body, &sb);
    run_stream(key, NB_SIGV4_CHUNKS_SIGNED_TRAILER, nb_buf_iov(&sb));
    nb_buf_free(&sb);
    nb_buf_free(&a);
    nb_buf_free(&b);
    return 0;
}
