/* libFuzzer target for `nilbox port add`'s HOSTPORT[:GUESTPORT]
 * (src/lib/portspec.c).
 *
 * Checks: never reads past `size` (ASan; the input is copied to a buffer
 * of exactly `size` bytes); an accepted spec has ports 1-65535 and
 * formats back to the same bytes (so no sign, space, leading zero or
 * trailing garbage got through); a refused one leaves the outputs alone. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/portspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    uint16_t h = 0, g = 0;
    int r = nb_portspec_parse(s, size, &h, &g);
    if (r == 0) {
        if (h == 0 || g == 0)
            abort();
        char a[16], b[16];
        int n = snprintf(a, sizeof a, "%u:%u", h, g), m = snprintf(b, sizeof b, "%u", h);
        int same = (size == (size_t)n && memcmp(a, s, size) == 0) ||
                   (h == g && size == (size_t)m && memcmp(b, s, size) == 0);
        if (!same)
            abort();
    } else if (h != 0 || g != 0) {
        abort();
    }
    free(s);
    return 0;
}
