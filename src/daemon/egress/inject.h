/* Credential injection into an inspected request head (DESIGN.md section
 * 6 step 3; THREATS.md A2, A3, A4, A7, A9).
 *
 * Rules the code enforces:
 *  - The only secrets ever fetched are those of bindings that match the
 *    approved destination (host pattern, VM scope, path prefix, cleartext
 *    permission). A name written in the request is never looked up (A2):
 *    it only selects among those bindings by exact comparison.
 *  - A secret is substituted only in its binding's placement, and only
 *    where the placeholder (the secret's name) sits exactly as the binding
 *    says: the whole header value equal to the template with {secret}
 *    replaced by the name ("Bearer OPENAI_API_KEY"); Basic credentials
 *    equal to base64("user:NAME"); a query parameter whose raw name is the
 *    binding's and whose raw value is the name. Anything else stays as the
 *    guest sent it: the placeholder itself is the harmless dummy (A4).
 *  - Every other occurrence of any known secret name, as a whole token, in
 *    the request target or a header value (also inside Basic credentials)
 *    is reported as a leak attempt with its kind (A3 other host, A4 wrong
 *    placement, A7 cleartext, A9 other VM). The caller audits it and may
 *    block the request by policy.
 *  - Values that would break the header syntax (CR, LF, NUL, other
 *    controls) are refused, never written.
 *
 * The rewritten head is built in locked memory (sodium_malloc) and must be
 * wiped with nb_inject_out_wipe() once written to the upstream.
 * Pure apart from the value callback; not thread-safe per output object. */
#ifndef NB_INJECT_H
#define NB_INJECT_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/egress/redact.h"
#include "daemon/secrets/secrets.h"
#include "lib/buf.h"

#define NB_INJECT_MAX_REPORT 16
#define NB_INJECT_WHERE_MAX 80
#define NB_INJECT_WORK_DEFAULT 8192

typedef struct {
    nb_iov_t name;
    nb_iov_t value;
} nb_inject_header_t;

/* A parsed request head (slices borrowed from the HTTP parser). */
typedef struct {
    nb_iov_t method;
    nb_iov_t target;   /* origin-form, absolute-form, authority-form or "*" */
    int version_minor; /* HTTP/1.x */
    const nb_inject_header_t *headers;
    size_t nheaders;
} nb_inject_req_t;

/* Where the request goes, as approved by the gate. */
typedef struct {
    const char *host; /* normalised name or IP literal (nb_hostname / nb_ip_format) */
    const char *vm;   /* "" or NULL for none */
    int tls;          /* 1: intercepted TLS; 0: plain HTTP */
    int watch;        /* 1: nb_inject_head also does what nb_inject_watch does */
} nb_inject_dest_t;

/* Writes the value of the secret of binding `b` into `buf` (locked memory
 * owned by the injector, `cap` bytes) and its length to *len. Return 0, a
 * negative error, or NB_ETOOBIG when cap is too small (the injector then
 * retries once with room for NB_SECRETS_VALUE_MAX bytes). Only ever called
 * with bindings the injector matched (A2). nb_secrets_unseal_to() fits. */
typedef int (*nb_inject_get_fn)(void *ctx, const nb_binding_t *b, uint8_t *buf, size_t cap,
                                size_t *len);

typedef enum {
    NB_LEAK_OTHER_HOST = 1, /* A3: no binding of this secret for this host */
    NB_LEAK_PLACEMENT = 2,  /* A4: bound here, but not in this place */
    NB_LEAK_CLEARTEXT = 3,  /* A7: bound here, but not over plain HTTP */
    NB_LEAK_OTHER_VM = 4,   /* A9: bound here for another VM */
} nb_leak_kind_t;

typedef struct {
    char secret[NB_SECRETS_NAME_MAX + 1];
    int kind;                        /* nb_leak_kind_t */
    char where[NB_INJECT_WHERE_MAX]; /* "header:x-api-key", "target", "basic:authorization" */
} nb_inject_leak_t;

typedef struct {
    char secret[NB_SECRETS_NAME_MAX + 1];
    int64_t binding_id;
    int placement;
} nb_inject_done_t;

typedef struct {
    uint8_t *p; /* the rewritten head, sodium_malloc */
    size_t len, cap;
    uint8_t *work; /* locked scratch for values and their encodings; wiped per call */
    size_t work_cap, work_used;
    size_t ninjected;
    nb_inject_done_t injected[NB_INJECT_MAX_REPORT];
    size_t nleaks; /* may exceed NB_INJECT_MAX_REPORT; only that many are kept */
    nb_inject_leak_t leaks[NB_INJECT_MAX_REPORT];
} nb_inject_out_t;

/* Allocates an output able to hold a head of `cap` bytes, plus its work
 * area (locked memory). Keep one per connection and reuse it: allocating
 * locked memory costs several system calls. 0 or -ENOMEM. */
int nb_inject_out_init(nb_inject_out_t *o, size_t cap);

/* Wipes the head bytes after use (keeps the buffer). */
void nb_inject_out_wipe(nb_inject_out_t *o);

/* Wipes and frees. Safe on a zeroed struct. */
void nb_inject_out_free(nb_inject_out_t *o);

/* Builds the upstream head for `req` going to `dest`: request line, the
 * headers in their order with substitutions made, and the final CRLF.
 * `bindings` are all bindings (the function picks); `known` are the names
 * of all secrets, watched for leak reports (binding names are watched
 * anyway). When `redact` is not NULL, every injected value (and its
 * encoded form) is registered there with its placeholder as replacement.
 * Returns 0, NB_EINVAL (unusable secret value), NB_ETOOBIG (head over the
 * output cap), NB_EDENIED (absolute-form target naming another host or
 * carrying userinfo, A1), NB_EPROTO (a header a value would go into
 * appears more than once: which one the upstream reads is not ours to
 * guess, so none gets the value, A4), or the callback's error; on error
 * out->len is 0. */
int nb_inject_head(const nb_inject_req_t *req, const nb_inject_dest_t *dest,
                   const nb_binding_t *bindings, size_t nbindings, const char *const *known,
                   size_t nknown, nb_inject_get_fn get, void *ctx, nb_redact_t *redact,
                   nb_inject_out_t *out);

/* Registers with `redact` the value (and, for Basic bindings, the base64
 * credential) of every secret that a binding makes visible to dest->vm,
 * whatever its host, path or placement, and of every secret bound to
 * dest->host for any VM, each replaced by its name. The
 * proxy calls it for every request toward a host with bindings, so that a
 * value is caught in any later response, not only in the answer to the
 * request it was injected into (A5: stored, then fetched; one host
 * storing and another serving). Values pass through out's locked work
 * area and are wiped. 0, the callback's / redactor's error, or
 * NB_EUNSUPPORTED when more are bound than NB_REDACT_MAX_NEEDLES can hold
 * (the caller must then refuse: the response could not be scanned). */
int nb_inject_watch(const nb_inject_dest_t *dest, const nb_binding_t *bindings, size_t nbindings,
                    nb_inject_get_fn get, void *ctx, nb_redact_t *redact, nb_inject_out_t *out);

/* "A3", "A4", "A7", "A9" for a leak kind (audit rows). */
const char *nb_inject_leak_threat(int kind);

#endif
