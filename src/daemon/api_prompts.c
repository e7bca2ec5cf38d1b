/* Routes of the gate's prompts (list, answer) and the gate's hooks: every
 * prompt becomes a `prompt.created` event and its end a `prompt.resolved`
 * event, answers and timeouts go to the audit log (A16: an unanswered
 * prompt denies, and the denial is recorded).
 *
 * Names in prompts are already escaped and length-limited by the gate
 * (nb_rules_display_name): what the API shows is exactly what the user
 * judges. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/events.h"
#include "daemon/secretsvc.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define LIST_MAX 256

/* ------------------------------------------------------------------ hooks */

static void hook_created(void *ud, const nb_gate_prompt_info_t *p)
{
    nb_daemon_t *d = ud;
    json_t *pj = nb_gate_prompt_json(p);
    if (d->events && pj)
        nb_events_emit(d->events, "prompt.created", json_pack("{s:o}", "prompt", pj));
    else
        json_decref(pj);
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
     * silent. */
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
    nb_daemon_t *d = ud;
    json_t *pj = nb_gate_prompt_json(p);
    if (d->events && pj)
        nb_events_emit(d->events, "prompt.updated", json_pack("{s:o}", "prompt", pj));
    else
        json_decref(pj);
}

static json_t *rule_json(const nb_rule_t *r)
{
    return json_pack("{s:I, s:s, s:s, s:i, s:s*, s:b, s:s, s:I}", "id", (json_int_t)r->id, "action",
                     r->action == NB_RULE_ALLOW ? "allow" : "deny", "target", r->pattern, "port",
                     (int)r->port, "vm", r->vm[0] ? r->vm : NULL, "http", r->http, "note", r->note,
                     "created_at", (json_int_t)r->created_at);
}

static void hook_rule_stored(void *ud, const nb_rule_t *r, int status)
{
    nb_daemon_t *d = ud;
    json_t *rj = rule_json(r);
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

void nb_api_prompts_hooks(nb_daemon_t *d, nb_gate_hooks_t *h)
{
    memset(h, 0, sizeof *h);
    h->on_prompt_created = hook_created;
    h->on_prompt_resolved = hook_resolved;
    h->on_prompt_waiters = hook_waiters;
    h->on_rule_stored = hook_rule_stored;
    h->ud = d;
}

/* ----------------------------------------------------------------- routes */

static int have_gate(nb_api_ctx_t *ctx)
{
    if (ctx->d->gate)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "the gate is not running (the daemon is stopping)");
    return 0;
}

static void on_list(nb_api_ctx_t *ctx)
{
    nb_gate_prompt_info_t *v = NULL;
    if (!have_gate(ctx))
        return;
    if (!(v = calloc(LIST_MAX, sizeof *v))) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    size_t total = nb_gate_prompts(ctx->d->gate, v, LIST_MAX);
    size_t n = total < LIST_MAX ? total : LIST_MAX;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, nb_gate_prompt_json(&v[i]));
    free(v);
    nb_api_reply_json(
        ctx, 200,
        json_pack("{s:o, s:I}", "prompts", arr ? arr : json_array(), "pending", (json_int_t)total));
}

static int parse_id(nb_api_ctx_t *ctx, uint64_t *id)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!s[0] || *end || v < 1 || s[0] == '-') {
        nb_api_reply_error(ctx, 422, "invalid", "a prompt id is a number >= 1, not '%.40s'", s);
        return -1;
    }
    *id = v;
    return 0;
}

static void on_get(nb_api_ctx_t *ctx)
{
    nb_gate_prompt_info_t p;
    uint64_t id;
    if (!have_gate(ctx) || parse_id(ctx, &id) < 0)
        return;
    if (nb_gate_prompt_get(ctx->d->gate, id, &p) < 0) {
        nb_api_reply_error(ctx, 404, "not-found",
                           "no pending prompt %llu (answered, timed out, or never existed)",
                           (unsigned long long)id);
        return;
    }
    nb_api_reply_json(ctx, 200, nb_gate_prompt_json(&p));
}

static void on_answer(nb_api_ctx_t *ctx)
{
    nb_gate_prompt_info_t p;
    uint64_t id;
    const char *ans = nb_json_str(ctx->body, "answer");
    if (!have_gate(ctx) || parse_id(ctx, &id) < 0)
        return;
    int a = ans ? nb_gate_answer_parse(ans) : 0;
    if (!a) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "the body needs {\"answer\": \"allow-once\" | \"allow-always\" | "
                           "\"deny-once\" | \"deny-always\"}");
        return;
    }
    if (nb_gate_prompt_get(ctx->d->gate, id, &p) < 0) {
        nb_api_reply_error(ctx, 404, "not-found",
                           "no pending prompt %llu (answered, timed out, or never existed)",
                           (unsigned long long)id);
        return;
    }
    /* Audited before the answer takes effect: the row precedes anything
     * the waiting connections do with it. */
    if (ctx->d->audit)
        nb_audit_append(ctx->d->audit, NB_AUDIT_PROMPT_ANSWER, p.vm[0] ? p.vm : NULL, p.host,
                        p.port,
                        json_pack("{s:I, s:s, s:s, s:i}", "prompt_id", (json_int_t)id, "answer",
                                  nb_gate_answer_name(a), "via", ctx->is_unix ? "cli" : "ui",
                                  "waiters", (int)p.waiters));
    int r = nb_gate_answer(ctx->d->gate, id, a);
    if (r < 0) {
        nb_api_reply_errno(ctx, r, NULL);
        return;
    }
    json_t *pj = nb_gate_prompt_json(&p);
    nb_api_reply_json(ctx, 200,
                      json_pack("{s:I, s:s, s:o}", "id", (json_int_t)id, "answer",
                                nb_gate_answer_name(a), "prompt", pj ? pj : json_object()));
}

/* ------------------------------------------------- test-only prompt maker */

typedef struct {
    nb_daemon_t *d;
    char vm[NB_RULES_VM_MAX];
    char host[NB_GATE_DISPLAY_MAX];
    uint16_t port;
} test_wait_t;

static void on_test_verdict(void *ud, const nb_gate_verdict_t *v)
{
    test_wait_t *w = ud;
    nb_daemon_t *d = w->d;
    if (d->events)
        nb_events_emit(d->events, "test.verdict",
                       json_pack("{s:s, s:s, s:i, s:b, s:s, s:I}", "vm", w->vm, "host", w->host,
                                 "port", (int)w->port, "allowed", v->allowed, "reason",
                                 nb_gate_why_name(v->why), "prompt_id", (json_int_t)v->prompt_id));
    free(w);
}

/* POST /v1/test/prompts {"vm", "host", "port"}: judges a destination as a
 * connection would, so tests can create prompts without a proxy. Only
 * with NILBOX_TEST_MODE=1 in the daemon's environment; otherwise 404. */
static void on_test_prompt(nb_api_ctx_t *ctx)
{
    const char *tm = getenv("NILBOX_TEST_MODE");
    nb_dest_t dest;
    nb_gate_verdict_t v;
    nb_gate_wait_t *wait = NULL;
    if (!tm || strcmp(tm, "1") != 0) {
        nb_api_reply_error(ctx, 404, "not-found", "no such API route: %s %s (see docs/api.md)",
                           nb_httpd_req_method(ctx->req), nb_httpd_req_path(ctx->req));
        return;
    }
    if (!have_gate(ctx))
        return;
    const char *vm = nb_json_str(ctx->body, "vm"), *host = nb_json_str(ctx->body, "host");
    json_int_t port = nb_json_int(ctx->body, "port", 443);
    if (!host || port < 1 || port > 65535 ||
        nb_dest_set(&dest, vm, host, strlen(host), (uint16_t)port) < 0) {
        nb_api_reply_error(ctx, 422, "invalid", "needs {\"vm\", \"host\", \"port\"} (valid ones)");
        return;
    }
    test_wait_t *w = calloc(1, sizeof *w);
    if (!w) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    w->d = ctx->d;
    w->port = (uint16_t)port;
    snprintf(w->vm, sizeof w->vm, "%s", dest.vm);
    nb_rules_display_name(host, strlen(host), w->host, sizeof w->host);
    if (nb_gate_check(ctx->d->gate, &dest, &v, on_test_verdict, w, &wait) == 1) {
        free(w);
        nb_api_reply_json(
            ctx, 200,
            json_pack("{s:b, s:s}", "allowed", v.allowed, "reason", nb_gate_why_name(v.why)));
        return;
    }
    nb_api_reply_json(ctx, 202, json_pack("{s:b}", "pending", 1));
}

const nb_api_route_t nb_api_routes_prompts[] = {
    {"GET", "/v1/prompts", on_list, 0},
    {"GET", "/v1/prompts/{id}", on_get, 0},
    {"POST", "/v1/prompts/{id}/answer", on_answer, 0},
    {"POST", "/v1/test/prompts", on_test_prompt, 0},
    {0},
};
