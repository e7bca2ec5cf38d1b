/* The egress gate: rule evaluation plus prompts that concurrent connections
 * share. See gate.h and docs/internals/gate.md. */
#include "daemon/egress/gate.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "daemon/base/store.h"
#include "lib/err.h"
#include "lib/log.h"

typedef struct prompt prompt_t;

struct nb_gate_wait {
    nb_gate_wait_t *next, *prev;
    prompt_t *p;
    nb_gate_done_fn done;
    void *ud;
};

struct prompt {
    prompt_t *next, *prev; /* pending list, oldest first */
    nb_gate_t *g;
    nb_dest_t dest;
    nb_gate_prompt_info_t info;
    nb_gate_wait_t *waiters; /* doubly linked, head insert */
    uv_timer_t timer;        /* the deadline; the prompt is freed in its close callback */
    int resolved;            /* out of the pending list, waking its waiters */
    int custom;              /* nb_gate_ask: no destination, never judged by rules */
};

typedef struct watch {
    struct watch *next;
    uint64_t handle;
    nb_gate_change_fn fn;
    void *ud;
} watch_t;

struct nb_gate {
    uv_loop_t *loop;
    nb_gate_cfg_t cfg;
    nb_ruleset_t rules;
    uint64_t gen; /* bumped on every ruleset change */
    watch_t *watches;
    uint64_t next_watch;
    prompt_t *head, *tail;
    size_t pending;
    uint64_t next_id;
    unsigned open_handles; /* prompt timers not yet closed */
    unsigned jobs;         /* rule writes on the thread pool */
    int closing;
    nb_gate_stats_t st;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void nb_gate_cfg_default(nb_gate_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
}

int nb_gate_new(uv_loop_t *loop, const nb_gate_cfg_t *cfg, nb_gate_t **out)
{
    *out = NULL;
    nb_gate_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->loop = loop;
    if (cfg)
        g->cfg = *cfg;
    if (!g->cfg.prompt_timeout_ms)
        g->cfg.prompt_timeout_ms = NB_GATE_PROMPT_TIMEOUT_MS;
    if (!g->cfg.max_prompts)
        g->cfg.max_prompts = NB_GATE_MAX_PROMPTS;
    if (!g->cfg.max_prompts_per_vm)
        g->cfg.max_prompts_per_vm = NB_GATE_MAX_PROMPTS_PER_VM;
    g->next_id = 1;
    *out = g;
    return 0;
}

static void maybe_destroy(nb_gate_t *g)
{
    if (g->closing && g->open_handles == 0 && g->jobs == 0) {
        while (g->watches) {
            watch_t *w = g->watches;
            g->watches = w->next;
            free(w);
        }
        nb_ruleset_free(&g->rules);
        free(g);
    }
}

/* ---- prompts ---- */

static void on_timer_closed(uv_handle_t *h)
{
    prompt_t *p = h->data;
    nb_gate_t *g = p->g;
    free(p);
    g->open_handles--;
    maybe_destroy(g);
}

static void unlink_prompt(nb_gate_t *g, prompt_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        g->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        g->tail = p->prev;
    p->next = p->prev = NULL;
    g->pending--;
}

static void unlink_wait(prompt_t *p, nb_gate_wait_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        p->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->p = NULL;
    if (p->info.waiters)
        p->info.waiters--;
}

/* Takes `p` out of the pending list, wakes every waiter with the verdict,
 * tells the hooks and closes the deadline timer (which frees `p`). */
static void resolve(nb_gate_t *g, prompt_t *p, const nb_gate_verdict_t *v)
{
    nb_gate_prompt_info_t info = p->info;
    unlink_prompt(g, p);
    p->resolved = 1;
    uv_timer_stop(&p->timer);
    /* Pop one waiter at a time: a callback may cancel another waiter. */
    while (p->waiters) {
        nb_gate_wait_t *w = p->waiters;
        unlink_wait(p, w);
        if (v->allowed)
            g->st.allowed++;
        else
            g->st.denied++;
        w->done(w->ud, v);
        free(w);
    }
    if (g->cfg.hooks.on_prompt_resolved)
        g->cfg.hooks.on_prompt_resolved(g->cfg.hooks.ud, &info, v->allowed, v->why);
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
}

static void on_deadline(uv_timer_t *t)
{
    prompt_t *p = t->data;
    nb_gate_t *g = p->g;
    g->st.prompts_timed_out++;
    nb_log(NB_LOG_NOTICE, "prompt %" PRIu64 " (%s port %u, vm '%s') timed out: denied", p->info.id,
           p->info.host, p->info.port, p->info.vm);
    nb_gate_verdict_t v = {.allowed = 0, .why = NB_GATE_WHY_TIMEOUT, .prompt_id = p->info.id};
    resolve(g, p, &v);
}

static int dest_eq(const nb_dest_t *a, const nb_dest_t *b)
{
    if (a->port != b->port || a->is_ip != b->is_ip || strcmp(a->vm, b->vm) != 0)
        return 0;
    if (a->is_ip)
        return a->ip.family == b->ip.family && memcmp(a->ip.a, b->ip.a, sizeof a->ip.a) == 0;
    return strcmp(a->name, b->name) == 0;
}

static void dest_text(const nb_dest_t *d, char *out, size_t outsz)
{
    if (d->is_ip)
        nb_ip_format(&d->ip, out, outsz);
    else
        snprintf(out, outsz, "%s", d->name);
}

static prompt_t *find_prompt(const nb_gate_t *g, const nb_dest_t *d)
{
    for (prompt_t *p = g->head; p; p = p->next)
        if (!p->custom && dest_eq(&p->dest, d))
            return p;
    return NULL;
}

static size_t pending_for_vm(const nb_gate_t *g, const char *vm)
{
    size_t n = 0;
    for (prompt_t *p = g->head; p; p = p->next)
        if (strcmp(p->dest.vm, vm) == 0)
            n++;
    return n;
}

static prompt_t *new_prompt(nb_gate_t *g, const nb_dest_t *d)
{
    prompt_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (uv_timer_init(g->loop, &p->timer) < 0) {
        free(p);
        return NULL;
    }
    p->timer.data = p;
    p->g = g;
    p->dest = *d;
    p->info.id = g->next_id++;
    snprintf(p->info.vm, sizeof p->info.vm, "%s", d->vm);
    char text[NB_HOSTNAME_BUFSZ + 64];
    dest_text(d, text, sizeof text);
    /* Normalised names are already printable; the display helper still
     * bounds the length, keeping the end where the domain that matters is. */
    nb_rules_display_name(text, strlen(text), p->info.host, sizeof p->info.host);
    p->info.is_ip = d->is_ip;
    p->info.port = d->port;
    p->info.created_ms = wall_ms();
    p->info.deadline_ms = p->info.created_ms + (int64_t)g->cfg.prompt_timeout_ms;
    g->open_handles++;
    uv_timer_start(&p->timer, on_deadline, g->cfg.prompt_timeout_ms, 0);
    p->prev = g->tail;
    if (g->tail)
        g->tail->next = p;
    else
        g->head = p;
    g->tail = p;
    g->pending++;
    g->st.prompts_created++;
    return p;
}

/* ---- policy changes ---- */

/* The ruleset changed: new generation, then every watcher walks what it
 * holds open (the proxy closes raw tunnels the new rules no longer allow).
 * A watcher may not change rules from its callback. */
static void policy_changed(nb_gate_t *g)
{
    g->gen++;
    for (watch_t *w = g->watches, *n; w; w = n) {
        n = w->next; /* a callback may unwatch itself */
        w->fn(w->ud);
    }
}

uint64_t nb_gate_generation(const nb_gate_t *g)
{
    return g->gen;
}

uint64_t nb_gate_watch(nb_gate_t *g, nb_gate_change_fn fn, void *ud)
{
    watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return 0;
    w->fn = fn;
    w->ud = ud;
    w->handle = ++g->next_watch;
    w->next = g->watches;
    g->watches = w;
    return w->handle;
}

void nb_gate_unwatch(nb_gate_t *g, uint64_t handle)
{
    for (watch_t **pp = &g->watches; *pp; pp = &(*pp)->next) {
        if ((*pp)->handle == handle) {
            watch_t *w = *pp;
            *pp = w->next;
            free(w);
            return;
        }
    }
}

/* ---- judging ---- */

static void verdict_from_rules(const nb_gate_result_t *res, nb_gate_verdict_t *v)
{
    memset(v, 0, sizeof *v);
    v->rule_id = res->rule_id;
    if (res->decision == NB_GATE_ALLOW) {
        v->allowed = 1;
        v->why = NB_GATE_WHY_ALLOW_RULE;
        v->http = res->http;
    } else {
        v->allowed = 0;
        v->why = res->reason == NB_GATE_R_BLOCKLIST ? NB_GATE_WHY_BLOCKLIST : NB_GATE_WHY_DENY_RULE;
    }
}

static int decide_now(nb_gate_t *g, nb_gate_verdict_t *v, int allowed, int why)
{
    memset(v, 0, sizeof *v);
    v->allowed = allowed;
    v->why = why;
    if (allowed)
        g->st.allowed++;
    else
        g->st.denied++;
    return 1;
}

int nb_gate_rules_verdict(const nb_gate_t *g, const nb_dest_t *d, nb_gate_verdict_t *v)
{
    nb_gate_result_t res;
    nb_rules_eval(&g->rules, d, g->cfg.blocklist, g->cfg.blocklist_ctx, &res);
    if (res.decision == NB_GATE_PROMPT) {
        memset(v, 0, sizeof *v);
        v->why = NB_GATE_WHY_NO_PROMPT;
        return 0;
    }
    verdict_from_rules(&res, v);
    return 1;
}

static void add_waiter(nb_gate_t *g, prompt_t *p, nb_gate_wait_t *w, int created)
{
    w->p = p;
    w->next = p->waiters;
    if (p->waiters)
        p->waiters->prev = w;
    p->waiters = w;
    p->info.waiters++;
    /* The hooks see the prompt with its new waiter counted. */
    if (created && g->cfg.hooks.on_prompt_created)
        g->cfg.hooks.on_prompt_created(g->cfg.hooks.ud, &p->info);
    else if (!created && g->cfg.hooks.on_prompt_waiters)
        g->cfg.hooks.on_prompt_waiters(g->cfg.hooks.ud, &p->info);
}

int nb_gate_check(nb_gate_t *g, const nb_dest_t *d, nb_gate_verdict_t *v, nb_gate_done_fn done,
                  void *ud, nb_gate_wait_t **wait)
{
    *wait = NULL;
    g->st.checks++;
    nb_gate_result_t res;
    nb_rules_eval(&g->rules, d, g->cfg.blocklist, g->cfg.blocklist_ctx, &res);
    if (res.decision != NB_GATE_PROMPT) {
        verdict_from_rules(&res, v);
        if (v->allowed)
            g->st.allowed++;
        else
            g->st.denied++;
        return 1;
    }
    if (g->closing)
        return decide_now(g, v, 0, NB_GATE_WHY_SHUTDOWN);
    if (g->cfg.no_prompt || !done)
        return decide_now(g, v, 0, NB_GATE_WHY_NO_PROMPT);
    nb_gate_wait_t *w = calloc(1, sizeof *w);
    if (!w)
        return decide_now(g, v, 0, NB_GATE_WHY_ERROR);
    prompt_t *p = find_prompt(g, d);
    int created = 0;
    if (!p) {
        if (g->pending >= g->cfg.max_prompts ||
            pending_for_vm(g, d->vm) >= g->cfg.max_prompts_per_vm) {
            free(w);
            nb_log(NB_LOG_WARN, "too many pending prompts (vm '%s'): denied without asking", d->vm);
            return decide_now(g, v, 0, NB_GATE_WHY_OVERLOAD);
        }
        if (!(p = new_prompt(g, d))) {
            free(w);
            return decide_now(g, v, 0, NB_GATE_WHY_ERROR);
        }
        created = 1;
        nb_log(NB_LOG_INFO, "prompt %" PRIu64 ": vm '%s' wants %s port %u", p->info.id, p->info.vm,
               p->info.host, p->info.port);
    }
    w->done = done;
    w->ud = ud;
    *wait = w;
    add_waiter(g, p, w, created);
    return 0;
}

int nb_gate_ask(nb_gate_t *g, const char *vm, const char *kind, const char *subject,
                nb_gate_verdict_t *v, nb_gate_done_fn done, void *ud, nb_gate_wait_t **wait)
{
    *wait = NULL;
    g->st.checks++;
    if (g->closing)
        return decide_now(g, v, 0, NB_GATE_WHY_SHUTDOWN);
    if (g->cfg.no_prompt || !done)
        return decide_now(g, v, 0, NB_GATE_WHY_NO_PROMPT);
    char host[NB_GATE_DISPLAY_MAX];
    nb_rules_display_name(subject, strlen(subject), host, sizeof host);
    prompt_t *p;
    for (p = g->head; p; p = p->next)
        if (p->custom && !strcmp(p->info.vm, vm) && !strcmp(p->info.kind, kind) &&
            !strcmp(p->info.host, host))
            break;
    nb_gate_wait_t *w = calloc(1, sizeof *w);
    if (!w)
        return decide_now(g, v, 0, NB_GATE_WHY_ERROR);
    int created = 0;
    if (!p) {
        nb_dest_t d;
        memset(&d, 0, sizeof d);
        snprintf(d.vm, sizeof d.vm, "%s", vm);
        if (g->pending >= g->cfg.max_prompts ||
            pending_for_vm(g, d.vm) >= g->cfg.max_prompts_per_vm) {
            free(w);
            return decide_now(g, v, 0, NB_GATE_WHY_OVERLOAD);
        }
        if (!(p = new_prompt(g, &d))) {
            free(w);
            return decide_now(g, v, 0, NB_GATE_WHY_ERROR);
        }
        p->custom = 1;
        snprintf(p->info.kind, sizeof p->info.kind, "%s", kind);
        snprintf(p->info.host, sizeof p->info.host, "%s", host);
        created = 1;
        nb_log(NB_LOG_INFO, "prompt %" PRIu64 ": vm '%s' asks for %s %s", p->info.id, p->info.vm,
               kind, host);
    }
    w->done = done;
    w->ud = ud;
    *wait = w;
    add_waiter(g, p, w, created);
    return 0;
}

void nb_gate_cancel(nb_gate_wait_t *w)
{
    if (!w)
        return;
    prompt_t *p = w->p;
    if (p) {
        unlink_wait(p, w);
        if (!p->resolved && p->g->cfg.hooks.on_prompt_waiters)
            p->g->cfg.hooks.on_prompt_waiters(p->g->cfg.hooks.ud, &p->info);
    }
    free(w);
}

/* Re-judges every pending prompt against the current rules; resolves the
 * ones the rules now decide. Restarts the scan after each resolution since
 * waiters' callbacks may change the list. */
static void rejudge(nb_gate_t *g)
{
    for (;;) {
        prompt_t *p;
        nb_gate_result_t res;
        for (p = g->head; p; p = p->next) {
            if (p->custom)
                continue;
            nb_rules_eval(&g->rules, &p->dest, g->cfg.blocklist, g->cfg.blocklist_ctx, &res);
            if (res.decision != NB_GATE_PROMPT)
                break;
        }
        if (!p)
            return;
        nb_gate_verdict_t v;
        verdict_from_rules(&res, &v);
        v.prompt_id = p->info.id;
        resolve(g, p, &v);
    }
}

/* ---- rules ---- */

const nb_ruleset_t *nb_gate_rules(const nb_gate_t *g)
{
    return &g->rules;
}

int nb_gate_load_rules(nb_gate_t *g, sqlite3 *db)
{
    nb_ruleset_t rs = NB_RULESET_INIT;
    int r = nb_rules_db_load(db, &rs);
    if (r < 0) {
        nb_ruleset_free(&rs);
        return r;
    }
    nb_ruleset_free(&g->rules);
    g->rules = rs;
    policy_changed(g);
    rejudge(g);
    return 0;
}

void nb_gate_set_blocklist(nb_gate_t *g, nb_blocklist_fn fn, void *ctx)
{
    g->cfg.blocklist = fn;
    g->cfg.blocklist_ctx = ctx;
    policy_changed(g);
    rejudge(g);
}

int nb_gate_rule_added(nb_gate_t *g, const nb_rule_t *r)
{
    int rc = nb_ruleset_add(&g->rules, r);
    if (rc < 0)
        return rc;
    policy_changed(g);
    rejudge(g);
    return 0;
}

int nb_gate_rule_removed(nb_gate_t *g, int64_t id)
{
    int rc = nb_ruleset_remove(&g->rules, id);
    if (rc == 0)
        policy_changed(g);
    return rc;
}

int nb_gate_addr_allowed(const nb_gate_t *g, const char *vm, const nb_ipaddr_t *addr, uint16_t port)
{
    return nb_rules_addr_allowed(&g->rules, vm, addr, port);
}

typedef struct {
    nb_gate_t *g;
    nb_rule_t rule;
    int r;
} store_job_t;

static void store_work(nb_store_t *st, void *ud)
{
    store_job_t *j = ud;
    j->r = nb_rules_db_add(nb_store_db(st), &j->rule);
}

static void store_done(void *ud, int status)
{
    store_job_t *j = ud;
    nb_gate_t *g = j->g;
    if (status < 0 && j->r == 0)
        j->r = NB_EINTERNAL;
    if (j->r == 0 && !g->closing) {
        /* Give the in-memory copy its id so that `rule rm` can find it. */
        for (size_t i = 0; i < g->rules.n; i++) {
            nb_rule_t *m = &g->rules.v[i];
            if (m->id == 0 && m->action == j->rule.action && m->port == j->rule.port &&
                strcmp(m->pattern, j->rule.pattern) == 0 && strcmp(m->vm, j->rule.vm) == 0) {
                m->id = j->rule.id;
                break;
            }
        }
    }
    if (j->r < 0)
        nb_log(NB_LOG_WARN, "cannot store rule %s (vm '%s'): %s; it holds until the daemon stops",
               j->rule.pattern, j->rule.vm, nb_strerror(j->r));
    if (!g->closing && g->cfg.hooks.on_rule_stored)
        g->cfg.hooks.on_rule_stored(g->cfg.hooks.ud, &j->rule, j->r);
    g->jobs--;
    free(j);
    maybe_destroy(g);
}

/* Builds the rule an *-always answer stands for: exactly this destination
 * and port, for this VM. */
static int rule_for(const prompt_t *p, int action, nb_rule_t *out)
{
    char text[NB_HOSTNAME_BUFSZ + 64];
    char spec[NB_HOSTNAME_BUFSZ + 80];
    memset(out, 0, sizeof *out);
    dest_text(&p->dest, text, sizeof text);
    if (p->dest.is_ip && p->dest.ip.family == AF_INET6)
        snprintf(spec, sizeof spec, "[%s]:%u", text, p->dest.port);
    else
        snprintf(spec, sizeof spec, "%s:%u", text, p->dest.port);
    int r = nb_rule_parse(spec, out);
    if (r < 0)
        return r;
    out->action = action;
    snprintf(out->vm, sizeof out->vm, "%s", p->dest.vm);
    snprintf(out->note, sizeof out->note, "%s from prompt %" PRIu64,
             action == NB_RULE_ALLOW ? "allow-always" : "deny-always", p->info.id);
    return 0;
}

static void add_always_rule(nb_gate_t *g, const nb_rule_t *rule)
{
    if (nb_ruleset_add(&g->rules, rule) < 0) {
        nb_log(NB_LOG_WARN, "cannot keep rule %s: out of memory", rule->pattern);
        return;
    }
    policy_changed(g);
    if (g->cfg.hooks.on_rule_added)
        g->cfg.hooks.on_rule_added(g->cfg.hooks.ud, rule);
    if (!g->cfg.store)
        return;
    store_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_log(NB_LOG_WARN, "cannot store rule %s: out of memory", rule->pattern);
        return;
    }
    j->g = g;
    j->rule = *rule;
    g->jobs++;
    int r = nb_store_queue(g->cfg.store, g->loop, store_work, store_done, j);
    if (r < 0) {
        g->jobs--;
        nb_log(NB_LOG_WARN, "cannot store rule %s: %s", rule->pattern, uv_strerror(r));
        free(j);
    }
}

int nb_gate_answer(nb_gate_t *g, uint64_t id, int answer)
{
    if (answer < NB_GATE_ALLOW_ONCE || answer > NB_GATE_DENY_ALWAYS)
        return NB_EINVAL;
    prompt_t *p;
    for (p = g->head; p; p = p->next)
        if (p->info.id == id)
            break;
    if (!p)
        return NB_ENOTFOUND;
    g->st.prompts_answered++;
    nb_gate_verdict_t v = {.prompt_id = id};
    nb_rule_t rule;
    int always = answer == NB_GATE_ALLOW_ALWAYS || answer == NB_GATE_DENY_ALWAYS;
    v.allowed = answer == NB_GATE_ALLOW_ONCE || answer == NB_GATE_ALLOW_ALWAYS;
    static const int whys[] = {0, NB_GATE_WHY_ALLOW_ONCE, NB_GATE_WHY_ALLOW_ALWAYS,
                               NB_GATE_WHY_DENY_ONCE, NB_GATE_WHY_DENY_ALWAYS};
    v.why = whys[answer];
    nb_log(NB_LOG_INFO, "prompt %" PRIu64 " (%s port %u, vm '%s') answered %s", id, p->info.host,
           p->info.port, p->info.vm, nb_gate_answer_name(answer));
    if (always && !p->custom && rule_for(p, v.allowed ? NB_RULE_ALLOW : NB_RULE_DENY, &rule) == 0) {
        /* The rule goes in first, so a waiter's callback that connects again
         * (or a second prompt for the same destination) sees it. */
        add_always_rule(g, &rule);
        resolve(g, p, &v);
        rejudge(g);
        return 0;
    }
    resolve(g, p, &v);
    return 0;
}

/* ---- listing ---- */

size_t nb_gate_prompts(const nb_gate_t *g, nb_gate_prompt_info_t *out, size_t max)
{
    size_t i = 0;
    for (const prompt_t *p = g->head; p; p = p->next, i++)
        if (i < max)
            out[i] = p->info;
    return g->pending;
}

int nb_gate_prompt_get(const nb_gate_t *g, uint64_t id, nb_gate_prompt_info_t *out)
{
    for (const prompt_t *p = g->head; p; p = p->next)
        if (p->info.id == id) {
            *out = p->info;
            return 0;
        }
    return NB_ENOTFOUND;
}

void nb_gate_stats(const nb_gate_t *g, nb_gate_stats_t *st)
{
    *st = g->st;
    st->pending = g->pending;
}

static const char *const answer_names[] = {"", "allow-once", "allow-always", "deny-once",
                                           "deny-always"};

int nb_gate_answer_parse(const char *s)
{
    if (!s)
        return 0;
    for (int i = 1; i <= NB_GATE_DENY_ALWAYS; i++)
        if (strcmp(s, answer_names[i]) == 0)
            return i;
    return 0;
}

const char *nb_gate_answer_name(int answer)
{
    if (answer < NB_GATE_ALLOW_ONCE || answer > NB_GATE_DENY_ALWAYS)
        return "";
    return answer_names[answer];
}

const char *nb_gate_why_name(int why)
{
    static const char *const names[] = {
        "unknown",      "deny-rule",      "blocklist",   "allow-rule",     "allow-once",
        "allow-always", "deny-once",      "deny-always", "prompt-timeout", "too-many-prompts",
        "shutdown",     "internal-error", "no-rule",
    };
    if (why < 0 || (size_t)why >= sizeof names / sizeof names[0])
        return "unknown";
    return names[why];
}

static void format_ms(int64_t ms, char *out, size_t outsz)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, outsz, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

json_t *nb_gate_prompt_json(const nb_gate_prompt_info_t *p)
{
    char created[80], deadline[80];
    format_ms(p->created_ms, created, sizeof created);
    format_ms(p->deadline_ms, deadline, sizeof deadline);
    return json_pack("{s:I, s:s, s:s, s:b, s:i, s:s, s:s, s:I, s:i, s:s}", "id", (json_int_t)p->id,
                     "vm", p->vm, "host", p->host, "is_ip", p->is_ip, "port", (int)p->port,
                     "created", created, "deadline", deadline, "timeout_s",
                     (json_int_t)((p->deadline_ms - p->created_ms + 999) / 1000), "waiters",
                     (int)p->waiters, "kind", p->kind[0] ? p->kind : "egress");
}

/* ---- teardown ---- */

void nb_gate_free(nb_gate_t *g)
{
    if (!g)
        return;
    g->closing = 1;
    while (g->head) {
        nb_gate_verdict_t v = {
            .allowed = 0, .why = NB_GATE_WHY_SHUTDOWN, .prompt_id = g->head->info.id};
        resolve(g, g->head, &v);
    }
    maybe_destroy(g);
}
