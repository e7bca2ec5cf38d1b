/* Unit tests for src/daemon/egress/proxy_auth (the Proxy-Authorization
 * check of proxy listeners, THREATS.md A26). */
#include <sodium.h>
#include <string.h>

#include "daemon/egress/proxy_auth.h"
#include "nbtest.h"

static const char TOKEN[] = "0123456789abcdef0123456789abcdef";

static int check(const char *value)
{
    return nb_proxy_auth_check((const uint8_t *)TOKEN, strlen(TOKEN), (const uint8_t *)value,
                               strlen(value));
}

static const char *basic(const char *cred)
{
    static char out[512];
    char b64[400];
    sodium_bin2base64(b64, sizeof b64, (const unsigned char *)cred, strlen(cred),
                      sodium_base64_VARIANT_ORIGINAL);
    snprintf(out, sizeof out, "Basic %s", b64);
    return out;
}

static void test_accepts(void)
{
    char v[600];
    NB_CHECK_EQ_INT(check(basic("nilbox:0123456789abcdef0123456789abcdef")), 1);
    NB_CHECK_EQ_INT(check(basic("anyone:0123456789abcdef0123456789abcdef")), 1);
    NB_CHECK_EQ_INT(check(basic(":0123456789abcdef0123456789abcdef")), 1); /* empty user */
    snprintf(v, sizeof v, "  bAsIc \t%s  ", basic("x:0123456789abcdef0123456789abcdef") + 6);
    NB_CHECK_EQ_INT(check(v), 1);
    NB_CHECK_EQ_INT(check("Bearer 0123456789abcdef0123456789abcdef"), 1);
    NB_CHECK_EQ_INT(check("bearer   0123456789abcdef0123456789abcdef "), 1);
}

static void test_refuses(void)
{
    const char *bad[] = {
        "",
        "Basic",
        "Basic ",
        "Bearer",
        "Bearer 0123456789abcdef0123456789abcdeF",  /* case matters in the token */
        "Bearer 0123456789abcdef0123456789abcde",   /* prefix */
        "Bearer 0123456789abcdef0123456789abcdef0", /* longer */
        "Digest 0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef",
        "Basic %%%%",
        "Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", /* the token, no "user:" */
        ("BasicX "
         "bmlsYm94OjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm"), /* no such scheme */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        NB_CHECK_EQ_INT(check(bad[i]), 0);
    NB_CHECK_EQ_INT(check(basic("nilbox:0123456789abcdef0123456789abcdeg")), 0);
    NB_CHECK_EQ_INT(check(basic("0123456789abcdef0123456789abcdef:x")), 0); /* token as user */
    NB_CHECK_EQ_INT(check(basic("nilbox:0123456789abcdef0123456789abcdef:")), 0);
    /* An oversized credential is not decoded at all. */
    char big[2 * NB_PROXY_AUTH_MAX_B64];
    memset(big, 'A', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char v[sizeof big + 8];
    snprintf(v, sizeof v, "Basic %s", big);
    NB_CHECK_EQ_INT(check(v), 0);
    /* No token never matches. */
    NB_CHECK_EQ_INT(nb_proxy_auth_check((const uint8_t *)"", 0, (const uint8_t *)"Bearer ", 7), 0);
    NB_CHECK_EQ_INT(nb_proxy_auth_check((const uint8_t *)"", 0, (const uint8_t *)"Basic Og==", 10),
                    0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    NB_RUN(test_accepts);
    NB_RUN(test_refuses);
    NB_TEST_MAIN_END();
}
