/* The guest side of the zero-token path, on the host (DESIGN.md section 6;
 * THREATS.md A10-A12). See docs/internals/guestsvc.md.
 *
 * Serves the streams a VM's agent opens toward the host on the guest
 * channel (docs/protocol.md section 6):
 *   egress  one guest TCP connection: {"mode": "proxy"} (bytes of the
 *           explicit proxy on the guest's 127.0.0.1:8088) or {"mode":
 *           "transparent", "ip": "198.18.0.7", "port": 443} (captured by
 *           the guest's nftables; the fake IP maps back to its name, any
 *           other address is judged as an IP destination). Handed to the
 *           daemon's proxy engine on a per-VM channel listener, so rules,
 *           prompts, injection, redaction, denials and audit are the
 *           standalone proxy's.
 *   dns     one DNS query message (the agent's resolver on 127.0.0.53),
 *           answered from the VM's fake-IP pool (fakedns.h); no upstream
 *           resolver is ever asked (A11). Names a deny rule covers on every
 *           port get NXDOMAIN.
 * and provisions each VM when its agent comes up, and again whenever the
 * secrets change: the interception CA (/etc/nilbox/ca.pem and
 * /usr/local/share/ca-certificates/nilbox/nilbox-ca.crt, then the guest's
 * update-ca-certificates when it has one) and the environment (proxy
 * variables, CA bundle variables, one NAME=NAME placeholder per secret
 * visible to the VM) in /etc/nilbox/env (which the agent adds to every
 * exec/pty), /etc/profile.d/nilbox-env.sh and /etc/environment.
 *
 * Test mode (NILBOX_TEST_MODE=1 only): NILBOX_TEST_UPSTREAM_CA (an extra
 * trusted CA file) and NILBOX_TEST_RESOLVE ("HOST:ADDR" or
 * "HOST:PORT:ADDR:PORT", comma-separated) apply to every VM's channel
 * listener, like `nilbox proxy --upstream-ca --resolve`.
 *
 * Loop thread only. */
#ifndef NB_GUESTSVC_H
#define NB_GUESTSVC_H

#include <jansson.h>
#include <stddef.h>

#include "daemon/services.h"
#include "lib/buf.h"
#include "lib/muxsess.h"

typedef struct nb_guestsvc nb_guestsvc_t;

/* The proxy engine getter (the daemon's d->egress). */
typedef struct nb_proxy *(*nb_guestsvc_engine_fn)(nb_daemon_t *d, char *err, size_t errsz);

/* Creates the service for daemon `d` (needs d->events, d->gate,
 * d->secrets, d->vmm; any may be NULL, which disables what needs it),
 * watches the secret snapshot and the event bus, and installs itself as
 * d->guest (the hooks the VM manager calls). 0, NB_EINVAL (bad test-mode
 * settings, with a sentence in err) or -ENOMEM. */
int nb_guestsvc_new(nb_daemon_t *d, nb_guestsvc_engine_fn engine, nb_guestsvc_t **out, char *err,
                    size_t errsz);

/* Unhooks, stops watching, drops the per-VM state and frees; streams
 * still open are reset (normally none: the VM manager closed its channels
 * first). NULL is a no-op. */
void nb_guestsvc_free(nb_guestsvc_t *g);

/* A stream the agent of VM `vm` opened (see nb_muxsess_opts_t.on_open):
 * handles `egress` and `dns` (accepts or rejects the stream itself and
 * returns 0); anything else returns NB_EUNSUPPORTED so that the session
 * answers NO_SERVICE. */
int nb_guestsvc_on_open(nb_guestsvc_t *g, const char *vm, nb_muxsess_stream_t *st,
                        const char *service, nb_iov_t args);

/* The agent of `vm` authenticated: (re)writes the CA and the environment
 * into the guest, in the background (best effort; failures are logged).
 * Provisioning asked for while one runs for the same VM runs again after
 * it. */
void nb_guestsvc_provision(nb_guestsvc_t *g, const char *vm);

/* The environment a VM gets, as {"NAME": "VALUE", ...} (new reference):
 * for tests and `nilbox vm inspect`. */
json_t *nb_guestsvc_env_json(nb_guestsvc_t *g, const char *vm);

#endif
