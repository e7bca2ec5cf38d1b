/* Port mappings: listeners, the `port_maps` rows, and one spliced `tcp`
 * stream per accepted connection. See portsvc.h and
 * docs/internals/ports.md. Host-service grants are in portsvc_host.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "daemon/audit.h"
#include "daemon/base/events.h"
#include "daemon/base/store.h"
#include "daemon/portsvc_int.h"
#include "daemon/vm/manager.h"
#include "host/sockdiag.h"
#include "lib/err.h"
#include "lib/hostname.h"
#include "lib/json.h"
#include "lib/log.h"

/* ------------------------------------------------------------ connections */

static void conn_stream_closed(nb_stream_t *s, void *ud)
{
    (void)s;
    pconn_t *c = ud;
    if (++c->nclosed < c->nstreams)
        return;
    pmap_t *m = c->map;
    if (c->prev)
        c->prev->next = c->next;
    else
        m->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    m->nconns--;
    free(c);
    nb_ports_map_maybe_free(m);
}

static void conn_close(pconn_t *c, int reset)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->tcp) {
        nb_stream_set_cbs(c->tcp, NULL, NULL, conn_stream_closed, c);
        nb_stream_close(c->tcp, reset);
    }
    if (c->mux) {
        nb_stream_set_cbs(c->mux, NULL, NULL, conn_stream_closed, c);
        nb_stream_close(c->mux, reset);
    }
}

static void on_splice_done(nb_splice_t *sp, int err, nb_stream_t *failed, void *ud)
{
    (void)sp;
    pconn_t *c = ud;
    if (err && failed == c->mux) {
        char esc[128];
        const char *msg = nb_strerror(err);
        nb_log(NB_LOG_INFO, "port %u -> vm %s:%u: %s", c->map->host_port,
               nb_log_escape(esc, sizeof esc, c->map->vm, strlen(c->map->vm)), c->map->guest_port,
               msg);
    }
    conn_close(c, err != 0);
}

/* A refusal row (A26/A28); the audit log merges repeats and caps them per
 * VM (audit.h). */
static void refuse_peer(pmap_t *m, const char *why)
{
    const char *threat = strcmp(why, "too-many-connections") == 0 ? "A28" : "A26";
    if (m->ps->d->audit)
        nb_audit_append(m->ps->d->audit, "refusal", m->vm, m->bind, m->host_port,
                        json_pack("{s:s, s:s}", "threat", threat, "reason", why));
    /* The log line at most once a second: any local user can connect. */
    uint64_t now = uv_now(m->ps->loop);
    if (!m->last_refusal_ms || now - m->last_refusal_ms >= 1000) {
        m->last_refusal_ms = now;
        nb_log(NB_LOG_INFO, "port %s:%u: connection refused: %s", m->bind, m->host_port, why);
    }
}

/* A26: a loopback mapping serves only the daemon's own user. */
static int peer_allowed(pmap_t *m, nb_stream_t *tcp)
{
    if (m->public_)
        return 1;
    uv_tcp_t *h = (uv_tcp_t *)nb_stream_uv_handle(tcp);
    struct sockaddr_storage self, peer;
    int sl = sizeof self, pl = sizeof peer;
    if (uv_tcp_getsockname(h, (struct sockaddr *)&self, &sl) < 0 ||
        uv_tcp_getpeername(h, (struct sockaddr *)&peer, &pl) < 0) {
        refuse_peer(m, "peer-unknown");
        return 0;
    }
    uid_t uid;
    int r = nb_sockdiag_peer_uid(&self, &peer, &uid);
    if (r < 0) {
        refuse_peer(m, "peer-unknown");
        return 0;
    }
    if (uid != getuid() && uid != 0) {
        refuse_peer(m, "peer-uid");
        return 0;
    }
    return 1;
}

static void on_connection(uv_stream_t *srv, int status)
{
    pmap_t *m = srv->data;
    nb_portsvc_t *ps = m->ps;
    nb_stream_t *tcp = NULL;
    if (status < 0 || nb_stream_tcp_new(ps->loop, &tcp) < 0)
        return;
    if (uv_accept(srv, nb_stream_uv_handle(tcp)) < 0) {
        nb_stream_close(tcp, 0);
        return;
    }
    if (m->nconns >= NB_PORTS_MAX_CONNS || !peer_allowed(m, tcp)) {
        if (m->nconns >= NB_PORTS_MAX_CONNS)
            refuse_peer(m, "too-many-connections");
        nb_stream_close(tcp, 1);
        return;
    }
    nb_vm_t *vm = ps->d->vmm ? nb_vmm_find(ps->d->vmm, m->vm) : NULL;
    nb_muxsess_t *s = vm ? nb_vm_session(vm) : NULL;
    if (!s) {
        /* The VM is down: the client sees a reset, as with no listener. */
        nb_stream_close(tcp, 1);
        return;
    }
    char args[64];
    snprintf(args, sizeof args, "{\"port\":%u,\"host\":\"127.0.0.1\"}", m->guest_port);
    nb_muxsess_stream_t *st;
    if (nb_muxsess_open(s, "tcp", nb_iov(args, strlen(args)), NULL, NULL, &st) < 0) {
        nb_stream_close(tcp, 1);
        return;
    }
    pconn_t *c = calloc(1, sizeof *c);
    nb_stream_t *mux = NULL;
    if (!c || nb_stream_mux_new(ps->loop, st, NB_MUX_CHAN_STDIO, NULL, &mux) < 0) {
        free(c);
        nb_muxsess_stream_reset(st, NB_MUX_E_INTERNAL, "out of memory");
        nb_stream_close(tcp, 1);
        return;
    }
    c->map = m;
    c->tcp = tcp;
    c->mux = mux;
    c->nstreams = 2;
    c->next = m->conns;
    if (m->conns)
        m->conns->prev = c;
    m->conns = c;
    m->nconns++;
    uv_tcp_nodelay((uv_tcp_t *)nb_stream_uv_handle(tcp), 1);
    /* Bytes the client sends before the guest accepted wait in the
     * stream's queue (within its budget); an OPEN_ERR ends both. */
    nb_splice_opts_t o = {.on_done = on_splice_done, .ud = c};
    if (nb_stream_splice(tcp, mux, &o, NULL) < 0)
        conn_close(c, 1);
}

/* ------------------------------------------------------------ maps */

static void map_handle_closed(uv_handle_t *h)
{
    pmap_t *m = h->data;
    m->srv_open = 0;
    nb_ports_map_maybe_free(m);
}

void nb_ports_map_maybe_free(pmap_t *m)
{
    if (!m->removed || m->srv_open || m->conns)
        return;
    nb_portsvc_t *ps = m->ps;
    free(m);
    ps->live--;
    nb_ports_maybe_free(ps);
}

/* Binds m's listener; 0 or a libuv error with m->err set. */
static int map_listen(pmap_t *m)
{
    struct sockaddr_storage sa;
    int r = strchr(m->bind, ':') ? uv_ip6_addr(m->bind, m->host_port, (void *)&sa)
                                 : uv_ip4_addr(m->bind, m->host_port, (void *)&sa);
    if (r < 0)
        goto fail;
    if (!m->srv_open) {
        if ((r = uv_tcp_init(m->ps->loop, &m->srv)) < 0)
            goto fail;
        m->srv.data = m;
        m->srv_open = 1;
    }
    if ((r = uv_tcp_bind(&m->srv, (struct sockaddr *)&sa, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&m->srv, 128, on_connection)) < 0) {
        /* A failed bind leaves the handle unusable: start afresh next time. */
        uv_close((uv_handle_t *)&m->srv, map_handle_closed);
        goto fail;
    }
    m->listening = 1;
    m->err[0] = 0;
    return 0;
fail:
    m->listening = 0;
    snprintf(m->err, sizeof m->err, "%s",
             r == UV_EADDRINUSE ? "the host port is in use by another program" : uv_strerror(r));
    return r;
}

static void map_close(pmap_t *m)
{
    m->removed = 1;
    for (pconn_t *c = m->conns; c; c = c->next)
        conn_close(c, 1);
    if (m->srv_open && !uv_is_closing((uv_handle_t *)&m->srv))
        uv_close((uv_handle_t *)&m->srv, map_handle_closed);
    nb_ports_map_maybe_free(m);
}

static pmap_t *map_new(nb_portsvc_t *ps, int64_t id, const char *vm, const char *bind, int hp,
                       int gp, int public_, int64_t created)
{
    pmap_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->ps = ps;
    m->id = id;
    snprintf(m->vm, sizeof m->vm, "%s", vm);
    snprintf(m->bind, sizeof m->bind, "%s", bind);
    m->host_port = (uint16_t)hp;
    m->guest_port = (uint16_t)gp;
    m->public_ = public_;
    m->created_ms = created;
    m->next = ps->maps;
    ps->maps = m;
    ps->live++;
    return m;
}

static void map_unlink(nb_portsvc_t *ps, pmap_t *m)
{
    for (pmap_t **p = &ps->maps; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            return;
        }
}

static json_t *map_json(const pmap_t *m)
{
    char t[40];
    nb_events_format_time(m->created_ms, t, sizeof t);
    return json_pack("{s:I, s:s, s:s, s:i, s:i, s:b, s:b, s:s?, s:i, s:s}", "id", (json_int_t)m->id,
                     "vm", m->vm, "bind", m->bind, "host_port", m->host_port, "guest_port",
                     m->guest_port, "public", m->public_, "listening", m->listening, "error",
                     m->err[0] ? m->err : NULL, "connections", (int)m->nconns, "created", t);
}

/* ------------------------------------------------------------ sqlite */

static sqlite3 *db_of(nb_portsvc_t *ps)
{
    return ps->d->store ? nb_store_db(ps->d->store) : NULL;
}

static int db_load(nb_portsvc_t *ps)
{
    sqlite3 *db = db_of(ps);
    sqlite3_stmt *st = NULL;
    if (!db)
        return 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, vm, bind, host_port, guest_port, public, created_at "
                           "FROM port_maps ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return NB_EINTERNAL;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *vm = (const char *)sqlite3_column_text(st, 1);
        const char *bind = (const char *)sqlite3_column_text(st, 2);
        if (!vm || !bind)
            continue;
        map_new(ps, sqlite3_column_int64(st, 0), vm, bind, sqlite3_column_int(st, 3),
                sqlite3_column_int(st, 4), sqlite3_column_int(st, 5), sqlite3_column_int64(st, 6));
    }
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? 0 : NB_EINTERNAL;
}

static int64_t db_insert(nb_portsvc_t *ps, const pmap_t *m)
{
    sqlite3 *db = db_of(ps);
    sqlite3_stmt *st = NULL;
    if (!db)
        return NB_ESTATE;
    int r = sqlite3_prepare_v2(db,
                               "INSERT INTO port_maps (vm, bind, host_port, guest_port, public, "
                               "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                               -1, &st, NULL);
    if (r == SQLITE_OK) {
        sqlite3_bind_text(st, 1, m->vm, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, m->bind, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, m->host_port);
        sqlite3_bind_int(st, 4, m->guest_port);
        sqlite3_bind_int(st, 5, m->public_);
        sqlite3_bind_int64(st, 6, m->created_ms);
        r = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE)
        return r == SQLITE_CONSTRAINT ? NB_EEXIST : NB_EINTERNAL;
    return sqlite3_last_insert_rowid(db);
}

static void db_delete(nb_portsvc_t *ps, int64_t id)
{
    sqlite3 *db = db_of(ps);
    sqlite3_stmt *st = NULL;
    if (db &&
        sqlite3_prepare_v2(db, "DELETE FROM port_maps WHERE id = ?", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) != SQLITE_DONE)
            nb_log(NB_LOG_ERR, "port_maps: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
}

/* ------------------------------------------------------------ service */

static void on_event(const json_t *ev, void *ud)
{
    nb_portsvc_t *ps = ud;
    const char *type = nb_json_str(ev, "type");
    const char *vm = nb_json_str(ev, "vm");
    if (!type || !vm)
        return;
    if (strcmp(type, "vm.removed") == 0) {
        for (pmap_t *m = ps->maps, *next; m; m = next) {
            next = m->next;
            if (strcmp(m->vm, vm) == 0)
                nb_portsvc_rm(ps, m->id);
        }
    } else if (strcmp(type, "vm.started") == 0 || strcmp(type, "vm.reattached") == 0) {
        /* A port that was busy when the daemon started gets another try. */
        for (pmap_t *m = ps->maps; m; m = m->next)
            if (strcmp(m->vm, vm) == 0 && !m->listening)
                map_listen(m);
    }
}

int nb_portsvc_new(nb_daemon_t *d, nb_portsvc_t **out, char *err, size_t errsz)
{
    *out = NULL;
    nb_portsvc_t *ps = calloc(1, sizeof *ps);
    if (!ps)
        return -ENOMEM;
    ps->d = d;
    ps->loop = d->loop;
    int r = db_load(ps);
    if (r < 0) {
        snprintf(err, errsz, "cannot load the port mappings");
        nb_portsvc_free(ps);
        return r;
    }
    for (pmap_t *m = ps->maps; m; m = m->next)
        if (map_listen(m) < 0)
            nb_log(NB_LOG_WARN, "port mapping %s:%u -> vm %s:%u: %s", m->bind, m->host_port, m->vm,
                   m->guest_port, m->err);
    if (d->events && nb_events_subscribe(d->events, on_event, ps, &ps->evsub) < 0)
        ps->evsub = 0;
    *out = ps;
    return 0;
}

void nb_portsvc_free(nb_portsvc_t *ps)
{
    if (!ps || ps->freed)
        return;
    ps->freed = 1;
    if (ps->evsub && ps->d->events)
        nb_events_unsubscribe(ps->d->events, ps->evsub);
    nb_ports_host_close_all(ps);
    pmap_t *m = ps->maps;
    ps->maps = NULL;
    ps->live++;
    while (m) {
        pmap_t *next = m->next;
        map_close(m);
        m = next;
    }
    ps->live--;
    nb_ports_maybe_free(ps);
}

static int is_loopback(const char *bind)
{
    nb_ipaddr_t ip;
    if (!nb_ip_parse(bind, strlen(bind), &ip))
        return 0;
    static const uint8_t v6lo[16] = {[15] = 1};
    return ip.family == AF_INET ? ip.a[0] == 127 : memcmp(ip.a, v6lo, 16) == 0;
}

int nb_portsvc_add(nb_portsvc_t *ps, const char *vm, const char *bind, int host_port,
                   int guest_port, int public_, json_t **out, char *err, size_t errsz)
{
    *out = NULL;
    if (!bind)
        bind = "127.0.0.1";
    struct in_addr a4;
    struct in6_addr a6;
    char canon[INET6_ADDRSTRLEN];
    if (inet_pton(AF_INET, bind, &a4) == 1) {
        inet_ntop(AF_INET, &a4, canon, sizeof canon);
    } else if (inet_pton(AF_INET6, bind, &a6) == 1) {
        inet_ntop(AF_INET6, &a6, canon, sizeof canon);
    } else {
        snprintf(err, errsz, "the bind address must be an IP address such as 127.0.0.1 or ::1");
        return NB_EINVAL;
    }
    if (host_port < 1 || host_port > 65535 || guest_port < 1 || guest_port > 65535) {
        snprintf(err, errsz, "ports must be between 1 and 65535");
        return NB_EINVAL;
    }
    int loop_ = is_loopback(canon);
    if (!loop_ && !public_) {
        snprintf(err, errsz,
                 "%s is not a loopback address: anyone who can reach it could connect to the "
                 "VM; pass public=true (CLI: --public) to do it anyway",
                 canon);
        return NB_EINVAL;
    }
    if (!ps->d->vmm || !nb_vmm_find(ps->d->vmm, vm)) {
        snprintf(err, errsz, "no VM named '%s'", vm);
        return NB_ENOTFOUND;
    }
    for (pmap_t *m = ps->maps; m; m = m->next)
        if (m->host_port == host_port &&
            (strcmp(m->bind, canon) == 0 || !is_loopback(m->bind) || !loop_)) {
            snprintf(err, errsz, "host port %d is already mapped (to VM '%s', id %lld)", host_port,
                     m->vm, (long long)m->id);
            return NB_EEXIST;
        }
    pmap_t *m = map_new(ps, 0, vm, canon, host_port, guest_port, !loop_, nb_events_now_ms());
    if (!m)
        return -ENOMEM;
    int r = map_listen(m);
    if (r < 0) {
        snprintf(err, errsz, "cannot listen on %s:%d: %s", canon, host_port, m->err);
        map_unlink(ps, m);
        map_close(m);
        return r;
    }
    int64_t id = db_insert(ps, m);
    if (id < 0) {
        snprintf(err, errsz, "cannot store the mapping: %s", nb_strerror((int)id));
        map_unlink(ps, m);
        map_close(m);
        return (int)id;
    }
    m->id = id;
    if (ps->d->audit)
        nb_audit_append(ps->d->audit, "port.added", vm, canon, host_port,
                        json_pack("{s:i, s:b}", "guest_port", guest_port, "public", !loop_));
    if (!loop_)
        nb_log(NB_LOG_WARN, "port mapping on public address %s:%d -> vm %s:%d", canon, host_port,
               vm, guest_port);
    *out = map_json(m);
    return 0;
}

int nb_portsvc_rm(nb_portsvc_t *ps, int64_t id)
{
    for (pmap_t *m = ps->maps; m; m = m->next) {
        if (m->id != id)
            continue;
        map_unlink(ps, m);
        db_delete(ps, id);
        if (ps->d->audit)
            nb_audit_append(ps->d->audit, "port.removed", m->vm, m->bind, m->host_port,
                            json_pack("{s:i}", "guest_port", m->guest_port));
        map_close(m);
        return 0;
    }
    return NB_ENOTFOUND;
}

int64_t nb_portsvc_find(nb_portsvc_t *ps, const char *vm, int port)
{
    for (pmap_t *m = ps->maps; m; m = m->next)
        if (m->host_port == port && (!vm || strcmp(m->vm, vm) == 0))
            return m->id;
    return 0;
}

json_t *nb_portsvc_list(nb_portsvc_t *ps, const char *vm)
{
    json_t *a = json_array();
    /* Oldest first: the list is newest first. */
    size_t n = 0;
    for (pmap_t *m = ps->maps; m; m = m->next)
        n++;
    for (size_t i = n; a && i > 0; i--) {
        pmap_t *m = ps->maps;
        for (size_t k = 1; k < i; k++)
            m = m->next;
        if (!vm || strcmp(vm, m->vm) == 0)
            json_array_append_new(a, map_json(m));
    }
    return a;
}
