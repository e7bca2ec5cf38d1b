/* nilbox limit set (--vm VM | --provider P | --secret S | --global) --per minute|hour|day|month
 *                  (--tokens N | --usd N | --requests N)
 * nilbox limit ls
 * nilbox limit rm ID */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/json.h"
#include "lib/log.h"

static int do_set(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    static const char *const scopes[] = {"vm", "provider", "secret"};
    static const char *const units[] = {"tokens", "usd", "requests"};
    const char *scope = NULL, *who = NULL, *unit = NULL, *amount = NULL;
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (nb_cli_opt(v, a, scopes[i])) {
            scope = scopes[i];
            who = nb_cli_opt(v, a, scopes[i]);
            n++;
        }
    if (nb_cli_flag(v, a, "global")) {
        scope = "global";
        n++;
    }
    int m = 0;
    for (int i = 0; i < 3; i++)
        if (nb_cli_opt(v, a, units[i])) {
            unit = units[i];
            amount = nb_cli_opt(v, a, units[i]);
            m++;
        }
    const char *per = nb_cli_opt(v, a, "per");
    if (n != 1 || m != 1 || !per) {
        fprintf(stderr, "nilbox: give one of --vm, --provider, --secret, --global; --per; and "
                        "one of --tokens, --usd, --requests (see 'nilbox limit set --help')\n");
        return NB_CLI_USAGE;
    }
    char *end;
    errno = 0;
    double x = strtod(amount, &end);
    if (!amount[0] || *end || errno || !(x > 0)) {
        fprintf(stderr, "nilbox: the amount is a positive number, not '%.40s'\n", amount);
        return NB_CLI_USAGE;
    }
    json_t *body =
        json_pack("{s:s, s:s, s:s, s:f}", "scope", scope, "window", per, "unit", unit, "amount", x);
    if (who)
        json_object_set_new(body, "who", json_string(who));
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", "/v1/limits", body, &res, &code))
        return code;
    printf("limit %lld: %g %s per %s for %s%s%s\n", (long long)nb_json_int(res, "id", 0), x, unit,
           per, scope, who ? " " : "", who ? who : "");
    json_decref(res);
    return NB_CLI_OK;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    (void)a;
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/limits", NULL, &res, &code))
        return code;
    json_t *ls = json_object_get(res, "limits");
    if (json_array_size(ls) == 0)
        printf("no limits (add one with 'nilbox limit set')\n");
    else
        printf("%5s  %-8s %-20s %-6s %-8s %12s %12s %6s  %s\n", "ID", "SCOPE", "WHO", "PER", "UNIT",
               "AMOUNT", "USED", "%", "RESETS");
    size_t i;
    json_t *l;
    json_array_foreach (ls, i, l) {
        const char *who = nb_json_str(l, "who");
        char wb[80];
        printf("%5lld  %-8s %-20s %-6s %-8s %12g %12g %5.1f%%  %s\n",
               (long long)nb_json_int(l, "id", 0), nb_json_str(l, "scope"),
               who && *who ? nb_log_escape(wb, sizeof wb, who, strlen(who)) : "-",
               nb_json_str(l, "window"), nb_json_str(l, "unit"),
               json_number_value(json_object_get(l, "amount")),
               json_number_value(json_object_get(l, "used")),
               json_number_value(json_object_get(l, "percent")), nb_json_str(l, "resets_at"));
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    long long id;
    if (nb_cli_parse_id(a->pos[0], "limit", "limit ls", &id) < 0)
        return NB_CLI_USAGE;
    return nb_cli_delete_id(cli, "limits", "limit", id);
}

static const nb_cli_opt_t set_opts[] = {
    {"vm", 0, "VM", "the limit applies to this VM"},
    {"provider", 0, "NAME", "... to this provider (openai, anthropic, gemini, bedrock, ...)"},
    {"secret", 0, "NAME", "... to requests carrying this secret"},
    {"global", 0, NULL, "... to every LLM request"},
    {"per", 0, "WINDOW", "minute (requests only), hour (rolling), day or month (UTC)"},
    {"tokens", 0, "N", "at most N tokens (input + output)"},
    {"usd", 0, "N", "at most N US dollars at the catalogue's list prices"},
    {"requests", 0, "N", "at most N requests (per minute)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"set", "add or change a spending or rate limit", NULL,
     "Limits apply to LLM requests (the hosts of the provider catalogue). Before a request\n"
     "goes out it reserves its worst case (its max_tokens and its body size) against every\n"
     "limit it falls under. At 80 % the response carries X-Nilbox-Usage-Warning and an\n"
     "event and audit row are written; at 95 %, or when the worst case would pass the\n"
     "limit, the request gets 429 with a JSON body. A limit with the same scope, window\n"
     "and unit is replaced.\n\n"
     "  nilbox limit set --vm dev --per day --usd 5\n"
     "  nilbox limit set --provider openai --per hour --tokens 200000\n"
     "  nilbox limit set --vm dev --per minute --requests 30",
     0, 0, set_opts, do_set, NB_CLI_NEEDS_DAEMON},
    {"ls", "list the limits and what each used", NULL, NULL, 0, 0, NULL, do_ls,
     NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a limit by id", "ID", NULL, 1, 1, NULL, do_rm, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_limit = {"limit", "LLM spending and rate limits", verbs, NULL};
