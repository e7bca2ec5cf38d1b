/* The audit log (DESIGN.md section 6 step 9, THREATS.md A23): persistent,
 * append-only, chained rows in the `audit` table of state.db.
 * See docs/internals/audit.md.
 *
 * Every row: seq (without gaps, from 1 or from the end of a pruned
 * prefix), time_ms, kind, vm, host, port, detail (a JSON object),
 * prev_hash, hash and mac (the scheme of hash):
 *     mac 1 (keyed):   hash = BLAKE2b-256[K](prev || "nilbox.audit.v2\0" || row)
 *     mac 0 (unkeyed): hash = SHA-256(prev || "nilbox.audit.v1\0" || row)
 * K is derived from the secret store's data key (nb_secrets_audit_key), so
 * writing a valid keyed row needs the master key. Rows appended before
 * the store is unlocked (and rows of logs older than the keyed chain) are
 * unkeyed; the next keyed row commits them through its prev_hash. The
 * head (seq, hash), MACed with K, is also kept outside the database in
 * `audit.head` beside state.db, rewritten atomically after each batch, so
 * cutting the newest rows or rewriting the chain is detected. SQL
 * triggers refuse UPDATE, DELETE (except of a prefix a keyed
 * "audit.pruned" checkpoint row covers) and any INSERT that does not
 * extend the chain; an attacker who drops them is found by
 * nb_audit_verify_db_keyed().
 *
 * Volume: repeated traffic rows (leak, refusal, gate.decision, inject,
 * limit, dns.blocked) with the same vm, kind, host, port and detail within
 * NB_AUDIT_AGG_WINDOW_MS become one row plus one row carrying
 * "_repeated": N; such rows are capped per VM per minute (the excess is
 * counted in one "audit.suppressed" row); retention (max rows / max days)
 * prunes the oldest rows behind a keyed "audit.pruned" checkpoint.
 *
 * Rows never carry secret values: callers pass names only. The module
 * enforces it: detail keys that name a value ("value", "password", ...)
 * are refused, a "secret"/"secrets" field must hold secret names, and a
 * guard installed by the secret service (nb_audit_set_guard) sees every
 * string; a string it flags is replaced by "[redacted]" before hashing and
 * the row says so ("_redacted": [fields]).
 *
 * Threading: the object belongs to the loop thread. Appends hash the row
 * on the loop (cheap) and queue it; the rows are written in batches, one
 * transaction per batch, by one job at a time on the thread pool (through
 * nb_store_queue). Queries, verification and exports run as jobs of the
 * same chain, after the rows appended before them are written, so a reader
 * always sees its own writes. */
#ifndef NB_AUDIT_H
#define NB_AUDIT_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/base/store.h"

/* (events.h is not included: store.c includes this header for the
 * migration and must not depend on the HTTP library.) */
typedef struct nb_events nb_events_t;

/* The schema, as one migration step of store.c (a macro so that the store
 * library needs no link dependency on this module). */
#define NB_AUDIT_MIGRATION_SQL                                                                     \
    "CREATE TABLE audit (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL,"                       \
    "  kind TEXT NOT NULL, vm TEXT NOT NULL DEFAULT '', host TEXT NOT NULL DEFAULT '',"            \
    "  port INTEGER NOT NULL DEFAULT 0 CHECK (port BETWEEN 0 AND 65535),"                          \
    "  detail TEXT NOT NULL CHECK (json_valid(detail)),"                                           \
    "  prev_hash TEXT NOT NULL, hash TEXT NOT NULL) STRICT;"                                       \
    "CREATE INDEX audit_kind_seq ON audit (kind, seq);"                                            \
    "CREATE INDEX audit_vm_seq ON audit (vm, seq);"                                                \
    "CREATE INDEX audit_time ON audit (time_ms);"                                                  \
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit"                                        \
    "  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"                            \
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit"                                        \
    "  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"                            \
    "CREATE TRIGGER audit_extend_chain BEFORE INSERT ON audit"                                     \
    "  WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM audit)"                          \
    "    OR NEW.prev_hash IS NOT coalesce((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1),"     \
    "       '" NB_AUDIT_ZERO_HASH "')"                                                             \
    "  BEGIN SELECT RAISE(ABORT, 'audit rows must extend the hash chain'); END;"

#define NB_AUDIT_ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

/* Kinds written by the daemon (docs/internals/audit.md has the details of
 * each). Any [a-z0-9._-]{1,32} string is accepted. */
#define NB_AUDIT_GATE "gate.decision" /* allow/deny/prompt outcome for a destination */
#define NB_AUDIT_INJECT "inject"      /* a secret (name) injected into a request */
#define NB_AUDIT_LEAK "leak"          /* a placeholder seen where it must not go (A3 A4 A7 A9) */
#define NB_AUDIT_REFUSAL "refusal"    /* a request refused (A1 A8 A13 A15 ...) */
#define NB_AUDIT_LIMIT "limit"        /* a usage limit warned or blocked */
#define NB_AUDIT_VM "vm.lifecycle"    /* vm.* events */
#define NB_AUDIT_DAEMON "daemon.lifecycle" /* daemon.started / daemon.stopping */
#define NB_AUDIT_SECRET_SET "secret.set"
#define NB_AUDIT_SECRET_RM "secret.rm"
#define NB_AUDIT_SECRET_BIND "secret.bind"
#define NB_AUDIT_SECRET_UNBIND "secret.unbind"
#define NB_AUDIT_SECRETS_UNLOCK "secrets.unlock" /* master key provider outcome */
#define NB_AUDIT_RULE_ADD "rule.add"
#define NB_AUDIT_RULE_RM "rule.rm"
#define NB_AUDIT_PROMPT_ANSWER "prompt.answer"
#define NB_AUDIT_STORE "store"                 /* an app store install or removal */
#define NB_AUDIT_PRUNED "audit.pruned"         /* retention checkpoint: {"through": seq, ...} */
#define NB_AUDIT_SUPPRESSED "audit.suppressed" /* rows over the per-VM cap, counted */
#define NB_AUDIT_TAMPER "audit.tamper"         /* the head anchor did not match at unlock */

#define NB_AUDIT_KIND_MAX 32
#define NB_AUDIT_FIELD_MAX 512          /* vm and host are cut to this */
#define NB_AUDIT_DETAIL_MAX (16 * 1024) /* serialised detail; bigger is replaced by a note */
#define NB_AUDIT_PENDING_MAX 100000     /* rows waiting for the disk before appends fail */
#define NB_AUDIT_QUERY_MAX 10000        /* rows per query / export page */
#define NB_AUDIT_KEY_BYTES 32
#define NB_AUDIT_HEAD_FILE "audit.head" /* the anchor, beside state.db */

/* Volume limits; defaults below, overridden by the environment of nilboxd
 * (NILBOX_AUDIT_MAX_ROWS, NILBOX_AUDIT_MAX_DAYS, NILBOX_AUDIT_VM_PER_MIN,
 * NILBOX_AUDIT_AGG_WINDOW_MS) or nb_audit_set_limits(). */
#define NB_AUDIT_AGG_WINDOW_MS 10000 /* identical traffic rows merged within */
#define NB_AUDIT_VM_PER_MIN 600      /* traffic rows per VM per minute */
#define NB_AUDIT_MAX_ROWS 1000000    /* retention: rows kept (~300 MB of typical rows) */
#define NB_AUDIT_MAX_DAYS 365        /* retention: age of the oldest row kept */
#define NB_AUDIT_AGG_MAX 4096        /* distinct keys being merged at once */

typedef struct {
    int64_t agg_window_ms; /* 0: no merging */
    int64_t vm_per_min;    /* 0: no cap */
    int64_t max_rows;      /* 0: no row limit */
    int64_t max_days;      /* 0: no age limit */
} nb_audit_limits_t;

typedef struct nb_audit nb_audit_t;

/* Opens the log on `st` (borrowed, must outlive it): reads the chain head
 * (a blocking query, at daemon start) and, when `ev` is not NULL,
 * subscribes to the event bus to record vm.* and daemon.* events. */
int nb_audit_open(uv_loop_t *loop, nb_store_t *st, nb_events_t *ev, nb_audit_t **out);

/* Writes the rows still queued (synchronously: call it when no store job
 * is in flight, i.e. after nb_store_pending() reached 0), unsubscribes,
 * and frees the object once its timer has closed. Callbacks of operations
 * not yet run get UV_ECANCELED. NULL is a no-op. Loop thread. */
void nb_audit_close(nb_audit_t *a);

/* A guard sees each string of a row before it is hashed and returns 1 when
 * the string is (or contains) a secret value. Called on the loop thread;
 * must be cheap. `fn` NULL removes it. */
typedef int (*nb_audit_guard_fn)(void *ud, const char *s, size_t len);
void nb_audit_set_guard(nb_audit_t *a, nb_audit_guard_fn fn, void *ud);

/* Appends a row: `kind` as above; `vm`, `host` may be NULL; `port` 0 for
 * none; `detail` a JSON object or NULL (ownership taken, always). Never
 * pass a secret value: names only. Returns the row's seq (> 0), 0 when a
 * traffic row was merged into an aggregate or suppressed by the cap, or
 * NB_EINVAL (bad kind / detail not an object / a forbidden key),
 * NB_ESTATE (closed), NB_ETOOBIG (the disk has not kept up for
 * NB_AUDIT_PENDING_MAX rows). Loop thread. */
int64_t nb_audit_append(nb_audit_t *a, const char *kind, const char *vm, const char *host, int port,
                        json_t *detail);

/* Sets the chain key (copied into locked memory) from the secret store at
 * unlock; rows appended from now on are keyed, the anchor file is checked
 * against the log (a mismatch appends an "audit.tamper" row) and then kept
 * up to date, and retention runs. The key is set once per process: a
 * different key later is refused (NB_ESTATE). Loop thread. */
int nb_audit_set_key(nb_audit_t *a, const uint8_t key[NB_AUDIT_KEY_BYTES]);

/* Sets the limits (tests; the daemon takes them from the environment at
 * open). */
void nb_audit_set_limits(nb_audit_t *a, const nb_audit_limits_t *l);

/* Merges and cap summaries still open are appended now (normally on a
 * 1 s timer). Loop thread. */
void nb_audit_flush_aggregates(nb_audit_t *a);

/* Runs the retention check now (normally on unlock and then hourly / every
 * 10000 rows). Loop thread. */
void nb_audit_prune_now(nb_audit_t *a);

/* Rows merged into an aggregate and rows suppressed by the cap so far. */
uint64_t nb_audit_merged(const nb_audit_t *a);
uint64_t nb_audit_suppressed(const nb_audit_t *a);

/* Rows written to disk so far in this process. */
uint64_t nb_audit_written(const nb_audit_t *a);
int64_t nb_audit_last_seq(const nb_audit_t *a);

/* --- reading --- */

typedef struct {
    char kind[NB_AUDIT_KIND_MAX + 2]; /* exact, or "prefix*"; "" = any */
    char vm[NB_AUDIT_FIELD_MAX];      /* "" = any */
    int64_t since_ms;                 /* rows with time_ms >= since_ms; 0 = any */
    int64_t after_seq;                /* rows with seq > after_seq */
    int64_t limit;                    /* 1..NB_AUDIT_QUERY_MAX */
    int newest_first;                 /* 1: the newest `limit` rows, newest first */
} nb_audit_filter_t;

/* Fills `f` with "everything, oldest first, 1000 rows". */
void nb_audit_filter_init(nb_audit_filter_t *f);

/* 1 when `kind` is a valid kind filter ([a-z0-9._-]{1,32}, optionally
 * ending in '*'). */
int nb_audit_kind_filter_valid(const char *kind);

/* Parses a time for `since`: milliseconds since the epoch, RFC 3339
 * ("2026-01-02T03:04:05Z", optional .mmm fraction, Z or +hh:mm), a date
 * ("2026-01-02", UTC midnight), or a duration back from `now_ms` ("90s",
 * "15m", "2h", "7d"). 0 or NB_EINVAL. Pure. */
int nb_audit_parse_time(const char *s, int64_t now_ms, int64_t *out_ms);

/* Blocking reads on a database handle (pool thread, tests, tools):
 * rows matching `f` as a JSON array of row objects (see docs/api.md). */
int nb_audit_query_db(sqlite3 *db, const nb_audit_filter_t *f, json_t **rows);

typedef struct {
    int ok;                /* 1: every row links and hashes correctly */
    int64_t rows;          /* rows checked */
    int64_t first_bad_seq; /* 0 when ok */
    char reason[256];      /* what is wrong with first_bad_seq */
    int64_t head_seq;      /* last row (when ok, or the last good row) */
    char head_hash[65];    /* its hash, hex */
    int keyed;             /* 1: keyed rows and the anchor were checked with the key */
    int64_t keyed_rows, unkeyed_rows;
    int64_t first_seq;       /* first row kept (> 1 after pruning) */
    int64_t anchor_seq;      /* head recorded in audit.head; -1 when there is none */
    char anchor[16];         /* "ok", "missing", "none" (no keyed rows yet), "unchecked" */
    int64_t unanchored_rows; /* unkeyed rows after the anchor (written while locked) */
} nb_audit_verify_t;

/* Walks the whole chain in seq order: seq continuity, prev_hash linkage,
 * each row's hash recomputed. Stops at the first broken row. Without a
 * key, keyed rows are only checked for linkage. */
int nb_audit_verify_db(sqlite3 *db, nb_audit_verify_t *res);

/* Same, with the chain key (NULL: as above) and the anchor file
 * (`anchor_path`, NULL: not checked): keyed MACs, the pruning checkpoint
 * in front of the first row, "audit.tamper" rows, and the anchor (its
 * MAC, its seq not past the end, its hash equal to that row's). */
int nb_audit_verify_db_keyed(sqlite3 *db, const uint8_t *key, const char *anchor_path,
                             nb_audit_verify_t *res);

/* Keyed row MAC (scheme 1), hex, like nb_audit_row_hash. */
int nb_audit_row_mac(const uint8_t key[NB_AUDIT_KEY_BYTES], const char *prev_hex, int64_t seq,
                     int64_t time_ms, const char *kind, const char *vm, const char *host, int port,
                     const char *detail, size_t detail_len, char out_hex[65]);

/* The anchor file: "nilbox-audit-head v1 <seq> <hash hex> <mac hex>\n",
 * mac = BLAKE2b-256[K]("nilbox.audit.head.v1\0" || be64(seq) || hash). */
int nb_audit_anchor_write(const char *path, const uint8_t key[NB_AUDIT_KEY_BYTES], int64_t seq,
                          const char *hash_hex);
/* 0 and the fields; NB_ENOTFOUND when absent; NB_EINVAL when malformed;
 * NB_ECRYPTO when its MAC does not verify. */
int nb_audit_anchor_read(const char *path, const uint8_t key[NB_AUDIT_KEY_BYTES], int64_t *seq,
                         char hash_hex[65]);

/* Schema upgrade of the audit table to the keyed chain (column `mac`,
 * the pruning-aware DELETE trigger); idempotent. Run by nb_audit_open. */
int nb_audit_upgrade_db(sqlite3 *db);

/* Row hash as hex (65 bytes with NUL) from its fields; `prev_hex` is the
 * previous row's hash (hex). Exposed for tests and external verifiers. */
int nb_audit_row_hash(const char *prev_hex, int64_t seq, int64_t time_ms, const char *kind,
                      const char *vm, const char *host, int port, const char *detail,
                      size_t detail_len, char out_hex[65]);

/* --- asynchronous reads (loop thread; callbacks on the loop thread) --- */

/* Runs `work` on the thread pool, on the log's own connection, as a job of
 * the chain (after the rows appended before it are written), then `done`
 * on the loop with work's return, or an error when the job failed to run
 * (UV_ECANCELED at close). `key` is the chain key once set, else NULL;
 * `anchor_path` the anchor file. 0, or NB_ESTATE (closed) / -ENOMEM, and
 * then nothing runs. The read side below is built on it. */
typedef int (*nb_audit_job_fn)(sqlite3 *db, const uint8_t *key, const char *anchor_path, void *ud);
typedef void (*nb_audit_done_fn)(void *ud, int status);
int nb_audit_run(nb_audit_t *a, nb_audit_job_fn work, nb_audit_done_fn done, void *ud);

/* `rows` is a new reference (callee decrefs) or NULL with status < 0. */
typedef void (*nb_audit_rows_fn)(void *ud, int status, json_t *rows);
int nb_audit_query(nb_audit_t *a, const nb_audit_filter_t *f, nb_audit_rows_fn cb, void *ud);

/* `res` is borrowed for the call. */
typedef void (*nb_audit_verify_fn)(void *ud, int status, const nb_audit_verify_t *res);
int nb_audit_verify(nb_audit_t *a, nb_audit_verify_fn cb, void *ud);

#endif
