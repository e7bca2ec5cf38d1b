/* libFuzzer target for the ClientHello SNI parser (src/daemon/egress/tlssni.c).
 *
 * Byte 0 picks a split step; the rest is fed whole and then in pieces.
 * Checks: the result, the SNI and the consumed count do not depend on the
 * split; consumed counts stay in bounds; an extracted SNI is 1..255 bytes
 * without NUL and is really inside the input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/tlssni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nb_tlssni_t whole, split;

static int run(nb_tlssni_t *p, const uint8_t *d, size_t n, size_t step, size_t *total)
{
    nb_tlssni_init(p);
    size_t off = 0;
    int r = NB_TLSSNI_MORE;
    *total = 0;
    while (off < n) {
        size_t k = n - off < step ? n - off : step, used = 0;
        r = nb_tlssni_feed(p, d + off, k, &used);
        if (used > k)
            abort();
        *total += used;
        if (r != NB_TLSSNI_MORE)
            break;
        if (used != k)
            abort(); /* "more" means everything was taken */
        off += k;
    }
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] + 1;
    data++;
    size--;
    size_t u1, u2;
    int r1 = run(&whole, data, size, size ? size : 1, &u1);
    int r2 = run(&split, data, size, step, &u2);
    if (r1 != r2)
        abort();
    if (r1 == NB_TLSSNI_DONE) {
        if (u1 != u2 || u1 > size)
            abort();
        if (whole.has_sni != split.has_sni || whole.sni_len != split.sni_len ||
            memcmp(whole.sni, split.sni, whole.sni_len) != 0)
            abort();
        if (whole.has_sni) {
            if (whole.sni_len == 0 || whole.sni_len > 255 || strlen(whole.sni) != whole.sni_len ||
                !memmem(data, u1, whole.sni, whole.sni_len))
                abort();
        } else if (whole.sni_len != 0) {
            abort();
        }
    } else if (r1 < 0 && whole.has_sni) {
        abort(); /* a failed parse reports no name */
    }
    return 0;
}
