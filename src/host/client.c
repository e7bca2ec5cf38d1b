#include "host/client.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "host/version.h"
#include "lib/err.h"
#include "lib/http.h"
#include "lib/json.h"

int64_t nb_client_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - nb_client_now_ms();
        if (left <= 0)
            return NB_ETIMEOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)(left > INT_MAX ? INT_MAX : left));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

int nb_client_connect(const char *sock, int timeout_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        /* A Unix connect only blocks when the backlog is full. */
        if (e != EAGAIN && e != EINPROGRESS) {
            close(fd);
            return -e;
        }
        int r = wait_fd(fd, POLLOUT, nb_client_now_ms() + timeout_ms);
        socklen_t len = sizeof e;
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0 || e) {
            close(fd);
            return r < 0 ? r : -(e ? e : errno);
        }
    }
    return fd;
}

static int write_all(int fd, const void *p, size_t len, int64_t deadline)
{
    const char *s = p;
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -errno;
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

/* --- response parsing: lib/http.c, the daemon's own parser --- */
static int on_head(void *ud, const nb_http_head_t *h)
{
    nb_client_resp_t *resp = ud;
    const nb_http_header_t *ct = nb_http_head_find(h, "Content-Type");
    const nb_http_header_t *acc = nb_http_head_find(h, "Sec-WebSocket-Accept");
    resp->status = h->status;
    resp->is_json = ct && ct->value.len >= 16 &&
                    strncasecmp((const char *)ct->value.p, "application/json", 16) == 0;
    if (acc && acc->value.len < sizeof resp->accept)
        memcpy(resp->accept, acc->value.p, acc->value.len);
    return 0;
}

static int on_body(void *ud, const uint8_t *p, size_t len)
{
    return nb_buf_append(&((nb_client_resp_t *)ud)->body, p, len);
}

int nb_client_exchange(int fd, const char *method, const char *path, const char *headers,
                       const char *ctype, nb_iov_t body, int timeout_ms, nb_client_resp_t *resp)
{
    static const nb_http_cbs_t cbs = {.on_head = on_head, .on_body = on_body};
    int64_t deadline = nb_client_now_ms() + timeout_ms;
    nb_http_parser_t *p = NULL;
    nb_http_limits_t lim;
    nb_buf_t req;
    uint8_t buf[16384];
    int r;
    memset(resp, 0, sizeof *resp);
    nb_buf_init(&resp->body, NB_CLIENT_MAX_BODY);
    nb_buf_init(&req, NB_CLIENT_MAX_HEAD);
    nb_http_limits_default(&lim);
    lim.max_header_bytes = NB_CLIENT_MAX_HEAD;
    lim.max_body = NB_CLIENT_MAX_BODY;
    if ((r = nb_http_parser_new(NB_HTTP_RESPONSE, &lim, &cbs, resp, &p)) < 0)
        goto out;
    nb_http_parser_expect_response_to(p, method);
    r = nb_buf_printf(&req,
                      "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: nilbox/" NB_VERSION
                      "\r\nAccept: application/json\r\n%s",
                      method, path, headers ? headers : "");
    if (r == 0 && ctype)
        r = nb_buf_printf(&req, "Content-Type: %s\r\n", ctype);
    if (r == 0 && (body.len || !strcmp(method, "POST") || !strcmp(method, "PUT")))
        r = nb_buf_printf(&req, "Content-Length: %zu\r\n", body.len);
    if (r == 0)
        r = nb_buf_append_str(&req, "\r\n");
    /* The body goes straight from the caller's (maybe locked) memory. */
    if (r < 0 || (r = write_all(fd, req.p, req.len, deadline)) < 0 ||
        (body.len && (r = write_all(fd, body.p, body.len, deadline)) < 0))
        goto out;
    for (;;) {
        size_t used = 0;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                r = -errno;
                goto out;
            }
            if ((r = wait_fd(fd, POLLIN, deadline)) < 0)
                goto out;
            continue;
        }
        r = n == 0 ? nb_http_parser_finish(p) : nb_http_parser_feed(p, buf, (size_t)n, &used);
        if (r == NB_HTTP_UPGRADED) {
            /* Keep what followed the head: it is the first WebSocket data. */
            resp->upgraded = 1;
            r = nb_buf_append(&resp->body, buf + used, (size_t)n - used);
            break;
        }
        if (r == NB_HTTP_DONE) {
            r = 0;
            break;
        }
        if (r < 0) {
            r = r == NB_ETOOBIG ? NB_ETOOBIG : NB_EPROTO;
            goto out;
        }
        if (n == 0) {
            r = NB_ECLOSED;
            goto out;
        }
    }
    if (r == 0 && resp->is_json && resp->body.len && !resp->upgraded)
        nb_json_parse(nb_buf_iov(&resp->body), &resp->json, NULL, 0);
out:
    nb_http_parser_free(p);
    nb_buf_free(&req);
    if (r < 0)
        nb_client_resp_free(resp);
    return r;
}

int nb_client_request(const char *sock, const char *method, const char *path, int timeout_ms,
                      nb_client_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    int fd = nb_client_connect(sock, timeout_ms);
    if (fd < 0)
        return fd;
    int r = nb_client_exchange(fd, method, path, "Connection: close\r\n", NULL, nb_iov(NULL, 0),
                               timeout_ms, resp);
    close(fd);
    return r;
}

void nb_client_resp_free(nb_client_resp_t *resp)
{
    nb_buf_free(&resp->body);
    json_decref(resp->json);
    resp->json = NULL;
}

int nb_client_unreachable(int r)
{
    return r == -ENOENT || r == -ECONNREFUSED || r == -ENOTSOCK || r == -ENOTDIR ||
           r == -ECONNRESET || r == NB_ECLOSED;
}
