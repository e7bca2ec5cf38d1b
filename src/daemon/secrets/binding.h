/* Secret bindings: where one secret may be injected (DESIGN.md section 6
 * step 3). The types and their validation are pure; storage is in
 * secrets.h (rows MACed with a key derived from the store's data key).
 *
 * Secret names are placeholder names: [A-Za-z_][A-Za-z0-9_]*, at most
 * NB_SECRETS_NAME_MAX bytes (they become environment variable names in the
 * guest, and the injector matches them as whole tokens). */
#ifndef NB_BINDING_H
#define NB_BINDING_H

#include <stdint.h>

#include "lib/buf.h"

#define NB_SECRETS_NAME_MAX 128

/* 1 when `name` is a valid user secret name. */
int nb_secrets_name_valid(const char *name);

typedef enum {
    NB_PLACE_HEADER = 1, /* header `header` with value template `tmpl` */
    NB_PLACE_BASIC = 2,  /* Authorization: Basic base64(user ":" secret) */
    NB_PLACE_QUERY = 3,  /* query parameter `param` */
    NB_PLACE_SIGV4 = 4,  /* AWS SigV4 re-signing (egress/sigv4.h); `user` holds the
                            region and `param` the service it is limited to ("" any) */
} nb_placement_t;

#define NB_BINDING_HEADER_MAX 64
#define NB_BINDING_TMPL_MAX 256
#define NB_BINDING_USER_MAX 128
#define NB_BINDING_PATH_MAX 512
#define NB_BINDING_VM_MAX 64

/* Where one secret may be injected. Strings are NUL-terminated; "" means
 * unset (any path, any VM). */
typedef struct {
    int64_t id;
    char secret[NB_SECRETS_NAME_MAX + 1];
    char host[256];                        /* "api.example.com" or "*.example.com" */
    char path_prefix[NB_BINDING_PATH_MAX]; /* "/v1" matches "/v1" and "/v1/..." */
    int placement;                         /* nb_placement_t */
    char header[NB_BINDING_HEADER_MAX];    /* HEADER: the header name */
    char tmpl[NB_BINDING_TMPL_MAX];        /* HEADER: e.g. "Bearer {secret}" */
    char user[NB_BINDING_USER_MAX];        /* BASIC: the user name; SIGV4: region or "" */
    char param[NB_BINDING_HEADER_MAX];     /* QUERY: the parameter name; SIGV4: service or "" */
    char vm[NB_BINDING_VM_MAX];            /* "" = every VM */
    int allow_cleartext;                   /* also over plain HTTP (A7) */
} nb_binding_t;

/* Fills `b` (after zeroing it) from a header spec like
 * "Authorization: Bearer {secret}" or "x-api-key: {secret}": a token header
 * name, then a template with "{secret}" exactly once and only visible ASCII
 * and spaces. NB_EINVAL otherwise. */
int nb_binding_set_header(nb_binding_t *b, const char *spec);

/* Validates and normalises `b` in place (host pattern lower-cased, path
 * prefix starting with '/', placement fields present and well-formed).
 * 0 or NB_EINVAL. */
int nb_binding_normalize(nb_binding_t *b);

/* 1 when b names `host` (a normalised name or IP literal, as the gate
 * approved it): equal, or for "*.suffix" a name with at least one more
 * label (nb_host_pattern_match). The one host decision for every
 * placement: injection, SigV4 re-signing and whether responses are
 * scanned (A5) all ask it. */
int nb_binding_host_ok(const nb_binding_t *b, const char *host);

/* 1 when request path `path` (origin-form; a "?query" or "#fragment" and
 * what follows are ignored) is under b's path prefix: equal to it or
 * followed by '/'. Always 1 without a prefix. With one, the path must also
 * be clean: it starts with '/' and holds no ';', backslash, "//", dot segment
 * ("/./", "/../", a final "/." or "/..") or percent-encoded '.', '/', backslash,
 * NUL or '%' (either hex case; "%252e" is "%2e" after one decoding), since an
 * upstream may resolve any of those to a path outside the prefix (A4). The one decision for every
 * placement: the injector and the SigV4 re-signer both ask it. */
int nb_binding_path_ok(const nb_binding_t *b, nb_iov_t path);

/* Why a secret may not be placed in header `h` (a static sentence), or
 * NULL when it may. Refused: Host and framing headers (the proxy owns
 * them), hop-by-hop headers such as Proxy-Authorization or Connection
 * (never forwarded, so the binding could never fire), Upgrade, Expect,
 * Accept-Encoding. nb_binding_set_header/_normalize refuse them too. */
const char *nb_binding_header_refusal(const char *h);

/* Why a binding may not use normalised host pattern `host` (a static
 * sentence), or NULL: "*" or a wildcard over a public suffix ("*.com",
 * "*.co.uk"; nb_host_pattern_public). nb_binding_normalize refuses it. */
const char *nb_binding_host_refusal(const char *host);

/* "header", "basic", "query", "sigv4" (static), or NULL for anything else. */
const char *nb_binding_placement_name(int placement);

/* The nb_placement_t for a name above, or 0. */
int nb_binding_placement_parse(const char *name);

#endif
