/* Streaming scanner for the server-to-client half of a WebSocket
 * connection the proxy relays (THREATS.md A5).
 *
 * After a 101 on a host with bindings, the upstream's frames are parsed as
 * they pass and their payloads go through the redactor, so that a server
 * echoing an injected value (e.g. the handshake's Authorization) in a
 * frame hands the guest the placeholder instead. The replacement changes
 * the length, so the output is re-framed:
 *  - a data message (text or binary, whole or fragmented) leaves as the
 *    redactor produces it: each piece in its own non-final frame (the
 *    message's opcode first, then continuations), then an empty final
 *    frame. A value split across a non-final frame and its continuation
 *    is caught: the redactor runs over the whole message. Nothing is
 *    buffered beyond what could start a match, whatever the frame size.
 *  - control frames (close, ping, pong; at most 125 bytes, possibly
 *    between the fragments of a message) go through their own redactor
 *    and leave whole, cut to 125 bytes if the replacement made them longer.
 * Frames from the server must not be masked and must not set RSV bits:
 * the proxy strips Sec-WebSocket-Extensions from the handshake on scanned
 * hosts, so no extension (permessage-deflate) can be in effect; a frame
 * that says otherwise is a protocol error and the connection ends.
 *
 * Pure and incremental (fuzzed: fuzz_wsscan); not thread-safe. */
#ifndef NB_WSSCAN_H
#define NB_WSSCAN_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/egress/redact.h"

typedef struct nb_wsscan nb_wsscan_t;

typedef int (*nb_wsscan_sink)(void *ctx, const uint8_t *p, size_t len);

/* `data` scans message payloads, `ctl` control payloads; both borrowed,
 * holding the same needles, fed for the first time by this scanner or
 * already finished. -ENOMEM or 0. */
int nb_wsscan_new(nb_redact_t *data, nb_redact_t *ctl, nb_wsscan_t **out);
void nb_wsscan_free(nb_wsscan_t *s); /* NULL is a no-op */

/* Parses `len` bytes from the server and writes the re-framed, redacted
 * frames to `sink`. 0, NB_EPROTO (a frame the client must not get: the
 * connection ends), or the sink's / redactor's error. Errors are final. */
int nb_wsscan_feed(nb_wsscan_t *s, const uint8_t *p, size_t len, nb_wsscan_sink sink, void *ctx);

/* 1 while a frame or a message is incomplete (for an EOF mid-frame). */
int nb_wsscan_partial(const nb_wsscan_t *s);

#endif
