/* Internal to the guest services (not an interface; the API is
 * guestsvc.h): the state shared by, calls pointing down only,
 *   guestsvc.c       top: composes the two services (watchers, the VM
 *                    manager's hooks, dropping a VM's state, lifecycle)
 *   guestsvc_net.c   guest networking: egress and DNS streams
 *   guestsvc_prov.c  guest provisioning: placeholders, CA, environment
 *   guestsvc_vm.c    bottom: the per-VM table, the service's references
 * Loop thread only. */
#ifndef NB_GUESTSVC_INT_H
#define NB_GUESTSVC_INT_H

#include "daemon/guestsvc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sodium.h>
#include "daemon/audit.h"
#include "daemon/egress/fakedns.h"
#include "daemon/egress/gate.h"
#include "daemon/egress/proxy.h"
#include "daemon/base/events.h"
#include "daemon/secretsvc.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/stream.h"

/* Where things live in the guest (images/tiny, images/debian and the
 * agent's ctl allowlist agree on these). */
#define GUEST_PROXY_URL "http://127.0.0.1:8088"
#define GUEST_NO_PROXY "localhost,127.0.0.1,::1,host.nilbox.internal"
#define GUEST_CA_FILE "/etc/nilbox/ca.pem"
#define GUEST_CA_LOCAL "/usr/local/share/ca-certificates/nilbox/nilbox-ca.crt"
#define GUEST_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define GUEST_ENV_FILE "/etc/nilbox/env"
#define GUEST_PROFILE "/etc/profile.d/nilbox-env.sh"
#define GUEST_ENVIRONMENT "/etc/environment"

#define PROV_OP_TIMEOUT_MS 60000 /* one write or command in a (slow, emulated) guest */
#define PROV_ANSWER_MAX 4096
#define ARGS_MAX 1024        /* egress/dns OPEN arguments are tiny */
#define DNS_AUDIT_PER_MIN 30 /* dns.blocked rows per VM and minute; then only counted */

typedef struct gvm gvm_t;
typedef struct prov prov_t;

struct nb_guestsvc {
    nb_daemon_t *d;
    uv_loop_t *loop;
    nb_guestsvc_engine_fn engine;
    gvm_t *vms;
    uint64_t watch;
    uint64_t evsub;
    char *test_ca;
    nb_proxy_resolve_t resolve[NB_PROXY_MAX_RESOLVE];
    size_t nresolve;
    unsigned live; /* queries and provisioning jobs not yet freed */
    int freed;     /* nb_guestsvc_free ran: free once live is 0 */
};

/* Per-VM state: the fake-IP pool, the proxy channel listener, the
 * provisioning state. Dropped when the VM stops. */
struct gvm {
    gvm_t *next;
    char name[NB_RULES_VM_MAX];
    nb_fakedns_t *dns;
    uint64_t listener; /* nb_proxy_listener_id, 0: none yet */
    prov_t *prov;      /* running job */
    int prov_again;
    int prov_forced;       /* the next job rewrites even unchanged content */
    uint8_t done_hash[16]; /* content of the last complete provisioning */
    int have_done;
    int64_t audit_min; /* minute of the dns.blocked rows counted in audit_rows */
    unsigned audit_rows;
};

/* guestsvc_vm.c: the VM's state, or NULL. */
gvm_t *nb_gsv_vm_find(nb_guestsvc_t *g, const char *name);
/* guestsvc_vm.c: the VM's state, created on first use (NULL: bad name or
 * out of memory). */
gvm_t *nb_gsv_vm_get(nb_guestsvc_t *g, const char *name);
/* guestsvc_vm.c: drops a reference taken with g->live++; frees g after
 * nb_guestsvc_free once none is left. */
void nb_gsv_unref(nb_guestsvc_t *g);

/* guestsvc_prov.c: the VM's session if its agent is up; (re)provisions
 * v; detaches a running job from its VM (which is going away). */
nb_muxsess_t *nb_gsv_session_of(nb_guestsvc_t *g, const char *vm);
void nb_gsv_prov_start(nb_guestsvc_t *g, gvm_t *v);
void nb_gsv_prov_orphan(prov_t *p);

#endif
