/* Streaming redactor for response bytes (THREATS.md A5, echo exfiltration).
 *
 * Holds a few (needle -> replacement) pairs, e.g. an injected secret value
 * -> its placeholder name, and rewrites a byte stream so that no needle
 * reaches the guest, even when an occurrence is split across chunks: the
 * longest chunk tail that could still start a needle is held back (in
 * locked memory) until the next chunk or the end decides it. Nothing else
 * is delayed: a chunk that does not end in a needle prefix is passed on
 * whole, so SSE events are not slowed down.
 *
 * At the end of the stream, a held-back tail that is a prefix of a needle
 * of at least NB_REDACT_MIN_PARTIAL bytes is replaced too: an upstream
 * that echoes a secret cut short by one byte must not hand the guest all
 * but one byte of it.
 *
 * A needle is found in every per-byte spelling an echo may give it, mixed
 * freely: the byte itself, percent-encoding (either hex case, also nested:
 * "%252F"), JSON
 * escapes ("\/", "\"", "\\", "\u002F" in either case; backslashes doubled
 * for JSON inside a JSON string) and HTML character
 * references ("&#x2F;", "&#47;", with or without the ';', any number of
 * leading zeros, a few named ones such as "&sol;") and UTF-16/UTF-32 text
 * of either byte order (NULs beside each byte). Leading zeros past
 * the second are dropped from the output to keep every spelling bounded
 * (see nb_redact_feed). A needle is also found in any ASCII case (an
 * upstream upper- or lower-casing its echo), as hex of the value (any
 * case) and as base64 of it (either alphabet, padded or not, at any of the
 * 3 alignments), when that run is at least NB_REDACT_MIN_ENC characters
 * (redact.c, "literal runs"); these runs are derived from each needle at
 * the first feed and do not count against NB_REDACT_MAX_NEEDLES. Other
 * transforms (a value split across messages, encodings of an encoding
 * such as percent-encoded base64) stay out of reach: docs/security.md
 * (A5). Compressed bodies are decoded before they get here (decode.h).
 *
 * Needles, held bytes and scratch space live in one sodium_malloc()ed
 * arena, wiped on reset and free. Keep one redactor per connection and
 * nb_redact_reset() it for each response: allocating locked memory costs
 * several system calls. Not thread-safe. */
#ifndef NB_REDACT_H
#define NB_REDACT_H

#include <stddef.h>
#include <stdint.h>

#define NB_REDACT_MAX_NEEDLES 128
#define NB_REDACT_MAX_NEEDLE 131072
#define NB_REDACT_MIN_PARTIAL 8
/* Shortest hex or base64 run of a value that is looked for (see redact.c,
 * "literal runs"): hex needs a value of 6 bytes or more, base64 one of
 * about 10. Shorter runs would match ordinary text. */
#define NB_REDACT_MIN_ENC 12
/* Longest spelling of one byte ("&#x002F;"): an occurrence of an n-byte
 * needle spans at most n * NB_REDACT_SPELL_MAX stream bytes, the most that
 * is ever held back. */
#define NB_REDACT_SPELL_MAX 8

typedef struct nb_redact nb_redact_t;

/* Receives output bytes, borrowed for the duration of the call. A non-zero
 * return aborts the feed and is returned from it. */
typedef int (*nb_redact_sink)(void *ctx, const uint8_t *p, size_t len);

int nb_redact_new(nb_redact_t **out);

/* Wipes the needles and the held-back bytes; NULL is a no-op. */
void nb_redact_free(nb_redact_t *r);

/* Wipes and forgets the needles and any held bytes (unflushed bytes are
 * dropped), keeping the arena for the next response. */
void nb_redact_reset(nb_redact_t *r);

/* Adds a pair (both copied). Only allowed before the first feed.
 * NB_EINVAL for an empty or oversized needle, NB_ETOOBIG past
 * NB_REDACT_MAX_NEEDLES, NB_ESTATE after feeding started. Adding a needle
 * that is already present is a no-op. */
int nb_redact_add(nb_redact_t *r, const void *needle, size_t nlen, const void *repl, size_t rlen);

/* Resets `dst` and gives it the needles of `src` (for a second stream
 * that must be scanned independently, e.g. WebSocket control frames
 * interleaved in a fragmented message). */
int nb_redact_copy(nb_redact_t *dst, const nb_redact_t *src);

/* Number of needles. */
size_t nb_redact_needles(const nb_redact_t *r);

/* Passes `len` bytes through, calling `sink` for the output. The output
 * differs from the input only where a needle was replaced and where a
 * numeric character reference had more than two leading zeros ("&#0000047;"
 * leaves as "&#0047;", the same character to an HTML reader). */
int nb_redact_feed(nb_redact_t *r, const uint8_t *p, size_t len, nb_redact_sink sink, void *ctx);

/* End of stream: flushes the held-back bytes (redacted as described). */
int nb_redact_finish(nb_redact_t *r, nb_redact_sink sink, void *ctx);

/* Replacements made so far (for the audit row). */
uint64_t nb_redact_count(const nb_redact_t *r);

#endif
