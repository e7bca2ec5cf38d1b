/* Port mappings and host-service grants: the two doors between the host's
 * TCP and a VM that the user opens on purpose (DESIGN.md section 8,
 * THREATS.md A14, A26; docs/internals/ports.md).
 *
 * Port mapping: a listener on ADDR:HOSTPORT (loopback unless the user asked
 * for a public address) whose every accepted connection becomes a `tcp`
 * stream to GUESTPORT on the guest's loopback, spliced (lib/stream.h). The
 * mappings live in the `port_maps` table; their listeners are bound while
 * the daemon runs, whatever the VM's state, so a VM restart needs nothing
 * and the host port stays ours (a connection while the VM is down is
 * reset). Loopback listeners only serve processes of the daemon's own user
 * (the client socket's owner, asked from the kernel: host/sockdiag.h, A26).
 *
 * Host-service grant: a guest connection to host.nilbox.internal:PORT (the
 * transparent egress path) reaches host 127.0.0.1:PORT when the gate allows
 * that exact name and port (an `allow host:PORT` rule or a prompt answer),
 * and never when PORT is one this daemon itself listens on (API, proxies,
 * port mappings, gateways), whatever the rules say.
 *
 * Loop thread only. */
#ifndef NB_PORTSVC_H
#define NB_PORTSVC_H

#include <jansson.h>
#include <stdint.h>

#include "daemon/egress/rules.h"
#include "daemon/services.h"

/* The `port_maps` table (re-runnable). */
#define NB_PORTS_MIGRATION_SQL                                                                     \
    "CREATE TABLE IF NOT EXISTS port_maps ("                                                       \
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"                                                      \
    "  vm TEXT NOT NULL,"                                                                          \
    "  bind TEXT NOT NULL,"                                                                        \
    "  host_port INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),"                          \
    "  guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),"                        \
    "  public INTEGER NOT NULL DEFAULT 0,"                                                         \
    "  created_at INTEGER NOT NULL,"                                                               \
    "  UNIQUE (bind, host_port));"                                                                 \
    "CREATE INDEX IF NOT EXISTS port_maps_vm ON port_maps (vm);"

typedef struct nb_portsvc nb_portsvc_t;

/* Loads the stored mappings and binds their listeners (a listener that
 * cannot bind is kept with its error, shown by list, and retried when its
 * VM starts). 0 or a negative code with a sentence in err. */
int nb_portsvc_new(nb_daemon_t *d, nb_portsvc_t **out, char *err, size_t errsz);

/* Closes every listener and connection; frees once their handles closed.
 * NULL is a no-op. */
void nb_portsvc_free(nb_portsvc_t *ps);

/* Adds and binds a mapping. `bind` is an IP literal ("127.0.0.1" when
 * NULL); a non-loopback one needs `public`. 0 with *out the mapping's JSON
 * (new reference); NB_EINVAL (bad address, port, or public missing),
 * NB_ENOTFOUND (no such VM), NB_EEXIST (the host port is already mapped),
 * or a libuv error such as UV_EADDRINUSE (the port is busy); `err` says it
 * in a sentence. */
int nb_portsvc_add(nb_portsvc_t *ps, const char *vm, const char *bind, int host_port,
                   int guest_port, int public_, json_t **out, char *err, size_t errsz);

/* Removes mapping `id`, closing its listener and connections. 0 or
 * NB_ENOTFOUND. */
int nb_portsvc_rm(nb_portsvc_t *ps, int64_t id);

/* The id of VM `vm`'s mapping of host port `port` (any bind address), or
 * 0. */
int64_t nb_portsvc_find(nb_portsvc_t *ps, const char *vm, int port);

/* [{"id","vm","bind","host_port","guest_port","public","listening",
 * "error","connections","created"}], only VM `vm`'s when not NULL. */
json_t *nb_portsvc_list(nb_portsvc_t *ps, const char *vm);

/* A guest egress stream for host.nilbox.internal:`port` (guestsvc_net.c
 * hands it over still pending; this takes it in every case): judged,
 * then connected to 127.0.0.1:port and spliced, or rejected. */
void nb_portsvc_host_open(nb_portsvc_t *ps, const char *vm, nb_muxsess_stream_t *st, uint16_t port);

#endif
