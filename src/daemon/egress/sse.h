/* Incremental text/event-stream parser (WHATWG HTML, "Server-sent events",
 * section 9.2.6). The proxy forwards SSE bytes to the guest as they arrive
 * and runs this parser beside the stream to see the events (token usage in
 * LLM streams); it never holds back or rewrites the stream itself.
 *
 * Pure, no I/O; feed bytes in any split. Lines end in CRLF, LF or CR (a CR
 * at the end of one chunk and an LF at the start of the next are one line
 * end). A leading UTF-8 BOM is skipped. Fields: event, data, id, retry;
 * comment lines (":...") and unknown fields are ignored. A blank line
 * dispatches the event if at least one data line was seen. At the end of
 * the stream an unfinished event is discarded, as the standard says.
 *
 * Caps: a line longer than caps.max_line or an event whose data grows past
 * caps.max_data fails with NB_ETOOBIG; the parser then stays failed (the
 * forwarder can keep forwarding; only the inspection stops). */
#ifndef NB_SSE_H
#define NB_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define NB_SSE_DEFAULT_MAX_LINE (64 * 1024)
#define NB_SSE_DEFAULT_MAX_DATA (1024 * 1024)

/* One dispatched event. All slices are borrowed and valid only during the
 * callback. `data` has the data lines joined by "\n" (no trailing LF). */
typedef struct {
    nb_iov_t type; /* "message" when no event field was given */
    nb_iov_t data;
    nb_iov_t id;   /* the last event id so far (persists across events) */
    int64_t retry; /* last valid retry value in ms, or -1 */
} nb_sse_event_t;

/* Return 0 to go on; any other value stops the parser, which stays stopped
 * and returns that value from nb_sse_feed(). */
typedef int (*nb_sse_on_event)(void *ctx, const nb_sse_event_t *ev);

typedef struct {
    size_t max_line;
    size_t max_data;
    nb_sse_on_event on_event;
    void *ctx;

    /* private */
    nb_buf_t line; /* a line split across chunks */
    nb_buf_t data; /* data of the event being built */
    nb_buf_t type; /* its event type */
    nb_buf_t id;   /* last event id buffer */
    int64_t retry;
    int has_data;
    int last_cr;
    int bom_pos; /* bytes of the BOM matched so far; 3 once past the start */
    int state;   /* 0 ok, else the sticky result */
    uint64_t events;
} nb_sse_t;

/* Prepares `p`. max_line / max_data of 0 take the defaults. Allocates
 * nothing until bytes arrive. */
void nb_sse_init(nb_sse_t *p, size_t max_line, size_t max_data, nb_sse_on_event cb, void *ctx);

/* Frees the buffers; the struct may be re-initialised afterwards. */
void nb_sse_free(nb_sse_t *p);

/* Parses `len` bytes, calling on_event for every completed event. Returns
 * 0, NB_ETOOBIG, -ENOMEM, or the callback's non-zero value. */
int nb_sse_feed(nb_sse_t *p, const uint8_t *data, size_t len);

/* End of stream. Returns 1 when an unfinished event (or line) was
 * discarded, 0 when the stream ended cleanly, or the sticky error. */
int nb_sse_finish(nb_sse_t *p);

/* Number of events dispatched so far. */
static inline uint64_t nb_sse_events(const nb_sse_t *p)
{
    return p->events;
}

#endif
