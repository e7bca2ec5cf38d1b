/* nilboxd's composition root (daemon.c): creates the services of
 * nb_daemon_t (services.h) in order and tears them down in reverse. */
#ifndef NB_DAEMON_H
#define NB_DAEMON_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/services.h"

/* Creates the services in order, then the API listeners, writes the pid
 * and api.json files, installs SIGTERM/SIGINT handlers and emits
 * `daemon.started`. On failure everything opened so far is closed again
 * and `err` gets a sentence. Loop thread. */
int nb_daemon_start(nb_daemon_t *d, char *err, size_t errsz);

/* Begins an orderly shutdown (idempotent): emits `daemon.stopping`, frees
 * the egress engine, the blocklist and the gate (pending prompts are denied
 * and announced while the API is up), closes the API (WebSockets get
 * 1001), frees the other services in reverse order, removes the pid file
 * and then calls d->on_stopped. `delay_ms` lets an
 * HTTP answer leave before the listeners close. */
void nb_daemon_request_stop(nb_daemon_t *d, const char *reason, uint64_t delay_ms);

/* Seconds since start. */
double nb_daemon_uptime(const nb_daemon_t *d);

#endif
