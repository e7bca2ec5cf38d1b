/* TCP + optional TLS (memory BIOs) byte streams for the proxy. See
 * proxy_io.h for the contract. */
#include "daemon/egress/proxy_io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sodium.h>

#include "daemon/egress/ca.h"
#include "lib/err.h"
#include "lib/log.h"

#define SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

static void tls_pump(nb_pxio_t *io);

/* TLS plaintext buffer shared by every stream of the (single) loop
 * thread, so an idle connection costs no 64 KiB buffer; should a delivery
 * ever nest, the inner one uses the stream's private buffer instead. */
static uint8_t g_pbuf[NB_PXIO_READ_BUF];
static int g_pbuf_busy;

/* Reads the stream below unless it already does. */
static int read_below(nb_pxio_t *io)
{
    int r = io->tcp_reading ? 0 : io->s ? nb_stream_read_start(io->s) : NB_ESTATE;
    if (r == 0)
        io->tcp_reading = 1;
    return r;
}

static void stop_below(nb_pxio_t *io)
{
    if (io->tcp_reading)
        nb_stream_read_stop(io->s);
    io->tcp_reading = 0;
}

static void report_error(nb_pxio_t *io, int r)
{
    if (io->failed || io->closing)
        return;
    io->failed = 1;
    stop_below(io);
    if (io->cbs->on_error)
        io->cbs->on_error(io, r);
}

static void report_eof(nb_pxio_t *io)
{
    if (io->eof_reported || io->failed || io->closing)
        return;
    io->eof_reported = 1;
    if (io->cbs->on_eof)
        io->cbs->on_eof(io);
}

/* Bytes from the stream below; `p` is ours: wiped (plaintext, or records
 * that may hold it) and freed here. */
static void on_read(nb_stream_t *st, ssize_t n, uint8_t *p, void *ud)
{
    nb_pxio_t *io = ud;
    if (n > 0 && !io->closing && !io->failed) {
        io->bytes_in += (uint64_t)n;
        if (!io->ssl) {
            io->cbs->on_data(io, p, (size_t)n);
        } else if (BIO_write(io->rbio, p, (int)n) != (int)n) {
            report_error(io, -ENOMEM);
        } else {
            tls_pump(io);
            /* Keep TLS records inside OpenSSL, not in the kernel, only
             * while the owner wants data or the handshake needs it. */
            if (!io->closing && io->hs_done && !io->want_read)
                stop_below(io);
        }
    }
    if (p) {
        sodium_memzero(p, (size_t)n);
        free(p);
    }
    if (n >= 0 || io->closing || io->failed)
        return;
    io->tcp_reading = 0; /* the stream stopped by itself */
    if (n != UV_EOF) {
        report_error(io, (int)n);
        return;
    }
    io->eof_seen = 1;
    if (io->ssl)
        tls_pump(io);
    else
        report_eof(io);
}

static void on_written(nb_stream_t *st, int status, void *ud)
{
    if (status < 0 && status != UV_ECANCELED)
        report_error(ud, status);
}

static void on_drain(nb_stream_t *st, void *ud)
{
    nb_pxio_t *io = ud;
    if (!io->closing && io->cbs->on_drain)
        io->cbs->on_drain(io);
}

/* Moves what OpenSSL wrote into the network BIO onto the stream. */
static int flush_wbio(nb_pxio_t *io)
{
    char *p;
    long n = BIO_get_mem_data(io->wbio, &p);
    if (n <= 0)
        return 0;
    int r = NB_ECLOSED;
    if (!io->closing && !io->failed && !io->shut && io->s) {
        uv_buf_t b = uv_buf_init(p, (unsigned)n);
        io->bytes_out += (uint64_t)n;
        r = nb_stream_writev_copy(io->s, &b, 1, on_written, io);
    }
    (void)BIO_reset(io->wbio);
    return r;
}

static void note_tls_error(nb_pxio_t *io, const char *what)
{
    long vr = SSL_get_verify_result(io->ssl);
    unsigned long e = ERR_peek_last_error();
    if (!io->tls_server && vr != X509_V_OK)
        snprintf(io->tls_error, sizeof io->tls_error, "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (e)
        snprintf(io->tls_error, sizeof io->tls_error, "%s: %s", what, ERR_reason_error_string(e));
    else
        snprintf(io->tls_error, sizeof io->tls_error, "%s", what);
    ERR_clear_error();
}

/* SSL_get_error() reads the thread's error queue, so it must be empty
 * before each SSL call. It is empty on the good path (failures clear it:
 * note_tls_error), so look before clearing: ERR_clear_error()
 * walks all 16 slots and cost 7% of the proxy's instructions per request
 * when called before every SSL_read and SSL_write. Another user of
 * OpenSSL on this thread (the CA, the key store) may still leave an
 * error behind, hence the look rather than no call at all. */
static void clear_stale_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

static void tls_pump(nb_pxio_t *io)
{
    if (io->closing || io->failed)
        return;
    if (!io->hs_done) {
        ERR_clear_error();
        int r = SSL_do_handshake(io->ssl);
        int fr = flush_wbio(io);
        if (r == 1) {
            io->hs_done = 1;
            if (fr < 0 && fr != NB_ECLOSED) {
                report_error(io, fr);
                return;
            }
            if (io->cbs->on_handshake)
                io->cbs->on_handshake(io, 0);
            if (io->closing || io->failed)
                return;
        } else {
            int e = SSL_get_error(io->ssl, r);
            if (e == SSL_ERROR_WANT_READ && !io->eof_seen)
                return;
            if (e == SSL_ERROR_WANT_READ)
                snprintf(io->tls_error, sizeof io->tls_error, "peer closed during the handshake");
            else
                note_tls_error(io, "handshake failed");
            io->failed = 1;
            stop_below(io);
            if (io->cbs->on_handshake)
                io->cbs->on_handshake(io, NB_ECRYPTO);
            return;
        }
    }
    uint8_t *pbuf = g_pbuf;
    if (g_pbuf_busy) {
        if (!io->rbuf && !(io->rbuf = malloc(NB_PXIO_READ_BUF))) {
            report_error(io, -ENOMEM);
            return;
        }
        pbuf = io->rbuf;
    }
    int own = pbuf == g_pbuf;
    if (own)
        g_pbuf_busy = 1;
    while (io->want_read && !io->closing && !io->failed) {
        /* SSL_read only when it can return something: a record (whole or
         * in part) in the read BIO, bytes buffered inside OpenSSL
         * (decrypted or not), or the EOF to report. Otherwise the call
         * would only say WANT_READ, as every other SSL_read did
         * (bench/README.md, proxy profile). */
        if (!io->eof_seen && BIO_ctrl_pending(io->rbio) == 0 && !SSL_has_pending(io->ssl)) {
            flush_wbio(io); /* tickets, key updates */
            break;
        }
        clear_stale_errors();
        int n = SSL_read(io->ssl, pbuf, NB_PXIO_READ_BUF);
        if (n > 0) {
            io->cbs->on_data(io, pbuf, (size_t)n);
            sodium_memzero(pbuf, (size_t)n); /* decrypted bytes: see on_read */
            continue;
        }
        int e = SSL_get_error(io->ssl, n);
        flush_wbio(io); /* tickets, key updates, alerts */
        if (e == SSL_ERROR_WANT_READ) {
            if (io->eof_seen)
                report_eof(io); /* FIN without close_notify */
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            report_eof(io);
            break;
        }
        note_tls_error(io, "TLS error");
        report_error(io, NB_ECRYPTO);
        break;
    }
    if (own)
        g_pbuf_busy = 0;
}

static void on_kick(uv_timer_t *t)
{
    nb_pxio_t *io = t->data;
    if (io->closing || io->failed)
        return;
    if (io->ssl)
        tls_pump(io);
    else if (io->eof_seen)
        report_eof(io);
}

static void on_stream_closed(nb_stream_t *st, void *ud);

int nb_pxio_init(uv_loop_t *loop, nb_pxio_t *io, const nb_pxio_cbs_t *cbs, void *ud)
{
    memset(io, 0, sizeof *io);
    io->cbs = cbs;
    io->ud = ud;
    io->loop = loop;
    int r = uv_timer_init(loop, &io->kick);
    if (r < 0)
        return r;
    io->kick.data = io;
    io->handles++;
    return 0;
}

void nb_pxio_adopt(nb_pxio_t *io, nb_stream_t *st)
{
    io->s = st;
    io->handles++;
    nb_stream_set_cbs(st, on_read, on_drain, on_stream_closed, io);
    nb_stream_set_marks(st, NB_PXIO_HIGH_WATER, NB_PXIO_LOW_WATER);
    nb_stream_set_wipe(st, 1);
}

/* A TCP stream below io. */
static int tcp_new(nb_pxio_t *io, uv_tcp_t **out)
{
    nb_stream_t *st;
    int r = nb_stream_tcp_new(io->loop, &st);
    if (r < 0)
        return r;
    nb_pxio_adopt(io, st);
    *out = (uv_tcp_t *)nb_stream_uv_handle(st);
    return 0;
}

int nb_pxio_accept(nb_pxio_t *io, uv_stream_t *server)
{
    uv_tcp_t *t;
    int r = tcp_new(io, &t);
    if (r == 0 && (r = uv_accept(server, (uv_stream_t *)t)) == 0)
        uv_tcp_nodelay(t, 1);
    return r;
}

static void on_connected(uv_connect_t *req, int status)
{
    nb_pxio_t *io = req->data;
    if (io->closing)
        return;
    if (status == 0)
        uv_tcp_nodelay((uv_tcp_t *)req->handle, 1);
    if (io->cbs->on_connect)
        io->cbs->on_connect(io, status);
}

int nb_pxio_connect(nb_pxio_t *io, const struct sockaddr *addr)
{
    uv_tcp_t *t;
    int r = tcp_new(io, &t);
    if (r < 0)
        return r;
    io->conn_req.data = io;
    return uv_tcp_connect(&io->conn_req, t, addr, on_connected);
}

int nb_pxio_read_start(nb_pxio_t *io)
{
    if (io->closing || io->failed)
        return NB_ECLOSED;
    io->want_read = 1;
    int r = io->eof_seen ? 0 : read_below(io);
    if (r < 0)
        return r;
    if ((io->ssl && io->hs_done &&
         (BIO_ctrl_pending(io->rbio) > 0 || SSL_pending(io->ssl) > 0 || io->eof_seen)) ||
        (!io->ssl && io->eof_seen && !io->eof_reported))
        uv_timer_start(&io->kick, on_kick, 0, 0);
    return 0;
}

void nb_pxio_read_stop(nb_pxio_t *io)
{
    io->want_read = 0;
    if (!io->ssl || io->hs_done)
        stop_below(io);
}

static int tls_setup(nb_pxio_t *io, SSL_CTX *ctx)
{
    if (!(io->ssl = SSL_new(ctx)))
        return -ENOMEM;
    io->rbio = BIO_new(BIO_s_mem());
    io->wbio = BIO_new(BIO_s_mem());
    if (!io->rbio || !io->wbio) {
        BIO_free(io->rbio);
        BIO_free(io->wbio);
        io->rbio = io->wbio = NULL;
        SSL_free(io->ssl);
        io->ssl = NULL;
        return -ENOMEM;
    }
    /* An empty memory BIO reports "retry" instead of EOF. */
    BIO_set_mem_eof_return(io->rbio, -1);
    BIO_set_mem_eof_return(io->wbio, -1);
    SSL_set_bio(io->ssl, io->rbio, io->wbio);
    return 0;
}

int nb_pxio_tls_server(nb_pxio_t *io, SSL_CTX *ctx, const char *expected, const uint8_t *pre,
                       size_t prelen)
{
    int r;
    if ((r = tls_setup(io, ctx)) < 0)
        return r;
    io->tls_server = 1;
    SSL_set_accept_state(io->ssl);
    if (expected && (r = nb_ca_ssl_set_expected(io->ssl, expected)) < 0)
        return r;
    if (prelen && BIO_write(io->rbio, pre, (int)prelen) != (int)prelen)
        return -ENOMEM;
    if (!io->eof_seen && (r = read_below(io)) < 0)
        return r;
    if (prelen)
        uv_timer_start(&io->kick, on_kick, 0, 0);
    return 0;
}

int nb_pxio_tls_client(nb_pxio_t *io, SSL_CTX *ctx, const char *host, int is_ip)
{
    int r;
    if ((r = tls_setup(io, ctx)) < 0)
        return r;
    SSL_set_connect_state(io->ssl);
    X509_VERIFY_PARAM *vp = SSL_get0_param(io->ssl);
    if (is_ip) {
        if (!X509_VERIFY_PARAM_set1_ip_asc(vp, host))
            return NB_EINVAL;
    } else {
        if (!SSL_set_tlsext_host_name(io->ssl, host))
            return NB_EINVAL;
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (!X509_VERIFY_PARAM_set1_host(vp, host, 0))
            return NB_EINVAL;
    }
    SSL_set_verify(io->ssl, SSL_VERIFY_PEER, NULL);
    if ((r = read_below(io)) < 0)
        return r;
    tls_pump(io); /* sends the ClientHello */
    return 0;
}

static int writev_now(nb_pxio_t *io, const uv_buf_t *bufs, unsigned n);

void nb_pxio_cork(nb_pxio_t *io)
{
    io->corked = 1;
}

int nb_pxio_uncork(nb_pxio_t *io)
{
    io->corked = 0;
    if (!io->cork_len)
        return 0;
    uv_buf_t b = uv_buf_init((char *)io->cork, (unsigned)io->cork_len);
    int r = writev_now(io, &b, 1);
    sodium_memzero(io->cork, io->cork_len); /* plaintext may echo a secret */
    io->cork_len = 0;
    return r;
}

int nb_pxio_writev(nb_pxio_t *io, const uv_buf_t *bufs, unsigned n)
{
    if (!io->corked)
        return writev_now(io, bufs, n);
    if (io->closing || io->failed || io->shut)
        return NB_ECLOSED;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (io->cork_len + total > NB_PXIO_READ_BUF) {
        int r = nb_pxio_uncork(io);
        io->corked = 1;
        if (r < 0)
            return r;
        if (total > NB_PXIO_READ_BUF)
            return writev_now(io, bufs, n);
    }
    if (!io->cork && !(io->cork = malloc(NB_PXIO_READ_BUF)))
        return writev_now(io, bufs, n);
    for (unsigned i = 0; i < n; i++) {
        memcpy(io->cork + io->cork_len, bufs[i].base, bufs[i].len);
        io->cork_len += bufs[i].len;
    }
    return 0;
}

static int writev_now(nb_pxio_t *io, const uv_buf_t *bufs, unsigned n)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (io->closing || io->failed || io->shut || !io->s)
        return NB_ECLOSED;
    if (!io->ssl) {
        /* The stream wipes what it copies: plaintext can echo a value. */
        io->bytes_out += total;
        return total ? nb_stream_writev_copy(io->s, bufs, n, on_written, io) : 0;
    }
    if (!io->hs_done)
        return NB_ESTATE;
    /* One SSL_write per call keeps small pieces (chunk framing) in the
     * same TLS record as their data. */
    uint8_t stackbuf[4096];
    uint8_t *tmp = stackbuf;
    const uint8_t *src;
    if (n == 1) {
        src = (const uint8_t *)bufs[0].base;
    } else {
        if (total > sizeof stackbuf && !(tmp = malloc(total)))
            return -ENOMEM;
        size_t o = 0;
        for (unsigned i = 0; i < n; i++) {
            memcpy(tmp + o, bufs[i].base, bufs[i].len);
            o += bufs[i].len;
        }
        src = tmp;
    }
    int r = 0;
    size_t off = 0;
    while (off < total) {
        clear_stale_errors();
        size_t part = total - off > (1u << 30) ? (1u << 30) : total - off;
        int w = SSL_write(io->ssl, src + off, (int)part);
        if (w <= 0) {
            note_tls_error(io, "TLS write failed");
            r = NB_ECRYPTO;
            break;
        }
        off += (size_t)w;
    }
    /* The gathered plaintext is wiped (it may echo a secret). */
    if (tmp != stackbuf) {
        sodium_memzero(tmp, total);
        free(tmp);
    } else if (n > 1) {
        sodium_memzero(stackbuf, total);
    }
    if (r == 0)
        r = flush_wbio(io);
    return r;
}

int nb_pxio_write(nb_pxio_t *io, const void *p, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
    return nb_pxio_writev(io, &b, 1);
}

int nb_pxio_write_body(nb_pxio_t *io, const uint8_t *p, size_t len, int chunked)
{
    if (len == 0)
        return 0;
    if (!chunked)
        return nb_pxio_write(io, p, len);
    char hdr[24];
    int n = snprintf(hdr, sizeof hdr, "%zx\r\n", len);
    uv_buf_t b[3] = {uv_buf_init(hdr, (unsigned)n), uv_buf_init((char *)p, (unsigned)len),
                     uv_buf_init("\r\n", 2)};
    return nb_pxio_writev(io, b, 3);
}

static void on_shutdown(nb_stream_t *st, int status, void *ud)
{
    nb_pxio_t *io = ud;
    io->shut_done = 1;
    if (!io->closing && io->cbs->on_shutdown)
        io->cbs->on_shutdown(io);
}

void nb_pxio_shutdown(nb_pxio_t *io)
{
    if (io->closing || io->failed || io->shut)
        return;
    nb_pxio_uncork(io);
    if (io->ssl && io->hs_done) {
        ERR_clear_error();
        SSL_shutdown(io->ssl);
        flush_wbio(io);
    }
    if (!io->s || nb_stream_shutdown(io->s, on_shutdown, io) < 0) {
        io->shut_done = 1;
        return;
    }
    io->shut = 1;
}

static void handle_closed(nb_pxio_t *io)
{
    if (--io->handles > 0)
        return;
    if (io->ssl)
        SSL_free(io->ssl); /* frees the BIOs */
    io->ssl = NULL;
    io->rbio = io->wbio = NULL;
    if (io->rbuf)
        sodium_memzero(io->rbuf, NB_PXIO_READ_BUF);
    free(io->rbuf);
    io->rbuf = NULL;
    if (io->cork) {
        sodium_memzero(io->cork, NB_PXIO_READ_BUF);
        free(io->cork);
        io->cork = NULL;
    }
    if (io->on_closed)
        io->on_closed(io);
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_stream_closed(nb_stream_t *st, void *ud)
{
    handle_closed(ud);
}

void nb_pxio_close(nb_pxio_t *io, void (*on_closed)(nb_pxio_t *io))
{
    if (io->closing)
        return;
    io->closing = 1;
    io->on_closed = on_closed;
    if (io->handles == 0) {
        if (on_closed)
            on_closed(io);
        return;
    }
    uv_close((uv_handle_t *)&io->kick, on_handle_closed);
    nb_stream_close(io->s, 0);
}

int nb_pxio_client_ctx(const char *extra_ca_file, SSL_CTX **out)
{
    *out = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return -ENOMEM;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* CLEANSE_PLAINTEXT: OpenSSL wipes decrypted records once handed over
     * (an upstream can echo an injected value). */
    SSL_CTX_set_options(ctx,
                        SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CLEANSE_PLAINTEXT);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = access(SYSTEM_CA_FILE, R_OK) == 0
                 ? SSL_CTX_load_verify_locations(ctx, SYSTEM_CA_FILE, NULL)
                 : SSL_CTX_set_default_verify_paths(ctx);
    if (!ok)
        nb_log(NB_LOG_WARN, "cannot load the system trust store");
    if (extra_ca_file && !SSL_CTX_load_verify_locations(ctx, extra_ca_file, NULL)) {
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NB_EINVAL;
    }
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    ERR_clear_error();
    *out = ctx;
    return 0;
}
