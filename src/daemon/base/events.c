#include "daemon/base/events.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

typedef struct ws_client {
    struct ws_client *next;
    nb_events_t *ev; /* NULL once the bus is gone */
    nb_ws_t *ws;
    int closing;
} ws_client_t;

/* Events table rows are written in batches: one transaction per
 * FLUSH_MS tick or BATCH rows (an autocommit INSERT per event, a WAL
 * commit each, cost more CPU than a whole proxied LLM request when every
 * settle emits "usage.record": bench/usage). */
#define FLUSH_MS 50
#define BATCH 512

/* A row waiting for the next batch: `type` NUL, `vm` NUL (when has_vm),
 * then the data's JSON (len bytes). */
typedef struct row {
    struct row *next;
    int64_t ms;
    size_t len;
    size_t type_len;
    int has_vm;
    char text[];
} row_t;

typedef struct sub {
    struct sub *next;
    uint64_t handle;
    nb_events_fn fn;
    void *ud;
} sub_t;

struct nb_events {
    uv_loop_t *loop;
    nb_store_t *store;
    int64_t last_id;
    json_t *ring[NB_EVENTS_RING]; /* ring[id % RING] */
    ws_client_t *clients;
    size_t n_clients;
    sub_t *subs;
    uint64_t next_handle;
    row_t *q, **qtail;
    size_t nq;
    uv_timer_t *timer; /* allocated: it outlives the bus until its close callback */
};

int64_t nb_events_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void nb_events_format_time(int64_t ms, char *out, size_t outsz)
{
    /* Every event is stamped, and most fall in the second of the one
     * before: its date is kept (per thread) and only the milliseconds
     * are written. */
    static _Thread_local int64_t last_s = INT64_MIN;
    static _Thread_local char base[24];
    static _Thread_local size_t blen;
    int64_t sec = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    int frac = (int)(ms - sec * 1000);
    if (sec != last_s) {
        time_t s = (time_t)sec;
        struct tm tm;
        if (!gmtime_r(&s, &tm) ||
            (blen = strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm)) == 0) {
            if (outsz)
                out[0] = '\0';
            last_s = INT64_MIN;
            return;
        }
        last_s = sec;
    }
    char t[32];
    memcpy(t, base, blen);
    t[blen] = '.';
    t[blen + 1] = (char)('0' + frac / 100);
    t[blen + 2] = (char)('0' + frac / 10 % 10);
    t[blen + 3] = (char)('0' + frac % 10);
    t[blen + 4] = 'Z';
    size_t n = blen + 5;
    if (!outsz)
        return;
    if (n >= outsz)
        n = outsz - 1;
    memcpy(out, t, n);
    out[n] = '\0';
}

int nb_events_new(uv_loop_t *loop, nb_store_t *store, nb_events_t **out)
{
    nb_events_t *ev = calloc(1, sizeof *ev);
    *out = NULL;
    if (!ev)
        return -ENOMEM;
    ev->loop = loop;
    ev->store = store;
    ev->qtail = &ev->q;
    if (loop && store) {
        if (!(ev->timer = calloc(1, sizeof *ev->timer))) {
            free(ev);
            return -ENOMEM;
        }
        uv_timer_init(loop, ev->timer);
        ev->timer->data = ev;
    }
    *out = ev;
    return 0;
}

/* Writes the queued rows in one transaction (or inside the caller's, when
 * one is open on the shared connection, as usage.c does). */
void nb_events_flush(nb_events_t *ev)
{
    if (!ev || !ev->q)
        return;
    sqlite3 *db = nb_store_db(ev->store);
    int txn = nb_store_batch_begin(db);
    while (ev->q) {
        row_t *w = ev->q;
        ev->q = w->next;
        const char *vm = w->has_vm ? w->text + w->type_len + 1 : NULL;
        const char *data = w->text + w->type_len + 1 + (vm ? strlen(vm) + 1 : 0);
        nb_store_event_append_text(ev->store, w->ms, w->text, vm, data, w->len,
                                   NB_EVENTS_KEEP_ROWS);
        free(w);
    }
    ev->qtail = &ev->q;
    ev->nq = 0;
    nb_store_batch_end(db, txn, NB_LOG_ERR, "events: cannot write");
    if (ev->timer)
        uv_timer_stop(ev->timer);
}

static void on_flush(uv_timer_t *t)
{
    nb_events_flush(t->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* Queues the event's row (its module's fields, serialized now: the ring's
 * object gets id/type/time added). Without a loop (tests) it is written
 * at once. */
static void persist(nb_events_t *ev, int64_t ms, const char *type, const json_t *e)
{
    json_t *vmj = json_object_get(e, "vm");
    const char *vm = json_is_string(vmj) ? json_string_value(vmj) : NULL;
    nb_buf_t b;
    nb_buf_init(&b, 1 << 20);
    if (nb_json_dump(e, &b) < 0) {
        nb_log(NB_LOG_ERR, "event %s too large to keep", type);
        nb_buf_free(&b);
        return;
    }
    size_t tl = strlen(type), vl = vm ? strlen(vm) + 1 : 0;
    row_t *w = malloc(sizeof *w + tl + 1 + vl + b.len);
    if (!w) {
        nb_log(NB_LOG_ERR, "event %s not kept: out of memory", type);
        nb_buf_free(&b);
        return;
    }
    *w = (row_t){.ms = ms, .len = b.len, .type_len = tl, .has_vm = vm != NULL};
    memcpy(w->text, type, tl + 1);
    if (vm)
        memcpy(w->text + tl + 1, vm, vl);
    memcpy(w->text + tl + 1 + vl, b.p, b.len);
    nb_buf_free(&b);
    *ev->qtail = w;
    ev->qtail = &w->next;
    ev->nq++;
    if (!ev->timer || ev->nq >= BATCH)
        nb_events_flush(ev);
    else if (!uv_is_active((uv_handle_t *)ev->timer))
        uv_timer_start(ev->timer, on_flush, FLUSH_MS, 0);
}

static void unlink_client(nb_events_t *ev, ws_client_t *c)
{
    for (ws_client_t **pp = &ev->clients; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            ev->n_clients--;
            return;
        }
    }
}

void nb_events_free(nb_events_t *ev)
{
    if (!ev)
        return;
    nb_events_flush(ev);
    if (ev->timer) {
        uv_timer_stop(ev->timer);
        uv_close((uv_handle_t *)ev->timer, on_timer_closed);
    }
    /* Clients outlive the bus until their on_close; detach them first. */
    ws_client_t *c = ev->clients;
    ev->clients = NULL;
    while (c) {
        ws_client_t *next = c->next;
        c->ev = NULL;
        c->next = NULL;
        if (!c->closing) {
            c->closing = 1;
            nb_ws_close(c->ws, 1001, "daemon stopping");
        }
        c = next;
    }
    for (sub_t *s = ev->subs, *n; s; s = n) {
        n = s->next;
        free(s);
    }
    for (size_t i = 0; i < NB_EVENTS_RING; i++)
        json_decref(ev->ring[i]);
    free(ev);
}

static void send_to(ws_client_t *c, const nb_buf_t *msg)
{
    if (c->closing)
        return;
    int r = nb_ws_send(c->ws, 1, msg->p, msg->len);
    if (r < 0) {
        /* A client that does not read may not make us buffer without end. */
        nb_log(NB_LOG_WARN, "event client too slow or gone (%s); closing it", nb_strerror(r));
        c->closing = 1;
        nb_ws_close(c->ws, 1013, "too slow");
    }
}

static int64_t emit(nb_events_t *ev, const char *type, json_t *fields, int store);

int64_t nb_events_emit(nb_events_t *ev, const char *type, json_t *fields)
{
    return emit(ev, type, fields, 1);
}

int64_t nb_events_emit_live(nb_events_t *ev, const char *type, json_t *fields)
{
    return emit(ev, type, fields, 0);
}

static int64_t emit(nb_events_t *ev, const char *type, json_t *fields, int store)
{
    nb_buf_t msg;
    char tbuf[40];
    int64_t ms = nb_events_now_ms();
    json_t *e = fields ? fields : json_object();
    if (!e || !json_is_object(e)) {
        json_decref(e);
        return NB_EINVAL;
    }
    /* Persist the module's own fields (the row has its own id/type/time). */
    if (ev->store && store)
        persist(ev, ms, type, e);
    int64_t id = ++ev->last_id;
    nb_events_format_time(ms, tbuf, sizeof tbuf);
    json_object_set_new(e, "id", json_integer(id));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "time", json_string(tbuf));

    json_t **slot = &ev->ring[id % NB_EVENTS_RING];
    json_decref(*slot);
    *slot = e; /* the ring owns the reference */

    if (ev->clients) {
        nb_buf_init(&msg, 1 << 20);
        if (nb_json_dump(e, &msg) == 0) {
            for (ws_client_t *c = ev->clients, *next; c; c = next) {
                next = c->next;
                send_to(c, &msg);
            }
        }
        nb_buf_free(&msg);
    }
    for (sub_t *s = ev->subs; s; s = s->next)
        s->fn(e, s->ud);
    nb_log(NB_LOG_DEBUG, "event %lld %s", (long long)id, type);
    return id;
}

int nb_events_subscribe(nb_events_t *ev, nb_events_fn fn, void *ud, uint64_t *handle)
{
    sub_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->fn = fn;
    s->ud = ud;
    s->handle = ++ev->next_handle;
    s->next = ev->subs;
    ev->subs = s;
    if (handle)
        *handle = s->handle;
    return 0;
}

void nb_events_unsubscribe(nb_events_t *ev, uint64_t handle)
{
    for (sub_t **pp = &ev->subs; *pp; pp = &(*pp)->next) {
        if ((*pp)->handle == handle) {
            sub_t *s = *pp;
            *pp = s->next;
            free(s);
            return;
        }
    }
}

json_t *nb_events_recent(nb_events_t *ev, int64_t since)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    int64_t first = ev->last_id - NB_EVENTS_RING + 1;
    if (first < 1)
        first = 1;
    if (since + 1 > first)
        first = since + 1;
    for (int64_t id = first; id <= ev->last_id; id++) {
        json_t *e = ev->ring[id % NB_EVENTS_RING];
        if (e)
            json_array_append(arr, e);
    }
    return arr;
}

static void on_ws_message(nb_ws_t *ws, int text, const uint8_t *data, size_t len, void *ud)
{
    /* The stream is one-way; client messages are ignored (browsers and
     * libraries may send keep-alive text). Control frames are handled by
     * the WebSocket layer. */
}

static void on_ws_close(nb_ws_t *ws, int code, void *ud)
{
    ws_client_t *c = ud;
    if (c->ev)
        unlink_client(c->ev, c);
    free(c);
}

int nb_events_attach_ws(nb_events_t *ev, nb_httpd_req_t *req, int64_t since, json_t *hello_fields)
{
    static const nb_ws_cbs_t cbs = {
        .on_message = on_ws_message,
        .on_close = on_ws_close,
        .max_message = 64 * 1024,
    };
    ws_client_t *c = calloc(1, sizeof *c);
    json_t *hello = hello_fields ? hello_fields : json_object();
    nb_buf_t msg;
    char tbuf[40];
    int r;
    nb_buf_init(&msg, 1 << 20);
    if (!c || !hello) {
        free(c);
        json_decref(hello);
        nb_httpd_respond_error(req, 500, "internal", "out of memory");
        return -ENOMEM;
    }
    if ((r = nb_httpd_ws_accept(req, &cbs, c, &c->ws)) < 0) {
        free(c);
        json_decref(hello);
        return r;
    }
    c->ev = ev;
    c->next = ev->clients;
    ev->clients = c;
    ev->n_clients++;

    nb_events_format_time(nb_events_now_ms(), tbuf, sizeof tbuf);
    json_object_set_new(hello, "type", json_string("hello"));
    json_object_set_new(hello, "time", json_string(tbuf));
    json_object_set_new(hello, "last_id", json_integer(ev->last_id));
    if (nb_json_dump(hello, &msg) == 0)
        send_to(c, &msg);
    json_decref(hello);
    if (since >= 0) {
        json_t *arr = nb_events_recent(ev, since);
        size_t i;
        json_t *e;
        json_array_foreach (arr, i, e) {
            nb_buf_reset(&msg);
            if (nb_json_dump(e, &msg) == 0)
                send_to(c, &msg);
        }
        json_decref(arr);
    }
    nb_buf_free(&msg);
    return 0;
}

size_t nb_events_ws_count(const nb_events_t *ev)
{
    return ev->n_clients;
}

int64_t nb_events_last_id(const nb_events_t *ev)
{
    return ev->last_id;
}
