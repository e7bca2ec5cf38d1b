/* Client authentication of proxy listeners (THREATS.md A26): the parser of
 * a Proxy-Authorization value. See docs/internals/proxy.md, "Client
 * authentication". Pure, no allocation; fuzzed by fuzz/fuzz_proxyauth.c. */
#ifndef NB_PROXY_AUTH_H
#define NB_PROXY_AUTH_H

#include <stddef.h>
#include <stdint.h>

/* The largest base64 credential looked at (longer ones never match). */
#define NB_PROXY_AUTH_MAX_B64 512

/* 1 when `value` (a Proxy-Authorization header value, `len` bytes, not
 * NUL-terminated) carries `token`: `Basic base64(USER:TOKEN)` with any USER
 * (the password is everything after the first ':'), or `Bearer TOKEN`;
 * scheme names are case-insensitive, spaces and tabs around the parts are
 * ignored. 0 otherwise, also for an empty `token`. The token's bytes are
 * compared in constant time (its length is public); decoded bytes are
 * wiped. */
int nb_proxy_auth_check(const uint8_t *token, size_t tlen, const uint8_t *value, size_t len);

#endif
