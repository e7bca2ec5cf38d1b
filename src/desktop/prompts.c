/* Destination prompts as desktop notifications: the daemon's event stream
 * (GET /v1/events as a WebSocket, TCP + token) tells which prompts wait;
 * each gets one notification with Allow once / Allow always / Deny, whose
 * action answers it with POST /v1/prompts/{id}/answer. Works with the
 * window hidden. Reconnects (re-reading api.json: a restarted daemon has a
 * new port and token) every 2 s while the daemon is away. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <libnotify/notify.h>

#include "desktop/desktop.h"
#include "lib/json.h"

#define RETRY_S 2

typedef struct {
    nb_desk_t *d;
    gint64 id;
} note_ctx_t;

static void ws_connect(nb_desk_t *d);

static SoupMessage *api_msg(nb_desk_t *d, const char *method, const char *path)
{
    char *uri = g_strdup_printf("%s%s", d->base, path[0] == '/' ? path + 1 : path);
    SoupMessage *m = soup_message_new(method, uri);
    g_free(uri);
    if (m) {
        char *auth = g_strdup_printf("Bearer %s", d->token);
        soup_message_headers_replace(soup_message_get_request_headers(m), "Authorization", auth);
        nb_desk_wipe_free(auth);
    }
    return m;
}

/* ------------------------------------------------------------ answers */

typedef struct {
    gint64 id;
    char answer[16];
} answer_ctx_t;

static void answer_done(GObject *src, GAsyncResult *res, gpointer ud)
{
    answer_ctx_t *a = ud;
    GError *e = NULL;
    SoupMessage *m = soup_session_get_async_result_message(SOUP_SESSION(src), res);
    GBytes *b = soup_session_send_and_read_finish(SOUP_SESSION(src), res, &e);
    guint st = m ? soup_message_get_status(m) : 0;
    if (e)
        fprintf(stderr, "nilbox-desktop: answering prompt %" G_GINT64_FORMAT " failed: %s\n", a->id,
                e->message);
    else if (st == 404)
        fprintf(stderr, "nilbox-desktop: prompt %" G_GINT64_FORMAT " was already decided\n", a->id);
    else
        fprintf(stderr, "nilbox-desktop: prompt %" G_GINT64_FORMAT " answered %s (HTTP %u)\n",
                a->id, a->answer, st);
    g_clear_error(&e);
    if (b)
        g_bytes_unref(b);
    g_free(a);
}

static void answer(nb_desk_t *d, gint64 id, const char *ans)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/prompts/%" G_GINT64_FORMAT "/answer", id);
    SoupMessage *m = api_msg(d, "POST", path);
    if (!m)
        return;
    json_t *j = json_pack("{s:s}", "answer", ans);
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    GBytes *bytes = g_bytes_new_take(body, strlen(body));
    soup_message_set_request_body_from_bytes(m, "application/json", bytes);
    g_bytes_unref(bytes);
    answer_ctx_t *a = g_new0(answer_ctx_t, 1);
    a->id = id;
    g_strlcpy(a->answer, ans, sizeof a->answer);
    soup_session_send_and_read_async(d->soup, m, G_PRIORITY_DEFAULT, NULL, answer_done, a);
    g_object_unref(m);
}

/* ------------------------------------------------------- notifications */

static void on_action(NotifyNotification *n, char *action, gpointer ud)
{
    note_ctx_t *c = ud;
    if (!strcmp(action, "default")) {
        nb_desk_show(c->d);
        return;
    }
    if (!strcmp(action, "allow-once") || !strcmp(action, "allow-always") ||
        !strcmp(action, "deny-once"))
        answer(c->d, c->id, action);
}

static void on_closed(NotifyNotification *n, gpointer ud)
{
    note_ctx_t *c = ud;
    /* Dismissed: the prompt still waits (the window's modal answers it, or
     * its deadline denies it); forget the notification. */
    g_hash_table_remove(c->d->notes, &c->id);
}

static void show_prompt(nb_desk_t *d, const json_t *p)
{
    json_t *jid = json_object_get(p, "id");
    const char *host = nb_json_str(p, "host"), *vm = nb_json_str(p, "vm");
    if (!json_is_integer(jid) || !host)
        return;
    gint64 id = json_integer_value(jid);
    if (g_hash_table_contains(d->notes, &id))
        return;
    long port = (long)json_integer_value(json_object_get(p, "port"));
    long tmo = (long)json_integer_value(json_object_get(p, "timeout_s"));
    /* The host is the daemon's escaped form (printable ASCII, A16); the
     * notification body may be markup, so it is escaped once more. */
    char *h = g_markup_escape_text(host, -1), *v = g_markup_escape_text(vm ? vm : "?", -1);
    char *summary = g_strdup_printf("Allow %s:%ld?", host, port);
    char *body = g_strdup_printf("VM %s wants to reach %s port %ld.\nWithout an answer it is "
                                 "denied in %ld s.",
                                 v, h, port, tmo);
    NotifyNotification *n = notify_notification_new(summary, body, "security-high");
    g_free(h);
    g_free(v);
    g_free(summary);
    g_free(body);
    notify_notification_set_app_name(n, "nilbox");
    notify_notification_set_category(n, "network");
    notify_notification_set_urgency(n, NOTIFY_URGENCY_CRITICAL);
    notify_notification_set_timeout(n, NOTIFY_EXPIRES_NEVER);
    note_ctx_t *c = g_new0(note_ctx_t, 1);
    c->d = d;
    c->id = id;
    /* One context shared by the actions; freed with the notification. */
    g_object_set_data_full(G_OBJECT(n), "nb-ctx", c, g_free);
    notify_notification_add_action(n, "allow-once", "Allow once", on_action, c, NULL);
    notify_notification_add_action(n, "allow-always", "Allow always", on_action, c, NULL);
    notify_notification_add_action(n, "deny-once", "Deny", on_action, c, NULL);
    notify_notification_add_action(n, "default", "Open nilbox", on_action, c, NULL);
    g_signal_connect(n, "closed", G_CALLBACK(on_closed), c);
    GError *e = NULL;
    if (!notify_notification_show(n, &e)) {
        fprintf(stderr, "nilbox-desktop: cannot show a notification: %s\n",
                e ? e->message : "no notification service");
        g_clear_error(&e);
        g_object_unref(n);
        return;
    }
    g_hash_table_insert(d->notes, &c->id, n);
    fprintf(stderr, "nilbox-desktop: prompt %" G_GINT64_FORMAT " shown: %s:%ld for VM %s\n", id,
            host, port, vm ? vm : "?");
}

static void drop_prompt(nb_desk_t *d, gint64 id)
{
    NotifyNotification *n = g_hash_table_lookup(d->notes, &id);
    if (!n)
        return;
    g_object_ref(n);
    g_signal_handlers_disconnect_by_func(n, G_CALLBACK(on_closed),
                                         g_object_get_data(G_OBJECT(n), "nb-ctx"));
    g_hash_table_remove(d->notes, &id);
    notify_notification_close(n, NULL);
    g_object_unref(n);
}

/* ------------------------------------------------------- event stream */

static void sync_done(GObject *src, GAsyncResult *res, gpointer ud)
{
    nb_desk_t *d = ud;
    GBytes *b = soup_session_send_and_read_finish(SOUP_SESSION(src), res, NULL);
    if (!b)
        return;
    gsize len = 0;
    const char *data = g_bytes_get_data(b, &len);
    json_t *j = NULL;
    char why[128];
    if (nb_json_parse((nb_iov_t){(const uint8_t *)data, len}, &j, why, sizeof why) == 0) {
        json_t *arr = json_object_get(j, "prompts"), *p;
        size_t i;
        json_array_foreach (arr, i, p)
            show_prompt(d, p);
    }
    json_decref(j);
    g_bytes_unref(b);
}

/* Prompts that were waiting before we (re)connected. */
static void sync_prompts(nb_desk_t *d)
{
    SoupMessage *m = api_msg(d, "GET", "/v1/prompts");
    if (!m)
        return;
    soup_session_send_and_read_async(d->soup, m, G_PRIORITY_DEFAULT, d->ws_cancel, sync_done, d);
    g_object_unref(m);
}

static void on_ws_message(SoupWebsocketConnection *ws, gint type, GBytes *msg, gpointer ud)
{
    nb_desk_t *d = ud;
    gsize len = 0;
    const char *data = g_bytes_get_data(msg, &len);
    json_t *j = NULL;
    char why[128];
    if (type != SOUP_WEBSOCKET_DATA_TEXT ||
        nb_json_parse((nb_iov_t){(const uint8_t *)data, len}, &j, why, sizeof why) != 0)
        return;
    const char *t = nb_json_str(j, "type");
    if (!t) {
    } else if (!strcmp(t, "hello")) {
        sync_prompts(d);
    } else if (!strcmp(t, "prompt.created") || !strcmp(t, "prompt.updated")) {
        show_prompt(d, json_object_get(j, "prompt"));
    } else if (!strcmp(t, "prompt.resolved")) {
        json_t *id = json_object_get(j, "prompt_id");
        if (json_is_integer(id))
            drop_prompt(d, json_integer_value(id));
    }
    json_decref(j);
}

static gboolean retry(gpointer ud)
{
    nb_desk_t *d = ud;
    d->retry_id = 0;
    char err[256];
    int r = nb_desk_read_api(d, err, sizeof err);
    if (r < 0) {
        d->retry_id = g_timeout_add_seconds(RETRY_S, retry, d);
        return G_SOURCE_REMOVE;
    }
    if (r == 1 && d->view) {
        /* A new daemon start: new port and token; the page follows. */
        char *url = nb_desk_ui_url(d);
        webkit_web_view_load_uri(d->view, url);
        nb_desk_wipe_free(url);
    }
    ws_connect(d);
    return G_SOURCE_REMOVE;
}

static void schedule_retry(nb_desk_t *d)
{
    if (!d->retry_id && d->soup)
        d->retry_id = g_timeout_add_seconds(RETRY_S, retry, d);
}

static void on_ws_closed(SoupWebsocketConnection *ws, gpointer ud)
{
    nb_desk_t *d = ud;
    fprintf(stderr, "nilbox-desktop: event stream closed; reconnecting\n");
    /* Prompts of a stopped daemon are gone. */
    GList *keys = g_hash_table_get_keys(d->notes);
    for (GList *k = keys; k; k = k->next)
        drop_prompt(d, *(gint64 *)k->data);
    g_list_free(keys);
    g_clear_object(&d->ws);
    schedule_retry(d);
}

static void ws_done(GObject *src, GAsyncResult *res, gpointer ud)
{
    nb_desk_t *d = ud;
    GError *e = NULL;
    SoupWebsocketConnection *ws = soup_session_websocket_connect_finish(SOUP_SESSION(src), res, &e);
    if (!ws) {
        if (!g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            schedule_retry(d);
        g_clear_error(&e);
        return;
    }
    d->ws = ws;
    soup_websocket_connection_set_keepalive_interval(ws, 30);
    g_signal_connect(ws, "message", G_CALLBACK(on_ws_message), d);
    g_signal_connect(ws, "closed", G_CALLBACK(on_ws_closed), d);
    fprintf(stderr, "nilbox-desktop: listening for prompts\n");
}

static void ws_connect(nb_desk_t *d)
{
    SoupMessage *m = api_msg(d, "GET", "/v1/events");
    if (!m) {
        schedule_retry(d);
        return;
    }
    char *protos[] = {"nilbox.v1", NULL};
    soup_session_websocket_connect_async(d->soup, m, NULL, protos, G_PRIORITY_DEFAULT, d->ws_cancel,
                                         ws_done, d);
    g_object_unref(m);
}

void nb_desk_prompts_start(nb_desk_t *d)
{
    d->notes = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_object_unref);
    /* Loopback only, no proxy from the environment. */
    d->soup = soup_session_new_with_options("proxy-resolver", NULL, "timeout", 0, NULL);
    d->ws_cancel = g_cancellable_new();
    ws_connect(d);
}

void nb_desk_prompts_stop(nb_desk_t *d)
{
    if (!d->soup)
        return;
    g_cancellable_cancel(d->ws_cancel);
    if (d->retry_id)
        g_source_remove(d->retry_id);
    d->retry_id = 0;
    if (d->ws) {
        g_signal_handlers_disconnect_by_data(d->ws, d);
        if (soup_websocket_connection_get_state(d->ws) == SOUP_WEBSOCKET_STATE_OPEN)
            soup_websocket_connection_close(d->ws, SOUP_WEBSOCKET_CLOSE_GOING_AWAY, NULL);
        g_clear_object(&d->ws);
    }
    GList *keys = g_hash_table_get_keys(d->notes);
    for (GList *k = keys; k; k = k->next)
        drop_prompt(d, *(gint64 *)k->data);
    g_list_free(keys);
    g_hash_table_destroy(d->notes);
    g_clear_object(&d->ws_cancel);
    g_clear_object(&d->soup);
}
