/* TLS ClientHello parser: extracts the SNI host name from the first bytes
 * a client sends on a connection (A8: the SNI must equal the name the gate
 * approved, before any certificate is minted or any byte is forwarded).
 *
 * Pure and incremental: feed bytes as they arrive, in any split; the
 * parser copies at most NB_TLSSNI_HELLO_MAX bytes of handshake data and
 * never reads past what it was given. It accepts exactly one ClientHello
 * (possibly fragmented over several handshake records) and rejects:
 * non-handshake records, SSLv2 hellos, record lengths of 0 or > 2^14,
 * other handshake types, malformed or inconsistent lengths, duplicate
 * extensions, more than one host_name, empty or > 255-byte names, and any
 * bytes after the ClientHello inside its last record. Bytes after that
 * record (e.g. 0-RTT data) are not consumed: *used says where they start.
 * No allocation; the struct is about 17 KiB. */
#ifndef NB_TLSSNI_H
#define NB_TLSSNI_H

#include <stddef.h>
#include <stdint.h>

#define NB_TLSSNI_HELLO_MAX 16384
#define NB_TLSSNI_MAX_EXTENSIONS 64

enum {
    NB_TLSSNI_MORE = 0, /* everything consumed, need more bytes */
    NB_TLSSNI_DONE = 1, /* ClientHello complete and valid */
};

typedef struct {
    /* results, valid after NB_TLSSNI_DONE */
    int has_sni;
    char sni[256]; /* raw host_name bytes, NUL-terminated (no NUL inside) */
    size_t sni_len;
    int offers_tls13; /* supported_versions lists 0x0304 */
    int has_alpn;

    /* private state */
    int state; /* 0 running, 1 done, <0 error code */
    uint8_t rec_hdr[5];
    size_t rec_hdr_len;
    size_t rec_left; /* body bytes of the current record still to come */
    size_t hs_need;  /* 4 + message length once the header is known, else 0 */
    size_t hs_len;
    uint8_t hs[NB_TLSSNI_HELLO_MAX + 4];
} nb_tlssni_t;

void nb_tlssni_init(nb_tlssni_t *p);

/* Feeds `len` bytes. Returns NB_TLSSNI_MORE, NB_TLSSNI_DONE (with *used =
 * bytes of this call that belonged to the ClientHello's records), NB_EPARSE
 * for malformed input or NB_ETOOBIG for a ClientHello over the cap. Once
 * done or failed, later calls return the same result and consume nothing.
 * `used` may be NULL. */
int nb_tlssni_feed(nb_tlssni_t *p, const uint8_t *data, size_t len, size_t *used);

#endif
