/* CONNECT authority, absolute-form URL and Host parsing (see proxy_url.h). */
#include "daemon/egress/proxy_url.h"

#include <string.h>

#include "lib/err.h"

static int parse_port(const uint8_t *p, size_t len, uint16_t *out)
{
    if (len == 0 || len > 5)
        return NB_EPARSE;
    uint32_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return NB_EPARSE;
        v = v * 10 + (uint32_t)(p[i] - '0');
    }
    if (v == 0 || v > 65535)
        return NB_EPARSE;
    *out = (uint16_t)v;
    return 0;
}

int nb_pxurl_authority(const uint8_t *p, size_t len, uint16_t default_port,
                       nb_pxurl_authority_t *out)
{
    memset(out, 0, sizeof *out);
    if (len == 0 || len > NB_PXURL_AUTHORITY_MAX)
        return NB_EPARSE;
    size_t hlen;                /* bytes of the host part, brackets included */
    const uint8_t *port = NULL; /* after the ':' */
    size_t plen = 0;
    if (p[0] == '[') {
        const uint8_t *close = memchr(p, ']', len);
        if (!close)
            return NB_EPARSE;
        hlen = (size_t)(close - p) + 1;
        if (hlen < len) {
            if (p[hlen] != ':')
                return NB_EPARSE;
            port = p + hlen + 1;
            plen = len - hlen - 1;
        }
    } else {
        const uint8_t *colon = memchr(p, ':', len);
        hlen = colon ? (size_t)(colon - p) : len;
        if (colon) {
            port = colon + 1;
            plen = len - hlen - 1;
            if (memchr(port, ':', plen))
                return NB_EPARSE; /* IPv6 without brackets, or junk */
        }
    }
    if (hlen == 0)
        return NB_EPARSE;
    for (size_t i = 0; i < hlen; i++)
        if (p[i] == '@' || p[i] <= 0x20 || p[i] >= 0x7f || p[i] == '/' || p[i] == '\\' ||
            p[i] == '%')
            return NB_EPARSE;
    if (port) {
        if (parse_port(port, plen, &out->port) < 0)
            return NB_EPARSE;
        out->has_port = 1;
    } else if (default_port == 0) {
        return NB_EPARSE;
    } else {
        out->port = default_port;
    }
    if (nb_ip_parse((const char *)p, hlen, &out->ip)) {
        /* Unbracketed IPv6 cannot get here (its colons fail above); a
         * bracketed IPv4-mapped address comes out as IPv4 by design. */
        out->is_ip = 1;
        nb_ip_format(&out->ip, out->host, sizeof out->host);
        return 0;
    }
    if (p[0] == '[')
        return NB_EINVAL;
    if (nb_hostname_normalize((const char *)p, hlen, out->host, sizeof out->host) < 0)
        return NB_EINVAL;
    return 0;
}

int nb_pxurl_absolute(const uint8_t *p, size_t len, nb_pxurl_abs_t *out)
{
    memset(out, 0, sizeof *out);
    size_t sl;
    if (len >= 7 && nb_iov_eq_nocase(nb_iov(p, 7), "http://")) {
        sl = 7;
    } else if (len >= 8 && nb_iov_eq_nocase(nb_iov(p, 8), "https://")) {
        sl = 8;
        out->https = 1;
    } else {
        const uint8_t *c = memchr(p, ':', len);
        return c && c > p ? NB_EUNSUPPORTED : NB_EPARSE;
    }
    size_t a = sl;
    while (a < len && p[a] != '/' && p[a] != '?' && p[a] != '#')
        a++;
    if (a < len && p[a] == '#')
        return NB_EPARSE;
    if (memchr(p + a, '#', len - a))
        return NB_EPARSE;
    int r = nb_pxurl_authority(p + sl, a - sl, out->https ? 443 : 80, &out->auth);
    if (r < 0)
        return r;
    for (size_t i = a; i < len; i++)
        if (p[i] <= 0x20 || p[i] >= 0x7f)
            return NB_EPARSE;
    out->origin = nb_iov(p + a, len - a);
    return 0;
}

int nb_pxurl_host_matches(nb_iov_t v, const char *host, uint16_t port)
{
    nb_pxurl_authority_t a;
    if (nb_pxurl_authority(v.p, v.len, port, &a) < 0)
        return 0;
    return strcmp(a.host, host) == 0 && a.port == port;
}
