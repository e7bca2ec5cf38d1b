/* nilboxd's start and stop sequence. Modules with long-lived state add
 * their create call to nb_daemon_start (after the store, before the API)
 * and their teardown to on_api_closed (before the store closes). */
#include "daemon/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/egress/guestsvc.h"
#include "daemon/events.h"
#include "daemon/secretsvc.h"
#include "daemon/store.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/log.h"

double nb_daemon_uptime(const nb_daemon_t *d)
{
    return (double)(uv_hrtime() - d->started_hrtime) / 1e9;
}

static void close_handle(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish_stop(nb_daemon_t *d);

static void on_drain_timer(uv_timer_t *t)
{
    finish_stop(t->data);
}

static void on_api_closed(void *ud)
{
    nb_daemon_t *d = ud;
    d->api = NULL;
    finish_stop(d);
}

/* Runs once the API is closed and again until no store job is in flight:
 * a pool thread may still be using the connection. */
static void finish_stop(nb_daemon_t *d)
{
    if (nb_store_pending(d->store) > 0) {
        uv_timer_start(&d->stop_timer, on_drain_timer, 10, 0);
        return;
    }
    /* VMs keep running (the next daemon re-attaches); only our state goes. */
    nb_vmm_free(d->vmm);
    d->vmm = NULL;
    nb_guestsvc_free(d->guestsvc); /* after the VMs' channels: their streams are closed */
    nb_daemon_secrets_stop(d);     /* secretsvc.c: secret service, then the audit log */
    nb_api_blocklist_free(d);      /* after the gate that called its hook */
    nb_events_free(d->events);
    d->events = NULL;
    nb_store_close(d->store);
    d->store = NULL;
    unlink(d->home.pidfile);
    close_handle((uv_handle_t *)&d->sig_term);
    close_handle((uv_handle_t *)&d->sig_int);
    close_handle((uv_handle_t *)&d->sig_hup);
    close_handle((uv_handle_t *)&d->stop_timer);
    nb_log(NB_LOG_NOTICE, "nilboxd stopped after %.1f s", nb_daemon_uptime(d));
    if (d->on_stopped)
        d->on_stopped(d);
}

static void do_stop(nb_daemon_t *d)
{
    /* The proxy holds gate waits: close it before the gate (api_proxy.c). */
    nb_api_proxy_stop(d);
    /* Pending prompts are denied (and announced, audited) while the API
     * and the audit log are still up; see secretsvc.h. */
    nb_daemon_secrets_quiesce(d);
    nb_api_close(d->api, on_api_closed, d);
}

static void on_stop_timer(uv_timer_t *t)
{
    do_stop(t->data);
}

void nb_daemon_request_stop(nb_daemon_t *d, const char *reason, uint64_t delay_ms)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    nb_log(NB_LOG_NOTICE, "stopping (%s)", reason);
    if (d->events)
        nb_events_emit(d->events, "daemon.stopping", json_pack("{s:s}", "reason", reason));
    uv_signal_stop(&d->sig_term);
    uv_signal_stop(&d->sig_int);
    if (delay_ms && uv_timer_start(&d->stop_timer, on_stop_timer, delay_ms, 0) == 0)
        return;
    do_stop(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    nb_daemon_t *d = s->data;
    if (signum == SIGHUP) {
        /* Nothing to reload yet; say so instead of dying (the default). */
        nb_log(NB_LOG_INFO, "SIGHUP ignored");
        return;
    }
    nb_daemon_request_stop(d, signum == SIGTERM ? "SIGTERM" : "SIGINT", 0);
}

int nb_daemon_start(nb_daemon_t *d, char *err, size_t errsz)
{
    int r;
    char pid[32];
    d->started_ms = nb_events_now_ms();
    d->started_hrtime = uv_hrtime();

    if ((r = uv_timer_init(d->loop, &d->stop_timer)) < 0 ||
        (r = uv_signal_init(d->loop, &d->sig_term)) < 0 ||
        (r = uv_signal_init(d->loop, &d->sig_int)) < 0 ||
        (r = uv_signal_init(d->loop, &d->sig_hup)) < 0) {
        snprintf(err, errsz, "cannot set up the event loop: %s", uv_strerror(r));
        goto fail;
    }
    d->stop_timer.data = d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    if ((r = uv_signal_start(&d->sig_term, on_signal, SIGTERM)) < 0 ||
        (r = uv_signal_start(&d->sig_int, on_signal, SIGINT)) < 0 ||
        (r = uv_signal_start(&d->sig_hup, on_signal, SIGHUP)) < 0) {
        snprintf(err, errsz, "cannot install signal handlers: %s", uv_strerror(r));
        goto fail;
    }
    if ((r = nb_store_open(d->home.db, &d->store, err, errsz)) < 0)
        goto fail;
    if ((r = nb_events_new(d->loop, d->store, &d->events)) < 0) {
        snprintf(err, errsz, "cannot create the event bus: %s", nb_strerror(r));
        goto fail;
    }
    /* --- modules: create long-lived state here (after store/events, before the API) --- */
    if ((r = nb_daemon_secrets_start(d, err, errsz)) < 0) /* secretsvc.c */
        goto fail;
    if ((r = nb_api_blocklist_start(d)) < 0) /* api_blocklist.c: after the gate */
        goto fail;
    if ((r = nb_vmm_new(d, &d->vmm, err, errsz)) < 0) /* vm/manager.c */
        goto fail;
    if ((r = nb_guestsvc_new(d, nb_api_proxy_engine, &d->guestsvc, err, errsz)) < 0)
        goto fail; /* egress/guestsvc.c: the guests' egress and dns streams */

    if ((r = nb_api_start(d, &d->api, err, errsz)) < 0)
        goto fail;
    snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if ((r = nb_home_write_private(d->home.pidfile, pid, strlen(pid))) < 0)
        nb_log(NB_LOG_WARN, "cannot write %s: %s", d->home.pidfile, nb_strerror(r));

    nb_log(NB_LOG_NOTICE, "nilboxd %s started: home %s, socket %s, web UI %s", NB_VERSION,
           d->home.home, d->home.sock, nb_api_url(d->api)[0] ? nb_api_url(d->api) : "(off)");
    nb_events_emit(d->events, "daemon.started",
                   json_pack("{s:s, s:I, s:s}", "version", NB_VERSION, "pid", (json_int_t)getpid(),
                             "home", d->home.home));
    return 0;
fail:
    nb_vmm_free(d->vmm);
    d->vmm = NULL;
    nb_guestsvc_free(d->guestsvc);
    nb_daemon_secrets_stop(d);
    nb_api_blocklist_free(d);
    nb_events_free(d->events);
    d->events = NULL;
    nb_store_close(d->store);
    d->store = NULL;
    close_handle((uv_handle_t *)&d->sig_term);
    close_handle((uv_handle_t *)&d->sig_int);
    close_handle((uv_handle_t *)&d->sig_hup);
    close_handle((uv_handle_t *)&d->stop_timer);
    return r < 0 ? r : NB_EINTERNAL;
}
