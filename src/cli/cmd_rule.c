/* nilbox rule add allow|deny TARGET [--port P] [--vm VM] [--http] [--note T]
 * nilbox rule ls
 * nilbox rule rm ID */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/json.h"
#include "lib/log.h"

static int do_add(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *action = a->pos[0], *target = a->pos[1];
    const char *port = nb_cli_opt(v, a, "port"), *vm = nb_cli_opt(v, a, "vm");
    const char *note = nb_cli_opt(v, a, "note");
    json_t *res = NULL;
    if (strcmp(action, "allow") != 0 && strcmp(action, "deny") != 0) {
        fprintf(stderr,
                "nilbox: the first argument is 'allow' or 'deny', not '%.40s'; see "
                "'nilbox rule add --help'\n",
                action);
        return NB_CLI_USAGE;
    }
    long p = 0;
    if (port) {
        char *end;
        errno = 0;
        p = strtol(port, &end, 10);
        if (!port[0] || *end || errno || p < 1 || p > 65535) {
            fprintf(stderr, "nilbox: --port wants a port number from 1 to 65535, not '%.40s'\n",
                    port);
            return NB_CLI_USAGE;
        }
    }
    json_t *body = json_pack("{s:s, s:s, s:b}", "action", action, "target", target, "http",
                             nb_cli_flag(v, a, "http"));
    if (p)
        json_object_set_new(body, "port", json_integer(p));
    if (vm)
        json_object_set_new(body, "vm", json_string(vm));
    if (note)
        json_object_set_new(body, "note", json_string(note));
    int code;
    if (nb_cli_call_or_json(cli, "POST", "/v1/rules", body, &res, &code))
        return code;
    const char *rvm = nb_json_str(res, "vm");
    json_int_t rp = nb_json_int(res, "port", 0);
    char pb[16] = "any port";
    if (rp)
        snprintf(pb, sizeof pb, "port %lld", (long long)rp);
    printf("rule %lld: %s %s %s%s%s\n", (long long)nb_json_int(res, "id", 0),
           nb_json_str(res, "action"), nb_json_str(res, "target"), pb, rvm ? " for vm " : "",
           rvm ? rvm : "");
    /* The daemon accepted it but says what it does not do (A13). */
    size_t wi;
    json_t *w;
    json_array_foreach (json_object_get(res, "warnings"), wi, w)
        if (json_is_string(w))
            fprintf(stderr, "nilbox: warning: %s\n", json_string_value(w));
    json_decref(res);
    return NB_CLI_OK;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/rules", NULL, &res, &code))
        return code;
    json_t *rules = json_object_get(res, "rules");
    if (json_array_size(rules) == 0)
        printf("no rules: every destination is prompted for (add one with 'nilbox rule add')\n");
    else
        printf("%5s  %-5s  %-40s %5s  %-12s %-4s  %s\n", "ID", "DO", "TARGET", "PORT", "VM", "HTTP",
               "NOTE");
    size_t i;
    json_t *r;
    json_array_foreach (rules, i, r) {
        char t[300], n[300], vmb[80], port[8];
        const char *target = nb_json_str(r, "target"), *note = nb_json_str(r, "note");
        const char *vm = nb_json_str(r, "vm");
        json_int_t p = nb_json_int(r, "port", 0);
        snprintf(port, sizeof port, "%lld", (long long)p);
        printf("%5lld  %-5s  %-40s %5s  %-12s %-4s  %s\n", (long long)nb_json_int(r, "id", 0),
               nb_json_str(r, "action"),
               nb_log_escape(t, sizeof t, target ? target : "", target ? strlen(target) : 0),
               p ? port : "any", vm ? nb_log_escape(vmb, sizeof vmb, vm, strlen(vm)) : "(all)",
               nb_json_bool(r, "http", 0) ? "yes" : "",
               note ? nb_log_escape(n, sizeof n, note, strlen(note)) : "");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    long long id;
    if (nb_cli_parse_id(a->pos[0], "rule", "rule ls", &id) < 0)
        return NB_CLI_USAGE;
    return nb_cli_delete_id(cli, "rules", "rule", id);
}

static const nb_cli_opt_t add_opts[] = {
    {"port", 'p', "P", "only this port (default: any port; or write TARGET:PORT)"},
    {"vm", 0, "VM", "only for this VM (default: every VM)"},
    {"http", 0, NULL, "traffic on this port is HTTP: inspect it (ports 80/443 always are)"},
    {"note", 0, "TEXT", "a note for yourself"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"add", "allow or deny a destination", "allow|deny TARGET",
     "Allow or deny connections to TARGET: an exact name (api.example.com), *.suffix (strict\n"
     "subdomains only: add the bare name separately), an IP (10.1.2.3, ::1) or a CIDR\n"
     "(10.0.0.0/8), optionally with :PORT. Deny rules win over allow rules; destinations no\n"
     "rule covers are prompted for ('nilbox prompts'). Internal addresses (loopback, private,\n"
     "link-local, metadata) are only reachable through an explicit IP/CIDR allow rule.\n\n"
     "  nilbox rule add allow api.openai.com --port 443\n"
     "  nilbox rule add deny '*.tracker.example'",
     2, 2, add_opts, do_add, NB_CLI_NEEDS_DAEMON},
    {"ls", "list the rules", NULL, NULL, 0, 0, NULL, do_ls, NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a rule by id", "ID", NULL, 1, 1, NULL, do_rm, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_rule = {"rule", "allow or deny destinations (the egress gate)",
                                        verbs, NULL};
