/* The usage ledger: per-request token and cost records in state.db and the
 * spending and rate limits checked before a request is forwarded
 * (docs/internals/usage.md). Loop thread only.
 *
 * Reservation: a request reserves its worst case (input estimated from the
 * body size, plus its output cap) against every limit it falls under
 * before any byte goes upstream; the reservation is replaced by the real
 * count when the response ends or is cut. A request is refused when
 * used + reserved + its worst case would pass a limit, or used + reserved
 * is already at the block threshold (95 %): so concurrent and streaming
 * requests together never spend past a limit. */
#ifndef NB_USAGE_H
#define NB_USAGE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/store.h"
#include "daemon/egress/llmcat.h"

/* Records and limits (re-runnable: IF NOT EXISTS only). Token counts as
 * the provider reported them; `tokens` is what token limits count (input
 * incl. cached and cache writes, plus output); `secret` the comma-joined
 * names of the injected secrets. No prompt or completion text. */
#define NB_USAGE_MIGRATION_SQL                                                                     \
    "CREATE TABLE IF NOT EXISTS usage_records (id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL,"  \
    " vm TEXT NOT NULL DEFAULT '', provider TEXT NOT NULL DEFAULT '', model TEXT NOT NULL"         \
    " DEFAULT '', host TEXT NOT NULL DEFAULT '', secret TEXT NOT NULL DEFAULT '',"                 \
    " input INTEGER NOT NULL DEFAULT 0, output INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT"     \
    " NULL DEFAULT 0, cache_write INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,"  \
    " cost_usd REAL NOT NULL DEFAULT 0, estimated INTEGER NOT NULL DEFAULT 0, status INTEGER"      \
    " NOT NULL DEFAULT 0, request_id TEXT NOT NULL DEFAULT '');"                                   \
    "CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time_ms);"                    \
    "CREATE INDEX IF NOT EXISTS usage_records_vm ON usage_records (vm, time_ms);"                  \
    "CREATE TABLE IF NOT EXISTS usage_limits (id INTEGER PRIMARY KEY AUTOINCREMENT,"               \
    " scope TEXT NOT NULL, who TEXT NOT NULL DEFAULT '', win TEXT NOT NULL, unit TEXT NOT NULL,"   \
    " amount REAL NOT NULL, created_ms INTEGER NOT NULL, UNIQUE (scope, who, win, unit));"

typedef enum { NB_LIM_GLOBAL = 0, NB_LIM_VM, NB_LIM_PROVIDER, NB_LIM_SECRET } nb_lim_scope_t;
typedef enum { NB_LIM_MINUTE = 0, NB_LIM_HOUR, NB_LIM_DAY, NB_LIM_MONTH } nb_lim_window_t;
typedef enum { NB_LIM_TOKENS = 0, NB_LIM_USD, NB_LIM_REQUESTS } nb_lim_unit_t;

#define NB_USAGE_WARN_PCT 80
#define NB_USAGE_BLOCK_PCT 95
#define NB_USAGE_WHO_MAX 64

typedef struct {
    int64_t id;
    int scope;                  /* nb_lim_scope_t */
    char who[NB_USAGE_WHO_MAX]; /* VM, provider or secret name; "" for global */
    int window; /* nb_lim_window_t: minute (rolling, requests only), hour (rolling), day, month
                   (UTC) */
    int unit;   /* nb_lim_unit_t */
    double amount;
} nb_usage_limit_t;

/* Parses the words of a limit ("vm"/"provider"/"secret"/"global",
 * "minute"/"hour"/"day"/"month", "tokens"/"usd"/"requests"); 0 or
 * NB_EINVAL with a sentence. Requests limits need the minute window and
 * the others hour, day or month. */
int nb_usage_limit_parse(const json_t *j, nb_usage_limit_t *out, char *err, size_t errsz);

typedef struct nb_usage nb_usage_t;

typedef struct {
    nb_store_t *store; /* borrowed; records and limits */
    nb_llmcat_t *cat;  /* taken: freed with the ledger */
    /* A usage event for the UI ("usage.record"); `data` is taken. */
    void (*emit)(void *ud, const char *type, json_t *data);
    /* Whether anyone watches "usage.record" live now (NULL: always). At
     * request rate building the event cost more than a quarter of what
     * accounting adds to a request (bench/usage); unwatched, it is not
     * built: the record itself is in the ledger. */
    int (*emit_wanted)(void *ud);
    void *emit_ud;
    int64_t (*now_ms)(void); /* wall clock (tests); NULL: the real one */
    /* Records are written in batches, one transaction per RECORD_FLUSH_MS
     * tick (one autocommit INSERT each cost more CPU than the whole proxy
     * exchange: bench/usage); NULL: each at once. Readers here flush first. */
    uv_loop_t *loop;
} nb_usage_cfg_t;

/* Loads the limits and what each has used in its window. 0 or a negative
 * code (*out NULL). */
int nb_usage_new(const nb_usage_cfg_t *cfg, nb_usage_t **out);
void nb_usage_free(nb_usage_t *u); /* outstanding reservations go with it */
const nb_llmcat_t *nb_usage_catalogue(const nb_usage_t *u);

/* Adds or replaces (same scope, who, window, unit) a limit; *id gets its
 * id. 0 or a negative code. */
int nb_usage_limit_set(nb_usage_t *u, const nb_usage_limit_t *l, int64_t *id);
/* 0 or NB_ENOTFOUND. */
int nb_usage_limit_rm(nb_usage_t *u, int64_t id);
/* [{id, scope, who, window, unit, amount, used, reserved, percent, resets_at}] */
json_t *nb_usage_limits_json(nb_usage_t *u);
/* {"by": ..., "rows": [{key, requests, input, output, cached, tokens, cost_usd,
 * estimated}], "total": {...}}: records since `since_ms`, of `vm` when not
 * NULL, grouped by "provider", "model", "vm" or "day". */
json_t *nb_usage_summary(nb_usage_t *u, const char *vm, const char *by, int64_t since_ms);
/* The newest `n` records (of `vm` when not NULL). */
json_t *nb_usage_records(nb_usage_t *u, const char *vm, int n);

/* ---- one request ---- */

#define NB_USAGE_SECRETS 4

typedef struct {
    const char *vm;
    const nb_llm_match_t *m;
    const char *model;                     /* from the request (or the path); may be "" */
    const char *secrets[NB_USAGE_SECRETS]; /* injected secret names */
    size_t nsecrets;
    int64_t in_bytes; /* request body size: the input estimate's bound */
    int64_t max_out;  /* the request's output cap, 0: the model's or provider's */
} nb_usage_ask_t;

/* Why a request was refused (nb_usage_reserve). */
typedef struct {
    nb_usage_limit_t limit;
    double used, reserved;
    int64_t resets_at_ms;
    int64_t retry_after_s; /* rate limits */
    int rate;              /* a requests-per-minute limit */
} nb_usage_denial_t;

typedef struct nb_usage_req nb_usage_req_t;

/* Reserves the request's worst case against every limit it falls under.
 * 0 and *out (settle it exactly once), or NB_EDENIED with *deny filled,
 * or -ENOMEM. `warn` gets a short text when a limit crossed the warning
 * threshold with this request (once per limit and window), else "". */
int nb_usage_reserve(nb_usage_t *u, const nb_usage_ask_t *ask, nb_usage_req_t **out,
                     nb_usage_denial_t *deny, char *warn, size_t warnsz, json_t **warn_detail);

typedef struct {
    int64_t input, output, cached, cache_write; /* -1: unknown */
    const char *model;                          /* as the response named it, or NULL */
    const char *request_id;                     /* the provider's, or NULL */
    const char *host;
    int64_t out_bytes; /* decoded response bytes (the estimate when counts are missing) */
    int status;        /* HTTP status, 0: cut before a response */
} nb_usage_result_t;

/* Replaces the reservation with the real (or estimated) count, writes the
 * record, emits "usage.record", frees `r`. NULL is a no-op. */
void nb_usage_settle(nb_usage_t *u, nb_usage_req_t *r, const nb_usage_result_t *res);
/* Frees `r` without settling (the ledger is gone). NULL is a no-op. */
void nb_usage_req_free(nb_usage_req_t *r);

#endif
