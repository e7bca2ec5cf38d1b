/* Blocking WebSocket client (RFC 6455) over the daemon's Unix socket, for
 * `nilbox events --follow` and other streaming commands. The handshake
 * goes through cli/client.c, frames through lib/ws.c (the daemon's codec,
 * client role): client frames are masked, server frames must not be,
 * messages are reassembled up to a cap, pings are answered. */
#ifndef NB_CLI_WSCLIENT_H
#define NB_CLI_WSCLIENT_H

#include <stddef.h>

#include "lib/buf.h"

typedef struct nb_wsc nb_wsc_t;

enum { NB_WSC_TEXT = 1, NB_WSC_BINARY = 2 };

/* Connects to `sock`, upgrades `path` (may carry a query) and checks the
 * handshake. Returns 0 or a negative code; for a non-101 answer the
 * status goes to *http_status (if not NULL) and the error body (JSON
 * message, if any) to `err` (size errsz), returning NB_EPROTO. */
int nb_wsc_connect(const char *sock, const char *path, int timeout_ms, nb_wsc_t **out,
                   int *http_status, char *err, size_t errsz);

/* Waits up to timeout_ms (< 0: forever) for the next complete message and
 * replaces `msg`'s contents with it; *opcode gets NB_WSC_TEXT/BINARY.
 * Returns 0, NB_ETIMEOUT, NB_ECLOSED (peer closed; *close_code set when
 * not NULL), NB_ETOOBIG or NB_EPROTO. */
int nb_wsc_recv(nb_wsc_t *c, int timeout_ms, int *opcode, nb_buf_t *msg, int *close_code);

/* Sends one masked message. */
int nb_wsc_send(nb_wsc_t *c, int opcode, const void *data, size_t len);

/* The socket, for poll() together with other descriptors. */
int nb_wsc_fd(const nb_wsc_t *c);

/* Sends a close frame (best effort), closes the socket, frees. NULL ok. */
void nb_wsc_free(nb_wsc_t *c);

#endif
