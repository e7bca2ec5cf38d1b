/* Origin checks for the web view (origin.h). */
#include "desktop/origin.h"

#include <glib.h>
#include <string.h>

static int default_port(const char *scheme)
{
    return g_ascii_strcasecmp(scheme, "https") == 0 ? 443 : 80;
}

int nb_desk_same_origin(const char *base, const char *uri)
{
    if (!base || !uri)
        return 0;
    GUri *b = g_uri_parse(base, G_URI_FLAGS_NONE, NULL);
    GUri *u = g_uri_parse(uri, G_URI_FLAGS_NONE, NULL);
    int ok = 0;
    if (b && u) {
        const char *bs = g_uri_get_scheme(b), *us = g_uri_get_scheme(u);
        const char *bh = g_uri_get_host(b), *uh = g_uri_get_host(u);
        int bp = g_uri_get_port(b), up = g_uri_get_port(u);
        if (bp < 0)
            bp = default_port(bs);
        if (up < 0)
            up = default_port(us);
        /* The daemon serves plain http on an IP literal: an exact match of
         * the literal (no DNS name can stand for it) and of the port. A
         * userinfo part has no business in the UI's URLs either. */
        ok = bs && us && g_ascii_strcasecmp(bs, "http") == 0 &&
             g_ascii_strcasecmp(us, "http") == 0 && bh && uh && strcmp(bh, uh) == 0 && bp == up &&
             !g_uri_get_userinfo(u);
    }
    if (b)
        g_uri_unref(b);
    if (u)
        g_uri_unref(u);
    return ok;
}

int nb_desk_external_ok(const char *uri)
{
    if (!uri)
        return 0;
    GUri *u = g_uri_parse(uri, G_URI_FLAGS_NONE, NULL);
    if (!u)
        return 0;
    const char *s = g_uri_get_scheme(u);
    int ok = s && (g_ascii_strcasecmp(s, "http") == 0 || g_ascii_strcasecmp(s, "https") == 0) &&
             g_uri_get_host(u) && g_uri_get_host(u)[0];
    g_uri_unref(u);
    return ok;
}
