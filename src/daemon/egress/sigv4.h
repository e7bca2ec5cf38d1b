/* AWS Signature Version 4: the pieces the proxy needs to check a request
 * signed with the placeholder credentials and sign it again with the real
 * ones (docs/internals/sigv4.md). Pure: no I/O, no allocation except into
 * the caller's nb_buf_t; OpenSSL for SHA-256 and HMAC.
 *
 * Everything a peer sends is a slice (never NUL-terminated); parsers
 * reject what does not have the exact shape AWS clients produce. Derived
 * signing keys are secret: callers keep them in locked memory and wipe. */
#ifndef NB_SIGV4_H
#define NB_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define NB_SIGV4_ALGO "AWS4-HMAC-SHA256"
#define NB_SIGV4_HEX 64 /* a signature or a SHA-256, in lower-case hex */
#define NB_SIGV4_STREAMING "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
/* aws-chunked with trailing headers (a checksum, x-amz-trailer names it):
 * chunks signed and a signed trailer, or chunks and trailer unsigned. */
#define NB_SIGV4_STREAMING_TRAILER "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
#define NB_SIGV4_UNSIGNED_TRAILER "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
#define NB_SIGV4_UNSIGNED "UNSIGNED-PAYLOAD"
/* What the guest holds instead of the real values (its environment). */
#define NB_SIGV4_PH_AKID "AWS_ACCESS_KEY_ID"
#define NB_SIGV4_PH_SECRET "AWS_SECRET_ACCESS_KEY"
#define NB_SIGV4_PH_TOKEN "AWS_SESSION_TOKEN"
#define NB_SIGV4_CANON_MAX (64 * 1024) /* cap of one canonical request */

/* One header (same layout as nb_http_header_t and nb_inject_header_t). */
typedef struct {
    nb_iov_t name;
    nb_iov_t value;
} nb_sigv4_header_t;

/* The signature fields of a request: from an Authorization header or a
 * presigned URL's query. Slices borrow the request (query values still
 * percent-encoded are decoded into `buf`). */
typedef struct {
    nb_iov_t akid, date, region, service; /* Credential=AKID/DATE/REGION/SERVICE/aws4_request */
    nb_iov_t signed_headers;              /* "host;x-amz-date", lower-case, sorted */
    nb_iov_t signature;                   /* 64 hex */
    nb_iov_t amzdate;                     /* presigned: X-Amz-Date (headers: caller finds it) */
    int presigned;
    char buf[512]; /* decoded query values */
} nb_sigv4_auth_t;

/* Parses an Authorization header value "AWS4-HMAC-SHA256 Credential=...,
 * SignedHeaders=..., Signature=...". 0, or NB_EINVAL when it is not one. */
int nb_sigv4_parse_auth(nb_iov_t value, nb_sigv4_auth_t *a);

/* Parses the X-Amz-* parameters of a presigned request target
 * ("/path?X-Amz-Algorithm=AWS4-HMAC-SHA256&..."). 0, NB_ENOTFOUND when
 * the target carries no X-Amz-Signature, NB_EINVAL when malformed. */
int nb_sigv4_parse_query(nb_iov_t target, nb_sigv4_auth_t *a);

/* Canonical request variants. AWS services differ in how they canonicalise
 * the path (S3 signs it as sent; the others encode the sent path once
 * more) and clients differ in how they encode the query; the proxy tries
 * each and keeps the one the guest's signature verifies under. */
enum {
    NB_SIGV4_URI_RAW = 0,  /* path exactly as sent (S3) */
    NB_SIGV4_URI_ENC = 1,  /* sent path normalised, then each byte encoded again */
    NB_SIGV4_Q_RAW = 0,    /* query pairs as sent, sorted */
    NB_SIGV4_Q_NORM = 2,   /* decoded, re-encoded (RFC 3986 unreserved), sorted */
    NB_SIGV4_Q_PRESIGN = 4 /* leave X-Amz-Signature out */
};

/* Appends the canonical request of (method, target, headers) to `out`:
 * `signed_headers` names the headers in order; several headers of one
 * name are joined with ','; values are trimmed and inner runs of spaces
 * collapsed. `payload` is the hash line (64 hex, UNSIGNED-PAYLOAD, ...).
 * 0, NB_EINVAL (a signed header is missing, bad list, bad target) or
 * NB_ETOOBIG (past the buffer's cap). */
int nb_sigv4_canonical(nb_iov_t method, nb_iov_t target, const nb_sigv4_header_t *headers,
                       size_t nheaders, nb_iov_t signed_headers, nb_iov_t payload, int mode,
                       nb_buf_t *out);

/* kSigning = HMAC chain over "AWS4" + secret, date, region, service,
 * "aws4_request". `key` is secret: keep it locked, wipe it. */
void nb_sigv4_key(const uint8_t *secret, size_t slen, nb_iov_t date, nb_iov_t region,
                  nb_iov_t service, uint8_t key[32]);

/* The hex signature of `canonical` at time `amzdate` (YYYYMMDD'T'HHMMSS'Z')
 * under scope date/region/service. sig gets 64 hex + NUL. */
void nb_sigv4_sign(const uint8_t key[32], nb_iov_t amzdate, nb_iov_t date, nb_iov_t region,
                   nb_iov_t service, nb_iov_t canonical, char sig[NB_SIGV4_HEX + 1]);

/* The signature of one aws-chunked chunk whose data hashes to `chash`,
 * chained to the previous signature `prev` (the seed is the header's). */
void nb_sigv4_chunk_sign(const uint8_t key[32], nb_iov_t amzdate, nb_iov_t date, nb_iov_t region,
                         nb_iov_t service, nb_iov_t prev, const uint8_t chash[32],
                         char sig[NB_SIGV4_HEX + 1]);

/* The x-amz-trailer-signature of trailing headers whose canonical form
 * ("name:value\n" per header, in the order sent) hashes to `thash`,
 * chained to the final (0-size) chunk's signature `prev`. */
void nb_sigv4_trailer_sign(const uint8_t key[32], nb_iov_t amzdate, nb_iov_t date, nb_iov_t region,
                           nb_iov_t service, nb_iov_t prev, const uint8_t thash[32],
                           char sig[NB_SIGV4_HEX + 1]);

/* Lower-case hex SHA-256 of p (65 bytes with NUL). */
void nb_sigv4_sha256_hex(const void *p, size_t len, char hex[NB_SIGV4_HEX + 1]);

/* 1 when s is exactly 64 lower-case hex digits. */
int nb_sigv4_is_hex64(nb_iov_t s);

/* Constant-time comparison of two 64-hex signatures. */
int nb_sigv4_sig_eq(nb_iov_t a, const char *b);

/* The real credentials in a secret value: "AKID\nSECRET[\nTOKEN]" or the
 * credentials-file form ("aws_access_key_id = ...", "aws_secret_access_key
 * = ...", "aws_session_token = ..." lines, any order). Slices borrow `v`.
 * 0, or NB_EINVAL (missing parts, characters a header cannot carry). */
typedef struct {
    nb_iov_t akid, secret, token; /* token.len 0: none */
} nb_sigv4_creds_t;
int nb_sigv4_creds_parse(nb_iov_t v, nb_sigv4_creds_t *c);

/* ---- aws-chunked (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) re-signing ---- */

/* An incremental re-signer for an aws-chunked body: it reads chunks
 * "HEX;chunk-signature=SIG\r\nDATA\r\n" ... "0;chunk-signature=SIG\r\n\r\n",
 * checks each SIG against the placeholder key's chain and writes the chunk
 * back with the real key's signature (same length: the body's
 * Content-Length does not change). A chunk's line carries the signature of
 * the data after it, so one chunk (at most NB_SIGV4_CHUNK_MAX) is held
 * until its data is hashed; never more. A chunk whose signature
 * does not verify ends re-signing: it and everything after pass as sent
 * (the upstream rejects them; the real key was never used for them). */
#define NB_SIGV4_CHUNK_MAX (1024 * 1024) /* largest chunk re-signed (one is held) */
#define NB_SIGV4_TRAILER_MAX 4096        /* trailing headers, held whole */
/* Body kinds (nb_sigv4_stream_kind). */
enum {
    NB_SIGV4_CHUNKS_SIGNED = 0,      /* STREAMING-AWS4-HMAC-SHA256-PAYLOAD */
    NB_SIGV4_CHUNKS_SIGNED_TRAILER,  /* STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER */
    NB_SIGV4_CHUNKS_UNSIGNED_TRAILER /* STREAMING-UNSIGNED-PAYLOAD-TRAILER */
};
typedef struct {
    int state;
    int kind;           /* NB_SIGV4_CHUNKS_* */
    const char *why;    /* static: why feeding failed (NULL: the sink's error) */
    char declared[256]; /* x-amz-trailer, lower-case: the trailers allowed */
    nb_buf_t hold;      /* the current chunk: line, data, CRLF */
    size_t line_len;
    uint64_t left; /* data bytes left in the current chunk */
    int last;      /* the 0-size chunk was seen */
    int passthru;  /* verification failed: forward as is */
    char prev_ph[NB_SIGV4_HEX + 1], prev_real[NB_SIGV4_HEX + 1];
    const uint8_t *key_ph, *key_real; /* borrowed, 32 bytes each, locked */
    char amzdate[17], date[9], region[32], service[64];
    uint64_t chunks; /* chunks re-signed (tests, audit) */
} nb_sigv4_stream_t;

typedef int (*nb_sigv4_sink)(void *ctx, const uint8_t *p, size_t len);

/* Sets up `s` to re-sign a body whose header signatures were seed_ph (the
 * guest's) and seed_real (ours). Keys are borrowed until _free. 0,
 * NB_EINVAL (bad scope strings) or -ENOMEM. */
int nb_sigv4_stream_init(nb_sigv4_stream_t *s, const uint8_t *key_ph, const uint8_t *key_real,
                         nb_iov_t amzdate, nb_iov_t date, nb_iov_t region, nb_iov_t service,
                         nb_iov_t seed_ph, const char *seed_real);

/* Makes `s` (just initialised) read a body with trailing headers: kind
 * NB_SIGV4_CHUNKS_SIGNED_TRAILER (each chunk and the trailer re-signed) or
 * NB_SIGV4_CHUNKS_UNSIGNED_TRAILER (nothing to sign: the bytes pass as
 * sent, only their framing is checked). `declared` is the x-amz-trailer
 * value: every trailing header but the signature must be named there.
 * Unlike the plain kind, a signature that does not verify is an error
 * here, never passed on. 0 or NB_EINVAL. */
int nb_sigv4_stream_trailers(nb_sigv4_stream_t *s, int kind, nb_iov_t declared);

/* Feeds body bytes; re-signed output goes to `sink`. 0, the sink's error,
 * NB_EPARSE for a body that is not aws-chunked as declared (bad chunk line,
 * framing, trailer), NB_EAUTH for a chunk or trailer signature that does
 * not verify with the placeholder key (trailer kinds), NB_ETOOBIG for a
 * chunk past NB_SIGV4_CHUNK_MAX or a trailer past NB_SIGV4_TRAILER_MAX
 * (trailer kinds): nb_sigv4_stream_why says what, and the offending bytes
 * were not given to the sink (those before stay given; the caller must
 * abort the upstream request). */
int nb_sigv4_stream_feed(nb_sigv4_stream_t *s, const uint8_t *p, size_t len, nb_sigv4_sink sink,
                         void *ctx);

/* 1 when the final chunk (and trailer) was seen and nothing is pending. */
int nb_sigv4_stream_done(const nb_sigv4_stream_t *s);

/* Why the last feed failed (static text), or NULL when it did not or the
 * sink's own error ended it. */
const char *nb_sigv4_stream_why(const nb_sigv4_stream_t *s);

void nb_sigv4_stream_free(nb_sigv4_stream_t *s); /* wipes; safe on zeroed */

#endif
