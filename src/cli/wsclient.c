#include "cli/wsclient.h"

#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/client.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/ws.h"

#define WSC_MAX_MESSAGE (16u << 20)

struct nb_wsc {
    int fd;
    nb_buf_t in; /* bytes received, not yet parsed */
    nb_ws_parser_t *parser;
    nb_buf_t *msg;  /* where the message being received goes (nb_wsc_recv) */
    int opcode;     /* its opcode, once complete */
    int close_code; /* the peer's close code, once it closed */
    int closed;
};

int nb_wsc_fd(const nb_wsc_t *c)
{
    return c->fd;
}

static int send_frame(nb_wsc_t *c, int opcode, const void *data, size_t len)
{
    uint8_t mask[4];
    nb_buf_t b;
    nb_buf_init(&b, len + 16);
    randombytes_buf(mask, sizeof mask);
    int r = nb_ws_frame_append(&b, opcode, data, len, mask);
    for (size_t off = 0; r == 0 && off < b.len;) {
        ssize_t n = send(c->fd, b.p + off, b.len - off, MSG_NOSIGNAL);
        if (n >= 0) {
            off += (size_t)n;
        } else if (errno == EAGAIN) {
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            poll(&p, 1, 1000);
        } else if (errno != EINTR) {
            r = -errno;
        }
    }
    nb_buf_free(&b);
    return r;
}

/* Parser callbacks: a complete message stops the parse (nb_wsc_recv
 * returns it); pings are answered; a close is echoed and stops it. */
static int on_message(void *ud, int opcode, const uint8_t *p, size_t len)
{
    nb_wsc_t *c = ud;
    int r = nb_buf_append(c->msg, p, len);
    c->opcode = opcode;
    return r < 0 ? r : 1;
}

static int on_control(void *ud, int opcode, const uint8_t *p, size_t len)
{
    nb_wsc_t *c = ud;
    if (opcode == NB_WS_OP_PING)
        send_frame(c, NB_WS_OP_PONG, p, len);
    if (opcode != NB_WS_OP_CLOSE)
        return 0;
    c->close_code = len >= 2 ? (p[0] << 8) | p[1] : 0;
    if (!c->closed)
        send_frame(c, NB_WS_OP_CLOSE, p, len >= 2 ? 2 : 0);
    c->closed = 1;
    return 1;
}

int nb_wsc_connect(const char *sock, const char *path, int timeout_ms, nb_wsc_t **out,
                   int *http_status, char *err, size_t errsz)
{
    unsigned char key_raw[16];
    char key[32], expect[NB_WS_ACCEPT_LEN + 1], hdrs[256];
    nb_client_resp_t resp;
    int r;
    *out = NULL;
    if (http_status)
        *http_status = 0;
    if (err && errsz)
        err[0] = '\0';
    randombytes_buf(key_raw, sizeof key_raw);
    sodium_bin2base64(key, sizeof key, key_raw, sizeof key_raw, sodium_base64_VARIANT_ORIGINAL);
    if ((r = nb_ws_accept_key(key, expect)) < 0)
        return r;
    snprintf(hdrs, sizeof hdrs,
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Key: %s\r\n",
             key);
    int fd = nb_client_connect(sock, timeout_ms);
    if (fd < 0)
        return fd;
    if ((r = nb_client_exchange(fd, "GET", path, hdrs, NULL, nb_iov(NULL, 0), timeout_ms, &resp)) <
        0) {
        close(fd);
        return r;
    }
    if (http_status)
        *http_status = resp.status;
    if (resp.status != 101 || !resp.upgraded || strcmp(resp.accept, expect) != 0) {
        const char *m = resp.json ? nb_json_str(resp.json, "message") : NULL;
        if (err && errsz)
            snprintf(err, errsz, "%s",
                     m                    ? m
                     : resp.status == 101 ? "bad Sec-WebSocket-Accept"
                                          : "upgrade refused");
        nb_client_resp_free(&resp);
        close(fd);
        return NB_EPROTO;
    }
    static const nb_ws_parser_cbs_t cbs = {.on_message = on_message, .on_control = on_control};
    nb_wsc_t *c = calloc(1, sizeof *c);
    r = c ? nb_ws_parser_new(NB_WS_ROLE_CLIENT, WSC_MAX_MESSAGE, &cbs, c, &c->parser) : -ENOMEM;
    if (c) {
        c->fd = fd;
        nb_buf_init(&c->in, WSC_MAX_MESSAGE + 16);
    }
    /* Frames that arrived together with the 101 head. */
    if (r == 0)
        r = nb_buf_append(&c->in, resp.body.p, resp.body.len);
    nb_client_resp_free(&resp);
    if (r < 0) {
        if (c)
            nb_wsc_free(c);
        else
            close(fd);
        return r;
    }
    *out = c;
    return 0;
}

int nb_wsc_send(nb_wsc_t *c, int opcode, const void *data, size_t len)
{
    return c->closed ? NB_ECLOSED : send_frame(c, opcode, data, len);
}

int nb_wsc_recv(nb_wsc_t *c, int timeout_ms, int *opcode, nb_buf_t *msg, int *close_code)
{
    nb_buf_reset(msg);
    if (close_code)
        *close_code = 0;
    c->msg = msg;
    c->opcode = 0;
    for (;;) {
        size_t used = 0;
        int was_closed = c->closed;
        int r = nb_ws_parser_feed(c->parser, c->in.p, c->in.len, &used);
        nb_buf_consume(&c->in, used);
        if (r < 0)
            return r == NB_ETOOBIG ? r : NB_EPROTO;
        if (c->opcode) {
            *opcode = c->opcode;
            return 0;
        }
        if (c->closed && (r == NB_WS_STOPPED || was_closed)) {
            if (close_code)
                *close_code = c->close_code;
            return NB_ECLOSED;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int n = poll(&p, 1, timeout_ms);
        if (n == 0)
            return NB_ETIMEOUT;
        if (n < 0)
            return -errno; /* EINTR goes back to the caller (e.g. to notice Ctrl-C) */
        uint8_t buf[16384];
        ssize_t got = recv(c->fd, buf, sizeof buf, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0 || nb_buf_append(&c->in, buf, (size_t)got) < 0) {
            c->closed = 1;
            return got <= 0 ? NB_ECLOSED : NB_ETOOBIG;
        }
    }
}

void nb_wsc_free(nb_wsc_t *c)
{
    if (!c)
        return;
    if (!c->closed) {
        static const uint8_t normal[2] = {0x03, 0xe8}; /* 1000 */
        send_frame(c, NB_WS_OP_CLOSE, normal, sizeof normal);
    }
    close(c->fd);
    nb_ws_parser_free(c->parser);
    nb_buf_free(&c->in);
    free(c);
}
