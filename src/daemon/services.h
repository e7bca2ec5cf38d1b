/* The daemon's services: one nb_daemon_t per nilboxd process, owned by
 * main.c and filled by the composition root (daemon.h). daemon.c creates every long-lived service
 * in dependency order (store, events, audit, secrets, gate, blocklist, the egress engine on first
 * use, VMs, guest networking, API), hands each its dependencies, and tears them down in reverse.
 * The API router passes this struct to every route (nb_api_ctx_t.d): routes borrow the services,
 * never create or free them. A pointer is NULL while its service is absent (not yet created, or
 * already gone at shutdown). */
#ifndef NB_SERVICES_H
#define NB_SERVICES_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "host/home.h"
#include "host/version.h"
#include "lib/muxsess.h"

typedef struct nb_store nb_store_t;
typedef struct nb_events nb_events_t;
typedef struct nb_api nb_api_t;
typedef struct nb_audit nb_audit_t;
typedef struct nb_secretsvc nb_secretsvc_t;
typedef struct nb_gate nb_gate_t;
typedef struct nb_vmm nb_vmm_t;
typedef struct nb_guestsvc nb_guestsvc_t;
typedef struct nb_blsvc nb_blsvc_t;
typedef struct nb_proxy nb_proxy_t;
typedef struct nb_imgbuild nb_imgbuild_t;
typedef struct nb_appstore nb_appstore_t;
typedef struct nb_oauthsvc nb_oauthsvc_t;
typedef struct nb_portsvc nb_portsvc_t;
typedef struct nb_sshgw nb_sshgw_t;
typedef struct nb_mcp nb_mcp_t;
typedef struct nb_usage nb_usage_t;
typedef struct nb_sharesvc nb_sharesvc_t;

typedef struct nb_daemon {
    uv_loop_t *loop;
    nb_home_t home;
    int lock_fd;
    int api_port_req; /* --api-port (0 = pick a free one, -1 = no TCP listener) */

    /* The services, in creation order. */
    nb_store_t *store;
    nb_events_t *events;
    nb_audit_t *audit;       /* audit.h: the hash-chained audit log */
    nb_secretsvc_t *secrets; /* secretsvc.h: secret store, master key, CA */
    nb_gate_t *gate;         /* egress/gate.h: rules + prompts */
    nb_blsvc_t *blocklist;   /* blsvc.h: the DNS blocklist, the gate's hook */
    nb_proxy_t *proxy;       /* egress/proxy.h: the egress engine, made by egress() */
    uint64_t proxy_watch;    /* its nb_secretsvc_watch handle (credential snapshots) */
    nb_vmm_t *vmm;           /* vm/manager.h: the VM manager */
    nb_imgbuild_t *images;   /* imgbuild.h: guest image builds */
    nb_guestsvc_t *guestsvc; /* guestsvc.h: guest-opened streams, provisioning */
    nb_appstore_t *appstore; /* appstore.h: app store installs (after guestsvc) */
    nb_oauthsvc_t *oauth;    /* oauthsvc.h: OAuth bindings, token sealing (after secrets) */
    nb_portsvc_t *ports;     /* portsvc.h: port mappings, host-service grants */
    nb_sshgw_t *sshgw;       /* sshgw.h: the SSH gateway (NULL when off) */
    nb_mcp_t *mcp;           /* mcp.h: the MCP bridge (servers in VMs, host endpoints) */
    nb_usage_t *usage;       /* egress/usage.h: LLM token records and limits (the engine's meter) */
    nb_sharesvc_t *shares;   /* sharesvc.h: folder mapping (nilbox share) */
    nb_api_t *api;
    /* The egress engine, created on first use (it needs the CA, which is
     * there once the secret store is open): d->proxy, or NULL with a
     * sentence in `err` while the store is not open or the daemon stops. */
    nb_proxy_t *(*egress)(struct nb_daemon *d, char *err, size_t errsz);
    /* A hook guestsvc.c installs (the VM manager gets its own two hooks,
     * nb_vmm_set_guest): */
    struct {
        /* The environment every exec/pty in `vm` gets under the caller's
         * own (placeholders, proxy and CA variables): a new JSON object. */
        struct json_t *(*env)(void *ud, const char *vm);
        void *ud;
    } guest;
    const char *key_file; /* --key-file or NILBOX_KEY_FILE (explicit master key file) */

    int64_t started_ms;      /* wall clock, ms since epoch */
    uint64_t started_hrtime; /* uv_hrtime() at start, for uptime */
    int stopping;
    int exit_code;

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t stop_timer;
    void (*on_stopped)(struct nb_daemon *d); /* main.c: loop may end now */
} nb_daemon_t;

#endif
