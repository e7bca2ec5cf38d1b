/* nilbox oauth ls
 * nilbox oauth add NAME --script SCRIPT [--vm VM]
 * nilbox oauth test NAME | --script SCRIPT [--response FILE] [--status N] [--content-type T]
 * See docs/cli.md and docs/internals/oauth.md. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/json.h"
#include "lib/log.h"

#define RESPONSE_MAX (64 * 1024)

static const char *when(json_int_t t, char *buf, size_t n)
{
    if (t <= 0)
        return "-";
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    (void)a;
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/oauth", NULL, &res, &code))
        return code;
    json_t *b = json_object_get(res, "bindings");
    if (!json_array_size(b))
        printf("no OAuth bindings (add one with 'nilbox oauth add NAME --script github')\n");
    size_t i;
    json_t *o;
    char e[512], t1[32];
    json_array_foreach (b, i, o) {
        printf("%s", nb_json_str(o, "name"));
        nb_cli_print_field("script", json_object_get(o, "script"), e, sizeof e);
        nb_cli_print_field("vm", json_object_get(o, "vm"), e, sizeof e);
        nb_cli_print_field("state", json_object_get(o, "state"), e, sizeof e);
        printf(" expires=%s", when(nb_json_int(o, "expires_at", 0), t1, sizeof t1));
        nb_cli_print_field("exchanges", json_object_get(o, "exchanges"), e, sizeof e);
        printf("\n  token endpoint");
        nb_cli_print_field("url", json_object_get(o, "token_url"), e, sizeof e);
        printf("\n  api");
        nb_cli_print_field("hosts", json_object_get(o, "api_hosts"), e, sizeof e);
        nb_cli_print_field("header", json_object_get(o, "api_header"), e, sizeof e);
        printf("\n  placeholders");
        nb_cli_print_field("secrets", json_object_get(o, "secrets"), e, sizeof e);
        printf("\n");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_add(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *script = nb_cli_opt(v, a, "script"), *vm = nb_cli_opt(v, a, "vm");
    if (!script)
        return nb_cli_fail(cli, NB_CLI_USAGE, "usage", "give the provider script: --script NAME");
    json_t *body =
        json_pack("{s:s, s:s, s:s}", "name", a->pos[0], "script", script, "vm", vm ? vm : "");
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", "/v1/oauth", body, &res, &code))
        return code;
    json_t *s = json_object_get(res, "secrets");
    char e[512];
    printf("OAuth binding %s added (script %s, %s)\n", nb_json_str(res, "name"),
           nb_json_str(res, "script"), nb_json_str(res, "source"));
    printf("  token endpoint: %s\n", nb_log_escape(e, sizeof e, nb_json_str(res, "token_url"),
                                                   strlen(nb_json_str(res, "token_url"))));
    printf("  set the client secret with: nilbox secret set %s\n", nb_json_str(s, "client_secret"));
    printf("  the guest sees placeholders: %s, %s, %s\n", nb_json_str(s, "client_secret"),
           nb_json_str(s, "access_token"), nb_json_str(s, "refresh_token"));
    json_decref(res);
    return NB_CLI_OK;
}

static int read_response(nb_cli_t *cli, const char *path, char **out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f)
        return nb_cli_fail(cli, NB_CLI_ERROR, "io", "cannot open %s: %s", path, strerror(errno));
    char *b = malloc(RESPONSE_MAX + 1);
    size_t n = b ? fread(b, 1, RESPONSE_MAX + 1, f) : 0;
    if (f != stdin)
        fclose(f);
    if (!b || n > RESPONSE_MAX) {
        free(b);
        return nb_cli_fail(cli, NB_CLI_ERROR, "too-big", "%s: over %d bytes", path, RESPONSE_MAX);
    }
    b[n] = '\0';
    *out = b;
    return NB_CLI_OK;
}

static int do_test(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *script = nb_cli_opt(v, a, "script"), *resp = nb_cli_opt(v, a, "response");
    const char *ct = nb_cli_opt(v, a, "content-type");
    long status = nb_cli_opt_long(v, a, "status", 200, 599);
    if (status < 0)
        return NB_CLI_USAGE;
    if ((a->npos == 0) == (script == NULL))
        return nb_cli_fail(cli, NB_CLI_USAGE, "usage", "give a binding NAME or --script SCRIPT");
    json_t *body = json_object();
    if (script)
        json_object_set_new(body, "script", json_string(script));
    if (resp) {
        char *text = NULL;
        int rc = read_response(cli, resp, &text);
        if (rc != NB_CLI_OK) {
            json_decref(body);
            return rc;
        }
        json_object_set_new(body, "sample",
                            json_pack("{s:i, s:s, s:s}", "status", (int)status, "content_type",
                                      ct ? ct : "application/json", "body", text));
        free(text);
    }
    char path[300];
    if (a->npos)
        snprintf(path, sizeof path, "/v1/oauth/%s/test", a->pos[0]);
    else
        snprintf(path, sizeof path, "/v1/oauth/test");
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", path, body, &res, &code))
        return code;
    char e[600];
    const char *err = nb_json_str(res, "error");
    int ok = nb_json_bool(res, "ok", 0);
    json_t *d = json_object_get(res, "declaration");
    if (d) {
        printf("script %s (%s): token endpoint https://%s:%lld%s, %s body\n",
               nb_json_str(res, "script"), nb_json_str(res, "source"), nb_json_str(d, "token_host"),
               (long long)nb_json_int(d, "token_port", 443), nb_json_str(d, "token_path"),
               nb_json_str(d, "request"));
        printf(" ");
        nb_cli_print_field("fields", json_object_get(d, "fields"), e, sizeof e);
        nb_cli_print_field("api_hosts", json_object_get(d, "api_hosts"), e, sizeof e);
        printf("\n");
    }
    json_t *p = json_object_get(res, "parsed");
    if (ok && json_is_object(p))
        printf("parse: access token (%lld bytes), refresh token (%s), expires in %lld s\n",
               (long long)nb_json_int(p, "access_token_len", 0),
               json_is_integer(json_object_get(p, "refresh_token_len")) ? "yes" : "none",
               (long long)nb_json_int(p, "expires_in", -1));
    else if (ok)
        printf("parse: no token in this response (forwarded as it is)\n");
    if (!ok)
        printf("FAILED: %s\n", nb_log_escape(e, sizeof e, err ? err : "", err ? strlen(err) : 0));
    printf("took %.2f ms\n", json_number_value(json_object_get(res, "ms")));
    json_decref(res);
    return ok ? NB_CLI_OK : NB_CLI_ERROR;
}

static const nb_cli_opt_t add_opts[] = {
    {"script", 's', "SCRIPT",
     "provider script: $NILBOX_HOME/oauth/SCRIPT.lua, else a built-in one (github, google, "
     "client_credentials)"},
    {"vm", 0, "VM", "only this VM's exchanges use the binding (default: every VM)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t test_opts[] = {
    {"script", 's', "SCRIPT", "test a script by name instead of a binding's"},
    {"response", 'r', "FILE", "a token response body to hand to parse() ('-': stdin)"},
    {"status", 0, "N", "its HTTP status (default 200)"},
    {"content-type", 0, "TYPE", "its Content-Type (default application/json)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"ls", "OAuth bindings, their scripts and token state", NULL, NULL, 0, 0, NULL, do_ls,
     NB_CLI_NEEDS_DAEMON},
    {"add", "bind a provider script under a placeholder prefix", "NAME",
     "Adds (or updates) OAuth binding NAME with a provider script. The guest then sees only\n"
     "placeholders: NAME_CLIENT_SECRET (set the real one with 'nilbox secret set'),\n"
     "NAME_ACCESS_TOKEN and NAME_REFRESH_TOKEN. When the guest calls the script's token\n"
     "endpoint, nilboxd swaps the placeholders in the request for the real values, seals the\n"
     "tokens of the answer and hands the guest placeholders; on the script's API hosts the\n"
     "access token placeholder is replaced by the real token.\n\n"
     "  nilbox oauth add GITHUB --script github\n"
     "  nilbox secret set GITHUB_CLIENT_SECRET",
     1, 1, add_opts, do_add, NB_CLI_NEEDS_DAEMON},
    {"test", "run a script in its sandbox on a sample token response", "[NAME]",
     "Runs the script of binding NAME (or --script SCRIPT) in the same sandbox as the proxy:\n"
     "prints what it declares and what parse() makes of a made-up token response, or of\n"
     "--response FILE. Token values are never printed, only their lengths. Exit 1 when the\n"
     "script fails (error, instruction budget, memory cap, timeout).",
     0, 1, test_opts, do_test, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_oauth = {
    "oauth", "scripted OAuth: the guest sees placeholder secrets and tokens", verbs, NULL};
