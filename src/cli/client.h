/* HTTP/1.1 client for the daemon's Unix socket (blocking, one request per
 * connection, every read bounded by a deadline and every body by a cap),
 * plus the CLI-level helpers built on it. */
#ifndef NB_CLI_CLIENT_H
#define NB_CLI_CLIENT_H

#include <jansson.h>

#include "cli/cmd.h"
#include "lib/buf.h"

#define NB_CLIENT_MAX_BODY (64u << 20)
#define NB_CLIENT_MAX_HEAD (64u << 10)

typedef struct {
    int status;      /* HTTP status code */
    nb_buf_t body;   /* raw body (owned) */
    json_t *json;    /* parsed body when it is JSON, else NULL (owned) */
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

/* --- CLI level --- */

/* Calls the daemon. On 2xx *out (if not NULL) gets the JSON body (caller
 * decrefs) and NB_CLI_OK is returned. Otherwise the daemon's message (or
 * a sentence about the transport) is printed as "nilbox: ..." and the exit
 * code returned: 3 unreachable, 4 for 404, 5 for 401/403, 1 otherwise. */
int nb_cli_call(nb_cli_t *cli, const char *method, const char *path, const json_t *body,
                json_t **out);

/* The same with a raw body of type `ctype` (borrowed: a secret value goes
 * from the caller's locked memory to the socket without a copy). */
int nb_cli_send(nb_cli_t *cli, const char *method, const char *path, const char *ctype,
                nb_iov_t body, json_t **out);

/* Makes sure nilboxd answers on the socket, starting it (next to this
 * binary, see nb_cli_find_nilboxd) when it does not; waits up to
 * `timeout_s`. Prints "nilbox: started nilboxd (pid N)" on stderr unless
 * `quiet`. *started is set to 1 when we started it. Returns an exit code. */
int nb_cli_ensure_daemon(nb_cli_t *cli, int timeout_s, int quiet, int *started);

/* Finds the nilboxd executable: $NILBOXD, then next to this binary, then
 * ../daemon/nilboxd (build tree), then $PATH. 1 when found. */
int nb_cli_find_nilboxd(char *out, size_t outsz);

#endif
