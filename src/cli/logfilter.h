/* Guest console text for `nilbox vm logs`: a record to read, not a session.
 * The bytes go through the terminal filter of `shell` (termfilter.h: valid
 * UTF-8, hostile sequences dropped whole, only complete sequences out),
 * then every escape sequence is dropped but colours (SGR, `ESC[...m`) when
 * `colour` is set (stdout is a terminal), and every control byte but
 * newline and tab. So a console's terminal requests (`ESC[6n`, a cursor
 * position query whose answer the user's terminal would type into the
 * shell after `vm logs` exits), titles, clears and cursor moves never reach
 * the terminal or a file. Pure: no I/O, no allocation. */
#ifndef NB_CLI_LOGFILTER_H
#define NB_CLI_LOGFILTER_H

#include <stddef.h>
#include <stdint.h>

#include "lib/termfilter.h"

/* Receives filtered output; `p` is valid only during the call. */
typedef void (*nb_logfilter_out_fn)(void *ud, const uint8_t *p, size_t n);

typedef struct {
    nb_termfilter_t tf;
    int colour;
    nb_logfilter_out_fn out;
    void *ud;
} nb_logfilter_t;

void nb_logfilter_init(nb_logfilter_t *f, int colour, nb_logfilter_out_fn out, void *ud);
/* Filters `len` bytes (any chunking: a sequence may be split anywhere). */
void nb_logfilter_feed(nb_logfilter_t *f, const uint8_t *in, size_t len);
/* End of a log: an unfinished sequence is dropped; `f` is reset. */
void nb_logfilter_finish(nb_logfilter_t *f);

#endif
