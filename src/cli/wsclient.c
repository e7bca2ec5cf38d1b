#include "cli/wsclient.h"

#include <errno.h>
#include <openssl/evp.h>
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

#define WSC_MAX_MESSAGE (16u << 20)

struct nb_wsc {
    int fd;
    nb_buf_t in; /* bytes received, not yet parsed */
    int closed;
};

int nb_wsc_fd(const nb_wsc_t *c)
{
    return c->fd;
}

static int sha1_b64(const char *s, char *out, size_t outsz)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!EVP_Digest(s, strlen(s), md, &len, EVP_sha1(), NULL) || len != 20)
        return NB_EINTERNAL;
    sodium_bin2base64(out, outsz, md, len, sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

int nb_wsc_connect(const char *sock, const char *path, int timeout_ms, nb_wsc_t **out,
                   int *http_status, char *err, size_t errsz)
{
    unsigned char key_raw[16];
    char key[32], expect[64], hdrs[256];
    char concat[128];
    nb_client_resp_t resp;
    int r;
    *out = NULL;
    if (http_status)
        *http_status = 0;
    if (err && errsz)
        err[0] = '\0';
    randombytes_buf(key_raw, sizeof key_raw);
    sodium_bin2base64(key, sizeof key, key_raw, sizeof key_raw, sodium_base64_VARIANT_ORIGINAL);
    snprintf(concat, sizeof concat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    if ((r = sha1_b64(concat, expect, sizeof expect)) < 0)
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
    nb_wsc_t *c = calloc(1, sizeof *c);
    if (!c) {
        nb_client_resp_free(&resp);
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    nb_buf_init(&c->in, WSC_MAX_MESSAGE + 16);
    /* Frames that arrived together with the 101 head. */
    r = nb_buf_append(&c->in, resp.body.p, resp.body.len);
    nb_client_resp_free(&resp);
    if (r < 0) {
        nb_wsc_free(c);
        return r;
    }
    *out = c;
    return 0;
}

static int send_frame(nb_wsc_t *c, int opcode, const void *data, size_t len)
{
    uint8_t hdr[14], mask[4];
    size_t h = 0;
    hdr[h++] = (uint8_t)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        hdr[h++] = (uint8_t)(0x80 | len);
    } else if (len <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (uint8_t)(len >> 8);
        hdr[h++] = (uint8_t)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    randombytes_buf(mask, sizeof mask);
    memcpy(hdr + h, mask, 4);
    h += 4;
    uint8_t *buf = malloc(h + len);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, hdr, h);
    for (size_t i = 0; i < len; i++)
        buf[h + i] = ((const uint8_t *)data)[i] ^ mask[i & 3];
    size_t off = 0, total = h + len;
    int r = 0;
    while (off < total) {
        ssize_t n = send(c->fd, buf + off, total - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd p = {.fd = c->fd, .events = POLLOUT};
                poll(&p, 1, 1000);
                continue;
            }
            r = -errno;
            break;
        }
        off += (size_t)n;
    }
    free(buf);
    return r;
}

int nb_wsc_send(nb_wsc_t *c, int opcode, const void *data, size_t len)
{
    return c->closed ? NB_ECLOSED : send_frame(c, opcode, data, len);
}

/* Parses one frame from c->in. 1 with the frame consumed, 0 when more
 * bytes are needed, or a negative code. */
static int take_frame(nb_wsc_t *c, int *fin, int *op, nb_buf_t *payload)
{
    const uint8_t *p = c->in.p;
    size_t have = c->in.len, h = 2;
    if (have < 2)
        return 0;
    if (p[1] & 0x80 || (p[0] & 0x70))
        return NB_EPROTO; /* masked server frame or reserved bits */
    uint64_t len = p[1] & 0x7f;
    if (len == 126) {
        if (have < 4)
            return 0;
        len = ((uint64_t)p[2] << 8) | p[3];
        h = 4;
    } else if (len == 127) {
        if (have < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | p[2 + i];
        h = 10;
    }
    if (len > WSC_MAX_MESSAGE)
        return NB_ETOOBIG;
    if (have < h + len)
        return 0;
    *fin = !!(p[0] & 0x80);
    *op = p[0] & 0x0f;
    int r = nb_buf_append(payload, p + h, (size_t)len);
    nb_buf_consume(&c->in, h + (size_t)len);
    return r < 0 ? r : 1;
}

int nb_wsc_recv(nb_wsc_t *c, int timeout_ms, int *opcode, nb_buf_t *msg, int *close_code)
{
    int msg_op = 0;
    nb_buf_t frame;
    nb_buf_init(&frame, WSC_MAX_MESSAGE);
    nb_buf_reset(msg);
    if (close_code)
        *close_code = 0;
    for (;;) {
        int fin = 0, op = 0;
        nb_buf_reset(&frame);
        int r = take_frame(c, &fin, &op, &frame);
        if (r < 0) {
            nb_buf_free(&frame);
            return r;
        }
        if (r == 1) {
            if (op == 0x8) { /* close: echo it and report */
                if (close_code && frame.len >= 2)
                    *close_code = (frame.p[0] << 8) | frame.p[1];
                if (!c->closed)
                    send_frame(c, 0x8, frame.p, frame.len >= 2 ? 2 : 0);
                c->closed = 1;
                nb_buf_free(&frame);
                return NB_ECLOSED;
            }
            if (op == 0x9) {
                send_frame(c, 0xA, frame.p, frame.len);
                continue;
            }
            if (op == 0xA)
                continue;
            if (op == 1 || op == 2)
                msg_op = op;
            else if (op != 0 || !msg_op) {
                nb_buf_free(&frame);
                return NB_EPROTO;
            }
            if ((r = nb_buf_append(msg, frame.p, frame.len)) < 0) {
                nb_buf_free(&frame);
                return r;
            }
            if (fin) {
                *opcode = msg_op;
                nb_buf_free(&frame);
                return 0;
            }
            continue;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int n = poll(&p, 1, timeout_ms);
        if (n == 0) {
            nb_buf_free(&frame);
            return NB_ETIMEOUT;
        }
        if (n < 0) {
            /* EINTR goes back to the caller (e.g. to notice Ctrl-C). */
            int e = errno;
            nb_buf_free(&frame);
            return -e;
        }
        uint8_t buf[16384];
        ssize_t got = recv(c->fd, buf, sizeof buf, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0 || nb_buf_append(&c->in, buf, (size_t)got) < 0) {
            c->closed = 1;
            nb_buf_free(&frame);
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
        send_frame(c, 0x8, normal, sizeof normal);
    }
    close(c->fd);
    nb_buf_free(&c->in);
    free(c);
}
