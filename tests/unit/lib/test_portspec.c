/* Unit tests for src/lib/portspec.c (`nilbox port add`'s argument). */
#include <string.h>

#include "lib/err.h"
#include "lib/portspec.h"
#include "nbtest.h"

static int parse(const char *s, unsigned *h, unsigned *g)
{
    uint16_t a = 7, b = 7;
    int r = nb_portspec_parse(s, strlen(s), &a, &b);
    *h = a;
    *g = b;
    return r;
}

static void test_good(void)
{
    unsigned h, g;
    NB_CHECK_EQ_INT(parse("8080:3000", &h, &g), 0);
    NB_CHECK_EQ_INT(h, 8080);
    NB_CHECK_EQ_INT(g, 3000);
    NB_CHECK_EQ_INT(parse("8888", &h, &g), 0);
    NB_CHECK_EQ_INT(h, 8888);
    NB_CHECK_EQ_INT(g, 8888);
    NB_CHECK_EQ_INT(parse("1:65535", &h, &g), 0);
    NB_CHECK_EQ_INT(h, 1);
    NB_CHECK_EQ_INT(g, 65535);
}

static void test_bad(void)
{
    static const char *bad[] = {"",      ":",      "0",       "0:80",  "80:0",   "65536",
                                "80:",   ":80",    "1:2:3",   "-5:80", "+5:80",  "080:80",
                                " 80",   "80 ",    "80:80x",  "99999", "123456", "8o",
                                "80::1", "80/tcp", "0x50:80", "1e3:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned h, g;
        NB_CHECK_EQ_INT(parse(bad[i], &h, &g), NB_EINVAL);
        NB_CHECK_EQ_INT(h, 7); /* untouched */
        NB_CHECK_EQ_INT(g, 7);
    }
    /* Not NUL-terminated: only `len` bytes count. */
    uint16_t a, b;
    NB_CHECK_EQ_INT(nb_portspec_parse("80:8099", 5, &a, &b), 0);
    NB_CHECK_EQ_INT(b, 80);
    NB_CHECK_EQ_INT(nb_portspec_parse(NULL, 0, &a, &b), NB_EINVAL);
}

int main(void)
{
    NB_RUN(test_good);
    NB_RUN(test_bad);
    NB_TEST_MAIN_END();
}
