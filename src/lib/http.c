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
 * refused (NB_HTTP_ERR_MISMATCH) rather than guessed at. */
#include "lib/http.h"

#include <errno.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"

#define NB_HTTP_MAX_LEADING_CRLF 8
#define NB_HTTP_MAX_CHUNK_LINE 1024 /* size + extensions of one chunk line */
#define NB_HTTP_MAX_CL_DIGITS 18    /* < 2^62: no overflow anywhere downstream */

enum { ST_HEAD, ST_BODY, ST_UPGRADED, ST_ERROR };

/* Shadow scanner states for chunked framing. */
enum {
    CS_SIZE_FIRST,
    CS_SIZE,
    CS_EXT_NAME_START,
    CS_EXT_NAME,
    CS_EXT_VAL_START,
    CS_EXT_TOKEN,
    CS_EXT_QUOTED,
    CS_EXT_AFTER_QUOTE,
    CS_SIZE_LF,
    CS_DATA,
    CS_DATA_CR,
    CS_DATA_LF,
    CS_TRAILER_START,
    CS_TRAILER_NAME,
    CS_TRAILER_VALUE,
    CS_TRAILER_LF,
    CS_END_LF,
    CS_END,
};

struct nb_http_parser {
    nb_http_type_t type;
    nb_http_limits_t lim;
    nb_http_cbs_t cbs;
    void *ud;
    llhttp_t ll;
    llhttp_settings_t settings; /* llhttp keeps a pointer: must live as long as ll */
    int state;
    nb_http_err_t err;
    int cb_rc;      /* a callback's negative return, reported as is */
    int msg_done;   /* set by on_message_complete */
    int next_reset; /* a message finished; reset before the next byte */

    /* head scanning */
    nb_buf_t head;
    size_t line_start;     /* offset of the current line in head */
    size_t start_line_end; /* offset after the start line's CRLF; 0 until seen */
    unsigned leading;      /* empty lines skipped before the start line */
    int lead_cr;           /* a leading CR waits for its LF */
    uint8_t prev;

    nb_http_head_t h;
    nb_http_header_t *hdrs; /* max_headers entries */
    uint64_t body_bytes;

    /* responses: what the request was */
    int resp_to_head, resp_to_connect;

    /* chunk scanner */
    int cs;
    uint64_t chunk_left;
    size_t chunk_line; /* bytes of the current chunk-size line */
    size_t trailer_bytes;
    char tname[24]; /* current trailer name, enough to spot forbidden ones */
    size_t tname_len;
};

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

/* RFC 9110 tchar. */
static int is_tchar(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* field-vchar / SP / HTAB / obs-text; everything else (CTLs, DEL) is refused. */
static int is_value_char(uint8_t c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int is_hex(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_val(uint8_t c)
{
    if (c <= '9')
        return c - '0';
    return (c | 0x20) - 'a' + 10;
}

static int fail(nb_http_parser_t *p, nb_http_err_t e)
{
    if (p->err == NB_HTTP_ERR_NONE)
        p->err = e;
    p->state = ST_ERROR;
    if (p->cb_rc < 0)
        return p->cb_rc;
    switch (p->err) {
    case NB_HTTP_ERR_START_LINE_TOO_BIG:
    case NB_HTTP_ERR_HEADERS_TOO_BIG:
    case NB_HTTP_ERR_TOO_MANY_HEADERS:
    case NB_HTTP_ERR_BODY_TOO_BIG:
    case NB_HTTP_ERR_TRAILERS_TOO_BIG:
        return NB_ETOOBIG;
    default:
        return NB_EPARSE;
    }
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
    if (!(p->hdrs = calloc(p->lim.max_headers, sizeof(*p->hdrs)))) {
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

/* --- head --- */

/* Scans head bytes for the terminating empty line, refusing bare CR/LF and
 * enforcing the start-line and header-block caps as bytes arrive (a peer
 * cannot make us buffer more than the caps). Returns 1 when the head is
 * complete (*used bytes taken), 0 when all bytes were taken, <0 on error. */
static int scan_head(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *used)
{
    size_t i = 0, from, vlen;
    int r;

    *used = 0;
    /* Empty lines before the start line are tolerated (RFC 9112 2.2). */
    while (i < len && p->head.len == 0) {
        uint8_t c = d[i];
        if (p->lead_cr) {
            if (c != '\n')
                return fail(p, NB_HTTP_ERR_BARE_CR);
            p->lead_cr = 0;
            if (++p->leading > NB_HTTP_MAX_LEADING_CRLF)
                return fail(p, NB_HTTP_ERR_MALFORMED);
            i++;
            continue;
        }
        if (c == '\r') {
            p->lead_cr = 1;
            i++;
            continue;
        }
        if (c == '\n')
            return fail(p, NB_HTTP_ERR_BARE_LF);
        break;
    }
    from = i;
    vlen = p->head.len;
    for (; i < len; i++) {
        uint8_t c = d[i], prev = p->prev;
        if (prev == '\r' && c != '\n')
            return fail(p, NB_HTTP_ERR_BARE_CR);
        if (c == '\n' && prev != '\r')
            return fail(p, NB_HTTP_ERR_BARE_LF);
        vlen++;
        p->prev = c;
        if (c == '\n') {
            size_t line_len = vlen - p->line_start - 2;
            if (!p->start_line_end) {
                if (line_len > p->lim.max_start_line)
                    return fail(p, NB_HTTP_ERR_START_LINE_TOO_BIG);
                p->start_line_end = vlen;
            } else if (line_len == 0) {
                i++;
                goto complete;
            }
            p->line_start = vlen;
            continue;
        }
        if (!p->start_line_end) {
            if (vlen > p->lim.max_start_line + 1)
                return fail(p, NB_HTTP_ERR_START_LINE_TOO_BIG);
        } else if (vlen - p->start_line_end > p->lim.max_header_bytes + 1) {
            return fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
        }
    }
    if ((r = nb_buf_append(&p->head, d + from, i - from)) < 0)
        return fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
    *used = len;
    return 0;
complete:
    /* The final CRLF may exceed max_header_bytes by its two bytes only. */
    if (p->start_line_end && vlen - p->start_line_end > p->lim.max_header_bytes + 2)
        return fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
    if ((r = nb_buf_append(&p->head, d + from, i - from)) < 0)
        return fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
    *used = i;
    return 1;
}

static int parse_version(nb_iov_t v, int *minor)
{
    if (nb_iov_eq(v, "HTTP/1.1"))
        *minor = 1;
    else if (nb_iov_eq(v, "HTTP/1.0"))
        *minor = 0;
    else
        return -1;
    return 0;
}

static int validate_start_line(nb_http_parser_t *p, const uint8_t *s, size_t n)
{
    nb_http_head_t *h = &p->h;
    size_t i = 0, a;

    if (p->type == NB_HTTP_REQUEST) {
        /* method SP request-target SP HTTP-version, single spaces */
        while (i < n && is_tchar(s[i]))
            i++;
        if (i == 0 || i == n || s[i] != ' ')
            return fail(p, i == 0 || (i < n && s[i] != ' ') ? NB_HTTP_ERR_METHOD
                                                            : NB_HTTP_ERR_START_LINE);
        h->method = nb_iov(s, i);
        a = ++i;
        while (i < n && s[i] > 0x20 && s[i] < 0x7f)
            i++;
        if (i == a || i == n || s[i] != ' ')
            return fail(p, NB_HTTP_ERR_TARGET);
        h->target = nb_iov(s + a, i - a);
        i++;
        if (parse_version(nb_iov(s + i, n - i), &h->version_minor) < 0)
            return fail(p, NB_HTTP_ERR_VERSION);
        /* CONNECT takes authority-form, OPTIONS may take '*', all others
         * origin-form or absolute-form. */
        if (nb_iov_eq(h->method, "CONNECT")) {
            if (h->target.p[0] == '/' || memchr(h->target.p, '/', h->target.len))
                return fail(p, NB_HTTP_ERR_TARGET);
        } else if (h->target.p[0] == '*') {
            if (h->target.len != 1 || !nb_iov_eq(h->method, "OPTIONS"))
                return fail(p, NB_HTTP_ERR_TARGET);
        } else if (h->target.p[0] != '/' && !memchr(h->target.p, ':', h->target.len)) {
            return fail(p, NB_HTTP_ERR_TARGET);
        }
        return 0;
    }
    /* HTTP-version SP 3DIGIT SP [reason] (a missing " reason" is tolerated) */
    if (n < 12 || parse_version(nb_iov(s, 8), &h->version_minor) < 0)
        return fail(p, n >= 8 && s[8] == ' ' ? NB_HTTP_ERR_VERSION : NB_HTTP_ERR_STATUS);
    if (s[8] != ' ' || s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' ||
        s[11] > '9')
        return fail(p, NB_HTTP_ERR_STATUS);
    h->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    if (n > 12) {
        if (s[12] != ' ')
            return fail(p, NB_HTTP_ERR_STATUS);
        for (i = 13; i < n; i++)
            if (!is_value_char(s[i]))
                return fail(p, NB_HTTP_ERR_STATUS);
        h->reason = nb_iov(s + 13, n - 13);
    }
    return 0;
}

static int valid_host(nb_iov_t v)
{
    for (size_t i = 0; i < v.len; i++) {
        uint8_t c = v.p[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            continue;
        if (!strchr("-._~!$&'()*+,;=:[]%", c) || c == 0)
            return 0;
    }
    return 1;
}

/* Parses a Content-Length value: digits only (no sign, no list, no
 * whitespace inside), bounded. */
static int parse_cl(nb_iov_t v, int64_t *out)
{
    int64_t n = 0;

    if (v.len == 0 || v.len > NB_HTTP_MAX_CL_DIGITS)
        return -1;
    for (size_t i = 0; i < v.len; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        n = n * 10 + (v.p[i] - '0');
    }
    *out = n;
    return 0;
}

/* Validates one header line (without CRLF) and records it. */
static int header_line(nb_http_parser_t *p, const uint8_t *s, size_t n, int *hosts, int *tes)
{
    nb_http_head_t *h = &p->h;
    size_t i = 0, vs, ve;
    nb_iov_t name, value;

    if (s[0] == ' ' || s[0] == '\t')
        return fail(p, NB_HTTP_ERR_OBS_FOLD);
    while (i < n && is_tchar(s[i]))
        i++;
    if (i == n)
        return fail(p, NB_HTTP_ERR_HEADER_NAME);
    if (s[i] != ':') {
        if (i > 0 && (s[i] == ' ' || s[i] == '\t')) {
            size_t j = i;
            while (j < n && (s[j] == ' ' || s[j] == '\t'))
                j++;
            if (j < n && s[j] == ':')
                return fail(p, NB_HTTP_ERR_SPACE_BEFORE_COLON);
        }
        return fail(p, NB_HTTP_ERR_HEADER_NAME);
    }
    if (i == 0)
        return fail(p, NB_HTTP_ERR_HEADER_NAME);
    name = nb_iov(s, i);
    vs = i + 1;
    for (size_t j = vs; j < n; j++)
        if (!is_value_char(s[j]))
            return fail(p, NB_HTTP_ERR_HEADER_VALUE);
    while (vs < n && (s[vs] == ' ' || s[vs] == '\t'))
        vs++;
    ve = n;
    while (ve > vs && (s[ve - 1] == ' ' || s[ve - 1] == '\t'))
        ve--;
    value = nb_iov(s + vs, ve - vs);
    if (h->nheaders >= p->lim.max_headers)
        return fail(p, NB_HTTP_ERR_TOO_MANY_HEADERS);
    p->hdrs[h->nheaders].name = name;
    p->hdrs[h->nheaders].value = value;
    h->nheaders++;

    if (nb_iov_eq_nocase(name, "host")) {
        if (++*hosts > 1)
            return fail(p, NB_HTTP_ERR_DUP_HOST);
        if (!valid_host(value))
            return fail(p, NB_HTTP_ERR_HOST);
    } else if (nb_iov_eq_nocase(name, "content-length")) {
        int64_t cl;
        if (parse_cl(value, &cl) < 0) {
            /* "5, 5" style lists are refused even when the values agree. */
            return fail(p, NB_HTTP_ERR_CL_INVALID);
        }
        if (h->content_length >= 0)
            return fail(p, cl == h->content_length ? NB_HTTP_ERR_CL_DUP : NB_HTTP_ERR_CL_CONFLICT);
        h->content_length = cl;
    } else if (nb_iov_eq_nocase(name, "transfer-encoding")) {
        if (++*tes > 1)
            return fail(p, NB_HTTP_ERR_TE_DUP);
        /* Only the bare "chunked" coding: anything else (gzip, chunked;
         * chunked, identity; "chunked " variants) has been used to make two
         * parsers disagree on the body length. */
        if (!nb_iov_eq_nocase(value, "chunked"))
            return fail(p, NB_HTTP_ERR_TE);
        h->chunked = 1;
    } else if (p->type == NB_HTTP_REQUEST && nb_iov_eq_nocase(name, "expect")) {
        h->has_expect = 1;
        if (nb_iov_eq_nocase(value, "100-continue"))
            h->expect_continue = 1;
    }
    return 0;
}

static int validate_head(nb_http_parser_t *p)
{
    nb_http_head_t *h = &p->h;
    const uint8_t *b = p->head.p;
    size_t pos, end = p->head.len - 2; /* drop the final CRLF */
    int hosts = 0, tes = 0, r;

    h->type = p->type;
    h->content_length = -1;
    h->headers = p->hdrs;
    if ((r = validate_start_line(p, b, p->start_line_end - 2)) < 0)
        return r;
    for (pos = p->start_line_end; pos < end;) {
        const uint8_t *lf = memchr(b + pos, '\n', end - pos);
        size_t n = (size_t)(lf - (b + pos)) - 1; /* scan_head guaranteed CRLF */
        if ((r = header_line(p, b + pos, n, &hosts, &tes)) < 0)
            return r;
        pos += n + 2;
    }
    if (h->chunked && h->content_length >= 0)
        return fail(p, NB_HTTP_ERR_CL_TE);
    if (h->chunked && h->version_minor == 0)
        return fail(p, NB_HTTP_ERR_TE_HTTP10);
    if (p->type == NB_HTTP_REQUEST && h->version_minor == 1 && hosts == 0)
        return fail(p, NB_HTTP_ERR_MISSING_HOST);
    /* A declared body over the cap is refused before any of it arrives;
     * responses that carry no body whatever their Content-Length says are
     * exempt. */
    if (p->lim.max_body && h->content_length > 0 && (uint64_t)h->content_length > p->lim.max_body &&
        !(p->type == NB_HTTP_RESPONSE &&
          (p->resp_to_head || h->status == 204 || h->status == 304 || h->status / 100 == 1)))
        return fail(p, NB_HTTP_ERR_BODY_TOO_BIG);
    return 0;
}

/* --- chunked framing scanner --- */

/* Fields that frame or route a message have no place in trailers (RFC 9110
 * 6.5.1), and llhttp would act on some of them. */
static int forbidden_trailer(const char *n, size_t len)
{
    static const char *const names[] = {
        "content-length", "transfer-encoding", "host", "connection", "proxy-connection",
        "upgrade",        "keep-alive",        "te",   "trailer"};
    if (len > 24)
        return 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (nb_iov_eq_nocase(nb_iov(n, len), names[i]))
            return 1;
    return 0;
}

/* Checks chunked framing in d[0..len). Returns the number of bytes that
 * belong to the current message (stops after its last CRLF), or <0. */
static int chunk_scan(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *n_out)
{
    size_t i = 0;

    while (i < len && p->cs != CS_END) {
        uint8_t c = d[i];
        switch (p->cs) {
        case CS_SIZE_FIRST:
            if (!is_hex(c))
                return fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_SIZE);
            p->chunk_left = (uint64_t)hex_val(c);
            p->chunk_line = 1;
            p->cs = CS_SIZE;
            break;
        case CS_SIZE:
            if (is_hex(c)) {
                if (p->chunk_left >> 59) /* next digit would pass 2^63 */
                    return fail(p, NB_HTTP_ERR_CHUNK_SIZE);
                p->chunk_left = p->chunk_left * 16 + (uint64_t)hex_val(c);
            } else if (c == ';') {
                p->cs = CS_EXT_NAME_START;
            } else if (c == '\r') {
                p->cs = CS_SIZE_LF;
            } else {
                return fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_SIZE);
            }
            if (++p->chunk_line > NB_HTTP_MAX_CHUNK_LINE)
                return fail(p, NB_HTTP_ERR_CHUNK_SIZE);
            break;
        /* Chunk extensions: name[=token|"quoted"] separated by ';', no
         * whitespace, no escapes. Stricter than llhttp on purpose: this
         * scanner must refuse at or before the byte llhttp would, so that
         * the reason does not depend on how the bytes were split. */
        case CS_EXT_NAME_START:
        case CS_EXT_VAL_START:
            if (c == '"' && p->cs == CS_EXT_VAL_START)
                p->cs = CS_EXT_QUOTED;
            else if (is_tchar(c))
                p->cs = p->cs == CS_EXT_NAME_START ? CS_EXT_NAME : CS_EXT_TOKEN;
            else
                return fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_EXT);
            break;
        case CS_EXT_NAME:
        case CS_EXT_TOKEN:
        case CS_EXT_AFTER_QUOTE:
            if (c == '\r')
                p->cs = CS_SIZE_LF;
            else if (c == '\n')
                return fail(p, NB_HTTP_ERR_BARE_LF);
            else if (c == '=' && p->cs == CS_EXT_NAME)
                p->cs = CS_EXT_VAL_START;
            else if (c == ';' && p->cs != CS_EXT_TOKEN)
                p->cs = CS_EXT_NAME_START;
            else if (!is_tchar(c) || p->cs == CS_EXT_AFTER_QUOTE)
                return fail(p, NB_HTTP_ERR_CHUNK_EXT);
            break;
        case CS_EXT_QUOTED:
            if (c == '"')
                p->cs = CS_EXT_AFTER_QUOTE;
            else if (c == '\\' || !is_value_char(c))
                return fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_EXT);
            break;
        case CS_SIZE_LF:
            if (c != '\n')
                return fail(p, NB_HTTP_ERR_BARE_CR);
            if (p->lim.max_body && p->chunk_left > p->lim.max_body)
                return fail(p, NB_HTTP_ERR_BODY_TOO_BIG);
            p->cs = p->chunk_left ? CS_DATA : CS_TRAILER_START;
            break;
        case CS_DATA: {
            size_t take = len - i;
            if (take > p->chunk_left)
                take = (size_t)p->chunk_left;
            p->chunk_left -= take;
            i += take;
            if (!p->chunk_left)
                p->cs = CS_DATA_CR;
            continue;
        }
        case CS_DATA_CR:
            if (c != '\r')
                return fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_FRAMING);
            p->cs = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (c != '\n')
                return fail(p, NB_HTTP_ERR_BARE_CR);
            p->cs = CS_SIZE_FIRST;
            break;
        case CS_TRAILER_START:
            if (c == '\r')
                p->cs = CS_END_LF;
            else if (c == '\n')
                return fail(p, NB_HTTP_ERR_BARE_LF);
            else if (c == ' ' || c == '\t')
                return fail(p, NB_HTTP_ERR_OBS_FOLD);
            else if (!is_tchar(c))
                return fail(p, NB_HTTP_ERR_HEADER_NAME);
            else {
                p->cs = CS_TRAILER_NAME;
                p->tname[0] = (char)c;
                p->tname_len = 1;
            }
            break;
        case CS_TRAILER_NAME:
            if (c == ':') {
                if (forbidden_trailer(p->tname, p->tname_len))
                    return fail(p, NB_HTTP_ERR_TRAILER_FIELD);
                p->cs = CS_TRAILER_VALUE;
            } else if (is_tchar(c) && p->tname_len < sizeof(p->tname))
                p->tname[p->tname_len++] = (char)c;
            else if (is_tchar(c))
                p->tname_len = sizeof(p->tname) + 1; /* too long to matter */
            else if (c == ' ' || c == '\t')
                return fail(p, NB_HTTP_ERR_SPACE_BEFORE_COLON);
            else
                return fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_HEADER_NAME);
            break;
        case CS_TRAILER_VALUE:
            if (c == '\r')
                p->cs = CS_TRAILER_LF;
            else if (c == '\n')
                return fail(p, NB_HTTP_ERR_BARE_LF);
            else if (!is_value_char(c))
                return fail(p, NB_HTTP_ERR_HEADER_VALUE);
            break;
        case CS_TRAILER_LF:
            if (c != '\n')
                return fail(p, NB_HTTP_ERR_BARE_CR);
            p->cs = CS_TRAILER_START;
            break;
        case CS_END_LF:
            if (c != '\n')
                return fail(p, NB_HTTP_ERR_BARE_CR);
            p->cs = CS_END;
            break;
        default:
            return fail(p, NB_HTTP_ERR_MALFORMED);
        }
        if (p->cs >= CS_EXT_NAME_START && p->cs <= CS_EXT_AFTER_QUOTE &&
            ++p->chunk_line > NB_HTTP_MAX_CHUNK_LINE)
            return fail(p, NB_HTTP_ERR_CHUNK_EXT);
        if (p->cs >= CS_TRAILER_START && ++p->trailer_bytes > p->lim.max_trailer_bytes + 2)
            return fail(p, NB_HTTP_ERR_TRAILERS_TOO_BIG);
        i++;
    }
    *n_out = i;
    return 0;
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
    return fail(p, p->err != NB_HTTP_ERR_NONE ? p->err : map_ll_error(e));
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
        return fail(p, NB_HTTP_ERR_STATE);
    }
    if (p->next_reset) {
        if (len == 0)
            return NB_HTTP_MORE;
        reset_message(p);
    }
    if (p->state == ST_HEAD) {
        if ((r = scan_head(p, data, len, &used)) < 0)
            return r;
        off = used;
        if (r == 0) {
            *consumed = len;
            return NB_HTTP_MORE;
        }
        if ((r = validate_head(p)) < 0)
            return r;
        p->cs = CS_SIZE_FIRST;
        if ((r = ll_run(p, p->head.p, p->head.len, &used)) < 0)
            return r;
        if (used != p->head.len) /* llhttp thinks the message ended inside the head */
            return fail(p, NB_HTTP_ERR_MISMATCH);
        if (p->msg_done) {
            *consumed = off;
            return message_done(p);
        }
        p->state = ST_BODY;
    }
    /* ST_BODY */
    if (p->h.chunked) {
        size_t n;
        if ((r = chunk_scan(p, data + off, len - off, &n)) < 0)
            return r;
        if ((r = ll_run(p, data + off, n, &used)) < 0)
            return r;
        /* Both must end the message at the same byte. */
        if ((p->cs == CS_END) != (p->msg_done != 0) || used != n)
            return fail(p, NB_HTTP_ERR_MISMATCH);
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
        return nb_http_parser_in_message(p) ? fail(p, NB_HTTP_ERR_TRUNCATED) : NB_HTTP_MORE;
    /* ST_BODY: only a body delimited by EOF ends cleanly here. */
    if (!llhttp_message_needs_eof(&p->ll))
        return fail(p, NB_HTTP_ERR_TRUNCATED);
    llhttp_finish(&p->ll);
    if (!p->msg_done)
        return fail(p, p->err != NB_HTTP_ERR_NONE ? p->err : NB_HTTP_ERR_TRUNCATED);
    p->h.keep_alive = 0;
    return message_done(p);
}

/* --- helpers --- */

const nb_http_header_t *nb_http_head_find(const nb_http_head_t *h, const char *name)
{
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
