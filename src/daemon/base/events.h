/* The daemon's event bus: modules publish state changes, the bus stamps
 * them, keeps the newest in a ring, persists them (table `events`) and
 * fans them out to in-process subscribers and to WebSocket clients of
 * `GET /v1/events`. Loop thread only.
 *
 * Event shape (docs/api.md): {"id": N, "type": "vm.started", "time":
 * "2026-01-02T03:04:05.678Z", ...fields}. `id` counts up from 1 for each
 * daemon start. Events must never carry secret values (A23). */
#ifndef NB_EVENTS_H
#define NB_EVENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/base/store.h"
#include "lib/httpserver.h"

#define NB_EVENTS_RING 256        /* events kept in memory for replay */
#define NB_EVENTS_KEEP_ROWS 10000 /* rows kept in the events table */

typedef struct nb_events nb_events_t;

/* Creates the bus. `store` may be NULL (no persistence); it is borrowed
 * and must outlive the bus. With a `loop`, rows are written to the events
 * table in batches (one transaction per 50 ms or 512 events); without one
 * (tests), each at once. */
int nb_events_new(uv_loop_t *loop, nb_store_t *store, nb_events_t **out);

/* Writes the events still queued for the table now. Whoever reads the
 * events table from this process calls it first; free does too. A crash
 * loses at most the last 50 ms of rows (the ring and the WebSocket clients
 * had them at once). NULL is a no-op. */
void nb_events_flush(nb_events_t *ev);

/* Frees the bus, writing queued rows first. WebSocket clients still
 * attached are closed (1001) and detached; close the HTTP server first for
 * an orderly goodbye. NULL is a no-op. */
void nb_events_free(nb_events_t *ev);

/* Publishes an event. Takes ownership of `fields` (a JSON object, or NULL);
 * "id", "type" and "time" are added (overwriting keys of those names).
 * Returns the event id (> 0) or a negative code. */
int64_t nb_events_emit(nb_events_t *ev, const char *type, json_t *fields);

/* The same without a row in the events table: for events at request rate
 * whose content another table keeps (usage.record: its usage_records row).
 * They would cost a write each and push everything else out of the table,
 * which keeps only the newest NB_EVENTS_KEEP_ROWS. The ring, subscribers
 * and WebSocket clients get them as any other. */
int64_t nb_events_emit_live(nb_events_t *ev, const char *type, json_t *fields);

/* In-process subscriber; `event` is borrowed for the call. Subscribers may
 * emit further events but must not unsubscribe others from the callback. */
typedef void (*nb_events_fn)(const json_t *event, void *ud);
int nb_events_subscribe(nb_events_t *ev, nb_events_fn fn, void *ud, uint64_t *handle);
void nb_events_unsubscribe(nb_events_t *ev, uint64_t handle);

/* Takes over a WebSocket upgrade request: accepts it, sends a "hello"
 * event (with `hello_fields` merged in: takes ownership, may be NULL), then
 * every buffered event with id > `since` (since < 0: none), then live
 * events. Slow clients whose send queue overflows are closed with 1013.
 * `req` is released either way. */
int nb_events_attach_ws(nb_events_t *ev, nb_httpd_req_t *req, int64_t since, json_t *hello_fields);

/* Buffered events with id > since, oldest first (a new array). */
json_t *nb_events_recent(nb_events_t *ev, int64_t since);

/* Counters for /v1/status. */
size_t nb_events_ws_count(const nb_events_t *ev);
int64_t nb_events_last_id(const nb_events_t *ev);

/* Formats a wall-clock time in milliseconds as RFC 3339 UTC with ms
 * ("2026-01-02T03:04:05.678Z") into out (>= 32 bytes). */
void nb_events_format_time(int64_t ms, char *out, size_t outsz);

/* Current wall-clock time in milliseconds since the epoch. */
int64_t nb_events_now_ms(void);

#endif
