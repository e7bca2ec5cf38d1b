/* Incremental HTTP/1.1 message parser (requests and responses).
 *
 * Pure: no I/O, no clock. Wraps llhttp (Debian's node-llhttp, strict mode,
 * never lenient) and adds our own validation of the raw header block and of
 * chunked framing, because llhttp alone accepts shapes a smuggling-aware
 * proxy must refuse (obs-fold and bare LF in trailers, for example).
 *
 * Shape of one message:
 *   head   buffered (capped) until CRLF CRLF, validated byte by byte, then
 *          handed to llhttp; on_head fires with slices into the head buffer;
 *   body   streamed through on_body, already de-chunked; chunked framing is
 *          checked by our own shadow scanner before llhttp sees it;
 *   end    on_complete fires, and nb_http_parser_feed() returns
 *          NB_HTTP_DONE with the number of bytes this message used. The
 *          caller feeds the remaining bytes (pipelining) when it is ready.
 *
 * Any rule violation is final for the connection: feed returns a negative
 * code and nb_http_parser_error() names the reason (a short token meant for
 * logs and the X-Nilbox-Reason header) and the HTTP status to answer with.
 * See docs/internals/http.md. Single-threaded; the object is not shared. */
#ifndef NB_HTTP_H
#define NB_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

typedef enum {
    NB_HTTP_REQUEST = 1,
    NB_HTTP_RESPONSE = 2,
} nb_http_type_t;

/* Return values of nb_http_parser_feed() (>= 0). */
enum {
    NB_HTTP_MORE = 0,     /* everything consumed; the message is not finished */
    NB_HTTP_DONE = 1,     /* one message finished; feed the rest afterwards */
    NB_HTTP_UPGRADED = 2, /* message finished and the connection switches protocol
                             (Upgrade+Connection: upgrade, CONNECT, 101, CONNECT 2xx);
                             bytes from *consumed on belong to the new protocol */
};

/* X(id, token, status, message). The token is stable and unique. */
#define NB_HTTP_ERR_TABLE(X)                                                                       \
    X(NB_HTTP_ERR_NONE, "none", 200, "no error")                                                   \
    X(NB_HTTP_ERR_MALFORMED, "malformed", 400, "malformed HTTP message")                           \
    X(NB_HTTP_ERR_BARE_LF, "bare-lf", 400, "line ends with LF without CR")                         \
    X(NB_HTTP_ERR_BARE_CR, "bare-cr", 400, "CR not followed by LF")                                \
    X(NB_HTTP_ERR_OBS_FOLD, "obs-fold", 400, "obsolete header line folding")                       \
    X(NB_HTTP_ERR_SPACE_BEFORE_COLON, "space-before-colon", 400,                                   \
      "whitespace between header name and colon")                                                  \
    X(NB_HTTP_ERR_HEADER_NAME, "invalid-header-name", 400, "invalid header name")                  \
    X(NB_HTTP_ERR_HEADER_VALUE, "control-char-in-header", 400,                                     \
      "control character in header value")                                                         \
    X(NB_HTTP_ERR_START_LINE, "invalid-start-line", 400, "invalid start line")                     \
    X(NB_HTTP_ERR_METHOD, "invalid-method", 400, "invalid method")                                 \
    X(NB_HTTP_ERR_TARGET, "invalid-target", 400, "invalid request target")                         \
    X(NB_HTTP_ERR_VERSION, "invalid-version", 505, "only HTTP/1.0 and HTTP/1.1 are supported")     \
    X(NB_HTTP_ERR_STATUS, "invalid-status", 400, "invalid status line")                            \
    X(NB_HTTP_ERR_MISSING_HOST, "missing-host", 400, "HTTP/1.1 request without Host")              \
    X(NB_HTTP_ERR_DUP_HOST, "duplicate-host", 400, "more than one Host header")                    \
    X(NB_HTTP_ERR_HOST, "invalid-host", 400, "invalid Host header")                                \
    X(NB_HTTP_ERR_CL_INVALID, "invalid-content-length", 400, "invalid Content-Length")             \
    X(NB_HTTP_ERR_CL_DUP, "duplicate-content-length", 400, "more than one Content-Length")         \
    X(NB_HTTP_ERR_CL_CONFLICT, "conflicting-content-length", 400,                                  \
      "Content-Length headers disagree")                                                           \
    X(NB_HTTP_ERR_CL_TE, "content-length-with-transfer-encoding", 400,                             \
      "Content-Length together with Transfer-Encoding")                                            \
    X(NB_HTTP_ERR_TE, "unsupported-transfer-encoding", 400,                                        \
      "Transfer-Encoding other than exactly chunked")                                              \
    X(NB_HTTP_ERR_TE_DUP, "duplicate-transfer-encoding", 400, "more than one Transfer-Encoding")   \
    X(NB_HTTP_ERR_TE_HTTP10, "transfer-encoding-in-http10", 400,                                   \
      "Transfer-Encoding in an HTTP/1.0 message")                                                  \
    X(NB_HTTP_ERR_CHUNK_SIZE, "invalid-chunk-size", 400, "invalid chunk size")                     \
    X(NB_HTTP_ERR_CHUNK_EXT, "invalid-chunk-extension", 400,                                       \
      "invalid or oversized chunk extension")                                                      \
    X(NB_HTTP_ERR_CHUNK_FRAMING, "invalid-chunk-framing", 400, "chunk data not followed by CRLF")  \
    X(NB_HTTP_ERR_TRAILER_FIELD, "forbidden-trailer", 400, "framing or routing field in trailers") \
    X(NB_HTTP_ERR_TRAILERS_TOO_BIG, "trailers-too-large", 431, "trailer section too large")        \
    X(NB_HTTP_ERR_START_LINE_TOO_BIG, "start-line-too-long", 414, "start line too long")           \
    X(NB_HTTP_ERR_HEADERS_TOO_BIG, "headers-too-large", 431, "header block too large")             \
    X(NB_HTTP_ERR_TOO_MANY_HEADERS, "too-many-headers", 431, "too many header fields")             \
    X(NB_HTTP_ERR_BODY_TOO_BIG, "body-too-large", 413, "body exceeds the size cap")                \
    X(NB_HTTP_ERR_MISMATCH, "parser-disagreement", 400, "message framing is ambiguous")            \
    X(NB_HTTP_ERR_TRUNCATED, "truncated", 400, "connection ended inside a message")                \
    X(NB_HTTP_ERR_CALLBACK, "aborted", 500, "message processing aborted")                          \
    X(NB_HTTP_ERR_STATE, "after-upgrade", 400, "data after protocol upgrade")

typedef enum {
#define NB_HTTP_ERR_ENUM(id, tok, st, msg) id,
    NB_HTTP_ERR_TABLE(NB_HTTP_ERR_ENUM)
#undef NB_HTTP_ERR_ENUM
        NB_HTTP_ERR_COUNT_
} nb_http_err_t;

/* Stable token ("bare-lf"), status to answer with (400, 413, 414, 431, 505)
 * and human message for an error. Never NULL; static strings. */
const char *nb_http_err_token(nb_http_err_t e);
int nb_http_err_status(nb_http_err_t e);
const char *nb_http_err_message(nb_http_err_t e);

typedef struct {
    nb_iov_t name;  /* as received (case preserved) */
    nb_iov_t value; /* leading/trailing whitespace removed */
} nb_http_header_t;

/* Header names the parser and the proxy act on. The parser classifies
 * each name once (nb_http_head_t.kinds), so its users compare a small
 * value instead of the name, case-insensitively, once per rule. */
typedef enum {
    NB_HDR_OTHER = 0,
    NB_HDR_HOST,
    NB_HDR_CONTENT_LENGTH,
    NB_HDR_TRANSFER_ENCODING,
    NB_HDR_EXPECT,
    NB_HDR_CONNECTION,
    NB_HDR_KEEP_ALIVE,
    NB_HDR_PROXY_CONNECTION,
    NB_HDR_PROXY_AUTHORIZATION,
    NB_HDR_PROXY_AUTHENTICATE,
    NB_HDR_TE,
    NB_HDR_TRAILER,
    NB_HDR_UPGRADE,
    NB_HDR_AUTHORIZATION,
    NB_HDR_ACCEPT_ENCODING,
    NB_HDR_CONTENT_ENCODING,
    NB_HDR_CONTENT_TYPE,
    NB_HDR_USER_AGENT,
    NB_HDR_SEC_WEBSOCKET_EXTENSIONS,
    NB_HDR_KIND_COUNT_
} nb_http_hdr_kind_t;

/* The kind of header name `name` (ASCII case-insensitive); NB_HDR_OTHER
 * for every name not listed above. */
nb_http_hdr_kind_t nb_http_hdr_kind(nb_iov_t name);

/* A validated message head. All slices borrow from the parser and stay
 * valid until the next nb_http_parser_feed() after this message completed
 * (or until the parser is freed). */
typedef struct {
    nb_http_type_t type;
    nb_iov_t method;   /* requests: "GET" ... */
    nb_iov_t target;   /* requests: as sent (origin/absolute/authority/asterisk form) */
    int status;        /* responses */
    nb_iov_t reason;   /* responses */
    int version_minor; /* HTTP/1.<minor>, 0 or 1 */
    const nb_http_header_t *headers;
    const uint8_t *kinds; /* nb_http_hdr_kind_t of headers[i] */
    uint32_t kinds_seen;  /* bit (1u << kind) set for each kind present */
    size_t nheaders;
    int64_t content_length; /* -1 when absent */
    int chunked;            /* Transfer-Encoding: chunked */
    int keep_alive;         /* the connection may carry another message afterwards */
    int upgrade;            /* this message ends HTTP on the connection (see NB_HTTP_UPGRADED) */
    int expect_continue;    /* request carries "Expect: 100-continue" */
    int has_expect;         /* request carries any Expect header */
} nb_http_head_t;

typedef struct {
    size_t max_start_line;    /* bytes, without CRLF; default 8 KiB */
    size_t max_header_bytes;  /* header lines after the start line; default 32 KiB */
    size_t max_headers;       /* header count; default 100 */
    uint64_t max_body;        /* de-chunked body bytes; 0 means no cap (streaming users) */
    size_t max_trailer_bytes; /* trailer section of chunked bodies; default 4 KiB */
} nb_http_limits_t;

/* Fills `lim` with the defaults above (max_body = 1 MiB). */
void nb_http_limits_default(nb_http_limits_t *lim);

/* Callbacks; all optional. A negative return aborts the parse (feed
 * returns that value, error NB_HTTP_ERR_CALLBACK). */
typedef struct {
    int (*on_head)(void *ud, const nb_http_head_t *head);
    /* De-chunked body bytes, borrowed for the duration of the call. */
    int (*on_body)(void *ud, const uint8_t *p, size_t len);
    int (*on_complete)(void *ud);
} nb_http_cbs_t;

typedef struct nb_http_parser nb_http_parser_t;

/* Creates a parser for a stream of requests or responses. `lim` may be
 * NULL for defaults; `cbs` is copied. 0, NB_EINVAL or -ENOMEM. */
int nb_http_parser_new(nb_http_type_t type, const nb_http_limits_t *lim, const nb_http_cbs_t *cbs,
                       void *ud, nb_http_parser_t **out);

/* Frees the parser; NULL is a no-op. */
void nb_http_parser_free(nb_http_parser_t *p);

/* Response parsers only: the next response answers a request with this
 * method. "HEAD" makes it bodiless, "CONNECT" makes a 2xx an upgrade.
 * Call before the response's first byte is fed. */
void nb_http_parser_expect_response_to(nb_http_parser_t *p, const char *method);

/* Feeds `len` bytes. Stops at the end of a message (NB_HTTP_DONE) or an
 * upgrade (NB_HTTP_UPGRADED); *consumed says how many bytes were used, and
 * the caller feeds the rest later. Returns NB_HTTP_MORE when every byte was
 * used and the message is unfinished. Negative on error (NB_EPARSE,
 * NB_ETOOBIG, or a callback's code); errors are final, as are upgrades. */
int nb_http_parser_feed(nb_http_parser_t *p, const uint8_t *data, size_t len, size_t *consumed);

/* The peer closed its side. Completes a body delimited by EOF (responses
 * without length): returns NB_HTTP_DONE; NB_HTTP_MORE when no message was in
 * progress; NB_EPARSE (NB_HTTP_ERR_TRUNCATED) inside a message. */
int nb_http_parser_finish(nb_http_parser_t *p);

/* 1 when bytes of an unfinished message have been consumed. */
/* After a message is complete and handled: wipes its head now (a parser
 * left idle, e.g. a pooled upstream connection, keeps no copy of it). */
void nb_http_parser_idle(nb_http_parser_t *p);

int nb_http_parser_in_message(const nb_http_parser_t *p);

/* Reason for the last failure (NB_HTTP_ERR_NONE if none). */
nb_http_err_t nb_http_parser_error(const nb_http_parser_t *p);

/* Helpers shared with the server and the proxy. */

/* First header named `name` (ASCII case-insensitive), or NULL. */
const nb_http_header_t *nb_http_head_find(const nb_http_head_t *h, const char *name);
/* First header of kind `k` (not NB_HDR_OTHER), or NULL. */
const nb_http_header_t *nb_http_head_find_kind(const nb_http_head_t *h, nb_http_hdr_kind_t k);

/* 1 when the comma-separated list `v` contains token `tok`
 * (case-insensitive), e.g. Connection: keep-alive, Upgrade. */
int nb_http_list_has_token(nb_iov_t v, const char *tok);

/* Standard reason phrase for a status code ("Not Found"), "" if unknown. */
const char *nb_http_status_text(int status);

#endif
