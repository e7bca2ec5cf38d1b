/* The egress gate: who may talk to what (DESIGN.md section 6, host side,
 * step 1; THREATS.md A9, A16).
 *
 * One gate per daemon. It owns the in-memory ruleset (rules.h) and the
 * pending prompts. For each destination (VM, name or IP, port) it decides:
 *
 *     deny rules -> blocklist hook -> allow rules -> prompt
 *
 * A prompt is an object the API publishes (on_prompt_created) and the user
 * answers by id. Concurrent requests for the same VM + destination + port
 * wait on ONE prompt. Answers:
 *   allow-once    the connection(s) waiting right now go on; nothing is
 *                 remembered, so the next connection prompts again. Scoped
 *                 to the prompt's VM by construction (A9).
 *   allow-always  a rule "allow <dest>:<port> for <vm>" is added to the
 *                 ruleset at once and persisted (when a store is set).
 *   deny-once     the waiting connection(s) are refused.
 *   deny-always   like allow-always with a deny rule.
 * No answer before the deadline (default 60 s) denies (A16): the gate
 * never fails open, also not when it is freed with prompts pending, when
 * too many prompts are pending, or on allocation failure.
 *
 * Rules added while prompts are pending (nb_gate_rule_added, or an
 * allow/deny-always answer) re-judge those prompts: a prompt that the new
 * ruleset decides is resolved with that decision.
 *
 * Threading: loop thread only. Callbacks run on the loop thread, never from
 * inside nb_gate_check() itself (a decision taken at once is returned, not
 * called back). */
#ifndef NB_GATE_H
#define NB_GATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/egress/rules.h"

typedef struct nb_store nb_store_t;

#define NB_GATE_PROMPT_TIMEOUT_MS 60000 /* default deadline of a prompt */
#define NB_GATE_MAX_PROMPTS 256         /* default cap on pending prompts (all VMs) */
#define NB_GATE_MAX_PROMPTS_PER_VM 32   /* default cap on pending prompts per VM */
#define NB_GATE_DISPLAY_MAX 160         /* prompt display name buffer (escaped, cut) */

typedef struct nb_gate nb_gate_t;

/* Answers to a prompt. */
typedef enum {
    NB_GATE_ALLOW_ONCE = 1,
    NB_GATE_ALLOW_ALWAYS = 2,
    NB_GATE_DENY_ONCE = 3,
    NB_GATE_DENY_ALWAYS = 4,
} nb_gate_answer_t;

/* Why a verdict was reached (the "reason" of audit rows and 403 bodies). */
typedef enum {
    NB_GATE_WHY_DENY_RULE = 1,    /* a deny rule matched */
    NB_GATE_WHY_BLOCKLIST = 2,    /* the blocklist hook blocked it */
    NB_GATE_WHY_ALLOW_RULE = 3,   /* an allow rule matched */
    NB_GATE_WHY_ALLOW_ONCE = 4,   /* prompt answered allow-once */
    NB_GATE_WHY_ALLOW_ALWAYS = 5, /* prompt answered allow-always */
    NB_GATE_WHY_DENY_ONCE = 6,    /* prompt answered deny-once */
    NB_GATE_WHY_DENY_ALWAYS = 7,  /* prompt answered deny-always */
    NB_GATE_WHY_TIMEOUT = 8,      /* nobody answered before the deadline (A16) */
    NB_GATE_WHY_OVERLOAD = 9,     /* too many prompts pending: denied without one */
    NB_GATE_WHY_SHUTDOWN = 10,    /* the gate closed while the prompt was pending */
    NB_GATE_WHY_ERROR = 11,       /* internal failure (allocation): denied */
    NB_GATE_WHY_NO_PROMPT = 12,   /* prompts are off (cfg.no_prompt): denied */
} nb_gate_why_t;

typedef struct {
    int allowed;        /* 1 allow, 0 deny */
    int why;            /* nb_gate_why_t */
    int64_t rule_id;    /* deciding rule (rule verdicts, or the rule an *-always answer added) */
    int http;           /* the deciding allow rule marks the port as HTTP */
    uint64_t prompt_id; /* the prompt that decided, or 0 */
} nb_gate_verdict_t;

/* A pending prompt as shown to the user. Strings are NUL-terminated and
 * safe to print: `host` is nb_rules_display_name() of the destination
 * (printable ASCII, escaped, cut from the front past NB_GATE_DISPLAY_MAX). */
typedef struct {
    uint64_t id;              /* > 0, unique per gate */
    char vm[NB_RULES_VM_MAX]; /* "" when no VM (should not happen in practice) */
    char host[NB_GATE_DISPLAY_MAX];
    int is_ip; /* the destination is an IP literal */
    uint16_t port;
    int64_t created_ms;  /* wall clock, ms since the epoch */
    int64_t deadline_ms; /* wall clock; the prompt denies at this time */
    unsigned waiters;    /* connections waiting on it */
    char kind[8];        /* "" for a destination; "mcp" for nb_gate_ask (a tool call) */
} nb_gate_prompt_info_t;

/* Hooks for the API layer (events, audit); all optional. Borrowed data is
 * valid for the call only. */
typedef struct {
    /* A new prompt is pending. */
    void (*on_prompt_created)(void *ud, const nb_gate_prompt_info_t *p);
    /* A prompt is gone: answered (`why` is NB_GATE_WHY_ALLOW_ONCE ...
     * DENY_ALWAYS), timed out, re-judged by a new rule (ALLOW_RULE /
     * DENY_RULE), or cancelled by shutdown. `allowed` is the outcome. */
    void (*on_prompt_resolved)(void *ud, const nb_gate_prompt_info_t *p, int allowed, int why);
    /* A pending prompt's waiter count changed: a connection joined it, or
     * one left (nb_gate_cancel: its client went away). A prompt with no
     * waiters left stays pending and still takes an answer. */
    void (*on_prompt_waiters)(void *ud, const nb_gate_prompt_info_t *p);
    /* An allow-always/deny-always answer added this rule (r->id is 0 until
     * it is stored; on_rule_stored follows with the id when a store is set). */
    void (*on_rule_added)(void *ud, const nb_rule_t *r);
    /* The rule from an *-always answer was persisted (id set) or could not
     * be (r < 0; the rule stays in memory for this daemon's lifetime). */
    void (*on_rule_stored)(void *ud, const nb_rule_t *rule, int r);
    void *ud;
} nb_gate_hooks_t;

typedef struct {
    uint64_t prompt_timeout_ms; /* 0: NB_GATE_PROMPT_TIMEOUT_MS */
    size_t max_prompts;         /* 0: NB_GATE_MAX_PROMPTS */
    size_t max_prompts_per_vm;  /* 0: NB_GATE_MAX_PROMPTS_PER_VM */
    int no_prompt;              /* 1: destinations without a rule are denied at once */
    /* Where *-always answers are persisted (nb_rules_db_add on the thread
     * pool); NULL keeps them in memory only. Borrowed; must outlive the gate. */
    nb_store_t *store;
    nb_blocklist_fn blocklist; /* NULL for none; see nb_gate_set_blocklist() */
    void *blocklist_ctx;
    nb_gate_hooks_t hooks;
} nb_gate_cfg_t;

/* Fills `cfg` with the defaults (zeroes; store and hooks NULL). */
void nb_gate_cfg_default(nb_gate_cfg_t *cfg);

/* Creates a gate on `loop` with an empty ruleset. `cfg` is copied (NULL:
 * defaults). 0 or -ENOMEM. */
int nb_gate_new(uv_loop_t *loop, const nb_gate_cfg_t *cfg, nb_gate_t **out);

/* Denies every pending prompt (NB_GATE_WHY_SHUTDOWN: waiters' callbacks
 * run, on_prompt_resolved runs), then frees the gate once its timers are
 * closed. Rule writes already queued on the thread pool finish on their
 * own. NULL is a no-op. */
void nb_gate_free(nb_gate_t *g);

/* ---- rules (the in-memory copy; persistence is the caller's, except for
 * *-always answers) ---- */

/* The current ruleset (borrowed; valid until the next rule change). */
const nb_ruleset_t *nb_gate_rules(const nb_gate_t *g);

/* Loads every stored rule (nb_rules_db_load) from `db` into the ruleset,
 * replacing it. Blocking: call at daemon start, before serving. */
int nb_gate_load_rules(nb_gate_t *g, sqlite3 *db);

/* Adds a copy of `r` (already stored, or memory-only) and re-judges the
 * pending prompts. 0 or -ENOMEM. */
int nb_gate_rule_added(nb_gate_t *g, const nb_rule_t *r);

/* Removes rule `id` from memory. 0 or NB_ENOTFOUND. New connections and
 * every later request on an open one are judged without the rule; raw
 * tunnels it admitted are closed by the proxy's watcher. */
int nb_gate_rule_removed(nb_gate_t *g, int64_t id);

/* Sets (or replaces, or with fn NULL removes) the blocklist hook and
 * treats it as a policy change: new generation, watchers run, pending
 * prompts re-judged. Call it again after the hook's list changed. */
void nb_gate_set_blocklist(nb_gate_t *g, nb_blocklist_fn fn, void *ctx);

/* ---- policy changes (open connections follow them) ---- */

/* A counter bumped on every ruleset change (load, add, remove, *-always
 * answer). A connection remembers the generation its destination was last
 * judged at: while it is unchanged, nothing needs judging again, so an
 * unchanged policy costs one comparison per request. */
uint64_t nb_gate_generation(const nb_gate_t *g);

/* Called (loop thread, synchronously) after every ruleset change, before
 * pending prompts are re-judged. It must not change rules itself. */
typedef void (*nb_gate_change_fn)(void *ud);

/* Registers a watcher; returns its handle (0 on allocation failure). */
uint64_t nb_gate_watch(nb_gate_t *g, nb_gate_change_fn fn, void *ud);
/* Unregisters it; an unknown handle is a no-op. */
void nb_gate_unwatch(nb_gate_t *g, uint64_t handle);

/* The verdict of the rules (and blocklist) alone, never a prompt: 1 with
 * *v filled when they decide, 0 when no rule does (v->why is
 * NB_GATE_WHY_NO_PROMPT, allowed 0). For re-judging open connections. */
int nb_gate_rules_verdict(const nb_gate_t *g, const nb_dest_t *d, nb_gate_verdict_t *v);

/* 1 when an explicit IP/CIDR allow rule lets an upstream connection of
 * `vm` reach internal address `addr` on `port` (A13; see rules.h). */
int nb_gate_addr_allowed(const nb_gate_t *g, const char *vm, const nb_ipaddr_t *addr,
                         uint16_t port);

/* ---- judging ---- */

typedef struct nb_gate_wait nb_gate_wait_t;

/* Called once with the verdict of a destination that had to wait on a
 * prompt. `v` is borrowed for the call. */
typedef void (*nb_gate_done_fn)(void *ud, const nb_gate_verdict_t *v);

/* Judges `d`. Returns 1 with *v filled when the rules decide at once (or
 * when the gate denies at once: overload, no_prompt, allocation failure);
 * returns 0 when the destination waits on a prompt: `done(ud, verdict)`
 * will be called exactly once later, unless nb_gate_cancel(*wait) runs
 * first. `wait` receives the handle (NULL when the function returned 1).
 * Never fails otherwise. */
int nb_gate_check(nb_gate_t *g, const nb_dest_t *d, nb_gate_verdict_t *v, nb_gate_done_fn done,
                  void *ud, nb_gate_wait_t **wait);

/* Asks the user about something that is not a destination (an MCP tool
 * call): a prompt of `kind` (< 8 bytes, e.g. "mcp") for `vm` whose display
 * "host" is `subject` (escaped and cut like a name), port 0. No rule is
 * consulted, and none is added: an *-always answer resolves with why
 * NB_GATE_WHY_ALLOW_ALWAYS / DENY_ALWAYS and the caller persists what it
 * means. Asks for the same vm, kind and subject share one prompt; the
 * caps, deadline, cancel and shutdown behave as for nb_gate_check. Returns
 * 1 with *v when denied at once (overload, shutdown, error), else 0: done
 * runs later, once. */
int nb_gate_ask(nb_gate_t *g, const char *vm, const char *kind, const char *subject,
                nb_gate_verdict_t *v, nb_gate_done_fn done, void *ud, nb_gate_wait_t **wait);

/* Withdraws a waiting connection (it closed): its callback will not run
 * and `w` is freed. The prompt itself stays pending until it is answered
 * or times out, even with no waiters left: a client that retries joins it
 * again, and an *-always answer still adds its rule. NULL is a no-op. */
void nb_gate_cancel(nb_gate_wait_t *w);

/* ---- prompts (for the API) ---- */

/* Copies up to `max` pending prompts, oldest first, into `out`; returns
 * how many are pending in all (may exceed max). */
size_t nb_gate_prompts(const nb_gate_t *g, nb_gate_prompt_info_t *out, size_t max);

/* Looks one pending prompt up. 0 or NB_ENOTFOUND. */
int nb_gate_prompt_get(const nb_gate_t *g, uint64_t id, nb_gate_prompt_info_t *out);

/* Answers prompt `id`: wakes its waiters (their callbacks run before this
 * returns) and, for *-always, adds (and persists) the rule. 0,
 * NB_ENOTFOUND (no such pending prompt: answered, timed out or never
 * existed) or NB_EINVAL (bad answer). */
int nb_gate_answer(nb_gate_t *g, uint64_t id, int answer);

/* "allow-once", "allow-always", "deny-once", "deny-always" <-> the enum;
 * parse returns 0 for anything else, name returns "" for a bad value. */
int nb_gate_answer_parse(const char *s);
const char *nb_gate_answer_name(int answer);

/* Short stable token for a reason ("deny-rule", "blocklist", "allow-rule",
 * "allow-once", "allow-always", "deny-once", "deny-always",
 * "prompt-timeout", "too-many-prompts", "shutdown", "internal-error",
 * "no-rule"). Never NULL. */
const char *nb_gate_why_name(int why);

/* The API/event shape of a prompt: {"id", "vm", "host", "is_ip", "port",
 * "created", "deadline" (RFC 3339 ms), "timeout_s", "waiters"}. New
 * reference, or NULL on allocation failure. */
json_t *nb_gate_prompt_json(const nb_gate_prompt_info_t *p);

/* Counters for /v1/status and tests. */
typedef struct {
    uint64_t checks, allowed, denied, prompts_created, prompts_timed_out, prompts_answered;
    size_t pending;
} nb_gate_stats_t;
void nb_gate_stats(const nb_gate_t *g, nb_gate_stats_t *st);

#endif
