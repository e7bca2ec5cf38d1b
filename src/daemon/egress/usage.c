/* The usage ledger (usage.h): limits with windows, reservations, records. */
#include "daemon/egress/usage.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/log.h"

#define SLOTS 60 /* per-minute buckets of the rolling hour, per-second of the rolling minute */

typedef struct lim {
    nb_usage_limit_t def;
    double used;       /* day / month: settled in the current window */
    int64_t win_start; /* day / month: the window's start (ms) */
    double slot[SLOTS];
    int64_t slot_at[SLOTS]; /* the minute (hour) or second (minute) each slot holds */
    double reserved;
    int warned; /* the warning fired in this window */
    struct lim *next;
} lim_t;

#define RECORD_FLUSH_MS 50
#define RECORD_BATCH 512 /* flush at once past this many */

/* A settled record waiting for the next batch. */
typedef struct rec {
    int64_t t, in, out, cached, cw, tokens;
    double cost;
    int estimated, status;
    char vm[NB_USAGE_WHO_MAX], provider[32], model[NB_LLM_MODEL_MAX], host[256];
    char secrets[NB_USAGE_SECRETS * NB_USAGE_WHO_MAX + 8], rid[64];
    struct rec *next;
} rec_t;

struct nb_usage {
    nb_usage_cfg_t cfg;
    lim_t *lims;
    uint64_t seq; /* request ids we make up when the provider gives none */
    rec_t *q, **qtail;
    size_t nq;
    uv_timer_t *timer; /* allocated: it outlives the ledger until its close callback */
    sqlite3_stmt *ins; /* the INSERT, prepared once */
};

/* Writes the queued records in one transaction (or inside the caller's,
 * when one is open on the shared connection). */
static void flush(nb_usage_t *u)
{
    sqlite3 *db = u->cfg.store ? nb_store_db(u->cfg.store) : NULL;
    if (!u->q)
        return;
    if (db && !u->ins &&
        sqlite3_prepare_v3(db,
                           "INSERT INTO usage_records (time_ms, vm, provider, model, host, "
                           "secret, input, output, cached, cache_write, tokens, cost_usd, "
                           "estimated, status, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
                           "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                           -1, SQLITE_PREPARE_PERSISTENT, &u->ins, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_WARN, "usage: cannot record: %s", sqlite3_errmsg(db));
        u->ins = NULL;
    }
    int txn = db && u->ins && nb_store_batch_begin(db);
    while (u->q) {
        rec_t *x = u->q;
        u->q = x->next;
        sqlite3_stmt *st = u->ins;
        if (st) {
            sqlite3_bind_int64(st, 1, x->t);
            sqlite3_bind_text(st, 2, x->vm, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, x->provider, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, x->model, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 5, x->host, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 6, x->secrets, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 7, x->in);
            sqlite3_bind_int64(st, 8, x->out);
            sqlite3_bind_int64(st, 9, x->cached);
            sqlite3_bind_int64(st, 10, x->cw);
            sqlite3_bind_int64(st, 11, x->tokens);
            sqlite3_bind_double(st, 12, x->cost);
            sqlite3_bind_int(st, 13, x->estimated);
            sqlite3_bind_int(st, 14, x->status);
            sqlite3_bind_text(st, 15, x->rid, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE)
                nb_log(NB_LOG_WARN, "usage: cannot record: %s", sqlite3_errmsg(db));
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
        }
        free(x);
    }
    u->qtail = &u->q;
    u->nq = 0;
    nb_store_batch_end(db, txn, NB_LOG_WARN, "usage: cannot record");
}

static void on_flush(uv_timer_t *t)
{
    flush(t->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

typedef struct {
    int64_t id;
    double amount;
} hold_t;

#define HOLDS_MAX 32

struct nb_usage_req {
    char vm[NB_USAGE_WHO_MAX], provider[32], model[NB_LLM_MODEL_MAX];
    char secrets[NB_USAGE_SECRETS][NB_USAGE_WHO_MAX];
    size_t nsecrets;
    const nb_llm_provider_t *prov;
    const nb_llm_api_t *api;
    int64_t in_bytes;
    hold_t holds[HOLDS_MAX];
    size_t nholds;
};

static const char *const scope_names[] = {"global", "vm", "provider", "secret"};
static const char *const window_names[] = {"minute", "hour", "day", "month"};
static const char *const unit_names[] = {"tokens", "usd", "requests"};

static int64_t now_ms(const nb_usage_t *u)
{
    if (u->cfg.now_ms)
        return u->cfg.now_ms();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int word(const char *s, const char *const *names, int n)
{
    for (int i = 0; s && i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

int nb_usage_limit_parse(const json_t *j, nb_usage_limit_t *out, char *err, size_t errsz)
{
    memset(out, 0, sizeof *out);
    const char *who = json_string_value(json_object_get(j, "who"));
    out->scope = word(json_string_value(json_object_get(j, "scope")), scope_names, 4);
    out->window = word(json_string_value(json_object_get(j, "window")), window_names, 4);
    out->unit = word(json_string_value(json_object_get(j, "unit")), unit_names, 3);
    const json_t *a = json_object_get(j, "amount");
    out->amount = json_is_number(a) ? json_number_value(a) : -1;
    if (out->scope < 0 || out->window < 0 || out->unit < 0) {
        snprintf(err, errsz,
                 "a limit needs scope (global, vm, provider, secret), window "
                 "(minute, hour, day, month) and unit (tokens, usd, requests)");
        return NB_EINVAL;
    }
    if (!(out->amount > 0) || out->amount > 1e15 || !isfinite(out->amount)) {
        snprintf(err, errsz, "amount must be a positive number");
        return NB_EINVAL;
    }
    if ((out->unit == NB_LIM_REQUESTS) != (out->window == NB_LIM_MINUTE)) {
        snprintf(err, errsz,
                 "requests limits are per minute; tokens and usd limits per hour, "
                 "day or month");
        return NB_EINVAL;
    }
    if (out->scope == NB_LIM_GLOBAL) {
        if (who && *who) {
            snprintf(err, errsz, "a global limit names no one");
            return NB_EINVAL;
        }
    } else if (!who || !*who || strlen(who) >= sizeof out->who) {
        snprintf(err, errsz, "a %s limit needs who (the %s name, at most %zu bytes)",
                 scope_names[out->scope], scope_names[out->scope], sizeof out->who - 1);
        return NB_EINVAL;
    } else {
        memcpy(out->who, who, strlen(who) + 1);
    }
    return 0;
}

/* ---- windows ---- */

static int64_t day_start(int64_t t)
{
    return t - t % 86400000;
}

static int64_t month_start(int64_t t, int next)
{
    time_t s = (time_t)(t / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    if (next && ++tm.tm_mon == 12) {
        tm.tm_mon = 0;
        tm.tm_year++;
    }
    return (int64_t)timegm(&tm) * 1000;
}

static int64_t slot_unit(const lim_t *l)
{
    return l->def.window == NB_LIM_HOUR ? 60000 : 1000;
}

/* Brings a calendar window up to date. */
static void roll(lim_t *l, int64_t t)
{
    int64_t ws = l->def.window == NB_LIM_DAY     ? day_start(t)
                 : l->def.window == NB_LIM_MONTH ? month_start(t, 0)
                                                 : 0;
    if (ws && ws != l->win_start) {
        l->win_start = ws;
        l->used = 0;
        l->warned = 0;
    }
}

static double used(lim_t *l, int64_t t)
{
    roll(l, t);
    if (l->def.window == NB_LIM_DAY || l->def.window == NB_LIM_MONTH)
        return l->used;
    int64_t now = t / slot_unit(l);
    double s = 0;
    for (int i = 0; i < SLOTS; i++)
        if (l->slot_at[i] > now - SLOTS && l->slot_at[i] <= now)
            s += l->slot[i];
    return s;
}

static void add(lim_t *l, double v, int64_t t)
{
    roll(l, t);
    if (l->def.window == NB_LIM_DAY || l->def.window == NB_LIM_MONTH) {
        l->used += v;
        return;
    }
    int64_t at = t / slot_unit(l);
    int i = (int)(at % SLOTS);
    if (l->slot_at[i] != at) {
        l->slot_at[i] = at;
        l->slot[i] = 0;
    }
    l->slot[i] += v;
}

static int64_t resets_at(lim_t *l, int64_t t)
{
    if (l->def.window == NB_LIM_DAY)
        return day_start(t) + 86400000;
    if (l->def.window == NB_LIM_MONTH)
        return month_start(t, 1);
    /* Rolling: when the oldest slot still counted leaves the window. */
    int64_t now = t / slot_unit(l), oldest = now;
    for (int i = 0; i < SLOTS; i++)
        if (l->slot_at[i] > now - SLOTS && l->slot_at[i] <= now && l->slot[i] > 0 &&
            l->slot_at[i] < oldest)
            oldest = l->slot_at[i];
    return (oldest + SLOTS) * slot_unit(l);
}

/* ---- loading what a limit used (records in state.db) ---- */

static const char *amount_col(const lim_t *l)
{
    return l->def.unit == NB_LIM_USD ? "cost_usd" : l->def.unit == NB_LIM_TOKENS ? "tokens" : "1";
}

static void load_used(nb_usage_t *u, lim_t *l)
{
    flush(u);
    sqlite3 *db = u->cfg.store ? nb_store_db(u->cfg.store) : NULL;
    int64_t t = now_ms(u);
    roll(l, t);
    if (!db)
        return;
    int64_t since = l->def.window == NB_LIM_DAY || l->def.window == NB_LIM_MONTH
                        ? l->win_start
                        : (t / slot_unit(l) - SLOTS + 1) * slot_unit(l);
    static const char *const where[] = {"1", "vm = ?2", "provider = ?2",
                                        "instr(',' || secret || ',', ',' || ?2 || ',') > 0"};
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT time_ms / %lld, sum(%s) FROM usage_records WHERE time_ms >= ?1 AND %s "
             "GROUP BY 1",
             (long long)slot_unit(l), amount_col(l), where[l->def.scope]);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_WARN, "usage: %s", sqlite3_errmsg(db));
        return;
    }
    sqlite3_bind_int64(st, 1, since);
    if (l->def.scope != NB_LIM_GLOBAL)
        sqlite3_bind_text(st, 2, l->def.who, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW)
        add(l, sqlite3_column_double(st, 1), sqlite3_column_int64(st, 0) * slot_unit(l));
    sqlite3_finalize(st);
}

int nb_usage_new(const nb_usage_cfg_t *cfg, nb_usage_t **out)
{
    *out = NULL;
    nb_usage_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->cfg = *cfg;
    u->qtail = &u->q;
    if (cfg->loop) {
        if (!(u->timer = calloc(1, sizeof *u->timer))) {
            free(u);
            return -ENOMEM;
        }
        uv_timer_init(cfg->loop, u->timer);
        u->timer->data = u;
    }
    sqlite3 *db = cfg->store ? nb_store_db(cfg->store) : NULL;
    sqlite3_stmt *st = NULL;
    if (db && sqlite3_prepare_v2(db,
                                 "SELECT id, scope, who, win, unit, amount FROM usage_limits "
                                 "ORDER BY id DESC",
                                 -1, &st, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "usage: %s", sqlite3_errmsg(db));
        nb_usage_free(u);
        return NB_EINTERNAL;
    }
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        json_t *j = json_pack(
            "{s:s?, s:s?, s:s?, s:s?, s:f}", "scope", (const char *)sqlite3_column_text(st, 1),
            "who", (const char *)sqlite3_column_text(st, 2), "window",
            (const char *)sqlite3_column_text(st, 3), "unit",
            (const char *)sqlite3_column_text(st, 4), "amount", sqlite3_column_double(st, 5));
        char err[160];
        lim_t *l = calloc(1, sizeof *l);
        if (!l || !j || nb_usage_limit_parse(j, &l->def, err, sizeof err) < 0) {
            free(l);
            json_decref(j);
            continue;
        }
        json_decref(j);
        l->def.id = sqlite3_column_int64(st, 0);
        l->next = u->lims;
        u->lims = l;
        load_used(u, l);
    }
    sqlite3_finalize(st);
    *out = u;
    return 0;
}

void nb_usage_free(nb_usage_t *u)
{
    if (!u)
        return;
    flush(u);
    sqlite3_finalize(u->ins);
    if (u->timer) {
        uv_timer_stop(u->timer);
        uv_close((uv_handle_t *)u->timer, on_timer_closed);
    }
    while (u->lims) {
        lim_t *l = u->lims;
        u->lims = l->next;
        free(l);
    }
    nb_llmcat_free(u->cfg.cat);
    free(u);
}

const nb_llmcat_t *nb_usage_catalogue(const nb_usage_t *u)
{
    return u->cfg.cat;
}

int nb_usage_limit_set(nb_usage_t *u, const nb_usage_limit_t *def, int64_t *id)
{
    *id = 0;
    sqlite3 *db = u->cfg.store ? nb_store_db(u->cfg.store) : NULL;
    lim_t *l = NULL;
    for (lim_t *k = u->lims; k; k = k->next)
        if (k->def.scope == def->scope && k->def.window == def->window &&
            k->def.unit == def->unit && strcmp(k->def.who, def->who) == 0)
            l = k;
    int64_t nid = l ? l->def.id : 0;
    if (db) {
        sqlite3_stmt *st = NULL;
        int ok = sqlite3_prepare_v2(db,
                                    "INSERT INTO usage_limits (scope, who, win, unit, amount, "
                                    "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT "
                                    "(scope, who, win, unit) DO UPDATE SET amount = ?5 "
                                    "RETURNING id",
                                    -1, &st, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(st, 1, scope_names[def->scope], -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, def->who, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, window_names[def->window], -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, unit_names[def->unit], -1, SQLITE_STATIC);
            sqlite3_bind_double(st, 5, def->amount);
            sqlite3_bind_int64(st, 6, now_ms(u));
            ok = sqlite3_step(st) == SQLITE_ROW;
            if (ok)
                nid = sqlite3_column_int64(st, 0);
        }
        if (!ok)
            nb_log(NB_LOG_ERR, "usage: %s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
        if (!ok)
            return NB_EINTERNAL;
    } else if (!l) {
        nid = (int64_t)++u->seq;
    }
    if (!l) {
        if (!(l = calloc(1, sizeof *l)))
            return -ENOMEM;
        l->def = *def;
        l->def.id = nid;
        l->next = u->lims;
        u->lims = l;
        load_used(u, l);
    }
    l->def.amount = def->amount;
    l->warned = 0;
    *id = nid;
    return 0;
}

int nb_usage_limit_rm(nb_usage_t *u, int64_t id)
{
    for (lim_t **p = &u->lims; *p; p = &(*p)->next) {
        if ((*p)->def.id != id)
            continue;
        lim_t *l = *p;
        *p = l->next;
        free(l);
        if (u->cfg.store) {
            char sql[96];
            snprintf(sql, sizeof sql, "DELETE FROM usage_limits WHERE id = %lld", (long long)id);
            nb_store_exec(u->cfg.store, sql);
        }
        return 0;
    }
    return NB_ENOTFOUND;
}

static json_t *limit_json(const nb_usage_limit_t *d)
{
    return json_pack("{s:I, s:s, s:s, s:s, s:s, s:f}", "id", (json_int_t)d->id, "scope",
                     scope_names[d->scope], "who", d->who, "window", window_names[d->window],
                     "unit", unit_names[d->unit], "amount", d->amount);
}

static json_t *iso_time(int64_t ms)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    char b[32];
    gmtime_r(&s, &tm);
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(b);
}

json_t *nb_usage_limits_json(nb_usage_t *u)
{
    json_t *a = json_array();
    int64_t t = now_ms(u);
    for (lim_t *l = u->lims; a && l; l = l->next) {
        json_t *o = limit_json(&l->def);
        double us = used(l, t);
        json_object_set_new(o, "used", json_real(us));
        json_object_set_new(o, "reserved", json_real(l->reserved));
        json_object_set_new(o, "percent", json_real(100.0 * (us + l->reserved) / l->def.amount));
        json_object_set_new(o, "resets_at", iso_time(resets_at(l, t)));
        json_array_append_new(a, o);
    }
    return a;
}

/* ---- queries ---- */

static json_t *row_json(sqlite3_stmt *st, int first)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:f, s:I}", "requests",
                     (json_int_t)sqlite3_column_int64(st, first), "input",
                     (json_int_t)sqlite3_column_int64(st, first + 1), "output",
                     (json_int_t)sqlite3_column_int64(st, first + 2), "cached",
                     (json_int_t)sqlite3_column_int64(st, first + 3), "tokens",
                     (json_int_t)sqlite3_column_int64(st, first + 4), "cost_usd",
                     sqlite3_column_double(st, first + 5), "estimated",
                     (json_int_t)sqlite3_column_int64(st, first + 6));
}

json_t *nb_usage_summary(nb_usage_t *u, const char *vm, const char *by, int64_t since_ms)
{
    flush(u);
    static const char *const keys[][2] = {{"provider", "provider"},
                                          {"model", "model"},
                                          {"vm", "vm"},
                                          {"day", "strftime('%Y-%m-%d', time_ms / 1000, "
                                                  "'unixepoch')"}};
    const char *key = NULL;
    for (size_t i = 0; i < 4; i++)
        if (strcmp(by ? by : "provider", keys[i][0]) == 0)
            key = keys[i][1];
    sqlite3 *db = u->cfg.store ? nb_store_db(u->cfg.store) : NULL;
    if (!key || !db)
        return NULL;
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT %s, count(*), sum(input), sum(output), sum(cached), sum(tokens), "
             "sum(cost_usd), sum(estimated) FROM usage_records WHERE time_ms >= ?1 AND "
             "(?2 IS NULL OR vm = ?2) GROUP BY 1 ORDER BY 1",
             key);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_int64(st, 1, since_ms);
    if (vm)
        sqlite3_bind_text(st, 2, vm, -1, SQLITE_STATIC);
    json_t *rows = json_array(),
           *tot =
               json_pack("{s:I, s:I, s:I, s:I, s:I, s:f, s:I}", "requests", (json_int_t)0, "input",
                         (json_int_t)0, "output", (json_int_t)0, "cached", (json_int_t)0, "tokens",
                         (json_int_t)0, "cost_usd", 0.0, "estimated", (json_int_t)0);
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *r = row_json(st, 1);
        const char *k = (const char *)sqlite3_column_text(st, 0);
        json_object_set_new(r, "key", json_string(k ? k : ""));
        const char *f;
        json_t *v;
        json_object_foreach (r, f, v) {
            json_t *tv = json_object_get(tot, f);
            if (json_is_integer(tv))
                json_integer_set(tv, json_integer_value(tv) + json_integer_value(v));
            else if (json_is_real(tv))
                json_real_set(tv, json_real_value(tv) + json_real_value(v));
        }
        json_array_append_new(rows, r);
    }
    sqlite3_finalize(st);
    return json_pack("{s:s, s:o, s:o, s:s}", "by", by ? by : "provider", "rows", rows, "total", tot,
                     "prices_as_of", nb_llmcat_prices_as_of(u->cfg.cat));
}

json_t *nb_usage_records(nb_usage_t *u, const char *vm, int n)
{
    flush(u);
    sqlite3 *db = u->cfg.store ? nb_store_db(u->cfg.store) : NULL;
    sqlite3_stmt *st = NULL;
    if (!db || sqlite3_prepare_v2(db,
                                  "SELECT time_ms, vm, provider, model, host, secret, input, "
                                  "output, cached, cache_write, tokens, cost_usd, estimated, "
                                  "status, request_id, id FROM usage_records WHERE (?1 IS NULL OR "
                                  "vm = ?1) ORDER BY id DESC LIMIT ?2",
                                  -1, &st, NULL) != SQLITE_OK)
        return NULL;
    if (vm)
        sqlite3_bind_text(st, 1, vm, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, n > 0 && n <= 10000 ? n : 100);
    json_t *a = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
#define TXT(i) ((const char *)sqlite3_column_text(st, i))
        json_array_append_new(
            a, json_pack("{s:I, s:I, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:b, "
                         "s:i, s:s}",
                         "id", (json_int_t)sqlite3_column_int64(st, 15), "time_ms",
                         (json_int_t)sqlite3_column_int64(st, 0), "vm", TXT(1), "provider", TXT(2),
                         "model", TXT(3), "host", TXT(4), "secret", TXT(5), "input",
                         (json_int_t)sqlite3_column_int64(st, 6), "output",
                         (json_int_t)sqlite3_column_int64(st, 7), "cached",
                         (json_int_t)sqlite3_column_int64(st, 8), "cache_write",
                         (json_int_t)sqlite3_column_int64(st, 9), "tokens",
                         (json_int_t)sqlite3_column_int64(st, 10), "cost_usd",
                         sqlite3_column_double(st, 11), "estimated", sqlite3_column_int(st, 12),
                         "status", sqlite3_column_int(st, 13), "request_id", TXT(14)));
#undef TXT
    }
    sqlite3_finalize(st);
    return a;
}

/* ---- requests ---- */

static int applies(const lim_t *l, const nb_usage_req_t *r)
{
    switch (l->def.scope) {
    case NB_LIM_GLOBAL:
        return 1;
    case NB_LIM_VM:
        return strcmp(l->def.who, r->vm) == 0;
    case NB_LIM_PROVIDER:
        return strcmp(l->def.who, r->provider) == 0;
    default:
        for (size_t i = 0; i < r->nsecrets; i++)
            if (strcmp(l->def.who, r->secrets[i]) == 0)
                return 1;
        return 0;
    }
}

/* The price of a model; an unknown model of a priced provider costs the
 * provider's highest list price, so a made-up model name does not make
 * requests free against a money limit. */
static nb_llm_model_t price_of(const nb_llm_provider_t *p, const char *model, int *known)
{
    nb_llm_model_t z;
    memset(&z, 0, sizeof z);
    const nb_llm_model_t *m = nb_llmcat_model(p, model);
    *known = m != NULL;
    if (m)
        return *m;
    for (size_t i = 0;; i++) {
        const nb_llm_model_t *k = nb_llmcat_model_at(p, i);
        if (!k)
            break;
        z.in = fmax(z.in, k->in);
        z.out = fmax(z.out, k->out);
        z.max_out = k->max_out > z.max_out ? k->max_out : z.max_out;
    }
    z.cached = z.cache_write = z.in;
    return z;
}

static int64_t worst_out(const nb_usage_ask_t *a, const nb_llm_model_t *m, int known)
{
    if (a->m->api->no_output)
        return 0;
    if (a->max_out > 0)
        return a->max_out;
    if (known && m->max_out > 0)
        return m->max_out;
    return a->m->default_max_out;
}

int nb_usage_reserve(nb_usage_t *u, const nb_usage_ask_t *a, nb_usage_req_t **out,
                     nb_usage_denial_t *deny, char *warn, size_t warnsz, json_t **warn_detail)
{
    *out = NULL;
    *warn_detail = NULL;
    warn[0] = '\0';
    memset(deny, 0, sizeof *deny);
    nb_usage_req_t *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    nb_str_copy(r->vm, sizeof r->vm, a->vm ? a->vm : "");
    nb_str_copy(r->provider, sizeof r->provider, a->m->provider);
    nb_str_copy(r->model, sizeof r->model, a->model ? a->model : "");
    for (size_t i = 0; i < a->nsecrets && i < NB_USAGE_SECRETS; i++)
        nb_str_copy(r->secrets[r->nsecrets++], sizeof r->secrets[0], a->secrets[i]);
    r->prov = a->m->prov;
    r->api = a->m->api;
    r->in_bytes = a->in_bytes;
    int known;
    nb_llm_model_t m = price_of(r->prov, r->model, &known);
    /* Worst case: every body byte a token (a text token is at least one
     * byte), plus the output cap. */
    double tok = (double)a->in_bytes + (double)worst_out(a, &m, known);
    double usd = ((double)a->in_bytes * m.in + (double)worst_out(a, &m, known) * m.out) / 1e6;
    int64_t t = now_ms(u);
    for (lim_t *l = u->lims; l; l = l->next) {
        if (!applies(l, r))
            continue;
        double need = l->def.unit == NB_LIM_TOKENS ? tok : l->def.unit == NB_LIM_USD ? usd : 1;
        double have = used(l, t) + l->reserved;
        int over =
            l->def.unit == NB_LIM_REQUESTS
                ? have + 1 > l->def.amount
                : have + need > l->def.amount || have >= l->def.amount * NB_USAGE_BLOCK_PCT / 100.0;
        if (over) {
            deny->limit = l->def;
            deny->used = used(l, t);
            deny->reserved = l->reserved;
            deny->resets_at_ms = resets_at(l, t);
            deny->rate = l->def.unit == NB_LIM_REQUESTS;
            int64_t wait = (deny->resets_at_ms - t + 999) / 1000;
            deny->retry_after_s = wait > 0 ? wait : 1;
            free(r);
            return NB_EDENIED;
        }
    }
    for (lim_t *l = u->lims; l; l = l->next) {
        if (!applies(l, r))
            continue;
        if (l->def.unit == NB_LIM_REQUESTS) {
            add(l, 1, t);
            continue;
        }
        double need = l->def.unit == NB_LIM_TOKENS ? tok : usd;
        l->reserved += need;
        if (r->nholds < HOLDS_MAX)
            r->holds[r->nholds++] = (hold_t){l->def.id, need};
        double pct = 100.0 * (used(l, t) + l->reserved) / l->def.amount;
        if (l->warned) {
            if (l->def.window == NB_LIM_HOUR &&
                used(l, t) < l->def.amount * NB_USAGE_WARN_PCT / 200.0)
                /* a rolling window drained */
                l->warned = 0;
            continue;
        }
        if (pct >= NB_USAGE_WARN_PCT) {
            l->warned = 1;
            if (!warn[0])
                snprintf(warn, warnsz, "%s %s limit%s%s at %.0f%% (%g %s per %s)",
                         scope_names[l->def.scope], unit_names[l->def.unit],
                         l->def.who[0] ? " of " : "", l->def.who, pct, l->def.amount,
                         unit_names[l->def.unit], window_names[l->def.window]);
            if (!*warn_detail) {
                *warn_detail = limit_json(&l->def);
                json_object_set_new(*warn_detail, "percent", json_real(pct));
            }
        }
    }
    *out = r;
    return 0;
}

void nb_usage_settle(nb_usage_t *u, nb_usage_req_t *r, const nb_usage_result_t *res)
{
    if (!r)
        return;
    int64_t t = now_ms(u);
    int64_t in = res->input, outt = res->output, cached = res->cached, cw = res->cache_write;
    int estimated = 0;
    /* A missing count is estimated from bytes (4 per token), never less
     * than what was seen; a cut before any response costs the input. */
    if (in < 0) {
        in = r->in_bytes / 4;
        estimated = 1;
    }
    if (outt < 0) {
        outt = r->api->no_output ? 0 : res->out_bytes / 4;
        estimated = !r->api->no_output || estimated;
    }
    if (cached < 0)
        cached = 0;
    if (cw < 0)
        cw = 0;
    const char *model = res->model && *res->model ? res->model : r->model;
    int known;
    nb_llm_model_t m = price_of(r->prov, model, &known);
    if (!known)
        m = price_of(r->prov, r->model, &known);
    int64_t plain = r->api->cached_in_input ? (in > cached ? in - cached : 0) : in;
    double cost = nb_llmcat_cost(&m, plain, outt, cached, cw);
    int64_t tokens = (r->api->cached_in_input ? in : in + cached + cw) + outt;
    for (size_t i = 0; i < r->nholds; i++)
        for (lim_t *l = u->lims; l; l = l->next)
            if (l->def.id == r->holds[i].id) {
                l->reserved -= r->holds[i].amount;
                if (l->reserved < 1e-9)
                    l->reserved = 0;
            }
    for (lim_t *l = u->lims; l; l = l->next)
        if (applies(l, r) && l->def.unit != NB_LIM_REQUESTS)
            add(l, l->def.unit == NB_LIM_TOKENS ? (double)tokens : cost, t);
    char secrets[NB_USAGE_SECRETS * NB_USAGE_WHO_MAX + 8] = "", rid[64];
    for (size_t i = 0, n = 0; i < r->nsecrets && n + 1 < sizeof secrets; i++) {
        if (i)
            secrets[n++] = ',';
        nb_str_copy(secrets + n, sizeof secrets - n, r->secrets[i]);
        n += strlen(secrets + n);
    }
    if (res->request_id && *res->request_id)
        nb_str_copy(rid, sizeof rid, res->request_id);
    else
        snprintf(rid, sizeof rid, "nb-%lld-%llu", (long long)t, (unsigned long long)++u->seq);
    rec_t *x = calloc(1, sizeof *x);
    if (x) {
        *x = (rec_t){.t = t,
                     .in = in,
                     .out = outt,
                     .cached = cached,
                     .cw = cw,
                     .tokens = tokens,
                     .cost = cost,
                     .estimated = estimated,
                     .status = res->status};
        nb_str_copy(x->vm, sizeof x->vm, r->vm);
        nb_str_copy(x->provider, sizeof x->provider, r->provider);
        nb_str_copy(x->model, sizeof x->model, model);
        nb_str_copy(x->host, sizeof x->host, res->host ? res->host : "");
        nb_str_copy(x->secrets, sizeof x->secrets, secrets);
        nb_str_copy(x->rid, sizeof x->rid, rid);
        *u->qtail = x;
        u->qtail = &x->next;
        u->nq++;
    } else {
        nb_log(NB_LOG_WARN, "usage: cannot record: out of memory");
    }
    if (!u->timer || u->nq >= RECORD_BATCH)
        flush(u);
    else if (!uv_is_active((uv_handle_t *)u->timer))
        uv_timer_start(u->timer, on_flush, RECORD_FLUSH_MS, 0);
    if (u->cfg.emit && (!u->cfg.emit_wanted || u->cfg.emit_wanted(u->cfg.emit_ud)))
        u->cfg.emit(u->cfg.emit_ud, "usage.record",
                    json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:b, s:s}", "vm", r->vm,
                              "provider", r->provider, "model", model, "input", (json_int_t)in,
                              "output", (json_int_t)outt, "cached", (json_int_t)cached, "tokens",
                              (json_int_t)tokens, "cost_usd", cost, "estimated", estimated,
                              "request_id", rid));
    free(r);
}

void nb_usage_req_free(nb_usage_req_t *r)
{
    free(r);
}
