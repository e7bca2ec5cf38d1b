/* Routes of the gate rules: list (the gate's live ruleset), add, remove.
 * Writes go to the `egress_rules` table on the thread pool (one statement
 * each) and then into the gate, which re-judges pending prompts. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "daemon/egress/gate.h"
#include "daemon/base/store.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

json_t *nb_api_rule_json(const nb_rule_t *r)
{
    return json_pack("{s:I, s:s, s:s, s:i, s:s*, s:b, s:s, s:I}", "id", (json_int_t)r->id, "action",
                     r->action == NB_RULE_ALLOW ? "allow" : "deny", "target", r->pattern, "port",
                     (int)r->port, "vm", r->vm[0] ? r->vm : NULL, "http", r->http, "note", r->note,
                     "created_at", (json_int_t)r->created_at);
}

int nb_api_have_gate(nb_api_ctx_t *ctx)
{
    if (ctx->d->gate)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "the gate is not running (the daemon is stopping)");
    return 0;
}

static void on_list(nb_api_ctx_t *ctx)
{
    if (!nb_api_have_gate(ctx))
        return;
    const nb_ruleset_t *rs = nb_gate_rules(ctx->d->gate);
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < rs->n; i++)
        json_array_append_new(arr, nb_api_rule_json(&rs->v[i]));
    nb_api_reply_json(ctx, 200, json_pack("{s:o}", "rules", arr ? arr : json_array()));
}

typedef struct {
    nb_api_ctx_t *ctx;
    nb_rule_t rule;
    int64_t id;
    int r;
} rule_job_t;

/* A job for ctx, or NULL after answering 500 (out of memory). */
static rule_job_t *job_new(nb_api_ctx_t *ctx)
{
    rule_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return NULL;
    }
    j->ctx = ctx;
    return j;
}

/* Runs work on the store's thread pool, then done on the loop; takes j
 * (freed with an answer of 500 when it cannot be queued). */
static void job_queue(rule_job_t *j, nb_store_work_fn work, nb_store_done_fn done)
{
    nb_api_ctx_t *ctx = j->ctx;
    int q = nb_store_queue(ctx->d->store, ctx->d->loop, work, done, j);
    if (q < 0) {
        free(j);
        nb_api_reply_error(ctx, 500, "internal", "cannot queue the write: %s", uv_strerror(q));
    }
}

static void add_work(nb_store_t *st, void *ud)
{
    rule_job_t *j = ud;
    j->r = nb_rules_db_add(nb_store_db(st), &j->rule);
}

static void add_done(void *ud, int status)
{
    rule_job_t *j = ud;
    nb_api_ctx_t *ctx = j->ctx;
    nb_daemon_t *d = ctx->d;
    int r = status < 0 ? NB_EINTERNAL : j->r;
    if (r < 0) {
        nb_api_reply_errno(ctx, r, r == NB_EINVAL ? "the rule is not valid" : NULL);
        free(j);
        return;
    }
    if (d->gate && nb_gate_rule_added(d->gate, &j->rule) < 0)
        nb_log(NB_LOG_ERR,
               "rule %lld stored but not loaded (out of memory); it applies after a "
               "restart",
               (long long)j->rule.id);
    const nb_rule_t *r2 = &j->rule;
    if (d->audit)
        nb_audit_append(d->audit, NB_AUDIT_RULE_ADD, r2->vm[0] ? r2->vm : NULL, r2->pattern,
                        r2->port,
                        json_pack("{s:I, s:s, s:s, s:b}", "rule_id", (json_int_t)r2->id, "action",
                                  r2->action == NB_RULE_ALLOW ? "allow" : "deny", "source",
                                  ctx->is_unix ? "cli" : "ui", "http", r2->http));
    if (d->events)
        nb_events_emit(d->events, "rule.added",
                       json_pack("{s:o, s:s}", "rule", nb_api_rule_json(r2), "source", "api"));
    json_t *ans = nb_api_rule_json(r2);
    char warn[512];
    if (ans && nb_rule_broad_warning(r2, warn, sizeof warn))
        json_object_set_new(ans, "warnings", json_pack("[s]", warn));
    nb_api_reply_json(ctx, 201, ans);
    free(j);
}

static void on_add(nb_api_ctx_t *ctx)
{
    nb_rule_t r;
    const char *action = nb_json_str(ctx->body, "action");
    const char *target = nb_json_str(ctx->body, "target");
    const char *vm = nb_json_str(ctx->body, "vm"), *note = nb_json_str(ctx->body, "note");
    json_t *port = json_object_get(ctx->body, "port"), *http = json_object_get(ctx->body, "http");
    if (!nb_api_have_gate(ctx))
        return;
    memset(&r, 0, sizeof r);
    if (!action || (strcmp(action, "allow") != 0 && strcmp(action, "deny") != 0)) {
        nb_api_reply_error(ctx, 422, "invalid", "'action' must be \"allow\" or \"deny\"");
        return;
    }
    r.action = !strcmp(action, "allow") ? NB_RULE_ALLOW : NB_RULE_DENY;
    if (!target || !target[0]) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'target' is required: a name (api.example.com), *.suffix, an IP or "
                           "a CIDR (10.0.0.0/8), optionally with :PORT");
        return;
    }
    if (target[0] == '*' && (target[1] == '\0' || target[1] == ':')) {
        nb_api_reply_error(
            ctx, 422, "invalid",
            "'*' is not a valid target: it would match every destination; name the hosts "
            "(api.example.com, *.example.com); without a rule a destination "
            "is prompted for");
        return;
    }
    if (nb_rule_parse(target, &r) < 0) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'%.300s' is not a valid target: use a DNS name (api.example.com), "
                           "*.suffix (strict subdomains), an IP (10.1.2.3, ::1) or a CIDR "
                           "(10.0.0.0/8, fd00::/8) with a valid prefix length, optionally "
                           "followed by :PORT (1-65535; IPv6 in brackets)",
                           target);
        return;
    }
    if (r.action == NB_RULE_ALLOW && r.kind == NB_RULE_SUFFIX &&
        nb_host_pattern_public(r.pattern)) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'%s' is a wildcard over a public suffix: it would allow every site "
                           "under it, of unrelated owners; allow the service's own names "
                           "(api.example.com, *.example.com) instead (a deny rule may use it)",
                           r.pattern);
        return;
    }
    if (port && !json_is_null(port)) {
        json_int_t p = json_is_integer(port) ? json_integer_value(port) : -1;
        if (p < 1 || p > 65535) {
            nb_api_reply_error(ctx, 422, "invalid", "'port' must be a number from 1 to 65535");
            return;
        }
        if (r.port && r.port != p) {
            nb_api_reply_error(ctx, 422, "invalid", "the target names port %u but 'port' says %lld",
                               (unsigned)r.port, (long long)p);
            return;
        }
        r.port = (uint16_t)p;
    }
    if (vm && (strlen(vm) >= sizeof r.vm || !nb_rules_vm_valid(vm))) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'vm' must be a VM name: letters, digits, '.', '_' or '-', at most "
                           "63");
        return;
    }
    snprintf(r.vm, sizeof r.vm, "%s", vm ? vm : "");
    if (http && !json_is_boolean(http)) {
        nb_api_reply_error(ctx, 422, "invalid", "'http' must be true or false");
        return;
    }
    r.http = json_is_true(http);
    if (note && strlen(note) >= sizeof r.note) {
        nb_api_reply_error(ctx, 422, "invalid", "'note' is at most %zu bytes", sizeof r.note - 1);
        return;
    }
    snprintf(r.note, sizeof r.note, "%s", note ? note : "");
    /* The table would refuse a duplicate with a bare constraint error. */
    const nb_ruleset_t *rs = nb_gate_rules(ctx->d->gate);
    for (size_t i = 0; i < rs->n; i++) {
        const nb_rule_t *x = &rs->v[i];
        if (x->action == r.action && x->port == r.port && !strcmp(x->pattern, r.pattern) &&
            !strcmp(x->vm, r.vm)) {
            nb_api_reply_error(ctx, 409, "conflict", "the same rule exists already (id %lld)",
                               (long long)x->id);
            return;
        }
    }
    rule_job_t *j = job_new(ctx);
    if (!j)
        return;
    j->rule = r;
    job_queue(j, add_work, add_done);
}

static void rm_work(nb_store_t *st, void *ud)
{
    rule_job_t *j = ud;
    j->r = nb_rules_db_rm(nb_store_db(st), j->id);
}

static void rm_done(void *ud, int status)
{
    rule_job_t *j = ud;
    nb_api_ctx_t *ctx = j->ctx;
    nb_daemon_t *d = ctx->d;
    int r = status < 0 ? NB_EINTERNAL : j->r;
    /* A rule that only lives in memory (an *-always answer that could not
     * be stored) can be removed too. */
    int in_mem = d->gate && nb_gate_rule_removed(d->gate, j->id) == 0;
    if (r < 0 && !(r == NB_ENOTFOUND && in_mem)) {
        if (r == NB_ENOTFOUND)
            nb_api_reply_error(ctx, 404, "not-found", "no rule with id %lld (see 'nilbox rule ls')",
                               (long long)j->id);
        else
            nb_api_reply_errno(ctx, r, NULL);
        free(j);
        return;
    }
    const nb_rule_t *x = &j->rule;
    if (d->audit)
        nb_audit_append(d->audit, NB_AUDIT_RULE_RM, x->vm[0] ? x->vm : NULL,
                        x->pattern[0] ? x->pattern : NULL, x->port,
                        json_pack("{s:I, s:s, s:s}", "rule_id", (json_int_t)j->id, "action",
                                  x->action == NB_RULE_DENY ? "deny" : "allow", "source",
                                  ctx->is_unix ? "cli" : "ui"));
    if (d->events)
        nb_events_emit(d->events, "rule.removed", json_pack("{s:I}", "id", (json_int_t)j->id));
    nb_api_reply_json(ctx, 200, json_pack("{s:I, s:b}", "id", (json_int_t)j->id, "removed", 1));
    free(j);
}

static void on_rm(nb_api_ctx_t *ctx)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    long long id = strtoll(s, &end, 10);
    if (!nb_api_have_gate(ctx))
        return;
    if (!s[0] || *end || id < 1) {
        nb_api_reply_error(ctx, 422, "invalid", "a rule id is a number >= 1, not '%.40s'", s);
        return;
    }
    rule_job_t *j = job_new(ctx);
    if (!j)
        return;
    j->id = id;
    /* Keep what the rule was, for the audit row. */
    const nb_ruleset_t *rs = nb_gate_rules(ctx->d->gate);
    for (size_t i = 0; i < rs->n; i++)
        if (rs->v[i].id == id)
            j->rule = rs->v[i];
    job_queue(j, rm_work, rm_done);
}

const nb_api_route_t nb_api_routes_rules[] = {
    {"GET", "/v1/rules", on_list, 0},
    {"POST", "/v1/rules", on_add, 0},
    {"DELETE", "/v1/rules/{id}", on_rm, 0},
    {0},
};
