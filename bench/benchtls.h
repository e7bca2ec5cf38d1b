/* Plain blocking OpenSSL pieces shared by the HTTPS benchmarks (bench/proxy,
 * bench/usage): clocks, a buffered TLS line reader, a client connection
 * (direct or through CONNECT) and a loopback TLS server with one thread per
 * connection. Nothing from the project: they
 * measure it from outside. */
#ifndef NB_BENCH_TLS_H
#define NB_BENCH_TLS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static inline int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
    SSL *ssl;
    char buf[65536];
    size_t off, len;
} rd_t;

static inline int fill(rd_t *r)
{
    if (r->off == r->len)
        r->off = r->len = 0;
    if (r->len == sizeof r->buf) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    int n = SSL_read(r->ssl, r->buf + r->len, (int)(sizeof r->buf - r->len));
    if (n <= 0)
        return -1;
    r->len += (size_t)n;
    return 0;
}

/* Reads a line (without CRLF) into out. */
static inline int read_line(rd_t *r, char *out, size_t outsz)
{
    for (;;) {
        char *nl = memchr(r->buf + r->off, '\n', r->len - r->off);
        if (nl) {
            size_t n = (size_t)(nl - (r->buf + r->off));
            size_t k = n && nl[-1] == '\r' ? n - 1 : n;
            if (k >= outsz)
                k = outsz - 1;
            memcpy(out, r->buf + r->off, k);
            out[k] = '\0';
            r->off += n + 1;
            return 0;
        }
        if (fill(r) < 0)
            return -1;
    }
}

static inline int put(SSL *ssl, const char *p, size_t n)
{
    return SSL_write(ssl, p, (int)n) == (int)n ? 0 : -1;
}

static inline int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* A TLS connection to HOST:PORT (the certificate checked for HOST), through
 * an explicit proxy on loopback port `proxy` (CONNECT, NB_PROXY_AUTH from
 * the environment as Proxy-Authorization) unless it is 0; its socket in
 * *fdp. NULL on failure (a refused CONNECT or TLS error said on stderr). */
static inline SSL *tls_connect(SSL_CTX *ctx, const char *host, int port, int proxy, int *fdp)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)(proxy ? proxy : port))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return NULL;
    }
    if (proxy) {
        char req[1024], resp[1024];
        const char *auth = getenv("NB_PROXY_AUTH");
        int n = snprintf(req, sizeof req, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n%s%s%s\r\n",
                         host, port, host, port, auth ? "Proxy-Authorization: " : "",
                         auth ? auth : "", auth ? "\r\n" : "");
        size_t got = 0;
        if (n < 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
            close(fd);
            return NULL;
        }
        while (got < sizeof resp - 1) { /* byte by byte: nothing past the head */
            if (read(fd, resp + got, 1) != 1)
                break;
            resp[++got] = '\0';
            if (got >= 4 && strcmp(resp + got - 4, "\r\n\r\n") == 0)
                break;
        }
        if (got < 12 || strncmp(resp, "HTTP/1.", 7) != 0 || strncmp(resp + 8, " 200", 4) != 0) {
            fprintf(stderr, "CONNECT refused: %.80s\n", got ? resp : "");
            close(fd);
            return NULL;
        }
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, host);
    SSL_set1_host(ssl, host);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    *fdp = fd;
    return ssl;
}

/* Loads CERT and KEY into *ctx, listens on a loopback port, prints "PORT
 * <n>" and runs serve(fd) on a thread of its own for each connection.
 * Returns 1 (said on stderr, after `tool`) when it cannot start. */
static inline int tls_serve(const char *tool, const char *cert, const char *key, SSL_CTX **ctx,
                            void *(*serve)(void *))
{
    *ctx = SSL_CTX_new(TLS_server_method());
    if (!*ctx || SSL_CTX_use_certificate_chain_file(*ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(*ctx, key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "%s: cannot load %s / %s\n", tool, cert, key);
        return 1;
    }
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (srv < 0 || bind(srv, (struct sockaddr *)&a, sizeof a) < 0 || listen(srv, 512) < 0 ||
        getsockname(srv, (struct sockaddr *)&a, &alen) < 0) {
        fprintf(stderr, "%s: cannot listen\n", tool);
        return 1;
    }
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(srv, NULL, NULL);
        pthread_t t;
        if (fd < 0)
            continue;
        if (pthread_create(&t, NULL, serve, (void *)(intptr_t)fd) != 0)
            close(fd);
        else
            pthread_detach(t);
    }
}

#endif
