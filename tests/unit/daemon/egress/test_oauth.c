/* Unit tests for src/daemon/egress/oauth.c: the provider script sandbox
 * (no io/os/require/debug/bytecode, memory cap, instruction budget,
 * timeout), declarations, parse() on JSON and form answers, and the
 * token request rewrite. */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/oauth.h"
#include "lib/err.h"
#include "nbtest.h"

#define HEAD                                                                                       \
    "return { token_url = 'https://auth.test/token', secrets = { client_secret = "                 \
    "'client_secret', refresh_token = 'refresh_token' }, api_hosts = {'api.test'}, "

static int decl(const char *src, nb_oauth_decl_t *d, char *err, size_t n)
{
    return nb_oauth_declare(src, strlen(src), "t", NULL, d, err, n);
}

static int parse(const char *src, const char *body, const char *ct, nb_oauth_tokens_t *t, char *err,
                 size_t n)
{
    nb_oauth_limits_t l;
    nb_oauth_limits_default(&l);
    l.timeout_ms = 2000; /* the budget, not the clock, must stop loops here */
    return nb_oauth_parse(src, strlen(src), "t", &l, 200, nb_iov(body, strlen(body)),
                          nb_iov(ct, strlen(ct)), t, err, n);
}

static void test_declare(void)
{
    nb_oauth_decl_t d;
    char err[300];
    NB_CHECK_EQ_INT(decl(HEAD "api_header = 'x-token: {secret}' }", &d, err, sizeof err), 0);
    NB_CHECK_STR(d.token_host, "auth.test");
    NB_CHECK(d.token_port == 443);
    NB_CHECK_STR(d.token_path, "/token");
    NB_CHECK(d.nfields == 2 && d.napi == 1 && !d.request_json && !d.has_parse);
    NB_CHECK_STR(d.api_header, "x-token: {secret}");
    NB_CHECK_EQ_INT(
        decl("return { token_url = 'https://A.test:8443/o/t?x=1' }", &d, err, sizeof err), 0);
    NB_CHECK(d.token_port == 8443);
    NB_CHECK_STR(d.token_host, "a.test");
    NB_CHECK_STR(d.token_path, "/o/t");
    NB_CHECK_STR(d.api_header, "Authorization: Bearer {secret}");
    /* refused declarations, each with the script's name in the sentence */
    const char *bad[] = {
        "return { token_url = 'http://auth.test/token' }",
        "return { token_url = 'https://auth.test/t', secrets = { client_secret = 'OTHER' } }",
        "return { token_url = 'https://auth.test/t', request = 'xml' }",
        "return { token_url = 'https://auth.test/t', parse = 3 }",
        "return 42",
        "this is not lua",
        "\x1bLua bytecode",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        NB_CHECK(decl(bad[i], &d, err, sizeof err) < 0);
        NB_CHECK(strstr(err, "oauth script t") != NULL);
    }
}

static void test_sandbox(void)
{
    nb_oauth_decl_t d;
    char err[300];
    /* Nothing of io, os, require, debug, dofile, loadfile, pcall, patterns,
     * string.dump; load takes text only. */
    const char *probe =
        "assert(io == nil and os == nil and require == nil and debug == nil and dofile == nil "
        "and loadfile == nil and pcall == nil and xpcall == nil and coroutine == nil and package "
        "== nil and collectgarbage == nil)\n"
        "assert(string.find == nil and string.gsub == nil and string.match == nil and "
        "string.gmatch == nil and string.dump == nil and ('x').find == nil)\n"
        "assert(load('return 1')() == 1)\n"
        "local f, e = load('\\27Lua')\n assert(f == nil)\n"
        "return { token_url = 'https://auth.test/token' }";
    NB_CHECK_EQ_INT(decl(probe, &d, err, sizeof err), 0);
    if (err[0])
        fprintf(stderr, "%s\n", err);
    /* an endless loop: the instruction budget */
    NB_CHECK_EQ_INT(decl("while true do end", &d, err, sizeof err), NB_ETIMEOUT);
    NB_CHECK(strstr(err, "instruction budget") != NULL);
    /* an error caught and retried: nothing can catch the budget (no pcall) */
    NB_CHECK(decl("while true do local ok = load('while true do end') ok() end", &d, err,
                  sizeof err) == NB_ETIMEOUT);
    /* unbounded allocation: the memory cap */
    NB_CHECK_EQ_INT(decl("local t = {} local s = 'x' while true do s = s .. s t[#t + 1] = s end",
                         &d, err, sizeof err),
                    -ENOMEM);
    NB_CHECK(strstr(err, "memory") != NULL);
    NB_CHECK_EQ_INT(decl("local t = {} for i = 1, 1e9 do t[i] = i end", &d, err, sizeof err),
                    -ENOMEM);
    NB_CHECK_EQ_INT(decl("return string.rep('x', 1 << 26)", &d, err, sizeof err), -ENOMEM);
    /* a wall-clock timeout with a huge budget */
    nb_oauth_limits_t l;
    nb_oauth_limits_default(&l);
    l.steps_max = UINT64_MAX / 2;
    l.timeout_ms = 50;
    const char *loop = "while true do end";
    NB_CHECK_EQ_INT(nb_oauth_declare(loop, strlen(loop), "t", &l, &d, err, sizeof err),
                    NB_ETIMEOUT);
    NB_CHECK(strstr(err, "timed out") != NULL);
    /* nothing survives between calls (fresh state each time) */
    const char *set = "leak = 'x' return { token_url = 'https://auth.test/token' }";
    const char *get = "assert(leak == nil) return { token_url = 'https://auth.test/token' }";
    NB_CHECK_EQ_INT(decl(set, &d, err, sizeof err), 0);
    NB_CHECK_EQ_INT(decl(get, &d, err, sizeof err), 0);
}

static void test_parse(void)
{
    nb_oauth_tokens_t t;
    char err[300];
    const char *std = HEAD "}";
    NB_CHECK_EQ_INT(parse(std,
                          "{\"access_token\":\"AT1\",\"refresh_token\":\"RT1\",\"expires_in\":60}",
                          "application/json", &t, err, sizeof err),
                    0);
    NB_CHECK(t.access_len == 3 && memcmp(t.access, "AT1", 3) == 0);
    NB_CHECK(t.refresh_len == 3 && memcmp(t.refresh, "RT1", 3) == 0);
    NB_CHECK(t.expires_in == 60);
    nb_oauth_tokens_free(&t);
    /* GitHub's form answer */
    NB_CHECK_EQ_INT(parse(std, "access_token=gho_x%2Fy&scope=&token_type=bearer",
                          "application/x-www-form-urlencoded; charset=utf-8", &t, err, sizeof err),
                    0);
    NB_CHECK(t.access_len == 7 && memcmp(t.access, "gho_x/y", 7) == 0 && !t.refresh);
    NB_CHECK(t.expires_in == -1);
    nb_oauth_tokens_free(&t);
    /* an error answer: no token */
    NB_CHECK_EQ_INT(
        parse(std, "{\"error\":\"invalid_grant\"}", "application/json", &t, err, sizeof err), 1);
    /* a custom parse reading nested JSON */
    const char *nested = HEAD "parse = function(r, ctx) return { access_token = r.data.tok, "
                              "expires_in = ctx.status } end }";
    NB_CHECK_EQ_INT(
        parse(nested, "{\"data\":{\"tok\":\"N\"}}", "application/json", &t, err, sizeof err), 0);
    NB_CHECK(t.access_len == 1 && t.expires_in == 200);
    nb_oauth_tokens_free(&t);
    /* parse failures: loop, allocation, error, bad token */
    NB_CHECK_EQ_INT(
        parse(HEAD "parse = function() while true do end end }", "{}", "", &t, err, sizeof err),
        NB_ETIMEOUT);
    NB_CHECK_EQ_INT(parse(HEAD "parse = function() local s = 'x' while true do s = s .. s end "
                               "end }",
                          "{}", "", &t, err, sizeof err),
                    -ENOMEM);
    NB_CHECK_EQ_INT(parse(HEAD "parse = function() return { access_token = 'a b' } end }", "{}", "",
                          &t, err, sizeof err),
                    NB_EINVAL);
    /* quiet errors never quote what the script said (it may hold a token) */
    nb_oauth_limits_t l;
    nb_oauth_limits_default(&l);
    l.quiet = 1;
    const char *leak = HEAD "parse = function(r) error('token is ' .. r.access_token) end }";
    const char *body = "{\"access_token\":\"SECRET-AT\"}";
    NB_CHECK_EQ_INT(nb_oauth_parse(leak, strlen(leak), "t", &l, 200, nb_iov(body, strlen(body)),
                                   nb_iov("", 0), &t, err, sizeof err),
                    NB_EINVAL);
    NB_CHECK(strstr(err, "SECRET-AT") == NULL && strstr(err, "runtime error at t:1") != NULL);
    /* deep nesting is refused, not recursed into */
    char deep[400];
    size_t k = 0;
    for (int i = 0; i < 20; i++) {
        memcpy(deep + k, "{\"a\":", 5);
        k += 5;
    }
    deep[k++] = '1';
    for (int i = 0; i < 20; i++)
        deep[k++] = '}';
    deep[k] = '\0';
    NB_CHECK(parse(std, deep, "application/json", &t, err, sizeof err) < 0);
}

static int get_value(void *ctx, int slot, uint8_t *buf, size_t cap, size_t *len)
{
    (void)ctx;
    const char *v = slot == NB_OAUTH_SLOT_CLIENT_SECRET ? "s3cr&t =/+" : "RT-real";
    if (strlen(v) > cap)
        return NB_ETOOBIG;
    memcpy(buf, v, strlen(v));
    *len = strlen(v);
    return 0;
}

static void test_rewrite(void)
{
    nb_oauth_decl_t d;
    char err[300];
    NB_CHECK_EQ_INT(decl(HEAD "}", &d, err, sizeof err), 0);
    const char *ph[NB_OAUTH_SLOT_N] = {"X_CLIENT_SECRET", "X_REFRESH_TOKEN"};
    nb_buf_t out;
    nb_buf_init(&out, 65536);
    int n = 0;
    const char *body = "grant_type=refresh_token&client_id=cid&client_secret=X_CLIENT_SECRET&"
                       "refresh_token=X_REFRESH_TOKEN&state=X_CLIENT_SECRET";
    NB_CHECK_EQ_INT(
        nb_oauth_rewrite_request(&d, ph, nb_iov(body, strlen(body)), get_value, NULL, &out, &n), 0);
    NB_CHECK(n == 2);
    const char *want = "grant_type=refresh_token&client_id=cid&client_secret=s3cr%26t%20%3D%2F%2B&"
                       "refresh_token=RT-real&state=X_CLIENT_SECRET";
    NB_CHECK(out.len == strlen(want) && memcmp(out.p, want, out.len) == 0);
    /* another binding's placeholder is left alone */
    body = "client_secret=Y_CLIENT_SECRET";
    NB_CHECK_EQ_INT(
        nb_oauth_rewrite_request(&d, ph, nb_iov(body, strlen(body)), get_value, NULL, &out, &n), 0);
    NB_CHECK(n == 0 && out.len == strlen(body));
    /* JSON bodies */
    NB_CHECK_EQ_INT(decl(HEAD "request = 'json' }", &d, err, sizeof err), 0);
    body = "{\"client_secret\":\"X_CLIENT_SECRET\",\"n\":1}";
    NB_CHECK_EQ_INT(
        nb_oauth_rewrite_request(&d, ph, nb_iov(body, strlen(body)), get_value, NULL, &out, &n), 0);
    NB_CHECK(n == 1 && memmem(out.p, out.len, "s3cr&t =\\/+", 11) == NULL &&
             memmem(out.p, out.len, "s3cr&t =/+", 10) != NULL);
    body = "[1]";
    NB_CHECK_EQ_INT(
        nb_oauth_rewrite_request(&d, ph, nb_iov(body, strlen(body)), get_value, NULL, &out, &n),
        NB_EINVAL);
    nb_buf_free(&out);
}

static void test_replace(void)
{
    nb_buf_t out;
    nb_buf_init(&out, 4096);
    nb_iov_t nd[2] = {nb_iov("abc", 3), nb_iov("abcd", 4)};
    const char *rp[2] = {"S", "L"};
    const char *in = "xabcdyabcz";
    NB_CHECK_EQ_INT(nb_oauth_replace(nb_iov(in, strlen(in)), nd, rp, 2, &out), 0);
    NB_CHECK(out.len == 5 && memcmp(out.p, "xLySz", 5) == 0);
    nb_buf_free(&out);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    NB_RUN(test_declare);
    NB_RUN(test_sandbox);
    NB_RUN(test_parse);
    NB_RUN(test_rewrite);
    NB_RUN(test_replace);
    NB_TEST_MAIN_END();
}
