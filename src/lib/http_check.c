/* HTTP/1.1 parser: our raw-byte checks in front of llhttp, the head
 * scanner and validator and the chunked framing scanner, and the error
 * state they and http.c put the parser in. A leaf: http.c calls it, never
 * the other way. See the comment at the top of http.c; shared state in
 * http_int.h. */
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/http.h"
#include "lib/http_int.h"

int nb_http_fail(nb_http_parser_t *p, nb_http_err_t e)
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

/* RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~, one bit per ASCII
 * byte (a bitmap, not strchr: this runs for every byte of every header
 * name). */
static int is_tchar(uint8_t c)
{
    static const uint32_t bits[4] = {0x0, 0x3ff6cfa, 0xc7fffffe, 0x57ffffff};
    return c < 128 && (bits[c >> 5] >> (c & 31)) & 1;
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

/* --- head --- */

nb_http_hdr_kind_t nb_http_hdr_kind(nb_iov_t name)
{
    /* By length, then one case-insensitive compare (where names share a
     * length, their first letters tell them apart). */
    nb_http_hdr_kind_t k;
    const char *s;
    uint8_t c0 = name.len ? (uint8_t)(name.p[0] | 0x20) : 0;
    switch (name.len) {
    case 2:
        k = NB_HDR_TE, s = "te";
        break;
    case 4:
        k = NB_HDR_HOST, s = "host";
        break;
    case 6:
        k = NB_HDR_EXPECT, s = "expect";
        break;
    case 7:
        if (c0 == 't')
            k = NB_HDR_TRAILER, s = "trailer";
        else
            k = NB_HDR_UPGRADE, s = "upgrade";
        break;
    case 10:
        if (c0 == 'c')
            k = NB_HDR_CONNECTION, s = "connection";
        else if (c0 == 'k')
            k = NB_HDR_KEEP_ALIVE, s = "keep-alive";
        else
            k = NB_HDR_USER_AGENT, s = "user-agent";
        break;
    case 12:
        k = NB_HDR_CONTENT_TYPE, s = "content-type";
        break;
    case 13:
        k = NB_HDR_AUTHORIZATION, s = "authorization";
        break;
    case 14:
        k = NB_HDR_CONTENT_LENGTH, s = "content-length";
        break;
    case 15:
        k = NB_HDR_ACCEPT_ENCODING, s = "accept-encoding";
        break;
    case 16:
        if (c0 == 'p')
            k = NB_HDR_PROXY_CONNECTION, s = "proxy-connection";
        else
            k = NB_HDR_CONTENT_ENCODING, s = "content-encoding";
        break;
    case 17:
        k = NB_HDR_TRANSFER_ENCODING, s = "transfer-encoding";
        break;
    case 18:
        k = NB_HDR_PROXY_AUTHENTICATE, s = "proxy-authenticate";
        break;
    case 19:
        k = NB_HDR_PROXY_AUTHORIZATION, s = "proxy-authorization";
        break;
    case 24:
        k = NB_HDR_SEC_WEBSOCKET_EXTENSIONS, s = "sec-websocket-extensions";
        break;
    default:
        return NB_HDR_OTHER;
    }
    return nb_iov_eq_nocase(name, s) ? k : NB_HDR_OTHER;
}

/* Scans head bytes for the terminating empty line, refusing bare CR/LF and
 * enforcing the start-line and header-block caps as bytes arrive (a peer
 * cannot make us buffer more than the caps). Returns 1 when the head is
 * complete (*used bytes taken), 0 when all bytes were taken, <0 on error. */
int nb_http_scan_head(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *used)
{
    size_t i = 0, from, vlen;
    int r;

    *used = 0;
    /* Empty lines before the start line are tolerated (RFC 9112 2.2). */
    while (i < len && p->head.len == 0) {
        uint8_t c = d[i];
        if (p->lead_cr) {
            if (c != '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_CR);
            p->lead_cr = 0;
            if (++p->leading > NB_HTTP_MAX_LEADING_CRLF)
                return nb_http_fail(p, NB_HTTP_ERR_MALFORMED);
            i++;
            continue;
        }
        if (c == '\r') {
            p->lead_cr = 1;
            i++;
            continue;
        }
        if (c == '\n')
            return nb_http_fail(p, NB_HTTP_ERR_BARE_LF);
        break;
    }
    from = i;
    vlen = p->head.len;
    for (; i < len; i++) {
        uint8_t c = d[i], prev = p->prev;
        if (prev != '\r' && c != '\r' && c != '\n') {
            /* A run of other bytes up to the next CR or LF: none of them
             * can break a CR/LF rule, and the caps grow with each byte,
             * so checking them after the run's last byte finds exactly
             * what checking each byte would (and nothing is kept on
             * failure either way). */
            size_t j = i + 1;
            while (j < len && d[j] != '\r' && d[j] != '\n')
                j++;
            vlen += j - i;
            if (!p->start_line_end) {
                if (vlen > p->lim.max_start_line + 1)
                    return nb_http_fail(p, NB_HTTP_ERR_START_LINE_TOO_BIG);
            } else if (vlen - p->start_line_end > p->lim.max_header_bytes + 1) {
                return nb_http_fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
            }
            p->prev = d[j - 1];
            i = j - 1;
            continue;
        }
        if (prev == '\r' && c != '\n')
            return nb_http_fail(p, NB_HTTP_ERR_BARE_CR);
        if (c == '\n' && prev != '\r')
            return nb_http_fail(p, NB_HTTP_ERR_BARE_LF);
        vlen++;
        p->prev = c;
        if (c == '\n') {
            size_t line_len = vlen - p->line_start - 2;
            if (!p->start_line_end) {
                if (line_len > p->lim.max_start_line)
                    return nb_http_fail(p, NB_HTTP_ERR_START_LINE_TOO_BIG);
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
                return nb_http_fail(p, NB_HTTP_ERR_START_LINE_TOO_BIG);
        } else if (vlen - p->start_line_end > p->lim.max_header_bytes + 1) {
            return nb_http_fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
        }
    }
    if ((r = nb_buf_append(&p->head, d + from, i - from)) < 0)
        return nb_http_fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
    *used = len;
    return 0;
complete:
    /* The final CRLF may exceed max_header_bytes by its two bytes only. */
    if (p->start_line_end && vlen - p->start_line_end > p->lim.max_header_bytes + 2)
        return nb_http_fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
    if ((r = nb_buf_append(&p->head, d + from, i - from)) < 0)
        return nb_http_fail(p, NB_HTTP_ERR_HEADERS_TOO_BIG);
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
            return nb_http_fail(p, i == 0 || (i < n && s[i] != ' ') ? NB_HTTP_ERR_METHOD
                                                                    : NB_HTTP_ERR_START_LINE);
        h->method = nb_iov(s, i);
        a = ++i;
        while (i < n && s[i] > 0x20 && s[i] < 0x7f)
            i++;
        if (i == a || i == n || s[i] != ' ')
            return nb_http_fail(p, NB_HTTP_ERR_TARGET);
        h->target = nb_iov(s + a, i - a);
        i++;
        if (parse_version(nb_iov(s + i, n - i), &h->version_minor) < 0)
            return nb_http_fail(p, NB_HTTP_ERR_VERSION);
        /* CONNECT takes authority-form, OPTIONS may take '*', all others
         * origin-form or absolute-form. */
        if (nb_iov_eq(h->method, "CONNECT")) {
            if (h->target.p[0] == '/' || memchr(h->target.p, '/', h->target.len))
                return nb_http_fail(p, NB_HTTP_ERR_TARGET);
        } else if (h->target.p[0] == '*') {
            if (h->target.len != 1 || !nb_iov_eq(h->method, "OPTIONS"))
                return nb_http_fail(p, NB_HTTP_ERR_TARGET);
        } else if (h->target.p[0] != '/' && !memchr(h->target.p, ':', h->target.len)) {
            return nb_http_fail(p, NB_HTTP_ERR_TARGET);
        }
        return 0;
    }
    /* HTTP-version SP 3DIGIT SP [reason] (a missing " reason" is tolerated) */
    if (n < 12 || parse_version(nb_iov(s, 8), &h->version_minor) < 0)
        return nb_http_fail(p, n >= 8 && s[8] == ' ' ? NB_HTTP_ERR_VERSION : NB_HTTP_ERR_STATUS);
    if (s[8] != ' ' || s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' ||
        s[11] > '9')
        return nb_http_fail(p, NB_HTTP_ERR_STATUS);
    h->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    if (n > 12) {
        if (s[12] != ' ')
            return nb_http_fail(p, NB_HTTP_ERR_STATUS);
        for (i = 13; i < n; i++)
            if (!is_value_char(s[i]))
                return nb_http_fail(p, NB_HTTP_ERR_STATUS);
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
    nb_http_hdr_kind_t kind;

    if (s[0] == ' ' || s[0] == '\t')
        return nb_http_fail(p, NB_HTTP_ERR_OBS_FOLD);
    while (i < n && is_tchar(s[i]))
        i++;
    if (i == n)
        return nb_http_fail(p, NB_HTTP_ERR_HEADER_NAME);
    if (s[i] != ':') {
        if (i > 0 && (s[i] == ' ' || s[i] == '\t')) {
            size_t j = i;
            while (j < n && (s[j] == ' ' || s[j] == '\t'))
                j++;
            if (j < n && s[j] == ':')
                return nb_http_fail(p, NB_HTTP_ERR_SPACE_BEFORE_COLON);
        }
        return nb_http_fail(p, NB_HTTP_ERR_HEADER_NAME);
    }
    if (i == 0)
        return nb_http_fail(p, NB_HTTP_ERR_HEADER_NAME);
    name = nb_iov(s, i);
    vs = i + 1;
    for (size_t j = vs; j < n; j++)
        if (!is_value_char(s[j]))
            return nb_http_fail(p, NB_HTTP_ERR_HEADER_VALUE);
    while (vs < n && (s[vs] == ' ' || s[vs] == '\t'))
        vs++;
    ve = n;
    while (ve > vs && (s[ve - 1] == ' ' || s[ve - 1] == '\t'))
        ve--;
    value = nb_iov(s + vs, ve - vs);
    if (h->nheaders >= p->lim.max_headers)
        return nb_http_fail(p, NB_HTTP_ERR_TOO_MANY_HEADERS);
    kind = nb_http_hdr_kind(name);
    p->hdrs[h->nheaders].name = name;
    p->hdrs[h->nheaders].value = value;
    p->kinds[h->nheaders] = (uint8_t)kind;
    h->kinds_seen |= 1u << kind;
    h->nheaders++;

    switch (kind) {
    case NB_HDR_HOST:
        if (++*hosts > 1)
            return nb_http_fail(p, NB_HTTP_ERR_DUP_HOST);
        if (!valid_host(value))
            return nb_http_fail(p, NB_HTTP_ERR_HOST);
        break;
    case NB_HDR_CONTENT_LENGTH: {
        int64_t cl;
        if (parse_cl(value, &cl) < 0) {
            /* "5, 5" style lists are refused even when the values agree. */
            return nb_http_fail(p, NB_HTTP_ERR_CL_INVALID);
        }
        if (h->content_length >= 0)
            return nb_http_fail(p, cl == h->content_length ? NB_HTTP_ERR_CL_DUP
                                                           : NB_HTTP_ERR_CL_CONFLICT);
        h->content_length = cl;
        break;
    }
    case NB_HDR_TRANSFER_ENCODING:
        if (++*tes > 1)
            return nb_http_fail(p, NB_HTTP_ERR_TE_DUP);
        /* Only the bare "chunked" coding: anything else (gzip, chunked;
         * chunked, identity; "chunked " variants) has been used to make two
         * parsers disagree on the body length. */
        if (!nb_iov_eq_nocase(value, "chunked"))
            return nb_http_fail(p, NB_HTTP_ERR_TE);
        h->chunked = 1;
        break;
    case NB_HDR_EXPECT:
        if (p->type != NB_HTTP_REQUEST)
            break;
        h->has_expect = 1;
        if (nb_iov_eq_nocase(value, "100-continue"))
            h->expect_continue = 1;
        break;
    default:
        break;
    }
    return 0;
}

int nb_http_validate_head(nb_http_parser_t *p)
{
    nb_http_head_t *h = &p->h;
    const uint8_t *b = p->head.p;
    size_t pos, end = p->head.len - 2; /* drop the final CRLF */
    int hosts = 0, tes = 0, r;

    _Static_assert(NB_HDR_KIND_COUNT_ <= 32, "kinds_seen holds one bit per kind");
    h->type = p->type;
    h->content_length = -1;
    h->headers = p->hdrs;
    h->kinds = p->kinds;
    h->kinds_seen = 0;
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
        return nb_http_fail(p, NB_HTTP_ERR_CL_TE);
    if (h->chunked && h->version_minor == 0)
        return nb_http_fail(p, NB_HTTP_ERR_TE_HTTP10);
    if (p->type == NB_HTTP_REQUEST && h->version_minor == 1 && hosts == 0)
        return nb_http_fail(p, NB_HTTP_ERR_MISSING_HOST);
    /* A declared body over the cap is refused before any of it arrives;
     * responses that carry no body whatever their Content-Length says are
     * exempt. */
    if (p->lim.max_body && h->content_length > 0 && (uint64_t)h->content_length > p->lim.max_body &&
        !(p->type == NB_HTTP_RESPONSE &&
          (p->resp_to_head || h->status == 204 || h->status == 304 || h->status / 100 == 1)))
        return nb_http_fail(p, NB_HTTP_ERR_BODY_TOO_BIG);
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

int nb_http_chunk_scan(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *n_out)
{
    size_t i = 0;

    while (i < len && p->cs != CS_END) {
        uint8_t c = d[i];
        switch (p->cs) {
        case CS_SIZE_FIRST:
            if (!is_hex(c))
                return nb_http_fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_SIZE);
            p->chunk_left = (uint64_t)hex_val(c);
            p->chunk_line = 1;
            p->cs = CS_SIZE;
            break;
        case CS_SIZE:
            if (is_hex(c)) {
                if (p->chunk_left >> 59) /* next digit would pass 2^63 */
                    return nb_http_fail(p, NB_HTTP_ERR_CHUNK_SIZE);
                p->chunk_left = p->chunk_left * 16 + (uint64_t)hex_val(c);
            } else if (c == ';') {
                p->cs = CS_EXT_NAME_START;
            } else if (c == '\r') {
                p->cs = CS_SIZE_LF;
            } else {
                return nb_http_fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_SIZE);
            }
            if (++p->chunk_line > NB_HTTP_MAX_CHUNK_LINE)
                return nb_http_fail(p, NB_HTTP_ERR_CHUNK_SIZE);
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
                return nb_http_fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_EXT);
            break;
        case CS_EXT_NAME:
        case CS_EXT_TOKEN:
        case CS_EXT_AFTER_QUOTE:
            if (c == '\r')
                p->cs = CS_SIZE_LF;
            else if (c == '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_LF);
            else if (c == '=' && p->cs == CS_EXT_NAME)
                p->cs = CS_EXT_VAL_START;
            else if (c == ';' && p->cs != CS_EXT_TOKEN)
                p->cs = CS_EXT_NAME_START;
            else if (!is_tchar(c) || p->cs == CS_EXT_AFTER_QUOTE)
                return nb_http_fail(p, NB_HTTP_ERR_CHUNK_EXT);
            break;
        case CS_EXT_QUOTED:
            if (c == '"')
                p->cs = CS_EXT_AFTER_QUOTE;
            else if (c == '\\' || !is_value_char(c))
                return nb_http_fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_EXT);
            break;
        case CS_SIZE_LF:
            if (c != '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_CR);
            if (p->lim.max_body && p->chunk_left > p->lim.max_body)
                return nb_http_fail(p, NB_HTTP_ERR_BODY_TOO_BIG);
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
                return nb_http_fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_CHUNK_FRAMING);
            p->cs = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (c != '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_CR);
            p->cs = CS_SIZE_FIRST;
            break;
        case CS_TRAILER_START:
            if (c == '\r')
                p->cs = CS_END_LF;
            else if (c == '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_LF);
            else if (c == ' ' || c == '\t')
                return nb_http_fail(p, NB_HTTP_ERR_OBS_FOLD);
            else if (!is_tchar(c))
                return nb_http_fail(p, NB_HTTP_ERR_HEADER_NAME);
            else {
                p->cs = CS_TRAILER_NAME;
                p->tname[0] = (char)c;
                p->tname_len = 1;
            }
            break;
        case CS_TRAILER_NAME:
            if (c == ':') {
                if (forbidden_trailer(p->tname, p->tname_len))
                    return nb_http_fail(p, NB_HTTP_ERR_TRAILER_FIELD);
                p->cs = CS_TRAILER_VALUE;
            } else if (is_tchar(c) && p->tname_len < sizeof(p->tname))
                p->tname[p->tname_len++] = (char)c;
            else if (is_tchar(c))
                p->tname_len = sizeof(p->tname) + 1; /* too long to matter */
            else if (c == ' ' || c == '\t')
                return nb_http_fail(p, NB_HTTP_ERR_SPACE_BEFORE_COLON);
            else
                return nb_http_fail(p, c == '\n' ? NB_HTTP_ERR_BARE_LF : NB_HTTP_ERR_HEADER_NAME);
            break;
        case CS_TRAILER_VALUE:
            if (c == '\r')
                p->cs = CS_TRAILER_LF;
            else if (c == '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_LF);
            else if (!is_value_char(c))
                return nb_http_fail(p, NB_HTTP_ERR_HEADER_VALUE);
            break;
        case CS_TRAILER_LF:
            if (c != '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_CR);
            p->cs = CS_TRAILER_START;
            break;
        case CS_END_LF:
            if (c != '\n')
                return nb_http_fail(p, NB_HTTP_ERR_BARE_CR);
            p->cs = CS_END;
            break;
        default:
            return nb_http_fail(p, NB_HTTP_ERR_MALFORMED);
        }
        if (p->cs >= CS_EXT_NAME_START && p->cs <= CS_EXT_AFTER_QUOTE &&
            ++p->chunk_line > NB_HTTP_MAX_CHUNK_LINE)
            return nb_http_fail(p, NB_HTTP_ERR_CHUNK_EXT);
        if (p->cs >= CS_TRAILER_START && ++p->trailer_bytes > p->lim.max_trailer_bytes + 2)
            return nb_http_fail(p, NB_HTTP_ERR_TRAILERS_TOO_BIG);
        i++;
    }
    *n_out = i;
    return 0;
}
