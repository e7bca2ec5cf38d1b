/* Internals of the SSH gateway shared by its loop side (sshgw.c,
 * sshgw_relay.c) and its session threads (sshgw_sess.c).
 *
 * One socketpair per SSH channel carries frames: type (1 byte), length
 * (4 bytes, big endian), payload. Types 0..2 are the nbmux channels
 * (STDIO, STDERR, CTL: JSON), passed through unchanged; FIN ends the
 * sender's direction; OPEN (thread -> loop, the first frame) names the VM,
 * the service and its arguments; STATUS (loop -> thread) says whether the
 * stream opened ({"ok": true}) or why it ended ({"error": "..."}). Closing
 * the socket ends the channel at once (the loop resets the stream). */
#ifndef NB_SSHGW_INT_H
#define NB_SSHGW_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/sshgw.h"

enum {
    NB_SSHF_STDIO = 0,
    NB_SSHF_STDERR = 1,
    NB_SSHF_CTL = 2,
    NB_SSHF_FIN = 0x10,
    NB_SSHF_OPEN = 0x11,
    NB_SSHF_STATUS = 0x12,
};

#define NB_SSHF_HDR 5
#define NB_SSHF_MAX (64u * 1024u) /* largest payload either side sends or takes */

/* Decodes one frame at the start of p[0..n): 1 with *type, *pay, *plen and
 * *used set; 0 when more bytes are needed; NB_EPROTO for a bad type or a
 * length above NB_SSHF_MAX. Pure (fuzzed: fuzz_sshframe). */
int nb_sshf_decode(const uint8_t *p, size_t n, unsigned *type, const uint8_t **pay, size_t *plen,
                   size_t *used);
/* Writes the 5-byte header of a frame. */
void nb_sshf_header(uint8_t h[NB_SSHF_HDR], unsigned type, size_t len);

typedef struct sess sess_t;

struct nb_sshgw {
    nb_daemon_t *d;
    uv_tcp_t listener;
    uv_async_t async; /* session threads hand over channel fds and end */
    int port, handles;
    char key_path[4096];
    char host_pub[256]; /* "ssh-ed25519 AAAA..." */
    char fingerprint[128];
    char own_keys[4096];  /* $NILBOX_HOME/ssh/authorized_keys */
    char user_keys[4096]; /* ~/.ssh/authorized_keys ("" without HOME) */
    void *bind;           /* ssh_bind (libssh), only used under `mu` */
    pthread_mutex_t mu;
    int *fds; /* channel fds waiting for the loop (under mu) */
    size_t nfds, capfds;
    sess_t *sessions; /* live and finished threads (under mu) */
    int nsessions;
    int stopping; /* (under mu) */
    int relays;   /* live relays (loop thread) */
    int freeing;
};

/* Session threads (sshgw_sess.c). Starts a thread for the accepted TCP
 * connection `fd` (owned from now on). 0 or an error (fd closed). */
int nb_sshgw_sess_start(nb_sshgw_t *g, int fd);
/* Joins the finished threads (stopping: all of them, after asking them to
 * end). Loop thread. */
void nb_sshgw_sess_reap(nb_sshgw_t *g, int stopping);
/* Queues a channel fd for the loop and wakes it (session threads). 0, or
 * an error when the gateway stops (the caller closes fd). */
int nb_sshgw_handoff(nb_sshgw_t *g, int fd);

/* Frees the gateway once nb_sshgw_free ran and its handles and relays
 * are gone. */
void nb_sshgw_maybe_free(nb_sshgw_t *g);

/* Loop side (sshgw_relay.c): takes over the loop end of a channel. */
void nb_sshgw_relay_start(nb_sshgw_t *g, int fd);

#endif
