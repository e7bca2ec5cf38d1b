/* Unit tests for src/daemon/egress/ca: certificate contents, strict
 * verification by OpenSSL (in process and `openssl verify -x509_strict`),
 * sealed storage, the LRU cache, and real TLS handshakes against Python's
 * ssl module (Debian's python3, VERIFY_X509_STRICT on, as Python 3.13 does
 * by default) and curl, including A8 (SNI differing from the approved name). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sodium.h>
#include <sqlite3.h>

#include "daemon/egress/ca.h"
#include "daemon/secrets/secrets.h"
#include "lib/err.h"
#include "nbtest.h"

static char tmpdir[128];
static const char *PYTHON = "/usr/bin/python3";

static int write_pem(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = PEM_write_X509(f, x);
    fclose(f);
    return ok ? 0 : -1;
}

/* Runs argv with output to `log` (NULL: /dev/null); returns the exit code. */
static int run(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int ext_critical(X509 *x, int nid)
{
    int i = X509_get_ext_by_NID(x, nid, -1);
    return i < 0 ? -1 : X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

static int verify_strict(X509 *ca, X509 *leaf, const char *host)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_add_cert(store, ca);
    X509_STORE_CTX_init(ctx, store, leaf, NULL);
    X509_VERIFY_PARAM *p = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_flags(p, X509_V_FLAG_X509_STRICT);
    if (host) {
        X509_VERIFY_PARAM_set_purpose(p, X509_PURPOSE_SSL_SERVER);
        X509_VERIFY_PARAM_set1_host(p, host, 0);
    }
    int ok = X509_verify_cert(ctx);
    if (ok != 1)
        fprintf(stderr, "verify: %s\n",
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return ok == 1;
}

static void test_ca_cert(void)
{
    nb_ca_t *ca = NULL;
    NB_CHECK_EQ_INT(nb_ca_create(NULL, &ca), 0);
    X509 *c = nb_ca_cert(ca);
    NB_CHECK(X509_get_version(c) == X509_VERSION_3);
    NB_CHECK(X509_check_ca(c) == 1);
    NB_CHECK(X509_get_pathlen(c) == 0);
    NB_CHECK(ext_critical(c, NID_basic_constraints) == 1);
    NB_CHECK(ext_critical(c, NID_key_usage) == 1);
    NB_CHECK(X509_get_key_usage(c) == (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
    NB_CHECK(X509_get0_subject_key_id(c) != NULL);
    NB_CHECK(X509_get0_authority_key_id(c) != NULL);
    NB_CHECK(ASN1_OCTET_STRING_cmp(X509_get0_subject_key_id(c), X509_get0_authority_key_id(c)) ==
             0);
    NB_CHECK(ext_critical(c, NID_name_constraints) == -1);
    EVP_PKEY *pk = X509_get0_pubkey(c);
    char curve[32] = "";
    EVP_PKEY_get_utf8_string_param(pk, "group", curve, sizeof(curve), NULL);
    NB_CHECK_STR(curve, "prime256v1");
    const ASN1_INTEGER *sn = X509_get0_serialNumber(c);
    NB_CHECK(sn->length == 16 && !(sn->type & V_ASN1_NEG));
    NB_CHECK(X509_cmp_time(X509_get0_notBefore(c), NULL) < 0);
    /* Self-verifies in strict mode. */
    NB_CHECK(verify_strict(c, c, NULL));

    char *pem = NULL;
    size_t len = 0;
    NB_CHECK_EQ_INT(nb_ca_cert_pem(ca, &pem, &len), 0);
    NB_CHECK(pem && len > 100 && strncmp(pem, "-----BEGIN CERTIFICATE-----\n", 28) == 0);
    NB_CHECK(pem && strlen(pem) == len);
    free(pem);
    nb_ca_free(ca);

    /* Optional name constraints: critical, and enforced by verifiers. */
    const char *perm[] = {"Example.test"};
    nb_ca_opts_t o = {.cn = "constrained", .permitted_dns = perm, .npermitted = 1};
    NB_CHECK_EQ_INT(nb_ca_create(&o, &ca), 0);
    NB_CHECK(ext_critical(nb_ca_cert(ca), NID_name_constraints) == 1);
    X509 *in = NULL, *outside = NULL;
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "api.example.test", &in), 0);
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "api.other.test", &outside), 0);
    NB_CHECK(verify_strict(nb_ca_cert(ca), in, "api.example.test"));
    NB_CHECK(!verify_strict(nb_ca_cert(ca), outside, "api.other.test"));
    X509_free(in);
    X509_free(outside);
    nb_ca_free(ca);
    const char *bad[] = {"a,DNS:evil.test"};
    o.permitted_dns = bad;
    NB_CHECK(nb_ca_create(&o, &ca) < 0);
    ERR_clear_error();
}

static void test_leaf(void)
{
    nb_ca_t *ca = NULL;
    NB_CHECK_EQ_INT(nb_ca_create(NULL, &ca), 0);
    X509 *l = NULL;
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "API.Example.TEST.", &l), 0);
    NB_CHECK(verify_strict(nb_ca_cert(ca), l, "api.example.test"));
    NB_CHECK(!verify_strict(nb_ca_cert(ca), l, "other.example.test"));
    NB_CHECK(X509_check_host(l, "api.example.test", 0, 0, NULL) == 1);
    NB_CHECK(X509_check_host(l, "x.api.example.test", 0, 0, NULL) != 1);
    NB_CHECK(X509_check_ca(l) == 0);
    NB_CHECK(ext_critical(l, NID_key_usage) == 1);
    NB_CHECK(X509_get_key_usage(l) == KU_DIGITAL_SIGNATURE);
    NB_CHECK(X509_get_extended_key_usage(l) == XKU_SSL_SERVER);
    NB_CHECK(X509_get0_authority_key_id(l) != NULL);
    NB_CHECK(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(l),
                                   X509_get0_subject_key_id(nb_ca_cert(ca))) == 0);
    NB_CHECK(X509_check_private_key(l, nb_ca_leaf_key(ca)) == 1);
    /* Validity: backdated one hour, about seven days long. */
    int days = 0, secs = 0;
    ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(l), X509_get0_notAfter(l));
    NB_CHECK(days == NB_CA_LEAF_DAYS && secs == 3600);
    time_t t = time(NULL) - 3000;
    NB_CHECK(X509_cmp_time(X509_get0_notBefore(l), &t) < 0);
    const ASN1_INTEGER *sn = X509_get0_serialNumber(l);
    NB_CHECK(sn->length == 16 && !(sn->type & V_ASN1_NEG));
    char path[256], capath[256], log[256];
    snprintf(path, sizeof(path), "%s/leaf.pem", tmpdir);
    snprintf(capath, sizeof(capath), "%s/ca.pem", tmpdir);
    snprintf(log, sizeof(log), "%s/verify.log", tmpdir);
    NB_CHECK(write_pem(path, l) == 0 && write_pem(capath, nb_ca_cert(ca)) == 0);
    /* The openssl command line, strict, as a server certificate for the name. */
    char *v1[] = {
        "openssl",          "verify",  "-x509_strict", "-purpose", "sslserver", "-verify_hostname",
        "api.example.test", "-CAfile", capath,         path,       NULL};
    NB_CHECK_EQ_INT(run(v1, log), 0);
    char *v2[] = {"openssl",   "verify",  "-x509_strict", "-verify_hostname",
                  "evil.test", "-CAfile", capath,         path,
                  NULL};
    NB_CHECK(run(v2, NULL) != 0);
    char *v3[] = {"openssl", "verify", "-x509_strict", "-CAfile", capath, capath, NULL};
    NB_CHECK_EQ_INT(run(v3, NULL), 0);
    X509_free(l);

    /* IP leaves carry an iPAddress SAN. */
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "127.0.0.1", &l), 0);
    NB_CHECK(X509_check_ip_asc(l, "127.0.0.1", 0) == 1);
    NB_CHECK(X509_check_host(l, "127.0.0.1", 0, 0, NULL) != 1); /* not a dNSName, no CN */
    X509_free(l);
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "[::1]", &l), 0);
    NB_CHECK(X509_check_ip_asc(l, "::1", 0) == 1);
    X509_free(l);
    /* Names that are not names. */
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "a,DNS:evil.test", &l), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "", &l), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_ca_leaf(ca, "*.example.test", &l), NB_EINVAL);
    NB_CHECK(l == NULL);
    nb_ca_free(ca);
}

static void test_cache(void)
{
    nb_ca_opts_t o = {.cache_max = 3};
    nb_ca_t *ca = NULL;
    NB_CHECK_EQ_INT(nb_ca_create(&o, &ca), 0);
    X509 *a, *b, *c, *a2, *d, *b2;
    nb_ca_leaf(ca, "a.test", &a);
    nb_ca_leaf(ca, "b.test", &b);
    nb_ca_leaf(ca, "c.test", &c);
    nb_ca_leaf(ca, "A.TEST", &a2); /* same name after normalisation: a hit */
    NB_CHECK(a == a2);
    nb_ca_leaf(ca, "d.test", &d); /* evicts b, the least recently used */
    nb_ca_leaf(ca, "b.test", &b2);
    NB_CHECK(b2 != b); /* minted again... */
    NB_CHECK(ASN1_INTEGER_cmp(X509_get0_serialNumber(b), X509_get0_serialNumber(b2)) != 0);
    nb_ca_stats_t st;
    nb_ca_stats(ca, &st);
    NB_CHECK_EQ_INT(st.hits, 1);
    NB_CHECK_EQ_INT(st.misses, 5);
    NB_CHECK_EQ_INT(st.evictions, 2);
    NB_CHECK_EQ_INT(st.size, 3);
    /* The evicted cert stays valid for whoever still holds it. */
    NB_CHECK(X509_check_host(b, "b.test", 0, 0, NULL) == 1);
    X509_free(a);
    X509_free(a2);
    X509_free(b);
    X509_free(b2);
    X509_free(c);
    X509_free(d);
    nb_ca_free(ca);
}

static void test_sealed_storage(void)
{
    sqlite3 *db = NULL;
    NB_CHECK(sqlite3_open(":memory:", &db) == SQLITE_OK);
    sqlite3_exec(db, nb_secrets_migration_sql, NULL, NULL, NULL);
    uint8_t k[NB_MKEY_BYTES];
    randombytes_buf(k, sizeof(k));
    nb_mkey_t *mk = NULL;
    nb_mkey_from_bytes(NB_MKEY_RAW, k, &mk);
    nb_secrets_t *s = NULL;
    NB_CHECK_EQ_INT(nb_secrets_open(db, mk, &s), 0);
    nb_ca_t *ca1 = NULL, *ca2 = NULL;
    NB_CHECK_EQ_INT(nb_ca_load_or_create(s, NULL, &ca1), 0);
    NB_CHECK_EQ_INT(nb_ca_load_or_create(s, NULL, &ca2), 0);
    NB_CHECK(ca1 && ca2 && X509_cmp(nb_ca_cert(ca1), nb_ca_cert(ca2)) == 0);
    /* The private key is not in the table in the clear: only sealed. */
    nb_secret_info_t *ls = NULL;
    size_t n = 9;
    nb_secrets_ls(s, &ls, &n);
    NB_CHECK_EQ_INT(n, 0); /* internal records are not user secrets */
    free(ls);
    nb_secret_value_t v;
    NB_CHECK_EQ_INT(nb_secrets_get(s, NB_CA_KEY_RECORD, &v), NB_ENOTFOUND); /* A2 */
    nb_ca_free(ca2);
    ca2 = NULL;
    /* A tampered CA record is an error, never silently replaced. */
    sqlite3_exec(db, "UPDATE secrets SET ct = zeroblob(length(ct)) WHERE name = 'nilbox.ca.cert'",
                 NULL, NULL, NULL);
    NB_CHECK_EQ_INT(nb_ca_load_or_create(s, NULL, &ca2), NB_ECRYPTO);
    NB_CHECK(ca2 == NULL);
    /* A certificate that does not match the key is refused. */
    nb_ca_t *other = NULL;
    nb_ca_create(NULL, &other);
    uint8_t *der = NULL;
    int dl = i2d_X509(nb_ca_cert(other), &der);
    nb_secrets_put_internal(s, NB_CA_CERT_RECORD, der, (size_t)dl);
    OPENSSL_free(der);
    NB_CHECK_EQ_INT(nb_ca_load_or_create(s, NULL, &ca2), NB_ECRYPTO);
    nb_ca_free(other);
    nb_ca_free(ca1);
    nb_secrets_close(s);
    nb_mkey_free(mk);
    sqlite3_close(db);
    ERR_clear_error();
}

/* ---- real handshakes ---- */

static const char *PY_CLIENT =
    "import socket, ssl, sys\n"
    "port, cafile, sni = int(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
    "ctx = ssl.create_default_context(cafile=cafile)\n"
    "ctx.verify_flags |= ssl.VERIFY_X509_STRICT\n"
    "if hasattr(ssl, 'VERIFY_X509_PARTIAL_CHAIN'):\n"
    "    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN\n"
    "ctx.set_alpn_protocols(['h2', 'http/1.1'])\n"
    "raw = socket.create_connection(('127.0.0.1', port), timeout=10)\n"
    "try:\n"
    "    s = ctx.wrap_socket(raw, server_hostname=sni)\n"
    "except ssl.SSLCertVerificationError as e:\n"
    "    print('verify failed:', e); sys.exit(3)\n"
    "except ssl.SSLError as e:\n"
    "    print('tls failed:', e); sys.exit(4)\n"
    "assert s.selected_alpn_protocol() == 'http/1.1', s.selected_alpn_protocol()\n"
    "s.sendall(b'GET / HTTP/1.1\\r\\nHost: ' + sni.encode() + b'\\r\\n\\r\\n')\n"
    "data = s.recv(4096)\n"
    "assert data.startswith(b'HTTP/1.1 200 OK'), data\n"
    "print('OK', s.version(), s.getpeercert()['subjectAltName'])\n";

/* Serves one TLS connection with `ctx` while `client` runs; returns the
 * client's exit code and the server's SNI status in *status. */
static int serve_one(SSL_CTX *ctx, const char *expected, char *const client[], int lfd, int *status,
                     int *accepted, const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(client[0], client);
        _exit(127);
    }
    *accepted = 0;
    *status = -1;
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    if (poll(&pfd, 1, 15000) == 1) {
        int fd = accept(lfd, NULL, NULL);
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        if (expected)
            nb_ca_ssl_set_expected(ssl, expected);
        if (SSL_accept(ssl) == 1) {
            *accepted = 1;
            char buf[4096];
            size_t got = 0;
            int n;
            while (got < sizeof(buf) - 1 &&
                   (n = SSL_read(ssl, buf + got, (int)(sizeof(buf) - 1 - got))) > 0) {
                got += (size_t)n;
                buf[got] = 0;
                if (strstr(buf, "\r\n\r\n"))
                    break;
            }
            const char *resp =
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            SSL_write(ssl, resp, (int)strlen(resp));
            SSL_shutdown(ssl);
        }
        ERR_clear_error();
        *status = nb_ca_ssl_sni_status(ssl, NULL);
        SSL_free(ssl);
        close(fd);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void show(const char *log)
{
    FILE *f = fopen(log, "r");
    char line[512];
    while (f && fgets(line, sizeof(line), f))
        fprintf(stderr, "  | %s", line);
    if (f)
        fclose(f);
}

static void test_handshakes(void)
{
    if (access(PYTHON, X_OK) != 0) {
        fprintf(stderr, "skip: %s missing\n", PYTHON);
        return;
    }
    nb_ca_t *ca = NULL;
    NB_CHECK_EQ_INT(nb_ca_create(NULL, &ca), 0);
    SSL_CTX *ctx = NULL;
    NB_CHECK_EQ_INT(nb_ca_server_ctx(ca, &ctx), 0);
    char capath[256], log[256], port_s[16];
    snprintf(capath, sizeof(capath), "%s/ca-hs.pem", tmpdir);
    snprintf(log, sizeof(log), "%s/client.log", tmpdir);
    write_pem(capath, nb_ca_cert(ca));

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    NB_CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 8) == 0);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    snprintf(port_s, sizeof(port_s), "%d", ntohs(sa.sin_port));

    int status, accepted, rc;
    /* Python, strict verification, SNI == approved name. */
    char *py1[] = {(char *)PYTHON,     "-c", (char *)PY_CLIENT, port_s, capath,
                   "api.example.test", NULL};
    rc = serve_one(ctx, "api.example.test", py1, lfd, &status, &accepted, log);
    NB_CHECK_EQ_INT(rc, 0);
    NB_CHECK(accepted && status == NB_CA_SNI_OK);
    if (rc != 0)
        show(log);
    /* Python without an approved name set: the SNI decides. */
    rc = serve_one(ctx, NULL, py1, lfd, &status, &accepted, log);
    NB_CHECK_EQ_INT(rc, 0);
    /* An IP destination: Python sends no SNI; the expected IP's leaf is served. */
    char *py2[] = {(char *)PYTHON, "-c", (char *)PY_CLIENT, port_s, capath, "127.0.0.1", NULL};
    rc = serve_one(ctx, "127.0.0.1", py2, lfd, &status, &accepted, log);
    NB_CHECK_EQ_INT(rc, 0);
    NB_CHECK(status == NB_CA_SNI_OK);
    if (rc != 0)
        show(log);
    /* No SNI and nothing expected: refused. */
    rc = serve_one(ctx, NULL, py2, lfd, &status, &accepted, log);
    NB_CHECK(rc != 0 && !accepted && status == NB_CA_SNI_MISSING);
    /* A8: SNI names another host than the approved one: handshake refused. */
    char *py3[] = {(char *)PYTHON,      "-c", (char *)PY_CLIENT, port_s, capath,
                   "evil.example.test", NULL};
    rc = serve_one(ctx, "api.example.test", py3, lfd, &status, &accepted, log);
    NB_CHECK_EQ_INT(rc, 4);
    NB_CHECK(!accepted && status == NB_CA_SNI_MISMATCH);
    /* A client that trusts only the system store rejects our leaf. */
    char *py4[] = {
        (char *)PYTHON,     "-c", (char *)PY_CLIENT, port_s, "/etc/ssl/certs/ca-certificates.crt",
        "api.example.test", NULL};
    rc = serve_one(ctx, "api.example.test", py4, lfd, &status, &accepted, log);
    NB_CHECK_EQ_INT(rc, 3);
    /* curl, with the CA as its only trust anchor. */
    if (access("/usr/bin/curl", X_OK) == 0) {
        char resolve[64], url[96];
        snprintf(resolve, sizeof(resolve), "api.example.test:%s:127.0.0.1", port_s);
        snprintf(url, sizeof(url), "https://api.example.test:%s/", port_s);
        char *cu[] = {"curl", "-sS",       "--max-time", "10", "--cacert",
                      capath, "--resolve", resolve,      url,  NULL};
        rc = serve_one(ctx, "api.example.test", cu, lfd, &status, &accepted, log);
        NB_CHECK_EQ_INT(rc, 0);
        if (rc != 0)
            show(log);
    }
    close(lfd);
    SSL_CTX_free(ctx);
    nb_ca_free(ca);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/nb-test-ca-XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    NB_RUN(test_ca_cert);
    NB_RUN(test_leaf);
    NB_RUN(test_cache);
    NB_RUN(test_sealed_storage);
    NB_RUN(test_handshakes);
    char *rm[] = {"rm", "-rf", tmpdir, NULL};
    run(rm, NULL);
    NB_TEST_MAIN_END();
}
