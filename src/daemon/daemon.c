/* nilboxd's composition root (see daemon.h): the services are created in
 * dependency order and wired to each other here, and only here:
 *
 *   store -> events -> audit -> secrets -> gate -> blocklist
 *         -> [egress engine, on first use] -> VMs -> image builds
 *         -> guest networking -> API
 *
 * Teardown is the reverse, in two steps: first the egress engine, the
 * blocklist and the gate (pending prompts are denied, announced and
 * audited while the API and the audit log still work), then, once the API
 * has closed, image builds, the VMs (their channels close), guest networking, the secret
 * service, the audit log, events and the store. */
#include "daemon/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/blsvc.h"
#include "daemon/oauthsvc.h"
#include "daemon/guestsvc.h"
#include "daemon/portsvc.h"
#include "daemon/sharesvc.h"
#include "daemon/egress/proxy.h"
#include "daemon/egress/usage.h"
#include "daemon/base/events.h"
#include "daemon/imgbuild.h"
#include "daemon/appstore.h"
#include "daemon/mcp.h"
#include "daemon/secretsvc.h"
#include "daemon/sshgw.h"
#include "daemon/base/store.h"
#include "daemon/vm/manager.h"
#include "lib/env.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

double nb_daemon_uptime(const nb_daemon_t *d)
{
    return (double)(uv_hrtime() - d->started_hrtime) / 1e9;
}

/* ------------------------------------------------- the gate's hooks */

static void emit_prompt(nb_daemon_t *d, const char *type, const nb_gate_prompt_info_t *p)
{
    json_t *pj = nb_gate_prompt_json(p);
    if (d->events && pj)
        nb_events_emit(d->events, type, json_pack("{s:o}", "prompt", pj));
    else
        json_decref(pj);
}

static void hook_created(void *ud, const nb_gate_prompt_info_t *p)
{
    emit_prompt(ud, "prompt.created", p);
}

static void hook_resolved(void *ud, const nb_gate_prompt_info_t *p, int allowed, int why)
{
    nb_daemon_t *d = ud;
    const char *w = nb_gate_why_name(why);
    if (d->events)
        nb_events_emit(d->events, "prompt.resolved",
                       json_pack("{s:I, s:s, s:s, s:i, s:b, s:s}", "prompt_id", (json_int_t)p->id,
                                 "vm", p->vm, "host", p->host, "port", (int)p->port, "allowed",
                                 allowed, "reason", w));
    /* Answers are audited by the answer route (with who answered); the
     * other ends are audited here so a denial without an answer is never
     * silent (A16). */
    if (d->audit && why != NB_GATE_WHY_ALLOW_ONCE && why != NB_GATE_WHY_ALLOW_ALWAYS &&
        why != NB_GATE_WHY_DENY_ONCE && why != NB_GATE_WHY_DENY_ALWAYS)
        nb_audit_append(d->audit, NB_AUDIT_GATE, p->vm[0] ? p->vm : NULL, p->host, p->port,
                        json_pack("{s:s, s:s, s:I, s:i}", "decision", allowed ? "allow" : "deny",
                                  "reason", w, "prompt_id", (json_int_t)p->id, "waiters",
                                  (int)p->waiters));
}

/* A connection joined or left a pending prompt: the UI and `prompts
 * --watch` show who is still waiting (0: nobody, an answer still applies). */
static void hook_waiters(void *ud, const nb_gate_prompt_info_t *p)
{
    emit_prompt(ud, "prompt.updated", p);
}

static void hook_rule_stored(void *ud, const nb_rule_t *r, int status)
{
    nb_daemon_t *d = ud;
    json_t *rj = nb_api_rule_json(r);
    if (d->audit)
        nb_audit_append(d->audit, NB_AUDIT_RULE_ADD, r->vm[0] ? r->vm : NULL, r->pattern, r->port,
                        json_pack("{s:I, s:s, s:s, s:b, s:b}", "rule_id", (json_int_t)r->id,
                                  "action", r->action == NB_RULE_ALLOW ? "allow" : "deny", "source",
                                  "prompt", "stored", status == 0, "http", r->http));
    if (d->events && rj)
        nb_events_emit(
            d->events, "rule.added",
            json_pack("{s:o, s:s, s:b}", "rule", rj, "source", "prompt", "stored", status == 0));
    else
        json_decref(rj);
}

/* Prompt timeout: the environment (tests) over the setting over 60 s. */
static uint64_t prompt_timeout_ms(nb_store_t *st)
{
    char *set = NULL;
    const char *name = "NILBOX_PROMPT_TIMEOUT_MS", *e = getenv(name);
    if ((!e || !e[0]) && nb_store_setting_get(st, "gate.prompt_timeout_ms", &set) == 0)
        name = "gate.prompt_timeout_ms", e = set;
    uint64_t ms = nb_env_value(name, e, 100, 3600000, 0);
    free(set);
    return ms;
}

/* ------------------------------------------------- the egress engine */

/* Every proxy record becomes an audit row and, for denials, leaks and
 * refusals, an event the UI can show at once. Routine allows and
 * injections are audit rows only. */
static void on_proxy_record(void *ud, const char *kind, const char *vm, const char *host, int port,
                            json_t *detail)
{
    nb_daemon_t *d = ud;
    const char *decision = nb_json_str(detail, "decision");
    int gate = strcmp(kind, "gate.decision") == 0;
    if (d->events && strcmp(kind, "inject") != 0 &&
        (!gate || (decision && strcmp(decision, "deny") == 0))) {
        char type[48];
        snprintf(type, sizeof type, "proxy.%s", gate ? "denied" : kind);
        nb_events_emit(d->events, type,
                       json_pack("{s:s, s:s, s:i, s:O}", "vm", vm ? vm : "", "host",
                                 host ? host : "", "port", port, "detail", detail));
    }
    if (d->audit)
        nb_audit_append(d->audit, kind, vm, host, port, detail);
    else
        json_decref(detail);
}

static void snap_release(void *owner)
{
    nb_secretsvc_snap_unref(owner);
}

/* Hands the secret service's snapshot (sealed values, bindings) to the
 * engine, which unseals through its credentials provider. */
static void on_secrets_changed(void *ud, const nb_secretsvc_snap_t *snap)
{
    nb_daemon_t *d = ud;
    nb_pxcreds_t *c = NULL;
    if (snap) {
        nb_secretsvc_snap_t *ref = nb_secretsvc_snap_ref(snap);
        if (nb_pxcreds_wrap(ref->sealed, ref->nsealed, ref->bindings, ref->nbindings, ref->names,
                            snap_release, ref, &c) < 0) {
            nb_secretsvc_snap_unref(ref);
            nb_log(NB_LOG_WARN, "proxy: cannot take the new secrets snapshot; keeping the old");
            return;
        }
    }
    nb_proxy_set_creds(d->proxy, c);
}

/* Descriptor budgets below the process limit (A28): a proxy client
 * connection costs up to 3 descriptors (a guest stream adopted from the
 * channel has no socket of its own, so fewer); a reserve stays for the API, the audit log,
 * VMs and their channels. One listener (one VM) gets a quarter of the
 * total, so a single client or guest cannot starve the others.
 * NILBOX_PROXY_MAX_CONNS overrides the per-listener one. */
static void size_budgets(nb_proxy_cfg_t *cfg)
{
    struct rlimit rl;
    size_t lim = 1024, reserve = 256;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        lim = (size_t)rl.rlim_cur;
    else if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        lim = 1u << 20;
    if (lim / 4 > reserve)
        reserve = lim / 4;
    size_t total = lim > reserve + 96 ? (lim - reserve) / 3 : 32;
    size_t per = total / 4 < 16 ? 16 : total / 4;
    if (per > 1024)
        per = 1024;
    cfg->max_conns_total = total;
    cfg->max_conns = (size_t)nb_env_u64("NILBOX_PROXY_MAX_CONNS", 1, total, per);
    nb_log(NB_LOG_INFO, "proxy budgets: %zu connections per listener, %zu in all (fd limit %zu)",
           cfg->max_conns, total, lim);
}

/* The OAuth bindings changed: the engine serves token exchanges from the
 * new set. */
static void on_oauth_changed(void *ud)
{
    nb_daemon_t *d = ud;
    if (d->proxy && d->oauth)
        nb_proxy_set_oauth(d->proxy, nb_oauthsvc_set(d->oauth));
}

/* d->egress: the engine, created on first use (proxy listeners, guest
 * egress streams) once the secret store is open. */
static nb_proxy_t *egress(nb_daemon_t *d, char *err, size_t errsz)
{
    if (d->proxy)
        return d->proxy;
    if (d->stopping || !d->gate || !d->secrets) {
        snprintf(err, errsz, "the daemon is stopping");
        return NULL;
    }
    nb_proxy_cfg_t cfg;
    nb_proxy_cfg_default(&cfg);
    cfg.ca = nb_secretsvc_ca(d->secrets);
    if (!cfg.ca) {
        snprintf(err, errsz,
                 "the secret store is %s, so the interception CA is not available; unlock it "
                 "first ('nilbox secret unlock')",
                 nb_secretsvc_state_name(nb_secretsvc_state(d->secrets)));
        return NULL;
    }
    size_budgets(&cfg);
    cfg.gate = d->gate;
    cfg.record = on_proxy_record;
    cfg.record_ud = d;
    cfg.unseal = nb_secretsvc_unseal_to;
    cfg.unseal_ud = d->secrets;
    cfg.oauth_store = d->oauth ? nb_oauthsvc_store : NULL;
    cfg.oauth_ud = d->oauth;
    cfg.usage = d->usage;
    int r = nb_proxy_new(d->loop, &cfg, &d->proxy);
    if (r < 0) {
        snprintf(err, errsz, "cannot start the proxy engine: %s", nb_strerror(r));
        return NULL;
    }
    on_secrets_changed(d, nb_secretsvc_snapshot(d->secrets));
    d->proxy_watch = nb_secretsvc_watch(d->secrets, on_secrets_changed, d);
    if (d->oauth)
        nb_proxy_set_oauth(d->proxy, nb_oauthsvc_set(d->oauth));
    return d->proxy;
}

/* ------------------------------------------------- creation */

static void on_usage_event(void *ud, const char *type, json_t *data)
{
    nb_daemon_t *d = ud;
    if (!d->events)
        json_decref(data);
    else if (strcmp(type, "usage.record") == 0)
        nb_events_emit_live(d->events, type, data); /* the usage_records row keeps it */
    else
        nb_events_emit(d->events, type, data);
}

/* usage.record goes to live watchers (the UI, `nilbox events -f`): with
 * none attached it is not built at all (usage.h). */
static int usage_event_wanted(void *ud)
{
    nb_daemon_t *d = ud;
    return d->events && nb_events_ws_count(d->events) > 0;
}

/* The usage ledger: the built-in LLM catalogue, or llm-catalogue.json in
 * the home when present (a broken one fails the start: limits must not
 * silently stop applying). */
static int start_usage(nb_daemon_t *d, char *err, size_t errsz)
{
    char path[4096], cerr[256];
    snprintf(path, sizeof path, "%s/llm-catalogue.json", d->home.home);
    char *text = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "re");
    if (f) {
        if (fseek(f, 0, SEEK_END) == 0 && (len = (size_t)ftell(f)) < 4 * 1024 * 1024 &&
            fseek(f, 0, SEEK_SET) == 0 && (text = malloc(len + 1)) &&
            fread(text, 1, len, f) != len) {
            free(text);
            text = NULL;
        }
        fclose(f);
        if (!text) {
            snprintf(err, errsz, "cannot read %s", path);
            return NB_EINVAL;
        }
    }
    nb_usage_cfg_t uc = {.store = d->store,
                         .emit = on_usage_event,
                         .emit_wanted = usage_event_wanted,
                         .emit_ud = d,
                         .loop = d->loop};
    int r = nb_llmcat_load(text ? text : (const char *)nb_llmcat_builtin,
                           text ? len : nb_llmcat_builtin_len, &uc.cat, cerr, sizeof cerr);
    int own = text != NULL;
    free(text);
    if (r < 0) {
        snprintf(err, errsz, "%s: %s", own ? path : "built-in LLM catalogue", cerr);
        return r;
    }
    if ((r = nb_usage_new(&uc, &d->usage)) < 0) {
        nb_llmcat_free(uc.cat);
        snprintf(err, errsz, "cannot load usage limits: %s", nb_strerror(r));
    }
    return r;
}

/* Audit log, secret service, gate (with the stored rules), blocklist. */
static int start_policy(nb_daemon_t *d, char *err, size_t errsz)
{
    int r;
    if ((r = nb_audit_open(d->loop, d->store, d->events, &d->audit)) < 0) {
        snprintf(err, errsz, "cannot open the audit log: %s", nb_strerror(r));
        return r;
    }
    const char *nk = getenv("NILBOX_NO_KEYRING");
    nb_secretsvc_cfg_t sc = {
        .key_file = d->key_file, /* main.c: --key-file or NILBOX_KEY_FILE */
        .passphrase_file = getenv("NILBOX_PASSPHRASE_FILE"),
        .no_keyring = nk && !strcmp(nk, "1"),
    };
    /* The service also creates the rules table the gate loads below. */
    if ((r = nb_secretsvc_new(d->loop, d->store, d->audit, d->events, &d->home, &sc, &d->secrets,
                              err, errsz)) < 0)
        return r;
    nb_gate_cfg_t gc;
    nb_gate_cfg_default(&gc);
    gc.prompt_timeout_ms = prompt_timeout_ms(d->store);
    gc.store = d->store;
    gc.hooks = (nb_gate_hooks_t){.on_prompt_created = hook_created,
                                 .on_prompt_resolved = hook_resolved,
                                 .on_prompt_waiters = hook_waiters,
                                 .on_rule_stored = hook_rule_stored,
                                 .ud = d};
    if ((r = nb_gate_new(d->loop, &gc, &d->gate)) < 0) {
        snprintf(err, errsz, "cannot create the gate: %s", nb_strerror(r));
        return r;
    }
    if ((r = nb_gate_load_rules(d->gate, nb_store_db(d->store))) < 0) {
        snprintf(err, errsz, "cannot load the gate rules: %s", nb_strerror(r));
        return r;
    }
    nb_blsvc_cfg_t bc = {.loop = d->loop,
                         .home = d->home.home,
                         .gate = d->gate,
                         .audit = d->audit,
                         .events = d->events};
    if ((r = nb_blsvc_new(&bc, &d->blocklist)) < 0) {
        snprintf(err, errsz, "cannot create the blocklist: %s", nb_strerror(r));
        return r;
    }
    /* OAuth bindings (oauthsvc.h): seal tokens through the secret service. */
    nb_oauthsvc_cfg_t oc = {.loop = d->loop,
                            .store = d->store,
                            .secrets = d->secrets,
                            .home = d->home.home,
                            .changed = on_oauth_changed,
                            .ud = d};
    if ((r = nb_oauthsvc_new(&oc, &d->oauth)) < 0)
        snprintf(err, errsz, "cannot create the OAuth service: %s", nb_strerror(r));
    return r;
}

/* ------------------------------------------------- teardown */

static void close_handle(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

/* First step of the stop: what holds gate waits goes, then the gate, so
 * pending prompts are denied (why "shutdown") while the API and the audit
 * log still work. Idempotent. */
static void quiesce(nb_daemon_t *d)
{
    if (d->proxy) {
        nb_secretsvc_unwatch(d->secrets, d->proxy_watch);
        /* Closing cancels every gate wait at once; handles close on the loop. */
        nb_proxy_free(d->proxy, NULL, NULL);
        d->proxy = NULL;
    }
    nb_blsvc_free(d->blocklist);
    d->blocklist = NULL;
    nb_gate_t *g = d->gate;
    d->gate = NULL; /* routes see "no gate" from now on */
    nb_gate_free(g);
}

/* The rest, in reverse creation order; VMs keep running (the next daemon
 * re-attaches), only our state goes. */
static void teardown(nb_daemon_t *d)
{
    quiesce(d);
    nb_appstore_free(d->appstore);
    d->appstore = NULL;
    nb_mcp_free(d->mcp); /* before the VMs: its sessions hold exec streams */
    d->mcp = NULL;
    /* Folder mapping: resets its streams while the VMs' sessions exist. */
    nb_sharesvc_free(d->shares);
    d->shares = NULL;
    nb_imgbuild_free(d->images);
    d->images = NULL;
    /* Port mappings: their streams go before the VMs' channels. */
    nb_portsvc_free(d->ports);
    d->ports = NULL;
    nb_sshgw_free(d->sshgw); /* before the VMs: its relays hold their streams */
    d->sshgw = NULL;
    nb_vmm_free(d->vmm);
    d->vmm = NULL;
    nb_guestsvc_free(d->guestsvc); /* after the VMs' channels: their streams are closed */
    /* After a failed start the secret service's first job may still be on
     * the pool: let it finish before its object goes away. */
    while (d->store && nb_store_pending(d->store) > 0)
        uv_run(d->loop, UV_RUN_ONCE);
    nb_secretsvc_close(d->secrets);
    d->secrets = NULL;
    /* After the secret service: its cancelled jobs still call back into it. */
    nb_oauthsvc_free(d->oauth);
    d->oauth = NULL;
    nb_usage_free(d->usage); /* after the engine: its connections settle into it */
    d->usage = NULL;
    nb_audit_close(d->audit);
    d->audit = NULL;
    nb_events_free(d->events);
    d->events = NULL;
    nb_store_close(d->store);
    d->store = NULL;
    close_handle((uv_handle_t *)&d->sig_term);
    close_handle((uv_handle_t *)&d->sig_int);
    close_handle((uv_handle_t *)&d->sig_hup);
    close_handle((uv_handle_t *)&d->stop_timer);
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
    teardown(d);
    unlink(d->home.pidfile);
    nb_log(NB_LOG_NOTICE, "nilboxd stopped after %.1f s", nb_daemon_uptime(d));
    if (d->on_stopped)
        d->on_stopped(d);
}

static void do_stop(nb_daemon_t *d)
{
    quiesce(d);
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
    d->egress = egress;

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
    if ((r = start_policy(d, err, errsz)) < 0 || (r = start_usage(d, err, errsz)) < 0 ||
        (r = nb_vmm_new(
             &(nb_vmm_cfg_t){d->loop, d->home.home, d->home.runtime, d->store, d->events}, &d->vmm,
             err, errsz)) < 0 ||
        (r = nb_imgbuild_new(d->loop, d->home.home, d->events, &d->images)) < 0 ||
        (r = nb_guestsvc_new(d, d->egress, &d->guestsvc, err, errsz)) < 0 ||
        (r = nb_appstore_new(d, &d->appstore)) < 0 ||
        (r = nb_portsvc_new(d, &d->ports, err, errsz)) < 0 ||
        (r = nb_sshgw_new(d, &d->sshgw, err, errsz)) < 0 ||
        (r = nb_mcp_new(d, &d->mcp, err, errsz)) < 0 ||
        (r = nb_sharesvc_new(d, &d->shares, err, errsz)) < 0 ||
        (r = nb_api_start(d, &d->api, err, errsz)) < 0)
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
    teardown(d);
    return r < 0 ? r : NB_EINTERNAL;
}
