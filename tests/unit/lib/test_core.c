/* Unit tests for src/lib: err, log, buf, env, json. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "nbtest.h"

static void test_err(void)
{
    NB_CHECK_STR(nb_errname(NB_EPROTO), "NB_EPROTO");
    NB_CHECK_STR(nb_strerror(NB_ETOOBIG), "input exceeds its size cap");
    NB_CHECK_STR(nb_errname(-ENOENT), "ENOENT");
    NB_CHECK(strlen(nb_strerror(-EACCES)) > 0);
    NB_CHECK_STR(nb_strerror(0), "success");
    NB_CHECK_STR(nb_errname(-99999), "EUNKNOWN");
}

static void test_buf_cap(void)
{
    nb_buf_t b;
    nb_buf_init(&b, 10);
    NB_CHECK_EQ_INT(nb_buf_append(&b, "12345", 5), 0);
    NB_CHECK_EQ_INT(nb_buf_append(&b, "678901", 6), NB_ETOOBIG);
    NB_CHECK_EQ_INT(b.len, 5); /* unchanged on failure */
    NB_CHECK_EQ_INT(nb_buf_append(&b, "67890", 5), 0);
    NB_CHECK_STR(nb_buf_cstr(&b), "1234567890");
    nb_buf_consume(&b, 3);
    NB_CHECK_STR(nb_buf_cstr(&b), "4567890");
    NB_CHECK_EQ_INT(nb_buf_printf(&b, "%d", 123), 0);
    NB_CHECK_EQ_INT(nb_buf_printf(&b, "%d", 4567), NB_ETOOBIG);
    NB_CHECK_STR(nb_buf_cstr(&b), "4567890123");
    nb_buf_wipe_free(&b);
    NB_CHECK(b.p == NULL && b.len == 0);

    nb_buf_init(&b, SIZE_MAX);
    NB_CHECK_EQ_INT(nb_buf_append_str(&b, "x"), 0);
    NB_CHECK_EQ_INT(nb_buf_reserve(&b, SIZE_MAX), NB_ETOOBIG);
    nb_buf_free(&b);
    nb_buf_free(&b); /* free twice is a no-op */
}

/* Bytes a buffer drops hold nothing afterwards (only [0, len) is wiped on
 * grow and free, so this invariant is what keeps those wipes complete). */
static void test_buf_wipe(void)
{
    static const uint8_t zero[16];
    nb_buf_t b;
    nb_buf_init(&b, 1024);
    NB_CHECK_EQ_INT(nb_buf_append(&b,
                                  "\0se\xff"
                                  "ret-value-xx",
                                  16),
                    0);
    nb_buf_consume(&b, 4);
    NB_CHECK_EQ_INT(b.len, 12);
    NB_CHECK(memcmp(b.p, "ret-value-xx", 12) == 0 && memcmp(b.p + 12, zero, 4) == 0);
    nb_buf_truncate(&b, 3);
    NB_CHECK(b.len == 3 && memcmp(b.p + 3, zero, 9) == 0);
    nb_buf_truncate(&b, 5); /* never grows */
    NB_CHECK_EQ_INT(b.len, 3);
    uint8_t *old = b.p;
    NB_CHECK_EQ_INT(nb_buf_append(&b, zero, 16), 0);
    NB_CHECK_EQ_INT(nb_buf_reserve(&b, 200), 0); /* grows: a new block, the bytes copied */
    NB_CHECK(b.p != old && memcmp(b.p, "ret", 3) == 0 && b.len == 19);
    nb_buf_reset(&b);
    NB_CHECK(b.len == 0 && memcmp(b.p, zero, 16) == 0);
    nb_buf_free(&b);
}

static void test_iov(void)
{
    NB_CHECK(nb_iov_eq(NB_IOV_STR("abc"), "abc"));
    NB_CHECK(!nb_iov_eq(NB_IOV_STR("abc"), "abcd"));
    NB_CHECK(nb_iov_eq_nocase(NB_IOV_STR("Content-LENGTH"), "content-length"));
    NB_CHECK(!nb_iov_eq_nocase(NB_IOV_STR("Host"), "hosts"));
    /* Every byte pair: equal exactly when equal after folding A-Z, so
     * bytes one bit 0x20 apart that are not letters ('[' and '{', '@'
     * and '`', CR and '-') never match. */
    for (unsigned x = 1; x < 256; x++) {
        for (unsigned y = 1; y < 256; y++) {
            unsigned lx = x >= 'A' && x <= 'Z' ? x + 32 : x, ly = y >= 'A' && y <= 'Z' ? y + 32 : y;
            char a[3] = {'k', (char)x, 0}, b[3] = {'K', (char)y, 0};
            if (nb_iov_eq_nocase(nb_iov(a, 2), b) != (lx == ly)) {
                NB_CHECK(!"nb_iov_eq_nocase disagrees with folding");
                return;
            }
        }
    }
}

static void test_log_escape(void)
{
    char out[32];
    NB_CHECK_STR(nb_log_escape(out, sizeof out, "a\x1b]52;c\n", 8), "a\\x1b]52;c\\x0a");
    NB_CHECK_STR(nb_log_escape(out, 8, "abcdefghijkl", 12), "abcd...");
    nb_log_escape(out, sizeof out, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 44);
    NB_CHECK(strlen(out) < sizeof out);
    NB_CHECK(strstr(out, "...") != NULL);
    NB_CHECK(nb_log_next_conn_id() != nb_log_next_conn_id());
}

static void test_json(void)
{
    json_t *j = NULL;
    char err[128];
    NB_CHECK_EQ_INT(
        nb_json_parse(NB_IOV_STR("{\"a\":\"x\",\"n\":3,\"b\":true}"), &j, err, sizeof err), 0);
    NB_CHECK_STR(nb_json_str(j, "a"), "x");
    NB_CHECK_EQ_INT(nb_json_int(j, "n", -1), 3);
    NB_CHECK_EQ_INT(nb_json_int(j, "a", -1), -1);
    NB_CHECK_EQ_INT(nb_json_bool(j, "b", 0), 1);
    nb_buf_t b;
    nb_buf_init(&b, 1024);
    NB_CHECK_EQ_INT(nb_json_dump(j, &b), 0);
    NB_CHECK(b.len > 10);
    nb_buf_free(&b);
    nb_buf_init(&b, 4);
    NB_CHECK(nb_json_dump(j, &b) < 0);
    NB_CHECK_EQ_INT(b.len, 0);
    nb_buf_free(&b);
    json_decref(j);

    NB_CHECK_EQ_INT(nb_json_parse(NB_IOV_STR("{\"a\":1,\"a\":2}"), &j, err, sizeof err), NB_EPARSE);
    NB_CHECK(j == NULL);
    NB_CHECK_EQ_INT(nb_json_parse(NB_IOV_STR("{\"a\":"), &j, err, sizeof err), NB_EPARSE);
    NB_CHECK(strstr(err, "invalid JSON") != NULL);
    NB_CHECK_EQ_INT(nb_json_parse(NB_IOV_STR("\"a\\u0000b\""), &j, NULL, 0), NB_EPARSE);
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    NB_CHECK_EQ_INT(nb_json_parse(nb_iov(deep, sizeof deep), &j, err, sizeof err), NB_EPARSE);
}

static void test_str_hex_env(void)
{
    char d[4];
    nb_str_copy(d, sizeof d, "abcdef");
    NB_CHECK_STR(d, "abc");
    nb_str_copy(d, sizeof d, "");
    NB_CHECK_STR(d, "");
    NB_CHECK_EQ_INT(nb_hexval('0'), 0);
    NB_CHECK_EQ_INT(nb_hexval('f'), 15);
    NB_CHECK_EQ_INT(nb_hexval('F'), 15);
    NB_CHECK_EQ_INT(nb_hexval('g'), -1);
    NB_CHECK_EQ_INT(nb_hexval((char)0xc6), -1);
    NB_CHECK_EQ_INT(nb_env_value("X", NULL, 1, 9, 5), 5);
    NB_CHECK_EQ_INT(nb_env_value("X", "", 1, 9, 5), 5);
    NB_CHECK_EQ_INT(nb_env_value("X", "9", 1, 9, 5), 9);
    NB_CHECK_EQ_INT(nb_env_value("X", "10", 1, 9, 5), 5);
    NB_CHECK_EQ_INT(nb_env_value("X", "3x", 1, 9, 5), 5);
}

int main(void)
{
    NB_RUN(test_err);
    NB_RUN(test_buf_cap);
    NB_RUN(test_buf_wipe);
    NB_RUN(test_iov);
    NB_RUN(test_log_escape);
    NB_RUN(test_json);
    NB_RUN(test_str_hex_env);
    NB_TEST_MAIN_END();
}
