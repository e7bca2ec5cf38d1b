/* Unit tests for src/daemon/apiroute: decoding, query lookup, pattern
 * matching and Unix-socket Host sanity. */
#include <string.h>

#include "daemon/apiroute.h"
#include "lib/err.h"
#include "nbtest.h"

static void test_pct_decode(void)
{
    char out[16];
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("a%20b+c", 7, 1, out, sizeof out), 0);
    NB_CHECK_STR(out, "a b c");
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("a%20b+c", 7, 0, out, sizeof out), 0);
    NB_CHECK_STR(out, "a b+c");
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("%4a%4A", 6, 0, out, sizeof out), 0);
    NB_CHECK_STR(out, "JJ");
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("%00", 3, 0, out, sizeof out), NB_EPARSE);
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("%2", 2, 0, out, sizeof out), NB_EPARSE);
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("%zz", 3, 0, out, sizeof out), NB_EPARSE);
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("%", 1, 0, out, sizeof out), NB_EPARSE);
    /* Slices are not NUL-terminated: an escape may not read past len. */
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("%41", 2, 0, out, sizeof out), NB_EPARSE);
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("0123456789abcdef", 16, 0, out, sizeof out), NB_ETOOBIG);
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("0123456789abcde", 15, 0, out, sizeof out), 0);
    NB_CHECK_EQ_INT(nb_apiroute_pct_decode("", 0, 0, out, sizeof out), 0);
    NB_CHECK_STR(out, "");
}

static void test_query(void)
{
    char out[70];
    NB_CHECK_EQ_INT(nb_apiroute_query_get("since=5&token=ab%63", "token", out, sizeof out), 1);
    NB_CHECK_STR(out, "abc");
    NB_CHECK_EQ_INT(nb_apiroute_query_get("since=5&token=abc", "since", out, sizeof out), 1);
    NB_CHECK_STR(out, "5");
    NB_CHECK_EQ_INT(nb_apiroute_query_get("xtoken=1&token", "token", out, sizeof out), 1);
    NB_CHECK_STR(out, "");
    NB_CHECK_EQ_INT(nb_apiroute_query_get("tokens=1", "token", out, sizeof out), 0);
    NB_CHECK_EQ_INT(nb_apiroute_query_get("", "token", out, sizeof out), 0);
    NB_CHECK_EQ_INT(nb_apiroute_query_get(NULL, "token", out, sizeof out), 0);
    NB_CHECK_EQ_INT(nb_apiroute_query_get("a=1&&token=2", "token", out, sizeof out), 1);
    NB_CHECK_STR(out, "2");
    NB_CHECK_EQ_INT(nb_apiroute_query_get("token=1&token=2", "token", out, sizeof out), 1);
    NB_CHECK_STR(out, "1");
    NB_CHECK_EQ_INT(nb_apiroute_query_get("token=%00", "token", out, sizeof out), NB_EPARSE);
    char big[200];
    memset(big, 'a', sizeof big);
    memcpy(big, "token=", 6);
    big[sizeof big - 1] = '\0';
    NB_CHECK_EQ_INT(nb_apiroute_query_get(big, "token", out, sizeof out), NB_ETOOBIG);
}

static void test_match(void)
{
    nb_apiroute_params_t p;
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/status", "/v1/status", NULL), 1);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/status", "/v1/status/", NULL), 0);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/status", "/v1/statu", NULL), 0);
    NB_CHECK_EQ_INT(nb_apiroute_match("/", "/", NULL), 1);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}", "/v1/vms/", NULL), 0);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}", "/v1/vms/a/b", NULL), 0);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}/start", "/v1/vms/dev%20box/start", &p), 1);
    NB_CHECK_EQ_INT(p.n, 1);
    NB_CHECK_STR(nb_apiroute_param(&p, "name"), "dev box");
    NB_CHECK(nb_apiroute_param(&p, "nope") == NULL);
    nb_apiroute_params_free(&p);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/{a}/x/{b}", "/v1/1/x/2", &p), 1);
    NB_CHECK_STR(nb_apiroute_param(&p, "a"), "1");
    NB_CHECK_STR(nb_apiroute_param(&p, "b"), "2");
    nb_apiroute_params_free(&p);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}", "/v1/vms/a%2Fb", &p), NB_EPARSE);
    NB_CHECK_EQ_INT(p.n, 0);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}", "/v1/vms/%00", &p), NB_EPARSE);
    char longp[700] = "/v1/vms/";
    memset(longp + 8, 'a', 600);
    longp[608] = '\0';
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}", longp, NULL), 1);
    NB_CHECK_EQ_INT(nb_apiroute_match("/v1/vms/{name}", longp, &p), NB_ETOOBIG);
    nb_apiroute_params_free(&p);
    nb_apiroute_params_free(NULL);
}

static void test_unix_host(void)
{
    NB_CHECK(nb_apiroute_unix_host_ok("localhost"));
    NB_CHECK(nb_apiroute_unix_host_ok("LOCALHOST:80"));
    NB_CHECK(nb_apiroute_unix_host_ok("127.0.0.1"));
    NB_CHECK(nb_apiroute_unix_host_ok("[::1]:1234"));
    NB_CHECK(nb_apiroute_unix_host_ok("nilboxd"));
    NB_CHECK(!nb_apiroute_unix_host_ok("evil.example"));
    NB_CHECK(!nb_apiroute_unix_host_ok("localhost.evil.example"));
    NB_CHECK(!nb_apiroute_unix_host_ok("localhost:"));
    NB_CHECK(!nb_apiroute_unix_host_ok("localhost:80x"));
    NB_CHECK(!nb_apiroute_unix_host_ok("localhost:1234567"));
    NB_CHECK(!nb_apiroute_unix_host_ok("[::1"));
    NB_CHECK(!nb_apiroute_unix_host_ok("[::2]"));
    NB_CHECK(!nb_apiroute_unix_host_ok(""));
}

int main(void)
{
    NB_RUN(test_pct_decode);
    NB_RUN(test_query);
    NB_RUN(test_match);
    NB_RUN(test_unix_host);
    NB_TEST_MAIN_END();
}
