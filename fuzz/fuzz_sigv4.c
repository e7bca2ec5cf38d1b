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
 * it emits is always a prefix of what it was fed). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    static const char seed[] = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    nb_sigv4_stream_t st;
    if (nb_sigv4_stream_init(&st, key, key, NB_IOV_STR("20130524T000000Z"), NB_IOV_STR("20130524"),
                             NB_IOV_STR("us-east-1"), NB_IOV_STR("s3"), NB_IOV_STR(seed),
                             seed) == 0) {
        cmp_t c = {body.p, body.len, 0};
        size_t off = 0;
        while (off < body.len) {
            size_t n = (body.len - off) < 7 ? body.len - off : 7 + (body.p[off] % 200);
            if (n > body.len - off)
                n = body.len - off;
            if (nb_sigv4_stream_feed(&st, body.p + off, n, sink_cmp, &c) < 0)
                break;
            off += n;
        }
    }
    nb_sigv4_stream_free(&st);
    nb_buf_free(&a);
    nb_buf_free(&b);
    return 0;
}
