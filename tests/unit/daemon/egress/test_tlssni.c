/* Unit tests for src/daemon/egress/tlssni: SNI extraction from real
 * OpenSSL ClientHellos (any split, fragmented records, trailing records)
 * and from hand-built malformed ones. */
#include <stdlib.h>

#include <openssl/ssl.h>

#include "daemon/egress/tlssni.h"
#include "lib/err.h"
#include "nbtest.h"

/* A real ClientHello from OpenSSL's client, for `sni` (NULL: none). */
static size_t openssl_hello(const char *sni, uint8_t *out, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rb, wb);
    if (sni)
        SSL_set_tlsext_host_name(ssl, sni);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(ssl, alpn, sizeof(alpn) - 1);
    SSL_set_connect_state(ssl);
    SSL_do_handshake(ssl); /* wants to read: the hello is in wb */
    int n = BIO_read(wb, out, (int)cap);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return n > 0 ? (size_t)n : 0;
}

static int feed_all(const uint8_t *b, size_t n, size_t step, nb_tlssni_t *p, size_t *used_total)
{
    nb_tlssni_init(p);
    size_t off = 0;
    int r = NB_TLSSNI_MORE;
    *used_total = 0;
    while (off < n) {
        size_t k = n - off < step ? n - off : step, used = 0;
        r = nb_tlssni_feed(p, b + off, k, &used);
        *used_total += used;
        if (r != NB_TLSSNI_MORE)
            return r;
        if (used != k)
            return -999;
        off += k;
    }
    return r;
}

static void test_real_hello(void)
{
    uint8_t b[4096];
    size_t n = openssl_hello("API.Example.com", b, sizeof(b));
    NB_CHECK(n > 100);
    nb_tlssni_t *p = malloc(sizeof(*p));
    size_t used;
    size_t steps[] = {n, 1, 2, 3, 5, 7, 64, 500};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        NB_CHECK_EQ_INT(feed_all(b, n, steps[i], p, &used), NB_TLSSNI_DONE);
        NB_CHECK_EQ_INT(used, n);
        NB_CHECK(p->has_sni && p->sni_len == 15);
        NB_CHECK_STR(p->sni, "API.Example.com"); /* raw: callers normalise */
        NB_CHECK(p->offers_tls13 && p->has_alpn);
    }
    /* Later feeds change nothing. */
    size_t u2 = 99;
    NB_CHECK_EQ_INT(nb_tlssni_feed(p, b, 10, &u2), NB_TLSSNI_DONE);
    NB_CHECK_EQ_INT(u2, 0);

    /* No SNI at all. */
    n = openssl_hello(NULL, b, sizeof(b));
    NB_CHECK_EQ_INT(feed_all(b, n, n, p, &used), NB_TLSSNI_DONE);
    NB_CHECK(!p->has_sni && p->sni[0] == 0);

    /* A following record (e.g. early data) is left to the caller. */
    n = openssl_hello("x.test", b, sizeof(b));
    memcpy(b + n, "\x17\x03\x03\x00\x02hi", 7);
    nb_tlssni_init(p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(p, b, n + 7, &used), NB_TLSSNI_DONE);
    NB_CHECK_EQ_INT(used, n);

    /* Re-framed into many small handshake records: still one ClientHello. */
    size_t hl = n - 5;
    uint8_t fr[8192];
    size_t fo = 0;
    for (size_t off = 0; off < hl; off += 7) {
        size_t k = hl - off < 7 ? hl - off : 7;
        fr[fo++] = 22;
        fr[fo++] = 3;
        fr[fo++] = 1;
        fr[fo++] = 0;
        fr[fo++] = (uint8_t)k;
        memcpy(fr + fo, b + 5 + off, k);
        fo += k;
    }
    NB_CHECK_EQ_INT(feed_all(fr, fo, 3, p, &used), NB_TLSSNI_DONE);
    NB_CHECK_STR(p->sni, "x.test");

    /* Extra bytes after the hello inside its own record: rejected. */
    memcpy(fr, b, n);
    fr[n] = 0x42;
    size_t rl = (size_t)fr[3] << 8 | fr[4];
    rl++;
    fr[3] = (uint8_t)(rl >> 8);
    fr[4] = (uint8_t)rl;
    NB_CHECK_EQ_INT(feed_all(fr, n + 1, n + 1, p, &used), NB_EPARSE);
    NB_CHECK_EQ_INT(feed_all(fr, n + 1, 1, p, &used), NB_EPARSE);
    NB_CHECK(!p->has_sni);
    free(p);
}

/* ---- hand-built hellos ---- */

typedef struct {
    uint8_t b[20000];
    size_t n;
} bb_t;

static void put(bb_t *x, const void *p, size_t n)
{
    memcpy(x->b + x->n, p, n);
    x->n += n;
}
static void u8(bb_t *x, unsigned v)
{
    x->b[x->n++] = (uint8_t)v;
}
static void u16(bb_t *x, unsigned v)
{
    u8(x, v >> 8);
    u8(x, v & 0xff);
}

static void sni_ext(bb_t *e, const char *name, size_t nl)
{
    u16(e, 0);
    u16(e, (unsigned)(nl + 5));
    u16(e, (unsigned)(nl + 3));
    u8(e, 0);
    u16(e, (unsigned)nl);
    put(e, name, nl);
}

/* Wraps extension bytes into a record + handshake + ClientHello. */
static void hello(bb_t *out, const bb_t *ext, int with_ext_block)
{
    bb_t body = {.n = 0};
    u16(&body, 0x0303);
    uint8_t rnd[32] = {1};
    put(&body, rnd, 32);
    u8(&body, 0);  /* session id */
    u16(&body, 2); /* cipher suites */
    u16(&body, 0x1301);
    u8(&body, 1); /* compression */
    u8(&body, 0);
    if (with_ext_block) {
        u16(&body, (unsigned)ext->n);
        put(&body, ext->b, ext->n);
    }
    out->n = 0;
    u8(out, 22);
    u16(out, 0x0301);
    u16(out, (unsigned)(body.n + 4));
    u8(out, 1);
    u8(out, 0);
    u16(out, (unsigned)body.n);
    put(out, body.b, body.n);
}

static int run(const bb_t *x)
{
    static nb_tlssni_t p;
    size_t used;
    return feed_all(x->b, x->n, x->n, &p, &used);
}

static void test_malformed(void)
{
    static bb_t e, h;
    static nb_tlssni_t p;
    size_t used;

    e.n = 0;
    sni_ext(&e, "ok.test", 7);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_TLSSNI_DONE);
    hello(&h, &e, 0); /* no extension block: valid, no SNI */
    NB_CHECK_EQ_INT(run(&h), NB_TLSSNI_DONE);

    /* Two server_name extensions. */
    e.n = 0;
    sni_ext(&e, "a.test", 6);
    sni_ext(&e, "b.test", 6);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);

    /* Two host_names in one list. */
    e.n = 0;
    u16(&e, 0);
    u16(&e, 2 + 9 + 9);
    u16(&e, 9 + 9);
    u8(&e, 0);
    u16(&e, 6);
    put(&e, "a.test", 6);
    u8(&e, 0);
    u16(&e, 6);
    put(&e, "b.test", 6);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);

    /* NUL inside the name ("good.test\0.evil"). */
    e.n = 0;
    sni_ext(&e, "good.test\0.evil", 15);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);
    /* Empty and over-long names. */
    e.n = 0;
    sni_ext(&e, "", 0);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);
    char longname[300];
    memset(longname, 'a', sizeof(longname));
    e.n = 0;
    sni_ext(&e, longname, 256);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);
    e.n = 0;
    sni_ext(&e, longname, 255);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_TLSSNI_DONE);

    /* Extension length running past the block. */
    e.n = 0;
    sni_ext(&e, "ok.test", 7);
    hello(&h, &e, 1);
    h.b[h.n - 7 - 5 - 2] = 0xff; /* the extension length high byte */
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);

    /* Extensions block length != rest. */
    e.n = 0;
    sni_ext(&e, "ok.test", 7);
    hello(&h, &e, 1);
    h.b[h.n - e.n - 1]++;
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);

    /* Duplicate unknown extensions. */
    e.n = 0;
    u16(&e, 0x1234);
    u16(&e, 0);
    u16(&e, 0x1234);
    u16(&e, 0);
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);

    /* Too many extensions. */
    e.n = 0;
    for (unsigned i = 0; i < NB_TLSSNI_MAX_EXTENSIONS + 1; i++) {
        u16(&e, 0x2000 + i);
        u16(&e, 0);
    }
    hello(&h, &e, 1);
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);

    /* Not TLS at all. */
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, (const uint8_t *)http, strlen(http), &used), NB_EPARSE);
    /* SSLv2-compatible hello. */
    const uint8_t v2[] = {0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15};
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, v2, sizeof(v2), &used), NB_EPARSE);
    /* Zero-length and oversized records. */
    const uint8_t z[] = {22, 3, 1, 0, 0};
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, z, sizeof(z), &used), NB_EPARSE);
    const uint8_t big[] = {22, 3, 1, 0x40, 0x01};
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, big, sizeof(big), &used), NB_EPARSE);
    /* ServerHello instead of ClientHello. */
    const uint8_t sh[] = {22, 3, 3, 0, 4, 2, 0, 0, 40};
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, sh, sizeof(sh), &used), NB_EPARSE);
    /* A handshake message larger than the cap, announced up front. */
    const uint8_t huge[] = {22, 3, 1, 0, 4, 1, 0x01, 0x00, 0x00};
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, huge, sizeof(huge), &used), NB_ETOOBIG);
    /* Errors stick. */
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, h.b, h.n, &used), NB_ETOOBIG);
    /* Truncated input: simply needs more. */
    e.n = 0;
    sni_ext(&e, "ok.test", 7);
    hello(&h, &e, 1);
    nb_tlssni_init(&p);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, h.b, h.n - 1, &used), NB_TLSSNI_MORE);
    NB_CHECK_EQ_INT(used, h.n - 1);
    NB_CHECK_EQ_INT(nb_tlssni_feed(&p, h.b + h.n - 1, 1, &used), NB_TLSSNI_DONE);
    NB_CHECK_STR(p.sni, "ok.test");
    /* Bad legacy version and session id length. */
    hello(&h, &e, 1);
    h.b[9] = 2;
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);
    hello(&h, &e, 1);
    h.b[9 + 2 + 32] = 33;
    NB_CHECK_EQ_INT(run(&h), NB_EPARSE);
}

int main(void)
{
    NB_RUN(test_real_hello);
    NB_RUN(test_malformed);
    NB_TEST_MAIN_END();
}
