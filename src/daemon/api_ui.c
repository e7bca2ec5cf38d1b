/* The web UI's static files (embedded by scripts/ui-embed.py, see
 * uiassets.h): `GET /` is index.html, `GET /ui/{file}` the bundle. Public
 * routes: no token is needed to load the page (the token arrives in the URL
 * fragment, which browsers never send, and the app sends it as a Bearer
 * header), but Host and Origin are checked as for every request and the
 * strict CSP of api.c applies (A21). */
#include <string.h>
#include <strings.h>

#include "daemon/api.h"
#include "daemon/uiassets.h"

static const nb_uiasset_t *find_asset(const char *name)
{
    for (const nb_uiasset_t *a = nb_uiassets; a->name; a++)
        if (strcmp(a->name, name) == 0)
            return a;
    return NULL;
}

/* 1 when the client accepts gzip: a "gzip" token in Accept-Encoding whose
 * q is not zero ("gzip;q=0", "gzip; q=0.000" refuse it). */
static int accepts_gzip(const char *ae)
{
    for (const char *p = ae; p && *p; p += strcspn(p, ",")) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",; \t");
        if (n != 4 || strncasecmp(p, "gzip", 4) != 0)
            continue;
        const char *q = p + 4;
        q += strspn(q, " \t");
        if (*q != ';')
            return 1;
        q++;
        q += strspn(q, " \t");
        if (strncasecmp(q, "q=0", 3) != 0)
            return 1;
        q += 3;
        if (*q == '.')
            q += 1 + strspn(q + 1, "0");
        q += strspn(q, " \t");
        return !(*q == '\0' || *q == ',');
    }
    return 0;
}

static void serve(nb_api_ctx_t *ctx, const nb_uiasset_t *a)
{
    nb_httpd_req_t *req = nb_api_take_req(ctx);
    nb_httpd_add_header(req, "Vary", "Accept-Encoding");
    if (accepts_gzip(nb_httpd_req_header(req, "Accept-Encoding"))) {
        nb_httpd_add_header(req, "Content-Encoding", "gzip");
        nb_httpd_respond(req, 200, a->ctype, a->gz, a->gz_len);
    } else {
        nb_httpd_respond(req, 200, a->ctype, a->data, a->len);
    }
}

static void on_index(nb_api_ctx_t *ctx)
{
    serve(ctx, find_asset("index.html"));
}

static void on_file(nb_api_ctx_t *ctx)
{
    const char *name = nb_api_param(ctx, "file");
    const nb_uiasset_t *a = strcmp(name, "index.html") == 0 ? NULL : find_asset(name);
    if (!a) {
        nb_api_reply_error(ctx, 404, "not-found", "no such UI file%s",
                           nb_uiassets_built ? "" : " (the web UI was not built into this daemon)");
        return;
    }
    serve(ctx, a);
}

const nb_api_route_t nb_api_routes_ui[] = {
    {"GET", "/", on_index, NB_API_PUBLIC},
    {"GET", "/ui/{file}", on_file, NB_API_PUBLIC},
    {0},
};
