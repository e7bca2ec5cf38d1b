/* Unit tests for the WebSocket codec (src/lib/ws.c): RFC 6455 examples,
 * every framing rule, UTF-8, close payloads, writer round trips and
 * split-feeding equivalence. */
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/ws.h"
#include "nbtest.h"

typedef struct {
    nb_buf_t t;
    int stop_on_close;
} rec_t;

static int rec_msg(void *ud, int op, const uint8_t *p, size_t len)
{
    rec_t *r = ud;
    nb_buf_printf(&r->t, "%s(%zu):", op == NB_WS_OP_TEXT ? "T" : "B", len);
    nb_buf_append(&r->t, p, len > 40 ? 40 : len);
    nb_buf_append_str(&r->t, ";");
    return 0;
}

static int rec_ctl(void *ud, int op, const uint8_t *p, size_t len)
{
    rec_t *r = ud;
    nb_buf_printf(&r->t, "%s(%zu):",
                  op == NB_WS_OP_PING   ? "PING"
                  : op == NB_WS_OP_PONG ? "PONG"
                                        : "CLOSE",
                  len);
    if (op == NB_WS_OP_CLOSE && len >= 2) {
        nb_buf_printf(&r->t, "%d ", p[0] << 8 | p[1]);
        nb_buf_append(&r->t, p + 2, len - 2);
    } else {
        nb_buf_append(&r->t, p, len);
    }
    nb_buf_append_str(&r->t, ";");
    return op == NB_WS_OP_CLOSE && r->stop_on_close ? 1 : 0;
}

static const nb_ws_parser_cbs_t rec_cbs = {.on_message = rec_msg, .on_control = rec_ctl};

static char *run_ex(nb_ws_role_t role, size_t max, const uint8_t *in, size_t len, size_t step)
{
    nb_ws_parser_t *p;
    rec_t r = {.stop_on_close = 1};
    size_t off = 0, used;
    char *out;

    nb_buf_init(&r.t, 1 << 20);
    if (nb_ws_parser_new(role, max, &rec_cbs, &r, &p) < 0)
        abort();
    while (off < len) {
        size_t n = step && len - off > step ? step : len - off;
        int rc = nb_ws_parser_feed(p, in + off, n, &used);
        if (rc < 0) {
            nb_buf_printf(&r.t, "E%d:%s", nb_ws_parser_close_code(p), nb_ws_parser_reason(p));
            break;
        }
        off += used;
        if (rc == NB_WS_STOPPED) {
            nb_buf_printf(&r.t, "STOP@%zu", off);
            break;
        }
    }
    nb_ws_parser_free(p);
    nb_buf_cstr(&r.t);
    out = strdup(r.t.p ? (char *)r.t.p : "");
    nb_buf_free(&r.t);
    return out;
}

static char *run(nb_ws_role_t role, size_t max, const uint8_t *in, size_t len)
{
    char *a = run_ex(role, max, in, len, 0);
    char *b = run_ex(role, max, in, len, 1);
    char *c = run_ex(role, max, in, len, 5);
    NB_CHECK_STR(b, a);
    NB_CHECK_STR(c, a);
    free(b);
    free(c);
    return a;
}

static void expect(const void *in, size_t len, const char *want)
{
    char *got = run(NB_WS_ROLE_SERVER, 1024, in, len);
    NB_CHECK_STR(got, want);
    free(got);
}

#define EXPECT(lit, want) expect(lit, sizeof(lit) - 1, want)

static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};

/* Builds a masked client frame into b. */
static void cframe(nb_buf_t *b, int fin, int op, const char *data, size_t len)
{
    NB_CHECK_EQ_INT(nb_ws_frame_append_ex(b, fin, op, data, len, mask), 0);
}

static void test_handshake(void)
{
    char out[NB_WS_ACCEPT_LEN + 1];

    /* RFC 6455 section 1.3 */
    NB_CHECK_EQ_INT(nb_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
    NB_CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    NB_CHECK_EQ_INT(nb_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=", out), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ===", out), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_accept_key("dGhlIHNhbXBsZSBub25jZ!==", out), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_accept_key("dGhlIHNhbXBsZSBub25jZQAA", out), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_accept_key("", out), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_accept_key(NULL, out), NB_EINVAL);
}

static void test_utf8(void)
{
    NB_CHECK(nb_utf8_valid("", 0));
    NB_CHECK(nb_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
    NB_CHECK(nb_utf8_valid("\xf4\x8f\xbf\xbf", 4));  /* U+10FFFF */
    NB_CHECK(!nb_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    NB_CHECK(!nb_utf8_valid("\xc0\x80", 2));         /* overlong NUL */
    NB_CHECK(!nb_utf8_valid("\xe0\x80\xaf", 3));     /* overlong '/' */
    NB_CHECK(!nb_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    NB_CHECK(!nb_utf8_valid("\xc3", 1));             /* truncated */
    NB_CHECK(!nb_utf8_valid("\x80", 1));
    NB_CHECK(!nb_utf8_valid("\xff", 1));
}

static void test_frames(void)
{
    nb_buf_t b;
    char *got;

    /* RFC 6455 5.7: masked "Hello" */
    EXPECT("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", "T(5):Hello;");
    /* fragmented with a ping in the middle; UTF-8 split across fragments */
    nb_buf_init(&b, 1 << 20);
    cframe(&b, 0, NB_WS_OP_TEXT, "caf\xc3", 4);
    cframe(&b, 1, NB_WS_OP_PING, "p", 1);
    cframe(&b, 0, NB_WS_OP_CONT, "\xa9 ", 2);
    cframe(&b, 1, NB_WS_OP_CONT, "ok", 2);
    cframe(&b, 1, NB_WS_OP_BINARY, "\2\3", 2);
    cframe(&b, 1, NB_WS_OP_PONG, "", 0);
    cframe(&b, 1, NB_WS_OP_TEXT, "", 0);
    cframe(&b, 1, NB_WS_OP_CLOSE,
           "\x03\xe8"
           "bye",
           5);
    cframe(&b, 1, NB_WS_OP_TEXT, "after", 5);
    got = run(NB_WS_ROLE_SERVER, 1024, b.p, b.len);
    {
        char want[256];
        snprintf(
            want, sizeof(want),
            "PING(1):p;T(8):caf\xc3\xa9 ok;B(2):\2\3;PONG(0):;T(0):;CLOSE(5):1000 bye;STOP@%zu",
            b.len - 11);
        NB_CHECK_STR(got, want);
    }
    free(got);
    /* lengths: 125, 126 (16-bit), 65535, 65536 (64-bit) */
    {
        static char big[70000];
        size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 69999};
        memset(big, 'z', sizeof(big));
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            char want[64];
            nb_buf_reset(&b);
            cframe(&b, 1, NB_WS_OP_BINARY, big, lens[i]);
            got = run_ex(NB_WS_ROLE_SERVER, 1 << 20, b.p, b.len, 0);
            snprintf(want, sizeof(want), "B(%zu):%.*s;", lens[i],
                     (int)(lens[i] > 40 ? 40 : lens[i]), big);
            NB_CHECK_STR(got, want);
            free(got);
            /* and unmasked, as a client reads server frames */
            nb_buf_reset(&b);
            NB_CHECK_EQ_INT(nb_ws_frame_append(&b, NB_WS_OP_BINARY, big, lens[i], NULL), 0);
            NB_CHECK_EQ_INT(b.len, lens[i] + (lens[i] < 126 ? 2 : lens[i] <= 65535 ? 4 : 10));
            got = run_ex(NB_WS_ROLE_CLIENT, 1 << 20, b.p, b.len, 3);
            NB_CHECK_STR(got, want);
            free(got);
        }
    }
    nb_buf_free(&b);
}

static void test_errors(void)
{
    nb_buf_t b;
    char *got;

    EXPECT("\x81\x05Hello", "E1002:unmasked client frame");
    EXPECT("\xc1\x80\0\0\0\0", "E1002:reserved bits set");
    EXPECT("\xa1\x80\0\0\0\0", "E1002:reserved bits set");
    EXPECT("\x83\x80\0\0\0\0", "E1002:unknown opcode");
    EXPECT("\x8b\x80\0\0\0\0", "E1002:unknown opcode");
    EXPECT("\x09\x80\0\0\0\0", "E1002:fragmented control frame");
    EXPECT("\x89\xfe\0\x05\0\0\0\0", "E1002:non-minimal 16-bit length");
    EXPECT("\x82\xfe\0\x7d\0\0\0\0", "E1002:non-minimal 16-bit length");
    EXPECT("\x82\xff\0\0\0\0\0\0\xff\xff\0\0\0\0", "E1002:non-minimal 64-bit length");
    EXPECT("\x82\xff\x80\0\0\0\0\0\0\0\0\0\0\0", "E1002:length over 63 bits");
    EXPECT("\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff\0\0\0\0", "E1009:message too big");
    EXPECT("\x82\xfe\x04\x01\0\0\0\0", "E1009:message too big");
    EXPECT("\x80\x80\0\0\0\0", "E1002:continuation without a message");
    EXPECT("\x01\x80\0\0\0\0\x01\x80\0\0\0\0", "E1002:new message inside a fragmented one");
    EXPECT("\x81\x82\0\0\0\0\xc3\x28", "E1007:text message is not UTF-8");
    EXPECT("\x81\x81\0\0\0\0\xc3", "E1007:text message is not UTF-8");
    EXPECT("\x88\x81\0\0\0\0\x03", "E1002:one-byte close payload");
    EXPECT("\x88\x82\0\0\0\0\x03\xed", "E1002:invalid close code"); /* 1005 */
    EXPECT("\x88\x82\0\0\0\0\x03\xee", "E1002:invalid close code"); /* 1006 */
    EXPECT("\x88\x82\0\0\0\0\x03\xec", "E1002:invalid close code"); /* 1004 */
    EXPECT("\x88\x82\0\0\0\0\x03\xe7", "E1002:invalid close code"); /* 999 */
    EXPECT("\x88\x82\0\0\0\0\x0b\xb7", "E1002:invalid close code"); /* 2999 */
    EXPECT("\x88\x82\0\0\0\0\x13\x88", "E1002:invalid close code"); /* 5000 */
    EXPECT("\x88\x84\0\0\0\0\x03\xe8\xc3\x28", "E1007:close reason is not UTF-8");
    EXPECT("\x88\x82\0\0\0\0\x0b\xb8", "CLOSE(2):3000 ;STOP@8");
    EXPECT("\x88\x80\0\0\0\0", "CLOSE(0):;STOP@6");
    /* fragments adding up past the cap */
    nb_buf_init(&b, 1 << 20);
    {
        static char part[600];
        memset(part, 'a', sizeof(part));
        cframe(&b, 0, NB_WS_OP_BINARY, part, sizeof(part));
        cframe(&b, 1, NB_WS_OP_CONT, part, sizeof(part));
    }
    got = run(NB_WS_ROLE_SERVER, 1024, b.p, b.len);
    NB_CHECK_STR(got, "E1009:message too big");
    free(got);
    /* control frame over 125 bytes (built by hand: the writer refuses it) */
    {
        uint8_t f[4 + 4 + 126] = {0x89, 0xfe, 0x00, 0x7e};
        got = run(NB_WS_ROLE_SERVER, 1024, f, sizeof(f));
        NB_CHECK_STR(got, "E1002:control frame over 125 bytes");
        free(got);
    }
    /* a client refuses masked server frames */
    got = run(NB_WS_ROLE_CLIENT, 1024, (const uint8_t *)"\x81\x80\0\0\0\0", 6);
    NB_CHECK_STR(got, "E1002:masked server frame");
    free(got);
    nb_buf_free(&b);
}

static void test_writer(void)
{
    nb_buf_t b;
    nb_ws_parser_t *p;

    nb_buf_init(&b, 1024);
    NB_CHECK_EQ_INT(nb_ws_frame_append(&b, NB_WS_OP_PING, "x", 126, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_frame_append_ex(&b, 0, NB_WS_OP_PING, "x", 1, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_close_frame_append(&b, 1005, NULL), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ws_close_frame_append(&b, 1000, "bye"), 0);
    NB_CHECK_EQ_INT(b.len, 7);
    NB_CHECK(memcmp(b.p,
                    "\x88\x05\x03\xe8"
                    "bye",
                    7) == 0);
    /* long reasons are cut on a character boundary and stay <= 125 */
    nb_buf_reset(&b);
    {
        char reason[201];
        for (int i = 0; i < 100; i++)
            memcpy(reason + 2 * i, "\xc3\xa9", 2);
        reason[200] = '\0';
        NB_CHECK_EQ_INT(nb_ws_close_frame_append(&b, 1001, reason), 0);
        NB_CHECK(b.p[1] <= 125);
        NB_CHECK(nb_utf8_valid(b.p + 4, b.p[1] - 2));
    }
    nb_buf_free(&b);
    NB_CHECK(nb_ws_close_code_sendable(1000) && nb_ws_close_code_sendable(4999));
    NB_CHECK(!nb_ws_close_code_sendable(1005) && !nb_ws_close_code_sendable(1006));
    NB_CHECK_EQ_INT(nb_ws_parser_new(NB_WS_ROLE_SERVER, 0, NULL, NULL, &p), NB_EINVAL);
    NB_CHECK(p == NULL);
    nb_ws_parser_free(NULL);
}

int main(void)
{
    NB_RUN(test_handshake);
    NB_RUN(test_utf8);
    NB_RUN(test_frames);
    NB_RUN(test_errors);
    NB_RUN(test_writer);
    NB_TEST_MAIN_END();
}
