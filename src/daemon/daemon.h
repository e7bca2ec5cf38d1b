/* The daemon's shared state: one nb_daemon_t per nilboxd process, owned by
 * main.c and handed to every API handler (nb_api_ctx_t.d). Modules that
 * need long-lived state (VM manager, egress engine, secret store, ...) add
 * a pointer here and create/free it in daemon.c's start/stop sequence. */
#ifndef NB_DAEMON_H
#define NB_DAEMON_H

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

typedef struct nb_daemon {
    uv_loop_t *loop;
    nb_home_t home;
    int lock_fd;
    int api_port_req; /* --api-port (0 = pick a free one, -1 = no TCP listener) */

    nb_store_t *store;
    nb_events_t *events;
    nb_api_t *api;
    nb_audit_t *audit;       /* audit.h: the hash-chained audit log */
    nb_secretsvc_t *secrets; /* secretsvc.h: secret store, master key, CA */
    nb_gate_t *gate;         /* egress/gate.h: rules + prompts (created in secretsvc.c) */
    nb_vmm_t *vmm;           /* vm/manager.h: the VM manager */
    nb_guestsvc_t *guestsvc; /* egress/guestsvc.h: guest-opened streams, provisioning */
    /* api_blocklist.c: the loaded DNS blocklist and the gate's hook state */
    struct nb_blstate *blocklist;
    /* Hooks egress/guestsvc.c installs and the VM manager calls when set
     * (so the manager does not link the egress engine): a stream the
     * agent of `vm` opened (return as nb_muxsess_opts_t.on_open does), and
     * the agent of `vm` came up. */
    struct {
        int (*on_open)(void *ud, const char *vm, nb_muxsess_stream_t *st, const char *service,
                       nb_iov_t args);
        void (*on_agent_up)(void *ud, const char *vm);
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

/* Opens the store, the event bus and the API listeners, writes the pid
 * and api.json files, installs SIGTERM/SIGINT handlers and emits
 * `daemon.started`. On failure everything opened so far is closed again
 * and `err` gets a sentence. Loop thread. */
int nb_daemon_start(nb_daemon_t *d, char *err, size_t errsz);

/* Begins an orderly shutdown (idempotent): emits `daemon.stopping`, closes
 * the API (WebSockets get 1001), removes the socket, api.json and pid
 * files, closes the store and then calls d->on_stopped. `delay_ms` lets an
 * HTTP answer leave before the listeners close. */
void nb_daemon_request_stop(nb_daemon_t *d, const char *reason, uint64_t delay_ms);

/* Seconds since start. */
double nb_daemon_uptime(const nb_daemon_t *d);

#endif
