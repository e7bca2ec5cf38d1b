#include "daemon/secrets/binding.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/hostname.h"
#include "lib/err.h"

static const char *placement_names[] = {NULL, "header", "basic", "query", "sigv4"};

const char *nb_binding_placement_name(int placement)
{
    return placement >= NB_PLACE_HEADER && placement <= NB_PLACE_SIGV4 ? placement_names[placement]
                                                                       : NULL;
}

int nb_binding_placement_parse(const char *name)
{
    for (int i = NB_PLACE_HEADER; i <= NB_PLACE_SIGV4; i++)
        if (strcmp(name, placement_names[i]) == 0)
            return i;
    return 0;
}

int nb_secrets_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > NB_SECRETS_NAME_MAX || (name[0] >= '0' && name[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

static int is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int token_valid(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!is_tchar(*s))
            return 0;
    return 1;
}

static int visible_or_space(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

/* Headers a binding can never fill: the proxy owns them (routing and
 * framing, which it checks or writes itself) or drops them as hop-by-hop
 * before the request goes upstream, so a secret placed there would either
 * never fire or change how the message is read. */
static const struct {
    const char *name, *why;
} header_refusals[] = {
    {"host", "the proxy owns Host: it names the approved destination (A1)"},
    {"content-length", "a framing header: the proxy frames the body itself"},
    {"transfer-encoding", "a framing header: the proxy frames the body itself"},
    {"trailer", "a framing header: the proxy frames the body itself"},
    {"connection", "a hop-by-hop header: it never reaches the upstream"},
    {"keep-alive", "a hop-by-hop header: it never reaches the upstream"},
    {"proxy-connection", "a hop-by-hop header: it never reaches the upstream"},
    {"proxy-authorization",
     "a hop-by-hop header: it authenticates to the proxy and never reaches the upstream"},
    {"proxy-authenticate", "a hop-by-hop header: it never reaches the upstream"},
    {"te", "a hop-by-hop header: it never reaches the upstream"},
    {"upgrade", "the proxy writes Upgrade itself (WebSocket only)"},
    {"expect", "the proxy handles Expect itself (100-continue only)"},
    {"accept-encoding",
     "the proxy rewrites Accept-Encoding toward bound hosts, so a value there never fires"},
};

const char *nb_binding_header_refusal(const char *h)
{
    for (size_t i = 0; i < sizeof(header_refusals) / sizeof(header_refusals[0]); i++)
        if (strcasecmp(h, header_refusals[i].name) == 0)
            return header_refusals[i].why;
    return NULL;
}

const char *nb_binding_host_refusal(const char *host)
{
    if (strcmp(host, "*") == 0 || nb_host_pattern_public(host))
        return "a wildcard over a public suffix (like *.com or *.co.uk) matches hosts of "
               "unrelated owners: bind the secret to the service's own name or *.its-domain";
    return NULL;
}

static int header_fields_valid(const nb_binding_t *b)
{
    const char *ph = strstr(b->tmpl, "{secret}");
    size_t tl = strlen(b->tmpl);
    return token_valid(b->header) && !nb_binding_header_refusal(b->header) && ph &&
           !strstr(ph + 1, "{secret}") && visible_or_space(b->tmpl) && b->tmpl[0] != ' ' &&
           b->tmpl[tl - 1] != ' ';
}

int nb_binding_set_header(nb_binding_t *b, const char *spec)
{
    memset(b, 0, sizeof(*b));
    const char *colon = strchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(b->header))
        return NB_EINVAL;
    memcpy(b->header, spec, (size_t)(colon - spec));
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (strlen(v) >= sizeof(b->tmpl))
        return NB_EINVAL;
    snprintf(b->tmpl, sizeof(b->tmpl), "%s", v);
    b->placement = NB_PLACE_HEADER;
    return header_fields_valid(b) ? 0 : NB_EINVAL;
}

static int path_prefix_normalize(char *p)
{
    size_t n = strlen(p);
    if (n == 0)
        return 0;
    if (p[0] != '/')
        return NB_EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("-._~/!$&'()*+,;=:@", c)))
            return NB_EINVAL; /* no '%', '?', '#', spaces: one spelling per path */
        /* Dot segments would let "/v1/../admin" pass a "/v1" prefix. */
        if (c == '.' && p[i - 1] == '/' &&
            (p[i + 1] == '/' || p[i + 1] == 0 ||
             (p[i + 1] == '.' && (p[i + 2] == '/' || !p[i + 2]))))
            return NB_EINVAL;
        if (c == '/' && i > 0 && p[i - 1] == '/')
            return NB_EINVAL;
    }
    while (n > 0 && p[n - 1] == '/')
        p[--n] = '\0'; /* "/v1/" == "/v1"; "/" == any path */
    return 0;
}

static int has_nocase(nb_iov_t s, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= s.len; i++)
        if (nb_iov_eq_nocase_n(nb_iov(s.p + i, n), needle, n))
            return 1;
    return 0;
}

static int path_clean(nb_iov_t p)
{
    static const char *const bad[] = {"%2e", "%2f", "%5c", "%00", "%25", "//", "/./", "/../", NULL};
    if (p.len == 0 || p.p[0] != '/' || memchr(p.p, ';', p.len) || memchr(p.p, '\\', p.len))
        return 0;
    for (size_t i = 0; bad[i]; i++)
        if (has_nocase(p, bad[i]))
            return 0;
    return !(p.len >= 2 && memcmp(p.p + p.len - 2, "/.", 2) == 0) &&
           !(p.len >= 3 && memcmp(p.p + p.len - 3, "/..", 3) == 0);
}

int nb_binding_host_ok(const nb_binding_t *b, const char *host)
{
    return nb_host_pattern_match(b->host, host);
}

int nb_binding_path_ok(const nb_binding_t *b, nb_iov_t path)
{
    size_t pl = strnlen(b->path_prefix, sizeof(b->path_prefix));
    if (pl == 0)
        return 1;
    size_t n = 0;
    while (n < path.len && path.p[n] != '?' && path.p[n] != '#')
        n++;
    path.len = n;
    return path_clean(path) && path.len >= pl && memcmp(path.p, b->path_prefix, pl) == 0 &&
           (path.len == pl || path.p[pl] == '/');
}

static int vm_name_valid(const char *v)
{
    size_t n = strlen(v);
    if (n == 0)
        return 1;
    if (n >= NB_BINDING_VM_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

int nb_binding_normalize(nb_binding_t *b)
{
    /* Every string must be terminated inside its field before we read it. */
    if (!memchr(b->secret, 0, sizeof(b->secret)) || !memchr(b->host, 0, sizeof(b->host)) ||
        !memchr(b->path_prefix, 0, sizeof(b->path_prefix)) ||
        !memchr(b->header, 0, sizeof(b->header)) || !memchr(b->tmpl, 0, sizeof(b->tmpl)) ||
        !memchr(b->user, 0, sizeof(b->user)) || !memchr(b->param, 0, sizeof(b->param)) ||
        !memchr(b->vm, 0, sizeof(b->vm)))
        return NB_EINVAL;
    if (!nb_secrets_name_valid(b->secret) || !vm_name_valid(b->vm))
        return NB_EINVAL;
    char host[256];
    nb_ipaddr_t ip;
    if (nb_ip_parse(b->host, strlen(b->host), &ip))
        nb_ip_format(&ip, host, sizeof(host));
    else if (nb_host_pattern_normalize(b->host, strlen(b->host), host, sizeof(host)) < 0 ||
             nb_binding_host_refusal(host))
        return NB_EINVAL;
    memcpy(b->host, host, sizeof(host));
    if (path_prefix_normalize(b->path_prefix) < 0)
        return NB_EINVAL;
    b->allow_cleartext = b->allow_cleartext ? 1 : 0;
    switch (b->placement) {
    case NB_PLACE_HEADER:
        if (!header_fields_valid(b))
            return NB_EINVAL;
        b->user[0] = b->param[0] = '\0';
        return 0;
    case NB_PLACE_BASIC:
        /* RFC 7617: the user-id cannot contain a colon. */
        if (!b->user[0] || strchr(b->user, ':') || !visible_or_space(b->user))
            return NB_EINVAL;
        snprintf(b->header, sizeof(b->header), "Authorization");
        b->tmpl[0] = b->param[0] = '\0';
        return 0;
    case NB_PLACE_QUERY:
        for (const char *c = b->param; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || strchr("-._~", *c)))
                return NB_EINVAL;
        if (!b->param[0])
            return NB_EINVAL;
        b->header[0] = b->tmpl[0] = b->user[0] = '\0';
        return 0;
    case NB_PLACE_SIGV4:
        /* Region and service restrict the credential scope a request may
         * name ("" = any); AWS spells both in lower case, digits, '-'. */
        for (const char *f = b->user; f; f = f == b->user ? b->param : NULL)
            for (const char *c = f; *c; c++)
                if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-'))
                    return NB_EINVAL;
        if (strlen(b->user) >= 32)
            return NB_EINVAL;
        b->header[0] = b->tmpl[0] = '\0';
        return 0;
    default:
        return NB_EINVAL;
    }
}
