/* Proxy-Authorization parsing (A26). See proxy_auth.h. */
#include "daemon/egress/proxy_auth.h"

#include <sodium.h>
#include <string.h>
#include <strings.h>

static int is_sp(uint8_t c)
{
    return c == ' ' || c == '\t';
}

int nb_proxy_auth_check(const uint8_t *token, size_t tlen, const uint8_t *value, size_t len)
{
    size_t i = 0, n = len;
    while (i < n && is_sp(value[i]))
        i++;
    size_t s = i;
    while (i < n && !is_sp(value[i]))
        i++;
    size_t slen = i - s;
    while (i < n && is_sp(value[i]))
        i++;
    while (n > i && is_sp(value[n - 1]))
        n--;
    const uint8_t *arg = value + i;
    size_t alen = n - i;
    uint8_t bin[NB_PROXY_AUTH_MAX_B64 / 4 * 3 + 3];
    const uint8_t *pw = NULL;
    size_t pwlen = 0, binlen = 0;
    int ok = 0;
    if (!tlen)
        return 0;
    if (slen == 5 && strncasecmp((const char *)value + s, "basic", 5) == 0) {
        /* base64(USER:TOKEN); USER is not checked (clients need one). */
        if (alen <= NB_PROXY_AUTH_MAX_B64 &&
            sodium_base642bin(bin, sizeof bin, (const char *)arg, alen, NULL, &binlen, NULL,
                              sodium_base64_VARIANT_ORIGINAL) == 0) {
            const uint8_t *colon = memchr(bin, ':', binlen);
            if (colon) {
                pw = colon + 1;
                pwlen = binlen - (size_t)(pw - bin);
            }
        }
    } else if (slen == 6 && strncasecmp((const char *)value + s, "bearer", 6) == 0) {
        pw = arg;
        pwlen = alen;
    }
    if (pw && pwlen == tlen && sodium_memcmp(pw, token, tlen) == 0)
        ok = 1;
    sodium_memzero(bin, sizeof bin);
    return ok;
}
