/* Gate rules (DESIGN.md section 6, host side, step 1).
 *
 * A rule allows or denies a destination pattern on a port (or any port),
 * for one VM or globally:
 *   "api.example.com"   exact name
 *   "*.example.com"     any name strictly below example.com: "a.example.com",
 *                       "a.b.example.com", but NOT "example.com" itself (add
 *                       a second rule for the bare name)
 *   "10.1.2.3", "::1"   one IP address
 *   "10.0.0.0/8", "fd00::/8", "[fd00::]/8"   a CIDR range (v4 or v6)
 * optionally followed by ":PORT" (or ":*" for any port); an IPv6 literal
 * takes a port only in brackets ("[::1]:443").
 *
 * Evaluation order for a destination: deny rules -> blocklist hook ->
 * allow rules -> prompt. A name destination is matched only by name rules,
 * an IP destination only by IP rules: a rule for a name never admits the
 * IP it happens to resolve to, and vice versa.
 *
 * The matching functions are pure and allocation-free; a ruleset belongs to
 * one thread (the loop) at a time. The sqlite functions block: call them on
 * the thread pool. */
#ifndef NB_RULES_H
#define NB_RULES_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "lib/hostname.h"

#define NB_RULES_VM_MAX 64
#define NB_RULES_PATTERN_MAX (NB_HOSTNAME_BUFSZ + 2)
#define NB_RULES_NOTE_MAX 256

/* The name a guest uses for the host's loopback services (THREATS.md A14,
 * daemon/portsvc.h). In a rule, the bare name "host" stands for it:
 * "allow host:5432" is "allow host.nilbox.internal:5432". */
#define NB_HOST_SERVICE_NAME "host.nilbox.internal"

typedef enum { NB_RULE_ALLOW = 1, NB_RULE_DENY = 2 } nb_rule_action_t;
typedef enum { NB_RULE_NAME = 1, NB_RULE_SUFFIX = 2, NB_RULE_CIDR = 3 } nb_rule_kind_t;

typedef struct {
    int64_t id; /* row id once stored; 0 before */
    int action; /* nb_rule_action_t */
    int kind;   /* nb_rule_kind_t */
    /* Canonical text: "api.example.com", "*.example.com", "10.0.0.0/8",
     * "fd00::/8" (addresses always with their prefix length). */
    char pattern[NB_RULES_PATTERN_MAX];
    nb_ipaddr_t net;          /* CIDR: network address (host bits cleared) */
    int prefix;               /* CIDR: prefix length */
    uint16_t port;            /* 0 = any port */
    char vm[NB_RULES_VM_MAX]; /* "" = every VM */
    int http;                 /* traffic on this port is HTTP: inspect it */
    int64_t created_at;
    char note[NB_RULES_NOTE_MAX]; /* free text, e.g. "allow-always from prompt" */
} nb_rule_t;

/* The migration for the `egress_rules` table (idempotent). */
extern const char nb_rules_migration_sql[];

/* The columns of `egress_rules` after its id. */
#define NB_RULES_COLUMNS_SQL                                                                       \
    "  action TEXT NOT NULL CHECK (action IN ('allow', 'deny')),"                                  \
    "  dest TEXT NOT NULL,"                                                                        \
    "  port INTEGER NOT NULL DEFAULT 0 CHECK (port BETWEEN 0 AND 65535),"                          \
    "  vm TEXT NOT NULL DEFAULT '',"                                                               \
    "  http INTEGER NOT NULL DEFAULT 0,"                                                           \
    "  note TEXT NOT NULL DEFAULT '',"                                                             \
    "  created_at INTEGER NOT NULL,"                                                               \
    "  UNIQUE (action, dest, port, vm)"

/* Store migration: rule ids are never reused (a removed rule's id must not
 * later name another rule: audit rows, prompts and scripts refer to ids).
 * The table (created by the secret service on first start, so maybe not
 * yet) is rebuilt with AUTOINCREMENT, keeping its rows and their ids. */
#define NB_RULES_AUTOINC_MIGRATION_SQL                                                             \
    "CREATE TABLE IF NOT EXISTS egress_rules (id INTEGER PRIMARY KEY," NB_RULES_COLUMNS_SQL ");"   \
    "CREATE TABLE egress_rules_new (id INTEGER PRIMARY KEY AUTOINCREMENT," NB_RULES_COLUMNS_SQL    \
    ");"                                                                                           \
    "INSERT INTO egress_rules_new (id, action, dest, port, vm, http, note, created_at)"            \
    "  SELECT id, action, dest, port, vm, http, note, created_at FROM egress_rules;"               \
    "DROP TABLE egress_rules;"                                                                     \
    "ALTER TABLE egress_rules_new RENAME TO egress_rules;"

/* Parses a destination spec (syntax above) into r->kind, r->pattern,
 * r->net/prefix and r->port; other fields are left alone. NB_EINVAL for
 * anything else (bad names per nb_hostname_normalize, "*" alone, "*" not
 * at the start, bad prefix lengths, port 0 or > 65535). */
int nb_rule_parse(const char *spec, nb_rule_t *r);

/* 1 when `vm` is a valid VM scope ("" or [A-Za-z0-9._-]{1,63}). */
int nb_rules_vm_valid(const char *vm);

/* A destination being judged. Fill it with nb_dest_set(). */
typedef struct {
    char vm[NB_RULES_VM_MAX];
    int is_ip;
    char name[NB_HOSTNAME_BUFSZ]; /* normalised, when !is_ip */
    nb_ipaddr_t ip;               /* when is_ip */
    uint16_t port;
} nb_dest_t;

/* Normalises `host` (a name or IP literal, len bytes, untrusted) for `vm`
 * (NULL or "" = none) and `port`. NB_EINVAL when host is neither a valid
 * name nor an IP literal, or vm is invalid. */
int nb_dest_set(nb_dest_t *d, const char *vm, const char *host, size_t len, uint16_t port);

/* 1 when rule `r` applies to `d` (scope, port and pattern). The gate uses
 * it through nb_rules_eval; fuzz_rules checks nb_rules_eval against it. */
int nb_rule_match(const nb_rule_t *r, const nb_dest_t *d);

typedef struct {
    nb_rule_t *v;
    size_t n, cap;
} nb_ruleset_t;

#define NB_RULESET_INIT                                                                            \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* Appends a copy of `r`. 0 or -ENOMEM. */
int nb_ruleset_add(nb_ruleset_t *rs, const nb_rule_t *r);
/* Removes the rule with this id. 0 or NB_ENOTFOUND. */
int nb_ruleset_remove(nb_ruleset_t *rs, int64_t id);
void nb_ruleset_free(nb_ruleset_t *rs);

typedef enum { NB_GATE_ALLOW = 1, NB_GATE_DENY = 2, NB_GATE_PROMPT = 3 } nb_gate_decision_t;
typedef enum {
    NB_GATE_R_DENY_RULE = 1,
    NB_GATE_R_BLOCKLIST = 2,
    NB_GATE_R_ALLOW_RULE = 3,
    NB_GATE_R_NO_RULE = 4,
} nb_gate_reason_t;

typedef struct {
    int decision;    /* nb_gate_decision_t */
    int reason;      /* nb_gate_reason_t */
    int64_t rule_id; /* the deciding rule (the most specific match), or 0 */
    int http;        /* the deciding allow rule marks the port as HTTP */
} nb_gate_result_t;

/* Blocklist hook: return 1 to block `d`. Called after deny rules and before
 * allow rules; an exact-name allow rule (nb_rules_exact_allow) overrides
 * it, since the blocklist is a probabilistic filter with false positives
 * and such a rule is the user's word about that one name. Wildcard allow
 * rules do not override it. */
typedef int (*nb_blocklist_fn)(void *ctx, const nb_dest_t *d);

/* Judges `d` against `rs`: deny -> blocklist (bl may be NULL) -> allow ->
 * prompt. Among several matching rules of the deciding action the most
 * specific one is reported: VM-scoped over global, exact name over suffix
 * (longer suffix first) over CIDR (longer prefix first), a port over any
 * port. Never fails. */
void nb_rules_eval(const nb_ruleset_t *rs, const nb_dest_t *d, nb_blocklist_fn bl, void *blctx,
                   nb_gate_result_t *res);

/* The allow rule of kind NB_RULE_NAME for exactly d->name (global or for
 * d->vm) whose port is any, d->port, or any when d->port is 0 (the DNS
 * asks without a port), or NULL. What overrides the blocklist. */
const nb_rule_t *nb_rules_exact_allow(const nb_ruleset_t *rs, const nb_dest_t *d);

/* Classifies addresses an upstream connection must not reach by default
 * (A13): loopback, private, link-local (cloud metadata), CGNAT, the fake-IP
 * range 198.18.0.0/15, multicast, reserved, unspecified, documentation, and
 * IPv6 forms embedding such an IPv4 address (NAT64, 6to4). Returns a short
 * static label ("loopback", "private", ...) or NULL for a public address. */
const char *nb_ip_internal_kind(const nb_ipaddr_t *ip);

/* 1 when an allow CIDR/IP rule for `vm` (or global) explicitly covers
 * `addr` on `port` and no deny rule does: the only way past A13. For an
 * internal address the rule must name its range narrowly: the rule's
 * network must lie inside the internal range that holds `addr` (the most
 * specific one): 127.0.0.0/8 or 127.0.0.1/32 open loopback, 10.0.0.0/8 or
 * narrower private 10.x, 169.254.169.254/32 the metadata address (not
 * 169.254.0.0/16), fd00::/8 ULA. 0.0.0.0/0, ::/0, 0.0.0.0/1 or 10.0.0.0/7
 * cover internal addresses without opening any. Unspecified (0.0.0.0/8,
 * ::) and multicast addresses are never opened: connecting to 0.0.0.0
 * reaches the host itself. */
int nb_rules_addr_allowed(const nb_ruleset_t *rs, const char *vm, const nb_ipaddr_t *addr,
                          uint16_t port);

/* For an allow CIDR rule broader than internal ranges it covers (so that
 * it does not open them, see above), writes a one-line warning naming the
 * range kinds and an example of a narrow rule to `out` (outsz >= 64) and
 * returns its length; 0 (and "") for any other rule. */
size_t nb_rule_broad_warning(const nb_rule_t *r, char *out, size_t outsz);

/* Renders untrusted name bytes for a prompt or log (A16): printable ASCII
 * is kept, '\\' becomes "\\\\", every other byte "\\xNN". When the result
 * does not fit in `outsz` it keeps the END of the name (where the domain
 * that matters is) and prefixes "[N bytes cut]...". Always NUL-terminates
 * (outsz must be >= 64, else the result is ""). Returns `out`. */
char *nb_rules_display_name(const void *p, size_t len, char *out, size_t outsz);

/* ---- persistence (blocking) ---- */

/* Stores `r` (action, pattern, port, vm, http, note; created_at set now)
 * and writes the new id to r->id. NB_EEXIST for a duplicate. */
int nb_rules_db_add(sqlite3 *db, nb_rule_t *r);
/* Deletes rule `id`. NB_ENOTFOUND if absent. */
int nb_rules_db_rm(sqlite3 *db, int64_t id);
/* Loads every rule into `rs` (appending). Rows that no longer parse are
 * skipped with a log line. */
int nb_rules_db_load(sqlite3 *db, nb_ruleset_t *rs);

#endif
