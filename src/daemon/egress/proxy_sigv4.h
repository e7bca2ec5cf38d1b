/* AWS SigV4 re-signing for the proxy engine (docs/internals/sigv4.md).
 *
 * On a host with a SigV4 binding, a request signed with the placeholder
 * credentials (NB_SIGV4_PH_*) is checked with the placeholder secret and,
 * when its signature holds, signed again with the real credentials: the
 * Authorization header or the presigned query, the session token, and
 * each aws-chunked chunk as it passes. Anything else (another key id, a
 * signature that does not verify, a shape we do not know) is left exactly
 * as sent: it was not made with our secret and cannot carry it.
 *
 * Knows nothing of connections: proxy_http.c gives it header slices and
 * body bytes. Values and derived keys live in this object's locked memory
 * and are wiped at each reset. Loop thread only. */
#ifndef NB_PROXY_SIGV4_H
#define NB_PROXY_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/egress/inject.h"
#include "daemon/egress/sigv4.h"

#define NB_PXSV4_BODY_MAX (8 * 1024 * 1024) /* body held to hash it (no payload hash header) */

typedef struct nb_pxsv4 nb_pxsv4_t;

/* Allocates (locked memory). 0 or -ENOMEM. */
int nb_pxsv4_new(nb_pxsv4_t **out);
/* Wipes per-request state (values, keys, held body); keeps the memory. */
void nb_pxsv4_reset(nb_pxsv4_t *s);
void nb_pxsv4_free(nb_pxsv4_t *s); /* NULL is a no-op */

/* At the request head: whether the request is a candidate (signed with
 * the placeholder key id toward a host with a SigV4 binding usable here)
 * and, if so, whether its body must be held to hash it (an Authorization
 * header without x-amz-content-sha256 and a body: the signature covers the
 * body's hash). Returns 0 (not ours), 1 (candidate), 2 (candidate, hold
 * the body). */
int nb_pxsv4_classify(nb_pxsv4_t *s, const nb_inject_dest_t *dest, const nb_binding_t *b, size_t nb,
                      const nb_sigv4_header_t *h, size_t nh, nb_iov_t target, int has_body);

/* classify's last answer (0 after a reset; NULL gives 0). */
int nb_pxsv4_classify_result(const nb_pxsv4_t *s);

/* Holds body bytes (classify returned 2). 0 or NB_ETOOBIG past
 * NB_PXSV4_BODY_MAX. */
int nb_pxsv4_hold(nb_pxsv4_t *s, const uint8_t *p, size_t len);
nb_iov_t nb_pxsv4_held(const nb_pxsv4_t *s);

/* Re-signs a classified request. `orig`/`orig_target` are the guest's
 * head (what it signed); `hv` (capacity hcap) and *target are what goes
 * upstream: the Authorization value, the session token and the presigned
 * query are replaced there (pointing into s, valid until the next reset).
 * Returns 1 re-signed, 0 left as sent (why: nb_pxsv4_why), or a negative
 * error (the value could not be read: the caller answers 502). */
int nb_pxsv4_resign(nb_pxsv4_t *s, const nb_inject_dest_t *dest, const nb_binding_t *b, size_t nb,
                    nb_inject_get_fn get, void *ctx, nb_iov_t method, const nb_sigv4_header_t *orig,
                    size_t norig, nb_iov_t orig_target, nb_sigv4_header_t *hv, size_t *nhv,
                    size_t hcap, nb_iov_t *target);

/* After a successful resign: 1 when the body is aws-chunked and must go
 * through nb_pxsv4_feed. */
int nb_pxsv4_streaming(const nb_pxsv4_t *s);
/* 0, or nb_sigv4_stream_feed's error: with nb_pxsv4_feed_why set the body
 * is bad (NB_EPARSE, NB_ETOOBIG) or not signed with the placeholder
 * (NB_EAUTH) and the request must be refused; without, the sink failed. */
int nb_pxsv4_feed(nb_pxsv4_t *s, const uint8_t *p, size_t len, nb_sigv4_sink sink, void *ctx);
const char *nb_pxsv4_feed_why(const nb_pxsv4_t *s);
/* 0 when an aws-chunked body being re-signed has not ended (final chunk,
 * trailer): its request must not be completed upstream. */
int nb_pxsv4_done(const nb_pxsv4_t *s);

/* Why the last classify/resign left the request alone (static), the
 * binding used and its secret's name (audit), chunks re-signed. */
const char *nb_pxsv4_why(const nb_pxsv4_t *s);
int64_t nb_pxsv4_binding(const nb_pxsv4_t *s);
const char *nb_pxsv4_secret(const nb_pxsv4_t *s);
uint64_t nb_pxsv4_chunks(const nb_pxsv4_t *s);

#endif
