/* Transports for the nbmux channel (docs/protocol.md): Unix sockets,
 * virtio-serial character devices and AF_VSOCK. Each yields a connected
 * file descriptor for nb_muxsess_attach_fd(). Blocking calls: use them
 * where a short block is acceptable (connects to local endpoints). */
#ifndef NB_TRANSPORT_H
#define NB_TRANSPORT_H

#include <stdint.h>

enum {
    NB_TRANSPORT_UNIX = 1,   /* unix:PATH     connect to a listening Unix socket */
    NB_TRANSPORT_SERIAL = 2, /* serial:PATH   open a virtio-serial port (or tty) */
    NB_TRANSPORT_VSOCK = 3,  /* vsock:CID:PORT connect over AF_VSOCK */
};

typedef struct {
    int kind;
    char path[108]; /* UNIX (sun_path size) and SERIAL */
    uint32_t cid, port;
} nb_transport_t;

/* Parses "unix:PATH", "serial:PATH" or "vsock:CID:PORT". 0 or NB_EINVAL
 * (with `why`, when not NULL, pointing to a static reason). */
int nb_transport_parse(const char *spec, nb_transport_t *out, const char **why);

/* Connects / opens. Returns a non-blocking, close-on-exec fd (>= 0) owned
 * by the caller, or -errno. */
int nb_transport_connect(const nb_transport_t *t);

/* Creates a Unix listening socket at `path` with mode 0600, replacing a
 * stale socket file (never another kind of file). fd or -errno. */
int nb_transport_listen_unix(const char *path, int backlog);

/* Accepts one connection on a listening socket: fd (non-blocking,
 * close-on-exec) or -errno (-EAGAIN when none is pending). */
int nb_transport_accept(int lfd);

#endif
