/* Unit tests for src/daemon/egress/proxy_url (CONNECT authority,
 * absolute-form URLs, the Host == destination check behind A1) and the
 * test-only resolve override syntax. */
#include <stdlib.h>
#include <sys/socket.h>

#include "daemon/egress/proxy.h"
#include "daemon/egress/proxy_url.h"
#include "lib/err.h"
#include "nbtest.h"

static int auth(const char *s, uint16_t def, nb_pxurl_authority_t *a)
{
    return nb_pxurl_authority((const uint8_t *)s, strlen(s), def, a);
}

static void test_authority(void)
{
    nb_pxurl_authority_t a;
    NB_CHECK_EQ_INT(auth("API.Example.COM:443", 0, &a), 0);
    NB_CHECK_STR(a.host, "api.example.com");
    NB_CHECK(a.port == 443 && a.has_port && !a.is_ip);
    NB_CHECK_EQ_INT(auth("example.com.:8080", 0, &a), 0);
    NB_CHECK_STR(a.host, "example.com");
    NB_CHECK_EQ_INT(auth("10.1.2.3:22", 0, &a), 0);
    NB_CHECK(a.is_ip && a.ip.family == AF_INET && a.port == 22);
    NB_CHECK_STR(a.host, "10.1.2.3");
    NB_CHECK_EQ_INT(auth("[2001:DB8::1]:443", 0, &a), 0);
    NB_CHECK(a.is_ip && a.ip.family == AF_INET6);
    NB_CHECK_STR(a.host, "2001:db8::1");
    NB_CHECK_EQ_INT(auth("[::ffff:127.0.0.1]:80", 0, &a), 0);
    NB_CHECK(a.is_ip && a.ip.family == AF_INET); /* mapped: judged as the IPv4 address */
    NB_CHECK_STR(a.host, "127.0.0.1");
    /* defaults */
    NB_CHECK_EQ_INT(auth("example.com", 80, &a), 0);
    NB_CHECK(a.port == 80 && !a.has_port);
    NB_CHECK_EQ_INT(auth("example.com", 0, &a), NB_EPARSE); /* CONNECT needs a port */
    /* refused shapes */
    const char *bad[] = {"",
                         ":443",
                         "example.com:",
                         "example.com:0",
                         "example.com:65536",
                         "example.com:+443",
                         "example.com:44 3",
                         "example.com:123456",
                         "user@example.com:443",
                         "user:pw@example.com:443",
                         "::1:443",
                         "[::1",
                         "[::1]x",
                         "[::1]:",
                         "exa mple.com:443",
                         "example.com/x:443",
                         "exa%2fmple.com:443",
                         "example.com\\:443",
                         "a:b:c"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int r = auth(bad[i], 0, &a);
        NB_CHECK(r < 0);
        if (r >= 0)
            fprintf(stderr, "accepted: '%s'\n", bad[i]);
    }
    /* syntactically fine, but not a name (A12: numeric last label) */
    NB_CHECK_EQ_INT(auth("2130706433:80", 0, &a), NB_EINVAL);
    NB_CHECK_EQ_INT(auth("under_score.com:80", 0, &a), NB_EINVAL);
    NB_CHECK_EQ_INT(auth("[not-an-ip]:80", 0, &a), NB_EINVAL);
    /* NUL inside the slice */
    NB_CHECK(nb_pxurl_authority((const uint8_t *)"a\0b.com:80", 10, 0, &a) < 0);
    /* length cap */
    char big[400];
    memset(big, 'a', sizeof big);
    NB_CHECK(nb_pxurl_authority((const uint8_t *)big, sizeof big, 80, &a) < 0);
}

static void test_absolute(void)
{
    nb_pxurl_abs_t u;
    const char *s = "http://API.test:8080/v1/x?y=1";
    NB_CHECK_EQ_INT(nb_pxurl_absolute((const uint8_t *)s, strlen(s), &u), 0);
    NB_CHECK(!u.https && u.auth.port == 8080);
    NB_CHECK_STR(u.auth.host, "api.test");
    NB_CHECK(u.origin.len == 9 && memcmp(u.origin.p, "/v1/x?y=1", 9) == 0);
    s = "HTTPS://api.test";
    NB_CHECK_EQ_INT(nb_pxurl_absolute((const uint8_t *)s, strlen(s), &u), 0);
    NB_CHECK(u.https && u.auth.port == 443 && u.origin.len == 0);
    s = "http://api.test?q";
    NB_CHECK_EQ_INT(nb_pxurl_absolute((const uint8_t *)s, strlen(s), &u), 0);
    NB_CHECK(u.auth.port == 80 && u.origin.len == 2 && u.origin.p[0] == '?');
    s = "ftp://api.test/";
    NB_CHECK_EQ_INT(nb_pxurl_absolute((const uint8_t *)s, strlen(s), &u), NB_EUNSUPPORTED);
    const char *bad[] = {
        "/origin/form",          "http://",           "http:///x",          "http://u@api.test/",
        "http://api.test/#frag", "http://api.test#f", "http://api.test/ x", "http://api.test:0/",
        "http://[::1/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int r = nb_pxurl_absolute((const uint8_t *)bad[i], strlen(bad[i]), &u);
        NB_CHECK(r < 0);
        if (r >= 0)
            fprintf(stderr, "accepted: '%s'\n", bad[i]);
    }
}

static int host_ok(const char *v, const char *host, uint16_t port)
{
    return nb_pxurl_host_matches(nb_iov(v, strlen(v)), host, port);
}

static void test_host_matches(void)
{
    NB_CHECK(host_ok("api.test", "api.test", 443));
    NB_CHECK(host_ok("API.TEST.", "api.test", 443));
    NB_CHECK(host_ok("api.test:443", "api.test", 443));
    NB_CHECK(!host_ok("api.test:444", "api.test", 443));
    NB_CHECK(!host_ok("evil.test", "api.test", 443));
    NB_CHECK(!host_ok("api.test.evil.test", "api.test", 443));
    NB_CHECK(!host_ok("evil.test@api.test", "api.test", 443));
    NB_CHECK(!host_ok("api.test evil.test", "api.test", 443));
    NB_CHECK(!host_ok("", "api.test", 443));
    NB_CHECK(host_ok("[::1]:8080", "::1", 8080));
    NB_CHECK(host_ok("10.0.0.1", "10.0.0.1", 80));
}

static void test_resolve_spec(void)
{
    nb_proxy_resolve_t r;
    NB_CHECK_EQ_INT(nb_proxy_resolve_parse("api.test:127.0.0.1", &r), 0);
    NB_CHECK_STR(r.host, "api.test");
    NB_CHECK(r.port == 0 && r.to_port == 0 && r.addr.family == AF_INET);
    NB_CHECK_EQ_INT(nb_proxy_resolve_parse("API.test:443:127.0.0.1:8443", &r), 0);
    NB_CHECK(r.port == 443 && r.to_port == 8443);
    NB_CHECK_EQ_INT(nb_proxy_resolve_parse("v6.test:443:[::1]:8443", &r), 0);
    NB_CHECK(r.addr.family == AF_INET6 && r.to_port == 8443);
    NB_CHECK_EQ_INT(nb_proxy_resolve_parse("v6.test:fd00::1", &r), 0);
    NB_CHECK(r.addr.family == AF_INET6);
    NB_CHECK(nb_proxy_resolve_parse("api.test", &r) < 0);
    NB_CHECK(nb_proxy_resolve_parse("api.test:not-an-ip", &r) < 0);
    NB_CHECK(nb_proxy_resolve_parse("api.test:443:name.test:80", &r) < 0);
    NB_CHECK(nb_proxy_resolve_parse(":127.0.0.1", &r) < 0);
    NB_CHECK(nb_proxy_resolve_parse(NULL, &r) < 0);
}

int main(void)
{
    NB_RUN(test_authority);
    NB_RUN(test_absolute);
    NB_RUN(test_host_matches);
    NB_RUN(test_resolve_spec);
    NB_TEST_MAIN_END();
}
