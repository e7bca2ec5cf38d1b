/* Pure helpers behind the API's admission and routing: percent-decoding,
 * query lookup, path-pattern matching and Host sanity. They see bytes from
 * unauthenticated peers (the token itself arrives in the query string), so
 * they are bounded, allocation-light and fuzzed (fuzz/fuzz_apiroute.c).
 * No I/O; any thread. */
#ifndef NB_APIROUTE_H
#define NB_APIROUTE_H

#include <stddef.h>

#define NB_APIROUTE_MAX_PARAMS 4
#define NB_APIROUTE_MAX_VALUE 512 /* decoded bytes per {param} segment */

typedef struct {
    size_t n;
    char *names[NB_APIROUTE_MAX_PARAMS];  /* owned */
    char *values[NB_APIROUTE_MAX_PARAMS]; /* owned, percent-decoded, no '/' and no NUL */
} nb_apiroute_params_t;

/* Percent-decodes [p, p+len) into out (size outsz, NUL-terminated).
 * `plus` turns '+' into ' ' (query strings). Decoded NUL bytes and broken
 * escapes give NB_EPARSE; too long NB_ETOOBIG. */
int nb_apiroute_pct_decode(const char *p, size_t len, int plus, char *out, size_t outsz);

/* Looks `name` up in a query string "a=1&b=x%20y" (without '?'). 1 and the
 * decoded value in out when present ("" for a bare key), 0 when absent,
 * NB_EPARSE / NB_ETOOBIG when the value is unusable. First match wins. */
int nb_apiroute_query_get(const char *query, const char *name, char *out, size_t outsz);

/* Matches `path` against `pattern` ("/v1/vms/{name}/start"; a {x} matches
 * one non-empty segment). Returns 1 on a match, 0 otherwise. With `params`
 * (cleared first; free with nb_apiroute_params_free) the segments are
 * decoded: NB_EPARSE when one is malformed or decodes to something with
 * '/', NB_ETOOBIG when too long, -ENOMEM. */
int nb_apiroute_match(const char *pattern, const char *path, nb_apiroute_params_t *params);

/* Value of param `name`, or NULL. */
const char *nb_apiroute_param(const nb_apiroute_params_t *p, const char *name);

void nb_apiroute_params_free(nb_apiroute_params_t *p);

/* Host header sanity for the Unix socket: localhost, 127.0.0.1, [::1] or
 * nilboxd, optionally with a numeric port. 1 when acceptable. */
int nb_apiroute_unix_host_ok(const char *host);

#endif
