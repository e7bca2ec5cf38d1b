/* One byte stream of the proxy: an nb_stream (a TCP connection, or an
 * adopted guest channel stream), optionally with TLS on top through OpenSSL memory BIOs (server
 * side with the minted leaf, or client side toward an upstream, verified). Both ends of every
 * proxied connection are an nb_pxio_t, so the engine moves plaintext and never cares which side is
 * encrypted.
 *
 * Contract:
 *  - on_data hands over plaintext; the callee takes all of it (processes
 *    or buffers it). Calling nb_pxio_read_stop() inside on_data stops
 *    further deliveries; TLS records already received wait inside OpenSSL
 *    and are delivered after nb_pxio_read_start() (from the next loop
 *    turn, never re-entrantly).
 *  - nb_pxio_write() takes the bytes at once (encrypted first with TLS;
 *    what the socket does not take is copied), so callers may reuse their
 *    buffers. nb_pxio_queued() says how
 *    many bytes the kernel has not taken yet; on_drain fires when it falls
 *    to NB_PXIO_LOW_WATER after having been above NB_PXIO_HIGH_WATER
 *    (back-pressure: stop reading the other side above the high mark).
 *  - Plaintext copies (queued raw writes, the cork, TLS staging) are wiped
 *    before they are freed: relayed bytes can echo an injected secret.
 *  - Errors and EOF are reported once; the owner then closes. After
 *    nb_pxio_close() no callback runs except `on_closed`.
 * Loop thread only. */
#ifndef NB_PROXY_IO_H
#define NB_PROXY_IO_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "lib/stream.h"

#define NB_PXIO_HIGH_WATER (256 * 1024)
#define NB_PXIO_LOW_WATER (64 * 1024)
#define NB_PXIO_READ_BUF (64 * 1024)

typedef struct nb_pxio nb_pxio_t;

typedef struct {
    void (*on_data)(nb_pxio_t *io, const uint8_t *p, size_t len);
    void (*on_eof)(nb_pxio_t *io);              /* peer finished sending (FIN / close_notify) */
    void (*on_error)(nb_pxio_t *io, int r);     /* negative libuv/NB_E* code; close next */
    void (*on_handshake)(nb_pxio_t *io, int r); /* TLS: 0 done, < 0 failed (see tls_error) */
    void (*on_drain)(nb_pxio_t *io);
    void (*on_connect)(nb_pxio_t *io, int r); /* nb_pxio_connect() finished */
    void (*on_shutdown)(nb_pxio_t *io);       /* nb_pxio_shutdown(): everything written */
} nb_pxio_cbs_t;

struct nb_pxio {
    nb_stream_t *s; /* below us: NULL until accept, connect or adopt */
    uv_loop_t *loop;
    uv_connect_t conn_req;
    uv_timer_t kick; /* delivers TLS bytes buffered while reads were stopped */
    const nb_pxio_cbs_t *cbs;
    void *ud; /* owner */

    SSL *ssl;  /* NULL for plain TCP */
    BIO *rbio; /* network -> SSL (memory BIO) */
    BIO *wbio; /* SSL -> network (memory BIO) */
    int tls_server;
    int hs_done;
    char tls_error[160]; /* why the handshake failed (verify error, alert) */

    int want_read;   /* the owner wants data */
    int tcp_reading; /* reading the stream below */
    int eof_seen;    /* TCP FIN received */
    int eof_reported;
    int failed;
    int closing;
    int shut;         /* shutdown requested */
    int shut_done;    /* ... and completed */
    unsigned handles; /* open libuv handles */
    void (*on_closed)(nb_pxio_t *io);
    int corked;    /* writes are gathered until nb_pxio_uncork() */
    uint8_t *cork; /* gathered plaintext */
    size_t cork_len;
    uint8_t *rbuf; /* private plaintext buffer, only if a TLS delivery ever nests */
    uint64_t bytes_in, bytes_out;
};

/* Initialises `io` on `loop` (the kick timer; the stream below comes with
 * accept, connect or adopt). 0 or a libuv code; on failure nothing needs
 * closing. */
int nb_pxio_init(uv_loop_t *loop, nb_pxio_t *io, const nb_pxio_cbs_t *cbs, void *ud);

/* Accepts a pending connection of `server` into `io`. */
int nb_pxio_accept(nb_pxio_t *io, uv_stream_t *server);

/* Puts `io` on an already connected stream (e.g. a guest channel stream),
 * taking ownership of it: it is closed with io. */
void nb_pxio_adopt(nb_pxio_t *io, nb_stream_t *s);

/* Connects to `addr`; on_connect(io, r) follows. */
int nb_pxio_connect(nb_pxio_t *io, const struct sockaddr *addr);

/* Starts (or resumes) delivering data; stops. */
int nb_pxio_read_start(nb_pxio_t *io);
void nb_pxio_read_stop(nb_pxio_t *io);

/* Server side TLS on an accepted stream: the handshake runs as bytes
 * arrive; on_handshake reports the outcome. `pre` holds bytes the client
 * already sent (after the CONNECT head), fed first. `expected` is the name
 * the gate approved (nb_ca_ssl_set_expected). */
int nb_pxio_tls_server(nb_pxio_t *io, SSL_CTX *ctx, const char *expected, const uint8_t *pre,
                       size_t prelen);

/* Client side TLS toward an upstream: SNI = `host` unless it is an IP
 * literal; the certificate must chain to the context's trust store and
 * name `host` (DNS name or IP), else the handshake fails. */
int nb_pxio_tls_client(nb_pxio_t *io, SSL_CTX *ctx, const char *host, int is_ip);

/* Writes `len` bytes. */
int nb_pxio_write(nb_pxio_t *io, const void *p, size_t len);

/* Two or three slices in one write (e.g. chunk header + data + CRLF). */
int nb_pxio_writev(nb_pxio_t *io, const uv_buf_t *bufs, unsigned n);

/* A body piece: as is, or as one HTTP/1.1 chunk when `chunked`. Nothing
 * for len 0 (the terminating chunk is the caller's). */
int nb_pxio_write_body(nb_pxio_t *io, const uint8_t *p, size_t len, int chunked);

/* Gathers the following writes and sends them as one when uncorked: one
 * TLS record and one system call for a response head, a body chunk and
 * the chunk terminator produced by one upstream read. Uncork flushes;
 * calls do not nest. Writes larger than NB_PXIO_READ_BUF bypass the cork
 * (after flushing what it holds, so the order is kept). */
void nb_pxio_cork(nb_pxio_t *io);
int nb_pxio_uncork(nb_pxio_t *io);

/* Ends our sending side after the queued writes (TLS close_notify, then
 * TCP FIN). */
void nb_pxio_shutdown(nb_pxio_t *io);

/* Closes; `on_closed` runs once every handle is closed (the owner frees
 * its memory there). Idempotent. */
void nb_pxio_close(nb_pxio_t *io, void (*on_closed)(nb_pxio_t *io));

static inline size_t nb_pxio_queued(const nb_pxio_t *io)
{
    return io->s ? nb_stream_queued(io->s) : 0;
}

/* Client contexts for upstream connections: TLS >= 1.2, peer verification
 * against the system store (/etc/ssl/certs/ca-certificates.crt, or
 * OpenSSL's default paths) plus, when `extra_ca_file` is not NULL (test
 * mode only), the certificates in that PEM file. ALPN http/1.1.
 * Caller frees with SSL_CTX_free. */
int nb_pxio_client_ctx(const char *extra_ca_file, SSL_CTX **out);

#endif
