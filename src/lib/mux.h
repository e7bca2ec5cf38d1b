/* nbmux v1 codec (docs/protocol.md): frame header, payload validation,
 * handshake MACs, and an incremental decoder.
 *
 * Pure: no I/O, no global state. The decoder validates every header before
 * buffering a payload and validates the structure of every control payload,
 * so anything it returns is well-formed; the session layer (muxsess.h) only
 * has to check state. */
#ifndef NB_MUX_H
#define NB_MUX_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define NB_MUX_VERSION 1
#define NB_MUX_HDR_LEN 10
#define NB_MUX_MAX_PAYLOAD 65536u
#define NB_MUX_HELLO_LEN 44
#define NB_MUX_AUTH_LEN 32
#define NB_MUX_NONCE_LEN 32
#define NB_MUX_KEY_LEN 32
#define NB_MUX_PING_LEN 8
#define NB_MUX_CTL_MAX 4096u
#define NB_MUX_SERVICE_MAX 32
#define NB_MUX_MSG_MAX 256
#define NB_MUX_INITIAL_WINDOW (256u * 1024u)
#define NB_MUX_MAX_CREDIT (1u << 30)

enum {
    NB_MUX_HELLO = 1,
    NB_MUX_AUTH = 2,
    NB_MUX_OPEN = 3,
    NB_MUX_OPEN_OK = 4,
    NB_MUX_OPEN_ERR = 5,
    NB_MUX_DATA = 6,
    NB_MUX_WINDOW = 7,
    NB_MUX_FIN = 8,
    NB_MUX_RST = 9,
    NB_MUX_PING = 10,
    NB_MUX_PONG = 11,
    NB_MUX_GOAWAY = 12,
    NB_MUX_TYPE_MAX = 12,
};

/* Bit masks of frame types for nb_mux_dec_allow(). */
#define NB_MUX_T(t) (1u << (t))
#define NB_MUX_MASK_HANDSHAKE (NB_MUX_T(NB_MUX_HELLO) | NB_MUX_T(NB_MUX_AUTH))
#define NB_MUX_MASK_ALL (((1u << (NB_MUX_TYPE_MAX + 1)) - 1) & ~1u)
#define NB_MUX_MASK_SESSION (NB_MUX_MASK_ALL & ~NB_MUX_MASK_HANDSHAKE)

/* DATA channels (the flags byte of DATA frames). */
enum {
    NB_MUX_CHAN_STDIO = 0,
    NB_MUX_CHAN_STDERR = 1,
    NB_MUX_CHAN_CTL = 2,
};

enum {
    NB_MUX_ROLE_HOST = 1,
    NB_MUX_ROLE_GUEST = 2,
};

/* Wire error codes (protocol.md §7). */
#define NB_MUX_CODE_TABLE(X)                                                                       \
    X(NONE, 0)                                                                                     \
    X(PROTOCOL, 1)                                                                                 \
    X(AUTH, 2)                                                                                     \
    X(VERSION, 3)                                                                                  \
    X(FLOW, 4)                                                                                     \
    X(LIMIT, 5)                                                                                    \
    X(FLOOD, 6)                                                                                    \
    X(TIMEOUT, 7)                                                                                  \
    X(SHUTDOWN, 8)                                                                                 \
    X(CANCEL, 9)                                                                                   \
    X(NO_SERVICE, 10)                                                                              \
    X(BAD_ARGS, 11)                                                                                \
    X(REFUSED, 12)                                                                                 \
    X(FAILED, 13)                                                                                  \
    X(INTERNAL, 14)                                                                                \
    X(BUSY, 15)

enum {
#define NB_MUX_CODE_ENUM(name, v) NB_MUX_E_##name = v,
    NB_MUX_CODE_TABLE(NB_MUX_CODE_ENUM)
#undef NB_MUX_CODE_ENUM
        NB_MUX_E_MAX = 15,
};

typedef struct {
    uint8_t type;
    uint8_t flags;
    uint32_t sid;
    uint32_t len;
} nb_mux_hdr_t;

/* One decoded event. For control frames and CTL-channel DATA, `payload` is
 * the complete payload (offset 0, last 1). For STDIO/STDERR DATA the
 * payload is delivered in pieces as it arrives: `offset` is the piece's
 * position in the frame and `last` marks the final piece. `payload` is
 * borrowed: it points into the input or into the decoder and is valid
 * until the next call. */
typedef struct {
    nb_mux_hdr_t hdr;
    nb_iov_t payload;
    uint32_t offset;
    int last;
} nb_mux_ev_t;

typedef struct {
    int state;      /* private */
    uint32_t allow; /* mask of accepted frame types */
    uint8_t hbuf[NB_MUX_HDR_LEN];
    uint8_t hhave;
    nb_mux_hdr_t cur;
    uint32_t got;      /* payload bytes of `cur` seen so far */
    uint8_t *pbuf;     /* whole-payload buffer, NB_MUX_MAX_PAYLOAD, lazily allocated */
    char err[128];     /* reason of the first error */
    uint32_t err_code; /* wire code for the GOAWAY (NB_MUX_E_*) */
} nb_mux_dec_t;

/* Initialises a decoder that accepts every type in NB_MUX_MASK_ALL.
 * Allocates nothing until a payload has to be buffered. */
void nb_mux_dec_init(nb_mux_dec_t *d);

/* Frees the decoder's buffer. No-op on a zeroed or freed decoder. */
void nb_mux_dec_free(nb_mux_dec_t *d);

/* Restricts accepted frame types to `mask` (NB_MUX_T bits). A frame of
 * another type is an error as soon as its header arrives. */
void nb_mux_dec_allow(nb_mux_dec_t *d, uint32_t mask);

/* Consumes bytes from `*in` (advancing it) until one event is complete.
 * Returns 1 with *ev filled, 0 when `*in` is exhausted without an event,
 * or a negative code (NB_EPROTO, NB_ETOOBIG, -ENOMEM) once the input is
 * malformed; errors are sticky and nb_mux_dec_error() gives the reason. */
int nb_mux_dec_next(nb_mux_dec_t *d, nb_iov_t *in, nb_mux_ev_t *ev);

/* Reason of the decoder's error ("" if none). Static until the next init. */
const char *nb_mux_dec_error(const nb_mux_dec_t *d);

/* Validates a frame header alone (type known, flags, stream id kind,
 * length bounds). Returns 0 or NB_EPROTO / NB_ETOOBIG; `why` (may be NULL)
 * gets a static reason. */
int nb_mux_check_hdr(const nb_mux_hdr_t *h, const char **why);

/* Validates the payload of a complete control frame of type `h->type`.
 * 0 or NB_EPROTO with a static reason in *why. */
int nb_mux_check_payload(const nb_mux_hdr_t *h, nb_iov_t p, const char **why);

/* ---- payload accessors (on payloads that passed nb_mux_check_payload) ---- */

typedef struct {
    uint16_t version;
    uint8_t role;
    uint32_t features;
    const uint8_t *nonce; /* NB_MUX_NONCE_LEN bytes, borrowed */
} nb_mux_hello_t;

/* Parses a HELLO payload. 0 or NB_EPROTO (bad length or magic). A version
 * other than NB_MUX_VERSION is returned as parsed: the caller refuses it. */
int nb_mux_parse_hello(nb_iov_t p, nb_mux_hello_t *out);

/* Splits an OPEN payload into service name and arguments (both borrowed). */
int nb_mux_parse_open(nb_iov_t p, nb_iov_t *service, nb_iov_t *args);

/* Splits an OPEN_ERR / RST / GOAWAY payload into code and message. */
int nb_mux_parse_code(nb_iov_t p, uint32_t *code, nb_iov_t *msg);

/* Reads the u32 of a WINDOW payload. */
uint32_t nb_mux_parse_u32(nb_iov_t p);

/* ---- encoding ---- */

/* Writes a 10-byte header into out. */
void nb_mux_put_hdr(uint8_t out[NB_MUX_HDR_LEN], uint8_t type, uint8_t flags, uint32_t sid,
                    uint32_t len);

/* Builds a 44-byte HELLO payload into out. */
void nb_mux_put_hello(uint8_t out[NB_MUX_HELLO_LEN], uint8_t role, uint32_t features,
                      const uint8_t nonce[NB_MUX_NONCE_LEN]);

/* Appends one whole frame to b. 0, NB_ETOOBIG (payload too long or b's
 * cap) or -ENOMEM; on error b is unchanged. */
int nb_mux_enc_frame(nb_buf_t *b, uint8_t type, uint8_t flags, uint32_t sid, const void *payload,
                     size_t len);

/* OPEN frame. NB_EINVAL for an invalid service name. */
int nb_mux_enc_open(nb_buf_t *b, uint32_t sid, const char *service, nb_iov_t args);

/* OPEN_ERR / RST / GOAWAY frame; `msg` (may be NULL) is cut to NB_MUX_MSG_MAX. */
int nb_mux_enc_code(nb_buf_t *b, uint8_t type, uint32_t sid, uint32_t code, const char *msg);

/* WINDOW frame. */
int nb_mux_enc_window(nb_buf_t *b, uint32_t sid, uint32_t increment);

/* ---- authentication ---- */

/* MAC_role over the two HELLO payloads (protocol.md §2). */
void nb_mux_auth_mac(uint8_t out[NB_MUX_AUTH_LEN], const uint8_t key[NB_MUX_KEY_LEN],
                     uint8_t prover_role, const uint8_t hello_host[NB_MUX_HELLO_LEN],
                     const uint8_t hello_guest[NB_MUX_HELLO_LEN]);

/* Constant-time check of a received MAC. 0 or NB_EAUTH. */
int nb_mux_auth_verify(const uint8_t mac[NB_MUX_AUTH_LEN], const uint8_t key[NB_MUX_KEY_LEN],
                       uint8_t prover_role, const uint8_t hello_host[NB_MUX_HELLO_LEN],
                       const uint8_t hello_guest[NB_MUX_HELLO_LEN]);

/* ---- names ---- */

/* "DATA", "OPEN", ... or "UNKNOWN". Static. */
const char *nb_mux_type_name(unsigned type);

/* "PROTOCOL", "FLOW", ... or "UNKNOWN". Static. */
const char *nb_mux_code_name(uint32_t code);

/* Maps a wire code to an NB_E* / -errno for local callers, and back. */
int nb_mux_code_to_err(uint32_t code);
uint32_t nb_mux_err_to_code(int err);

/* 1 when s (len n) is a valid service name: 1..32 of [a-z0-9_-]. */
int nb_mux_service_valid(const void *s, size_t n);

#endif
