#include "daemon/egress/ca.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sodium.h>

#include "lib/hostname.h"
#include "lib/err.h"
#include "lib/log.h"

#define CA_DAYS 3650
#define BACKDATE_SECS 3600
#define REMINT_MARGIN (24 * 3600) /* re-mint a cached leaf this long before it expires */

typedef struct leaf_ent {
    char host[NB_HOSTNAME_BUFSZ];
    X509 *cert;
    time_t expires;
    uint64_t hash;
    struct leaf_ent *prev, *next; /* LRU list, most recent at head */
    struct leaf_ent *hnext;       /* bucket chain */
} leaf_ent_t;

struct nb_ca {
    EVP_PKEY *key;
    X509 *cert;
    EVP_PKEY *leaf_key;
    size_t cache_max, nbuckets;
    leaf_ent_t **buckets;
    leaf_ent_t *head, *tail;
    uint8_t hkey[crypto_shorthash_KEYBYTES];
    nb_ca_stats_t stats;
};

static void log_ossl(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    nb_log(NB_LOG_ERR, "ca: %s: %s", what, e ? buf : "unknown error");
    ERR_clear_error();
}

/* ---- certificate building -------------------------------------------------- */

static int set_serial(X509 *x)
{
    uint8_t s[16];
    if (RAND_bytes(s, sizeof(s)) != 1)
        return -1;
    s[0] = (uint8_t)((s[0] & 0x7f) | 0x40); /* positive, always 16 bytes */
    BIGNUM *bn = BN_bin2bn(s, sizeof(s), NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok ? 0 : -1;
}

static int add_ext(X509 *issuer, X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static int set_name(X509_NAME *n, const char *cn)
{
    if (!X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"nilbox", -1, -1,
                                    0))
        return -1;
    if (cn && strlen(cn) <= 64 &&
        !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0))
        return -1;
    return 0;
}

static X509 *make_ca_cert(EVP_PKEY *key, const nb_ca_opts_t *o)
{
    X509 *x = X509_new();
    const char *cn = o && o->cn ? o->cn : "nilbox interception CA";
    if (!x || !X509_set_version(x, X509_VERSION_3) || set_serial(x) < 0 ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -BACKDATE_SECS) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)CA_DAYS * 86400) ||
        set_name(X509_get_subject_name(x), cn) < 0 ||
        !X509_set_issuer_name(x, X509_get_subject_name(x)) || !X509_set_pubkey(x, key))
        goto fail;
    /* SKI before AKI: the AKI of a self-signed cert copies its own SKI. */
    if (add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        add_ext(x, x, NID_subject_key_identifier, "hash") < 0 ||
        add_ext(x, x, NID_authority_key_identifier, "keyid:always") < 0)
        goto fail;
    if (o && o->npermitted) {
        char nc[4096];
        size_t off = (size_t)snprintf(nc, sizeof(nc), "critical");
        for (size_t i = 0; i < o->npermitted; i++) {
            char norm[NB_HOSTNAME_BUFSZ];
            const char *d = o->permitted_dns[i];
            if (nb_hostname_normalize(d, strlen(d), norm, sizeof(norm)) < 0)
                goto fail; /* also keeps ',' and ';' out of the config string */
            int n = snprintf(nc + off, sizeof(nc) - off, ",permitted;DNS:%s", norm);
            if (n < 0 || (size_t)n >= sizeof(nc) - off)
                goto fail;
            off += (size_t)n;
        }
        if (add_ext(x, x, NID_name_constraints, nc) < 0)
            goto fail;
    }
    if (!X509_sign(x, key, EVP_sha256()))
        goto fail;
    return x;
fail:
    log_ossl("building the CA certificate");
    X509_free(x);
    return NULL;
}

/* The SAN, built as ASN.1 objects rather than a config string. */
static int add_san(X509 *x, const char *host, const nb_ipaddr_t *ip)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    int ok = 0;
    if (!gens || !gn)
        goto out;
    if (ip) {
        ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
        if (!os || !ASN1_OCTET_STRING_set(os, ip->a, ip->family == AF_INET ? 4 : 16)) {
            ASN1_OCTET_STRING_free(os);
            goto out;
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, os);
    } else {
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (!s || !ASN1_STRING_set(s, host, (int)strlen(host))) {
            ASN1_IA5STRING_free(s);
            goto out;
        }
        GENERAL_NAME_set0_value(gn, GEN_DNS, s);
    }
    if (!sk_GENERAL_NAME_push(gens, gn))
        goto out;
    gn = NULL;
    ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1;
out:
    GENERAL_NAME_free(gn);
    sk_GENERAL_NAME_pop_free(gens, GENERAL_NAME_free);
    return ok ? 0 : -1;
}

static X509 *mint(nb_ca_t *ca, const char *host, const nb_ipaddr_t *ip, time_t now, time_t *exp)
{
    X509 *x = X509_new();
    time_t nb = now - BACKDATE_SECS, na = now + (time_t)NB_CA_LEAF_DAYS * 86400;
    if (!x || !X509_set_version(x, X509_VERSION_3) || set_serial(x) < 0 ||
        !X509_time_adj(X509_getm_notBefore(x), 0, &nb) ||
        !X509_time_adj(X509_getm_notAfter(x), 0, &na))
        goto fail;
    if (X509_cmp_time(X509_get0_notAfter(ca->cert), &na) < 0) {
        /* Never outlive the CA. */
        if (!X509_set1_notAfter(x, X509_get0_notAfter(ca->cert)))
            goto fail;
    }
    /* CN only for names: verifiers that fall back to the CN must not read
     * an IP leaf as a DNS name. */
    if (set_name(X509_get_subject_name(x), ip ? NULL : host) < 0 ||
        !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
        !X509_set_pubkey(x, ca->leaf_key))
        goto fail;
    if (add_ext(ca->cert, x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(ca->cert, x, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(ca->cert, x, NID_ext_key_usage, "serverAuth") < 0 || add_san(x, host, ip) < 0 ||
        add_ext(ca->cert, x, NID_subject_key_identifier, "hash") < 0 ||
        add_ext(ca->cert, x, NID_authority_key_identifier, "keyid:always") < 0)
        goto fail;
    if (!X509_sign(x, ca->key, EVP_sha256()))
        goto fail;
    *exp = na;
    return x;
fail:
    log_ossl("minting a leaf");
    X509_free(x);
    return NULL;
}

/* ---- CA object ----------------------------------------------------------- */

static int ca_init(nb_ca_t *ca, const nb_ca_opts_t *o)
{
    ca->cache_max = o && o->cache_max ? o->cache_max : NB_CA_DEFAULT_CACHE;
    ca->nbuckets = 16;
    while (ca->nbuckets < ca->cache_max * 2)
        ca->nbuckets *= 2;
    ca->buckets = calloc(ca->nbuckets, sizeof(*ca->buckets));
    if (!ca->buckets)
        return -ENOMEM;
    crypto_shorthash_keygen(ca->hkey);
    ca->leaf_key = EVP_EC_gen("P-256");
    if (!ca->leaf_key) {
        log_ossl("leaf key");
        return NB_ECRYPTO;
    }
    return 0;
}

int nb_ca_create(const nb_ca_opts_t *opts, nb_ca_t **out)
{
    *out = NULL;
    nb_ca_t *ca = calloc(1, sizeof(*ca));
    if (!ca)
        return -ENOMEM;
    int r = ca_init(ca, opts);
    if (r < 0)
        goto fail;
    r = NB_ECRYPTO;
    if (!(ca->key = EVP_EC_gen("P-256"))) {
        log_ossl("CA key");
        goto fail;
    }
    if (!(ca->cert = make_ca_cert(ca->key, opts)))
        goto fail;
    *out = ca;
    return 0;
fail:
    nb_ca_free(ca);
    return r;
}

void nb_ca_free(nb_ca_t *ca)
{
    if (!ca)
        return;
    for (leaf_ent_t *e = ca->head, *n; e; e = n) {
        n = e->next;
        X509_free(e->cert);
        free(e);
    }
    free(ca->buckets);
    EVP_PKEY_free(ca->key);
    EVP_PKEY_free(ca->leaf_key);
    X509_free(ca->cert);
    free(ca);
}

X509 *nb_ca_cert(const nb_ca_t *ca)
{
    return ca->cert;
}

EVP_PKEY *nb_ca_leaf_key(const nb_ca_t *ca)
{
    return ca->leaf_key;
}

void nb_ca_stats(const nb_ca_t *ca, nb_ca_stats_t *st)
{
    *st = ca->stats;
}

int nb_ca_cert_pem(const nb_ca_t *ca, char **pem, size_t *len)
{
    *pem = NULL;
    *len = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || !PEM_write_bio_X509(b, ca->cert)) {
        BIO_free(b);
        return -ENOMEM;
    }
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *out = malloc((size_t)n + 1);
    if (!out) {
        BIO_free(b);
        return -ENOMEM;
    }
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    BIO_free(b);
    *pem = out;
    *len = (size_t)n;
    return 0;
}

/* Seals the CA's key and certificate into the store. */
static int ca_save(const nb_ca_t *ca, nb_secrets_t *s)
{
    uint8_t *kder = NULL, *cder = NULL;
    int r = NB_ECRYPTO;
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(ca->key);
    int kl = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &kder) : -1;
    int cl = i2d_X509(ca->cert, &cder);
    if (kl <= 0 || cl <= 0)
        goto out;
    if ((r = nb_secrets_put_internal(s, NB_CA_KEY_RECORD, kder, (size_t)kl)) < 0)
        goto out;
    r = nb_secrets_put_internal(s, NB_CA_CERT_RECORD, cder, (size_t)cl);
out:
    if (kder)
        OPENSSL_clear_free(kder, (size_t)kl);
    OPENSSL_free(cder);
    PKCS8_PRIV_KEY_INFO_free(p8);
    return r;
}

static int ca_load(nb_secrets_t *s, const nb_ca_opts_t *opts, nb_ca_t **out)
{
    nb_secret_value_t kv = {0}, cv = {0};
    PKCS8_PRIV_KEY_INFO *p8 = NULL;
    nb_ca_t *ca = calloc(1, sizeof(*ca));
    int r;
    if (!ca)
        return -ENOMEM;
    if ((r = nb_secrets_get_internal(s, NB_CA_KEY_RECORD, &kv)) < 0 ||
        (r = nb_secrets_get_internal(s, NB_CA_CERT_RECORD, &cv)) < 0 || (r = ca_init(ca, opts)) < 0)
        goto out;
    r = NB_ECRYPTO;
    const unsigned char *kp = kv.p, *cp = cv.p;
    if (!(p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &kp, (long)kv.len)) || kp != kv.p + kv.len ||
        !(ca->key = EVP_PKCS82PKEY(p8)) || !(ca->cert = d2i_X509(NULL, &cp, (long)cv.len)) ||
        cp != cv.p + cv.len || X509_check_private_key(ca->cert, ca->key) != 1) {
        log_ossl("loading the CA");
        goto out;
    }
    if (X509_cmp_time(X509_get0_notAfter(ca->cert), NULL) < 0)
        nb_log(NB_LOG_WARN, "ca: the interception CA has expired");
    *out = ca;
    ca = NULL;
    r = 0;
out:
    PKCS8_PRIV_KEY_INFO_free(p8);
    nb_secret_value_free(&kv);
    nb_secret_value_free(&cv);
    nb_ca_free(ca);
    return r;
}

int nb_ca_load_or_create(nb_secrets_t *s, const nb_ca_opts_t *opts, nb_ca_t **out)
{
    *out = NULL;
    int r = ca_load(s, opts, out);
    if (r != NB_ENOTFOUND)
        return r;
    nb_ca_t *ca;
    if ((r = nb_ca_create(opts, &ca)) < 0)
        return r;
    if ((r = ca_save(ca, s)) < 0) {
        nb_ca_free(ca);
        return r;
    }
    nb_log(NB_LOG_NOTICE, "ca: created a new interception CA");
    *out = ca;
    return 0;
}

/* ---- LRU cache -------------------------------------------------------------- */

static void lru_unlink(nb_ca_t *ca, leaf_ent_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        ca->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        ca->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(nb_ca_t *ca, leaf_ent_t *e)
{
    e->next = ca->head;
    e->prev = NULL;
    if (ca->head)
        ca->head->prev = e;
    ca->head = e;
    if (!ca->tail)
        ca->tail = e;
}

static void ent_remove(nb_ca_t *ca, leaf_ent_t *e)
{
    leaf_ent_t **pp = &ca->buckets[e->hash & (ca->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    lru_unlink(ca, e);
    X509_free(e->cert);
    free(e);
    ca->stats.size--;
}

int nb_ca_leaf(nb_ca_t *ca, const char *host, X509 **out)
{
    *out = NULL;
    char norm[NB_HOSTNAME_BUFSZ];
    nb_ipaddr_t ip;
    size_t hl = strlen(host);
    int is_ip = nb_ip_parse(host, hl, &ip);
    if (is_ip)
        nb_ip_format(&ip, norm, sizeof(norm));
    else if (nb_hostname_normalize(host, hl, norm, sizeof(norm)) < 0)
        return NB_EINVAL;
    uint8_t h8[crypto_shorthash_BYTES];
    crypto_shorthash(h8, (const uint8_t *)norm, strlen(norm), ca->hkey);
    uint64_t h;
    memcpy(&h, h8, sizeof(h));
    time_t now = time(NULL);
    leaf_ent_t **bucket = &ca->buckets[h & (ca->nbuckets - 1)];
    for (leaf_ent_t *e = *bucket; e; e = e->hnext) {
        if (e->hash != h || strcmp(e->host, norm) != 0)
            continue;
        if (now + REMINT_MARGIN >= e->expires) {
            ent_remove(ca, e);
            break;
        }
        lru_unlink(ca, e);
        lru_push_front(ca, e);
        ca->stats.hits++;
        X509_up_ref(e->cert);
        *out = e->cert;
        return 0;
    }
    ca->stats.misses++;
    leaf_ent_t *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    if (!(e->cert = mint(ca, norm, is_ip ? &ip : NULL, now, &e->expires))) {
        free(e);
        return NB_ECRYPTO;
    }
    memcpy(e->host, norm, sizeof(norm));
    e->hash = h;
    if (ca->stats.size >= ca->cache_max && ca->tail) {
        ent_remove(ca, ca->tail);
        ca->stats.evictions++;
    }
    bucket = &ca->buckets[h & (ca->nbuckets - 1)];
    e->hnext = *bucket;
    *bucket = e;
    lru_push_front(ca, e);
    ca->stats.size++;
    X509_up_ref(e->cert);
    *out = e->cert;
    return 0;
}

/* ---- SSL server side --------------------------------------------------------- */

typedef struct {
    char *expected;
    int status;
} sni_state_t;

static int ssl_idx = -1;
static pthread_once_t ssl_idx_once = PTHREAD_ONCE_INIT;

static void sni_state_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp)
{
    sni_state_t *st = ptr;
    if (st) {
        free(st->expected);
        free(st);
    }
}

static void ssl_idx_init(void)
{
    ssl_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, sni_state_free);
}

static sni_state_t *sni_state(SSL *ssl, int create)
{
    pthread_once(&ssl_idx_once, ssl_idx_init);
    if (ssl_idx < 0)
        return NULL;
    sni_state_t *st = SSL_get_ex_data(ssl, ssl_idx);
    if (!st && create) {
        st = calloc(1, sizeof(*st));
        if (st && !SSL_set_ex_data(ssl, ssl_idx, st)) {
            free(st);
            st = NULL;
        }
    }
    return st;
}

int nb_ca_ssl_set_expected(SSL *ssl, const char *name)
{
    char norm[NB_HOSTNAME_BUFSZ];
    nb_ipaddr_t ip;
    if (nb_ip_parse(name, strlen(name), &ip))
        nb_ip_format(&ip, norm, sizeof(norm));
    else if (nb_hostname_normalize(name, strlen(name), norm, sizeof(norm)) < 0)
        return NB_EINVAL;
    sni_state_t *st = sni_state(ssl, 1);
    char *dup = strdup(norm);
    if (!st || !dup) {
        free(dup);
        return -ENOMEM;
    }
    free(st->expected);
    st->expected = dup;
    return 0;
}

int nb_ca_ssl_sni_status(SSL *ssl, const char **sni)
{
    if (sni)
        *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    sni_state_t *st = sni_state(ssl, 0);
    return st ? st->status : NB_CA_SNI_NONE;
}

static int on_servername(SSL *ssl, int *al, void *arg)
{
    nb_ca_t *ca = arg;
    sni_state_t *st = sni_state(ssl, 1);
    if (!st) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char norm[NB_HOSTNAME_BUFSZ];
    const char *name = st->expected;
    if (sni) {
        nb_ipaddr_t ip;
        if (nb_ip_parse(sni, strlen(sni), &ip)) {
            nb_ip_format(&ip, norm, sizeof(norm));
        } else if (nb_hostname_normalize(sni, strlen(sni), norm, sizeof(norm)) < 0) {
            st->status = NB_CA_SNI_INVALID;
            *al = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        if (st->expected && strcmp(norm, st->expected) != 0) {
            st->status = NB_CA_SNI_MISMATCH;
            *al = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        name = norm;
    }
    if (!name) {
        st->status = NB_CA_SNI_MISSING;
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    X509 *leaf = NULL;
    if (nb_ca_leaf(ca, name, &leaf) < 0 ||
        SSL_use_cert_and_key(ssl, leaf, ca->leaf_key, NULL, 1) != 1) {
        X509_free(leaf);
        st->status = NB_CA_SNI_ERROR;
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    X509_free(leaf);
    st->status = NB_CA_SNI_OK;
    return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char h1[] = "\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, h1, sizeof(h1) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no common protocol: go on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

int nb_ca_server_ctx(nb_ca_t *ca, SSL_CTX **out)
{
    *out = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        log_ossl("SSL_CTX_new");
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* CLEANSE_PLAINTEXT: decrypted client records are wiped once read. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_CLEANSE_PLAINTEXT);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, ca);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    *out = ctx;
    return 0;
}
