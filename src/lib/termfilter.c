/* Guest output filter for the user's terminal (THREATS.md A20); see
 * termfilter.h and docs/internals/termfilter.md.
 *
 * Two layers: a strict UTF-8 decoder turns bytes into units (a code point
 * with its raw bytes, or an invalid unit), and an escape-sequence state
 * machine in the style of the VT500 parser consumes the units. Nothing that
 * opens a sequence is written before the whole sequence has been seen and
 * approved, so the terminal never ends up inside a sequence we did not vet. */
#include "lib/termfilter.h"

#include <stdio.h>
#include <string.h>

enum {
    S_GROUND,
    S_ESC,     /* after ESC */
    S_ESC_INT, /* ESC + intermediates */
    S_CSI,     /* collecting a CSI */
    S_OSC,     /* collecting an OSC we may keep */
    S_STR,     /* skipping a string that will be dropped (DCS/APC/PM/SOS/OSC) */
    S_STR_ESC, /* ESC inside an OSC or skipped string: ST or abort */
};

/* flags */
#define F_BAD 0x01      /* the current sequence is invalid: drop it */
#define F_C1 0x02       /* introduced by an 8-bit C1 control: drop it */
#define F_IS_OSC 0x04   /* the string is an OSC (BEL ends it) */
#define F_KEEP 0x08     /* S_STR_ESC came from S_OSC (the string is kept so far) */
#define F_PT 0x10       /* OSC: past the ';' after Ps */
#define F_NONASCII 0x20 /* OSC text holds non-ASCII characters */
#define F_CUT 0x40      /* the title reached its cap: the rest is not kept */

#define U_INVALID 0xFFFFFFFFu
#define OSC_NUM_MAX 999999u

typedef struct {
    uint8_t buf[4096];
    size_t n;
    nb_termfilter_out_fn fn;
    void *ud;
} outq_t;

static void out_flush(outq_t *q)
{
    if (q->n && q->fn)
        q->fn(q->ud, q->buf, q->n);
    q->n = 0;
}

static void out_put(outq_t *q, const uint8_t *p, size_t n)
{
    while (n) {
        size_t room = sizeof q->buf - q->n, k = n < room ? n : room;
        memcpy(q->buf + q->n, p, k);
        q->n += k;
        p += k;
        n -= k;
        if (q->n == sizeof q->buf)
            out_flush(q);
    }
}

static void out_byte(outq_t *q, uint8_t b)
{
    out_put(q, &b, 1);
}

static void count(nb_termfilter_t *f, nb_termfilter_kind_t k)
{
    f->st.blocked[k]++;
    f->st.total++;
}

static void to_ground(nb_termfilter_t *f)
{
    f->state = S_GROUND;
    f->flags = 0;
    f->seq_len = 0;
    f->str_len = 0;
    f->pt_len = 0;
    f->osc_num = 0;
}

/* Drops the sequence being read, counting it under its kind (or C1). */
static void drop(nb_termfilter_t *f, nb_termfilter_kind_t k)
{
    count(f, (f->flags & F_C1) ? NB_TERMFILTER_C1 : k);
    to_ground(f);
}

static void seq_add(nb_termfilter_t *f, const uint8_t *p, size_t n, size_t cap)
{
    if (f->seq_len + n > cap) {
        f->flags |= F_BAD;
        return;
    }
    memcpy(f->seq + f->seq_len, p, n);
    f->seq_len += n;
}

/* Starts skipping a string that will be dropped as `kind`. */
static void skip_string(nb_termfilter_t *f, nb_termfilter_kind_t kind, int is_osc)
{
    f->state = S_STR;
    f->kind = (uint8_t)kind;
    f->flags = (uint8_t)((f->flags & F_C1) | (is_osc ? F_IS_OSC : 0));
    f->seq_len = 0;
}

/* ------------------------------------------------------------ CSI */

/* Parses the next decimal parameter of a CSI at *i (stops at ';' or ':'),
 * saturating. -1 when there is none left. */
static long next_param(const uint8_t *p, size_t n, size_t *i)
{
    long v = 0;
    if (*i >= n)
        return -1;
    while (*i < n && p[*i] >= '0' && p[*i] <= '9') {
        if (v < 100000)
            v = v * 10 + (p[*i] - '0');
        (*i)++;
    }
    if (*i < n)
        (*i)++; /* the separator */
    return v;
}

/* Decides a complete CSI (f->seq holds parameters and intermediates). */
static void csi_final(nb_termfilter_t *f, outq_t *q, uint8_t fin)
{
    const uint8_t *s = f->seq;
    size_t n = f->seq_len, i = 0, pend, iend;
    uint8_t priv = 0, inter = 0;
    long p1;

    if (f->flags & (F_BAD | F_C1)) {
        drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    if (n && s[0] >= 0x3c && s[0] <= 0x3f)
        priv = s[i++];
    while (i < n && s[i] >= 0x30 && s[i] <= 0x3b)
        i++;
    pend = i;
    while (i < n && s[i] >= 0x20 && s[i] <= 0x2f)
        inter = s[i++];
    iend = i;
    if (iend != n || iend - pend > 2) { /* parameter after intermediate, or '<=>?' inside */
        drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    i = priv ? 1 : 0;
    p1 = next_param(s, pend, &i);
    if (fin == 't' && !priv && !inter) {
        /* Window operations: only fixed-format reports and the title stack.
         * 1-10 move/resize/raise the host window, 20/21 report the
         * icon label/title (guest-chosen text typed back), >= 24 resizes. */
        static const long ok[] = {11, 13, 14, 15, 16, 18, 19, 22, 23};
        int allowed = 0;
        for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++)
            allowed |= p1 == ok[k];
        if (!allowed) {
            drop(f, NB_TERMFILTER_REPORT);
            return;
        }
    }
    if (fin == 'i' && !inter) { /* media copy: printer controller mode */
        drop(f, NB_TERMFILTER_REPORT);
        return;
    }
    if ((fin == 'y' && inter == '*') || (fin == '|' && inter == '#')) {
        /* DECRQCRA / XTREPORTSGR read back what is on the screen, which
         * holds host output from before the session. */
        drop(f, NB_TERMFILTER_REPORT);
        return;
    }
    if (priv == '?' && fin == 'l' && !inter) {
        /* DECANM reset: VT52 mode parses differently from us. */
        size_t j = 1;
        long v;
        while ((v = next_param(s, pend, &j)) >= 0) {
            if (v == 2) {
                drop(f, NB_TERMFILTER_MODE);
                return;
            }
        }
    }
    out_byte(q, 0x1b);
    out_byte(q, '[');
    out_put(q, s, n);
    out_byte(q, fin);
    to_ground(f);
}

/* ------------------------------------------------------------ OSC */

static int osc_keep(uint32_t num, int has_text)
{
    if (num <= 2 || num == 4 || num == 8 || (num >= 10 && num <= 19) || num == 133)
        return has_text;
    if (num == 104 || (num >= 110 && num <= 119))
        return 1; /* resets, with or without arguments */
    return 0;
}

static nb_termfilter_kind_t osc_kind(uint32_t num)
{
    return num == 52 || num == 5522 ? NB_TERMFILTER_CLIPBOARD : NB_TERMFILTER_FEATURE;
}

static int has_prefix_nocase(const uint8_t *p, size_t n, const char *pre)
{
    size_t k = strlen(pre);
    if (n < k)
        return 0;
    for (size_t i = 0; i < k; i++) {
        uint8_t c = p[i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c + 32);
        if (c != (uint8_t)pre[i])
            return 0;
    }
    return 1;
}

/* OSC 8 ; params ; URI: links open only on a click in the terminals that
 * support them; still, only web URLs pass (no file:, ssh:, custom handlers). */
static int link_ok(const uint8_t *t, size_t n)
{
    const uint8_t *semi = memchr(t, ';', n);
    const uint8_t *uri;
    size_t ulen;
    if (!semi)
        return 0;
    uri = semi + 1;
    ulen = n - (size_t)(uri - t);
    return ulen == 0 || has_prefix_nocase(uri, ulen, "http://") ||
           has_prefix_nocase(uri, ulen, "https://");
}

/* A terminated OSC that was kept so far; `st` 1 for ST, 0 for BEL. */
static void osc_final(nb_termfilter_t *f, outq_t *q, int st)
{
    uint32_t num = f->osc_num;
    const uint8_t *text = f->seq;
    size_t tlen = 0;

    if (f->flags & (F_BAD | F_C1)) {
        drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    if (f->flags & F_PT) {
        const uint8_t *semi = memchr(f->seq, ';', f->seq_len);
        text = semi + 1;
        tlen = f->seq_len - (size_t)(text - f->seq);
    } else if (f->seq_len == 0) {
        drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    if (!osc_keep(num, (f->flags & F_PT) != 0)) {
        drop(f, osc_kind(num));
        return;
    }
    if (num > 2 && (f->flags & F_NONASCII)) {
        drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    if (num == 8 && !link_ok(text, tlen)) {
        drop(f, NB_TERMFILTER_FEATURE);
        return;
    }
    out_byte(q, 0x1b);
    out_byte(q, ']');
    out_put(q, f->seq, f->seq_len);
    if (st) {
        out_byte(q, 0x1b);
        out_byte(q, '\\');
    } else {
        out_byte(q, 0x07);
    }
    to_ground(f);
}

/* A character of OSC content (not a terminator or control). */
static void osc_char(nb_termfilter_t *f, uint32_t cp, const uint8_t *raw, size_t rn)
{
    f->str_len += rn;
    if (f->str_len > NB_TERMFILTER_STRING_MAX) {
        /* Oversized: dropped whole, whatever it was. */
        nb_termfilter_kind_t k = (f->flags & F_PT) && !osc_keep(f->osc_num, 1)
                                     ? osc_kind(f->osc_num)
                                     : NB_TERMFILTER_MALFORMED;
        skip_string(f, k, 1);
        return;
    }
    if (!(f->flags & F_PT)) {
        if (cp >= '0' && cp <= '9') {
            f->osc_num = f->osc_num * 10 + (cp - '0');
            if (f->osc_num > OSC_NUM_MAX) {
                skip_string(f, NB_TERMFILTER_MALFORMED, 1);
                return;
            }
            seq_add(f, raw, rn, NB_TERMFILTER_STRING_MAX);
        } else if (cp == ';' && f->seq_len) {
            f->flags |= F_PT;
            if (!osc_keep(f->osc_num, 1)) {
                skip_string(f, osc_kind(f->osc_num), 1);
                return;
            }
            seq_add(f, raw, rn, NB_TERMFILTER_STRING_MAX);
        } else {
            skip_string(f, NB_TERMFILTER_MALFORMED, 1);
        }
        return;
    }
    if (cp == U_INVALID || cp < 0x20 || cp == 0x7f)
        f->flags |= F_BAD;
    if (cp >= 0x80)
        f->flags |= F_NONASCII;
    if (f->osc_num <= 2) {
        if ((f->flags & F_CUT) || f->pt_len + rn > NB_TERMFILTER_TITLE_MAX) {
            f->flags |= F_CUT; /* cut the title, at a character boundary */
            return;
        }
        f->pt_len += rn;
    }
    seq_add(f, raw, rn, NB_TERMFILTER_STRING_MAX);
}

/* ------------------------------------------------------------ units */

static void unit(nb_termfilter_t *f, outq_t *q, uint32_t cp, const uint8_t *raw, size_t rn);

/* A C1 control (8-bit or UTF-8 encoded) in the ground state. */
static void c1_ground(nb_termfilter_t *f, uint32_t cp)
{
    switch (cp) {
    case 0x9b: /* CSI */
        f->state = S_CSI;
        f->flags = F_C1;
        f->seq_len = 0;
        break;
    case 0x9d: /* OSC */
        f->flags = F_C1;
        skip_string(f, NB_TERMFILTER_C1, 1);
        break;
    case 0x90: /* DCS */
    case 0x98: /* SOS */
    case 0x9e: /* PM */
    case 0x9f: /* APC */
        f->flags = F_C1;
        skip_string(f, NB_TERMFILTER_C1, 0);
        break;
    default: /* single C1 controls (IND, NEL, ST, ...) never pass */
        count(f, NB_TERMFILTER_C1);
        break;
    }
}

static void esc_final(nb_termfilter_t *f, outq_t *q, uint8_t fin)
{
    if (f->seq_len == 0) {
        switch (fin) {
        case '[':
            f->state = S_CSI;
            f->flags = 0;
            return;
        case ']':
            f->state = S_OSC;
            f->flags = 0;
            f->osc_num = 0;
            f->str_len = f->pt_len = 0;
            return;
        case 'P': /* DCS */
        case 'X': /* SOS */
        case '^': /* PM */
        case '_': /* APC */
            skip_string(f, NB_TERMFILTER_STRING, 0);
            return;
        case '\\': /* a lone ST (e.g. the tail of a dropped passthrough) */
            to_ground(f);
            return;
        default:
            break;
        }
    }
    if (f->flags & F_BAD) {
        drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    if (f->seq_len && f->seq[0] == '%' && !(f->seq_len == 1 && fin == 'G')) {
        /* DOCS: anything but "ESC % G" (UTF-8) would let the terminal read
         * UTF-8 continuation bytes as 8-bit C1 controls. */
        drop(f, NB_TERMFILTER_MODE);
        return;
    }
    out_byte(q, 0x1b);
    out_put(q, f->seq, f->seq_len);
    out_byte(q, fin);
    to_ground(f);
}

/* Ends the string being read at ST or BEL. */
static void string_end(nb_termfilter_t *f, outq_t *q, int st)
{
    if (f->state == S_OSC || (f->state == S_STR_ESC && (f->flags & F_KEEP))) {
        osc_final(f, q, st);
        return;
    }
    drop(f, (nb_termfilter_kind_t)f->kind);
}

/* Aborts the string being read (ESC x, CAN, SUB, a C1 control). */
static void string_abort(nb_termfilter_t *f)
{
    if (f->state == S_OSC || (f->state == S_STR_ESC && (f->flags & F_KEEP))) {
        nb_termfilter_kind_t k = NB_TERMFILTER_MALFORMED;
        if ((f->flags & F_PT) && !osc_keep(f->osc_num, 1))
            k = osc_kind(f->osc_num);
        drop(f, k);
        return;
    }
    drop(f, (nb_termfilter_kind_t)f->kind);
}

static void unit(nb_termfilter_t *f, outq_t *q, uint32_t cp, const uint8_t *raw, size_t rn)
{
    int is_c1 = cp >= 0x80 && cp <= 0x9f;

    if ((cp == 0x18 || cp == 0x1a) && f->state != S_GROUND) {
        /* CAN/SUB cancel a sequence (and are consumed by the cancel). */
        if (f->state == S_OSC || f->state == S_STR || f->state == S_STR_ESC)
            string_abort(f);
        else
            drop(f, NB_TERMFILTER_MALFORMED);
        return;
    }
    switch (f->state) {
    case S_GROUND:
        if (cp == 0x1b) {
            f->state = S_ESC;
            f->flags = 0;
            f->seq_len = 0;
        } else if (is_c1) {
            c1_ground(f, cp);
        } else if (cp == U_INVALID) {
            static const uint8_t fffd[] = {0xef, 0xbf, 0xbd};
            out_put(q, fffd, sizeof fffd);
        } else {
            out_put(q, raw, rn);
        }
        return;

    case S_ESC:
    case S_ESC_INT:
        if (cp == 0x1b) {
            if (f->state == S_ESC_INT)
                count(f, NB_TERMFILTER_MALFORMED);
            f->state = S_ESC;
            f->flags = 0;
            f->seq_len = 0;
        } else if (cp < 0x20) {
            out_byte(q, (uint8_t)cp); /* C0 controls execute inside sequences */
        } else if (cp < 0x30) {
            f->state = S_ESC_INT;
            seq_add(f, raw, rn, 8);
        } else if (cp < 0x7f) {
            esc_final(f, q, (uint8_t)cp);
        } else if (cp == 0x7f) {
            /* ignored, as the terminal does */
        } else {
            if (f->state == S_ESC_INT)
                count(f, NB_TERMFILTER_MALFORMED);
            to_ground(f);
            unit(f, q, cp, raw, rn);
        }
        return;

    case S_CSI:
        if (cp == 0x1b) {
            drop(f, NB_TERMFILTER_MALFORMED);
            f->state = S_ESC;
        } else if (cp < 0x20) {
            out_byte(q, (uint8_t)cp);
        } else if (cp < 0x40) {
            seq_add(f, raw, rn, NB_TERMFILTER_CSI_MAX);
        } else if (cp < 0x7f) {
            csi_final(f, q, (uint8_t)cp);
        } else if (cp == 0x7f) {
            /* ignored */
        } else {
            drop(f, NB_TERMFILTER_MALFORMED);
            unit(f, q, cp, raw, rn);
        }
        return;

    case S_OSC:
        if (cp == 0x07) {
            osc_final(f, q, 0);
        } else if (cp == 0x9c) {
            osc_final(f, q, 1);
        } else if (cp == 0x1b) {
            f->state = S_STR_ESC;
            f->flags |= F_KEEP | F_IS_OSC;
        } else if (is_c1) {
            string_abort(f);
            unit(f, q, cp, raw, rn);
        } else {
            osc_char(f, cp, raw, rn);
        }
        return;

    case S_STR:
        if (cp == 0x9c || (cp == 0x07 && (f->flags & F_IS_OSC))) {
            string_end(f, q, 1);
        } else if (cp == 0x1b) {
            f->state = S_STR_ESC;
            f->flags &= (uint8_t)~F_KEEP;
        } else if (is_c1) {
            string_abort(f);
            unit(f, q, cp, raw, rn);
        }
        return; /* everything else is skipped */

    case S_STR_ESC:
        if (cp == '\\') {
            string_end(f, q, 1);
        } else {
            /* ESC + anything else aborts the string and starts an escape. */
            string_abort(f);
            f->state = S_ESC;
            unit(f, q, cp, raw, rn);
        }
        return;
    default:
        to_ground(f);
        return;
    }
}

/* ------------------------------------------------------------ UTF-8 */

static void u8_invalid(nb_termfilter_t *f, outq_t *q)
{
    uint8_t raw[4];
    size_t n = f->u8_len;
    memcpy(raw, f->u8, n);
    f->u8_need = f->u8_len = 0;
    unit(f, q, U_INVALID, raw, n);
}

static void byte(nb_termfilter_t *f, outq_t *q, uint8_t b)
{
    if (f->u8_need) {
        if (b >= f->u8_lo && b <= f->u8_hi) {
            f->u8[f->u8_len++] = b;
            f->u8_lo = 0x80;
            f->u8_hi = 0xbf;
            if (--f->u8_need == 0) {
                uint8_t raw[4];
                size_t n = f->u8_len;
                uint32_t cp = f->u8[0] & (0x7f >> n);
                for (size_t i = 1; i < n; i++)
                    cp = (cp << 6) | (f->u8[i] & 0x3f);
                memcpy(raw, f->u8, n);
                f->u8_len = 0;
                unit(f, q, cp, raw, n);
            }
            return;
        }
        u8_invalid(f, q); /* and read b afresh */
    }
    if (b < 0x80 || (b >= 0x80 && b <= 0x9f)) {
        /* ASCII, or a lone 0x80-0x9f: an 8-bit C1 control */
        unit(f, q, b, &b, 1);
        return;
    }
    f->u8[0] = b;
    f->u8_len = 1;
    f->u8_lo = 0x80;
    f->u8_hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) {
        f->u8_need = 1;
    } else if (b >= 0xe0 && b <= 0xef) {
        f->u8_need = 2;
        if (b == 0xe0)
            f->u8_lo = 0xa0; /* no overlongs */
        if (b == 0xed)
            f->u8_hi = 0x9f; /* no surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        f->u8_need = 3;
        if (b == 0xf0)
            f->u8_lo = 0x90;
        if (b == 0xf4)
            f->u8_hi = 0x8f; /* <= U+10FFFF */
    } else {
        u8_invalid(f, q); /* a stray continuation, C0/C1, F5-FF */
    }
}

/* ------------------------------------------------------------ API */

void nb_termfilter_init(nb_termfilter_t *f)
{
    memset(f, 0, sizeof *f);
    to_ground(f);
}

void nb_termfilter_feed(nb_termfilter_t *f, const uint8_t *in, size_t len, nb_termfilter_out_fn out,
                        void *ud)
{
    outq_t q;
    q.n = 0;
    q.fn = out;
    q.ud = ud;
    for (size_t i = 0; i < len; i++) {
        /* Fast path: plain printable ASCII in the ground state. */
        if (f->state == S_GROUND && !f->u8_need && in[i] >= 0x20 && in[i] < 0x7f) {
            size_t j = i;
            while (j < len && in[j] >= 0x20 && in[j] < 0x7f)
                j++;
            out_put(&q, in + i, j - i);
            i = j - 1;
            continue;
        }
        byte(f, &q, in[i]);
    }
    out_flush(&q);
}

void nb_termfilter_finish(nb_termfilter_t *f, nb_termfilter_out_fn out, void *ud)
{
    outq_t q;
    q.n = 0;
    q.fn = out;
    q.ud = ud;
    if (f->u8_need)
        u8_invalid(f, &q);
    switch (f->state) {
    case S_GROUND:
    case S_ESC: /* a lone trailing ESC is not worth a notice */
        break;
    case S_OSC:
    case S_STR:
    case S_STR_ESC:
        string_abort(f);
        break;
    default:
        count(f, NB_TERMFILTER_MALFORMED);
        break;
    }
    to_ground(f);
    out_flush(&q);
}

void nb_termfilter_stats(const nb_termfilter_t *f, nb_termfilter_stats_t *acc)
{
    for (int k = 0; k < NB_TERMFILTER_KINDS; k++)
        acc->blocked[k] += f->st.blocked[k];
    acc->total += f->st.total;
}

static const char *kind_name(nb_termfilter_kind_t k)
{
    static const char *const names[NB_TERMFILTER_KINDS] = {
        [NB_TERMFILTER_CLIPBOARD] = "clipboard write",
        [NB_TERMFILTER_FEATURE] = "terminal feature: file transfer, URL or notification",
        [NB_TERMFILTER_STRING] = "device control or passthrough string",
        [NB_TERMFILTER_REPORT] = "report or window request",
        [NB_TERMFILTER_MODE] = "terminal mode switch",
        [NB_TERMFILTER_C1] = "8-bit control",
        [NB_TERMFILTER_MALFORMED] = "malformed or oversized",
    };
    return (unsigned)k < NB_TERMFILTER_KINDS ? names[k] : "unknown";
}

size_t nb_termfilter_notice(const nb_termfilter_stats_t *st, char *buf, size_t cap)
{
    size_t n = 0;
    const char *sep = " (";
    int w;

    if (cap)
        buf[0] = '\0';
    if (!st->total || !cap)
        return 0;
    w = snprintf(buf, cap, "nilbox: blocked %llu terminal escape sequence%s from the guest",
                 (unsigned long long)st->total, st->total == 1 ? "" : "s");
    n = w < 0 ? 0 : (size_t)w < cap ? (size_t)w : cap - 1;
    for (int k = 0; k < NB_TERMFILTER_KINDS; k++) {
        if (!st->blocked[k])
            continue;
        w = snprintf(buf + n, cap - n, "%s%s", sep, kind_name(k));
        n = w < 0 ? n : n + (size_t)w < cap ? n + (size_t)w : cap - 1;
        sep = ", ";
    }
    w = snprintf(buf + n, cap - n, ")\n");
    n = w < 0 ? n : n + (size_t)w < cap ? n + (size_t)w : cap - 1;
    return n;
}
