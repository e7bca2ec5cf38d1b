/* nilbox events [--since ID] [--follow] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"
#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* One line per event: time, type, then key=value for the other fields.
 * Everything is escaped: events can carry names chosen by a guest (A20). */
static void print_event(const json_t *e)
{
    const char *k;
    json_t *v;
    char esc[512];
    const char *t = nb_json_str(e, "time"), *ty = nb_json_str(e, "type");
    printf("%s  %-18s", t ? t : "-",
           nb_log_escape(esc, sizeof esc, ty ? ty : "?", ty ? strlen(ty) : 1));
    json_object_foreach ((json_t *)e, k, v) {
        if (!strcmp(k, "time") || !strcmp(k, "type") || !strcmp(k, "id"))
            continue;
        nb_cli_print_field(k, v, esc, sizeof esc);
    }
    printf("\n");
}

static void emit(nb_cli_t *cli, const json_t *e)
{
    if (cli->json) {
        char *s = json_dumps(e, JSON_COMPACT);
        if (s)
            printf("%s\n", s);
        free(s);
    } else {
        print_event(e);
    }
    fflush(stdout);
}

static int follow(nb_cli_t *cli, long since)
{
    char path[64], err[512];
    nb_wsc_t *ws = NULL;
    nb_buf_t msg;
    int status = 0, code = NB_CLI_OK, close_code = 0;
    if (since >= 0)
        snprintf(path, sizeof path, "/v1/events?since=%ld", since);
    else
        snprintf(path, sizeof path, "/v1/events");
    int r = nb_wsc_connect(cli->home.sock, path, 10000, &ws, &status, err, sizeof err);
    if (r < 0)
        return nb_cli_fail(cli, nb_client_unreachable(r) ? NB_CLI_UNREACHABLE : NB_CLI_ERROR,
                           "stream_failed", "cannot open the event stream: %s",
                           err[0] ? err : nb_strerror(r));
    nb_cli_catch_stop(0);
    nb_buf_init(&msg, 16u << 20);
    while (!nb_cli_stop) {
        int op = 0;
        r = nb_wsc_recv(ws, -1, &op, &msg, &close_code);
        if (r == -EINTR)
            continue;
        if (r < 0)
            break;
        json_t *e = NULL;
        if (op == NB_WSC_TEXT && nb_json_parse(nb_buf_iov(&msg), &e, NULL, 0) == 0) {
            /* The per-connection greeting is not an event of the daemon. */
            const char *t = nb_json_str(e, "type");
            if (!t || strcmp(t, "hello") != 0)
                emit(cli, e);
        }
        json_decref(e);
    }
    if (!nb_cli_stop) {
        fprintf(stderr, "nilbox: the daemon closed the event stream%s\n",
                close_code == 1001 ? " (it is stopping)" : "");
        code = NB_CLI_UNREACHABLE;
    }
    nb_buf_free(&msg);
    nb_wsc_free(ws);
    return code;
}

static int do_events(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    long since = nb_cli_opt_long(v, a, "since", -1, 0x7fffffffL);
    if (since < -1 || (nb_cli_opt(v, a, "since") && since < 0))
        return NB_CLI_USAGE;
    if (nb_cli_flag(v, a, "follow"))
        return follow(cli, since);
    char path[64];
    json_t *res = NULL;
    snprintf(path, sizeof path, "/v1/events?since=%ld", since < 0 ? 0 : since);
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    size_t i;
    json_t *e;
    json_array_foreach (json_object_get(res, "events"), i, e)
        print_event(e);
    json_decref(res);
    return NB_CLI_OK;
}

static int do_show(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[128];
    json_t *e = NULL;
    long long id;
    if (nb_cli_parse_id(a->pos[0], "event", "events", &id) < 0)
        return NB_CLI_USAGE;
    snprintf(path, sizeof path, "/v1/events/%lld", id);
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &e, &code))
        return code;
    print_event(e);
    json_decref(e);
    return NB_CLI_OK;
}

static const nb_cli_verb_t verbs[] = {
    {"show", "show one buffered event by id", "ID",
     "Show one of the daemon's buffered events. Exit 4 when it is not (or no longer) buffered.", 1,
     1, NULL, do_show, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

static const nb_cli_opt_t opts[] = {
    {"since", 's', "ID", "only events after event id ID (with --follow: replay them first)"},
    {"follow", 'f', NULL, "keep streaming new events until interrupted (JSON lines with --json)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t self = {
    NULL,
    "show the daemon's recent events, or follow them live",
    NULL,
    "Show the daemon's recent events (state changes, prompts, ...), or follow them live with\n"
    "--follow. Starts nilboxd if it is not running.",
    0,
    0,
    opts,
    do_events,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_events = {"events", "show or follow the daemon's event stream",
                                          verbs, &self};
