/* See logfilter.h. */
#include "cli/logfilter.h"

/* termfilter hands out pieces that hold complete sequences only (each
 * ESC starts a whole, allowed sequence): strip them piece by piece,
 * passing on runs of kept bytes. */
static void on_piece(void *ud, const uint8_t *p, size_t n)
{
    nb_logfilter_t *f = ud;
    size_t run = 0, i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c != 0x1b) {
            if ((c >= 0x20 && c != 0x7f) || c == '\n' || c == '\t') {
                i++;
                continue;
            }
            if (i > run)
                f->out(f->ud, p + run, i - run);
            run = ++i;
            continue;
        }
        if (i > run)
            f->out(f->ud, p + run, i - run);
        size_t j = i + 1;
        if (j < n && p[j] == '[') { /* CSI: parameters, intermediates, a final byte */
            int sgr = 1;            /* only digits, ';' and ':' before the 'm' */
            for (j++; j < n && !(p[j] >= 0x40 && p[j] <= 0x7e); j++)
                sgr &= (p[j] >= '0' && p[j] <= '9') || p[j] == ';' || p[j] == ':';
            if (j < n && f->colour && sgr && p[j] == 'm')
                f->out(f->ud, p + i, j + 1 - i);
            i = j + 1;
        } else if (j < n && p[j] == ']') { /* OSC: up to BEL or ST (ESC \) */
            for (j++; j < n && p[j] != 0x07 && p[j] != 0x1b; j++)
                ;
            i = j < n && p[j] == 0x1b ? j + 2 : j + 1;
        } else { /* ESC, intermediates, a final byte */
            while (j < n && p[j] >= 0x20 && p[j] <= 0x2f)
                j++;
            i = j + 1;
        }
        if (i > n)
            i = n;
        run = i;
    }
    if (n > run)
        f->out(f->ud, p + run, n - run);
}

void nb_logfilter_init(nb_logfilter_t *f, int colour, nb_logfilter_out_fn out, void *ud)
{
    nb_termfilter_init(&f->tf);
    f->colour = colour;
    f->out = out;
    f->ud = ud;
}

void nb_logfilter_feed(nb_logfilter_t *f, const uint8_t *in, size_t len)
{
    nb_termfilter_feed(&f->tf, in, len, on_piece, f);
}

void nb_logfilter_finish(nb_logfilter_t *f)
{
    nb_termfilter_finish(&f->tf, on_piece, f);
}
