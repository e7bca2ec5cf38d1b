/* Incremental HTTP/1.1 parser: our strict raw-byte checks in front of
 * llhttp (strict mode). See http.h and docs/internals/http.md.
 *
 * Two layers look at every byte that frames a message:
 *  - the head is buffered and scanned by scan_head()/validate_head() (bare
 *    CR/LF, obs-fold, names, values, Host/Content-Length/Transfer-Encoding
 *    rules, caps) before llhttp parses the same bytes;
 *  - chunked bodies go through chunk_scan() (sizes, extensions, CRLFs,
 *    trailers) and llhttp only ever sees the bytes the scanner accepted.
 * The two must then agree on where the message ends; if not, the message is
 * refused (NB_HTTP_ERR_MISMATCH) rather than guessed at.
 * The raw checks (head scanning and validation, the chunk scanner, the
 * error state) live in http_check.c, which calls nothing here; shared state
 * in http_int.h. */
#include "lib/http.h"

#include <errno.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/http_int.h"

static const struct {
    const char *tok;
    int status;
    const char *msg;
} err_table[] = {
#define NB_HTTP_ERR_ROW(id, tok, st, msg) {tok, st, msg},
    NB_HTTP_ERR_TABLE(NB_HTTP_ERR_ROW)
#undef NB_HTTP_ERR_ROW
};

const char *nb_http_err_token(nb_http_err_t e)
{
    return (unsigned)e < NB_HTTP_ERR_COUNT_ ? err_table[e].tok : "unknown";
}

int nb_http_err_status(nb_http_err_t e)
{
    return (unsigned)e < NB_HTTP_ERR_COUNT_ ? err_table[e].status : 400;
}

const char *nb_http_err_message(nb_http_err_t e)
{
    return (unsigned)e < NB_HTTP_ERR_COUNT_ ? err_table[e].msg : "unknown error";
}

void nb_http_limits_default(nb_http_limits_t *lim)
{
    lim->max_start_line = 8 * 1024;
    lim->max_header_bytes = 32 * 1024;
    lim->max_headers = 100;
    lim->max_body = 1024 * 1024;
    lim->max_trailer_bytes = 4 * 1024;
}

/* --- llhttp callbacks --- */

static int ll_on_headers_complete(llhttp_t *ll)
{
    nb_http_parser_t *p = ll->data;
    nb_http_head_t *h = &p->h;
    int skip = 0;

    /* Both parsers must see the same framing, or the message is ambiguous. */
    if (h->chunked) {
        if (!(ll->flags & F_CHUNKED) || (ll->flags & F_CONTENT_LENGTH))
            goto mismatch;
    } else if (h->content_length >= 0) {
        if (!(ll->flags & F_CONTENT_LENGTH) || (ll->flags & F_TRANSFER_ENCODING) ||
            ll->content_length != (uint64_t)h->content_length)
            goto mismatch;
    } else if (ll->flags & (F_CONTENT_LENGTH | F_TRANSFER_ENCODING | F_CHUNKED)) {
        goto mismatch;
    }
    if (p->type == NB_HTTP_RESPONSE) {
        if (p->resp_to_connect && h->status / 100 == 2)
            skip = 2; /* tunnel established: no body, then raw bytes */
        else if (p->resp_to_head || h->status == 204 || h->status == 304 ||
                 (h->status / 100 == 1 && h->status != 101))
            skip = 1; /* these never have a body, whatever the headers say */
        if (skip)
            ll->flags |= F_SKIPBODY; /* so should_keep_alive sees it now */
    }
    h->upgrade = ll->upgrade || skip == 2;
    h->keep_alive = !h->upgrade && llhttp_should_keep_alive(ll);
    if (p->cbs.on_head) {
        int r = p->cbs.on_head(p->ud, h);
        if (r < 0) {
            p->cb_rc = r;
            p->err = NB_HTTP_ERR_CALLBACK;
            return -1;
        }
    }
    return skip;
mismatch:
    p->err = NB_HTTP_ERR_MISMATCH;
    return -1;
}

static int ll_on_body(llhttp_t *ll, const char *at, size_t len)
{
    nb_http_parser_t *p = ll->data;

    p->body_bytes += len;
    if (p->lim.max_body && p->body_bytes > p->lim.max_body) {
        p->err = NB_HTTP_ERR_BODY_TOO_BIG;
        return HPE_USER;
    }
    if (p->cbs.on_body) {
        int r = p->cbs.on_body(p->ud, (const uint8_t *)at, len);
        if (r < 0) {
            p->cb_rc = r;
            p->err = NB_HTTP_ERR_CALLBACK;
            return HPE_USER;
        }
    }
    return 0;
}

static int ll_on_message_complete(llhttp_t *ll)
{
    nb_http_parser_t *p = ll->data;

    p->msg_done = 1;
    if (p->cbs.on_complete) {
        int r = p->cbs.on_complete(p->ud);
        if (r < 0) {
            p->cb_rc = r;
            p->err = NB_HTTP_ERR_CALLBACK;
            return -1;
        }
    }
    /* Stop at the message boundary: the caller decides when to go on. */
    return HPE_PAUSED;
}

static nb_http_err_t map_ll_error(llhttp_errno_t e)
{
    switch (e) {
    case HPE_INVALID_METHOD:
        return NB_HTTP_ERR_METHOD;
    case HPE_INVALID_URL:
        return NB_HTTP_ERR_TARGET;
    case HPE_INVALID_VERSION:
        return NB_HTTP_ERR_VERSION;
    case HPE_INVALID_STATUS:
        return NB_HTTP_ERR_STATUS;
    case HPE_INVALID_CONTENT_LENGTH:
        return NB_HTTP_ERR_CL_INVALID;
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        return NB_HTTP_ERR_CL_TE;
    case HPE_INVALID_TRANSFER_ENCODING:
        return NB_HTTP_ERR_TE;
    case HPE_INVALID_CHUNK_SIZE:
        return NB_HTTP_ERR_CHUNK_SIZE;
    default:
        return NB_HTTP_ERR_MALFORMED;
    }
}

/* --- lifecycle --- */

int nb_http_parser_new(nb_http_type_t type, const nb_http_limits_t *lim, const nb_http_cbs_t *cbs,
                       void *ud, nb_http_parser_t **out)
{
    nb_http_parser_t *p;

    *out = NULL;
    if (type != NB_HTTP_REQUEST && type != NB_HTTP_RESPONSE)
        return NB_EINVAL;
    if (!(p = calloc(1, sizeof(*p))))
        return -ENOMEM;
    p->type = type;
    if (lim)
        p->lim = *lim;
    else
        nb_http_limits_default(&p->lim);
    if (p->lim.max_start_line == 0 || p->lim.max_headers == 0 || p->lim.max_headers > 100000 ||
        p->lim.max_start_line > (1u << 24) || p->lim.max_header_bytes > (1u << 26) ||
        p->lim.max_trailer_bytes > (1u << 24)) {
        free(p);
        return NB_EINVAL;
    }
    if (cbs)
        p->cbs = *cbs;
    p->ud = ud;
    if (!(p->hdrs = calloc(p->lim.max_headers, sizeof(*p->hdrs))) ||
        !(p->kinds = calloc(p->lim.max_headers, 1))) {
        free(p->hdrs);
        free(p);
        return -ENOMEM;
    }
    /* start line + CRLF + header lines + final CRLF */
    nb_buf_init(&p->head, p->lim.max_start_line + p->lim.max_header_bytes + 4);
    llhttp_settings_init(&p->settings);
    p->settings.on_headers_complete = ll_on_headers_complete;
    p->settings.on_body = ll_on_body;
    p->settings.on_message_complete = ll_on_message_complete;
    llhttp_init(&p->ll, type == NB_HTTP_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &p->settings);
    p->ll.data = p;
    p->h.content_length = -1;
    p->state = ST_HEAD;
    *out = p;
    return 0;
}

void nb_http_parser_free(nb_http_parser_t *p)
{
    if (!p)
        return;
    nb_buf_free(&p->head);
    free(p->hdrs);
    free(p->kinds);
    free(p);
}

void nb_http_parser_expect_response_to(nb_http_parser_t *p, const char *method)
{
    p->resp_to_head = method && strcmp(method, "HEAD") == 0;
    p->resp_to_connect = method && strcmp(method, "CONNECT") == 0;
}

nb_http_err_t nb_http_parser_error(const nb_http_parser_t *p)
{
    return p->err;
}

int nb_http_parser_in_message(const nb_http_parser_t *p)
{
    if (p->state == ST_BODY)
        return 1;
    if (p->state != ST_HEAD || p->next_reset)
        return 0;
    return p->head.len > 0 || p->lead_cr;
}

/* Prepares for the next message after one finished. */
static void reset_message(nb_http_parser_t *p)
{
    nb_buf_reset(&p->head);
    p->line_start = 0;
    p->start_line_end = 0;
    p->leading = 0;
    p->lead_cr = 0;
    p->prev = 0;
    memset(&p->h, 0, sizeof(p->h));
    p->h.content_length = -1;
    p->body_bytes = 0;
    p->msg_done = 0;
    p->next_reset = 0;
    p->cs = CS_SIZE_FIRST;
    p->chunk_left = 0;
    p->chunk_line = 0;
    p->trailer_bytes = 0;
    llhttp_resume(&p->ll);
}

void nb_http_parser_idle(nb_http_parser_t *p)
{
    /* The finished message's head (which can echo a secret value) is
     * wiped now rather than when the next message starts. */
    if (p && p->next_reset)
        reset_message(p);
}

/* --- feeding --- */

/* Runs llhttp over d[0..len). Returns bytes used (all of them unless the
 * message completed) via *used; <0 on error. */
static int ll_run(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *used)
{
    llhttp_errno_t e;

    *used = 0;
    if (len == 0)
        return 0;
    e = llhttp_execute(&p->ll, (const char *)d, len);
    if (e == HPE_OK) {
        *used = len;
        return 0;
    }
    if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && p->msg_done) {
        *used = (size_t)((const uint8_t *)llhttp_get_error_pos(&p->ll) - d);
        return 0;
    }
    return nb_http_fail(p, p->err != NB_HTTP_ERR_NONE ? p->err : map_ll_error(e));
}

static int message_done(nb_http_parser_t *p)
{
    p->next_reset = 1;
    if (p->h.upgrade) {
        p->state = ST_UPGRADED;
        return NB_HTTP_UPGRADED;
    }
    p->state = ST_HEAD;
    return NB_HTTP_DONE;
}

int nb_http_parser_feed(nb_http_parser_t *p, const uint8_t *data, size_t len, size_t *consumed)
{
    size_t off = 0, used;
    int r;

    *consumed = 0;
    if (p->state == ST_ERROR)
        return p->cb_rc < 0 ? p->cb_rc : NB_EPARSE;
    if (p->state == ST_UPGRADED) {
        if (len == 0)
            return NB_HTTP_UPGRADED;
        return nb_http_fail(p, NB_HTTP_ERR_STATE);
    }
    if (p->next_reset) {
        if (len == 0)
            return NB_HTTP_MORE;
        reset_message(p);
    }
    if (p->state == ST_HEAD) {
        if ((r = nb_http_scan_head(p, data, len, &used)) < 0)
            return r;
        off = used;
        if (r == 0) {
            *consumed = len;
            return NB_HTTP_MORE;
        }
        if ((r = nb_http_validate_head(p)) < 0)
            return r;
        p->cs = CS_SIZE_FIRST;
        if ((r = ll_run(p, p->head.p, p->head.len, &used)) < 0)
            return r;
        if (used != p->head.len) /* llhttp thinks the message ended inside the head */
            return nb_http_fail(p, NB_HTTP_ERR_MISMATCH);
        if (p->msg_done) {
            *consumed = off;
            return message_done(p);
        }
        p->state = ST_BODY;
    }
    /* ST_BODY */
    if (p->h.chunked) {
        size_t n;
        if ((r = nb_http_chunk_scan(p, data + off, len - off, &n)) < 0)
            return r;
        if ((r = ll_run(p, data + off, n, &used)) < 0)
            return r;
        /* Both must end the message at the same byte. */
        if ((p->cs == CS_END) != (p->msg_done != 0) || used != n)
            return nb_http_fail(p, NB_HTTP_ERR_MISMATCH);
    } else if ((r = ll_run(p, data + off, len - off, &used)) < 0) {
        return r;
    }
    off += used;
    *consumed = off;
    if (p->msg_done)
        return message_done(p);
    return NB_HTTP_MORE;
}

int nb_http_parser_finish(nb_http_parser_t *p)
{
    if (p->state == ST_ERROR)
        return p->cb_rc < 0 ? p->cb_rc : NB_EPARSE;
    if (p->state == ST_UPGRADED || p->next_reset)
        return NB_HTTP_MORE;
    if (p->state == ST_HEAD)
        return nb_http_parser_in_message(p) ? nb_http_fail(p, NB_HTTP_ERR_TRUNCATED) : NB_HTTP_MORE;
    /* ST_BODY: only a body delimited by EOF ends cleanly here. */
    if (!llhttp_message_needs_eof(&p->ll))
        return nb_http_fail(p, NB_HTTP_ERR_TRUNCATED);
    llhttp_finish(&p->ll);
    if (!p->msg_done)
        return nb_http_fail(p, p->err != NB_HTTP_ERR_NONE ? p->err : NB_HTTP_ERR_TRUNCATED);
    p->h.keep_alive = 0;
    return message_done(p);
}

/* --- helpers --- */

const nb_http_header_t *nb_http_head_find_kind(const nb_http_head_t *h, nb_http_hdr_kind_t k)
{
    if (k == NB_HDR_OTHER || !h->kinds || !(h->kinds_seen & (1u << k)))
        return NULL;
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->kinds[i] == k)
            return &h->headers[i];
    return NULL;
}

const nb_http_header_t *nb_http_head_find(const nb_http_head_t *h, const char *name)
{
    nb_iov_t n = nb_iov(name, strlen(name));
    nb_http_hdr_kind_t k = h->kinds ? nb_http_hdr_kind(n) : NB_HDR_OTHER;

    if (k != NB_HDR_OTHER)
        return nb_http_head_find_kind(h, k);
    for (size_t i = 0; i < h->nheaders; i++)
        if (nb_iov_eq_nocase(h->headers[i].name, name))
            return &h->headers[i];
    return NULL;
}

int nb_http_list_has_token(nb_iov_t v, const char *tok)
{
    size_t i = 0;

    while (i < v.len) {
        size_t s, e;
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        s = i;
        while (i < v.len && v.p[i] != ',')
            i++;
        e = i;
        while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
            e--;
        if (e > s && nb_iov_eq_nocase(nb_iov(v.p + s, e - s), tok))
            return 1;
    }
    return 0;
}

const char *nb_http_status_text(int status)
{
    static const struct {
        int status;
        const char *text;
    } tab[] = {
        {100, "Continue"},
        {101, "Switching Protocols"},
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {204, "No Content"},
        {301, "Moved Permanently"},
        {302, "Found"},
        {303, "See Other"},
        {304, "Not Modified"},
        {307, "Temporary Redirect"},
        {308, "Permanent Redirect"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {406, "Not Acceptable"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {410, "Gone"},
        {411, "Length Required"},
        {412, "Precondition Failed"},
        {413, "Content Too Large"},
        {414, "URI Too Long"},
        {415, "Unsupported Media Type"},
        {417, "Expectation Failed"},
        {421, "Misdirected Request"},
        {422, "Unprocessable Content"},
        {426, "Upgrade Required"},
        {428, "Precondition Required"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (tab[i].status == status)
            return tab[i].text;
    return "";
}
