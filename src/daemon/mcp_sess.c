/* MCP bridge sessions (see mcp.h): one host client, one server process in
 * the VM (stdio servers), or the HTTP server listening in the guest (each
 * message one POST through a `tcp` stream: mcp_uphttp.c).
 *
 * States: IDLE (no process) -> WAIT (waiting for the VM's agent) -> RUN
 * (exec stream open) -> IDLE again when the process exits. A client message
 * in IDLE starts the process; when the client had initialized the dead one,
 * its `initialize` is replayed first (REPLAY) and its answer swallowed, so
 * the client does not notice the restart beyond the requests that were in
 * flight, which get a JSON-RPC error. Client messages wait in a bounded
 * queue meanwhile. Requests the dead process never read (the agent's
 * `stdin_read` count, protocol.md §6) are not in flight: they go to the
 * next process, once. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/audit.h"
#include "daemon/egress/gate.h"
#include "daemon/mcp_int.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/json.h"
#include "lib/mux.h"

/* S_EXITED: the agent said the server process is gone, its stream not yet
 * closed; what the client sends meanwhile waits for the restart. */
enum { S_IDLE, S_WAIT, S_RUN, S_REPLAY, S_EXITED };
enum { P_OTHER, P_LIST, P_CALL };

typedef struct pend {
    struct pend *next;
    char key[160];
    int type;
    char tool[NB_MCP_TOOL_MAX + 1];
    const char *decision, *reason;
    uint64_t t0;
    size_t req_bytes;
    /* Stdio servers: written to the current process at byte `off` of its
     * stdin (kept to go to the next process if this one never read it). */
    json_t *msg;
    uint64_t off;
    int requeued; /* once only: a server that dies unread twice fails it */
} pend_t;

typedef struct ask {
    struct ask *next;
    nb_mcp_sess_t *s;
    nb_gate_wait_t *wait;
    nb_jsonrpc_msg_t msg;
    char key[160];
    char tool[NB_MCP_TOOL_MAX + 1];
} ask_t;

struct nb_mcp_sess {
    nb_mcp_sess_t *next, *prev;
    nb_mcp_t *m;
    mcp_server_t *srv;
    nb_mcp_sess_cbs_t cbs;
    void *ud;
    int state;
    int dead;    /* closed while the VM wait was pending: freed by its callback */
    int waiting; /* a nb_vmm_when_ready callback is due */
    nb_muxsess_stream_t *st;
    nb_jsonrpc_lines_t lines;
    json_t *init_req; /* the client's initialize, for replays */
    int initialized;  /* the client sent notifications/initialized */
    unsigned starts;  /* processes started */
    json_t *queue;    /* client messages held (array) */
    pend_t *pend;
    unsigned npend;
    ask_t *asks;
    char replay_key[64];
    int log_fd;
    char up_sid[NB_MCP_SID_MAX]; /* HTTP servers: their Mcp-Session-Id */
    nb_mcp_uphttp_t **ups;       /* HTTP servers: exchanges in flight */
    size_t nups;
    nb_mcp_uphttp_t *up_get; /* HTTP servers: the GET stream, one of ups */
    int up_get_off;          /* the server offers none (405 or an error) */
    uint64_t in_bytes;       /* stdin bytes written to the current process */
    int64_t in_read;         /* of them, what it may have read (exit notice); -1 unknown */
};

static void pend_free(pend_t *p)
{
    if (p)
        json_decref(p->msg);
    free(p);
}

static void deliver(nb_mcp_sess_t *s, const json_t *msg)
{
    if (s->cbs.on_msg)
        s->cbs.on_msg(s->ud, msg);
}

static void reply_error(nb_mcp_sess_t *s, const json_t *id, int code, const char *msg)
{
    json_t *e = nb_jsonrpc_error(id, code, msg);
    if (e)
        deliver(s, e);
    json_decref(e);
}

/* ------------------------------------------------------------ servers
 * What sessions and the endpoints need of the registry (mcp.c, above
 * both, changes it). */

int nb_mcp_valid_name(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len < 1 || len > NB_MCP_NAME_MAX || !strchr("abcdefghijklmnopqrstuvwxyz0123456789", n[0]))
        return 0;
    return strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789_-") == len;
}

int nb_mcp_valid_tool(const char *t)
{
    size_t len = t ? strlen(t) : 0;
    if (len < 1 || len > NB_MCP_TOOL_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (t[i] <= ' ' || t[i] > '~')
            return 0;
    return 1;
}

size_t nb_mcp_frame_max(const nb_mcp_t *m)
{
    return m->frame_max;
}

mcp_server_t *nb_mcp_find(nb_mcp_t *m, const char *vm, const char *name)
{
    for (mcp_server_t *s = m->servers; s; s = s->next)
        if (!strcmp(s->vm, vm) && !strcmp(s->name, name))
            return s;
    return NULL;
}

void nb_mcp_server_free(mcp_server_t *s)
{
    json_decref(s->argv);
    json_decref(s->policy);
    sodium_memzero(s->token, sizeof s->token);
    free(s);
}

void nb_mcp_server_unref(mcp_server_t *s)
{
    if (--s->refs == 0 && s->removed)
        nb_mcp_server_free(s);
}

int nb_mcp_action_parse(const char *a)
{
    if (!a)
        return 0;
    return !strcmp(a, "allow")  ? MCP_ALLOW
           : !strcmp(a, "deny") ? MCP_DENY
           : !strcmp(a, "ask")  ? MCP_ASK
                                : 0;
}

int nb_mcp_policy_of(const mcp_server_t *s, const char *tool)
{
    int a = nb_mcp_action_parse(json_string_value(json_object_get(s->policy, tool)));
    if (!a)
        a = nb_mcp_action_parse(json_string_value(json_object_get(s->policy, "*")));
    return a ? a : MCP_ALLOW;
}

int nb_mcp_log_path(nb_mcp_t *m, const char *vm, const char *name, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%s/%s.%s.log", m->dir, vm, name);
    return n < 0 || (size_t)n >= outsz ? NB_ETOOBIG : 0;
}

/* ------------------------------------------------------------ the log */

/* The server's stderr, and the bridge's notes about it, in one file that
 * rotates once past NB_MCP_LOG_MAX (one old generation kept). */
static void log_write(nb_mcp_sess_t *s, const void *p, size_t n)
{
    char path[NB_HOME_PATH_MAX + 160];
    if (nb_mcp_log_path(s->m, s->srv->vm, s->srv->name, path, sizeof path) < 0)
        return;
    struct stat stt;
    if (s->log_fd >= 0 && fstat(s->log_fd, &stt) == 0 && stt.st_size > (off_t)NB_MCP_LOG_MAX) {
        char old[NB_HOME_PATH_MAX + 170];
        snprintf(old, sizeof old, "%s.1", path);
        rename(path, old);
        close(s->log_fd);
        s->log_fd = -1;
    }
    if (s->log_fd < 0)
        s->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s->log_fd >= 0 && write(s->log_fd, p, n) < 0)
        nb_log(NB_LOG_DEBUG, "mcp: cannot write %s: %s", path, strerror(errno));
}

static void log_note(nb_mcp_sess_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_note(nb_mcp_sess_t *s, const char *fmt, ...)
{
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof b - 2)
        n = sizeof b - 2;
    b[n++] = '\n';
    log_write(s, "[nilbox] ", 9);
    log_write(s, b, (size_t)n);
}

/* ------------------------------------------------------------ audit */

static void audit_call(nb_mcp_sess_t *s, const char *tool, const char *decision, const char *reason,
                       uint64_t t0, size_t req_bytes, size_t resp_bytes, int is_error)
{
    nb_daemon_t *d = s->m->d;
    if (!d->audit)
        return;
    json_t *detail = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "server", s->srv->name, "tool",
                               tool, "decision", decision, "reason", reason, "request_bytes",
                               (json_int_t)req_bytes, "response_bytes", (json_int_t)resp_bytes);
    if (detail && t0)
        json_object_set_new(detail, "duration_ms", json_real((double)(uv_hrtime() - t0) / 1e6));
    if (detail && is_error >= 0)
        json_object_set_new(detail, "error", json_boolean(is_error));
    nb_audit_append(d->audit, "mcp.tool", s->srv->vm, s->srv->name, 0, detail);
}

/* ------------------------------------------------------------ pending */

static pend_t *pend_take(nb_mcp_sess_t *s, const char *key)
{
    for (pend_t **pp = &s->pend; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->key, key)) {
            pend_t *p = *pp;
            *pp = p->next;
            s->npend--;
            return p;
        }
    return NULL;
}

/* The process is gone: every request it had gets an error now. */
static int queued(const json_t *queue, const char *key)
{
    size_t i;
    json_t *v;
    json_array_foreach (queue, i, v) {
        char k[160];
        nb_jsonrpc_id_key(json_object_get(v, "id"), k, sizeof k);
        if (k[0] && !strcmp(k, key))
            return 1;
    }
    return 0;
}

/* Answers every pending request with an error, except those still in
 * `keep` (a queue of messages not yet sent to any server). */
static void fail_pending(nb_mcp_sess_t *s, const char *why, const json_t *keep)
{
    pend_t **pp = &s->pend;
    while (*pp) {
        pend_t *p = *pp;
        if (keep && queued(keep, p->key)) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        s->npend--;
        if (p->type == P_CALL)
            audit_call(s, p->tool, p->decision, p->reason, p->t0, p->req_bytes, 0, 1);
        json_t *id = NULL;
        if (!strncmp(p->key, "s:", 2))
            id = json_string(p->key + 2);
        else
            id = json_integer(strtoll(p->key + 2, NULL, 10));
        reply_error(s, id, NB_JSONRPC_UNAVAILABLE, why);
        json_decref(id);
        pend_free(p);
    }
}

/* ------------------------------------------------------------ server side */

static int write_line(nb_mcp_sess_t *s, const json_t *msg)
{
    char *t = json_dumps(msg, JSON_COMPACT);
    if (!t)
        return -ENOMEM;
    size_t n = strlen(t);
    t[n] = '\n'; /* json_dumps NUL-terminates: room for the newline */
    int r = s->st ? nb_muxsess_stream_write_owned(s->st, NB_MUX_CHAN_STDIO, t, n + 1, free)
                  : NB_ECLOSED;
    if (!s->st)
        free(t);
    if (r == 0)
        s->in_bytes += n + 1;
    return r;
}

/* Filters a tools/list answer: denied tools are not listed. */
static void filter_tools(nb_mcp_sess_t *s, json_t *msg)
{
    json_t *tools = json_object_get(json_object_get(msg, "result"), "tools");
    if (!json_is_array(tools))
        return;
    for (size_t i = json_array_size(tools); i-- > 0;) {
        const char *name = json_string_value(json_object_get(json_array_get(tools, i), "name"));
        if (!name || nb_mcp_policy_of(s->srv, name) == MCP_DENY)
            json_array_remove(tools, i);
    }
}

static void flush_queue(nb_mcp_sess_t *s);
static void start(nb_mcp_sess_t *s);

static void on_server_msg(nb_mcp_sess_t *s, nb_jsonrpc_msg_t *msg, size_t bytes)
{
    if (msg->kind != NB_JSONRPC_RESPONSE) {
        deliver(s, msg->msg);
        return;
    }
    char key[160];
    nb_jsonrpc_id_key(msg->id, key, sizeof key);
    if (s->state == S_REPLAY && !strcmp(key, s->replay_key)) {
        /* The replayed initialize: its answer is ours, not the client's. */
        s->state = S_RUN;
        log_note(s, "restarted server initialized again");
        if (s->initialized) {
            json_t *n =
                json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", "notifications/initialized");
            write_line(s, n);
            json_decref(n);
        }
        flush_queue(s);
        return;
    }
    pend_t *p = key[0] ? pend_take(s, key) : NULL;
    if (key[0] && !p) {
        /* Every client request is pending until answered, so this answers
         * none in flight: most likely one the client cancelled, which a
         * server may still answer in a race (MCP: the client SHOULD ignore
         * it; an SDK client reports an error). It stops here. */
        log_note(s, "an answer to a request not in flight (cancelled?) dropped");
        return;
    }
    if (p && p->type == P_LIST)
        filter_tools(s, msg->msg);
    if (p && p->type == P_CALL) {
        json_t *res = json_object_get(msg->msg, "result");
        int err =
            json_object_get(msg->msg, "error") || json_is_true(json_object_get(res, "isError"));
        audit_call(s, p->tool, p->decision, p->reason, p->t0, p->req_bytes, bytes, err);
    }
    pend_free(p);
    deliver(s, msg->msg);
}

static void on_line(void *ud, nb_iov_t line, int oversize)
{
    nb_mcp_sess_t *s = ud;
    nb_jsonrpc_msg_t msg;
    json_t *err_id = NULL;
    char why[128];
    int r = oversize ? NB_JSONRPC_TOO_BIG
                     : nb_jsonrpc_parse(line, s->m->frame_max, &msg, &err_id, why, sizeof why);
    if (r < 0) {
        if (oversize)
            snprintf(why, sizeof why, "message over %zu bytes", s->m->frame_max);
        log_note(s, "malformed message from the server dropped: %s", why);
        char text[200];
        snprintf(text, sizeof text, "the MCP server sent a malformed message: %s", why);
        /* A request of the client's that the bad frame answered gets the
         * error under its id; anything else goes out under id null. */
        char key[160] = "";
        nb_jsonrpc_id_key(err_id, key, sizeof key);
        pend_t *p = key[0] ? pend_take(s, key) : NULL;
        if (p && p->type == P_CALL)
            audit_call(s, p->tool, p->decision, p->reason, p->t0, p->req_bytes, line.len, 1);
        reply_error(s, p ? err_id : NULL, NB_JSONRPC_INTERNAL, text);
        pend_free(p);
        json_decref(err_id);
        return;
    }
    on_server_msg(s, &msg, line.len);
    nb_jsonrpc_msg_clear(&msg);
}

static void st_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    nb_mcp_sess_t *s = ud;
    if (chan == NB_MUX_CHAN_STDIO) {
        if (nb_jsonrpc_lines_feed(&s->lines, d.p, d.len, on_line, s) < 0)
            log_note(s, "out of memory reading the server");
    } else if (chan == NB_MUX_CHAN_STDERR) {
        log_write(s, d.p, d.len);
    } else if (chan == NB_MUX_CHAN_CTL) {
        json_t *m = NULL;
        if (nb_json_parse(d, &m, NULL, 0) == 0) {
            /* The process is gone; the stream closes once its output is out.
             * Client messages from now on are for the next server. */
            if (s->state == S_RUN && (json_object_get(m, "exit") || json_object_get(m, "signal")))
                s->state = S_EXITED;
            json_t *rd = json_object_get(m, "stdin_read");
            if (json_is_integer(rd) && json_integer_value(rd) >= 0)
                s->in_read = json_integer_value(rd);
            if (json_is_integer(json_object_get(m, "exit")))
                log_note(s, "server exited with status %" JSON_INTEGER_FORMAT,
                         json_integer_value(json_object_get(m, "exit")));
            else if (json_is_integer(json_object_get(m, "signal")))
                log_note(s, "server killed by signal %" JSON_INTEGER_FORMAT,
                         json_integer_value(json_object_get(m, "signal")));
        }
        json_decref(m);
    }
    if (s->st)
        nb_muxsess_stream_consume(st, d.len);
}

/* The agent finished the stream once the process exited and its output
 * was out: our FIN completes it, and st_close follows. */
static void st_fin(nb_muxsess_stream_t *st, void *ud)
{
    (void)ud;
    nb_muxsess_stream_fin(st);
}

static int by_off(const void *a, const void *b)
{
    const pend_t *x = *(pend_t *const *)a, *y = *(pend_t *const *)b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* The requests written to the process that exited past the point it read
 * to (the agent's `stdin_read`: they were still in the pipe, or came after
 * its death) never reached it: they go first in the queue for the next
 * process rather than fail with this one. Returns how many. */
static size_t requeue_unread(nb_mcp_sess_t *s, uint64_t read)
{
    pend_t *v[NB_MCP_PENDING_MAX];
    size_t n = 0;
    for (pend_t *p = s->pend; p && n < NB_MCP_PENDING_MAX; p = p->next)
        if (p->msg && !p->requeued && p->off >= read)
            v[n++] = p;
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, by_off);
    json_t *q = json_array();
    if (!q)
        return 0;
    for (size_t i = 0; i < n; i++) {
        v[i]->requeued = 1;
        json_array_append_new(q, v[i]->msg);
        v[i]->msg = NULL;
    }
    json_array_extend(q, s->queue);
    json_decref(s->queue);
    s->queue = q;
    log_note(s, "%zu request(s) the server never read go to the next one", n);
    return n;
}

static void st_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    nb_mcp_sess_t *s = ud;
    (void)st;
    s->st = NULL;
    if (err)
        log_note(s, "server stream ended: %s (%s)", msg, nb_mux_code_name(code));
    int replaying = s->state == S_REPLAY, exited = s->state == S_EXITED;
    s->state = S_IDLE;
    nb_jsonrpc_lines_free(&s->lines);
    /* Messages queued after the exit notice, and those the process never
     * read, were not seen by this server: they start the next one.
     * Everything else pending was sent to this one and is answered here
     * (every request is pending). */
    size_t unread = !replaying && s->in_read >= 0 ? requeue_unread(s, (uint64_t)s->in_read) : 0;
    int again = !replaying && (exited || unread) && json_array_size(s->queue) > 0;
    fail_pending(s,
                 replaying ? "the MCP server in the VM exited while restarting"
                           : "the MCP server in the VM exited; the next message starts it again",
                 again ? s->queue : NULL);
    if (again) {
        start(s);
        return;
    }
    /* While restarting: the rest (notifications) goes with it, rather than
     * a restart loop. */
    json_array_clear(s->queue);
}

static const nb_muxsess_stream_cbs_t st_cbs = {
    .on_data = st_data, .on_fin = st_fin, .on_close = st_close};

static void on_ready(void *ud, int r, const char *msg, json_t *res)
{
    nb_mcp_sess_t *s = ud;
    (void)res;
    s->waiting = 0;
    if (s->dead) {
        free(s);
        return;
    }
    nb_daemon_t *d = s->m->d;
    nb_vm_t *vm = r == 0 && d->vmm ? nb_vmm_find(d->vmm, s->srv->vm) : NULL;
    nb_muxsess_t *ms = vm ? nb_vm_session(vm) : NULL;
    char why[300];
    if (!ms) {
        snprintf(why, sizeof why, "the VM '%s' is not ready: %s", s->srv->vm,
                 msg     ? msg
                 : r < 0 ? nb_strerror(r)
                         : "its agent is not connected");
        goto fail;
    }
    if (s->srv->is_http) {
        /* Nothing to start: the server listens in the guest already. */
        s->state = S_RUN;
        flush_queue(s);
        return;
    }
    /* stdin_read: the exit notice says how much of stdin the process read. */
    json_t *args = json_pack("{s:O, s:b, s:b}", "argv", s->srv->argv, "stdin", 1, "stdin_read", 1);
    json_t *genv = d->guest.env ? d->guest.env(d->guest.ud, s->srv->vm) : NULL;
    if (genv)
        json_object_set_new(args, "env", genv);
    if (nb_vm_user(vm)[0])
        json_object_set_new(args, "user", json_string(nb_vm_user(vm)));
    char *js = args ? json_dumps(args, JSON_COMPACT) : NULL;
    json_decref(args);
    nb_jsonrpc_lines_init(&s->lines, s->m->frame_max);
    r = js ? nb_muxsess_open(ms, "exec", nb_iov(js, strlen(js)), &st_cbs, s, &s->st) : -ENOMEM;
    free(js);
    if (r < 0) {
        s->st = NULL;
        nb_jsonrpc_lines_free(&s->lines);
        snprintf(why, sizeof why, "cannot start the MCP server in the VM: %s", nb_strerror(r));
        goto fail;
    }
    s->starts++;
    s->in_bytes = 0;
    s->in_read = -1;
    log_note(s, "server started (start %u)", s->starts);
    if (s->init_req && s->starts > 1) {
        json_t *rq = json_deep_copy(s->init_req);
        snprintf(s->replay_key, sizeof s->replay_key, "s:nilbox-replay-%u", s->starts);
        json_object_set_new(rq, "id", json_string(s->replay_key + 2));
        s->state = S_REPLAY;
        write_line(s, rq);
        json_decref(rq);
        return;
    }
    s->state = S_RUN;
    flush_queue(s);
    return;
fail:
    s->state = S_IDLE;
    log_note(s, "%s", why);
    json_array_clear(s->queue);
    fail_pending(s, why, NULL);
}

static void start(nb_mcp_sess_t *s)
{
    if (s->state != S_IDLE)
        return;
    s->state = S_WAIT;
    s->waiting = 1;
    nb_vmm_when_ready(s->m->d->vmm, s->srv->vm, NB_MCP_START_WAIT_MS, on_ready, s);
}

static void up_fail(void *ud, const json_t *id, const char *why)
{
    nb_mcp_sess_t *s = ud;
    char key[160];
    nb_jsonrpc_id_key(id, key, sizeof key);
    pend_t *p = pend_take(s, key);
    if (!p)
        return;
    if (p->type == P_CALL)
        audit_call(s, p->tool, p->decision, p->reason, p->t0, p->req_bytes, 0, 1);
    pend_free(p);
    log_note(s, "%s", why);
    reply_error(s, id, NB_JSONRPC_UNAVAILABLE, why);
}

static void up_done(void *ud, nb_mcp_uphttp_t *x)
{
    nb_mcp_sess_t *s = ud;
    if (x == s->up_get) {
        /* 405 (or any error): the server has no GET stream; don't ask again.
         * A stream it ended is asked for again with the next client message. */
        int st = nb_mcp_uphttp_status(x);
        s->up_get = NULL;
        if (st != 200) {
            s->up_get_off = 1;
            if (st != 405)
                log_note(s, "no GET stream from the server (HTTP status %d)", st);
        }
    }
    for (size_t i = 0; i < s->nups; i++)
        if (s->ups[i] == x) {
            s->ups[i] = s->ups[--s->nups];
            return;
        }
}

/* An HTTP server's message: one POST of its own (msg NULL: the GET stream). */
static void post(nb_mcp_sess_t *s, json_t *msg)
{
    nb_daemon_t *d = s->m->d;
    nb_vm_t *vm = d->vmm ? nb_vmm_find(d->vmm, s->srv->vm) : NULL;
    nb_muxsess_t *ms = vm ? nb_vm_session(vm) : NULL;
    nb_mcp_up_cbs_t cbs = {on_line, up_fail, up_done, s};
    nb_mcp_uphttp_t *x = NULL;
    int r = NB_ESTATE;
    if (ms && s->nups < NB_MCP_PENDING_MAX) {
        nb_mcp_uphttp_t **v = realloc(s->ups, (s->nups + 1) * sizeof *v);
        if (v)
            s->ups = v;
        r = v ? nb_mcp_uphttp_post(ms, s->srv->guest_port, s->srv->guest_path, s->up_sid, msg,
                                   s->m->frame_max, &cbs, &x)
              : -ENOMEM;
    }
    if (r == 0) {
        s->ups[s->nups++] = x;
        if (!msg)
            s->up_get = x;
        else if (s->initialized && !s->up_get && !s->up_get_off)
            post(s, NULL); /* after initialization: the server may talk on its own */
        return;
    }
    if (!msg) {
        s->up_get_off = 1;
        return;
    }
    json_t *id = json_object_get(msg, "id");
    if (id && json_object_get(msg, "method"))
        up_fail(s, id,
                ms ? "cannot send to the MCP server in the VM" : "the VM's agent is not connected");
}

/* A request went to the process at stdin offset `off`: remembered with it. */
static void note_sent(nb_mcp_sess_t *s, json_t *msg, uint64_t off)
{
    char key[160];
    nb_jsonrpc_id_key(json_object_get(msg, "id"), key, sizeof key);
    for (pend_t *p = s->pend; p && key[0]; p = p->next)
        if (!strcmp(p->key, key)) {
            json_decref(p->msg);
            p->msg = json_incref(msg);
            p->off = off;
            return;
        }
}

/* Sends a client message to the server now, or holds it. */
static void forward(nb_mcp_sess_t *s, json_t *msg)
{
    if (s->state == S_RUN && json_array_size(s->queue) == 0) {
        if (s->srv->is_http) {
            post(s, msg);
            return;
        }
        uint64_t off = s->in_bytes;
        if (write_line(s, msg) == 0 && json_object_get(msg, "method"))
            note_sent(s, msg, off);
        return;
    }

    if (json_array_size(s->queue) >= NB_MCP_QUEUE_MAX) {
        if (json_object_get(msg, "id") && json_object_get(msg, "method"))
            reply_error(s, json_object_get(msg, "id"), NB_JSONRPC_UNAVAILABLE,
                        "too many messages while the MCP server starts");
        return;
    }
    json_array_append(s->queue, msg);
    start(s);
}

static void flush_queue(nb_mcp_sess_t *s)
{
    json_t *q = s->queue;
    s->queue = json_array();
    size_t i;
    json_t *v;
    json_array_foreach (q, i, v)
        forward(s, v);
    json_decref(q);
}

/* ------------------------------------------------------------ client side */

static void send_call(nb_mcp_sess_t *s, nb_jsonrpc_msg_t *msg, const char *tool,
                      const char *decision, const char *reason)
{
    pend_t *p = calloc(1, sizeof *p);
    if (!p) {
        reply_error(s, msg->id, NB_JSONRPC_INTERNAL, "out of memory");
        return;
    }
    p->type = P_CALL;
    nb_jsonrpc_id_key(msg->id, p->key, sizeof p->key);
    snprintf(p->tool, sizeof p->tool, "%s", tool);
    p->decision = decision;
    p->reason = reason;
    p->t0 = uv_hrtime();
    char *t = json_dumps(msg->msg, JSON_COMPACT);
    p->req_bytes = t ? strlen(t) : 0;
    free(t);
    p->next = s->pend;
    s->pend = p;
    s->npend++;
    forward(s, msg->msg);
}

static void ask_unlink(nb_mcp_sess_t *s, ask_t *a)
{
    for (ask_t **pp = &s->asks; *pp; pp = &(*pp)->next)
        if (*pp == a) {
            *pp = a->next;
            return;
        }
}

static void on_ask(void *ud, const nb_gate_verdict_t *v)
{
    ask_t *a = ud;
    nb_mcp_sess_t *s = a->s;
    a->wait = NULL;
    ask_unlink(s, a);
    const char *reason = nb_gate_why_name(v->why);
    if (v->why == NB_GATE_WHY_ALLOW_ALWAYS)
        s->m->remember(s->srv, a->tool, "allow");
    else if (v->why == NB_GATE_WHY_DENY_ALWAYS)
        s->m->remember(s->srv, a->tool, "deny");
    if (v->allowed) {
        send_call(s, &a->msg, a->tool, "allow", reason);
    } else {
        audit_call(s, a->tool, "deny", reason, 0, 0, 0, -1);
        char text[300];
        snprintf(text, sizeof text, "nilbox: the call of tool '%.128s' was not allowed (%s)",
                 a->tool, reason);
        reply_error(s, a->msg.id, NB_JSONRPC_DENIED, text);
    }
    nb_jsonrpc_msg_clear(&a->msg);
    free(a);
}

static void tools_call(nb_mcp_sess_t *s, nb_jsonrpc_msg_t *msg)
{
    const char *tool =
        json_string_value(json_object_get(json_object_get(msg->msg, "params"), "name"));
    if (!tool || !nb_mcp_valid_tool(tool) || !strcmp(tool, "*")) {
        reply_error(s, msg->id, -32602, "tools/call needs params.name, a tool name");
        return;
    }
    int action = nb_mcp_policy_of(s->srv, tool);
    if (action == MCP_ALLOW) {
        send_call(s, msg, tool, "allow", "policy");
        return;
    }
    if (action == MCP_DENY) {
        audit_call(s, tool, "deny", "policy", 0, 0, 0, -1);
        char text[300];
        snprintf(text, sizeof text, "nilbox: tool '%.128s' is denied by the policy of %s/%s", tool,
                 s->srv->vm, s->srv->name);
        reply_error(s, msg->id, NB_JSONRPC_DENIED, text);
        return;
    }
    nb_gate_t *g = s->m->d->gate;
    ask_t *a = calloc(1, sizeof *a);
    if (!g || !a) {
        free(a);
        audit_call(s, tool, "deny", g ? "internal-error" : "shutdown", 0, 0, 0, -1);
        reply_error(s, msg->id, NB_JSONRPC_DENIED, "nilbox: cannot ask about this tool call now");
        return;
    }
    a->s = s;
    a->msg = *msg;
    memset(msg, 0, sizeof *msg);
    nb_jsonrpc_id_key(a->msg.id, a->key, sizeof a->key);
    snprintf(a->tool, sizeof a->tool, "%s", tool);
    char subject[NB_MCP_NAME_MAX + NB_MCP_TOOL_MAX + 8];
    snprintf(subject, sizeof subject, "%s/%s", s->srv->name, tool);
    nb_gate_verdict_t v;
    a->next = s->asks;
    s->asks = a;
    if (nb_gate_ask(g, s->srv->vm, "mcp", subject, &v, on_ask, a, &a->wait) == 1)
        on_ask(a, &v);
}

void nb_mcp_sess_submit(nb_mcp_sess_t *s, nb_jsonrpc_msg_t *msg)
{
    if (msg->kind == NB_JSONRPC_REQUEST) {
        char key[160];
        nb_jsonrpc_id_key(msg->id, key, sizeof key);
        int dup = 0;
        for (pend_t *p = s->pend; p; p = p->next)
            dup |= !strcmp(p->key, key);
        for (ask_t *a = s->asks; a; a = a->next)
            dup |= !strcmp(a->key, key);
        if (dup || s->npend >= NB_MCP_PENDING_MAX) {
            reply_error(s, msg->id, NB_JSONRPC_INVALID_REQUEST,
                        dup ? "a request with this id is already in flight"
                            : "too many requests in flight");
            goto out;
        }
        if (!strcmp(msg->method, "tools/call")) {
            tools_call(s, msg);
            goto out;
        }
        if (!strcmp(msg->method, "initialize")) {
            json_decref(s->init_req);
            s->init_req = json_deep_copy(msg->msg);
        }
        pend_t *p = calloc(1, sizeof *p);
        if (!p) {
            reply_error(s, msg->id, NB_JSONRPC_INTERNAL, "out of memory");
            goto out;
        }
        snprintf(p->key, sizeof p->key, "%s", key);
        p->type = !strcmp(msg->method, "tools/list") ? P_LIST : P_OTHER;
        p->next = s->pend;
        s->pend = p;
        s->npend++;
    } else if (msg->kind == NB_JSONRPC_NOTIFICATION) {
        if (!strcmp(msg->method, "notifications/initialized"))
            s->initialized = 1;
        if (!strcmp(msg->method, "notifications/cancelled")) {
            /* A call still waiting for the user is withdrawn here: the
             * server never saw it. */
            char key[160];
            nb_jsonrpc_id_key(json_object_get(json_object_get(msg->msg, "params"), "requestId"),
                              key, sizeof key);
            for (ask_t *a = s->asks; a && key[0]; a = a->next)
                if (!strcmp(a->key, key)) {
                    ask_unlink(s, a);
                    nb_gate_cancel(a->wait);
                    audit_call(s, a->tool, "deny", "cancelled", 0, 0, 0, -1);
                    nb_jsonrpc_msg_clear(&a->msg);
                    free(a);
                    goto out;
                }
            /* One the server has: it goes on to the server, which SHOULD
             * not answer it (MCP), so its audit row closes now and its slot
             * is free; an answer that comes anyway is dropped. */
            pend_t *p = key[0] ? pend_take(s, key) : NULL;
            if (p && p->type == P_CALL)
                audit_call(s, p->tool, p->decision, "cancelled", p->t0, p->req_bytes, 0, -1);
            pend_free(p);
        }
    }
    forward(s, msg->msg);
out:
    nb_jsonrpc_msg_clear(msg);
}

/* ------------------------------------------------------------ life */

int nb_mcp_sess_open(nb_mcp_t *m, const char *vm, const char *name, const nb_mcp_sess_cbs_t *cbs,
                     void *ud, nb_mcp_sess_t **out)
{
    *out = NULL;
    mcp_server_t *srv = vm && name ? nb_mcp_find(m, vm, name) : NULL;
    if (!srv || m->closing)
        return NB_ENOTFOUND;
    if (m->nsess >= NB_MCP_SESS_MAX)
        return -EBUSY;
    nb_mcp_sess_t *s = calloc(1, sizeof *s);
    if (!s || !(s->queue = json_array())) {
        free(s);
        return -ENOMEM;
    }
    s->m = m;
    s->srv = srv;
    srv->refs++;
    s->cbs = *cbs;
    s->ud = ud;
    s->log_fd = -1;
    s->in_read = -1;
    s->next = m->sessions;
    if (m->sessions)
        m->sessions->prev = s;
    m->sessions = s;
    m->nsess++;
    *out = s;
    return 0;
}

static void sess_free(nb_mcp_sess_t *s)
{
    nb_mcp_t *m = s->m;
    if (s->prev)
        s->prev->next = s->next;
    else
        m->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    m->nsess--;
    if (s->st) {
        /* RST: the agent kills the server's process group. */
        nb_muxsess_stream_reset(s->st, NB_MUX_E_CANCEL, "MCP client gone");
        s->st = NULL;
        nb_jsonrpc_lines_free(&s->lines);
    }
    while (s->asks) {
        ask_t *a = s->asks;
        s->asks = a->next;
        nb_gate_cancel(a->wait);
        audit_call(s, a->tool, "deny", "client-gone", 0, 0, 0, -1);
        nb_jsonrpc_msg_clear(&a->msg);
        free(a);
    }
    while (s->pend) {
        pend_t *p = s->pend;
        s->pend = p->next;
        if (p->type == P_CALL)
            audit_call(s, p->tool, p->decision, p->reason, p->t0, p->req_bytes, 0, 1);
        pend_free(p);
    }
    for (size_t i = 0; i < s->nups; i++)
        nb_mcp_uphttp_cancel(s->ups[i]);
    free(s->ups);
    json_decref(s->init_req);
    json_decref(s->queue);
    if (s->log_fd >= 0)
        close(s->log_fd);
    nb_mcp_server_unref(s->srv);
    if (s->waiting) {
        memset(&s->cbs, 0, sizeof s->cbs);
        s->dead = 1; /* on_ready frees it */
        return;
    }
    free(s);
}

void nb_mcp_sess_close(nb_mcp_sess_t *s)
{
    if (!s)
        return;
    memset(&s->cbs, 0, sizeof s->cbs);
    sess_free(s);
}

void nb_mcp_sess_end_all(nb_mcp_t *m, mcp_server_t *srv, const char *why)
{
    for (nb_mcp_sess_t *s = m->sessions, *n; s; s = n) {
        n = s->next;
        if (srv && s->srv != srv)
            continue;
        nb_mcp_sess_cbs_t cbs = s->cbs;
        void *ud = s->ud;
        sess_free(s);
        if (cbs.on_end)
            cbs.on_end(ud, why);
    }
}
