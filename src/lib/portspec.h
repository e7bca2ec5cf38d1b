/* "HOSTPORT:GUESTPORT" (or "PORT" for the same port on both sides), the
 * argument of `nilbox port add`. Pure; fuzzed by fuzz/fuzz_portspec.c. */
#ifndef NB_PORTSPEC_H
#define NB_PORTSPEC_H

#include <stddef.h>
#include <stdint.h>

/* Parses `len` bytes at `s` (not NUL-terminated): decimal ports 1-65535,
 * no sign, no spaces, no leading zeros, at most one ':'. 0 with both ports
 * set; NB_EINVAL otherwise (outputs untouched). */
int nb_portspec_parse(const char *s, size_t len, uint16_t *host, uint16_t *guest);

#endif
