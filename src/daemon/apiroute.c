#include "daemon/apiroute.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "lib/err.h"

int nb_apiroute_pct_decode(const char *p, size_t len, int plus, char *out, size_t outsz)
{
    size_t o = 0;
    if (!outsz)
        return NB_ETOOBIG;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
            int h, l;
            if (i + 2 >= len || (h = nb_hexval(p[i + 1])) < 0 || (l = nb_hexval(p[i + 2])) < 0)
                return NB_EPARSE;
            c = h * 16 + l;
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        }
        if (c == 0)
            return NB_EPARSE;
        if (o + 1 >= outsz)
            return NB_ETOOBIG;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

int nb_apiroute_query_get(const char *q, const char *name, char *out, size_t outsz)
{
    size_t nlen = strlen(name);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t klen = eq ? (size_t)(eq - q) : len;
        if (klen == nlen && memcmp(q, name, nlen) == 0) {
            if (!eq) {
                if (!outsz)
                    return NB_ETOOBIG;
                out[0] = '\0';
                return 1;
            }
            int r = nb_apiroute_pct_decode(eq + 1, len - klen - 1, 1, out, outsz);
            return r < 0 ? r : 1;
        }
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

void nb_apiroute_params_free(nb_apiroute_params_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->names[i]);
        free(p->values[i]);
    }
    memset(p, 0, sizeof *p);
}

const char *nb_apiroute_param(const nb_apiroute_params_t *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->names[i], name) == 0)
            return p->values[i];
    return NULL;
}

int nb_apiroute_match(const char *pattern, const char *path, nb_apiroute_params_t *params)
{
    const char *p = pattern, *s = path;
    size_t n = 0;
    const char *names[NB_APIROUTE_MAX_PARAMS];
    size_t nlens[NB_APIROUTE_MAX_PARAMS];
    const char *vals[NB_APIROUTE_MAX_PARAMS];
    size_t vlens[NB_APIROUTE_MAX_PARAMS];
    if (params)
        memset(params, 0, sizeof *params);
    while (*p && *s) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const char *seg_end = strchrnul(s, '/');
            if (!close || seg_end == s || n >= NB_APIROUTE_MAX_PARAMS)
                return 0;
            names[n] = p + 1;
            nlens[n] = (size_t)(close - p - 1);
            vals[n] = s;
            vlens[n] = (size_t)(seg_end - s);
            n++;
            p = close + 1;
            s = seg_end;
            continue;
        }
        if (*p != *s)
            return 0;
        p++, s++;
    }
    if (*p || *s)
        return 0;
    if (!params)
        return 1;
    for (size_t i = 0; i < n; i++) {
        char buf[NB_APIROUTE_MAX_VALUE + 1];
        int r = nb_apiroute_pct_decode(vals[i], vlens[i], 0, buf, sizeof buf);
        if (r == 0 && strchr(buf, '/'))
            r = NB_EPARSE; /* "%2F" must not smuggle a path separator */
        char *nm = r == 0 ? strndup(names[i], nlens[i]) : NULL;
        char *v = nm ? strdup(buf) : NULL;
        if (r < 0 || !v) {
            free(nm);
            nb_apiroute_params_free(params);
            return r < 0 ? r : -ENOMEM;
        }
        params->names[params->n] = nm;
        params->values[params->n] = v;
        params->n++;
    }
    return 1;
}

int nb_apiroute_unix_host_ok(const char *host)
{
    static const char *const ok[] = {"localhost", "127.0.0.1", "[::1]", "nilboxd"};
    size_t hl = strcspn(host, ":");
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (!close)
            return 0;
        hl = (size_t)(close - host) + 1;
    }
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (strlen(ok[i]) == hl && strncasecmp(host, ok[i], hl) == 0) {
            const char *rest = host + hl;
            if (!*rest)
                return 1;
            if (*rest != ':' || !rest[1] || strlen(rest + 1) > 5)
                return 0;
            return strspn(rest + 1, "0123456789") == strlen(rest + 1);
        }
    }
    return 0;
}
