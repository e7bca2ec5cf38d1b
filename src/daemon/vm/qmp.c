#include "daemon/vm/qmp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* Cap on one serialised command we send (arguments come from our own code,
 * but a path or a snapshot name could be long). */
#define QMP_MAX_OUT (1u << 20)
#define QMP_READ_CHUNK 65536

enum {
    ST_CONNECTING, /* uv_pipe_connect in flight */
    ST_GREETING,   /* waiting for {"QMP": ...} */
    ST_CAPS,       /* qmp_capabilities sent */
    ST_READY,
    ST_DEAD,    /* connection over, on_close delivered; waiting for nb_qmp_close */
    ST_CLOSING, /* nb_qmp_close called; freed when the handles are closed */
};

typedef struct pend {
    struct pend *next, *prev;
    uint64_t id;
    uint64_t deadline; /* uv_now() ms */
    nb_qmp_reply_cb cb;
    void *data;
    char *line; /* serialised command, not yet sent (queued before ready) */
    size_t line_len;
    int internal; /* qmp_capabilities */
} pend_t;

typedef struct {
    uv_write_t req;
    char *buf;
} wreq_t;

struct nb_qmp {
    uv_loop_t *loop;
    uv_pipe_t pipe;
    uv_timer_t timer;
    uv_connect_t conn;
    nb_qmp_opts_t o;
    int state;
    int open_handles;
    uint64_t next_id;
    uint64_t hs_deadline;
    pend_t *head, *tail;
    size_t npending;
    nb_buf_t line;
    char version[48];
    char rbuf[QMP_READ_CHUNK];
};

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void rearm_timer(nb_qmp_t *q);
static void on_timer(uv_timer_t *t);

static void pend_unlink(nb_qmp_t *q, pend_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        q->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        q->tail = p->prev;
    p->next = p->prev = NULL;
    q->npending--;
}

static void pend_free(pend_t *p)
{
    if (!p)
        return;
    free(p->line);
    free(p);
}

/* Completes one pending command: unlinks it first, so that the callback may
 * issue new commands or close the client. */
static void pend_complete(nb_qmp_t *q, pend_t *p, int r, json_t *ret, json_t *err)
{
    pend_unlink(q, p);
    if (p->cb)
        p->cb(q, r, ret, err, p->data);
    pend_free(p);
}

static void fail_pending(nb_qmp_t *q, int r)
{
    while (q->head) {
        pend_t *p = q->head;
        /* An internal entry's callback would try to act on the dead link. */
        if (p->internal) {
            pend_unlink(q, p);
            pend_free(p);
            continue;
        }
        pend_complete(q, p, r, NULL, NULL);
    }
}

/* The connection is over (not by nb_qmp_close): fail everything, tell the
 * owner once. */
static void qmp_fail(nb_qmp_t *q, int r)
{
    if (q->state == ST_DEAD || q->state == ST_CLOSING)
        return;
    int was_ready = q->state == ST_READY;
    q->state = ST_DEAD;
    uv_read_stop((uv_stream_t *)&q->pipe);
    uv_timer_stop(&q->timer);
    nb_log(was_ready ? NB_LOG_INFO : NB_LOG_WARN, "QMP connection over: %s", nb_strerror(r));
    fail_pending(q, r);
    if (q->state == ST_DEAD && q->o.on_close)
        q->o.on_close(q, r, q->o.ud);
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    nb_qmp_t *q = req->data;
    free(w->buf);
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        qmp_fail(q, status);
}

/* Takes ownership of `line`. */
static int send_line(nb_qmp_t *q, char *line, size_t len)
{
    wreq_t *w = calloc(1, sizeof(*w));
    if (!w) {
        free(line);
        return -ENOMEM;
    }
    w->buf = line;
    w->req.data = q;
    uv_buf_t b = uv_buf_init(line, (unsigned)len);
    int r = uv_write(&w->req, (uv_stream_t *)&q->pipe, &b, 1, on_write);
    if (r < 0) {
        free(line);
        free(w);
    }
    return r;
}

static int serialise(const char *cmd, json_t *args, uint64_t id, char **out, size_t *outlen)
{
    int r;
    nb_buf_t b;
    json_t *j = json_pack("{s:s, s:I}", "execute", cmd, "id", (json_int_t)id);
    *out = NULL;
    nb_buf_init(&b, QMP_MAX_OUT);
    if (!j)
        return -ENOMEM;
    if (args && json_object_set(j, "arguments", args) < 0) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = nb_json_dump(j, &b)) < 0 || (r = nb_buf_append(&b, "\n", 1)) < 0)
        goto out;
    *out = (char *)b.p;
    *outlen = b.len;
    b.p = NULL;
    r = 0;
out:
    json_decref(j);
    nb_buf_free(&b);
    return r;
}

static void flush_queued(nb_qmp_t *q)
{
    for (pend_t *p = q->head; p && q->state == ST_READY; p = p->next) {
        if (!p->line)
            continue;
        char *l = p->line;
        p->line = NULL;
        int r = send_line(q, l, p->line_len);
        if (r < 0) {
            qmp_fail(q, r);
            return;
        }
    }
}

static void rearm_timer(nb_qmp_t *q)
{
    if (q->state == ST_DEAD || q->state == ST_CLOSING)
        return;
    uint64_t next = UINT64_MAX;
    if (q->state != ST_READY)
        next = q->hs_deadline;
    for (pend_t *p = q->head; p; p = p->next)
        if (p->deadline < next)
            next = p->deadline;
    if (next == UINT64_MAX) {
        uv_timer_stop(&q->timer);
        return;
    }
    uint64_t now = uv_now(q->loop);
    uv_timer_start(&q->timer, on_timer, next > now ? next - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    nb_qmp_t *q = t->data;
    uint64_t now = uv_now(q->loop);
    if (q->state != ST_READY && q->state != ST_DEAD && q->state != ST_CLOSING &&
        now >= q->hs_deadline) {
        nb_log(NB_LOG_WARN, "QMP handshake timed out");
        qmp_fail(q, NB_ETIMEOUT);
        return;
    }
    pend_t *p = q->head;
    while (p && q->state != ST_DEAD && q->state != ST_CLOSING) {
        pend_t *next = p->next;
        if (p->deadline <= now) {
            nb_log(NB_LOG_WARN, "QMP command id %llu timed out", (unsigned long long)p->id);
            if (p->internal) {
                qmp_fail(q, NB_ETIMEOUT);
                return;
            }
            pend_complete(q, p, NB_ETIMEOUT, NULL, NULL);
            /* The callback may have completed or freed others: restart. */
            p = q->head;
            continue;
        }
        p = next;
    }
    rearm_timer(q);
}

static pend_t *pend_new(nb_qmp_t *q, uint64_t timeout_ms, nb_qmp_reply_cb cb, void *data)
{
    pend_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->id = ++q->next_id;
    p->deadline = uv_now(q->loop) + (timeout_ms ? timeout_ms : q->o.timeout_ms);
    p->cb = cb;
    p->data = data;
    p->prev = q->tail;
    if (q->tail)
        q->tail->next = p;
    else
        q->head = p;
    q->tail = p;
    q->npending++;
    return p;
}

static void handle_greeting(nb_qmp_t *q, json_t *msg)
{
    json_t *g = json_object_get(msg, "QMP");
    if (!json_is_object(g)) {
        nb_log(NB_LOG_WARN, "QMP peer did not start with a greeting");
        qmp_fail(q, NB_EPROTO);
        return;
    }
    json_t *v = json_object_get(json_object_get(g, "version"), "qemu");
    snprintf(q->version, sizeof(q->version), "%lld.%lld.%lld",
             (long long)nb_json_int(v, "major", 0), (long long)nb_json_int(v, "minor", 0),
             (long long)nb_json_int(v, "micro", 0));
    pend_t *p = pend_new(q, q->o.handshake_timeout_ms, NULL, NULL);
    char *line = NULL;
    size_t len = 0;
    int r = -ENOMEM;
    if (!p || (r = serialise("qmp_capabilities", NULL, p->id, &line, &len)) < 0 ||
        (r = send_line(q, line, len)) < 0) {
        qmp_fail(q, r);
        return;
    }
    p->internal = 1;
    q->state = ST_CAPS;
    rearm_timer(q);
}

static void handle_reply(nb_qmp_t *q, json_t *msg)
{
    json_t *jid = json_object_get(msg, "id");
    if (!json_is_integer(jid)) {
        /* QEMU answers input it could not parse without an id; we never
         * send such input, so the stream is out of sync. */
        nb_log(NB_LOG_WARN, "QMP reply without a usable id");
        qmp_fail(q, NB_EPROTO);
        return;
    }
    uint64_t id = (uint64_t)json_integer_value(jid);
    pend_t *p = q->head;
    while (p && p->id != id)
        p = p->next;
    if (!p) {
        if (id == 0 || id > q->next_id) {
            nb_log(NB_LOG_WARN, "QMP reply to id %llu that was never sent", (unsigned long long)id);
            qmp_fail(q, NB_EPROTO);
        } else {
            nb_log(NB_LOG_DEBUG, "late QMP reply to id %llu dropped", (unsigned long long)id);
        }
        return;
    }
    if (p->line) {
        nb_log(NB_LOG_WARN, "QMP reply to id %llu before it was sent", (unsigned long long)id);
        qmp_fail(q, NB_EPROTO);
        return;
    }
    json_t *ret = json_object_get(msg, "return");
    json_t *err = json_object_get(msg, "error");
    if (p->internal) {
        pend_unlink(q, p);
        pend_free(p);
        if (!ret) {
            char esc[160];
            const char *d = nb_json_str(err, "desc");
            nb_log(NB_LOG_WARN, "qmp_capabilities refused: %s",
                   nb_log_escape(esc, sizeof(esc), d ? d : "", d ? strlen(d) : 0));
            qmp_fail(q, NB_EPROTO);
            return;
        }
        q->state = ST_READY;
        nb_log(NB_LOG_DEBUG, "QMP ready (QEMU %s)", q->version);
        if (q->o.on_ready)
            q->o.on_ready(q, 0, q->o.ud);
        if (q->state == ST_READY)
            flush_queued(q);
        rearm_timer(q);
        return;
    }
    if (ret)
        pend_complete(q, p, 0, ret, NULL);
    else
        pend_complete(q, p, NB_EPROTO, NULL, json_is_object(err) ? err : NULL);
    rearm_timer(q);
}

static void handle_line(nb_qmp_t *q, nb_iov_t l)
{
    json_t *msg = NULL;
    char why[128];
    while (l.len && (l.p[l.len - 1] == '\r' || l.p[l.len - 1] == ' '))
        l.len--;
    if (l.len == 0)
        return;
    if (nb_json_parse(l, &msg, why, sizeof(why)) < 0 || !json_is_object(msg)) {
        nb_log(NB_LOG_WARN, "QMP peer sent a line that is not a JSON object");
        json_decref(msg);
        qmp_fail(q, NB_EPROTO);
        return;
    }
    if (q->state == ST_GREETING) {
        handle_greeting(q, msg);
    } else if (json_is_string(json_object_get(msg, "event"))) {
        const char *ev = json_string_value(json_object_get(msg, "event"));
        json_t *data = json_object_get(msg, "data");
        if (q->o.on_event)
            q->o.on_event(q, ev, json_is_object(data) ? data : NULL, q->o.ud);
    } else if (json_object_get(msg, "return") || json_is_object(json_object_get(msg, "error"))) {
        handle_reply(q, msg);
    } else {
        nb_log(NB_LOG_WARN, "QMP peer sent an unknown message");
        qmp_fail(q, NB_EPROTO);
    }
    json_decref(msg);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    nb_qmp_t *q = h->data;
    *buf = uv_buf_init(q->rbuf, sizeof(q->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    nb_qmp_t *q = s->data;
    if (n == UV_EOF) {
        qmp_fail(q, NB_ECLOSED);
        return;
    }
    if (n < 0) {
        qmp_fail(q, (int)n);
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t left = (size_t)n;
    while (left && (q->state == ST_GREETING || q->state == ST_CAPS || q->state == ST_READY)) {
        const uint8_t *nl = memchr(p, '\n', left);
        size_t take = nl ? (size_t)(nl - p) : left;
        if (take > q->o.max_line - q->line.len) {
            nb_log(NB_LOG_WARN, "QMP line longer than %zu bytes", q->o.max_line);
            qmp_fail(q, NB_ETOOBIG);
            return;
        }
        if (nb_buf_append(&q->line, p, take) < 0) {
            qmp_fail(q, -ENOMEM);
            return;
        }
        p += take;
        left -= take;
        if (!nl)
            break;
        p++;
        left--;
        handle_line(q, nb_buf_iov(&q->line));
        nb_buf_reset(&q->line);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    nb_qmp_t *q = req->data;
    if (q->state != ST_CONNECTING)
        return; /* closed meanwhile */
    if (status < 0) {
        qmp_fail(q, status);
        return;
    }
    q->state = ST_GREETING;
    int r = uv_read_start((uv_stream_t *)&q->pipe, on_alloc, on_read);
    if (r < 0)
        qmp_fail(q, r);
}

static void on_handle_closed(uv_handle_t *h)
{
    nb_qmp_t *q = h->data;
    if (--q->open_handles == 0) {
        nb_buf_free(&q->line);
        free(q);
    }
}

static int qmp_new(uv_loop_t *loop, const nb_qmp_opts_t *opts, nb_qmp_t **out)
{
    nb_qmp_t *q = calloc(1, sizeof(*q));
    *out = NULL;
    if (!q)
        return -ENOMEM;
    if (opts)
        q->o = *opts;
    if (!q->o.max_line)
        q->o.max_line = NB_QMP_MAX_LINE_DEFAULT;
    if (!q->o.timeout_ms)
        q->o.timeout_ms = NB_QMP_TIMEOUT_DEFAULT_MS;
    if (!q->o.handshake_timeout_ms)
        q->o.handshake_timeout_ms = q->o.timeout_ms;
    q->loop = loop;
    nb_buf_init(&q->line, q->o.max_line);
    int r = uv_pipe_init(loop, &q->pipe, 0);
    if (r < 0) {
        free(q);
        return r;
    }
    uv_timer_init(loop, &q->timer);
    q->pipe.data = q->timer.data = q->conn.data = q;
    q->open_handles = 2;
    q->hs_deadline = uv_now(loop) + q->o.handshake_timeout_ms;
    *out = q;
    return 0;
}

int nb_qmp_connect(uv_loop_t *loop, const char *path, const nb_qmp_opts_t *opts, nb_qmp_t **out)
{
    int r;
    *out = NULL;
    if (!loop || !path || !*path)
        return NB_EINVAL;
    if ((r = qmp_new(loop, opts, out)) < 0)
        return r;
    (*out)->state = ST_CONNECTING;
    uv_pipe_connect(&(*out)->conn, &(*out)->pipe, path, on_connect);
    rearm_timer(*out);
    return 0;
}

int nb_qmp_open_fd(uv_loop_t *loop, int fd, const nb_qmp_opts_t *opts, nb_qmp_t **out)
{
    int r;
    *out = NULL;
    if (!loop || fd < 0) {
        if (fd >= 0)
            close(fd);
        return NB_EINVAL;
    }
    if ((r = qmp_new(loop, opts, out)) < 0) {
        close(fd);
        return r;
    }
    nb_qmp_t *q = *out;
    if ((r = uv_pipe_open(&q->pipe, fd)) < 0) {
        close(fd);
        *out = NULL;
        q->state = ST_CLOSING;
        uv_close((uv_handle_t *)&q->pipe, on_handle_closed);
        uv_close((uv_handle_t *)&q->timer, on_handle_closed);
        return r;
    }
    q->state = ST_GREETING;
    if ((r = uv_read_start((uv_stream_t *)&q->pipe, on_alloc, on_read)) < 0) {
        *out = NULL;
        q->state = ST_CLOSING;
        uv_close((uv_handle_t *)&q->pipe, on_handle_closed);
        uv_close((uv_handle_t *)&q->timer, on_handle_closed);
        return r;
    }
    rearm_timer(q);
    return 0;
}

int nb_qmp_command(nb_qmp_t *q, const char *cmd, json_t *args, uint64_t timeout_ms,
                   nb_qmp_reply_cb cb, void *data)
{
    int r;
    char *line = NULL;
    size_t len = 0;
    if (!q || !cmd || !*cmd || !cb || (args && !json_is_object(args)))
        return NB_EINVAL;
    if (q->state == ST_DEAD || q->state == ST_CLOSING)
        return NB_ECLOSED;
    if (q->npending >= NB_QMP_MAX_PENDING)
        return NB_ETOOBIG;
    pend_t *p = pend_new(q, timeout_ms, cb, data);
    if (!p)
        return -ENOMEM;
    if ((r = serialise(cmd, args, p->id, &line, &len)) < 0) {
        pend_unlink(q, p);
        pend_free(p);
        return r;
    }
    if (q->state == ST_READY) {
        if ((r = send_line(q, line, len)) < 0) {
            pend_unlink(q, p);
            pend_free(p);
            return r;
        }
    } else {
        p->line = line;
        p->line_len = len;
    }
    rearm_timer(q);
    return 0;
}

int nb_qmp_is_ready(const nb_qmp_t *q)
{
    return q && q->state == ST_READY;
}

const char *nb_qmp_version(const nb_qmp_t *q)
{
    return q ? q->version : "";
}

void nb_qmp_close(nb_qmp_t *q)
{
    if (!q || q->state == ST_CLOSING)
        return;
    q->state = ST_CLOSING;
    uv_timer_stop(&q->timer);
    fail_pending(q, NB_ECLOSED);
    uv_close((uv_handle_t *)&q->pipe, on_handle_closed);
    uv_close((uv_handle_t *)&q->timer, on_handle_closed);
}
