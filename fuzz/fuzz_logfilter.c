/* libFuzzer target for the `vm logs` console filter (src/cli/logfilter.c,
 * on top of src/lib/termfilter.c).
 *
 * Byte 0: bit 0 sets `colour`, the rest picks a split step. The rest is
 * filtered whole and in pieces; the outputs must be identical, hold no
 * control byte but newline and tab, and ESC only as the start of a colour
 * sequence `ESC [ <0-9;:> m` when `colour` is set (never without it). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/logfilter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *p;
    size_t n, cap;
} sink_t;

static void on_out(void *ud, const uint8_t *p, size_t n)
{
    sink_t *s = ud;
    if (n == 0)
        abort(); /* no empty writes */
    if (s->n + n > s->cap)
        abort(); /* bounded by termfilter's 3x input plus one held sequence */
    memcpy(s->p + s->n, p, n);
    s->n += n;
}

static nb_logfilter_t fa, fb;

static void check_output(const uint8_t *p, size_t n, int colour)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' || p[i] == '\t')
            continue;
        if (p[i] == 0x7f)
            abort();
        if (p[i] != 0x1b) {
            if (p[i] < 0x20)
                abort();
            continue;
        }
        if (!colour || i + 1 >= n || p[i + 1] != '[')
            abort();
        size_t j = i + 2;
        while (j < n && ((p[j] >= '0' && p[j] <= '9') || p[j] == ';' || p[j] == ':'))
            j++;
        if (j >= n || p[j] != 'm')
            abort();
        i = j;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    int colour = data[0] & 1;
    size_t step = (size_t)(data[0] >> 1) + 1;
    data++;
    size--;
    size_t cap = size * 3 + 2 * NB_TERMFILTER_STRING_MAX + 64;
    sink_t a = {malloc(cap), 0, cap}, b = {malloc(cap), 0, cap};
    if (!a.p || !b.p)
        abort();
    nb_logfilter_init(&fa, colour, on_out, &a);
    nb_logfilter_feed(&fa, data, size);
    nb_logfilter_finish(&fa);
    nb_logfilter_init(&fb, colour, on_out, &b);
    for (size_t i = 0; i < size; i += step)
        nb_logfilter_feed(&fb, data + i, size - i < step ? size - i : step);
    nb_logfilter_finish(&fb);
    if (a.n != b.n || memcmp(a.p, b.p, a.n) != 0)
        abort();
    check_output(a.p, a.n, colour);
    free(a.p);
    free(b.p);
    return 0;
}
