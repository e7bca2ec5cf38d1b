/* nilbox daemon start|stop|status */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/cmd.h"
#include "lib/json.h"
#include "lib/log.h"

static void fmt_uptime(double s, char *out, size_t outsz)
{
    long t = (long)s;
    if (t < 60)
        snprintf(out, outsz, "%lds", t);
    else if (t < 3600)
        snprintf(out, outsz, "%ldm %lds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(out, outsz, "%ldh %ldm", t / 3600, (t % 3600) / 60);
    else
        snprintf(out, outsz, "%ldd %ldh", t / 86400, (t % 86400) / 3600);
}

/* The web UI address with its per-start token in the URL fragment (which
 * the browser never sends: no server log, no Referer). The token is in
 * the daemon's api.json (0600, runtime folder), not in API answers. 0
 * and "" when there is none. */
static int web_ui_url(const json_t *st, char *out, size_t outsz)
{
    char path[1200];
    const char *rt = nb_json_str(st, "runtime_dir");
    out[0] = '\0';
    if (!rt || snprintf(path, sizeof path, "%s/api.json", rt) >= (int)sizeof path)
        return 0;
    json_t *a = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
    const char *url = nb_json_str(a, "url"), *tok = nb_json_str(a, "token");
    int ok = url && tok && url[0] && tok[0] &&
             strspn(tok, "0123456789abcdefABCDEF-_") == strlen(tok) &&
             snprintf(out, outsz, "%s#token=%s", url, tok) < (int)outsz;
    if (!ok)
        out[0] = '\0';
    json_decref(a);
    return ok;
}

static void print_status(const json_t *st)
{
    char up[32], ui[1400];
    const json_t *counts = json_object_get(st, "counts");
    const char *url = web_ui_url(st, ui, sizeof ui) ? ui : nb_json_str(st, "api_url");
    fmt_uptime(json_number_value(json_object_get(st, "uptime_s")), up, sizeof up);
    printf("nilboxd %s is running (pid %lld, up %s)\n", nb_json_str(st, "version"),
           (long long)nb_json_int(st, "pid", 0), up);
    printf("  home:      %s\n", nb_json_str(st, "home"));
    printf("  socket:    %s\n", nb_json_str(st, "socket"));
    printf("  web UI:    %s\n", url && url[0] ? url : "(no TCP listener)");
    printf("  log:       %s\n", nb_json_str(st, "log"));
    printf("  events:    %lld (%lld live subscribers)\n",
           (long long)nb_json_int(counts, "events", 0),
           (long long)nb_json_int(counts, "event_clients", 0));
    const json_t *sec = json_object_get(st, "secrets");
    const char *state = nb_json_str(sec, "state"), *prov = nb_json_str(sec, "provider");
    const char *hint = nb_json_str(sec, "hint");
    char esc[600];
    if (!state)
        return;
    if (!strcmp(state, "locked")) {
        printf("  secrets:   LOCKED: %s\n", hint ? hint : "run 'nilbox secret unlock'");
        return;
    }
    printf("  secrets:   %s", state);
    if (prov && prov[0])
        printf(" (%s)", prov);
    if (hint && hint[0])
        printf(": %s", nb_log_escape(esc, sizeof esc, hint, strlen(hint)));
    printf("\n");
}

static int not_running(nb_cli_t *cli)
{
    pid_t holder = 0;
    nb_home_lock_holder(&cli->home, &holder);
    if (cli->json) {
        json_t *j = json_pack("{s:b, s:s, s:s, s:s, s:I}", "running", 0, "home", cli->home.home,
                              "runtime_dir", cli->home.runtime, "socket", cli->home.sock,
                              "lock_holder", (json_int_t)holder);
        nb_cli_print_json(j);
        json_decref(j);
    }
    if (holder)
        fprintf(stderr,
                "nilbox: nilboxd (pid %ld) holds the lock for %s but does not answer on %s\n",
                (long)holder, cli->home.home, cli->home.sock);
    else
        fprintf(stderr, "nilbox: nilboxd is not running (NILBOX_HOME %s)\n", cli->home.home);
    return NB_CLI_UNREACHABLE;
}

static int do_status(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    nb_client_resp_t resp;
    int r = nb_client_request(cli->home.sock, "GET", "/v1/status", 10000, &resp);
    if (r < 0)
        return not_running(cli);
    if (resp.status != 200 || !resp.json) {
        const char *m = resp.json ? nb_json_str(resp.json, "message") : NULL;
        int code = nb_cli_fail(cli, NB_CLI_ERROR, "bad_status", "status failed: %s",
                               m ? m : "unexpected answer");
        nb_client_resp_free(&resp);
        return code;
    }
    if (cli->json) {
        char ui[1400];
        json_object_set_new(resp.json, "running", json_true());
        if (web_ui_url(resp.json, ui, sizeof ui))
            json_object_set_new(resp.json, "web_ui", json_string(ui));
        nb_cli_print_json(resp.json);
    } else {
        print_status(resp.json);
    }
    nb_client_resp_free(&resp);
    return NB_CLI_OK;
}

static int do_start(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    long timeout = nb_cli_opt_long(v, a, "timeout", 20, 3600);
    int started = 0;
    if (timeout < 0)
        return NB_CLI_USAGE;
    int code = nb_cli_ensure_daemon(cli, (int)timeout, 1, &started);
    if (code != NB_CLI_OK)
        return code;
    json_t *st = NULL;
    if ((code = nb_cli_call(cli, "GET", "/v1/status", NULL, &st)) != NB_CLI_OK)
        return code;
    if (cli->json) {
        json_object_set_new(st, "running", json_true());
        json_object_set_new(st, "started", json_boolean(started));
        nb_cli_print_json(st);
    } else {
        if (!started)
            printf("nilboxd is already running.\n");
        print_status(st);
    }
    json_decref(st);
    /* With the passphrase provider every start leaves the store locked:
     * on a terminal, offer to unlock it right here. */
    if (!cli->json && isatty(STDIN_FILENO) && isatty(STDERR_FILENO)) {
        fflush(stdout);
        return nb_cli_secret_unlock_offer(cli);
    }
    return NB_CLI_OK;
}

static int wait_gone(nb_cli_t *cli, long timeout_s, pid_t *last)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pid_t holder = 0;
        nb_home_lock_holder(&cli->home, &holder);
        *last = holder;
        if (!holder)
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= timeout_s)
            return 0;
        usleep(50 * 1000);
    }
}

static int do_stop(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    long timeout = nb_cli_opt_long(v, a, "timeout", 20, 3600);
    if (timeout < 0)
        return NB_CLI_USAGE;
    pid_t pid = 0;
    nb_client_resp_t resp;
    int r = nb_client_request(cli->home.sock, "POST", "/v1/daemon/stop", 10000, &resp);
    if (r == 0) {
        pid = (pid_t)(resp.json ? nb_json_int(resp.json, "pid", 0) : 0);
        int st = resp.status;
        nb_client_resp_free(&resp);
        if (st != 202)
            return nb_cli_fail(cli, NB_CLI_ERROR, "stop_refused",
                               "nilboxd refused to stop (HTTP %d)", st);
    } else {
        /* No answer on the socket: a hung or half-started daemon may still
         * hold the lock; SIGTERM is its orderly way out too. */
        nb_home_lock_holder(&cli->home, &pid);
        if (!pid) {
            if (cli->json) {
                json_t *j = json_pack("{s:b, s:b}", "running", 0, "stopped", 0);
                nb_cli_print_json(j);
                json_decref(j);
            } else {
                printf("nilboxd is not running.\n");
            }
            return NB_CLI_OK;
        }
        if (kill(pid, SIGTERM) < 0)
            return nb_cli_fail(cli, NB_CLI_ERROR, "stop_failed",
                               "nilboxd (pid %ld) does not answer and cannot be signalled: %s",
                               (long)pid, strerror(errno));
    }
    pid_t left = 0;
    if (!wait_gone(cli, timeout, &left))
        return nb_cli_fail(cli, NB_CLI_ERROR, "stop_timeout",
                           "nilboxd (pid %ld) did not stop within %ld s; 'kill -9 %ld' ends it",
                           (long)left, timeout, (long)left);
    if (cli->json) {
        json_t *j =
            json_pack("{s:b, s:b, s:I}", "running", 0, "stopped", 1, "pid", (json_int_t)pid);
        nb_cli_print_json(j);
        json_decref(j);
    } else {
        printf("nilboxd stopped (pid %ld).\n", (long)pid);
    }
    return NB_CLI_OK;
}

static const nb_cli_opt_t timeout_opts[] = {
    {"timeout", 't', "SECONDS", "give up after SECONDS (default 20)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"start", "start nilboxd in the background", NULL,
     "Start nilboxd in the background for this NILBOX_HOME and wait until it answers.\n"
     "Does nothing (exit 0) when it already runs. Other commands start it on demand.",
     0, 0, timeout_opts, do_start, 0},
    {"stop", "stop nilboxd", NULL,
     "Ask nilboxd to stop and wait until it has exited (SIGTERM if it does not answer).\n"
     "Exit 0 also when it was not running.",
     0, 0, timeout_opts, do_stop, 0},
    {"status", "show whether nilboxd runs, its pid, paths and web UI address", NULL,
     "Show whether nilboxd runs for this NILBOX_HOME. Exit 3 when it does not.", 0, 0, NULL,
     do_status, 0},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_daemon = {"daemon", "start, stop or inspect the nilboxd daemon",
                                          verbs, NULL};
