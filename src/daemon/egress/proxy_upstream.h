/* The proxy's HTTP/1.1 client toward upstreams (proxy_upstream.c):
 * resolution on the host, the internal-address filter (A13), connect with
 * fallback over the resolved addresses, TLS with certificate and name
 * verification, the response parser and the keep-alive pool.
 *
 * An upstream connection knows nothing of who uses it: its owner installs
 * callbacks and an opaque pointer (u->ud) and may swap them (an HTTP
 * exchange hands its connection to a byte pipe after 101). Detached
 * (pooled, closing) connections call nothing. Internal to the proxy; loop
 * thread only. */
#ifndef NB_PROXY_UPSTREAM_H
#define NB_PROXY_UPSTREAM_H

#include <stdint.h>

#include "daemon/egress/proxy_cfg.h"
#include "daemon/egress/proxy_io.h"
#include "lib/buf.h"
#include "lib/http.h"

typedef struct upconn upconn_t;

typedef struct {
    /* The connection is usable (r == 0) or failed (r < 0: fail_status,
     * fail_token, fail_msg, fail_addr say why; the callback is detached
     * already and the owner closes it). May run inside nb_px_up_acquire. */
    void (*ready)(upconn_t *u, int r);
    /* The response (after nb_px_up_expect): head, body bytes, end; the
     * callbacks of u->rp, which the owner feeds from `data`. */
    int (*head)(upconn_t *u, const nb_http_head_t *h);
    int (*body)(upconn_t *u, const uint8_t *p, size_t len);
    int (*end)(upconn_t *u);
    /* Bytes received; an HTTP owner feeds them to u->rp. */
    void (*data)(upconn_t *u, const uint8_t *p, size_t len);
    void (*eof)(upconn_t *u); /* EOF or error (u->io.failed) after ready */
    void (*drain)(upconn_t *u);
    void (*shutdown)(upconn_t *u); /* nb_pxio_shutdown() completed; may be NULL */
    void (*timeout)(upconn_t *u);  /* no response head in time (nb_px_up_arm_response) */
} nb_px_up_cbs_t;

/* The upstream connections of one listener: what they need from it, the
 * idle pool, and how many are alive. */
typedef struct {
    uv_loop_t *loop;
    const nb_proxy_cfg_t *cfg; /* timeouts, pool caps, the gate (A13 exceptions) */
    nb_proxy_stats_t *st;      /* resolves, pool_reused */
    SSL_CTX *client_ctx;
    const char *vm;
    const nb_proxy_resolve_t *resolve; /* test-mode overrides */
    size_t nresolve;
    int closing;                   /* pool nothing more */
    upconn_t *idle;                /* idle connections */
    unsigned nups;                 /* connections alive (owned, pooled or closing) */
    void (*on_empty)(void *owner); /* the last one was freed */
    void *owner;
} nb_px_pool_t;

enum { UP_RESOLVING = 1, UP_CONNECTING, UP_HANDSHAKE, UP_READY, UP_POOLED, UP_CLOSING };

#define UP_MAX_ADDRS 8

struct upconn {
    nb_px_pool_t *pool;
    const nb_px_up_cbs_t *cbs; /* NULL while pooled or closing */
    void *ud;                  /* the owner's */
    upconn_t *next, *prev;     /* pool list */
    nb_pxio_t io;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    unsigned handles;
    uint8_t state;
    uint8_t tmode; /* what the timer measures (proxy_upstream.c) */
    unsigned gai_pending : 1, is_ip : 1, tls : 1, reused : 1;
    uint16_t port;
    char host[NB_HOSTNAME_BUFSZ];
    struct sockaddr_storage addrs[UP_MAX_ADDRS];
    size_t naddrs, next_addr;
    char addr_text[64];     /* the address connected to, for logs */
    nb_http_parser_t *rp;   /* the response parser (nb_px_up_expect) */
    int fail_status;        /* 502 / 504 */
    const char *fail_token; /* X-Nilbox-Reason */
    char fail_msg[224];
    char fail_addr[64]; /* internal-address: the address that was refused */
    uint16_t fail_port; /* ... and the port it was refused on */
};

/* Takes a pooled connection (unless `fresh`) or starts a new one, owned
 * through `cbs` and `ud`. *out is set before any callback runs: `ready`
 * may run before this returns (a pooled connection, an address refused at
 * once), and on failure the owner's slot is cleared by its own callback.
 * 0 or -ENOMEM (nothing started). */
int nb_px_up_acquire(nb_px_pool_t *pool, const char *host, int is_ip, uint16_t port, int tls,
                     int fresh, const nb_px_up_cbs_t *cbs, void *ud, upconn_t **out);
/* Installs other callbacks (NULL detaches). */
void nb_px_up_attach(upconn_t *u, const nb_px_up_cbs_t *cbs, void *ud);
/* The owner is done with it: pooled when `reusable` and clean, else closed. */
void nb_px_up_release(upconn_t *u, int reusable);
void nb_px_up_close(upconn_t *u);
void nb_px_up_pool_drain(nb_px_pool_t *pool);
/* A request for `method` is about to be written: parse its response. 0 or
 * -ENOMEM. */
int nb_px_up_expect(upconn_t *u, const char *method);
void nb_px_up_arm_response(upconn_t *u); /* the request is out: time the response head */
void nb_px_up_disarm(upconn_t *u);

#endif
