/* Internal state shared by the HTTP/1.1 parser's modules (not a public
 * interface; the API is lib/http.h):
 *   http.c        the parser: lifecycle, feeding, llhttp glue, helpers
 *   http_check.c  our raw-byte checks: head scanning and validation, the
 *                 chunked framing scanner, and the error state (a leaf:
 *                 it calls nothing in http.c)
 * Pure code (no I/O); see the comment at the top of http.c. */
#ifndef NB_HTTP_INT_H
#define NB_HTTP_INT_H

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/http.h"

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
    uint8_t *kinds;         /* max_headers entries: nb_http_hdr_kind(hdrs[i].name) */
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

/* --- http_check.c */

/* Puts p in the error state with e (the first error wins) and returns the
 * code for the caller: a callback's own negative return, NB_ETOOBIG for
 * cap errors, else NB_EPARSE. */
int nb_http_fail(nb_http_parser_t *p, nb_http_err_t e);

/* Scans head bytes for the terminating empty line, enforcing the caps as
 * bytes arrive. Returns 1 when the head is complete (*used bytes taken), 0
 * when all bytes were taken, or an nb_http_fail() code. */
int nb_http_scan_head(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *used);
/* Checks a complete head (start line, each header, Host/Content-Length/
 * Transfer-Encoding rules). Returns 0 or an nb_http_fail() code. */
int nb_http_validate_head(nb_http_parser_t *p);
/* Checks chunked framing in d[0..len): *n_out is how many bytes belong to
 * the current message (it stops after its last CRLF; llhttp sees only
 * those). Returns 0 or an nb_http_fail() code. */
int nb_http_chunk_scan(nb_http_parser_t *p, const uint8_t *d, size_t len, size_t *n_out);

#endif
