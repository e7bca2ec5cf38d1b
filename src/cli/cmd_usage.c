/* nilbox usage [--vm VM] [--by provider|model|vm|day] [--days N]
 * nilbox usage ls [--vm VM] [-n N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/json.h"
#include "lib/log.h"

/* Appends ?k=v&... for the options that are set (values percent-encoded). */
static void add_query(char *path, size_t sz, const char *k, const char *v)
{
    if (!v)
        return;
    size_t n = strlen(path);
    n += (size_t)snprintf(path + n, sz - n, "%s%s=", strchr(path, '?') ? "&" : "?", k);
    for (const unsigned char *p = (const unsigned char *)v; *p && n + 4 < sz; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.')
            path[n++] = (char)*p;
        else
            n += (size_t)snprintf(path + n, sz - n, "%%%02X", *p);
    }
    path[n] = '\0';
}

static void summary_row(const char *key, const json_t *r)
{
    printf("%-32s %8lld %12lld %12lld %12lld %12.4f %10lld\n", key,
           (long long)nb_json_int(r, "requests", 0), (long long)nb_json_int(r, "input", 0),
           (long long)nb_json_int(r, "output", 0), (long long)nb_json_int(r, "cached", 0),
           json_number_value(json_object_get(r, "cost_usd")),
           (long long)nb_json_int(r, "estimated", 0));
}

static int do_summary(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[512] = "/v1/usage";
    add_query(path, sizeof path, "vm", nb_cli_opt(v, a, "vm"));
    add_query(path, sizeof path, "by", nb_cli_opt(v, a, "by"));
    add_query(path, sizeof path, "days", nb_cli_opt(v, a, "days"));
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    printf("LLM usage, last %lld days, by %s (list prices as of %s, unverified)\n",
           (long long)nb_json_int(res, "days", 0), nb_json_str(res, "by"),
           nb_json_str(res, "prices_as_of"));
    printf("%-32s %8s %12s %12s %12s %12s %10s\n", "KEY", "REQS", "INPUT", "OUTPUT", "CACHED",
           "USD", "ESTIMATED");
    size_t i;
    json_t *r;
    json_t *rows = json_object_get(res, "rows");
    json_t *tot = json_object_get(res, "total");
    json_array_foreach (rows, i, r) {
        const char *k = nb_json_str(r, "key");
        char kb[80];
        summary_row(nb_log_escape(kb, sizeof kb, k ? k : "", k ? strlen(k) : 0), r);
    }
    summary_row("total", tot);
    json_decref(res);
    return NB_CLI_OK;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[512] = "/v1/usage/records";
    add_query(path, sizeof path, "vm", nb_cli_opt(v, a, "vm"));
    add_query(path, sizeof path, "n", nb_cli_opt(v, a, "n"));
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    printf("%-20s %-12s %-10s %-28s %8s %8s %8s %10s %s\n", "TIME", "VM", "PROVIDER", "MODEL",
           "INPUT", "OUTPUT", "CACHED", "USD", "");
    size_t i;
    json_t *r;
    json_array_foreach (json_object_get(res, "records"), i, r) {
        char tb[32], vb[40], mb[60];
        time_t t = (time_t)(nb_json_int(r, "time_ms", 0) / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(tb, sizeof tb, "%Y-%m-%d %H:%M:%S", &tm);
        const char *vm = nb_json_str(r, "vm"), *model = nb_json_str(r, "model");
        printf("%-20s %-12s %-10s %-28s %8lld %8lld %8lld %10.5f %s\n", tb,
               nb_log_escape(vb, sizeof vb, vm ? vm : "", vm ? strlen(vm) : 0),
               nb_json_str(r, "provider"),
               nb_log_escape(mb, sizeof mb, model ? model : "", model ? strlen(model) : 0),
               (long long)nb_json_int(r, "input", 0), (long long)nb_json_int(r, "output", 0),
               (long long)nb_json_int(r, "cached", 0),
               json_number_value(json_object_get(r, "cost_usd")),
               nb_json_bool(r, "estimated", 0) ? "estimated" : "");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static const nb_cli_opt_t sum_opts[] = {
    {"vm", 0, "VM", "only this VM"},
    {"by", 0, "KEY", "group by provider (default), model, vm or day"},
    {"days", 0, "N", "the last N days (default 30)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t ls_opts[] = {
    {"vm", 0, "VM", "only this VM"},
    {"n", 'n', "N", "the newest N records (default 100)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t self = {
    NULL,
    "LLM token usage and cost, summed",
    NULL,
    "Tokens and cost of the LLM requests nilbox saw (the provider catalogue's hosts), as\n"
    "the providers reported them; rows marked estimated had no usage in the response and\n"
    "were estimated from bytes. No prompt or completion text is kept.",
    0,
    0,
    sum_opts,
    do_summary,
    NB_CLI_NEEDS_DAEMON};

static const nb_cli_verb_t verbs[] = {
    {"summary", "sums by provider, model, vm or day", NULL, NULL, 0, 0, sum_opts, do_summary,
     NB_CLI_NEEDS_DAEMON},
    {"ls", "the newest request records", NULL, NULL, 0, 0, ls_opts, do_ls, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_usage = {"usage", "LLM token usage and cost", verbs, &self};
