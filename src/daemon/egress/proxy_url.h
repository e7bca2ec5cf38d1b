/* Pure parsers of the proxy's addressing input: the CONNECT authority
 * ("host:port"), absolute-form request targets ("http://host[:port]/p?q")
 * and the Host header, plus the comparison behind A1 (every request's Host
 * names the approved destination).
 *
 * All input is untrusted wire bytes (not NUL-terminated). Host names come
 * out normalised by nb_hostname_normalize() and IP literals by
 * nb_ip_parse()/nb_ip_format(), so later checks are byte comparisons.
 * Refused: userinfo ("user@host"), empty hosts, IPv6 without brackets,
 * ports that are not 1..65535 in plain decimal (no sign, no spaces, at
 * most 5 digits), any byte outside the authority grammar. No allocation;
 * thread-safe. Fuzzed by fuzz/fuzz_proxyurl.c. */
#ifndef NB_PROXY_URL_H
#define NB_PROXY_URL_H

#include <stddef.h>
#include <stdint.h>

#include "lib/hostname.h"
#include "lib/buf.h"

#define NB_PXURL_AUTHORITY_MAX 300 /* longer authorities are refused */

typedef struct {
    char host[NB_HOSTNAME_BUFSZ]; /* normalised name, or the IP formatted without brackets */
    int is_ip;
    nb_ipaddr_t ip; /* when is_ip */
    uint16_t port;  /* the explicit port, or the default passed in */
    int has_port;   /* a port was written */
} nb_pxurl_authority_t;

/* Parses "host", "host:port", "1.2.3.4:port" or "[v6]:port" from `p`
 * (len bytes). Without a port, `default_port` is used; when it is 0 a
 * port is required (CONNECT). 0, NB_EPARSE (syntax) or NB_EINVAL (a host
 * that is neither a valid name nor an IP literal). */
int nb_pxurl_authority(const uint8_t *p, size_t len, uint16_t default_port,
                       nb_pxurl_authority_t *out);

typedef struct {
    int https;                 /* scheme https:// (0: http://) */
    nb_pxurl_authority_t auth; /* port defaults to 80 / 443 */
    nb_iov_t origin;           /* path and query as sent ("/a?b"), borrowed from the input;
                                  empty when the URL has neither (means "/") */
} nb_pxurl_abs_t;

/* Parses an absolute-form target. The scheme is case-insensitive; a
 * fragment ("#...") is refused (clients never send one). NB_EPARSE /
 * NB_EINVAL as above, NB_EUNSUPPORTED for other schemes. */
int nb_pxurl_absolute(const uint8_t *p, size_t len, nb_pxurl_abs_t *out);

/* 1 when Host header value `v` names exactly `host` (normalised, as in
 * nb_pxurl_authority_t.host) and, if it carries a port, that port is
 * `port`. 0 for anything else, including malformed values (A1). */
int nb_pxurl_host_matches(nb_iov_t v, const char *host, uint16_t port);

#endif
