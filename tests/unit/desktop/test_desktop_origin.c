/* Unit tests for src/desktop/origin.c: the only origin nilbox-desktop's
 * web view shows is the daemon's; everything else goes to the browser
 * (http/https only) or nowhere. */
#include "desktop/origin.h"
#include "nbtest.h"

#define BASE "http://127.0.0.1:41234/"

static void test_same_origin(void)
{
    NB_CHECK(nb_desk_same_origin(BASE, "http://127.0.0.1:41234/"));
    NB_CHECK(nb_desk_same_origin(BASE, "http://127.0.0.1:41234/ui/app.js?x=1#token=abc"));
    NB_CHECK(nb_desk_same_origin(BASE, "HTTP://127.0.0.1:41234/x"));
    NB_CHECK(nb_desk_same_origin("http://127.0.0.1/", "http://127.0.0.1:80/"));
}

static void test_other_origins_refused(void)
{
    NB_CHECK(!nb_desk_same_origin(BASE, "http://127.0.0.1:41235/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://127.0.0.1/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "https://127.0.0.1:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://localhost:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://127.0.0.10:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://127.0.0.1.evil.test:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://127.0.0.1:41234@evil.test/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://user:pw@127.0.0.1:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "http://evil.test/#http://127.0.0.1:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "ws://127.0.0.1:41234/"));
    NB_CHECK(!nb_desk_same_origin(BASE, "file:///etc/passwd"));
    NB_CHECK(!nb_desk_same_origin(BASE, "javascript:alert(1)"));
    NB_CHECK(!nb_desk_same_origin(BASE, "data:text/html,<b>x</b>"));
    NB_CHECK(!nb_desk_same_origin(BASE, "about:blank"));
    NB_CHECK(!nb_desk_same_origin(BASE, ""));
    NB_CHECK(!nb_desk_same_origin(BASE, "not a url"));
    NB_CHECK(!nb_desk_same_origin(BASE, NULL));
    NB_CHECK(!nb_desk_same_origin(NULL, BASE));
}

static void test_external(void)
{
    NB_CHECK(nb_desk_external_ok("https://example.com/docs"));
    NB_CHECK(nb_desk_external_ok("http://example.com"));
    NB_CHECK(!nb_desk_external_ok("file:///etc/passwd"));
    NB_CHECK(!nb_desk_external_ok("javascript:alert(1)"));
    NB_CHECK(!nb_desk_external_ok("data:text/html,x"));
    NB_CHECK(!nb_desk_external_ok("ssh://host/"));
    NB_CHECK(!nb_desk_external_ok("http://"));
    NB_CHECK(!nb_desk_external_ok(NULL));
}

int main(void)
{
    NB_RUN(test_same_origin);
    NB_RUN(test_other_origins_refused);
    NB_RUN(test_external);
    NB_TEST_MAIN_END();
}
