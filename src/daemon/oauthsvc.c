/* The OAuth service (oauthsvc.h; docs/internals/oauth.md). */
#include "daemon/oauthsvc.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/base/store.h"
#include "daemon/secrets/binding.h"
#include "daemon/secretsvc.h"
#include "lib/err.h"
#include "lib/log.h"

#ifndef NB_OAUTH_DATA_DIR
#define NB_OAUTH_DATA_DIR "/usr/local/share/nilbox/oauth"
#endif

#define MAX_BINDINGS 64

typedef struct {
    nb_oauth_provider_t p; /* src owned here */
    char source[16];       /* "user" or "builtin" */
    int64_t created_at, refreshed_at, expires_at, exchanges;
} row_t;

struct nb_oauthsvc {
    nb_oauthsvc_cfg_t cfg;
    char home[4096];
    row_t *rows;
    size_t nrows;
    nb_oauth_set_t *set;
};

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* ---- the set ---- */

static void rebuild(nb_oauthsvc_t *s)
{
    nb_oauth_set_t *n = nb_oauth_set_new(s->nrows);
    if (!n) {
        nb_log(NB_LOG_ERR, "oauth: out of memory; the previous bindings stay in force");
        return;
    }
    for (size_t i = 0; i < s->nrows; i++) {
        n->v[i] = s->rows[i].p;
        if (!(n->v[i].src = malloc(s->rows[i].p.srclen + 1))) {
            n->n = i;
            nb_oauth_set_unref(n);
            return;
        }
        memcpy(n->v[i].src, s->rows[i].p.src, s->rows[i].p.srclen + 1);
    }
    nb_oauth_set_unref(s->set);
    s->set = n;
    if (s->cfg.changed)
        s->cfg.changed(s->cfg.ud);
}

nb_oauth_set_t *nb_oauthsvc_set(nb_oauthsvc_t *s)
{
    return nb_oauth_set_ref(s->set);
}

static int name_valid(const char *n)
{
    size_t l = strlen(n);
    if (l == 0 || l > NB_OAUTH_NAME_MAX || !(n[0] >= 'A' && n[0] <= 'Z'))
        return 0;
    for (size_t i = 0; i < l; i++)
        if (!((n[i] >= 'A' && n[i] <= 'Z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '_'))
            return 0;
    return 1;
}

static int script_name_valid(const char *n)
{
    size_t l = strlen(n);
    if (l == 0 || l > NB_OAUTH_SCRIPT_NAME_MAX)
        return 0;
    for (size_t i = 0; i < l; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '_' ||
              n[i] == '-'))
            return 0;
    return 1;
}

/* Fills the provider of a row from its name, script and text. */
static int row_fill(row_t *w, const char *name, const char *script, const char *vm, char *src,
                    size_t len, char *err, size_t errsz)
{
    int r = nb_oauth_declare(src, len, script, NULL, &w->p.decl, err, errsz);
    if (r < 0)
        return r;
    snprintf(w->p.name, sizeof w->p.name, "%s", name);
    snprintf(w->p.script, sizeof w->p.script, "%s", script);
    snprintf(w->p.vm, sizeof w->p.vm, "%s", vm);
    snprintf(w->p.secret[NB_OAUTH_SLOT_CLIENT_SECRET], sizeof w->p.secret[0], "%s_CLIENT_SECRET",
             name);
    snprintf(w->p.secret[NB_OAUTH_SLOT_REFRESH_TOKEN], sizeof w->p.secret[0], "%s_REFRESH_TOKEN",
             name);
    snprintf(w->p.access, sizeof w->p.access, "%s_ACCESS_TOKEN", name);
    w->p.src = src;
    w->p.srclen = len;
    return 0;
}

/* ---- scripts ---- */

static int read_file(const char *path, char **src, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? NB_ENOTFOUND : -errno;
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        r = NB_EINVAL;
    else if (st.st_size > NB_OAUTH_SCRIPT_MAX)
        r = NB_ETOOBIG;
    char *b = r == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (r == 0 && !b)
        r = -ENOMEM;
    size_t got = 0;
    while (r == 0 && got < (size_t)st.st_size) {
        ssize_t n = read(fd, b + got, (size_t)st.st_size - got);
        if (n <= 0)
            r = n < 0 ? -errno : NB_EINVAL;
        else
            got += (size_t)n;
    }
    close(fd);
    if (r < 0) {
        free(b);
        return r;
    }
    b[got] = '\0';
    *src = b;
    *len = got;
    return 0;
}

int nb_oauthsvc_script(const nb_oauthsvc_t *s, const char *script, char **src, size_t *len,
                       const char **source)
{
    *src = NULL;
    if (!script_name_valid(script))
        return NB_EINVAL;
    const char *env = getenv("NILBOX_OAUTH_DIR");
    struct {
        const char *dir, *sub, *source;
    } dirs[] = {
        {s->home, "/oauth", "user"},
        {env, "", "builtin"},
        {NB_OAUTH_DATA_DIR, "", "builtin"},
#ifdef NB_OAUTH_SRC_DIR
        {NB_OAUTH_SRC_DIR, "", "builtin"},
#endif
    };
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        if (!dirs[i].dir || !dirs[i].dir[0])
            continue;
        char path[4096 + 128];
        snprintf(path, sizeof path, "%s%s/%s.lua", dirs[i].dir, dirs[i].sub, script);
        int r = read_file(path, src, len);
        if (r == NB_ENOTFOUND)
            continue;
        if (r == 0)
            *source = dirs[i].source;
        return r;
    }
    return NB_ENOTFOUND;
}

/* ---- creation ---- */

static void load_rows(nb_oauthsvc_t *s)
{
    sqlite3 *db = nb_store_db(s->cfg.store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT name, script, source, vm, created_at, refreshed_at, expires_at, "
                           "exchanges FROM oauth_bindings ORDER BY name",
                           -1, &st, NULL) != SQLITE_OK) {
        nb_log(NB_LOG_ERR, "oauth: cannot read the bindings: %s", sqlite3_errmsg(db));
        return;
    }
    while (sqlite3_step(st) == SQLITE_ROW && s->nrows < MAX_BINDINGS) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *script = (const char *)sqlite3_column_text(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        const char *vm = (const char *)sqlite3_column_text(st, 3);
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        char *src = text ? malloc(len + 1) : NULL;
        if (!name || !script || !src || !vm) {
            free(src);
            continue;
        }
        memcpy(src, text, len);
        src[len] = '\0';
        row_t *w = &s->rows[s->nrows];
        memset(w, 0, sizeof *w);
        char err[256];
        if (row_fill(w, name, script, vm, src, len, err, sizeof err) < 0) {
            nb_log(NB_LOG_WARN, "oauth: binding %s skipped: %s", name, err);
            free(src);
            continue;
        }
        snprintf(w->source, sizeof w->source, "stored");
        w->created_at = sqlite3_column_int64(st, 4);
        w->refreshed_at = sqlite3_column_int64(st, 5);
        w->expires_at = sqlite3_column_int64(st, 6);
        w->exchanges = sqlite3_column_int64(st, 7);
        s->nrows++;
    }
    sqlite3_finalize(st);
}

int nb_oauthsvc_new(const nb_oauthsvc_cfg_t *cfg, nb_oauthsvc_t **out)
{
    *out = NULL;
    nb_oauthsvc_t *s = calloc(1, sizeof *s);
    if (!s || !(s->rows = calloc(MAX_BINDINGS, sizeof *s->rows))) {
        free(s);
        return -ENOMEM;
    }
    s->cfg = *cfg;
    snprintf(s->home, sizeof s->home, "%s", cfg->home ? cfg->home : "");
    s->cfg.home = s->home;
    if (cfg->store)
        load_rows(s);
    void (*changed)(void *) = s->cfg.changed;
    s->cfg.changed = NULL; /* nobody to tell yet */
    rebuild(s);
    s->cfg.changed = changed;
    if (!s->set) {
        nb_oauthsvc_free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

void nb_oauthsvc_free(nb_oauthsvc_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nrows; i++)
        free(s->rows[i].p.src);
    free(s->rows);
    nb_oauth_set_unref(s->set);
    free(s);
}

static row_t *row_find(const nb_oauthsvc_t *s, const char *name)
{
    for (size_t i = 0; i < s->nrows; i++)
        if (strcmp(s->rows[i].p.name, name) == 0)
            return &s->rows[i];
    return NULL;
}

/* ---- JSON ---- */

static json_t *row_json(const row_t *w)
{
    const nb_oauth_decl_t *d = &w->p.decl;
    json_t *hosts = json_array();
    for (size_t i = 0; i < d->napi; i++)
        json_array_append_new(hosts, json_string(d->api_hosts[i]));
    json_t *fields = json_object();
    for (size_t i = 0; i < d->nfields; i++)
        json_object_set_new(fields, d->fields[i].field,
                            json_string(w->p.secret[d->fields[i].slot]));
    char url[1024];
    if (d->token_port == 443)
        snprintf(url, sizeof url, "https://%s%s", d->token_host, d->token_path);
    else
        snprintf(url, sizeof url, "https://%s:%d%s", d->token_host, d->token_port, d->token_path);
    const char *state = w->refreshed_at == 0                        ? "no-token"
                        : w->expires_at && w->expires_at <= now_s() ? "expired"
                                                                    : "valid";
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:s, s:{s:s, s:s, s:s}, s:s, s:I, "
                     "s:I, s:I, s:I}",
                     "name", w->p.name, "script", w->p.script, "source", w->source, "vm", w->p.vm,
                     "token_url", url, "request", d->request_json ? "json" : "form", "fields",
                     fields, "api_hosts", hosts, "api_header", d->api_header, "secrets",
                     "client_secret", w->p.secret[NB_OAUTH_SLOT_CLIENT_SECRET], "access_token",
                     w->p.access, "refresh_token", w->p.secret[NB_OAUTH_SLOT_REFRESH_TOKEN],
                     "state", state, "created_at", (json_int_t)w->created_at, "refreshed_at",
                     (json_int_t)w->refreshed_at, "expires_at", (json_int_t)w->expires_at,
                     "exchanges", (json_int_t)w->exchanges);
}

json_t *nb_oauthsvc_list_json(const nb_oauthsvc_t *s)
{
    json_t *a = json_array();
    for (size_t i = 0; i < s->nrows; i++)
        json_array_append_new(a, row_json(&s->rows[i]));
    return json_pack("{s:o}", "bindings", a);
}

/* ---- the row in the database ---- */

typedef struct {
    char name[NB_OAUTH_NAME_MAX + 1], script[NB_OAUTH_SCRIPT_NAME_MAX + 1], vm[64];
    char *src;
    int64_t created_at, refreshed_at, expires_at, exchanges;
    int upsert; /* 1: the whole row; 0: token times only */
    int r;
} dbjob_t;

static void db_work(nb_store_t *st, void *ud)
{
    dbjob_t *j = ud;
    sqlite3 *db = nb_store_db(st);
    sqlite3_stmt *q = NULL;
    const char *sql =
        j->upsert ? "INSERT INTO oauth_bindings (name, script, source, vm, created_at, "
                    "refreshed_at, expires_at, exchanges) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                    "ON CONFLICT(name) DO UPDATE SET script = ?2, source = ?3, vm = ?4"
                  : "UPDATE oauth_bindings SET refreshed_at = ?6, expires_at = ?7, exchanges = ?8 "
                    "WHERE name = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
        j->r = NB_EINTERNAL;
        return;
    }
    sqlite3_bind_text(q, 1, j->name, -1, SQLITE_STATIC);
    if (j->upsert) {
        sqlite3_bind_text(q, 2, j->script, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, j->src, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, j->vm, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 5, j->created_at);
    }
    sqlite3_bind_int64(q, 6, j->refreshed_at);
    sqlite3_bind_int64(q, 7, j->expires_at);
    sqlite3_bind_int64(q, 8, j->exchanges);
    j->r = sqlite3_step(q) == SQLITE_DONE ? 0 : NB_EINTERNAL;
    if (j->r < 0)
        nb_log(NB_LOG_WARN, "oauth: binding %s: %s", j->name, sqlite3_errmsg(db));
    sqlite3_finalize(q);
}

static void db_done_free(void *ud, int status)
{
    dbjob_t *j = ud;
    if (status < 0 || j->r < 0)
        nb_log(NB_LOG_WARN, "oauth: cannot store binding %s", j->name);
    free(j->src);
    free(j);
}

static void db_save_times(nb_oauthsvc_t *s, const row_t *w)
{
    dbjob_t *j = calloc(1, sizeof *j);
    if (!j)
        return;
    snprintf(j->name, sizeof j->name, "%s", w->p.name);
    j->refreshed_at = w->refreshed_at;
    j->expires_at = w->expires_at;
    j->exchanges = w->exchanges;
    if (nb_store_queue(s->cfg.store, s->cfg.loop, db_work, db_done_free, j) < 0)
        db_done_free(j, NB_EINTERNAL);
}

/* ---- sealing tokens ---- */

typedef struct {
    nb_oauthsvc_t *s;
    char name[NB_OAUTH_NAME_MAX + 1];
    int64_t expires_in;
    int pending, status;
    void (*done)(void *op, int status);
    void *op;
} storeop_t;

static void on_token_set(void *ud, int status, json_t *result)
{
    storeop_t *o = ud;
    json_decref(result);
    if (status < 0 && o->status == 0)
        o->status = status;
    if (--o->pending)
        return;
    row_t *w = row_find(o->s, o->name);
    if (w && o->status == 0) {
        w->refreshed_at = now_s();
        w->expires_at = o->expires_in >= 0 ? w->refreshed_at + o->expires_in : 0;
        w->exchanges++;
        db_save_times(o->s, w);
    }
    o->done(o->op, o->status);
    free(o);
}

int nb_oauthsvc_store(void *svc, const nb_oauth_provider_t *p, const nb_oauth_tokens_t *t,
                      void (*done)(void *op, int status), void *op)
{
    nb_oauthsvc_t *s = svc;
    if (!s || !t->access)
        return NB_EINVAL;
    storeop_t *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    o->s = s;
    snprintf(o->name, sizeof o->name, "%s", p->name);
    o->expires_in = t->expires_in;
    o->done = done;
    o->op = op;
    o->pending = 1 + (t->refresh != NULL);
    /* Both values are copied into locked memory by the calls; the jobs run
     * in order, each installs its snapshot before its callback, so the
     * last callback means both are in the proxy's credentials. */
    int r = nb_secretsvc_set(s->cfg.secrets, p->access, t->access, t->access_len, on_token_set, o);
    if (r < 0) {
        free(o);
        return r;
    }
    if (t->refresh && nb_secretsvc_set(s->cfg.secrets, p->secret[NB_OAUTH_SLOT_REFRESH_TOKEN],
                                       t->refresh, t->refresh_len, on_token_set, o) < 0) {
        o->status = NB_EINTERNAL;
        o->pending--;
    }
    return 0;
}

/* ---- adding a binding ---- */

typedef struct {
    nb_oauthsvc_t *s;
    row_t w;
    int pending, status;
    char err[320];
    nb_oauthsvc_done_fn done;
    void *ud;
    dbjob_t *db;
} addop_t;

static void add_finish(addop_t *a)
{
    nb_oauthsvc_t *s = a->s;
    row_t *w = row_find(s, a->w.p.name);
    if (!w && s->nrows == MAX_BINDINGS) {
        a->done(a->ud, NB_ETOOBIG, NULL, "too many OAuth bindings");
        free(a->w.p.src);
    } else {
        if (w) {
            a->w.created_at = w->created_at;
            a->w.refreshed_at = w->refreshed_at;
            a->w.expires_at = w->expires_at;
            a->w.exchanges = w->exchanges;
            free(w->p.src);
        } else {
            w = &s->rows[s->nrows++];
        }
        *w = a->w;
        rebuild(s);
        nb_log(NB_LOG_NOTICE, "oauth: binding %s uses script %s (%s)", w->p.name, w->p.script,
               w->source);
        a->done(a->ud, 0, row_json(w), NULL);
    }
    free(a);
}

static void add_db_work(nb_store_t *st, void *ud)
{
    addop_t *a = ud;
    db_work(st, a->db);
}

static void on_add_db(void *ud, int status)
{
    addop_t *a = ud;
    int r = status < 0 ? status : a->db->r;
    free(a->db->src);
    free(a->db);
    if (r < 0) {
        a->done(a->ud, r, NULL, "cannot store the binding");
        free(a->w.p.src);
        free(a);
        return;
    }
    add_finish(a);
}

static void on_add_step(void *ud, int status, json_t *result)
{
    addop_t *a = ud;
    json_decref(result);
    if (status < 0 && status != NB_EEXIST && a->status == 0) {
        a->status = status;
        snprintf(a->err, sizeof a->err, "cannot create the binding's secrets: %s",
                 nb_strerror(status));
    }
    if (--a->pending)
        return;
    if (a->status < 0) {
        a->done(a->ud, a->status, NULL, a->err);
        free(a->w.p.src);
        free(a);
        return;
    }
    dbjob_t *j = calloc(1, sizeof *j);
    if (j && (j->src = malloc(a->w.p.srclen + 1))) {
        memcpy(j->src, a->w.p.src, a->w.p.srclen + 1);
        snprintf(j->name, sizeof j->name, "%s", a->w.p.name);
        snprintf(j->script, sizeof j->script, "%s", a->w.p.script);
        snprintf(j->vm, sizeof j->vm, "%s", a->w.p.vm);
        j->created_at = a->w.created_at;
        j->upsert = 1;
        a->db = j;
        if (nb_store_queue(a->s->cfg.store, a->s->cfg.loop, add_db_work, on_add_db, a) == 0)
            return;
    }
    if (j)
        free(j->src);
    free(j);
    a->db = NULL;
    a->done(a->ud, -ENOMEM, NULL, "out of memory");
    free(a->w.p.src);
    free(a);
}

static int secret_exists(const nb_secretsvc_snap_t *snap, const char *name)
{
    for (size_t i = 0; snap && i < snap->nsealed; i++)
        if (strcmp(snap->names[i], name) == 0)
            return 1;
    return 0;
}

int nb_oauthsvc_add(nb_oauthsvc_t *s, const char *name, const char *script, const char *vm,
                    nb_oauthsvc_done_fn done, void *ud, char *err, size_t errsz)
{
    err[0] = '\0';
    if (!name_valid(name)) {
        snprintf(err, errsz,
                 "a binding name is an upper-case placeholder prefix: A-Z, 0-9, _ (at most %d)",
                 NB_OAUTH_NAME_MAX);
        return NB_EINVAL;
    }
    if (vm && strlen(vm) >= 64) {
        snprintf(err, errsz, "VM name too long");
        return NB_EINVAL;
    }
    const nb_secretsvc_snap_t *snap = nb_secretsvc_snapshot(s->cfg.secrets);
    if (!snap) {
        snprintf(err, errsz, "the secret store is not open ('nilbox secret unlock')");
        return NB_ESTATE;
    }
    char *src = NULL;
    size_t len = 0;
    const char *source = "";
    int r = nb_oauthsvc_script(s, script, &src, &len, &source);
    if (r < 0) {
        snprintf(err, errsz,
                 r == NB_ENOTFOUND ? "no OAuth script '%s' (looked in %s/oauth and the "
                                     "built-in scripts)"
                 : r == NB_EINVAL  ? "bad script name '%s' (a-z, 0-9, _ and -; %s/oauth/NAME.lua)"
                                   : "cannot read script '%s' (%s/oauth)",
                 script, s->home);
        return r;
    }
    addop_t *a = calloc(1, sizeof *a);
    if (!a) {
        free(src);
        return -ENOMEM;
    }
    if ((r = row_fill(&a->w, name, script, vm ? vm : "", src, len, err, errsz)) < 0) {
        free(src);
        free(a);
        return r;
    }
    snprintf(a->w.source, sizeof a->w.source, "%s", source);
    a->w.created_at = now_s();
    a->s = s;
    a->done = done;
    a->ud = ud;
    a->pending = 1; /* released below, after every step is queued */
    /* The token secrets must exist to be bound; a dummy until the first
     * exchange (never overwrite tokens already there). */
    const char *tok[2] = {a->w.p.access, a->w.p.secret[NB_OAUTH_SLOT_REFRESH_TOKEN]};
    for (int i = 0; i < 2; i++)
        if (!secret_exists(snap, tok[i]) &&
            nb_secretsvc_set(s->cfg.secrets, tok[i], NB_OAUTH_NO_TOKEN,
                             sizeof NB_OAUTH_NO_TOKEN - 1, on_add_step, a) == 0)
            a->pending++;
    for (size_t i = 0; i < a->w.p.decl.napi; i++) {
        nb_binding_t b;
        if (nb_binding_set_header(&b, a->w.p.decl.api_header) < 0) {
            a->status = NB_EINVAL;
            snprintf(a->err, sizeof a->err, "the script's api_header is not a valid binding");
            break;
        }
        snprintf(b.secret, sizeof b.secret, "%s", a->w.p.access);
        snprintf(b.host, sizeof b.host, "%s", a->w.p.decl.api_hosts[i]);
        snprintf(b.vm, sizeof b.vm, "%s", a->w.p.vm);
        if (nb_binding_normalize(&b) < 0) {
            a->status = NB_EINVAL;
            snprintf(a->err, sizeof a->err, "api host %s cannot be bound",
                     a->w.p.decl.api_hosts[i]);
            break;
        }
        if (nb_secretsvc_bind(s->cfg.secrets, &b, on_add_step, a) == 0)
            a->pending++;
    }
    on_add_step(a, 0, NULL);
    return 0;
}

/* ---- test ---- */

static json_t *decl_json(const nb_oauth_decl_t *d)
{
    json_t *hosts = json_array(), *fields = json_object();
    for (size_t i = 0; i < d->napi; i++)
        json_array_append_new(hosts, json_string(d->api_hosts[i]));
    for (size_t i = 0; i < d->nfields; i++)
        json_object_set_new(fields, d->fields[i].field,
                            json_string(nb_oauth_slot_name(d->fields[i].slot)));
    return json_pack("{s:s, s:i, s:s, s:s, s:o, s:o, s:s, s:b}", "token_host", d->token_host,
                     "token_port", d->token_port, "token_path", d->token_path, "request",
                     d->request_json ? "json" : "form", "fields", fields, "api_hosts", hosts,
                     "api_header", d->api_header, "has_parse", d->has_parse);
}

json_t *nb_oauthsvc_test(nb_oauthsvc_t *s, const char *name, const char *script,
                         const json_t *sample)
{
    char err[300] = "";
    char *src = NULL;
    size_t len = 0;
    const char *source = "stored";
    const row_t *w = name ? row_find(s, name) : NULL;
    if (name && !w)
        return json_pack("{s:b, s:s}", "ok", 0, "error", "no such OAuth binding");
    if (w) {
        script = w->p.script;
        if ((src = malloc(w->p.srclen + 1)))
            memcpy(src, w->p.src, w->p.srclen + 1);
        len = w->p.srclen;
    } else {
        int r = nb_oauthsvc_script(s, script ? script : "", &src, &len, &source);
        if (r < 0)
            return json_pack("{s:b, s:s}", "ok", 0, "error",
                             r == NB_ENOTFOUND ? "no such script" : "bad script name");
    }
    if (!src)
        return json_pack("{s:b, s:s}", "ok", 0, "error", "out of memory");
    uint64_t t0 = uv_hrtime();
    nb_oauth_decl_t d;
    json_t *res = json_pack("{s:s, s:s}", "script", script, "source", source);
    int r = nb_oauth_declare(src, len, script, NULL, &d, err, sizeof err);
    if (r == 0) {
        json_object_set_new(res, "declaration", decl_json(&d));
        int status = 200;
        const char *ct = "application/json";
        const char *body =
            "{\"access_token\":\"sample-access-token\",\"refresh_token\":"
            "\"sample-refresh-token\",\"expires_in\":3600,\"token_type\":\"bearer\"}";
        if (sample) {
            status = (int)json_integer_value(json_object_get(sample, "status"));
            if (!status)
                status = 200;
            if (json_string_value(json_object_get(sample, "content_type")))
                ct = json_string_value(json_object_get(sample, "content_type"));
            if (json_string_value(json_object_get(sample, "body")))
                body = json_string_value(json_object_get(sample, "body"));
        }
        nb_oauth_tokens_t t;
        r = nb_oauth_parse(src, len, script, NULL, status, nb_iov(body, strlen(body)),
                           nb_iov(ct, strlen(ct)), &t, err, sizeof err);
        if (r >= 0)
            json_object_set_new(
                res, "parsed",
                r == 1
                    ? json_null()
                    : json_pack("{s:I, s:o, s:I}", "access_token_len", (json_int_t)t.access_len,
                                "refresh_token_len",
                                t.refresh ? json_integer((json_int_t)t.refresh_len) : json_null(),
                                "expires_in", (json_int_t)t.expires_in));
        if (r == 0)
            nb_oauth_tokens_free(&t);
    }
    free(src);
    json_object_set_new(res, "ok", json_boolean(r >= 0));
    if (r < 0)
        json_object_set_new(res, "error", json_string(err));
    json_object_set_new(res, "ms", json_real((double)(uv_hrtime() - t0) / 1e6));
    return res;
}
