/* The egress proxy engine (DESIGN.md section 6, host side; THREATS.md
 * A1-A9, A13, A15, A23). See docs/internals/proxy.md.
 *
 * One engine per daemon holds what every connection shares: the gate, the
 * interception CA's server context, the credential snapshot, the record
 * hook (audit + events). Listeners hang off it: each accepts proxy clients
 * on a TCP address and speaks for one VM (`nilbox proxy --listen ... --vm
 * NAME`; the guest channel uses the same engine later).
 *
 * Per client connection: an explicit HTTP proxy. `CONNECT host:port` is
 * judged by the gate; on ports 80/443 and ports an allow rule marks as
 * HTTP the tunnel is inspected (TLS terminated with a minted leaf whose SNI
 * must be the CONNECT name, A8; every request's Host must be that name,
 * A1), elsewhere it becomes a raw TCP tunnel. Absolute-form `http://`
 * requests are judged per request. Inspected requests get credentials
 * injected by binding only (inject.h), responses are redacted (redact.h),
 * everything streams with back-pressure. Denials are 403 JSON bodies with
 * X-Nilbox-Reason, inside TLS too; upstream failures are 502/504 the same
 * way.
 *
 * Loop thread only. */
#ifndef NB_PROXY_H
#define NB_PROXY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/egress/proxy_cfg.h"
#include "lib/hostname.h"
#include "lib/stream.h"

typedef struct nb_proxy nb_proxy_t;
typedef struct nb_proxy_listener nb_proxy_listener_t;

void nb_proxy_cfg_default(nb_proxy_cfg_t *cfg);

/* Creates the engine (builds the TLS server context on `cfg->ca`). */
int nb_proxy_new(uv_loop_t *loop, const nb_proxy_cfg_t *cfg, nb_proxy_t **out);

/* Closes every listener and connection, then frees the engine and calls
 * `done` (may be NULL) once all handles are closed. */
void nb_proxy_free(nb_proxy_t *px, void (*done)(void *ud), void *ud);

/* Installs a credential snapshot (takes the caller's reference; values
 * are unsealed through cfg.unseal when set). Requests already past
 * injection keep the one they used. NULL installs an empty one. */
void nb_proxy_set_creds(nb_proxy_t *px, nb_pxcreds_t *c);

/* Installs the OAuth bindings (takes the caller's reference; NULL: none).
 * Exchanges in flight keep the set they started with. */
void nb_proxy_set_oauth(nb_proxy_t *px, nb_oauth_set_t *s);

/* Parses "HOST:ADDR" or "HOST:PORT:ADDR:PORT" (ADDR an IPv4 literal or a
 * bracketed IPv6 one). 0 or NB_EINVAL. */
int nb_proxy_resolve_parse(const char *spec, nb_proxy_resolve_t *out);

typedef struct {
    const char *ip;                    /* listen address: "127.0.0.1" (loopback addresses only) */
    int port;                          /* 0: any */
    const char *vm;                    /* the VM the clients speak for (scope of rules, bindings) */
    const char *upstream_ca_file;      /* test only: an extra trusted CA (PEM) */
    const nb_proxy_resolve_t *resolve; /* test only */
    size_t nresolve;
    int ip_no_prompt; /* an IP-literal destination that no rule decides is denied at once
                         instead of prompting (the guest channel: A12) */
    /* Client authentication (TCP listeners; the guest channel needs none:
     * its only client is the VM). Every CONNECT and every absolute-form
     * request must carry `Proxy-Authorization: Basic base64(USER:TOKEN)`
     * (any USER) or `Bearer TOKEN`, checked in constant time before
     * anything else; otherwise 407 with Proxy-Authenticate, no gate, no
     * upstream. Copied (and wiped on close). NULL: no check (test
     * harnesses only; the daemon always sets one). 16..128 bytes. */
    const char *auth_token;
} nb_proxy_listen_opts_t;

/* Opens a listener. NB_EINVAL for a non-loopback address or a bad VM name
 * or CA file; libuv codes for bind failures. */
int nb_proxy_listen(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, nb_proxy_listener_t **out);

/* Opens a listener on a Unix socket at `path` (absolute, created 0600; a
 * stale socket file is replaced, never another kind of file; removed when
 * the listener closes). Clients need no token: only peers running as the
 * daemon's user (SO_PEERCRED) are served, others are closed and recorded.
 * `o->ip`, `o->port` and `o->auth_token` are ignored. -EEXIST when `path`
 * is another kind of file. */
int nb_proxy_listen_unix(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, const char *path,
                         nb_proxy_listener_t **out);

/* The socket path of a Unix listener, NULL for others. */
const char *nb_proxy_listener_path(const nb_proxy_listener_t *l);

/* Opens a channel listener: the same engine and options as
 * nb_proxy_listen() (`o->ip` and `o->port` are ignored), but it accepts
 * nothing itself; connections are handed to it with nb_proxy_adopt_stream().
 * The guest channel uses one per VM for its `egress` streams. */
int nb_proxy_attach(nb_proxy_t *px, const nb_proxy_listen_opts_t *o, nb_proxy_listener_t **out);

/* Where a transparently captured connection was going: a normalised name
 * (the fake-IP name) or an IP literal, and the port. */
typedef struct {
    const char *host;
    uint16_t port;
} nb_proxy_dest_t;

/* Hands a connected byte stream (e.g. a guest's nbmux egress stream) to
 * listener `l` as a new client connection; on 0 the connection owns it
 * and has taken over its callbacks, on error the caller still owns it
 * (and answers the guest). `dest` NULL: the client speaks the explicit
 * proxy protocol. -EBUSY when the connection budget is used up (the
 * refusal is recorded).
 * Otherwise it is transparent: judged and handled as if it had sent
 * `CONNECT host:port` (no CONNECT exchange on the wire: its first bytes
 * are already TLS, HTTP or, on other ports, tunnel data). 0, NB_EINVAL (a
 * bad destination), NB_ESTATE (closing), or a libuv code. */
int nb_proxy_adopt_stream(nb_proxy_listener_t *l, nb_stream_t *s, const nb_proxy_dest_t *dest);

/* Stops accepting, closes its connections; the listener is freed when
 * they are gone. */
void nb_proxy_listener_close(nb_proxy_listener_t *l);

uint64_t nb_proxy_listener_id(const nb_proxy_listener_t *l);
int nb_proxy_listener_port(const nb_proxy_listener_t *l);
const char *nb_proxy_listener_vm(const nb_proxy_listener_t *l);
nb_proxy_listener_t *nb_proxy_listener_find(nb_proxy_t *px, uint64_t id);

/* Listeners as JSON [{id, listen, vm, connections, test_mode}] (new ref). */
json_t *nb_proxy_listeners_json(const nb_proxy_t *px);

void nb_proxy_stats(const nb_proxy_t *px, nb_proxy_stats_t *st);

#endif
