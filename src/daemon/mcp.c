/* The MCP bridge's registry: servers and their tool policies, in memory
 * and in table mcp_servers / mcp_policy (see mcp.h). Writes go to the
 * store's thread pool; the in-memory copy changes first, so a session sees
 * a new policy on its next message. */
#include "daemon/mcp.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon/base/events.h"
#include "daemon/base/store.h"
#include "daemon/mcp_int.h"
#include "lib/env.h"
#include "lib/err.h"
#include "lib/log.h"

/* "http://127.0.0.1:PORT/path" or "http://localhost:PORT/path": the guest's
 * own loopback, the only place a server in the VM listens for us. */
static int parse_url(const char *url, uint16_t *port, char *path, size_t pathsz)
{
    const char *p;
    if (!strncmp(url, "http://127.0.0.1:", 17))
        p = url + 17;
    else if (!strncmp(url, "http://localhost:", 17))
        p = url + 17;
    else
        return NB_EINVAL;
    char *end;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p || v < 1 || v > 65535 || (*end && *end != '/'))
        return NB_EINVAL;
    *port = (uint16_t)v;
    const char *pa = *end ? end : "/";
    if (strlen(pa) >= pathsz)
        return NB_EINVAL;
    for (const char *q = pa; *q; q++)
        if (*q <= ' ' || *q > '~')
            return NB_EINVAL;
    snprintf(path, pathsz, "%s", pa);
    return 0;
}

json_t *nb_mcp_get(nb_mcp_t *m, const char *vm, const char *name, int secret)
{
    mcp_server_t *s = nb_mcp_find(m, vm, name);
    if (!s)
        return NULL;
    char url[64], logp[NB_HOME_PATH_MAX + 160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/mcp", s->port);
    nb_mcp_log_path(m, vm, name, logp, sizeof logp);
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:O, s:s}", "vm", s->vm, "name", s->name, "kind",
                  s->is_http ? "http" : "stdio", "endpoint", url, "port", s->port, "created_ms",
                  (json_int_t)s->created_ms, "policy", s->policy, "log", logp);
    if (!j)
        return NULL;
    if (s->is_http)
        json_object_set_new(j, "url", json_string(s->url));
    else
        json_object_set(j, "command", s->argv);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/sse", s->port);
    json_object_set_new(j, "sse_endpoint", json_string(url)); /* older HTTP+SSE clients */
    json_object_set_new(j, "listening", json_boolean(s->httpd != NULL));
    json_object_set_new(j, "frame_max", json_integer((json_int_t)m->frame_max));
    if (secret)
        json_object_set_new(j, "token", json_string(s->token));
    return j;
}

json_t *nb_mcp_list(nb_mcp_t *m, const char *vm)
{
    json_t *a = json_array();
    for (mcp_server_t *s = m->servers; s && a; s = s->next)
        if (!vm || !strcmp(vm, s->vm))
            json_array_append_new(a, nb_mcp_get(m, s->vm, s->name, 0));
    return json_pack("{s:o}", "servers", a ? a : json_array());
}

/* ------------------------------------------------------------ the store */

typedef struct {
    nb_mcp_t *m;
    int op; /* J_ADD, J_RM, J_POLICY */
    char vm[NB_MCP_NAME_MAX + 1], name[NB_MCP_NAME_MAX + 1];
    char kind[8], url[256], token[65], tool[NB_MCP_TOOL_MAX + 1], action[8];
    char *argv; /* JSON text */
    int port;
    int64_t created_ms;
    int rc; /* sqlite result */
    nb_mcp_cb cb;
    void *ud;
    json_t *result;
} job_t;

enum { J_ADD, J_RM, J_POLICY };

static int run(sqlite3 *db, const char *sql, const char *const *txt, int ntxt, const int64_t *num,
               int nnum)
{
    sqlite3_stmt *st = NULL;
    int r = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    for (int i = 0; r == SQLITE_OK && i < ntxt; i++)
        r = sqlite3_bind_text(st, i + 1, txt[i], -1, SQLITE_TRANSIENT);
    for (int i = 0; r == SQLITE_OK && i < nnum; i++)
        r = sqlite3_bind_int64(st, ntxt + i + 1, num[i]);
    if (r == SQLITE_OK)
        r = sqlite3_step(st);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? 0 : r;
}

static void job_work(nb_store_t *st, void *ud)
{
    job_t *j = ud;
    sqlite3 *db = nb_store_db(st);
    if (j->op == J_ADD) {
        const char *t[] = {j->vm, j->name, j->kind, j->argv, j->url, j->token};
        int64_t n[] = {j->port, j->created_ms};
        j->rc = run(db,
                    "INSERT INTO mcp_servers (vm, name, kind, argv, url, token, port, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    t, 6, n, 2);
    } else if (j->op == J_RM) {
        const char *t[] = {j->vm, j->name};
        j->rc = run(db, "DELETE FROM mcp_servers WHERE vm = ? AND name = ?", t, 2, NULL, 0);
        if (!j->rc)
            j->rc = run(db, "DELETE FROM mcp_policy WHERE vm = ? AND server = ?", t, 2, NULL, 0);
    } else if (!strcmp(j->action, "clear")) {
        const char *t[] = {j->vm, j->name, j->tool};
        j->rc = run(db, "DELETE FROM mcp_policy WHERE vm = ? AND server = ? AND tool = ?", t, 3,
                    NULL, 0);
    } else {
        const char *t[] = {j->vm, j->name, j->tool, j->action};
        j->rc = run(db,
                    "INSERT INTO mcp_policy (vm, server, tool, action) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (vm, server, tool) DO UPDATE SET action = excluded.action",
                    t, 4, NULL, 0);
    }
}

static void job_done(void *ud, int status)
{
    job_t *j = ud;
    int r = status < 0 ? NB_EINTERNAL : j->rc ? NB_EINTERNAL : 0;
    if (r < 0)
        nb_log(NB_LOG_WARN, "mcp: cannot store the change to %s/%s (sqlite %d)", j->vm, j->name,
               j->rc);
    if (j->cb)
        j->cb(j->ud, r, r < 0 ? "cannot store the change" : NULL, j->result);
    json_decref(j->result);
    sodium_memzero(j->token, sizeof j->token);
    free(j->argv);
    free(j);
}

static void queue(nb_mcp_t *m, job_t *j)
{
    int r = nb_store_queue(m->d->store, m->loop, job_work, job_done, j);
    if (r < 0) {
        j->rc = -1;
        job_done(j, r);
    }
}

/* ------------------------------------------------------------ changes */

void nb_mcp_add(nb_mcp_t *m, const char *vm, const char *name, const json_t *argv, const char *url,
                nb_mcp_cb cb, void *ud)
{
    char err[200];
    if (!vm || !nb_mcp_valid_name(vm) || !nb_mcp_valid_name(name)) {
        cb(ud, NB_EINVAL,
           "VM and server names are 1-32 of a-z, 0-9, _ and - (a letter or digit first)", NULL);
        return;
    }
    if (nb_mcp_find(m, vm, name)) {
        cb(ud, NB_EEXIST, "that VM already has an MCP server by this name", NULL);
        return;
    }
    if (!!argv == !!url) {
        cb(ud, NB_EINVAL, "give a command (stdio) or a url (http), not both", NULL);
        return;
    }
    mcp_server_t *s = calloc(1, sizeof *s);
    job_t *j = calloc(1, sizeof *j);
    if (!s || !j) {
        free(s);
        free(j);
        cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    s->m = m;
    snprintf(s->vm, sizeof s->vm, "%s", vm);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->policy = json_object();
    if (argv) {
        size_t i, n = json_array_size(argv);
        json_t *w;
        int ok = json_is_array(argv) && n >= 1 && n <= NB_MCP_ARGV_MAX;
        json_array_foreach (argv, i, w)
            if (!json_is_string(w) || json_string_length(w) > 4096 || !json_string_value(w)[0])
                ok = 0;
        if (!ok) {
            cb(ud, NB_EINVAL, "the command is 1-64 non-empty words", NULL);
            goto fail;
        }
        s->argv = json_deep_copy(argv);
    } else {
        s->is_http = 1;
        if (strlen(url) >= sizeof s->url ||
            parse_url(url, &s->guest_port, s->guest_path, sizeof s->guest_path) < 0) {
            cb(ud, NB_EINVAL, "the url must be http://127.0.0.1:PORT/PATH (the guest's loopback)",
               NULL);
            goto fail;
        }
        snprintf(s->url, sizeof s->url, "%s", url);
    }
    uint8_t raw[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(s->token, sizeof s->token, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);
    s->created_ms = nb_events_now_ms();
    if (nb_mcp_http_start(s, err, sizeof err) < 0) {
        cb(ud, NB_EINTERNAL, err, NULL);
        goto fail;
    }
    s->next = m->servers;
    m->servers = s;
    j->m = m;
    j->op = J_ADD;
    snprintf(j->vm, sizeof j->vm, "%s", vm);
    snprintf(j->name, sizeof j->name, "%s", name);
    snprintf(j->kind, sizeof j->kind, "%s", s->is_http ? "http" : "stdio");
    snprintf(j->url, sizeof j->url, "%s", s->url);
    memcpy(j->token, s->token, sizeof j->token);
    j->argv = s->argv ? json_dumps(s->argv, JSON_COMPACT) : strdup("[]");
    j->port = s->port;
    j->created_ms = s->created_ms;
    j->cb = cb;
    j->ud = ud;
    j->result = nb_mcp_get(m, vm, name, 0);
    nb_log(NB_LOG_INFO, "mcp: server %s/%s registered (%s), endpoint port %d", vm, name, j->kind,
           s->port);
    if (m->d->events)
        nb_events_emit(m->d->events, "mcp.added",
                       json_pack("{s:s, s:s, s:s}", "vm", vm, "name", name, "kind", j->kind));
    queue(m, j);
    return;
fail:
    free(j);
    nb_mcp_server_free(s);
}

void nb_mcp_rm(nb_mcp_t *m, const char *vm, const char *name, nb_mcp_cb cb, void *ud)
{
    mcp_server_t *s = vm && name ? nb_mcp_find(m, vm, name) : NULL;
    if (!s) {
        cb(ud, NB_ENOTFOUND, "no such MCP server", NULL);
        return;
    }
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    for (mcp_server_t **pp = &m->servers; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    s->removed = 1;
    s->refs++;
    nb_mcp_http_stop(s);
    nb_mcp_sess_end_all(m, s, "the MCP server was removed");
    j->m = m;
    j->op = J_RM;
    snprintf(j->vm, sizeof j->vm, "%s", vm);
    snprintf(j->name, sizeof j->name, "%s", name);
    j->cb = cb;
    j->ud = ud;
    j->result = json_pack("{s:s, s:s}", "vm", vm, "name", name);
    if (m->d->events)
        nb_events_emit(m->d->events, "mcp.removed",
                       json_pack("{s:s, s:s}", "vm", vm, "name", name));
    nb_mcp_server_unref(s);
    queue(m, j);
}

static void policy_job(nb_mcp_t *m, mcp_server_t *s, const char *tool, const char *action,
                       nb_mcp_cb cb, void *ud)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        if (cb)
            cb(ud, -ENOMEM, NULL, NULL);
        return;
    }
    if (!strcmp(action, "clear"))
        json_object_del(s->policy, tool);
    else
        json_object_set_new(s->policy, tool, json_string(action));
    j->m = m;
    j->op = J_POLICY;
    snprintf(j->vm, sizeof j->vm, "%s", s->vm);
    snprintf(j->name, sizeof j->name, "%s", s->name);
    snprintf(j->tool, sizeof j->tool, "%s", tool);
    snprintf(j->action, sizeof j->action, "%s", action);
    j->cb = cb;
    j->ud = ud;
    j->result = json_pack("{s:s, s:s, s:O}", "vm", s->vm, "name", s->name, "policy", s->policy);
    queue(m, j);
}

void nb_mcp_policy_set(nb_mcp_t *m, const char *vm, const char *name, const char *tool,
                       const char *action, nb_mcp_cb cb, void *ud)
{
    mcp_server_t *s = vm && name ? nb_mcp_find(m, vm, name) : NULL;
    if (!s) {
        cb(ud, NB_ENOTFOUND, "no such MCP server", NULL);
        return;
    }
    if (!nb_mcp_valid_tool(tool)) {
        cb(ud, NB_EINVAL, "a tool name is 1-128 printable characters without spaces, or '*'", NULL);
        return;
    }
    if (!action || (!nb_mcp_action_parse(action) && strcmp(action, "clear") != 0)) {
        cb(ud, NB_EINVAL, "the action is allow, deny, ask or clear", NULL);
        return;
    }
    policy_job(m, s, tool, action, cb, ud);
}

static void remember(mcp_server_t *s, const char *tool, const char *action)
{
    if (!s->removed)
        policy_job(s->m, s, tool, action, NULL, NULL);
}

/* ------------------------------------------------------------ life */

static int load(nb_mcp_t *m, char *err, size_t errsz)
{
    sqlite3 *db = nb_store_db(m->d->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT vm, name, kind, argv, url, port, token, created_ms FROM "
                           "mcp_servers ORDER BY vm, name",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errsz, "cannot read the MCP servers: %s", sqlite3_errmsg(db));
        return NB_EINTERNAL;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        mcp_server_t *s = calloc(1, sizeof *s);
        if (!s)
            break;
        s->m = m;
        snprintf(s->vm, sizeof s->vm, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(s->name, sizeof s->name, "%s", (const char *)sqlite3_column_text(st, 1));
        s->is_http = !strcmp((const char *)sqlite3_column_text(st, 2), "http");
        const char *av = (const char *)sqlite3_column_text(st, 3);
        s->argv = s->is_http ? NULL : json_loads(av ? av : "[]", 0, NULL);
        snprintf(s->url, sizeof s->url, "%s", (const char *)sqlite3_column_text(st, 4));
        s->port = sqlite3_column_int(st, 5);
        snprintf(s->token, sizeof s->token, "%s", (const char *)sqlite3_column_text(st, 6));
        s->created_ms = sqlite3_column_int64(st, 7);
        s->policy = json_object();
        if (s->is_http && parse_url(s->url, &s->guest_port, s->guest_path, sizeof s->guest_path))
            nb_log(NB_LOG_WARN, "mcp: %s/%s has an unusable url", s->vm, s->name);
        s->next = m->servers;
        m->servers = s;
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db, "SELECT vm, server, tool, action FROM mcp_policy", -1, &st, NULL) ==
        SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            mcp_server_t *s = nb_mcp_find(m, (const char *)sqlite3_column_text(st, 0),
                                          (const char *)sqlite3_column_text(st, 1));
            if (s)
                json_object_set_new(s->policy, (const char *)sqlite3_column_text(st, 2),
                                    json_string((const char *)sqlite3_column_text(st, 3)));
        }
    }
    sqlite3_finalize(st);
    for (mcp_server_t *s = m->servers; s; s = s->next) {
        char e[200];
        if (nb_mcp_http_start(s, e, sizeof e) < 0)
            nb_log(NB_LOG_WARN, "mcp: %s/%s: %s", s->vm, s->name, e);
    }
    return 0;
}

static void on_sweep(uv_timer_t *t)
{
    nb_mcp_t *m = t->data;
    uint64_t now = uv_hrtime();
    for (mcp_server_t *s = m->servers; s; s = s->next)
        nb_mcp_http_expire(s, now, m->sess_idle_ns);
}

static void on_sweep_closed(uv_handle_t *h)
{
    free(h);
}

int nb_mcp_new(nb_daemon_t *d, nb_mcp_t **out, char *err, size_t errsz)
{
    *out = NULL;
    nb_mcp_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->d = d;
    m->loop = d->loop;
    m->frame_max =
        (size_t)nb_env_u64("NILBOX_MCP_MAX_FRAME", 1024, 64u << 20, NB_JSONRPC_FRAME_MAX);
    m->remember = remember;
    uint64_t idle_s = nb_env_u64("NILBOX_MCP_SESSION_IDLE", 1, 604800, NB_MCP_SESS_IDLE_S);
    m->sess_idle_ns = idle_s * 1000000000ull;
    /* Looked for four times per expiry period, at most once a minute. */
    uint64_t every = idle_s * 250 < 60000 ? idle_s * 250 : 60000;
    if (!(m->sweep = malloc(sizeof *m->sweep))) {
        free(m);
        return -ENOMEM;
    }
    uv_timer_init(m->loop, m->sweep);
    m->sweep->data = m;
    uv_unref((uv_handle_t *)m->sweep);
    uv_timer_start(m->sweep, on_sweep, every, every);
    snprintf(m->dir, sizeof m->dir, "%s/mcp", d->home.home);
    if (mkdir(m->dir, 0700) < 0 && errno != EEXIST) {
        int r = -errno;
        snprintf(err, errsz, "cannot create %s: %s", m->dir, strerror(errno));
        uv_close((uv_handle_t *)m->sweep, on_sweep_closed);
        free(m);
        return r;
    }
    int r = load(m, err, errsz);
    if (r < 0) {
        nb_mcp_free(m);
        return r;
    }
    *out = m;
    return 0;
}

void nb_mcp_free(nb_mcp_t *m)
{
    if (!m)
        return;
    m->closing = 1;
    uv_close((uv_handle_t *)m->sweep, on_sweep_closed);
    nb_mcp_sess_end_all(m, NULL, "the daemon is stopping");
    while (m->servers) {
        mcp_server_t *s = m->servers;
        m->servers = s->next;
        nb_mcp_http_stop(s);
        s->removed = 1;
        if (s->refs == 0)
            nb_mcp_server_free(s);
    }
    free(m);
}
