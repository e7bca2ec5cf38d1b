/* Routes of the daemon itself: status, event stream, stop, doctor (the web
 * UI's files: api_ui.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/daemon.h"
#include "host/doctor.h"
#include "daemon/base/events.h"
#include "daemon/secretsvc.h"
#include "daemon/base/store.h"
#include "lib/err.h"
#include "lib/json.h"

static void on_status(nb_api_ctx_t *ctx)
{
    nb_daemon_t *d = ctx->d;
    char started[40];
    nb_events_format_time(d->started_ms, started, sizeof started);
    json_t *j = json_pack(
        "{s:s, s:I, s:s, s:f, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:{s:I, s:I, s:I}}", "version",
        NB_VERSION, "pid", (json_int_t)getpid(), "started_at", started, "uptime_s",
        nb_daemon_uptime(d), "home", d->home.home, "runtime_dir", d->home.runtime, "socket",
        d->home.sock, "api_url", nb_api_url(d->api), "log", d->home.logfile, "api_port",
        nb_api_port(d->api), "schema_version", nb_store_schema_version(d->store), "counts",
        "event_clients", (json_int_t)nb_events_ws_count(d->events), "events",
        (json_int_t)nb_events_last_id(d->events), "requests",
        (json_int_t)nb_api_request_count(d->api));
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    /* Whether memory images of the daemon are refused (main.c), asked from
     * inside: no outside view tells it to root, and the tests check it. */
    json_object_set_new(j, "dumpable", json_boolean(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0));
    /* The secret store's state, so that `daemon status` can say that it is
     * locked (after every restart with the passphrase provider) and what
     * that costs the guests. */
    if (d->secrets) {
        int st = nb_secretsvc_state(d->secrets);
        json_t *sj = json_pack("{s:s, s:s}", "state", nb_secretsvc_state_name(st), "provider",
                               nb_secretsvc_provider(d->secrets));
        if (sj && st == NB_SECRETSVC_LOCKED)
            json_object_set_new(sj, "hint",
                                json_string("guests get no placeholders and their egress answers "
                                            "503 until it is unlocked: run 'nilbox secret "
                                            "unlock'"));
        else if (sj && st != NB_SECRETSVC_OPEN && st != NB_SECRETSVC_STARTING)
            json_object_set_new(sj, "hint", json_string(nb_secretsvc_message(d->secrets)));
        json_object_set_new(j, "secrets", sj ? sj : json_null());
    }
    nb_api_reply_json(ctx, 200, j);
}

static void on_events(nb_api_ctx_t *ctx)
{
    nb_daemon_t *d = ctx->d;
    char buf[32];
    int64_t since = -1;
    int r = nb_api_query(ctx, "since", buf, sizeof buf);
    if (r == 1) {
        char *end;
        since = strtoll(buf, &end, 10);
        if (!buf[0] || *end || since < 0) {
            nb_api_reply_error(ctx, 400, "bad-request",
                               "'since' must be an event id (a number >= 0)");
            return;
        }
    } else if (r < 0) {
        nb_api_reply_error(ctx, 400, "bad-request", "'since' is malformed");
        return;
    }
    if (!nb_api_is_upgrade(ctx)) {
        /* Plain GET: the buffered events as a list (for the CLI and polling). */
        json_t *arr = nb_events_recent(d->events, since < 0 ? 0 : since);
        nb_api_reply_json(ctx, 200,
                          json_pack("{s:o, s:I}", "events", arr, "last_id",
                                    (json_int_t)nb_events_last_id(d->events)));
        return;
    }
    /* Browsers offer subprotocols ["nilbox.v1", "nilbox.token.<t>"] and
     * require the server to pick one; pick the one that is not the token. */
    const char *proto = nb_httpd_req_header(ctx->req, "Sec-WebSocket-Protocol");
    if (proto && strstr(proto, "nilbox.v1"))
        nb_httpd_add_header(ctx->req, "Sec-WebSocket-Protocol", "nilbox.v1");
    json_t *hello = json_pack("{s:s, s:I}", "version", NB_VERSION, "pid", (json_int_t)getpid());
    nb_events_attach_ws(d->events, nb_api_take_req(ctx), since, hello);
}

static void on_event(nb_api_ctx_t *ctx)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    long long id = strtoll(s, &end, 10);
    if (!s[0] || *end || id < 1) {
        nb_api_reply_error(ctx, 422, "invalid", "an event id is a number >= 1, not '%.40s'", s);
        return;
    }
    json_t *arr = nb_events_recent(ctx->d->events, id - 1);
    json_t *e = json_array_get(arr, 0);
    if (!e || nb_json_int(e, "id", 0) != id) {
        json_decref(arr);
        nb_api_reply_error(ctx, 404, "not-found",
                           "event %lld is not buffered (the daemon keeps the newest %d; last is "
                           "%lld)",
                           id, NB_EVENTS_RING, (long long)nb_events_last_id(ctx->d->events));
        return;
    }
    json_incref(e);
    json_decref(arr);
    nb_api_reply_json(ctx, 200, e);
}

static void on_stop(nb_api_ctx_t *ctx)
{
    nb_daemon_t *d = ctx->d;
    nb_api_reply_json(ctx, 202,
                      json_pack("{s:b, s:I}", "stopping", 1, "pid", (json_int_t)getpid()));
    /* Give the answer a moment to leave before the listeners close. */
    nb_daemon_request_stop(d, "api", 50);
}

typedef struct {
    uv_work_t w;
    nb_api_ctx_t *ctx;
    nb_home_t home;
    json_t *report;
} doctor_job_t;

static void doctor_work(uv_work_t *w)
{
    doctor_job_t *j = w->data;
    j->report = nb_doctor_run(&j->home);
}

static void doctor_done(uv_work_t *w, int status)
{
    doctor_job_t *j = w->data;
    if (status < 0 || !j->report) {
        json_decref(j->report);
        nb_api_reply_error(j->ctx, 500, "internal", "the checks could not run");
    } else {
        nb_doctor_result_t res = {.status = NB_DOCTOR_OK, .hint = ""};
        snprintf(res.message, sizeof res.message, "nilboxd %s is running (pid %ld)", NB_VERSION,
                 (long)getpid());
        nb_doctor_add(j->report, "daemon", &res);
        if (j->ctx->d->secrets) /* which master key provider is in use */
            nb_secretsvc_doctor(j->ctx->d->secrets, j->report);
        nb_api_reply_json(j->ctx, 200, j->report);
    }
    free(j);
}

static void on_doctor(nb_api_ctx_t *ctx)
{
    /* The checks stat files and may wait on D-Bus: keep them off the loop. */
    doctor_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    j->ctx = ctx;
    j->home = ctx->d->home;
    j->w.data = j;
    int r = uv_queue_work(ctx->d->loop, &j->w, doctor_work, doctor_done);
    if (r < 0) {
        free(j);
        nb_api_reply_error(ctx, 500, "internal", "cannot queue the checks: %s", uv_strerror(r));
    }
}

const nb_api_route_t nb_api_routes_daemon[] = {
    {"GET", "/v1/status", on_status, 0},     {"GET", "/v1/events", on_events, 0},
    {"GET", "/v1/events/{id}", on_event, 0}, {"POST", "/v1/daemon/stop", on_stop, 0},
    {"GET", "/v1/doctor", on_doctor, 0},     {0},
};
