/* libFuzzer target for the proxy's addressing parsers
 * (src/daemon/egress/proxy_url.c): CONNECT authorities, absolute-form
 * targets and the Host == destination comparison (A1).
 *
 * Checks: results stay in bounds; an accepted authority has a port in
 * 1..65535 (or the default), a host that parses again to itself, and the
 * Host comparison accepts the authority's own canonical spelling; the
 * origin of an absolute URL is a slice of the input; the parsers never
 * read past `size` (ASan). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/proxy_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_authority(const nb_pxurl_authority_t *a, uint16_t def)
{
    if (a->port == 0 || (!a->has_port && a->port != def))
        abort();
    size_t hl = strnlen(a->host, sizeof a->host);
    if (hl == 0 || hl >= sizeof a->host)
        abort();
    /* canonical form round trip */
    char canon[NB_HOSTNAME_BUFSZ + 16];
    int n = snprintf(canon, sizeof canon, a->is_ip && strchr(a->host, ':') ? "[%s]:%u" : "%s:%u",
                     a->host, a->port);
    nb_pxurl_authority_t b;
    if (nb_pxurl_authority((const uint8_t *)canon, (size_t)n, 0, &b) != 0)
        abort();
    if (strcmp(a->host, b.host) != 0 || a->port != b.port || a->is_ip != b.is_ip)
        abort();
    if (!nb_pxurl_host_matches(nb_iov(canon, (size_t)n), a->host, a->port))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nb_pxurl_authority_t a;
    /* Exact-size heap copies so ASan sees any over-read. */
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    if (nb_pxurl_authority(p, size, 0, &a) == 0)
        check_authority(&a, 0);
    if (nb_pxurl_authority(p, size, 80, &a) == 0)
        check_authority(&a, 80);
    nb_pxurl_abs_t u;
    if (nb_pxurl_absolute(p, size, &u) == 0) {
        check_authority(&u.auth, u.https ? 443 : 80);
        if (u.origin.len && (u.origin.p < p || u.origin.p + u.origin.len != p + size))
            abort();
    }
    (void)nb_pxurl_host_matches(nb_iov(p, size), "api.example.com", 443);
    (void)nb_pxurl_host_matches(nb_iov(p, size), "10.0.0.1", 80);
    free(p);
    return 0;
}
