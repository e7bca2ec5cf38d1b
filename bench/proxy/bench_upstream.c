/* A fast local HTTPS upstream for bench/proxy: keep-alive GETs answered
 * with a tiny fixed body, and /sse streams events stamped with the
 * sending time (CLOCK_REALTIME, ns) so a client on the same host can
 * measure forwarding delay. One thread per connection, blocking OpenSSL:
 * nothing from the project, so it measures every proxy the same way.
 *
 *   bench_upstream CERT KEY   -> prints "PORT <n>" and serves until killed
 *
 * /sse?n=N&ms=M: N events, one every M ms, then the end of the stream. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "../benchtls.h"

static SSL_CTX *ctx;

/* Chunked events, one every ms milliseconds, then the last chunk. */
static int sse(SSL *ssl, const char *head)
{
    static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *q = strchr(head, '?'), *n = q ? strstr(q, "n=") : NULL;
    const char *ms = q ? strstr(q, "ms=") : NULL;
    int left = n ? (int)strtol(n + 2, NULL, 10) : 100;
    long step = ms ? strtol(ms + 3, NULL, 10) : 10;
    if (put(ssl, h, sizeof h - 1) < 0)
        return -1;
    for (int i = 0; i < left; i++) {
        struct timespec ts = {step / 1000, (step % 1000) * 1000000};
        nanosleep(&ts, NULL);
        char ev[128], chunk[160];
        int e = snprintf(ev, sizeof ev, "id: %d\ndata: %lld\n\n", i, (long long)wall_ns());
        int c = snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n", e, ev);
        if (put(ssl, chunk, (size_t)c) < 0)
            return -1;
    }
    return put(ssl, "0\r\n\r\n", 5);
}

static void *serve(void *arg)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 2\r\n\r\nok";
    int fd = (int)(intptr_t)arg, one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL *ssl = SSL_new(ctx);
    char buf[16384];
    size_t len = 0;
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1)
        goto out;
    for (;;) {
        int r = SSL_read(ssl, buf + len, (int)(sizeof buf - 1 - len));
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        char *end;
        while ((end = strstr(buf, "\r\n\r\n")) != NULL) {
            size_t used = (size_t)(end - buf) + 4;
            *end = '\0';
            if (strncmp(buf, "GET /sse", 8) == 0 ? sse(ssl, buf) < 0
                                                 : put(ssl, ok, sizeof ok - 1) < 0)
                goto out;
            memmove(buf, buf + used, len - used + 1);
            len -= used;
        }
        if (len == sizeof buf - 1)
            break; /* a head larger than the buffer: not from bench_client */
    }
out:
    SSL_free(ssl);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_upstream CERT KEY\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    return tls_serve("bench_upstream", argv[1], argv[2], &ctx, serve);
}
