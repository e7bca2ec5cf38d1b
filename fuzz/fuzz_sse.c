/* libFuzzer target for the text/event-stream parser (src/daemon/egress/sse.c).
 *
 * Byte 0 picks a split step, byte 1 small caps or the defaults. The rest
 * is parsed whole and in pieces; the transcripts (events, then the final
 * result) must be identical, and every event respects the caps. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/sse.h"
#include "lib/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    nb_buf_t t;
    size_t max_line, max_data;
} rec_t;

static int on_event(void *ctx, const nb_sse_event_t *ev)
{
    rec_t *r = ctx;
    if (ev->data.len > r->max_data || ev->type.len > r->max_line || ev->id.len > r->max_line)
        abort();
    if (ev->type.len == 0 || memchr(ev->id.p, 0, ev->id.len))
        abort();
    if (memchr(ev->type.p, '\n', ev->type.len) || memchr(ev->type.p, '\r', ev->type.len))
        abort();
    nb_buf_printf(&r->t, "E%zu:", ev->type.len);
    nb_buf_append(&r->t, ev->type.p, ev->type.len);
    nb_buf_printf(&r->t, "D%zu:", ev->data.len);
    nb_buf_append(&r->t, ev->data.p, ev->data.len);
    nb_buf_printf(&r->t, "I%zu:", ev->id.len);
    nb_buf_append(&r->t, ev->id.p, ev->id.len);
    nb_buf_printf(&r->t, "R%lld;", (long long)ev->retry);
    return 0;
}

static void run(const uint8_t *d, size_t n, size_t step, size_t ml, size_t md, rec_t *r)
{
    nb_sse_t p;
    nb_buf_init(&r->t, 1 << 24);
    r->max_line = ml ? ml : NB_SSE_DEFAULT_MAX_LINE;
    r->max_data = md ? md : NB_SSE_DEFAULT_MAX_DATA;
    nb_sse_init(&p, ml, md, on_event, r);
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += step) {
        size_t k = n - off < step ? n - off : step;
        rc = nb_sse_feed(&p, d + off, k);
    }
    int fin = nb_sse_finish(&p);
    if (rc != 0 && fin != rc)
        abort(); /* errors are sticky */
    nb_buf_printf(&r->t, "F%d", fin);
    nb_sse_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = (size_t)data[0] + 1;
    int small = data[1] & 1;
    size_t ml = small ? 8 + (data[1] >> 1) : 0, md = small ? 16 + (size_t)data[1] : 0;
    data += 2;
    size -= 2;
    rec_t a, b;
    run(data, size, size ? size : 1, ml, md, &a);
    run(data, size, step, ml, md, &b);
    /* A cap error may come at a different event count depending on the
     * split only if events before it differ: they must not. */
    if (a.t.len != b.t.len || (a.t.len && memcmp(a.t.p, b.t.p, a.t.len) != 0))
        abort();
    nb_buf_free(&a.t);
    nb_buf_free(&b.t);
    return 0;
}
