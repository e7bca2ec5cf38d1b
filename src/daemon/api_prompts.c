/* Routes of the gate's prompts (list, answer). Answers go to the audit log
 * here (with who answered); the gate's other events and audit rows come
 * from its hooks, which daemon.c wires.
 *
 * Names in prompts are already escaped and length-limited by the gate
 * (nb_rules_display_name): what the API shows is exactly what the user
 * judges. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "daemon/egress/gate.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define LIST_MAX 256

/* ----------------------------------------------------------------- routes */

static void on_list(nb_api_ctx_t *ctx)
{
    nb_gate_prompt_info_t *v = NULL;
    if (!nb_api_have_gate(ctx))
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

static int get_prompt(nb_api_ctx_t *ctx, uint64_t id, nb_gate_prompt_info_t *p)
{
    if (nb_gate_prompt_get(ctx->d->gate, id, p) >= 0)
        return 0;
    nb_api_reply_error(ctx, 404, "not-found",
                       "no pending prompt %llu (answered, timed out, or never existed)",
                       (unsigned long long)id);
    return -1;
}

static void on_get(nb_api_ctx_t *ctx)
{
    nb_gate_prompt_info_t p;
    uint64_t id;
    if (!nb_api_have_gate(ctx) || parse_id(ctx, &id) < 0)
        return;
    if (get_prompt(ctx, id, &p) < 0)
        return;
    nb_api_reply_json(ctx, 200, nb_gate_prompt_json(&p));
}

static void on_answer(nb_api_ctx_t *ctx)
{
    nb_gate_prompt_info_t p;
    uint64_t id;
    const char *ans = nb_json_str(ctx->body, "answer");
    if (!nb_api_have_gate(ctx) || parse_id(ctx, &id) < 0)
        return;
    int a = ans ? nb_gate_answer_parse(ans) : 0;
    if (!a) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "the body needs {\"answer\": \"allow-once\" | \"allow-always\" | "
                           "\"deny-once\" | \"deny-always\"}");
        return;
    }
    if (get_prompt(ctx, id, &p) < 0)
        return;
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
    if (!nb_api_have_gate(ctx))
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
