/* libFuzzer target for the script-facing side of scripted OAuth
 * (src/daemon/egress/oauth.c): token responses handed to provider
 * scripts (JSON to Lua tables, form bodies to tables), the token request
 * rewrite (form and JSON bodies) and the placeholder replacement.
 *
 * Input: the first byte picks the path; the rest is the body.
 * Checks: never reads past `size` (ASan); the sandbox always returns
 * (budget, memory cap); tokens a parse yields are non-empty printable
 * ASCII of at most NB_OAUTH_TOKEN_MAX bytes; a rewritten request never
 * keeps a slot placeholder that sat whole in a declared field's value
 * (form bodies); the replacement stays within its buffer caps. */
#include <assert.h>
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "daemon/egress/oauth.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The standard reader, and one that walks every value it is given. */
static const char std_src[] = "return { token_url = 'https://auth.test/token', secrets = { "
                              "client_secret = 'client_secret', refresh_token = 'refresh_token' "
                              "} }";
static const char walk_src[] =
    "local function walk(v, d) if d > 20 then return 0 end local n = 0 "
    "if type(v) == 'table' then for k, x in pairs(v) do n = n + 1 + walk(x, d + 1) end end "
    "return n end "
    "return { token_url = 'https://auth.test/token', request = 'json', "
    "secrets = { client_secret = 'client_secret' }, "
    "parse = function(r, ctx) walk(r, 0) if type(r) ~= 'table' then return nil end "
    "local t = r.access_token if type(t) ~= 'string' then return nil end "
    "return { access_token = t, refresh_token = r.refresh_token, expires_in = "
    "tonumber(r.expires_in) } end }";

static int get_value(void *ctx, int slot, uint8_t *buf, size_t cap, size_t *len)
{
    (void)ctx;
    const char *v = slot == NB_OAUTH_SLOT_CLIENT_SECRET ? "real&secret=/+" : "REAL_RT";
    size_t n = strlen(v);
    if (n > cap)
        return NB_ETOOBIG;
    memcpy(buf, v, n);
    *len = n;
    return 0;
}

static void check_tokens(const nb_oauth_tokens_t *t)
{
    assert(t->access && t->access_len > 0 && t->access_len <= NB_OAUTH_TOKEN_MAX);
    for (size_t i = 0; i < t->access_len; i++)
        assert(t->access[i] > 0x20 && t->access[i] < 0x7f);
    for (size_t i = 0; t->refresh && i < t->refresh_len; i++)
        assert(t->refresh[i] > 0x20 && t->refresh[i] < 0x7f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        if (sodium_init() < 0)
            return 0;
        init = 1;
    }
    if (size < 1)
        return 0;
    uint8_t mode = data[0] % 5;
    nb_iov_t body = nb_iov(data + 1, size - 1);
    nb_oauth_limits_t lim;
    nb_oauth_limits_default(&lim);
    lim.steps_max = 200000;
    lim.timeout_ms = 1000;
    lim.quiet = 1;
    char err[300];
    nb_oauth_tokens_t t;
    if (mode <= 1) {
        const char *src = mode ? walk_src : std_src;
        const char *ct =
            (data[0] & 0x80) ? "application/x-www-form-urlencoded" : "application/json";
        int r = nb_oauth_parse(src, strlen(src), "fuzz", &lim, 200, body, nb_iov(ct, strlen(ct)),
                               &t, err, sizeof err);
        if (r == 0) {
            check_tokens(&t);
            nb_oauth_tokens_free(&t);
        }
        return 0;
    }
    nb_buf_t out;
    nb_buf_init(&out, 4 * NB_OAUTH_BODY_MAX);
    if (mode <= 3) {
        nb_oauth_decl_t d;
        const char *src = mode == 2 ? std_src : walk_src;
        int r = nb_oauth_declare(src, strlen(src), "fuzz", &lim, &d, err, sizeof err);
        assert(r == 0);
        const char *ph[NB_OAUTH_SLOT_N] = {"F_CLIENT_SECRET", "F_REFRESH_TOKEN"};
        int n = 0;
        r = nb_oauth_rewrite_request(&d, ph, body, get_value, NULL, &out, &n);
        if (r == 0 && mode == 2) {
            /* "client_secret=F_CLIENT_SECRET" as a whole field never survives */
            static const char f[] = "client_secret=F_CLIENT_SECRET";
            for (size_t i = 0; out.len >= sizeof f - 1 && i + sizeof f - 1 <= out.len; i++) {
                if (memcmp(out.p + i, f, sizeof f - 1) != 0)
                    continue;
                size_t e = i + sizeof f - 1;
                assert(!((i == 0 || out.p[i - 1] == '&') && (e == out.len || out.p[e] == '&')));
            }
        }
        nb_buf_free(&out);
        return 0;
    }
    /* replace: needles are the first bytes of the body itself */
    size_t nl = body.len > 8 ? 1 + body.p[0] % 8 : 0;
    if (nl && nl < body.len) {
        nb_iov_t nd[2] = {nb_iov(body.p + 1, nl), nb_iov("ab", 2)};
        const char *rp[2] = {"", ""};
        nb_iov_t rest = nb_iov(body.p + 1 + nl, body.len - 1 - nl);
        if (nb_oauth_replace(rest, nd, rp, 2, &out) == 0)
            assert(out.len <= rest.len); /* empty replacements only shrink */
    }
    nb_buf_free(&out);
    return 0;
}
