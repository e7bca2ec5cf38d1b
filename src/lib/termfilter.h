/* A streaming filter for guest output on its way to the user's terminal
 * (THREATS.md A20). Pure: no I/O, no allocation; feed it bytes in chunks of
 * any size (a sequence may be split at any byte) and it calls `out` with
 * what may reach the terminal. Rules, states and caps: docs/internals/termfilter.md.
 *
 * What comes out is always valid UTF-8 without C1 controls, and every ESC in
 * it starts a complete, allowed sequence, so the terminal is back in its
 * ground state after each piece (stdout and stderr may therefore be filtered
 * separately and interleaved). Clipboard writes (OSC 52), terminal features
 * (file transfer, iTerm2, notifications), DCS/APC/PM/SOS strings (tmux
 * passthrough), reports that would type guest-chosen text into the session,
 * and 8-bit C1 introducers are dropped whole and counted. */
#ifndef NB_LIB_TERMFILTER_H
#define NB_LIB_TERMFILTER_H

#include <stddef.h>
#include <stdint.h>

#define NB_TERMFILTER_STRING_MAX 4096 /* OSC longer than this: dropped whole */
#define NB_TERMFILTER_TITLE_MAX 256   /* window titles are cut to this many bytes */
#define NB_TERMFILTER_CSI_MAX 256     /* CSI/ESC sequences longer than this: dropped */

/* Why a sequence was dropped (one count per sequence). */
typedef enum {
    NB_TERMFILTER_CLIPBOARD, /* OSC 52, kitty OSC 5522 */
    NB_TERMFILTER_FEATURE,   /* other OSC: iTerm2 1337, kitty 5113, notifications, links */
    NB_TERMFILTER_STRING,    /* DCS (tmux passthrough, DECRQSS), APC, PM, SOS */
    NB_TERMFILTER_REPORT,    /* title report, screen checksum, window ops, media copy */
    NB_TERMFILTER_MODE,      /* leaving UTF-8 (ESC % @), VT52 mode */
    NB_TERMFILTER_C1,        /* 8-bit C1 controls and the sequences they introduce */
    NB_TERMFILTER_MALFORMED, /* oversized, aborted or invalid sequences */
    NB_TERMFILTER_KINDS
} nb_termfilter_kind_t;

typedef struct {
    uint64_t blocked[NB_TERMFILTER_KINDS];
    uint64_t total;
} nb_termfilter_stats_t;

/* Receives filtered output; `p` is valid only during the call. */
typedef void (*nb_termfilter_out_fn)(void *ud, const uint8_t *p, size_t n);

/* The filter state: fixed size (about 4.2 KiB), no heap. Treat as opaque. */
typedef struct {
    uint8_t state;
    uint8_t flags;
    uint8_t kind;    /* kind counted if the current sequence is dropped */
    uint8_t u8_need; /* UTF-8 continuation bytes still expected */
    uint8_t u8_lo;   /* valid range of the next continuation byte */
    uint8_t u8_hi;
    uint8_t u8_len;
    uint8_t u8[4];    /* the pending UTF-8 sequence */
    uint32_t osc_num; /* OSC Ps while it is read */
    size_t str_len;   /* raw bytes of the current string (for the cap) */
    size_t pt_len;    /* kept bytes of the OSC text part (title cap) */
    size_t seq_len;
    uint8_t seq[NB_TERMFILTER_STRING_MAX];
    nb_termfilter_stats_t st;
} nb_termfilter_t;

/* Resets `f` to the ground state with zero counts. */
void nb_termfilter_init(nb_termfilter_t *f);

/* Filters `len` bytes of `in` (borrowed), calling `out(ud, ...)` zero or
 * more times with the bytes to write. Bytes of an incomplete sequence or
 * UTF-8 character are held in `f` until the next call. */
void nb_termfilter_feed(nb_termfilter_t *f, const uint8_t *in, size_t len, nb_termfilter_out_fn out,
                        void *ud);

/* End of stream: an incomplete UTF-8 character becomes U+FFFD, an
 * unfinished sequence is dropped (and counted). `f` is back in ground state. */
void nb_termfilter_finish(nb_termfilter_t *f, nb_termfilter_out_fn out, void *ud);

/* Adds the counts of `f` to `*acc` (zero it first; several filters, e.g.
 * stdout and stderr, may be summed). */
void nb_termfilter_stats(const nb_termfilter_t *f, nb_termfilter_stats_t *acc);

/* Formats the one-line notice for the user ("nilbox: blocked 2 terminal
 * escape sequences from the guest (clipboard write)\n") into `buf` (always
 * NUL-terminated when cap > 0). Returns its length, 0 when nothing was blocked. */
size_t nb_termfilter_notice(const nb_termfilter_stats_t *st, char *buf, size_t cap);

#endif
