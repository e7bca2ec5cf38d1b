/* The app store service (appstore.h). An install is a small state
 * machine on the loop:
 *
 *   CHECK (already there? -> MCP) -> SNAPSHOT -> APT -> NPM -> SCRIPT -> VERIFY -> MCP -> done
 *                                       any step fails -> ROLLBACK -> failed
 *
 * MCP registers the MCP servers the entry declares with the bridge
 * (mcp.h, its C API, on the loop), each with the tool policy "*": "ask":
 * a store install is one click on code the user has not read, so no tool
 * of it runs with the user's authority before the user said yes to that
 * tool once (a prompt; "allow always" keeps the answer per tool). A name
 * taken by a server with another command is refused before anything
 * changes; one that is already this entry's server is left as it is
 * (idempotent installs keep the user's policy). On `store rm` the
 * entry's servers go first (their sessions end before the files go).
 *
 * ROLLBACK stops the VM, restores the snapshot taken before the first
 * change and starts the VM again, so a half-done install leaves nothing
 * behind on the disk (the tiny image keeps its root in RAM: there only
 * /data is on the disk; a reboot drops the rest anyway). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/appstore.h"
#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "daemon/base/store.h"
#include "daemon/egress/gate.h"
#include "daemon/mcp.h"
#include "daemon/vm/manager.h"
#include "daemon/vmexec.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define SNAP_NAME "store-rollback"

typedef enum { S_CHECK, S_SNAPSHOT, S_APT, S_NPM, S_SCRIPT, S_VERIFY, S_MCP, S_DONE } step_t;

typedef struct job job_t;
struct job {
    nb_appstore_t *s;
    job_t *next;
    char vm[NB_VM_NAME_MAX + 1];
    char app[NB_APPCAT_ID_MAX];
    char version[64]; /* the catalogue's */
    json_t *entry;
    int removing; /* a removal, not an install */
    step_t step;
    nb_vmexec_t *x;  /* the running command */
    int vmm_pending; /* a VM manager call has not answered yet */
    int snapshot;    /* SNAP_NAME exists and is ours */
    int mcp_pending; /* an nb_mcp_add has not answered yet */
    int mcp_sync;    /* nb_mcp_add is on the stack */
    int mcp_rc;      /* its answer when it came at once */
    char mcp_msg[200];
    size_t mcp_i;     /* the next server of nb_appcat_mcp(entry) */
    json_t *mcp;      /* nb_appcat_mcp(entry) */
    json_t *mcp_done; /* names registered (install) or unregistered (rm) by this job */
    char reason[700]; /* why it failed, for the event and the user */
    nb_appstore_done_fn done;
    void *ud;
};

struct nb_appstore {
    nb_daemon_t *d;
    job_t *jobs;
    int closing;
};

int nb_appstore_new(nb_daemon_t *d, nb_appstore_t **out)
{
    nb_appstore_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->d = d;
    *out = s;
    return 0;
}

static void job_unlink(job_t *j)
{
    for (job_t **p = &j->s->jobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
}

static void job_free(job_t *j)
{
    json_decref(j->entry);
    json_decref(j->mcp);
    json_decref(j->mcp_done);
    free(j);
}

/* The service went away while a call was out: the job goes with it. */
static int orphaned(job_t *j)
{
    if (j->s)
        return 0;
    job_free(j);
    return 1;
}

void nb_appstore_free(nb_appstore_t *s)
{
    if (!s)
        return;
    s->closing = 1;
    for (job_t *j = s->jobs, *next; j; j = next) {
        next = j->next;
        nb_vmexec_cancel(j->x);
        j->x = NULL;
        j->s = NULL;
        /* A job still waiting on the VM manager or the MCP bridge is freed
         * by that callback. */
        if (!j->vmm_pending && !j->mcp_pending)
            job_free(j);
    }
    free(s);
}

int nb_appstore_catalogue(nb_appstore_t *s, nb_appcat_t *cat, char *err, size_t errsz)
{
    return nb_appcat_load_home(s->d->home.home, cat, err, errsz);
}

/* ------------------------------------------------------------ rules */

json_t *nb_appstore_missing_rules(nb_appstore_t *s, const json_t *entry, const char *vm)
{
    json_t *missing = json_array(), *r;
    size_t i;
    const nb_ruleset_t *rs = s->d->gate ? nb_gate_rules(s->d->gate) : NULL;
    json_array_foreach (json_object_get(entry, "rules"), i, r) {
        nb_rule_t want;
        int found = 0;
        if (nb_rule_parse(json_string_value(r), &want) == 0 && rs)
            for (size_t k = 0; k < rs->n && !found; k++) {
                const nb_rule_t *x = &rs->v[k];
                found = x->action == NB_RULE_ALLOW && x->kind == NB_RULE_NAME &&
                        x->port == want.port && !strcmp(x->pattern, want.pattern) &&
                        (!x->vm[0] || !strcmp(x->vm, vm));
            }
        if (!found)
            json_array_append(missing, r);
    }
    return missing;
}

/* ------------------------------------------------------------ events */

static void progress(job_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(job_t *j, const char *fmt, ...)
{
    char m[NB_VMEXEC_LINE + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (j->s && j->s->d->events)
        nb_events_emit(j->s->d->events, "progress",
                       json_pack("{s:s, s:s, s:s}", "vm", j->vm, "app", j->app, "message", m));
}

static void audit(job_t *j, const char *what, const char *outcome)
{
    nb_daemon_t *d = j->s->d;
    if (d->audit)
        nb_audit_append(d->audit, NB_AUDIT_STORE, j->vm, NULL, 0,
                        json_pack("{s:s, s:s, s:s, s:s}", "app", j->app, "action", what, "outcome",
                                  outcome, "catalogue", j->version));
}

/* -------------------------------------------------------------- steps */

static void next_step(job_t *j);
static void fail(job_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void on_line(void *ud, int is_stderr, const char *line)
{
    job_t *j = ud;
    if (line[0])
        progress(j, "%s%s", is_stderr ? "! " : "", line);
}

/* The last non-empty output line, for a failure's reason. */
static void last_line(const char *tail, char *out, size_t outsz)
{
    size_t n = strlen(tail);
    while (n > 0 && (tail[n - 1] == '\n' || tail[n - 1] == '\r' || tail[n - 1] == ' '))
        n--;
    size_t b = n;
    while (b > 0 && tail[b - 1] != '\n')
        b--;
    size_t l = n - b < outsz - 1 ? n - b : outsz - 1;
    for (size_t i = 0; i < l; i++)
        out[i] = (tail[b + i] < 0x20 || tail[b + i] == 0x7f) ? ' ' : tail[b + i];
    out[l] = '\0';
}

static const char *step_name(step_t st)
{
    static const char *const names[] = {"check",  "snapshot", "apt", "npm",
                                        "script", "verify",   "mcp", "done"};
    return names[st];
}

static void on_exec_done(void *ud, int err, int status, const char *msg, const char *tail)
{
    job_t *j = ud;
    char last[300];
    j->x = NULL;
    if (orphaned(j))
        return;
    last_line(tail, last, sizeof last);
    if (j->step == S_CHECK) {
        if (!err && status == 0) {
            j->step = S_VERIFY; /* already installed: only its MCP servers, if missing */
            progress(j, "%s is installed already", j->app);
        }
        next_step(j);
        return;
    }
    if (err)
        fail(j, "the %s step could not run: %s", step_name(j->step), msg);
    else if (status != 0)
        fail(j, "the %s step failed (exit %d)%s%s", step_name(j->step), status, last[0] ? ": " : "",
             last);
    else
        next_step(j);
}

static int run(job_t *j, json_t *argv, const char *user, json_t *env)
{
    static const nb_vmexec_cbs_t cbs = {.on_line = on_line, .on_done = on_exec_done};
    int r = nb_vmexec_start(j->s->d, j->vm, argv, user, env, NB_APPSTORE_STEP_TIMEOUT_MS, &cbs, j,
                            &j->x);
    json_decref(argv);
    json_decref(env);
    return r;
}

/* argv: PREFIX... followed by each string of `list`. */
static json_t *argv_with(json_t *list, int n, ...)
{
    json_t *a = json_array(), *x;
    size_t i;
    va_list ap;
    va_start(ap, n);
    for (int k = 0; k < n; k++)
        json_array_append_new(a, json_string(va_arg(ap, const char *)));
    va_end(ap);
    json_array_foreach (list, i, x)
        json_array_append(a, x);
    return a;
}

static void finished(job_t *j, int r);

static void on_snap_deleted(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    j->vmm_pending = 0;
    if (orphaned(j))
        return;
    if (r < 0)
        nb_log(NB_LOG_WARN, "store: VM %s: cannot delete snapshot %s: %s", j->vm, SNAP_NAME,
               msg ? msg : nb_strerror(r));
    j->snapshot = 0;
    finished(j, j->reason[0] ? NB_EINTERNAL : 0);
}

/* Deletes our snapshot (if any), then reports. */
static void cleanup(job_t *j)
{
    if (!j->snapshot) {
        finished(j, j->reason[0] ? NB_EINTERNAL : 0);
        return;
    }
    j->vmm_pending = 1;
    nb_vmm_snapshot(j->s->d->vmm, j->vm, NB_VM_SNAP_DELETE, SNAP_NAME, on_snap_deleted, j);
}

static void on_snap_saved(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    j->vmm_pending = 0;
    if (orphaned(j))
        return;
    if (r < 0) {
        /* Nothing changed yet: no rollback needed. */
        snprintf(j->reason, sizeof j->reason, "cannot take a snapshot before installing: %s",
                 msg ? msg : nb_strerror(r));
        cleanup(j);
        return;
    }
    j->snapshot = 1;
    next_step(j);
}

static void on_old_deleted(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    if (orphaned(j))
        return;
    nb_vmm_snapshot(j->s->d->vmm, j->vm, NB_VM_SNAP_SAVE, SNAP_NAME, on_snap_saved, j);
}

/* ---------------------------------------------------------------- mcp */

static void mcp_quiet(void *ud, int r, const char *msg, json_t *res)
{
    if (r < 0)
        nb_log(NB_LOG_WARN, "store: MCP bridge: %s", msg ? msg : nb_strerror(r));
}

/* The bridge's server `name` in `vm` and whether it runs `argv` (what the
 * entry declares): 0 none, 1 this command, -1 another one. */
static int mcp_have(nb_daemon_t *d, const char *vm, const char *name, const json_t *argv)
{
    json_t *have = d->mcp ? nb_mcp_get(d->mcp, vm, name, 0) : NULL;
    int r = !have ? 0 : json_equal(json_object_get(have, "command"), (json_t *)argv) ? 1 : -1;
    json_decref(have);
    return r;
}

static void mcp_next(job_t *j);

/* The answer to registering server mcp_i. */
static void mcp_added(job_t *j, int r, const char *msg)
{
    const char *name = nb_json_str(json_array_get(j->mcp, j->mcp_i), "name");
    if (r < 0) {
        fail(j, "cannot register MCP server %s: %s", name, msg && msg[0] ? msg : nb_strerror(r));
        return;
    }
    progress(j,
             "registered MCP server %s/%s; every tool asks before its first use (nilbox prompts; "
             "'nilbox mcp policy %s %s TOOL allow'); connect a client: nilbox mcp config",
             j->vm, name, j->vm, name);
    j->mcp_i++;
    mcp_next(j);
}

static void on_mcp_added(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    j->mcp_pending = 0;
    if (j->mcp_sync) { /* mcp_next takes it from here (fail() may free j) */
        j->mcp_rc = r;
        snprintf(j->mcp_msg, sizeof j->mcp_msg, "%s", msg ? msg : "");
        return;
    }
    if (orphaned(j))
        return;
    mcp_added(j, r, msg);
}

/* Registers the entry's servers one at a time, then goes on. */
static void mcp_next(job_t *j)
{
    nb_daemon_t *d = j->s->d;
    while (j->mcp_i < json_array_size(j->mcp)) {
        json_t *srv = json_array_get(j->mcp, j->mcp_i), *argv = json_object_get(srv, "argv");
        const char *name = nb_json_str(srv, "name");
        int have = mcp_have(d, j->vm, name, argv);
        if (have == 1) {
            progress(j, "MCP server %s/%s is registered already", j->vm, name);
            j->mcp_i++;
            continue;
        }
        if (!d->mcp) {
            fail(j, "the MCP bridge is not running: cannot register MCP server %s", name);
            return;
        }
        if (have < 0) {
            fail(j,
                 "VM %s already has an MCP server named %s with another command (remove it: "
                 "nilbox mcp rm %s %s)",
                 j->vm, name, j->vm, name);
            return;
        }
        progress(j, "registering MCP server %s/%s", j->vm, name);
        j->mcp_pending = 1;
        j->mcp_sync = 1;
        nb_mcp_add(d->mcp, j->vm, name, argv, NULL, on_mcp_added, j);
        j->mcp_sync = 0;
        if (!j->mcp_pending) { /* answered at once: an error */
            mcp_added(j, j->mcp_rc < 0 ? j->mcp_rc : NB_EINTERNAL, j->mcp_msg);
            return;
        }
        /* In memory now; the policy is set in the same loop turn, so no
         * client can reach a tool before it (the store rows follow). */
        json_array_append_new(j->mcp_done, json_string(name));
        nb_mcp_policy_set(d->mcp, j->vm, name, "*", NB_APPSTORE_MCP_POLICY, mcp_quiet, NULL);
        return; /* on_mcp_added goes on */
    }
    j->step = S_DONE;
    cleanup(j);
}

/* A failed install unregisters what it registered. */
static void mcp_undo(job_t *j)
{
    json_t *n;
    size_t i;
    json_array_foreach (j->mcp_done, i, n)
        if (j->s->d->mcp)
            nb_mcp_rm(j->s->d->mcp, j->vm, json_string_value(n), mcp_quiet, NULL);
    json_array_clear(j->mcp_done);
}

static void next_step(job_t *j)
{
    int r = 0;
    const json_t *e = j->entry;
    json_t *v;
    for (;;) {
        switch (j->step) {
        case S_CHECK:
            j->step = S_SNAPSHOT;
            progress(j, "saving snapshot %s of VM %s (rolled back to on failure)", SNAP_NAME,
                     j->vm);
            j->vmm_pending = 1;
            /* A leftover of an earlier job (a failed rollback) would make
             * SAVE fail: drop it first ("no such snapshot" is the usual
             * answer). */
            nb_vmm_snapshot(j->s->d->vmm, j->vm, NB_VM_SNAP_DELETE, SNAP_NAME, on_old_deleted, j);
            return;
        case S_SNAPSHOT:
            j->step = S_APT;
            if (!(v = json_object_get(e, "apt")) || !json_array_size(v))
                continue;
            progress(j, "installing Debian packages");
            r = run(j,
                    argv_with(v, 4, "sh", "-ec",
                              "apt-get update -q && apt-get install -y -q --no-install-recommends "
                              "\"$@\"",
                              "sh"),
                    "root", json_pack("{s:s}", "DEBIAN_FRONTEND", "noninteractive"));
            break;
        case S_APT:
            j->step = S_NPM;
            if (!(v = json_object_get(e, "npm")) || !json_array_size(v))
                continue;
            progress(j, "installing npm packages");
            r = run(j, argv_with(v, 5, "npm", "install", "-g", "--no-fund", "--no-audit"), "root",
                    NULL);
            break;
        case S_NPM:
            j->step = S_SCRIPT;
            if (!(v = json_object_get(e, "script")))
                continue;
            progress(j, "running the install script");
            r = run(j, json_pack("[s, s, O]", "sh", "-ec", v), "root", NULL);
            break;
        case S_SCRIPT:
            j->step = S_VERIFY;
            progress(j, "checking the installation");
            r = run(j, json_deep_copy(json_object_get(e, "check")), NULL, NULL);
            break;
        case S_VERIFY:
            if (j->removing) { /* a removal's one command ran: done */
                j->step = S_DONE;
                continue;
            }
            j->step = S_MCP;
            mcp_next(j);
            return;
        case S_MCP:
        case S_DONE:
            j->step = S_DONE;
            cleanup(j);
            return;
        }
        break;
    }
    if (r < 0)
        fail(j, "cannot run the %s step: %s", step_name(j->step),
             r == NB_ESTATE ? "the VM's agent is not connected" : nb_strerror(r));
}

/* ----------------------------------------------------------- rollback */

static void on_rollback_started(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    j->vmm_pending = 0;
    if (orphaned(j))
        return;
    if (r < 0)
        nb_log(NB_LOG_WARN, "store: VM %s did not come back after the rollback: %s", j->vm,
               msg ? msg : nb_strerror(r));
    cleanup(j);
}

static void on_restored(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    if (orphaned(j))
        return;
    size_t n = strlen(j->reason);
    snprintf(j->reason + n, sizeof j->reason - n, "%s",
             r < 0 ? "; the rollback failed (restore the snapshot by hand: nilbox vm snapshot "
                     "restore)"
                   : "; the VM's disk was rolled back to its state before the install");
    progress(j, "%s", r < 0 ? "rollback failed" : "disk restored; starting the VM again");
    nb_vmm_start(j->s->d->vmm, j->vm, 1, on_rollback_started, j);
}

static void on_rollback_stopped(void *ud, int r, const char *msg, json_t *res)
{
    job_t *j = ud;
    if (orphaned(j))
        return;
    nb_vmm_snapshot(j->s->d->vmm, j->vm, NB_VM_SNAP_RESTORE, SNAP_NAME, on_restored, j);
}

static void fail(job_t *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->reason, sizeof j->reason / 2, fmt, ap);
    va_end(ap);
    if (!j->removing)
        mcp_undo(j);
    if (!j->snapshot || j->removing) {
        cleanup(j);
        return;
    }
    progress(j, "install failed: %s; rolling back", j->reason);
    j->vmm_pending = 1;
    nb_vmm_stop(j->s->d->vmm, j->vm, 0, on_rollback_stopped, j);
}

/* ------------------------------------------------------------- outcome */

static void record(job_t *j)
{
    sqlite3 *db = nb_store_db(j->s->d->store);
    sqlite3_stmt *st = NULL;
    const char *sql = j->removing ? "DELETE FROM store_apps WHERE vm = ?1 AND app = ?2"
                                  : "INSERT OR REPLACE INTO store_apps (vm, app, version, "
                                    "installed_at) VALUES (?1, ?2, ?3, ?4)";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "store: %s", sqlite3_errmsg(db));
        return;
    }
    sqlite3_bind_text(st, 1, j->vm, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->app, -1, SQLITE_STATIC);
    if (!j->removing) {
        sqlite3_bind_text(st, 3, j->version, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, nb_events_now_ms() / 1000);
    }
    if (sqlite3_step(st) != SQLITE_DONE)
        nb_log(NB_LOG_ERR, "store: cannot record %s in %s: %s", j->app, j->vm, sqlite3_errmsg(db));
    sqlite3_finalize(st);
}

static json_t *mcp_names(const json_t *servers)
{
    json_t *a = json_array(), *x;
    size_t i;
    json_array_foreach (servers, i, x)
        json_array_append(a, json_object_get(x, "name"));
    return a;
}

static void finished(job_t *j, int r)
{
    nb_daemon_t *d = j->s->d;
    const char *act = j->removing ? "remove" : "install";
    if (r == 0)
        record(j);
    audit(j, act, r == 0 ? "ok" : "failed");
    if (d->events) {
        if (j->removing)
            nb_events_emit(d->events, r == 0 ? "store.removed" : "store.remove_failed",
                           json_pack("{s:s, s:s, s:s, s:O}", "vm", j->vm, "app", j->app, "message",
                                     j->reason, "mcp_removed", j->mcp_done));
        else if (r == 0)
            nb_events_emit(d->events, "store.installed",
                           json_pack("{s:s, s:s, s:o, s:s}", "vm", j->vm, "app", j->app, "mcp",
                                     mcp_names(j->mcp), "mcp_policy", NB_APPSTORE_MCP_POLICY));
        else
            nb_events_emit(
                d->events, "store.install_failed",
                json_pack("{s:s, s:s, s:s}", "vm", j->vm, "app", j->app, "message", j->reason));
    }
    nb_log(r == 0 ? NB_LOG_NOTICE : NB_LOG_WARN, "store: %s %s in VM %s: %s", act, j->app, j->vm,
           r == 0 ? "done" : j->reason);
    job_unlink(j);
    if (j->done) {
        json_t *res = json_pack("{s:O}", "mcp_removed", j->mcp_done);
        j->done(j->ud, r, r == 0 ? "" : j->reason, res);
        json_decref(res);
    }
    job_free(j);
}

/* ------------------------------------------------------------- public */

static job_t *job_for(nb_appstore_t *s, const char *vm)
{
    for (job_t *j = s->jobs; j; j = j->next)
        if (!strcmp(j->vm, vm))
            return j;
    return NULL;
}

static job_t *job_new(nb_appstore_t *s, const char *vm, const json_t *entry, char *msg,
                      size_t msgsz)
{
    nb_vm_t *v = s->d->vmm ? nb_vmm_find(s->d->vmm, vm) : NULL;
    job_t *other = job_for(s, vm);
    if (!v) {
        snprintf(msg, msgsz, "no VM named '%s' (see 'nilbox vm ls')", vm);
        return NULL;
    }
    if (other) {
        snprintf(msg, msgsz, "VM %s is busy %s %s; wait for it to end", vm,
                 other->removing ? "removing" : "installing", other->app);
        return NULL;
    }
    if (!nb_vm_session(v)) {
        snprintf(msg, msgsz,
                 "VM %s is not running (or its agent is not up yet): 'nilbox vm start %s'", vm, vm);
        return NULL;
    }
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(msg, msgsz, "out of memory");
        return NULL;
    }
    j->s = s;
    snprintf(j->vm, sizeof j->vm, "%s", vm);
    snprintf(j->app, sizeof j->app, "%s", nb_json_str(entry, "id"));
    j->entry = json_deep_copy(entry);
    j->mcp = nb_appcat_mcp(j->entry);
    j->mcp_done = json_array();
    j->next = s->jobs;
    s->jobs = j;
    return j;
}

int nb_appstore_install(nb_appstore_t *s, const char *vm, const json_t *entry, const char *version,
                        char *msg, size_t msgsz)
{
    nb_vm_t *v = s->d->vmm ? nb_vmm_find(s->d->vmm, vm) : NULL;
    if (v) {
        json_t *vj = nb_vm_json(v, 0);
        const char *image = nb_json_str(vj, "image"), *want = nb_json_str(entry, "image");
        int same = image && want && !strcmp(image, want);
        if (!same)
            snprintf(msg, msgsz,
                     "%s needs a VM from the '%s' image; VM %s runs '%s' (create one: nilbox vm "
                     "create NAME --image %s --start)",
                     nb_json_str(entry, "id"), want, vm, image ? image : "?", want);
        json_decref(vj);
        if (!same)
            return NB_EINVAL;
    }
    json_t *missing = nb_appstore_missing_rules(s, entry, vm);
    size_t nmissing = json_array_size(missing);
    json_decref(missing);
    if (nmissing) {
        snprintf(msg, msgsz,
                 "%zu of the rules %s proposes are not accepted yet: review and add them "
                 "('nilbox store install' asks), then install again",
                 nmissing, nb_json_str(entry, "id"));
        return NB_EDENIED;
    }
    /* The MCP servers it registers: refused now rather than after the
     * recipe ran (and rolled back) when a name is taken. */
    json_t *servers = nb_appcat_mcp(entry), *srv;
    size_t i;
    int clash = 0;
    if (json_array_size(servers) && !nb_mcp_valid_name(vm)) {
        snprintf(msg, msgsz,
                 "%s registers MCP servers, and the MCP bridge takes VM names of at most 32 of "
                 "a-z, 0-9, _ and -: use another VM",
                 nb_json_str(entry, "id"));
        clash = NB_EINVAL;
    }
    json_array_foreach (servers, i, srv)
        if (!clash &&
            mcp_have(s->d, vm, nb_json_str(srv, "name"), json_object_get(srv, "argv")) < 0) {
            snprintf(msg, msgsz,
                     "VM %s already has an MCP server named %s with another command; %s would "
                     "register its own under that name (remove yours first: nilbox mcp rm %s %s)",
                     vm, nb_json_str(srv, "name"), nb_json_str(entry, "id"), vm,
                     nb_json_str(srv, "name"));
            clash = NB_EEXIST;
        }
    json_decref(servers);
    if (clash)
        return clash;
    job_t *j = job_new(s, vm, entry, msg, msgsz);
    if (!j)
        return NB_ESTATE;
    j->step = S_CHECK;
    snprintf(j->version, sizeof j->version, "%s", version);
    progress(j, "checking whether %s is installed", j->app);
    int r = run(j, json_deep_copy(json_object_get(entry, "check")), NULL, NULL);
    if (r < 0) {
        job_unlink(j);
        job_free(j);
        snprintf(msg, msgsz, "cannot run a command in VM %s: %s", vm, nb_strerror(r));
        return NB_ESTATE;
    }
    audit(j, "install", "started");
    return 0;
}

int nb_appstore_remove(nb_appstore_t *s, const char *vm, const json_t *entry,
                       nb_appstore_done_fn done, void *ud, char *msg, size_t msgsz)
{
    job_t *j = job_new(s, vm, entry, msg, msgsz);
    if (!j)
        return NB_ESTATE;
    j->removing = 1;
    j->done = done;
    j->ud = ud;
    j->step = S_VERIFY; /* the command below is the whole job */
    /* Its MCP servers first: their sessions end before the files go. A
     * server by that name with another command is the user's: kept. */
    json_t *srv;
    size_t k;
    json_array_foreach (j->mcp, k, srv) {
        const char *name = nb_json_str(srv, "name");
        int have = mcp_have(s->d, vm, name, json_object_get(srv, "argv"));
        if (have > 0) {
            nb_mcp_rm(s->d->mcp, vm, name, mcp_quiet, NULL);
            json_array_append_new(j->mcp_done, json_string(name));
            progress(j, "unregistered MCP server %s/%s", vm, name);
        } else if (have < 0) {
            progress(j, "MCP server %s/%s runs another command: not %s's, left alone", vm, name,
                     j->app);
        }
    }
    /* npm packages go; Debian packages stay (other apps may share them). */
    json_t *npm = json_object_get(entry, "npm"), *names = json_array(), *p;
    size_t i;
    json_array_foreach (npm, i, p) {
        /* "@scope/name@1.2" -> "@scope/name" */
        const char *s0 = json_string_value(p), *at = strchr(s0 + 1, '@');
        json_array_append_new(names, at ? json_stringn(s0, (size_t)(at - s0)) : json_string(s0));
    }
    const char *script = nb_json_str(entry, "remove");
    json_t *argv =
        argv_with(names, 5, "sh", "-ec",
                  "if [ \"$1\" ]; then eval \"$1\"; fi; shift; "
                  "if [ $# -gt 0 ]; then npm uninstall -g --no-fund --no-audit \"$@\"; fi",
                  "sh", script ? script : "");
    json_decref(names);
    progress(j, "removing %s", j->app);
    int r = run(j, argv, "root", NULL);
    if (r < 0) {
        job_unlink(j);
        job_free(j);
        snprintf(msg, msgsz, "cannot run a command in VM %s: %s", vm, nb_strerror(r));
        return NB_ESTATE;
    }
    return 0;
}

json_t *nb_appstore_installed(nb_appstore_t *s, const char *vm)
{
    json_t *apps = json_array();
    sqlite3 *db = nb_store_db(s->d->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT app, version, installed_at FROM store_apps WHERE vm = ?1 "
                           "ORDER BY app",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, vm, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW)
            json_array_append_new(
                apps, json_pack("{s:s, s:s, s:I}", "app", (const char *)sqlite3_column_text(st, 0),
                                "version", (const char *)sqlite3_column_text(st, 1), "installed_at",
                                (json_int_t)sqlite3_column_int64(st, 2)));
    }
    sqlite3_finalize(st);
    job_t *j = job_for(s, vm);
    return json_pack("{s:o, s:o}", "apps", apps, "job",
                     j ? json_pack("{s:s, s:s, s:s}", "app", j->app, "action",
                                   j->removing ? "remove" : "install", "step", step_name(j->step))
                       : json_null());
}
