/* The egress engine's configuration, test-mode resolution overrides and
 * statistics: the types both the engine (proxy.h) and its upstream client
 * (proxy_upstream.h) use, in a header below both. */
#ifndef NB_PROXY_CFG_H
#define NB_PROXY_CFG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/egress/oauth.h"
#include "daemon/egress/proxy_creds.h"
#include "lib/hostname.h"

/* The engine's other dependencies by name only (proxy_int.h and the
 * caller include what they use). */
typedef struct nb_ca nb_ca_t;
typedef struct nb_gate nb_gate_t;
typedef struct nb_usage nb_usage_t;

/* Receives one audit-worthy record: `kind` is an audit kind ("gate.decision",
 * "inject", "leak", "refusal"; see daemon/audit.h), `vm`/`host` may be
 * NULL, `detail` a JSON object (ownership passes to the hook). Details
 * carry names and reasons only, never a secret value (A23). */
typedef void (*nb_proxy_record_fn)(void *ud, const char *kind, const char *vm, const char *host,
                                   int port, json_t *detail);

/* The engine's dependencies and limits (daemon.c fills it). */
typedef struct {
    nb_gate_t *gate;           /* borrowed, required */
    nb_ca_t *ca;               /* borrowed, required */
    nb_proxy_record_fn record; /* the audit log and events; may be NULL */
    void *record_ud;
    /* Credentials provider: unseals one record of an installed snapshot
     * into locked memory at the moment of injection (the daemon wires the
     * secret service). NULL: snapshots unseal themselves (nb_pxcreds_load). */
    nb_pxcreds_unseal_fn unseal;
    void *unseal_ud;

    size_t max_conns;             /* client connections per listener; default 1024 */
    size_t max_conns_total;       /* client connections of all listeners; default 4096. Each
                                     costs up to 3 descriptors (a guest stream adopted from
                                     the channel has no socket of its own, so fewer):
                                     the daemon sizes both below RLIMIT_NOFILE.
                                     Over either cap a client gets 503 (X-Nilbox-Reason:
                                     too-many-connections), a guest stream OPEN_ERR, and the
                                     burst one audit row. */
    uint64_t idle_timeout_ms;     /* no byte either way; default 300 s */
    uint64_t head_timeout_ms;     /* a request head must complete within; default 30 s */
    uint64_t connect_timeout_ms;  /* resolve + TCP + TLS to upstream; default 15 s */
    uint64_t response_timeout_ms; /* request sent -> response head; default 300 s */
    uint64_t pool_idle_ms;        /* idle upstream connections kept; default 30 s */
    size_t pool_max_per_key;      /* default 8 */
    /* Scripted OAuth (oauth.h): seals the tokens a token exchange of
     * binding `p` produced (`t` is borrowed for the call) and calls
     * `done(op, status)` on the loop once they are in the credential
     * snapshot; the guest's response waits for it. Always calls `done`
     * when it returns 0. NULL: token responses are answered with 502. */
    int (*oauth_store)(void *ud, const nb_oauth_provider_t *p, const nb_oauth_tokens_t *t,
                       void (*done)(void *op, int status), void *op);
    void *oauth_ud;
    nb_usage_t *usage; /* LLM token accounting and limits (usage.h); borrowed, NULL: off */
    int block_leaks;   /* 1: a request carrying a placeholder where it must not go (A3, A4,
                          A7, A9) is refused with 403 instead of sent with the dummy */
} nb_proxy_cfg_t;

/* Test-only resolution override (listener option): `host` on `port` (0:
 * any) connects to `addr`:`to_port` (0: the same port). */
typedef struct {
    char host[NB_HOSTNAME_BUFSZ];
    uint16_t port;
    nb_ipaddr_t addr;
    uint16_t to_port;
} nb_proxy_resolve_t;

#define NB_PROXY_MAX_RESOLVE 16

typedef struct {
    uint64_t conns_accepted, conns_refused, requests, tunnels, injected, leaks, denied, refused,
        upstream_errors, pool_reused;
    uint64_t resolves; /* upstream names looked up (test overrides included) */
    size_t conns_open;
} nb_proxy_stats_t;

#endif
