/* Helpers shared by the CLI's nouns; see cmdutil.h. */
#include "cli/cmdutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"

int nb_cli_call_or_json(nb_cli_t *cli, const char *method, const char *path, json_t *body,
                        json_t **res, int *code)
{
    *code = nb_cli_call(cli, method, path, body, res);
    json_decref(body);
    if (*code != NB_CLI_OK)
        return 1;
    if (!cli->json)
        return 0;
    nb_cli_print_json(*res);
    json_decref(*res);
    *res = NULL;
    return 1;
}

int nb_cli_parse_id(const char *arg, const char *what, const char *see, long long *id)
{
    char *end, esc[64];
    errno = 0;
    *id = strtoll(arg, &end, 10);
    if (arg[0] >= '0' && arg[0] <= '9' && !*end && !errno && *id >= 1)
        return 0;
    fprintf(stderr, "nilbox: %s %s id is a number >= 1 (see 'nilbox %s'), not '%s'\n",
            strchr("aeiou", what[0]) ? "an" : "a", what, see,
            nb_log_escape(esc, sizeof esc, arg, strlen(arg)));
    return -1;
}

int nb_cli_delete_id(nb_cli_t *cli, const char *coll, const char *what, long long id)
{
    char path[96];
    json_t *res = NULL;
    int code;
    snprintf(path, sizeof path, "/v1/%s/%lld", coll, id);
    if (nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code))
        return code;
    printf("removed %s %lld\n", what, id);
    json_decref(res);
    return NB_CLI_OK;
}

void nb_cli_print_field(const char *key, const json_t *v, char *esc, size_t escsz)
{
    char *s = json_is_string(v) ? strdup(json_string_value(v))
                                : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return;
    printf(" %s=%s", key, nb_log_escape(esc, escsz, s, strlen(s)));
    free(s);
}

double nb_cli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

volatile sig_atomic_t nb_cli_stop;

static void on_stop(int sig)
{
    nb_cli_stop = 1;
}

void nb_cli_catch_stop(int hup)
{
    struct sigaction sa = {.sa_handler = on_stop};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (hup)
        sigaction(SIGHUP, &sa, NULL);
}
