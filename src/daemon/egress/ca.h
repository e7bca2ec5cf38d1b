/* The per-install interception CA and the leaf certificates it mints
 * (DESIGN.md section 6 step 2, section 7).
 *
 * CA: ECDSA P-256, self-signed, 10 years, X.509v3 with basicConstraints
 * critical CA:TRUE pathlen:0, keyUsage critical keyCertSign+cRLSign, SKI,
 * AKI, optionally critical nameConstraints (permitted DNS subtrees). Its
 * private key and certificate are kept as sealed internal records of the
 * secret store ("nilbox.ca.key", "nilbox.ca.cert").
 *
 * Leaves: one per host name or IP, signed by the CA, all sharing one P-256
 * key generated per CA instance (never stored): SAN dNSName or iPAddress,
 * EKU serverAuth, keyUsage critical digitalSignature, basicConstraints
 * CA:FALSE, SKI, AKI, random positive 128-bit serial, valid from one hour
 * ago (clock skew) for NB_CA_LEAF_DAYS days. Leaves are kept in an LRU
 * cache (keyed with SipHash under a random key, so a guest choosing names
 * cannot flood one bucket).
 *
 * These certificates pass OpenSSL's X509_V_FLAG_X509_STRICT checks (what
 * Python 3.13 turns on by default); tests/unit/daemon/egress/test_ca.c proves it with
 * `openssl verify -x509_strict` and a Python ssl client.
 *
 * Threading: a CA object, its cache and the SSL_CTX built on it belong to
 * one thread (the loop). Creating a CA (key generation) and loading it
 * (the secret store) block briefly: do that on the thread pool. */
#ifndef NB_CA_H
#define NB_CA_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "daemon/secrets/secrets.h"

#define NB_CA_LEAF_DAYS 7
#define NB_CA_DEFAULT_CACHE 1024
#define NB_CA_KEY_RECORD "nilbox.ca.key"
#define NB_CA_CERT_RECORD "nilbox.ca.cert"

typedef struct nb_ca nb_ca_t;

typedef struct {
    const char *cn;                   /* subject CN; default "nilbox interception CA" */
    const char *const *permitted_dns; /* optional nameConstraints (new CAs only) */
    size_t npermitted;
    size_t cache_max; /* leaves kept; 0 = NB_CA_DEFAULT_CACHE */
} nb_ca_opts_t;

/* Generates a new CA (key and certificate). `opts` may be NULL. */
int nb_ca_create(const nb_ca_opts_t *opts, nb_ca_t **out);

/* Loads the CA from the secret store, or creates and stores one when the
 * store has none. Any other failure (tampered record, key that does not
 * match the certificate) is returned as is: a broken CA is never silently
 * replaced, since guests trust the old one. */
int nb_ca_load_or_create(nb_secrets_t *s, const nb_ca_opts_t *opts, nb_ca_t **out);

void nb_ca_free(nb_ca_t *ca);

/* The CA certificate (borrowed) and its PEM text (malloc'd, NUL-terminated,
 * caller frees) for `nilbox ca export` and the guest trust store. */
X509 *nb_ca_cert(const nb_ca_t *ca);
int nb_ca_cert_pem(const nb_ca_t *ca, char **pem, size_t *len);

/* Returns a leaf for `host` (a normalised DNS name or an IP literal) with
 * one reference for the caller (X509_free it), from the cache or freshly
 * minted. The leaf's key is nb_ca_leaf_key(). NB_EINVAL for a bad name. */
int nb_ca_leaf(nb_ca_t *ca, const char *host, X509 **out);
EVP_PKEY *nb_ca_leaf_key(const nb_ca_t *ca);

/* Cache statistics. */
typedef struct {
    uint64_t hits, misses, evictions;
    size_t size;
} nb_ca_stats_t;
void nb_ca_stats(const nb_ca_t *ca, nb_ca_stats_t *st);

/* ---- the proxy's TLS server side ---- */

/* SSL_CTX for intercepted connections: TLS 1.2+, ALPN "http/1.1" only,
 * no renegotiation, and a server-name callback that mints the leaf for the
 * client's SNI. `ca` must outlive the context. Caller frees with
 * SSL_CTX_free. */
int nb_ca_server_ctx(nb_ca_t *ca, SSL_CTX **out);

/* Tells the server-name callback which name the gate approved for this
 * connection (the CONNECT authority or the fake-IP name); copied. With it
 * set, a ClientHello without SNI gets that name's leaf, and one whose SNI
 * names anything else fails the handshake (A8). Call before SSL_accept. */
int nb_ca_ssl_set_expected(SSL *ssl, const char *name);

enum {
    NB_CA_SNI_NONE = 0,     /* callback not run yet */
    NB_CA_SNI_OK = 1,       /* SNI (or the expected name) served */
    NB_CA_SNI_MISSING = 2,  /* no SNI and no expected name: refused */
    NB_CA_SNI_INVALID = 3,  /* SNI is not a valid name: refused */
    NB_CA_SNI_MISMATCH = 4, /* SNI differs from the expected name: refused (A8) */
    NB_CA_SNI_ERROR = 5,    /* minting failed */
};

/* What the server-name callback decided for `ssl`; when `sni` is not NULL
 * it receives the SNI as sent (borrowed from the SSL object, may be NULL). */
int nb_ca_ssl_sni_status(SSL *ssl, const char **sni);

#endif
