/* libFuzzer target for the HTTP/1.1 parser (src/lib/http.c + llhttp).
 *
 * The first input byte picks the message type (request/response), the
 * method a response answers, and a split size; the rest is fed whole and
 * then again in pieces. Beyond "no crash, no leak", it checks the parser's
 * promises: consumed counts stay in bounds, head fields are well-formed,
 * the de-chunked body never exceeds the cap, and the transcript (heads,
 * bodies, message ends, error reason) is the same whatever the split. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY 4096

typedef struct {
    nb_buf_t t;
    const char *method; /* responses: what they answer */
    nb_buf_t body;      /* committed to t when the message completes: body bytes
                      streamed before a framing error depend on the split */
} rec_t;

static void add_iov(nb_buf_t *b, nb_iov_t v)
{
    nb_buf_append(b, v.p, v.len);
    nb_buf_append(b, "|", 1);
}

static int on_head(void *ud, const nb_http_head_t *h)
{
    rec_t *r = ud;

    if (h->version_minor != 0 && h->version_minor != 1)
        abort();
    if (h->chunked && h->content_length >= 0)
        abort(); /* CL + TE must never pass */
    if (h->content_length > MAX_BODY &&
        (h->type == NB_HTTP_REQUEST ||
         !((r->method && !strcmp(r->method, "HEAD")) || h->status / 100 == 1 || h->status == 204 ||
           h->status == 304)))
        abort(); /* a declared body over the cap must be refused up front */
    for (size_t i = 0; i < h->nheaders; i++) {
        const nb_http_header_t *x = &h->headers[i];
        if (x->name.len == 0)
            abort();
        for (size_t k = 0; k < x->value.len; k++)
            if ((x->value.p[k] < 0x20 && x->value.p[k] != '\t') || x->value.p[k] == 0x7f)
                abort();
        if (memchr(x->name.p, ' ', x->name.len) || memchr(x->name.p, ':', x->name.len))
            abort();
        /* The kind the proxy acts on is the name's, case aside. */
        if (h->kinds[i] != nb_http_hdr_kind(x->name) || !(h->kinds_seen & (1u << h->kinds[i])))
            abort();
        if (h->kinds[i] == NB_HDR_CONTENT_LENGTH && h->content_length < 0)
            abort();
        if (h->kinds[i] == NB_HDR_TRANSFER_ENCODING && !h->chunked)
            abort();
    }
    if (h->type == NB_HTTP_REQUEST) {
        if (h->version_minor == 1 && !nb_http_head_find(h, "host"))
            abort();
        add_iov(&r->t, h->method);
        add_iov(&r->t, h->target);
    } else {
        if (h->status < 100 || h->status > 599)
            abort();
    }
    nb_buf_printf(&r->t, "%d %zu %lld %d %d %d;", h->status, h->nheaders,
                  (long long)h->content_length, h->chunked, h->keep_alive, h->upgrade);
    for (size_t i = 0; i < h->nheaders; i++) {
        add_iov(&r->t, h->headers[i].name);
        add_iov(&r->t, h->headers[i].value);
    }
    nb_buf_reset(&r->body);
    return 0;
}

static int on_body(void *ud, const uint8_t *p, size_t len)
{
    rec_t *r = ud;
    if (r->body.len + len > MAX_BODY)
        abort();
    nb_buf_append(&r->body, p, len);
    return 0;
}

static const nb_http_cbs_t cbs = {.on_head = on_head, .on_body = on_body};

static void run(nb_http_type_t type, const char *method, const uint8_t *d, size_t len, size_t step,
                nb_buf_t *out)
{
    nb_http_parser_t *p;
    nb_http_limits_t lim;
    rec_t r;
    size_t off = 0;

    nb_http_limits_default(&lim);
    lim.max_start_line = 256;
    lim.max_header_bytes = 1024;
    lim.max_headers = 16;
    lim.max_body = MAX_BODY;
    lim.max_trailer_bytes = 256;
    nb_buf_init(&r.t, 1 << 20);
    nb_buf_init(&r.body, MAX_BODY);
    r.method = method;
    if (nb_http_parser_new(type, &lim, &cbs, &r, &p) < 0)
        abort();
    if (method)
        nb_http_parser_expect_response_to(p, method);
    while (off < len) {
        size_t n = step && len - off > step ? step : len - off, pos = 0, used;
        while (pos < n) {
            int rc = nb_http_parser_feed(p, d + off + pos, n - pos, &used);
            if (used > n - pos)
                abort();
            pos += used;
            if (rc < 0) {
                nb_http_err_t e = nb_http_parser_error(p);
                if (e == NB_HTTP_ERR_NONE || nb_http_err_status(e) < 400)
                    abort();
                nb_buf_printf(&r.t, "E%s", nb_http_err_token(e));
                goto done;
            }
            if (rc == NB_HTTP_MORE && pos != n)
                abort();
            if (rc == NB_HTTP_DONE || rc == NB_HTTP_UPGRADED) {
                nb_buf_append(&r.t, r.body.p, r.body.len);
                nb_buf_reset(&r.body);
                nb_buf_append_str(&r.t, "D;");
                if (method)
                    nb_http_parser_expect_response_to(p, method);
            }
            if (rc == NB_HTTP_UPGRADED) {
                nb_buf_printf(&r.t, "U%zu", off + pos);
                goto done;
            }
        }
        off += n;
    }
    {
        int rc = nb_http_parser_finish(p);
        if (rc == NB_HTTP_DONE)
            nb_buf_append(&r.t, r.body.p, r.body.len);
        nb_buf_printf(&r.t, "F%d", rc < 0 ? -1 : rc);
    }
done:
    nb_http_parser_free(p);
    nb_buf_free(&r.body);
    *out = r.t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *methods[] = {NULL, "GET", "HEAD", "CONNECT"};
    nb_buf_t a, b;
    nb_http_type_t type;
    const char *method;
    size_t step;

    if (size < 1)
        return 0;
    type = (data[0] & 1) ? NB_HTTP_RESPONSE : NB_HTTP_REQUEST;
    method = type == NB_HTTP_RESPONSE ? methods[(data[0] >> 1) & 3] : NULL;
    step = (size_t)(data[0] >> 3) + 1; /* 1..32 */
    data++;
    size--;
    run(type, method, data, size, 0, &a);
    run(type, method, data, size, step, &b);
    if (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len) != 0))
        abort(); /* the result depends on how bytes were split */
    nb_buf_free(&a);
    nb_buf_free(&b);
    return 0;
}
