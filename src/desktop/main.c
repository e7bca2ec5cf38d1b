/* nilbox-desktop: the window, the web view and its navigation policy, the
 * status icon (desktop.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libnotify/notify.h>
#include <sodium.h>

#include "desktop/desktop.h"
#include "desktop/origin.h"
#include "host/daemonctl.h"
#include "host/version.h"
#include "lib/json.h"

void nb_desk_wipe_free(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        g_free(s);
    }
}

int nb_desk_read_api(nb_desk_t *d, char *err, size_t errsz)
{
    char *text = NULL, why[128];
    json_t *j = NULL;
    int r = nb_home_read_small(d->home.api_json, 4096, &text);
    if (r < 0) {
        snprintf(err, errsz, "cannot read %s (is nilboxd running with its TCP port?)",
                 d->home.api_json);
        return -1;
    }
    r = nb_json_parse((nb_iov_t){(const uint8_t *)text, strlen(text)}, &j, why, sizeof why);
    sodium_memzero(text, strlen(text));
    free(text);
    const char *url = r == 0 ? nb_json_str(j, "url") : NULL;
    const char *tok = r == 0 ? nb_json_str(j, "token") : NULL;
    if (!url || !url[0] || !tok || !tok[0]) {
        json_decref(j);
        snprintf(err, errsz, "the daemon has no web UI listener (started with --no-tcp?)");
        return -1;
    }
    int changed = !d->base || strcmp(d->base, url) || !d->token || strcmp(d->token, tok);
    if (changed) {
        g_free(d->base);
        nb_desk_wipe_free(d->token);
        d->base = g_strdup(url);
        d->token = g_strdup(tok);
    }
    json_decref(j); /* wiped on free: nb_json_wipe_on_free in main */
    return changed;
}

char *nb_desk_ui_url(const nb_desk_t *d)
{
    return g_strdup_printf("%s#token=%s", d->base, d->token);
}

void nb_desk_show(nb_desk_t *d)
{
    if (d->win) {
        gtk_widget_show_all(d->win);
        gtk_window_present(GTK_WINDOW(d->win));
    }
}

/* ---------------------------------------------------------- navigation */

static void open_external(nb_desk_t *d, const char *uri)
{
    if (!nb_desk_external_ok(uri)) {
        fprintf(stderr, "nilbox-desktop: refused navigation to a non-web address\n");
        return;
    }
    GError *e = NULL;
    fprintf(stderr,
            "nilbox-desktop: refused navigation to %s in the window; opening it in the "
            "system browser\n",
            uri);
    if (!g_app_info_launch_default_for_uri(uri, NULL, &e)) {
        fprintf(stderr, "nilbox-desktop: cannot open the system browser: %s\n",
                e ? e->message : "unknown error");
        g_clear_error(&e);
    }
}

/* Only the daemon's origin is shown in the view: anything else (a link, a
 * redirect, a script's location change, a new window) is refused and, for
 * http(s), handed to the system browser, which holds no token. */
static gboolean on_decide_policy(WebKitWebView *v, WebKitPolicyDecision *dec,
                                 WebKitPolicyDecisionType type, gpointer ud)
{
    nb_desk_t *d = ud;
    if (type == WEBKIT_POLICY_DECISION_TYPE_RESPONSE) {
        webkit_policy_decision_use(dec);
        return TRUE;
    }
    WebKitNavigationAction *a = webkit_navigation_policy_decision_get_navigation_action(
        WEBKIT_NAVIGATION_POLICY_DECISION(dec));
    WebKitURIRequest *req = webkit_navigation_action_get_request(a);
    const char *uri = webkit_uri_request_get_uri(req);
    if (type == WEBKIT_POLICY_DECISION_TYPE_NAVIGATION_ACTION &&
        nb_desk_same_origin(d->base, uri)) {
        webkit_policy_decision_use(dec);
        return TRUE;
    }
    webkit_policy_decision_ignore(dec);
    if (!nb_desk_same_origin(d->base, uri))
        open_external(d, uri);
    return TRUE;
}

static gboolean on_permission(WebKitWebView *v, WebKitPermissionRequest *req, gpointer ud)
{
#if WEBKIT_CHECK_VERSION(2, 42, 0)
    /* The terminal's paste reads the clipboard; nothing else is granted. */
    if (WEBKIT_IS_CLIPBOARD_PERMISSION_REQUEST(req)) {
        webkit_permission_request_allow(req);
        return TRUE;
    }
#endif
    webkit_permission_request_deny(req);
    return TRUE;
}

static void on_load_changed(WebKitWebView *v, WebKitLoadEvent ev, gpointer ud)
{
    nb_desk_t *d = ud;
    if (ev != WEBKIT_LOAD_FINISHED)
        return;
    fprintf(stderr, "nilbox-desktop: page loaded: %s\n",
            webkit_web_view_get_title(v) ? webkit_web_view_get_title(v) : "");
    if (d->test_nav) {
        /* Test mode only: the page itself tries to leave the origin, the way
         * a link or a script in it would. */
        json_t *s = json_string(d->test_nav);
        char *lit = json_dumps(s, JSON_ENCODE_ANY);
        char *js = g_strdup_printf("window.location.assign(%s);", lit);
        webkit_web_view_evaluate_javascript(v, js, -1, NULL, NULL, NULL, NULL, NULL);
        g_free(js);
        free(lit);
        json_decref(s);
        g_clear_pointer(&d->test_nav, g_free);
    }
}

static void on_crashed(WebKitWebView *v, WebKitWebProcessTerminationReason r, gpointer ud)
{
    nb_desk_t *d = ud;
    fprintf(stderr, "nilbox-desktop: the web process ended; reloading\n");
    char *url = nb_desk_ui_url(d);
    webkit_web_view_load_uri(v, url);
    nb_desk_wipe_free(url);
}

static gboolean on_delete(GtkWidget *w, GdkEvent *ev, gpointer ud)
{
    nb_desk_t *d = ud;
    /* Closing hides: prompts keep arriving as notifications. */
    gtk_widget_hide(w);
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    int tray = d->tray && gtk_status_icon_is_embedded(d->tray);
    G_GNUC_END_IGNORE_DEPRECATIONS
    fprintf(stderr,
            "nilbox-desktop: window hidden; prompts still arrive as notifications (%s; "
            "'nilbox-desktop --quit' stops it)\n",
            tray ? "the tray icon shows it again" : "run nilbox-desktop again to show it");
    return TRUE;
}

/* ---------------------------------------------------------------- tray */

static void tray_activate(GtkStatusIcon *i, gpointer ud)
{
    nb_desk_t *d = ud;
    if (gtk_widget_get_visible(d->win))
        gtk_widget_hide(d->win);
    else
        nb_desk_show(d);
}

static void menu_show(GtkMenuItem *m, gpointer ud)
{
    nb_desk_show(ud);
}

static void menu_quit(GtkMenuItem *m, gpointer ud)
{
    nb_desk_t *d = ud;
    g_application_quit(G_APPLICATION(d->app));
}

static void tray_menu(GtkStatusIcon *i, guint button, guint time, gpointer ud)
{
    GtkWidget *menu = gtk_menu_new(), *show = gtk_menu_item_new_with_mnemonic("_Show nilbox"),
              *quit = gtk_menu_item_new_with_mnemonic("_Quit");
    g_signal_connect(show, "activate", G_CALLBACK(menu_show), ud);
    g_signal_connect(quit, "activate", G_CALLBACK(menu_quit), ud);
    gtk_menu_shell_append(GTK_MENU_SHELL(menu), show);
    gtk_menu_shell_append(GTK_MENU_SHELL(menu), quit);
    gtk_widget_show_all(menu);
    gtk_menu_popup_at_pointer(GTK_MENU(menu), NULL);
}

static void make_tray(nb_desk_t *d)
{
    /* GtkStatusIcon is deprecated (GTK 4 dropped it) but still shows in
     * XEmbed trays; desktops without one simply do not show it. */
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    d->tray = gtk_status_icon_new_from_icon_name("security-high");
    gtk_status_icon_set_title(d->tray, "nilbox");
    gtk_status_icon_set_tooltip_text(d->tray, "nilbox: click to show or hide the window");
    G_GNUC_END_IGNORE_DEPRECATIONS
    g_signal_connect(d->tray, "activate", G_CALLBACK(tray_activate), d);
    g_signal_connect(d->tray, "popup-menu", G_CALLBACK(tray_menu), d);
}

/* -------------------------------------------------------------- window */

/* Whether the machine has a GPU render node. Without one WebKitGTK's
 * accelerated compositing runs in software, and a key's echo took 71 ms to
 * reach the screen against 17 ms with compositing off (bench/ui --screen,
 * under Xvfb): so compositing stays off unless there is a GPU to do it. */
static int has_render_node(void)
{
    GDir *dir = g_dir_open("/dev/dri", 0, NULL);
    if (!dir)
        return 0;
    int found = 0;
    const char *name;
    while (!found && (name = g_dir_read_name(dir)))
        found = g_str_has_prefix(name, "renderD");
    g_dir_close(dir);
    return found;
}

static void build_window(nb_desk_t *d)
{
    /* Ephemeral: the page's storage (the token in sessionStorage) never
     * reaches the disk. */
    WebKitWebsiteDataManager *dm = webkit_website_data_manager_new_ephemeral();
    WebKitWebContext *ctx = webkit_web_context_new_with_website_data_manager(dm);
    g_object_unref(dm);
    WebKitSettings *s = webkit_settings_new_with_settings(
        "enable-developer-extras", FALSE, "javascript-can-open-windows-automatically", FALSE,
        "enable-back-forward-navigation-gestures", FALSE, "enable-write-console-messages-to-stdout",
        FALSE, NULL);
    if (!has_render_node())
        webkit_settings_set_hardware_acceleration_policy(s,
                                                         WEBKIT_HARDWARE_ACCELERATION_POLICY_NEVER);
    d->view = WEBKIT_WEB_VIEW(
        g_object_new(WEBKIT_TYPE_WEB_VIEW, "web-context", ctx, "settings", s, NULL));
    g_object_unref(s);
    g_object_unref(ctx);
    g_signal_connect(d->view, "decide-policy", G_CALLBACK(on_decide_policy), d);
    g_signal_connect(d->view, "permission-request", G_CALLBACK(on_permission), d);
    g_signal_connect(d->view, "load-changed", G_CALLBACK(on_load_changed), d);
    g_signal_connect(d->view, "web-process-terminated", G_CALLBACK(on_crashed), d);

    d->win = gtk_application_window_new(d->app);
    gtk_window_set_title(GTK_WINDOW(d->win), "nilbox");
    gtk_window_set_default_size(GTK_WINDOW(d->win), 1200, 800);
    gtk_container_add(GTK_CONTAINER(d->win), GTK_WIDGET(d->view));
    g_signal_connect(d->win, "delete-event", G_CALLBACK(on_delete), d);

    char *url = nb_desk_ui_url(d);
    webkit_web_view_load_uri(d->view, url);
    nb_desk_wipe_free(url);
}

static void fatal(nb_desk_t *d, const char *msg)
{
    fprintf(stderr, "nilbox-desktop: %s\n", msg);
    GtkWidget *dlg = gtk_message_dialog_new(NULL, 0, GTK_MESSAGE_ERROR, GTK_BUTTONS_CLOSE,
                                            "nilbox cannot start");
    gtk_message_dialog_format_secondary_text(GTK_MESSAGE_DIALOG(dlg), "%s", msg);
    gtk_dialog_run(GTK_DIALOG(dlg));
    gtk_widget_destroy(dlg);
}

static void on_activate(GApplication *app, gpointer ud)
{
    nb_desk_t *d = ud;
    if (d->up) {
        nb_desk_show(d); /* a second start shows the running window */
        return;
    }
    char msg[2048];
    const char *code = NULL;
    int started = 0;
    pid_t pid = 0;
    if (nb_daemonctl_ensure(&d->home, 30, &started, &pid, &code, msg, sizeof msg) < 0 ||
        nb_desk_read_api(d, msg, sizeof msg) < 0) {
        fatal(d, msg);
        return; /* nothing holds the application: it exits */
    }
    if (started)
        fprintf(stderr, "nilbox-desktop: started nilboxd (pid %ld)\n", (long)pid);
    d->up = TRUE;
    g_application_hold(app); /* runs on while the window is hidden */
    const char *quit_keys[] = {"<Primary>q", NULL};
    gtk_application_set_accels_for_action(d->app, "app.quit", quit_keys);
    build_window(d);
    make_tray(d);
    nb_desk_prompts_start(d);
    if (!d->hidden)
        nb_desk_show(d);
}

static void act_quit(GSimpleAction *a, GVariant *p, gpointer ud)
{
    nb_desk_t *d = ud;
    g_application_quit(G_APPLICATION(d->app));
}

static void act_show(GSimpleAction *a, GVariant *p, gpointer ud)
{
    nb_desk_t *d = ud;
    if (d->up)
        nb_desk_show(d);
}

static gint on_local_options(GApplication *app, GVariantDict *opts, gpointer ud)
{
    nb_desk_t *d = ud;
    if (g_variant_dict_contains(opts, "version")) {
        printf("nilbox-desktop %s\n", NB_VERSION);
        return 0;
    }
    if (g_variant_dict_contains(opts, "quit")) {
        GError *e = NULL;
        if (!g_application_register(app, NULL, &e) || !g_application_get_is_remote(app)) {
            fprintf(stderr, "nilbox-desktop: not running for %s\n", d->home.home);
            g_clear_error(&e);
            return 1;
        }
        g_action_group_activate_action(G_ACTION_GROUP(app), "quit", NULL);
        return 0;
    }
    return -1;
}

/* The application id: one running instance per NILBOX_HOME. */
static char *app_id(const nb_home_t *h)
{
    if (h->home_is_default)
        return g_strdup("dev.nilbox.Desktop");
    return g_strdup_printf("dev.nilbox.Desktop.h%08x", g_str_hash(h->home));
}

int main(int argc, char **argv)
{
    nb_desk_t d = {0};
    char err[512] = "cannot initialise libsodium";
    /* --home is needed before the application exists (its id depends on it). */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--home") && i + 1 < argc)
            d.home_arg = argv[i + 1];
        else if (!strncmp(argv[i], "--home=", 7))
            d.home_arg = argv[i] + 7;
    }
    nb_json_wipe_on_free(); /* api.json's token passes through jansson */
    if (sodium_init() < 0 || nb_home_resolve(d.home_arg, &d.home, err, sizeof err) != 0) {
        fprintf(stderr, "nilbox-desktop: %s\n", err);
        return 1;
    }
    const char *tm = getenv("NILBOX_TEST_MODE");
    d.test = tm && !strcmp(tm, "1");
    const char *nav = getenv("NILBOX_DESKTOP_TEST_NAVIGATE");
    if (d.test && nav && nav[0])
        d.test_nav = g_strdup(nav);

    char *id = app_id(&d.home);
#if GLIB_CHECK_VERSION(2, 74, 0)
    d.app = gtk_application_new(id, G_APPLICATION_DEFAULT_FLAGS);
#else
    d.app = gtk_application_new(id, G_APPLICATION_FLAGS_NONE);
#endif
    g_free(id);
    char *home_dummy = NULL;
    const GOptionEntry entries[] = {
        {"home", 0, 0, G_OPTION_ARG_FILENAME, &home_dummy, "nilbox home folder", "DIR"},
        {"hidden", 0, 0, G_OPTION_ARG_NONE, &d.hidden, "start with the window hidden", NULL},
        {"quit", 0, 0, G_OPTION_ARG_NONE, NULL, "stop the running nilbox-desktop", NULL},
        {"version", 0, 0, G_OPTION_ARG_NONE, NULL, "print the version", NULL},
        {NULL, 0, 0, 0, NULL, NULL, NULL},
    };
    g_application_add_main_option_entries(G_APPLICATION(d.app), entries);
    g_application_set_option_context_summary(
        G_APPLICATION(d.app),
        "The nilbox window: the web UI of nilboxd (started when it is not running), a tray\n"
        "icon where the desktop has one, and destination prompts as notifications.");
    const GActionEntry actions[] = {{"quit", act_quit, NULL, NULL, NULL, {0}},
                                    {"show", act_show, NULL, NULL, NULL, {0}}};
    g_action_map_add_action_entries(G_ACTION_MAP(d.app), actions, G_N_ELEMENTS(actions), &d);
    g_signal_connect(d.app, "handle-local-options", G_CALLBACK(on_local_options), &d);
    g_signal_connect(d.app, "activate", G_CALLBACK(on_activate), &d);
    notify_init("nilbox");
    int rc = g_application_run(G_APPLICATION(d.app), argc, argv);
    nb_desk_prompts_stop(&d);
    notify_uninit();
    if (d.win)
        gtk_widget_destroy(d.win);
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    g_clear_object(&d.tray);
    G_GNUC_END_IGNORE_DEPRECATIONS
    g_object_unref(d.app);
    g_free(home_dummy);
    g_free(d.base);
    nb_desk_wipe_free(d.token);
    g_free(d.test_nav);
    return rc;
}
