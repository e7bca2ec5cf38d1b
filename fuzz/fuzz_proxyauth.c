/* libFuzzer target for the proxy listeners' client authentication
 * (src/daemon/egress/proxy_auth.c): Proxy-Authorization values against a
 * fixed token (A26).
 *
 * Input: the first byte picks the token length (0..63, cut to what is
 * left), the token follows, the rest is the header value.
 * Checks: never reads past `size` (ASan); an empty token never matches;
 * an accepted value really carries the token: the Bearer form's argument
 * is the token, or the Basic form decodes to USER:TOKEN; the canonical
 * spellings of both forms are accepted, and one flipped token byte in
 * them is refused. */
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/egress/proxy_auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int carries(const uint8_t *tok, size_t tl, const uint8_t *v, size_t n)
{
    size_t i = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (n > i && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n - i >= 7 && strncasecmp((const char *)v + i, "bearer", 6) == 0) {
        size_t a = i + 6;
        while (a < n && (v[a] == ' ' || v[a] == '\t'))
            a++;
        return n - a == tl && memcmp(v + a, tok, tl) == 0;
    }
    if (n - i >= 6 && strncasecmp((const char *)v + i, "basic", 5) == 0) {
        size_t a = i + 5;
        while (a < n && (v[a] == ' ' || v[a] == '\t'))
            a++;
        uint8_t bin[NB_PROXY_AUTH_MAX_B64];
        size_t bl = 0;
        if (sodium_base642bin(bin, sizeof bin, (const char *)v + a, n - a, NULL, &bl, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0)
            return 0;
        const uint8_t *c = memchr(bin, ':', bl);
        return c && (size_t)(bin + bl - (c + 1)) == tl && memcmp(c + 1, tok, tl) == 0;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || sodium_init() < 0)
        return 0;
    size_t tl = data[0] % 64;
    if (tl > size - 1)
        tl = size - 1;
    const uint8_t *tok = data + 1, *v = data + 1 + tl;
    size_t vl = size - 1 - tl;
    int ok = nb_proxy_auth_check(tok, tl, v, vl);
    if (ok && (!tl || !carries(tok, tl, v, vl)))
        abort();
    if (!tl)
        return 0;
    /* The canonical forms are accepted; a changed token byte is not. */
    uint8_t cred[80], b64[128], hdr[160];
    memcpy(cred, "nilbox:", 7);
    memcpy(cred + 7, tok, tl);
    sodium_bin2base64((char *)b64, sizeof b64, cred, 7 + tl, sodium_base64_VARIANT_ORIGINAL);
    size_t bl = strlen((const char *)b64);
    memcpy(hdr, "Basic ", 6);
    memcpy(hdr + 6, b64, bl);
    if (nb_proxy_auth_check(tok, tl, hdr, 6 + bl) != 1)
        abort();
    memcpy(hdr, "Bearer ", 7);
    memcpy(hdr + 7, tok, tl);
    size_t hl = 7 + tl;
    /* (a token ending in a space or tab cannot survive the trimming) */
    int trailing_sp = tok[tl - 1] == ' ' || tok[tl - 1] == '\t';
    int leading_sp = tok[0] == ' ' || tok[0] == '\t';
    if (!trailing_sp && !leading_sp && nb_proxy_auth_check(tok, tl, hdr, hl) != 1)
        abort();
    hdr[7 + tl / 2] ^= 1;
    if (nb_proxy_auth_check(tok, tl, hdr, hl) != 0)
        abort();
    return 0;
}
