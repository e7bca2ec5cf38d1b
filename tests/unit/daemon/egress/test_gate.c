/* Unit tests for src/daemon/egress/gate: rule order, one prompt for
 * concurrent waiters, the four answers, allow-once scoped to the waiting
 * connections and the VM (A9), timeout denies (A16), overload denies,
 * re-judging on new rules, persistence of *-always, shutdown. Real libuv
 * loop and timers. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "daemon/egress/gate.h"
#include "daemon/egress/rules.h"
#include "daemon/base/store.h"
#include "lib/err.h"
#include "nbtest.h"

typedef struct {
    int called;
    nb_gate_verdict_t v;
} waiter_t;

static void on_done(void *ud, const nb_gate_verdict_t *v)
{
    waiter_t *w = ud;
    w->called++;
    w->v = *v;
}

typedef struct {
    int created, resolved, added, stored, waiters;
    nb_gate_prompt_info_t last_created, last_resolved, last_waiters;
    int last_allowed, last_why, last_store_r;
    nb_rule_t last_rule;
} hooks_log_t;

static void h_created(void *ud, const nb_gate_prompt_info_t *p)
{
    hooks_log_t *h = ud;
    h->created++;
    h->last_created = *p;
}

static void h_resolved(void *ud, const nb_gate_prompt_info_t *p, int allowed, int why)
{
    hooks_log_t *h = ud;
    h->resolved++;
    h->last_resolved = *p;
    h->last_allowed = allowed;
    h->last_why = why;
}

static void h_waiters(void *ud, const nb_gate_prompt_info_t *p)
{
    hooks_log_t *h = ud;
    h->waiters++;
    h->last_waiters = *p;
}

static void h_added(void *ud, const nb_rule_t *r)
{
    hooks_log_t *h = ud;
    h->added++;
    h->last_rule = *r;
}

static void h_stored(void *ud, const nb_rule_t *r, int rc)
{
    hooks_log_t *h = ud;
    h->stored++;
    h->last_rule = *r;
    h->last_store_r = rc;
}

static nb_dest_t dest(const char *vm, const char *host, uint16_t port)
{
    nb_dest_t d;
    int r = nb_dest_set(&d, vm, host, strlen(host), port);
    NB_CHECK_EQ_INT(r, 0);
    return d;
}

static void add_rule(nb_gate_t *g, const char *spec, int action, const char *vm, int64_t id)
{
    nb_rule_t r;
    memset(&r, 0, sizeof r);
    NB_CHECK_EQ_INT(nb_rule_parse(spec, &r), 0);
    r.action = action;
    r.id = id;
    snprintf(r.vm, sizeof r.vm, "%s", vm);
    NB_CHECK_EQ_INT(nb_gate_rule_added(g, &r), 0);
}

static nb_gate_t *mkgate(uv_loop_t *loop, hooks_log_t *h, uint64_t timeout_ms, nb_store_t *st)
{
    nb_gate_cfg_t cfg;
    nb_gate_cfg_default(&cfg);
    cfg.prompt_timeout_ms = timeout_ms;
    cfg.store = st;
    cfg.hooks.on_prompt_created = h_created;
    cfg.hooks.on_prompt_resolved = h_resolved;
    cfg.hooks.on_rule_added = h_added;
    cfg.hooks.on_prompt_waiters = h_waiters;
    cfg.hooks.on_rule_stored = h_stored;
    cfg.hooks.ud = h;
    nb_gate_t *g = NULL;
    NB_CHECK_EQ_INT(nb_gate_new(loop, &cfg, &g), 0);
    return g;
}

static void test_rules_first(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 1000, NULL);
    add_rule(g, "*.example.com:443", NB_RULE_ALLOW, "", 1);
    add_rule(g, "bad.example.com", NB_RULE_DENY, "", 2);
    nb_gate_verdict_t v;
    nb_gate_wait_t *w = NULL;
    waiter_t wt = {0};
    nb_dest_t d = dest("a", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 1);
    NB_CHECK(v.allowed && v.why == NB_GATE_WHY_ALLOW_RULE && v.rule_id == 1 && !w);
    d = dest("a", "bad.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_DENY_RULE && v.rule_id == 2);
    /* A name rule never admits an IP destination (A12). */
    d = dest("a", "93.184.216.34", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    NB_CHECK(w != NULL && h.created == 1 && h.last_created.is_ip == 1);
    nb_gate_cancel(w);
    NB_CHECK_EQ_INT(wt.called, 0);
    /* The prompt stays pending without waiters. */
    NB_CHECK_EQ_INT(nb_gate_prompts(g, NULL, 0), 1);
    /* Removing the rule takes effect for new checks. */
    NB_CHECK_EQ_INT(nb_gate_rule_removed(g, 1), 0);
    NB_CHECK_EQ_INT(nb_gate_rule_removed(g, 1), NB_ENOTFOUND);
    d = dest("a", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    nb_gate_cancel(w);
    nb_gate_free(g);
    NB_CHECK_EQ_INT(h.resolved, 2);
    NB_CHECK_EQ_INT(h.last_why, NB_GATE_WHY_SHUTDOWN);
    NB_CHECK_EQ_INT(h.last_allowed, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Waiters that leave are counted out (on_prompt_waiters); a prompt nobody
 * waits on still takes an answer, and an *-always answer still adds its
 * rule. */
static void test_waiters_leave(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 10000, NULL);
    nb_gate_verdict_t v;
    nb_gate_wait_t *w1 = NULL, *w2 = NULL;
    waiter_t a = {0}, b = {0};
    nb_dest_t d = dest("a", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &a, &w1), 0);
    NB_CHECK(h.created == 1 && h.last_created.waiters == 1 && h.waiters == 0);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &b, &w2), 0);
    NB_CHECK(h.waiters == 1 && h.last_waiters.waiters == 2);
    nb_gate_cancel(w1);
    NB_CHECK(h.waiters == 2 && h.last_waiters.waiters == 1);
    nb_gate_cancel(w2);
    NB_CHECK(h.waiters == 3 && h.last_waiters.waiters == 0);
    nb_gate_prompt_info_t p;
    NB_CHECK_EQ_INT(nb_gate_prompts(g, &p, 1), 1);
    NB_CHECK_EQ_INT(p.waiters, 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, p.id, NB_GATE_ALLOW_ALWAYS), 0);
    NB_CHECK(a.called == 0 && b.called == 0 && h.resolved == 1 && h.added == 1);
    NB_CHECK_EQ_INT(h.last_resolved.waiters, 0);
    NB_CHECK_EQ_INT(h.waiters, 3); /* answering is not a waiter change */
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &a, &w1), 1);
    NB_CHECK(v.allowed && v.why == NB_GATE_WHY_ALLOW_RULE);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_one_prompt_many_waiters(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 5000, NULL);
    waiter_t wt[3] = {{0}};
    nb_gate_wait_t *w[3];
    nb_gate_verdict_t v;
    nb_dest_t d = dest("a", "api.example.com", 443);
    for (int i = 0; i < 3; i++)
        NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt[i], &w[i]), 0);
    NB_CHECK_EQ_INT(h.created, 1);
    nb_gate_prompt_info_t list[4];
    NB_CHECK_EQ_INT(nb_gate_prompts(g, list, 4), 1);
    NB_CHECK_EQ_INT(list[0].waiters, 3);
    NB_CHECK_STR(list[0].host, "api.example.com");
    NB_CHECK_STR(list[0].vm, "a");
    NB_CHECK_EQ_INT(list[0].port, 443);
    NB_CHECK(list[0].deadline_ms - list[0].created_ms == 5000);
    /* Another port and another VM get their own prompts. */
    waiter_t other[2] = {{0}};
    nb_gate_wait_t *ow[2];
    nb_dest_t d2 = dest("a", "api.example.com", 8443);
    nb_dest_t d3 = dest("b", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d2, &v, on_done, &other[0], &ow[0]), 0);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d3, &v, on_done, &other[1], &ow[1]), 0);
    NB_CHECK_EQ_INT(h.created, 3);
    /* One waiter leaves. */
    nb_gate_cancel(w[1]);
    NB_CHECK_EQ_INT(nb_gate_prompt_get(g, list[0].id, &list[1]), 0);
    NB_CHECK_EQ_INT(list[1].waiters, 2);
    /* Allow-once: only the waiting connections of VM a on 443 go on (A9). */
    NB_CHECK_EQ_INT(nb_gate_answer(g, list[0].id, NB_GATE_ALLOW_ONCE), 0);
    NB_CHECK(wt[0].called == 1 && wt[0].v.allowed && wt[0].v.why == NB_GATE_WHY_ALLOW_ONCE);
    NB_CHECK(wt[2].called == 1 && wt[2].v.allowed && wt[2].v.prompt_id == list[0].id);
    NB_CHECK_EQ_INT(wt[1].called, 0);
    NB_CHECK_EQ_INT(other[0].called, 0);
    NB_CHECK_EQ_INT(other[1].called, 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, list[0].id, NB_GATE_ALLOW_ONCE), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(h.resolved, 1);
    NB_CHECK(h.last_allowed == 1 && h.last_why == NB_GATE_WHY_ALLOW_ONCE);
    /* Nothing remembered: the next connection prompts again. */
    waiter_t again = {0};
    nb_gate_wait_t *aw;
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &again, &aw), 0);
    NB_CHECK_EQ_INT(h.created, 4);
    /* Deny-once for VM b's prompt. */
    NB_CHECK_EQ_INT(nb_gate_answer(g, 3, 77), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_gate_answer(g, 3, NB_GATE_DENY_ONCE), 0);
    NB_CHECK(other[1].called == 1 && !other[1].v.allowed &&
             other[1].v.why == NB_GATE_WHY_DENY_ONCE);
    nb_gate_stats_t st;
    nb_gate_stats(g, &st);
    NB_CHECK_EQ_INT(st.pending, 2);
    NB_CHECK_EQ_INT(st.prompts_answered, 2);
    nb_gate_free(g);
    NB_CHECK(again.called == 1 && !again.v.allowed && again.v.why == NB_GATE_WHY_SHUTDOWN);
    NB_CHECK(other[0].called == 1 && !other[0].v.allowed);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_always_and_rejudge(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 5000, NULL);
    waiter_t wt = {0}, wt2 = {0}, wt3 = {0};
    nb_gate_wait_t *w, *w2, *w3;
    nb_gate_verdict_t v;
    nb_dest_t d = dest("a", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, h.last_created.id, NB_GATE_ALLOW_ALWAYS), 0);
    NB_CHECK(wt.called == 1 && wt.v.allowed && wt.v.why == NB_GATE_WHY_ALLOW_ALWAYS);
    NB_CHECK_EQ_INT(h.added, 1);
    NB_CHECK_STR(h.last_rule.pattern, "api.example.com");
    NB_CHECK_STR(h.last_rule.vm, "a");
    NB_CHECK_EQ_INT(h.last_rule.port, 443);
    NB_CHECK_EQ_INT(h.last_rule.action, NB_RULE_ALLOW);
    /* Remembered for VM a, not for VM b (A9), not for another port. */
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 1);
    NB_CHECK(v.allowed && v.why == NB_GATE_WHY_ALLOW_RULE);
    nb_dest_t db = dest("b", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &db, &v, on_done, &wt2, &w2), 0);
    nb_dest_t dp = dest("a", "api.example.com", 80);
    NB_CHECK_EQ_INT(nb_gate_check(g, &dp, &v, on_done, &wt3, &w3), 0);
    /* Deny-always of an IPv6 destination. */
    waiter_t w6 = {0};
    nb_gate_wait_t *ww6;
    nb_dest_t d6 = dest("a", "2001:db8::1", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d6, &v, on_done, &w6, &ww6), 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, h.last_created.id, NB_GATE_DENY_ALWAYS), 0);
    NB_CHECK(w6.called == 1 && !w6.v.allowed && w6.v.why == NB_GATE_WHY_DENY_ALWAYS);
    NB_CHECK_STR(h.last_rule.pattern, "2001:db8::1/128");
    NB_CHECK_EQ_INT(nb_gate_check(g, &d6, &v, on_done, &w6, &ww6), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_DENY_RULE);
    /* A rule added through the API resolves the pending prompt of VM b. */
    add_rule(g, "*.example.com", NB_RULE_DENY, "b", 42);
    NB_CHECK(wt2.called == 1 && !wt2.v.allowed && wt2.v.why == NB_GATE_WHY_DENY_RULE &&
             wt2.v.rule_id == 42);
    NB_CHECK_EQ_INT(wt3.called, 0);
    add_rule(g, "api.example.com:80", NB_RULE_ALLOW, "", 43);
    NB_CHECK(wt3.called == 1 && wt3.v.allowed && wt3.v.rule_id == 43);
    NB_CHECK_EQ_INT(h.last_why, NB_GATE_WHY_ALLOW_RULE);
    NB_CHECK_EQ_INT(nb_gate_prompts(g, NULL, 0), 0);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

typedef struct {
    nb_gate_t *g;
    int calls;
    uint64_t gen_seen;
    int rules_seen;
} watch_log_t;

static void on_change(void *ud)
{
    watch_log_t *w = ud;
    w->calls++;
    w->gen_seen = nb_gate_generation(w->g);
    w->rules_seen = (int)nb_gate_rules(w->g)->n;
}

/* Issue 16: every ruleset change bumps the generation and tells watchers
 * (after the change, so they see the new rules); nothing else does. */
static void test_generation_and_watch(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 5000, NULL);
    watch_log_t wl = {.g = g}, wl2 = {.g = g};
    uint64_t hw = nb_gate_watch(g, on_change, &wl);
    uint64_t hw2 = nb_gate_watch(g, on_change, &wl2);
    NB_CHECK(hw && hw2 && hw != hw2);
    uint64_t g0 = nb_gate_generation(g);
    add_rule(g, "api.example.com:443", NB_RULE_ALLOW, "", 1);
    NB_CHECK(nb_gate_generation(g) > g0);
    NB_CHECK_EQ_INT(wl.calls, 1);
    NB_CHECK_EQ_INT(wl.rules_seen, 1);
    NB_CHECK(wl.gen_seen == nb_gate_generation(g));
    /* Judging and removing an unknown rule change nothing. */
    uint64_t g1 = nb_gate_generation(g);
    nb_gate_verdict_t v;
    nb_gate_wait_t *w = NULL;
    waiter_t wt = {0};
    nb_dest_t d = dest("a", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 1);
    NB_CHECK_EQ_INT(nb_gate_rule_removed(g, 99), NB_ENOTFOUND);
    NB_CHECK(nb_gate_generation(g) == g1);
    NB_CHECK_EQ_INT(wl.calls, 1);
    /* The rules-only verdict: decides or says "no rule", never prompts. */
    NB_CHECK_EQ_INT(nb_gate_rules_verdict(g, &d, &v), 1);
    NB_CHECK(v.allowed && v.why == NB_GATE_WHY_ALLOW_RULE && v.rule_id == 1);
    add_rule(g, "api.example.com", NB_RULE_DENY, "a", 2);
    NB_CHECK_EQ_INT(wl.calls, 2);
    NB_CHECK_EQ_INT(nb_gate_rules_verdict(g, &d, &v), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_DENY_RULE && v.rule_id == 2);
    NB_CHECK_EQ_INT(nb_gate_rule_removed(g, 2), 0);
    NB_CHECK_EQ_INT(nb_gate_rule_removed(g, 1), 0);
    NB_CHECK_EQ_INT(wl.calls, 4);
    NB_CHECK_EQ_INT(wl.rules_seen, 0);
    NB_CHECK_EQ_INT(nb_gate_rules_verdict(g, &d, &v), 0);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_NO_PROMPT);
    NB_CHECK_EQ_INT(h.created, 0); /* no prompt from the rules-only verdict */
    /* An *-always answer is a change too. */
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, h.last_created.id, NB_GATE_DENY_ALWAYS), 0);
    NB_CHECK_EQ_INT(wl.calls, 5);
    NB_CHECK_EQ_INT(wl.rules_seen, 1);
    /* allow-once is not. */
    nb_dest_t d2 = dest("a", "other.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d2, &v, on_done, &wt, &w), 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, h.last_created.id, NB_GATE_ALLOW_ONCE), 0);
    NB_CHECK_EQ_INT(wl.calls, 5);
    nb_gate_unwatch(g, hw);
    nb_gate_unwatch(g, 12345); /* unknown: no-op */
    add_rule(g, "x.example.com", NB_RULE_ALLOW, "", 7);
    NB_CHECK_EQ_INT(wl.calls, 5);
    NB_CHECK_EQ_INT(wl2.calls, 6);
    nb_gate_free(g); /* frees the remaining watcher */
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_timeout_denies(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 50, NULL);
    waiter_t wt = {0};
    nb_gate_wait_t *w;
    nb_gate_verdict_t v;
    nb_dest_t d = dest("a", "slow.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    uint64_t t0 = uv_now(&loop);
    while (!wt.called && uv_now(&loop) - t0 < 5000)
        uv_run(&loop, UV_RUN_ONCE);
    NB_CHECK(wt.called == 1 && !wt.v.allowed && wt.v.why == NB_GATE_WHY_TIMEOUT);
    NB_CHECK(uv_now(&loop) - t0 >= 45);
    NB_CHECK(h.resolved == 1 && h.last_why == NB_GATE_WHY_TIMEOUT && !h.last_allowed);
    NB_CHECK_EQ_INT(nb_gate_answer(g, h.last_created.id, NB_GATE_ALLOW_ONCE), NB_ENOTFOUND);
    nb_gate_stats_t st;
    nb_gate_stats(g, &st);
    NB_CHECK_EQ_INT(st.prompts_timed_out, 1);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_overload_and_no_prompt(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    nb_gate_cfg_t cfg;
    nb_gate_cfg_default(&cfg);
    cfg.max_prompts = 4;
    cfg.max_prompts_per_vm = 2;
    nb_gate_t *g;
    NB_CHECK_EQ_INT(nb_gate_new(&loop, &cfg, &g), 0);
    waiter_t wt[8] = {{0}};
    nb_gate_wait_t *w[8];
    nb_gate_verdict_t v;
    char name[64];
    int prompted = 0, denied = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "h%d.example.com", i);
        nb_dest_t d = dest("a", name, 443);
        if (nb_gate_check(g, &d, &v, on_done, &wt[i], &w[i]) == 0)
            prompted++;
        else if (!v.allowed && v.why == NB_GATE_WHY_OVERLOAD)
            denied++;
    }
    NB_CHECK_EQ_INT(prompted, 2);
    NB_CHECK_EQ_INT(denied, 1);
    /* Joining an existing prompt is not a new prompt. */
    nb_dest_t d0 = dest("a", "h0.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d0, &v, on_done, &wt[3], &w[3]), 0);
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "h%d.example.com", i);
        nb_dest_t d = dest("b", name, 443);
        NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt[4 + i], &w[4 + i]), 0);
    }
    nb_dest_t dc = dest("c", "x.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &dc, &v, on_done, &wt[6], &w[6]), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_OVERLOAD);
    nb_gate_free(g);
    for (int i = 0; i < 6; i++)
        if (i != 2)
            NB_CHECK(wt[i].called == 1 && !wt[i].v.allowed);
    /* no_prompt: denied at once. */
    cfg.no_prompt = 1;
    NB_CHECK_EQ_INT(nb_gate_new(&loop, &cfg, &g), 0);
    NB_CHECK_EQ_INT(nb_gate_check(g, &dc, &v, on_done, &wt[7], &w[7]), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_NO_PROMPT && w[7] == NULL);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_display_and_names(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 5000, NULL);
    /* A long name keeps its end (the domain that matters), cut marker first. */
    char name[260];
    size_t o = 0;
    for (int i = 0; i < 3; i++) {
        memcpy(name + o, "api.openai.com.", 15);
        o += 15;
        memset(name + o, 'x', 50);
        o += 50;
        name[o++] = '.';
    }
    memcpy(name + o, "evil.example", 13);
    waiter_t wt = {0};
    nb_gate_wait_t *w;
    nb_gate_verdict_t v;
    nb_dest_t d = dest("a", name, 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    const char *shown = h.last_created.host;
    NB_CHECK(strlen(shown) < NB_GATE_DISPLAY_MAX);
    NB_CHECK(strncmp(shown, "[", 1) == 0);
    NB_CHECK(strstr(shown, "evil.example") != NULL);
    NB_CHECK(strlen(shown) >= 12 && strcmp(shown + strlen(shown) - 12, "evil.example") == 0);
    json_t *j = nb_gate_prompt_json(&h.last_created);
    NB_CHECK(j != NULL);
    NB_CHECK_EQ_INT(json_integer_value(json_object_get(j, "timeout_s")), 5);
    NB_CHECK_STR(json_string_value(json_object_get(j, "vm")), "a");
    json_decref(j);
    NB_CHECK_EQ_INT(nb_gate_answer_parse("allow-always"), NB_GATE_ALLOW_ALWAYS);
    NB_CHECK_EQ_INT(nb_gate_answer_parse("allow"), 0);
    NB_CHECK_STR(nb_gate_answer_name(NB_GATE_DENY_ONCE), "deny-once");
    NB_CHECK_STR(nb_gate_why_name(NB_GATE_WHY_TIMEOUT), "prompt-timeout");
    NB_CHECK_STR(nb_gate_why_name(999), "unknown");
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static const nb_store_migration_t migs[] = {
    {1, "rules", NULL},
};

static void test_persist(void)
{
    char dir[] = "/tmp/nbgateXXXXXX";
    NB_CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof path, "%s/state.db", dir);
    nb_store_migration_t m = migs[0];
    m.sql = nb_rules_migration_sql;
    nb_store_t *st = NULL;
    char err[256];
    NB_CHECK_EQ_INT(nb_store_open_with(path, &m, 1, &st, err, sizeof err), 0);
    if (!st)
        return;
    uv_loop_t loop;
    uv_loop_init(&loop);
    hooks_log_t h = {0};
    nb_gate_t *g = mkgate(&loop, &h, 5000, st);
    waiter_t wt = {0};
    nb_gate_wait_t *w;
    nb_gate_verdict_t v;
    nb_dest_t d = dest("a", "api.example.com", 443);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 0);
    NB_CHECK_EQ_INT(nb_gate_answer(g, h.last_created.id, NB_GATE_ALLOW_ALWAYS), 0);
    uint64_t t0 = uv_now(&loop);
    while (!h.stored && uv_now(&loop) - t0 < 5000)
        uv_run(&loop, UV_RUN_ONCE);
    NB_CHECK_EQ_INT(h.stored, 1);
    NB_CHECK_EQ_INT(h.last_store_r, 0);
    NB_CHECK(h.last_rule.id > 0);
    /* The in-memory copy got the id: removing it by id works. */
    const nb_ruleset_t *rs = nb_gate_rules(g);
    NB_CHECK(rs->n == 1 && rs->v[0].id == h.last_rule.id);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* A fresh gate loads it. */
    g = mkgate(&loop, &h, 5000, st);
    NB_CHECK_EQ_INT(nb_gate_load_rules(g, nb_store_db(st)), 0);
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &wt, &w), 1);
    NB_CHECK(v.allowed && v.rule_id == h.last_rule.id);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
    nb_store_close(st);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    NB_CHECK_EQ_INT(system(cmd), 0);
}

int main(void)
{
    NB_RUN(test_rules_first);
    NB_RUN(test_one_prompt_many_waiters);
    NB_RUN(test_waiters_leave);
    NB_RUN(test_always_and_rejudge);
    NB_RUN(test_timeout_denies);
    NB_RUN(test_generation_and_watch);
    NB_RUN(test_overload_and_no_prompt);
    NB_RUN(test_display_and_names);
    NB_RUN(test_persist);
    NB_TEST_MAIN_END();
}
