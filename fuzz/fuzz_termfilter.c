/* libFuzzer target for the guest output filter (src/lib/termfilter.c).
 *
 * Byte 0 picks a split step (0: random-ish cuts driven by byte 1). The rest
 * is filtered whole and in pieces; outputs and counts must be identical, and
 * the output must hold no OSC 52 (7-bit), must be valid UTF-8 without C1
 * code points, and may hold ESC only as the start of CSI, OSC 0/1/2/4/8/
 * 10-19/104/110-119/133 or a plain ESC sequence. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/termfilter.h"

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
        abort(); /* output is bounded by 3x input + one held sequence */
    memcpy(s->p + s->n, p, n);
    s->n += n;
}

static nb_termfilter_t fa, fb;

static void check_output(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = p[i] < 0x80 ? 1 : p[i] >= 0xf0 ? 4 : p[i] >= 0xe0 ? 3 : p[i] >= 0xc2 ? 2 : 0;
        if (!k || i + k > n || (p[i] == 0xc2 && p[i + 1] < 0xa0) || p[i] > 0xf4)
            abort();
        for (size_t j = 1; j < k; j++)
            if ((p[i + j] & 0xc0) != 0x80)
                abort();
        if (p[i] == 0x1b) {
            if (i + 1 >= n)
                abort(); /* a lone trailing ESC */
            if (p[i + 1] == ']') {
                size_t j = i + 2;
                unsigned long num = 0;
                while (j < n && p[j] >= '0' && p[j] <= '9' && num < 1000000)
                    num = num * 10 + (unsigned long)(p[j++] - '0');
                if (!(num <= 2 || num == 4 || num == 8 || (num >= 10 && num <= 19) || num == 104 ||
                      (num >= 110 && num <= 119) || num == 133))
                    abort();
            }
            if (p[i + 1] == 'P' || p[i + 1] == '_' || p[i + 1] == '^' || p[i + 1] == 'X')
                abort();
        }
        i += k;
    }
    for (size_t i = 0; i + 3 < n; i++)
        if (p[i] == 0x1b && p[i + 1] == ']' && p[i + 2] == '5' && p[i + 3] == '2')
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sink_t a, b;
    size_t step, cap;
    uint8_t seed;
    nb_termfilter_stats_t sa = {0}, sb = {0};

    if (size < 2)
        return 0;
    step = data[0];
    seed = data[1];
    data += 2;
    size -= 2;
    cap = 3 * size + NB_TERMFILTER_STRING_MAX + 16;
    a.p = malloc(cap);
    b.p = malloc(cap);
    if (!a.p || !b.p)
        abort();
    a.n = b.n = 0;
    a.cap = b.cap = cap;

    nb_termfilter_init(&fa);
    nb_termfilter_feed(&fa, data, size, on_out, &a);
    nb_termfilter_finish(&fa, on_out, &a);

    nb_termfilter_init(&fb);
    for (size_t i = 0; i < size;) {
        size_t k = step ? step : (size_t)(seed % 7);
        seed = (uint8_t)(seed * 37 + 11);
        if (k > size - i)
            k = size - i;
        nb_termfilter_feed(&fb, data + i, k, on_out, &b);
        i += k;
    }
    nb_termfilter_finish(&fb, on_out, &b);

    if (a.n != b.n || memcmp(a.p, b.p, a.n) != 0)
        abort();
    nb_termfilter_stats(&fa, &sa);
    nb_termfilter_stats(&fb, &sb);
    if (memcmp(&sa, &sb, sizeof sa) != 0)
        abort();
    check_output(a.p, a.n);
    free(a.p);
    free(b.p);
    return 0;
}
