/* HTTP/1.1 client for the daemon's Unix socket (blocking, one request per
 * connection, every read bounded by a deadline and every body by a cap).
 * Responses go through lib/http.c, the parser the daemon uses. Shared by
 * the CLI (cmd.c builds nb_cli_call on it) and nilbox-desktop. */
#ifndef NB_HOST_CLIENT_H
#define NB_HOST_CLIENT_H

#include <jansson.h>

#include "lib/buf.h"

#define NB_CLIENT_MAX_BODY (64u << 20)
#define NB_CLIENT_MAX_HEAD (64u << 10)

typedef struct {
    int status;      /* HTTP status code */
    nb_buf_t body;   /* raw body (owned) */
    json_t *json;    /* parsed body when it is JSON, else NULL (owned) */
    int is_json;     /* Content-Type: application/json */
    int upgraded;    /* 101 Switching Protocols: body holds bytes after the head */
    char accept[64]; /* Sec-WebSocket-Accept of a 101 answer */
} nb_client_resp_t;

/* Connects to the Unix socket `sock` within `timeout_ms`. Returns the fd
 * (blocking, CLOEXEC) or -errno (-ENOENT / -ECONNREFUSED: no daemon). */
int nb_client_connect(const char *sock, int timeout_ms);

/* Sends `method path` with `headers` ("Name: value\r\n..." or NULL) and
 * `body` (borrowed, sent as is from the caller's memory, never copied;
 * with Content-Type `ctype` when not NULL) on `fd`, then reads the
 * response (head + Content-Length/chunked body, capped) before the
 * deadline. For a 101 answer, reading stops after the head. Returns 0
 * (resp filled; free with nb_client_resp_free), NB_ETIMEOUT, NB_EPROTO,
 * NB_ETOOBIG, NB_ECLOSED or -errno. */
int nb_client_exchange(int fd, const char *method, const char *path, const char *headers,
                       const char *ctype, nb_iov_t body, int timeout_ms, nb_client_resp_t *resp);

/* connect + exchange without a body + close. */
int nb_client_request(const char *sock, const char *method, const char *path, int timeout_ms,
                      nb_client_resp_t *resp);

void nb_client_resp_free(nb_client_resp_t *resp);

/* 1 when `r` means "nobody listens on the socket". */
int nb_client_unreachable(int r);

/* Milliseconds on the monotonic clock (deadlines). */
int64_t nb_client_now_ms(void);

#endif
