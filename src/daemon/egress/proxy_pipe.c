/* Raw byte pipes between the client and the upstream: raw TCP tunnels
 * after the gate, and WebSocket connections after the 101 answer. Bytes
 * are forwarded as they come, each direction paused while the other side
 * has more than NB_PXIO_HIGH_WATER bytes queued; an EOF on one side is
 * passed on as a half-close, and the connection ends once both directions
 * are finished and flushed. */
#include "daemon/egress/proxy_int.h"
#include "lib/log.h"

static void up_update_read(cconn_t *c)
{
    upconn_t *u = c->up;
    if (!u)
        return;
    int want = !c->pipe_u_eof && nb_pxio_queued(&c->io) <= NB_PXIO_HIGH_WATER;
    if (want && !u->io.want_read)
        nb_pxio_read_start(&u->io);
    else if (!want && u->io.want_read)
        nb_pxio_read_stop(&u->io);
}

static void maybe_done(cconn_t *c)
{
    upconn_t *u = c->up;
    if (!c->pipe_c_eof || !c->pipe_u_eof)
        return;
    if ((c->io.shut && !c->io.shut_done) || (u && u->io.shut && !u->io.shut_done))
        return; /* on_shutdown brings us back */
    px_conn_close(c);
}

void px_pipe_start(cconn_t *c, const uint8_t *cpre, size_t cprelen)
{
    c->state = CS_PIPE;
    if (cprelen && nb_pxio_write(&c->up->io, cpre, cprelen, 0) < 0) {
        px_conn_close(c);
        return;
    }
    if (c->client_eof) {
        c->pipe_c_eof = 1;
        nb_pxio_shutdown(&c->up->io);
    }
    px_conn_update_read(c);
    up_update_read(c);
}

void px_pipe_client_data(cconn_t *c, const uint8_t *p, size_t len)
{
    if (!c->up || nb_pxio_write(&c->up->io, p, len, 0) < 0) {
        px_conn_close(c);
        return;
    }
    px_conn_update_read(c);
}

void px_pipe_up_data(upconn_t *u, const uint8_t *p, size_t len)
{
    cconn_t *c = u->owner;
    px_conn_touch(c);
    if (nb_pxio_write(&c->io, p, len, 0) < 0) {
        px_conn_close(c);
        return;
    }
    up_update_read(c);
}

void px_pipe_client_eof(cconn_t *c)
{
    c->pipe_c_eof = 1;
    if (c->up)
        nb_pxio_shutdown(&c->up->io);
    px_conn_update_read(c);
    maybe_done(c);
}

void px_pipe_up_eof(upconn_t *u)
{
    cconn_t *c = u->owner;
    c->pipe_u_eof = 1;
    if (u->io.failed) {
        px_conn_close(c);
        return;
    }
    nb_pxio_shutdown(&c->io);
    up_update_read(c);
    maybe_done(c);
}

void px_pipe_client_drain(cconn_t *c)
{
    up_update_read(c);
}

void px_pipe_up_drain(upconn_t *u)
{
    px_conn_update_read(u->owner);
}

void px_pipe_shutdown_done(cconn_t *c)
{
    maybe_done(c);
}
