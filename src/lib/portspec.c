/* See portspec.h. */
#include <string.h>

#include "lib/err.h"
#include "lib/portspec.h"

static int port(const char *s, size_t n, uint16_t *out)
{
    if (n == 0 || n > 5 || s[0] == '0')
        return NB_EINVAL;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return NB_EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return NB_EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int nb_portspec_parse(const char *s, size_t len, uint16_t *host, uint16_t *guest)
{
    uint16_t h, g;
    const char *c = s ? memchr(s, ':', len) : NULL;
    if (!s)
        return NB_EINVAL;
    if (!c) {
        if (port(s, len, &h) < 0)
            return NB_EINVAL;
        g = h;
    } else if (port(s, (size_t)(c - s), &h) < 0 || port(c + 1, len - (size_t)(c - s) - 1, &g) < 0) {
        return NB_EINVAL;
    }
    *host = h;
    *guest = g;
    return 0;
}
