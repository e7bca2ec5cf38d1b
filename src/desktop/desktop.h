/* nilbox-desktop: one window (GTK 3 + WebKitGTK 4.1) on the web UI nilboxd
 * serves, a status icon where the desktop has a tray, and destination
 * prompts as desktop notifications (libnotify) answered through the API,
 * so a prompt is answered even when the window is hidden. Links lib/ and
 * host/ only (docs/internals/desktop.md). */
#ifndef NB_DESKTOP_H
#define NB_DESKTOP_H

#include <gtk/gtk.h>
#include <libsoup/soup.h>
#include <webkit2/webkit2.h>

#include "host/home.h"

typedef struct {
    GtkApplication *app;
    GtkWidget *win;
    WebKitWebView *view;
    GtkStatusIcon *tray; /* NULL when skipped */
    nb_home_t home;
    char *home_arg;
    gboolean hidden;   /* --hidden: start with only the tray and notifications */
    gboolean test;     /* NILBOX_TEST_MODE=1 */
    gboolean up;       /* daemon found, window built */
    char *base;        /* "http://127.0.0.1:PORT/" from api.json */
    char *token;       /* API token (wiped on free) */
    SoupSession *soup; /* events WebSocket and prompt answers (TCP + token) */
    SoupWebsocketConnection *ws;
    GCancellable *ws_cancel;
    guint retry_id;
    GHashTable *notes; /* prompt id -> NotifyNotification (one per pending prompt) */
    char *test_nav;    /* test mode: a URL the page tries to navigate to once loaded */
} nb_desk_t;

/* Reads api.json (url, token) into d->base / d->token. 1 when they
 * changed, 0 when the same, -1 with a sentence in `err` on failure. */
int nb_desk_read_api(nb_desk_t *d, char *err, size_t errsz);

/* The UI's URL with the token in its fragment (caller wipes + frees). */
char *nb_desk_ui_url(const nb_desk_t *d);

/* Shows (and raises) the window. */
void nb_desk_show(nb_desk_t *d);

/* prompts.c: the event stream and the notifications. */
void nb_desk_prompts_start(nb_desk_t *d);
void nb_desk_prompts_stop(nb_desk_t *d);

/* Frees a string after overwriting it (tokens, URLs holding tokens). */
void nb_desk_wipe_free(char *s);

#endif
