/* Unit tests for the HTTP/1.1 parser (src/lib/http.c): good messages,
 * every THREATS.md A15 smuggling shape, caps, and split-feeding
 * equivalence (the same transcript whatever the chunk boundaries). */
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/http.h"
#include "nbtest.h"

typedef struct {
    nb_buf_t t;    /* transcript */
    nb_buf_t body; /* body of the current message */
} rec_t;

static int rec_head(void *ud, const nb_http_head_t *h)
{
    rec_t *r = ud;
    if (h->type == NB_HTTP_REQUEST)
        nb_buf_printf(&r->t, "H:%.*s %.*s 1.%d", (int)h->method.len, (const char *)h->method.p,
                      (int)h->target.len, (const char *)h->target.p, h->version_minor);
    else
        nb_buf_printf(&r->t, "H:%d %.*s 1.%d", h->status, (int)h->reason.len,
                      (const char *)h->reason.p, h->version_minor);
    nb_buf_printf(&r->t, " n=%zu cl=%lld ch=%d ka=%d up=%d", h->nheaders,
                  (long long)h->content_length, h->chunked, h->keep_alive, h->upgrade);
    /* Every head carries each name's kind, and kinds_seen exactly those. */
    uint32_t seen = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        NB_CHECK_EQ_INT(h->kinds[i], nb_http_hdr_kind(h->headers[i].name));
        seen |= 1u << h->kinds[i];
    }
    NB_CHECK_EQ_INT(h->kinds_seen, seen);
    for (size_t i = 0; i < h->nheaders; i++)
        nb_buf_printf(&r->t, " [%.*s=%.*s]", (int)h->headers[i].name.len,
                      (const char *)h->headers[i].name.p, (int)h->headers[i].value.len,
                      (const char *)h->headers[i].value.p);
    nb_buf_append_str(&r->t, ";");
    return 0;
}

static int rec_body(void *ud, const uint8_t *p, size_t len)
{
    rec_t *r = ud;
    return nb_buf_append(&r->body, p, len);
}

static const nb_http_cbs_t rec_cbs = {.on_head = rec_head, .on_body = rec_body};

/* Parses `in` fed in pieces of `step` bytes (0 = all at once); returns the
 * transcript (caller frees). `eof` calls finish at the end. */
static char *run_ex(nb_http_type_t type, const char *in, size_t len, size_t step, int eof,
                    const nb_http_limits_t *lim, const char *resp_to)
{
    nb_http_parser_t *p;
    rec_t r;
    size_t off = 0;
    int rc = 0;
    char *out;

    nb_buf_init(&r.t, 1 << 20);
    nb_buf_init(&r.body, 1 << 24);
    if (nb_http_parser_new(type, lim, &rec_cbs, &r, &p) < 0)
        abort();
    if (resp_to)
        nb_http_parser_expect_response_to(p, resp_to);
    while (off < len) {
        size_t n = step && len - off > step ? step : len - off, used;
        /* feed this piece until all of it is used or we stop */
        size_t pos = 0;
        while (pos < n) {
            rc = nb_http_parser_feed(p, (const uint8_t *)in + off + pos, n - pos, &used);
            pos += used;
            if (rc < 0) {
                nb_buf_printf(&r.t, "E:%s", nb_http_err_token(nb_http_parser_error(p)));
                goto done;
            }
            if (rc == NB_HTTP_DONE || rc == NB_HTTP_UPGRADED) {
                nb_buf_printf(&r.t, "B:%.*s;D;", (int)r.body.len, r.body.p ? (char *)r.body.p : "");
                nb_buf_reset(&r.body);
                if (resp_to)
                    nb_http_parser_expect_response_to(p, resp_to);
            }
            if (rc == NB_HTTP_UPGRADED) {
                nb_buf_printf(&r.t, "U@%zu", off + pos);
                goto done;
            }
        }
        off += n;
    }
    if (eof) {
        rc = nb_http_parser_finish(p);
        if (rc < 0)
            nb_buf_printf(&r.t, "E:%s", nb_http_err_token(nb_http_parser_error(p)));
        else if (rc == NB_HTTP_DONE)
            nb_buf_printf(&r.t, "B:%.*s;D;EOF", (int)r.body.len, r.body.p ? (char *)r.body.p : "");
    } else if (nb_http_parser_in_message(p)) {
        nb_buf_append_str(&r.t, "MORE");
    }
done:
    nb_http_parser_free(p);
    out = strdup(nb_buf_cstr(&r.t) ? (char *)r.t.p : "");
    nb_buf_free(&r.t);
    nb_buf_free(&r.body);
    return out;
}

/* Whole-buffer transcript, checked to equal the byte-by-byte and 7-byte
 * split transcripts. */
static char *run(nb_http_type_t type, const char *in, size_t len)
{
    char *a = run_ex(type, in, len, 0, 0, NULL, NULL);
    char *b = run_ex(type, in, len, 1, 0, NULL, NULL);
    char *c = run_ex(type, in, len, 7, 0, NULL, NULL);
    NB_CHECK_STR(b, a);
    NB_CHECK_STR(c, a);
    free(b);
    free(c);
    return a;
}

#define REQ(s) run(NB_HTTP_REQUEST, s, sizeof(s) - 1)

static void expect_req(const char *in, size_t len, const char *want)
{
    char *got = run(NB_HTTP_REQUEST, in, len);
    NB_CHECK_STR(got, want);
    free(got);
}

#define EXPECT_REQ(s, want) expect_req(s, sizeof(s) - 1, want)

/* A request must be refused with exactly this reason. */
static void expect_reject(const char *in, size_t len, const char *token)
{
    char *got = run(NB_HTTP_REQUEST, in, len);
    char want[128];
    const char *e = strstr(got, "E:");
    snprintf(want, sizeof(want), "E:%s", token);
    NB_CHECK_STR(e ? e : got, want);
    free(got);
}

#define REJECT(s, tok) expect_reject(s, sizeof(s) - 1, tok)

static void test_good_requests(void)
{
    EXPECT_REQ("GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
               "H:GET /a?b=c 1.1 n=1 cl=-1 ch=0 ka=1 up=0 [Host=x];B:;D;");
    /* OWS around values is trimmed; case of names preserved */
    EXPECT_REQ("GET / HTTP/1.1\r\nhOsT: \t x \t\r\nX-A:\r\n\r\n",
               "H:GET / 1.1 n=2 cl=-1 ch=0 ka=1 up=0 [hOsT=x] [X-A=];B:;D;");
    EXPECT_REQ("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
               "H:POST /p 1.1 n=2 cl=5 ch=0 ka=1 up=0 [Host=x] [Content-Length=5];B:hello;D;");
    /* chunked with extensions and trailers */
    EXPECT_REQ(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;name=val\r\nhello\r\n6;a;b=\"q v\";c\r\n world\r\n0\r\nX-Trailer: t\r\nY: z\r\n\r\n",
        "H:POST / 1.1 n=2 cl=-1 ch=1 ka=1 up=0 [Host=x] [Transfer-Encoding=chunked];"
        "B:hello world;D;");
    EXPECT_REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
               "A\r\n0123456789\r\n0\r\n\r\n",
               "H:POST / 1.1 n=2 cl=-1 ch=1 ka=1 up=0 [Host=x] [Transfer-Encoding=Chunked];"
               "B:0123456789;D;");
    /* pipelining: three messages, in order; an unfinished fourth */
    EXPECT_REQ("GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
               "POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
               "GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
               "H:GET /1 1.1 n=1 cl=-1 ch=0 ka=1 up=0 [Host=x];B:;D;"
               "H:POST /2 1.1 n=2 cl=2 ch=0 ka=1 up=0 [Host=x] [Content-Length=2];B:ab;D;"
               "H:GET /3 1.1 n=2 cl=-1 ch=0 ka=0 up=0 [Host=x] [Connection=close];B:;D;");
    EXPECT_REQ("GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HT",
               "H:GET /1 1.1 n=1 cl=-1 ch=0 ka=1 up=0 [Host=x];B:;D;MORE");
    /* empty lines before a request are tolerated (RFC 9112 2.2) */
    EXPECT_REQ("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
               "H:GET / 1.1 n=1 cl=-1 ch=0 ka=1 up=0 [Host=x];B:;D;");
    /* HTTP/1.0: no Host needed, keep-alive only when asked */
    EXPECT_REQ("GET / HTTP/1.0\r\n\r\n", "H:GET / 1.0 n=0 cl=-1 ch=0 ka=0 up=0;B:;D;");
    EXPECT_REQ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
               "H:GET / 1.0 n=1 cl=-1 ch=0 ka=1 up=0 [Connection=keep-alive];B:;D;");
    /* obs-text in values is kept as bytes */
    EXPECT_REQ("GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n",
               "H:GET / 1.1 n=2 cl=-1 ch=0 ka=1 up=0 [Host=x] [X=caf\xc3\xa9];B:;D;");
    /* absolute-form, asterisk-form, authority-form */
    EXPECT_REQ("GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
               "H:GET http://a.example/x 1.1 n=1 cl=-1 ch=0 ka=1 up=0 [Host=a.example];B:;D;");
    EXPECT_REQ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
               "H:OPTIONS * 1.1 n=1 cl=-1 ch=0 ka=1 up=0 [Host=x];B:;D;");
}

static void test_upgrade(void)
{
    /* WebSocket upgrade: bytes after the head belong to the new protocol */
    static const char ws[] = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\n\r\n\x81\x85";
    char *got = REQ(ws);
    char want[64];
    snprintf(want, sizeof(want), "U@%zu", sizeof(ws) - 1 - 2);
    NB_CHECK(strstr(got, "up=1") != NULL);
    NB_CHECK(strstr(got, want) != NULL);
    free(got);
    /* CONNECT */
    got = REQ("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03");
    NB_CHECK(strstr(got, "H:CONNECT a.example:443 1.1") != NULL);
    NB_CHECK(strstr(got, "U@") != NULL);
    free(got);
    /* Upgrade without "Connection: upgrade" is not an upgrade */
    got = REQ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n");
    NB_CHECK(strstr(got, "up=0") != NULL && strstr(got, "U@") == NULL);
    free(got);
}

static void test_smuggling(void)
{
    /* A15: every shape gets its own reason */
    REJECT("GET / HTTP/1.1\nHost: x\r\n\r\n", "bare-lf");
    REJECT("GET / HTTP/1.1\r\nHost: x\n\r\n", "bare-lf");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\n\n", "bare-lf");
    REJECT("GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", "bare-cr");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", "obs-fold");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n", "obs-fold");
    REJECT("GET / HTTP/1.1\r\n Host: x\r\n\r\n", "obs-fold");
    REJECT("GET / HTTP/1.1\r\nHost : x\r\n\r\n", "space-before-colon");
    REJECT("GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", "space-before-colon");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", "space-before-colon");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "duplicate-host");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n", "duplicate-host");
    REJECT("GET / HTTP/1.1\r\nX: y\r\n\r\n", "missing-host");
    REJECT("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid-host");
    REJECT("GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", "invalid-host");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
           "0\r\n\r\n",
           "content-length-with-transfer-encoding");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
           "0\r\n\r\n",
           "content-length-with-transfer-encoding");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
           "conflicting-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
           "duplicate-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
           "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n", "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
           "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", "invalid-content-length");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
           "unsupported-transfer-encoding");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
           "unsupported-transfer-encoding");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
           "unsupported-transfer-encoding");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
           "unsupported-transfer-encoding");
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           "duplicate-transfer-encoding");
    REJECT("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           "transfer-encoding-in-http10");
    /* invalid chunk sizes and framing */
    static const char te[] = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const struct {
        const char *body, *tok;
    } chunks[] = {
        {"-5\r\nhello\r\n0\r\n\r\n", "invalid-chunk-size"},
        {"0x5\r\nhello\r\n0\r\n\r\n", "invalid-chunk-size"},
        {"5 \r\nhello\r\n0\r\n\r\n", "invalid-chunk-size"},
        {" 5\r\nhello\r\n0\r\n\r\n", "invalid-chunk-size"},
        {"+5\r\nhello\r\n0\r\n\r\n", "invalid-chunk-size"},
        {"\r\n5\r\nhello\r\n0\r\n\r\n", "invalid-chunk-size"},
        {"fffffffffffffffff\r\n", "invalid-chunk-size"},
        {"5\nhello\r\n0\r\n\r\n", "bare-lf"},
        {"5\rhello\r\n0\r\n\r\n", "bare-cr"},
        {"5\r\nhello\n0\r\n\r\n", "bare-lf"},
        {"5\r\nhelloXX0\r\n\r\n", "invalid-chunk-framing"},
        {"5;a=b\nhello\r\n0\r\n\r\n", "bare-lf"},
        {"5;a\x01\r\nhello\r\n0\r\n\r\n", "invalid-chunk-extension"},
        {"5\r\nhello\r\n0\r\nX: y\r\n z\r\n\r\n", "obs-fold"},
        {"5\r\nhello\r\n0\r\nX: y\nZ: w\r\n\r\n", "bare-lf"},
        {"5\r\nhello\r\n0\r\n\n", "bare-lf"},
        {"5\r\nhello\r\n0\r\nX : y\r\n\r\n", "space-before-colon"},
        {"5\r\nhello\r\n0\r\nX: \x7f\r\n\r\n", "control-char-in-header"},
        {"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", "forbidden-trailer"},
        {"5\r\nhello\r\n0\r\ntransfer-encoding: chunked\r\n\r\n", "forbidden-trailer"},
        {"5\r\nhello\r\n0\r\nConnection: close\r\n\r\n", "forbidden-trailer"},
        {"5\r\nhello\r\n0\r\nHost: y\r\n\r\n", "forbidden-trailer"},
        {"5;a=b;c=d\r\nhello\r\n0\r\n\r\n", "invalid-chunk-extension"},
        {"5;a=\"b\\\"c\"\r\nhello\r\n0\r\n\r\n", "invalid-chunk-extension"},
        {"5;=b\r\nhello\r\n0\r\n\r\n", "invalid-chunk-extension"},
        {"5;a=\r\nhello\r\n0\r\n\r\n", "invalid-chunk-extension"},
    };
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        char buf[256];
        int n = snprintf(buf, sizeof(buf), "%s%s", te, chunks[i].body);
        expect_reject(buf, (size_t)n, chunks[i].tok);
    }
    /* chunk extension bytes are capped */
    {
        nb_buf_t b;
        nb_buf_init(&b, 1 << 20);
        nb_buf_append_str(&b, te);
        nb_buf_append_str(&b, "5;");
        for (int i = 0; i < 2000; i++)
            nb_buf_append_str(&b, "a");
        nb_buf_append_str(&b, "\r\nhello\r\n0\r\n\r\n");
        expect_reject((const char *)b.p, b.len, "invalid-chunk-extension");
        nb_buf_free(&b);
    }
    /* control characters in values, including NUL */
    expect_reject("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", 35, "control-char-in-header");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nX: a\x01z\r\n\r\n", "control-char-in-header");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fz\r\n\r\n", "control-char-in-header");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nX: a\x1b[31m\r\n\r\n", "control-char-in-header");
    /* names */
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nX\"Y: a\r\n\r\n", "invalid-header-name");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n", "invalid-header-name");
    REJECT("GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", "invalid-header-name");
    /* start lines */
    REJECT("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-target");
    REJECT("GET / HTTP/1.1 \r\nHost: x\r\n\r\n", "invalid-version");
    REJECT("GET / HTTP/2.0\r\nHost: x\r\n\r\n", "invalid-version");
    REJECT("GET / HTTP/1.2\r\nHost: x\r\n\r\n", "invalid-version");
    REJECT("GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-target");
    REJECT("GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-target");
    REJECT("GET x HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-target");
    REJECT("GET * HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-target");
    REJECT("CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-target");
    REJECT("G(T / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-method");
    REJECT("FOO / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid-method");
    REJECT("\n", "bare-lf");
    /* a second request cannot ride in the first one's body past us:
     * Content-Length framing is what counts, and both parsers agree. */
    EXPECT_REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET /admin HTTP/1.1\r\n"
               "Host: x\r\n\r\n",
               "H:POST / 1.1 n=2 cl=4 ch=0 ka=1 up=0 [Host=x] [Content-Length=4];B:GET ;D;E:"
               "invalid-method");
}

static void test_caps(void)
{
    nb_http_limits_t lim;
    nb_buf_t b;
    char *got;

    nb_http_limits_default(&lim);
    nb_buf_init(&b, 1 << 22);
    /* start line: exactly the cap passes, one more byte does not */
    nb_buf_append_str(&b, "GET /");
    while (b.len < lim.max_start_line - 9)
        nb_buf_append_str(&b, "a");
    nb_buf_append_str(&b, " HTTP/1.1\r\nHost: x\r\n\r\n");
    got = run(NB_HTTP_REQUEST, (const char *)b.p, b.len);
    NB_CHECK(strncmp(got, "H:GET /aaa", 10) == 0 && strstr(got, ";D;") != NULL);
    free(got);
    nb_buf_reset(&b);
    nb_buf_append_str(&b, "GET /");
    while (b.len < lim.max_start_line - 8)
        nb_buf_append_str(&b, "a");
    nb_buf_append_str(&b, " HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_reject((const char *)b.p, b.len, "start-line-too-long");
    /* an endless start line is refused without buffering it all */
    nb_buf_reset(&b);
    nb_buf_append_str(&b, "GET /");
    while (b.len < 3 * 1024 * 1024)
        nb_buf_append_str(&b, "aaaaaaaaaaaaaaaa");
    got = run_ex(NB_HTTP_REQUEST, (const char *)b.p, b.len, 4096, 0, NULL, NULL);
    NB_CHECK_STR(got, "E:start-line-too-long");
    free(got);
    /* header count */
    nb_buf_reset(&b);
    nb_buf_append_str(&b, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (size_t i = 1; i < lim.max_headers; i++)
        nb_buf_printf(&b, "X-%zu: v\r\n", i);
    nb_buf_append_str(&b, "\r\n");
    got = run(NB_HTTP_REQUEST, (const char *)b.p, b.len);
    NB_CHECK(strstr(got, " n=100 ") != NULL);
    free(got);
    b.len -= 2;
    nb_buf_append_str(&b, "X-last: v\r\n\r\n");
    expect_reject((const char *)b.p, b.len, "too-many-headers");
    /* header block bytes */
    nb_buf_reset(&b);
    nb_buf_append_str(&b, "GET / HTTP/1.1\r\nHost: x\r\nX: ");
    for (size_t i = 0; i < lim.max_header_bytes; i++)
        nb_buf_append_str(&b, "v");
    nb_buf_append_str(&b, "\r\n\r\n");
    expect_reject((const char *)b.p, b.len, "headers-too-large");
    /* body: declared too big is refused before any body byte */
    REJECT("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n", "body-too-large");
    /* chunked: refused when the sum passes the cap */
    lim.max_body = 8;
    got = run_ex(NB_HTTP_REQUEST,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
                 81, 1, 0, &lim, NULL);
    NB_CHECK(strstr(got, "E:body-too-large") != NULL);
    free(got);
    got = run_ex(NB_HTTP_REQUEST,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "ffffff\r\n",
                 66, 0, 0, &lim, NULL);
    NB_CHECK(strstr(got, "E:body-too-large") != NULL);
    free(got);
    /* trailers */
    nb_http_limits_default(&lim);
    nb_buf_reset(&b);
    nb_buf_append_str(&b, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
    for (int i = 0; i < 1000; i++)
        nb_buf_append_str(&b, "X-T: vvvvvvvvvv\r\n");
    nb_buf_append_str(&b, "\r\n");
    expect_reject((const char *)b.p, b.len, "trailers-too-large");
    nb_buf_free(&b);
}

static void test_responses(void)
{
    char *got;
#define RESP(s, step, eof, to) run_ex(NB_HTTP_RESPONSE, s, sizeof(s) - 1, step, eof, NULL, to)

    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 0, 0, NULL);
    NB_CHECK_STR(got, "H:200 OK 1.1 n=1 cl=2 ch=0 ka=1 up=0 [Content-Length=2];B:hi;D;");
    free(got);
    got = RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", 1, 0,
               NULL);
    NB_CHECK_STR(got, "H:200 OK 1.1 n=1 cl=-1 ch=1 ka=1 up=0 [Transfer-Encoding=chunked];B:hi;D;");
    free(got);
    /* until EOF */
    got = RESP("HTTP/1.1 200 OK\r\n\r\nall of it", 3, 1, NULL);
    NB_CHECK_STR(got, "H:200 OK 1.1 n=0 cl=-1 ch=0 ka=0 up=0;B:all of it;D;EOF");
    free(got);
    /* truncated */
    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 0, 1, NULL);
    NB_CHECK_STR(got, "H:200 OK 1.1 n=1 cl=10 ch=0 ka=1 up=0 [Content-Length=10];E:truncated");
    free(got);
    /* 1xx, 204, 304 have no body; 100 Continue precedes the real response */
    got = RESP("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
               "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
               0, 0, NULL);
    NB_CHECK_STR(got, "H:100 Continue 1.1 n=0 cl=-1 ch=0 ka=1 up=0;B:;D;"
                      "H:204 No Content 1.1 n=0 cl=-1 ch=0 ka=1 up=0;B:;D;"
                      "H:304 Not Modified 1.1 n=1 cl=5 ch=0 ka=1 up=0 [Content-Length=5];B:;D;");
    free(got);
    /* HEAD: Content-Length describes a body that is not sent */
    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n"
               "Content-Length: 5\r\n\r\n",
               0, 0, "HEAD");
    NB_CHECK_STR(got, "H:200 OK 1.1 n=1 cl=5 ch=0 ka=1 up=0 [Content-Length=5];B:;D;"
                      "H:200 OK 1.1 n=1 cl=5 ch=0 ka=1 up=0 [Content-Length=5];B:;D;");
    free(got);
    /* a HEAD response may announce more than the body cap */
    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", 0, 0, "HEAD");
    NB_CHECK_STR(got, "H:200 OK 1.1 n=1 cl=99999999999 ch=0 ka=1 up=0 [Content-Length=99999999999];"
                      "B:;D;");
    free(got);
    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", 0, 0, "GET");
    NB_CHECK_STR(got, "E:body-too-large");
    free(got);
    /* CONNECT 200 and 101 switch protocols */
    got = RESP("HTTP/1.1 200 Connection established\r\n\r\n\x16\x03", 0, 0, "CONNECT");
    NB_CHECK(strstr(got, "up=1") && strstr(got, "U@39"));
    free(got);
    got = RESP("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "\r\n\x81\x00",
               1, 0, NULL);
    NB_CHECK(strstr(got, "up=1") && strstr(got, "U@"));
    free(got);
    /* status line without reason is tolerated; bad ones are not */
    got = RESP("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 0, 0, NULL);
    NB_CHECK(strncmp(got, "H:200  1.1", 10) == 0);
    free(got);
    got = RESP("HTTP/1.1 20 OK\r\n\r\n", 0, 0, NULL);
    NB_CHECK_STR(got, "E:invalid-status");
    free(got);
    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 0,
               NULL);
    NB_CHECK_STR(got, "E:content-length-with-transfer-encoding");
    free(got);
    got = RESP("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0, 0, NULL);
    NB_CHECK_STR(got, "E:conflicting-content-length");
    free(got);
    got = RESP("HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\nx", 0, 0, NULL);
    NB_CHECK_STR(got, "E:bare-lf");
    free(got);
#undef RESP
}

static void test_api(void)
{
    nb_http_parser_t *p = NULL;
    nb_http_limits_t lim;
    size_t used;

    NB_CHECK_EQ_INT(nb_http_parser_new(3, NULL, NULL, NULL, &p), NB_EINVAL);
    NB_CHECK(p == NULL);
    nb_http_limits_default(&lim);
    lim.max_headers = 0;
    NB_CHECK_EQ_INT(nb_http_parser_new(NB_HTTP_REQUEST, &lim, NULL, NULL, &p), NB_EINVAL);
    nb_http_parser_free(NULL);
    /* errors are final */
    NB_CHECK_EQ_INT(nb_http_parser_new(NB_HTTP_REQUEST, NULL, NULL, NULL, &p), 0);
    NB_CHECK_EQ_INT(nb_http_parser_feed(p, (const uint8_t *)"G\n", 2, &used), NB_EPARSE);
    NB_CHECK_EQ_INT(nb_http_parser_error(p), NB_HTTP_ERR_BARE_LF);
    NB_CHECK_EQ_INT(nb_http_parser_feed(p, (const uint8_t *)"GET", 3, &used), NB_EPARSE);
    nb_http_parser_free(p);
    /* caps report NB_ETOOBIG */
    NB_CHECK_EQ_INT(nb_http_parser_new(NB_HTTP_REQUEST, NULL, NULL, NULL, &p), 0);
    static const char big[] = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n";
    NB_CHECK_EQ_INT(nb_http_parser_feed(p, (const uint8_t *)big, sizeof(big) - 1, &used),
                    NB_ETOOBIG);
    NB_CHECK_EQ_INT(nb_http_err_status(nb_http_parser_error(p)), 413);
    nb_http_parser_free(p);
    /* finish inside a request is a truncation */
    NB_CHECK_EQ_INT(nb_http_parser_new(NB_HTTP_REQUEST, NULL, NULL, NULL, &p), 0);
    NB_CHECK_EQ_INT(nb_http_parser_feed(p, (const uint8_t *)"GET / H", 7, &used), NB_HTTP_MORE);
    NB_CHECK(nb_http_parser_in_message(p));
    NB_CHECK_EQ_INT(nb_http_parser_finish(p), NB_EPARSE);
    NB_CHECK_EQ_INT(nb_http_parser_error(p), NB_HTTP_ERR_TRUNCATED);
    nb_http_parser_free(p);
    /* reason tokens are unique */
    for (int i = 0; i < NB_HTTP_ERR_COUNT_; i++)
        for (int j = i + 1; j < NB_HTTP_ERR_COUNT_; j++)
            NB_CHECK(strcmp(nb_http_err_token(i), nb_http_err_token(j)) != 0);
    /* helpers */
    NB_CHECK(nb_http_list_has_token(NB_IOV_STR("keep-alive, Upgrade"), "upgrade"));
    NB_CHECK(!nb_http_list_has_token(NB_IOV_STR("keep-alive, Upgraded"), "upgrade"));
    NB_CHECK(!nb_http_list_has_token(NB_IOV_STR(""), "upgrade"));
    NB_CHECK_STR(nb_http_status_text(431), "Request Header Fields Too Large");
}

/* Header-name kinds: every listed name in any case, nothing else, not
 * even a name of the same length one letter off. */
static void test_kinds(void)
{
    static const struct {
        const char *name;
        nb_http_hdr_kind_t kind;
    } names[] = {
        {"host", NB_HDR_HOST},
        {"content-length", NB_HDR_CONTENT_LENGTH},
        {"transfer-encoding", NB_HDR_TRANSFER_ENCODING},
        {"expect", NB_HDR_EXPECT},
        {"connection", NB_HDR_CONNECTION},
        {"keep-alive", NB_HDR_KEEP_ALIVE},
        {"proxy-connection", NB_HDR_PROXY_CONNECTION},
        {"proxy-authorization", NB_HDR_PROXY_AUTHORIZATION},
        {"proxy-authenticate", NB_HDR_PROXY_AUTHENTICATE},
        {"te", NB_HDR_TE},
        {"trailer", NB_HDR_TRAILER},
        {"upgrade", NB_HDR_UPGRADE},
        {"authorization", NB_HDR_AUTHORIZATION},
        {"accept-encoding", NB_HDR_ACCEPT_ENCODING},
        {"content-encoding", NB_HDR_CONTENT_ENCODING},
        {"content-type", NB_HDR_CONTENT_TYPE},
        {"user-agent", NB_HDR_USER_AGENT},
        {"sec-websocket-extensions", NB_HDR_SEC_WEBSOCKET_EXTENSIONS},
    };
    NB_CHECK_EQ_INT(sizeof(names) / sizeof(names[0]), NB_HDR_KIND_COUNT_ - 1);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char buf[32];
        size_t n = strlen(names[i].name);
        memcpy(buf, names[i].name, n);
        NB_CHECK_EQ_INT(nb_http_hdr_kind(nb_iov(buf, n)), names[i].kind);
        for (size_t k = 0; k < n; k++)
            if (buf[k] >= 'a' && buf[k] <= 'z')
                buf[k] = (char)(buf[k] - 32);
        NB_CHECK_EQ_INT(nb_http_hdr_kind(nb_iov(buf, n)), names[i].kind);
        /* one byte changed (first, middle, last): another name */
        for (size_t k = 0; k < n; k += n / 2 ? n / 2 : 1) {
            memcpy(buf, names[i].name, n);
            buf[k] = buf[k] == 'x' ? 'y' : 'x';
            NB_CHECK_EQ_INT(nb_http_hdr_kind(nb_iov(buf, n)), NB_HDR_OTHER);
        }
        memcpy(buf, names[i].name, n);
        buf[n - 1] = '\0'; /* no NUL tricks: compared by length */
        NB_CHECK_EQ_INT(nb_http_hdr_kind(nb_iov(buf, n)), NB_HDR_OTHER);
        NB_CHECK_EQ_INT(nb_http_hdr_kind(nb_iov(names[i].name, n - 1)), NB_HDR_OTHER);
    }
    NB_CHECK_EQ_INT(nb_http_hdr_kind(nb_iov("", 0)), NB_HDR_OTHER);
    NB_CHECK_EQ_INT(nb_http_hdr_kind(NB_IOV_STR("x-forwarded")), NB_HDR_OTHER);
    NB_CHECK_EQ_INT(nb_http_hdr_kind(NB_IOV_STR("Hos\xf4")), NB_HDR_OTHER);
    /* same length as a listed name, first letter of another */
    NB_CHECK_EQ_INT(nb_http_hdr_kind(NB_IOV_STR("konnection")), NB_HDR_OTHER);
    NB_CHECK_EQ_INT(nb_http_hdr_kind(NB_IOV_STR("pontent-encoding")), NB_HDR_OTHER);
    NB_CHECK_EQ_INT(nb_http_hdr_kind(NB_IOV_STR("tpgrade")), NB_HDR_OTHER);

    /* nb_http_head_find by a listed name and by another: same answers */
    EXPECT_REQ("GET / HTTP/1.1\r\nHOST: x\r\nX-One: 1\r\nupgrade: a\r\nUpgrade: b\r\n\r\n",
               "H:GET / 1.1 n=4 cl=-1 ch=0 ka=1 up=0 [HOST=x] [X-One=1] [upgrade=a] [Upgrade=b];"
               "B:;D;");
}

static int find_head(void *ud, const nb_http_head_t *h)
{
    int *ok = ud;
    const nb_http_header_t *up = nb_http_head_find(h, "Upgrade");
    *ok = up && up == nb_http_head_find_kind(h, NB_HDR_UPGRADE) && up->value.len == 1 &&
          up->value.p[0] == 'a' && nb_http_head_find(h, "x-one") == &h->headers[1] &&
          !nb_http_head_find(h, "x-two") && !nb_http_head_find(h, "content-length") &&
          !nb_http_head_find_kind(h, NB_HDR_CONTENT_LENGTH) &&
          !nb_http_head_find_kind(h, NB_HDR_OTHER) &&
          h->kinds_seen == ((1u << NB_HDR_HOST) | (1u << NB_HDR_OTHER) | (1u << NB_HDR_UPGRADE));
    return 0;
}

static void test_find(void)
{
    static const char in[] =
        "GET / HTTP/1.1\r\nHOST: x\r\nX-One: 1\r\nupgrade: a\r\nUpgrade: b\r\n\r\n";
    nb_http_cbs_t cbs = {.on_head = find_head};
    nb_http_parser_t *p;
    int ok = -1;
    size_t used;
    NB_CHECK_EQ_INT(nb_http_parser_new(NB_HTTP_REQUEST, NULL, &cbs, &ok, &p), 0);
    NB_CHECK_EQ_INT(nb_http_parser_feed(p, (const uint8_t *)in, sizeof(in) - 1, &used),
                    NB_HTTP_DONE);
    NB_CHECK_EQ_INT(ok, 1);
    nb_http_parser_free(p);
}

int main(void)
{
    NB_RUN(test_good_requests);
    NB_RUN(test_upgrade);
    NB_RUN(test_smuggling);
    NB_RUN(test_caps);
    NB_RUN(test_responses);
    NB_RUN(test_api);
    NB_RUN(test_kinds);
    NB_RUN(test_find);
    NB_TEST_MAIN_END();
}
