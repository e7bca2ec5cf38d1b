#include "daemon/egress/sse.h"

#include <errno.h>
#include <string.h>

#include "lib/err.h"

static const uint8_t BOM[3] = {0xef, 0xbb, 0xbf};

void nb_sse_init(nb_sse_t *p, size_t max_line, size_t max_data, nb_sse_on_event cb, void *ctx)
{
    memset(p, 0, sizeof(*p));
    p->max_line = max_line ? max_line : NB_SSE_DEFAULT_MAX_LINE;
    p->max_data = max_data ? max_data : NB_SSE_DEFAULT_MAX_DATA;
    p->on_event = cb;
    p->ctx = ctx;
    p->retry = -1;
    nb_buf_init(&p->line, p->max_line);
    nb_buf_init(&p->data, p->max_data);
    nb_buf_init(&p->type, p->max_line);
    nb_buf_init(&p->id, p->max_line);
}

void nb_sse_free(nb_sse_t *p)
{
    nb_buf_free(&p->line);
    nb_buf_free(&p->data);
    nb_buf_free(&p->type);
    nb_buf_free(&p->id);
}

static int dispatch(nb_sse_t *p)
{
    int r = 0;
    if (p->has_data) {
        nb_sse_event_t ev;
        ev.type = p->type.len ? nb_buf_iov(&p->type) : NB_IOV_STR("message");
        ev.data = nb_buf_iov(&p->data);
        if (ev.data.len > 0)
            ev.data.len--; /* the LF after the last data line */
        ev.id = nb_buf_iov(&p->id);
        ev.retry = p->retry;
        p->events++;
        if (p->on_event)
            r = p->on_event(p->ctx, &ev);
    }
    nb_buf_reset(&p->data);
    nb_buf_reset(&p->type);
    p->has_data = 0;
    return r;
}

static int is_field(const uint8_t *f, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n == l && memcmp(f, name, l) == 0;
}

/* One complete line, without its terminator. */
static int process_line(nb_sse_t *p, const uint8_t *s, size_t n)
{
    if (n == 0)
        return dispatch(p);
    if (s[0] == ':')
        return 0; /* comment */
    const uint8_t *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const uint8_t *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }
    int r = 0;
    if (is_field(s, flen, "data")) {
        if ((r = nb_buf_append(&p->data, v, vlen)) == 0 &&
            (r = nb_buf_append(&p->data, "\n", 1)) == 0)
            p->has_data = 1;
    } else if (is_field(s, flen, "event")) {
        nb_buf_reset(&p->type);
        r = nb_buf_append(&p->type, v, vlen);
    } else if (is_field(s, flen, "id")) {
        if (!memchr(v, 0, vlen)) {
            nb_buf_reset(&p->id);
            r = nb_buf_append(&p->id, v, vlen);
        }
    } else if (is_field(s, flen, "retry")) {
        int64_t ms = 0;
        size_t i;
        for (i = 0; i < vlen && v[i] >= '0' && v[i] <= '9' && ms < (INT64_MAX - 9) / 10; i++)
            ms = ms * 10 + (v[i] - '0');
        if (vlen > 0 && i == vlen)
            p->retry = ms;
    }
    return r;
}

int nb_sse_feed(nb_sse_t *p, const uint8_t *data, size_t len)
{
    if (p->state)
        return p->state;
    size_t i = 0;
    int r = 0;
    /* Leading BOM, possibly split across feeds. */
    while (p->bom_pos < 3 && i < len) {
        if (data[i] == BOM[p->bom_pos]) {
            p->bom_pos++;
            i++;
            continue;
        }
        /* Not a BOM after all: the bytes matched so far are line content. */
        if (p->bom_pos > 0 && (r = nb_buf_append(&p->line, BOM, (size_t)p->bom_pos)) < 0)
            goto out;
        p->bom_pos = 3;
    }
    if (p->last_cr && i < len) {
        p->last_cr = 0;
        if (data[i] == '\n')
            i++; /* second half of a CRLF split across feeds */
    }
    while (i < len) {
        /* Find the next CR or LF (memchr: the meter runs every byte of an
         * LLM stream through here). The CR search stops at the LF, so each
         * byte is looked at once. */
        const uint8_t *nl = memchr(data + i, '\n', len - i);
        size_t j = nl ? (size_t)(nl - data) : len;
        const uint8_t *cr = memchr(data + i, '\r', j - i);
        if (cr)
            j = (size_t)(cr - data);
        if (j == len) {
            r = nb_buf_append(&p->line, data + i, len - i);
            goto out;
        }
        if (p->line.len == 0) {
            if (j - i > p->max_line) {
                r = NB_ETOOBIG;
                goto out;
            }
            r = process_line(p, data + i, j - i); /* zero-copy: whole line in this chunk */
        } else if ((r = nb_buf_append(&p->line, data + i, j - i)) == 0) {
            r = process_line(p, p->line.p, p->line.len);
            nb_buf_reset(&p->line);
        }
        if (r != 0)
            goto out;
        if (data[j] == '\r') {
            if (j + 1 == len)
                p->last_cr = 1;
            else if (data[j + 1] == '\n')
                j++;
        }
        i = j + 1;
    }
out:
    if (r != 0)
        p->state = r;
    return r;
}

int nb_sse_finish(nb_sse_t *p)
{
    if (p->state)
        return p->state;
    int discarded = p->has_data || p->line.len > 0 || p->type.len > 0;
    nb_buf_reset(&p->line);
    nb_buf_reset(&p->data);
    nb_buf_reset(&p->type);
    p->has_data = 0;
    return discarded ? 1 : 0;
}
