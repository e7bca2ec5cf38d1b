/* Shared state of portsvc.c (mappings) and portsvc_host.c (grants). */
#ifndef NB_PORTSVC_INT_H
#define NB_PORTSVC_INT_H

#include <stdint.h>

#include "daemon/egress/gate.h"
#include "daemon/portsvc.h"
#include "lib/stream.h"

#define NB_PORTS_MAX_CONNS 256     /* open connections per mapping (A28) */
#define NB_PORTS_MAX_GRANTS 1024   /* open host-service connections per daemon (A28) */
#define NB_PORTS_MAX_GRANTS_VM 128 /* ... and per VM, so one VM cannot starve another */

typedef struct pmap pmap_t;

typedef struct pconn {
    struct pconn *prev, *next;
    pmap_t *map;
    nb_stream_t *tcp, *mux;
    int nstreams, nclosed, closing;
} pconn_t;

struct pmap {
    struct pmap *next;
    nb_portsvc_t *ps;
    int64_t id;
    char vm[64];
    char bind[48];
    uint16_t host_port, guest_port;
    int public_;
    int64_t created_ms;
    uv_tcp_t srv;
    int srv_open, listening, removed;
    char err[96];
    pconn_t *conns;
    unsigned nconns;
    uint64_t last_refusal_ms;
};

/* One guest connection to a granted host port. */
typedef struct hconn {
    struct hconn *prev, *next;
    nb_portsvc_t *ps;
    char vm[64];
    uint16_t port;
    nb_stream_t *mux, *tcp;
    nb_gate_wait_t *wait;
    uv_connect_t req;
    int nstreams, nclosed, closing, connecting;
} hconn_t;

struct nb_portsvc {
    nb_daemon_t *d;
    uv_loop_t *loop;
    pmap_t *maps;
    hconn_t *hconns;
    unsigned nhconns;
    uint64_t evsub;
    unsigned live; /* maps and host connections not yet freed */
    int freed;
    uint64_t last_grant_ms;
};

void nb_ports_map_maybe_free(pmap_t *m);
void nb_ports_maybe_free(nb_portsvc_t *ps);
void nb_ports_host_close_all(nb_portsvc_t *ps);

#endif
