/* nilbox store ls|show|install|rm: the app store (docs/cli.md). `install`
 * shows the rules the app proposes and adds them only once the user
 * accepted them (THREATS.md A22), then follows the install's progress
 * from the event stream. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cmdutil.h"
#include "cli/vmwait.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define INSTALL_TIMEOUT_S 3600

/* App ids and VM names go into URL paths: only plain names pass. */
static int name_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 63 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n &&
           s[0] != '.' && s[0] != '-';
}

static int bad_name(const char *what, const char *s)
{
    char esc[200];
    nb_log_escape(esc, sizeof esc, s, strlen(s));
    fprintf(stderr, "nilbox: '%s' is not a valid %s name\n", esc, what);
    return NB_CLI_USAGE;
}

/* Prints a string field of untrusted origin (the catalogue) escaped. */
static void put(const char *label, const char *s)
{
    char esc[1200];
    if (!s)
        return;
    nb_log_escape(esc, sizeof esc, s, strlen(s));
    printf("%-10s %s\n", label, esc);
}

static void put_list(const char *label, const json_t *arr, const char *sep)
{
    char line[2048] = "", esc[600];
    json_t *x;
    size_t i, n = 0;
    json_array_foreach (arr, i, x) {
        const char *s = json_string_value(x);
        if (!s)
            continue;
        nb_log_escape(esc, sizeof esc, s, strlen(s));
        n += (size_t)snprintf(line + n, n < sizeof line ? sizeof line - n : 0, "%s%s", i ? sep : "",
                              esc);
        if (n >= sizeof line)
            break;
    }
    if (line[0])
        printf("%-10s %s\n", label, line);
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL, *inst = NULL, *e;
    size_t i;
    int code;
    const char *vm = nb_cli_opt(v, a, "vm");
    char path[160];
    if (vm && !name_ok(vm))
        return bad_name("VM", vm);
    if (vm) {
        snprintf(path, sizeof path, "/v1/vms/%s/apps", vm);
        if ((code = nb_cli_call(cli, "GET", path, NULL, &inst)) != NB_CLI_OK)
            return code;
    }
    if (nb_cli_call_or_json(cli, "GET", "/v1/store", NULL, &res, &code)) {
        json_decref(inst);
        return code;
    }
    printf("%-18s %-6s %-7s %-10s %s\n", "APP", "KIND", "IMAGE", vm ? "STATE" : "", "NAME");
    json_array_foreach (json_object_get(res, "apps"), i, e) {
        const char *id = nb_json_str(e, "id"), *state = "";
        json_t *x;
        size_t k;
        char esc[200];
        json_array_foreach (json_object_get(inst, "apps"), k, x)
            if (!strcmp(nb_json_str(x, "app"), id))
                state = "installed";
        nb_log_escape(esc, sizeof esc, nb_json_str(e, "name"), strlen(nb_json_str(e, "name")));
        printf("%-18s %-6s %-7s %-10s %s\n", id, nb_json_str(e, "kind"), nb_json_str(e, "image"),
               state, esc);
    }
    json_array_foreach (json_object_get(res, "refused"), i, e)
        fprintf(stderr, "nilbox: catalogue entry %s left out: %s\n", nb_json_str(e, "id"),
                nb_json_str(e, "reason"));
    fprintf(stderr, "catalogue %s (%s); 'nilbox store show APP' for details\n",
            nb_json_str(res, "version"), nb_json_str(res, "source"));
    json_decref(res);
    json_decref(inst);
    return NB_CLI_OK;
}

static void print_secrets(const json_t *secrets)
{
    json_t *s;
    size_t i;
    json_array_foreach (secrets, i, s) {
        char hosts[600] = "";
        json_t *h;
        size_t k, n = 0;
        json_array_foreach (json_object_get(s, "hosts"), k, h)
            n += (size_t)snprintf(hosts + n, n < sizeof hosts ? sizeof hosts - n : 0, "%s%s",
                                  k ? "," : "", json_string_value(h));
        printf("secret     %s for %s (the VM sees only the placeholder; set it with: nilbox "
               "secret set %s && nilbox secret bind %s --host %s)\n",
               nb_json_str(s, "name"), hosts, nb_json_str(s, "name"), nb_json_str(s, "name"),
               json_string_value(json_array_get(json_object_get(s, "hosts"), 0)));
    }
}

/* The entry's MCP servers as a list, whether it wrote one object or a
 * list (new reference). */
static json_t *mcp_list(const json_t *e)
{
    json_t *v = json_object_get(e, "mcp");
    if (json_is_array(v))
        return json_incref(v);
    return json_is_object(v) ? json_pack("[O]", v) : json_array();
}

/* One line per MCP server the app registers with the bridge. */
static void print_mcp(const json_t *servers, const char *vm, const char *policy)
{
    json_t *x;
    size_t i;
    json_array_foreach (servers, i, x) {
        char name[80], cmd[700] = "", esc[300];
        size_t n = 0, k;
        json_t *w;
        const char *nm = nb_json_str(x, "name");
        nb_log_escape(name, sizeof name, nm ? nm : "?", nm ? strlen(nm) : 1);
        json_array_foreach (json_object_get(x, "argv"), k, w) {
            const char *s = json_string_value(w);
            if (!s)
                continue;
            nb_log_escape(esc, sizeof esc, s, strlen(s));
            n += (size_t)snprintf(cmd + n, n < sizeof cmd ? sizeof cmd - n : 0, "%s%s",
                                  k ? " " : "", esc);
            if (n >= sizeof cmd)
                break;
        }
        printf("%-10s %s%s%s: %s (MCP server registered with the bridge on install, removed by "
               "'store rm'; tool policy: every tool %s)\n",
               "mcp", vm ? vm : "", vm ? "/" : "", name, cmd,
               policy && !strcmp(policy, "ask") ? "asks before its first use" : policy);
    }
}

static int do_show(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[160];
    json_t *e = NULL;
    int code;
    if (!name_ok(a->pos[0]))
        return bad_name("app", a->pos[0]);
    snprintf(path, sizeof path, "/v1/store/apps/%s", a->pos[0]);
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &e, &code))
        return code;
    put("app", nb_json_str(e, "id"));
    put("name", nb_json_str(e, "name"));
    put("kind", nb_json_str(e, "kind"));
    put("summary", nb_json_str(e, "summary"));
    put("vendor", nb_json_str(e, "vendor"));
    put("homepage", nb_json_str(e, "homepage"));
    put("image", nb_json_str(e, "image"));
    put_list("apt", json_object_get(e, "apt"), " ");
    put_list("npm", json_object_get(e, "npm"), " ");
    if (json_object_get(e, "script"))
        printf("%-10s yes (%zu bytes; see --json)\n", "script", strlen(nb_json_str(e, "script")));
    put_list("check", json_object_get(e, "check"), " ");
    put_list("rules", json_object_get(e, "rules"), ", ");
    print_secrets(json_object_get(e, "secrets"));
    json_t *servers = mcp_list(e);
    print_mcp(servers, NULL, "ask");
    json_decref(servers);
    json_decref(e);
    return NB_CLI_OK;
}

typedef struct {
    const char *vm, *app;
    double t0;
    char msg[800];
    json_t *done; /* the store.installed event's data (new reference) */
} install_wait_t;

static int install_event(const json_t *e, void *ud)
{
    install_wait_t *w = ud;
    const char *type = nb_json_str(e, "type"), *vm = nb_json_str(e, "vm"),
               *app = nb_json_str(e, "app");
    if (!type || !vm || !app || strcmp(vm, w->vm) != 0 || strcmp(app, w->app) != 0)
        return 0;
    if (!strcmp(type, "progress")) {
        const char *m = nb_json_str(e, "message");
        if (m)
            nb_cli_progress(nb_cli_now_s() - w->t0, m);
        return 0;
    }
    if (!strcmp(type, "store.installed")) {
        w->done = json_incref((json_t *)e);
        return 1;
    }
    if (!strcmp(type, "store.install_failed")) {
        const char *m = nb_json_str(e, "message");
        snprintf(w->msg, sizeof w->msg, "%s", m ? m : "");
        return 2;
    }
    return 0;
}

/* Asks on the terminal; 1 for yes. Without a terminal: no. */
static int ask_yes(const char *question)
{
    char line[16];
    if (!isatty(STDIN_FILENO))
        return 0;
    fprintf(stderr, "%s [y/N] ", question);
    fflush(stderr);
    if (!fgets(line, sizeof line, stdin))
        return 0;
    return line[0] == 'y' || line[0] == 'Y';
}

/* Shows the rules the app needs that are not accepted yet and adds them
 * for this VM once accepted. */
static int accept_rules(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a, const json_t *plan)
{
    const char *vm = a->pos[0], *app = a->pos[1];
    json_t *missing = json_object_get(plan, "missing_rules"), *r;
    size_t i;
    if (json_array_size(missing) == 0)
        return NB_CLI_OK;
    fprintf(stderr, "%s needs to reach these destinations from VM %s (allow rules):\n", app, vm);
    json_array_foreach (missing, i, r)
        fprintf(stderr, "  allow %s\n", json_string_value(r));
    if (!nb_cli_flag(v, a, "yes") && !ask_yes("Add these rules?"))
        return nb_cli_fail(cli, NB_CLI_DENIED, "rules-not-accepted",
                           "nothing installed: the rules were not accepted (answer y, or pass "
                           "--yes after reviewing them with 'nilbox store show %s')",
                           app);
    json_array_foreach (missing, i, r) {
        char note[128];
        snprintf(note, sizeof note, "store: %s", app);
        json_t *body = json_pack("{s:s, s:s, s:s, s:s}", "action", "allow", "target",
                                 json_string_value(r), "vm", vm, "note", note);
        int code = nb_cli_call(cli, "POST", "/v1/rules", body, NULL);
        json_decref(body);
        if (code != NB_CLI_OK)
            return code;
    }
    fprintf(stderr, "added %zu rule(s) for VM %s\n", json_array_size(missing), vm);
    return NB_CLI_OK;
}

static int do_install(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *vm = a->pos[0], *app = a->pos[1];
    char path[200];
    json_t *plan = NULL, *res = NULL;
    int code;
    if (!name_ok(vm))
        return bad_name("VM", vm);
    if (!name_ok(app))
        return bad_name("app", app);
    snprintf(path, sizeof path, "/v1/vms/%s/apps/%s/plan", vm, app);
    if ((code = nb_cli_call(cli, "GET", path, NULL, &plan)) != NB_CLI_OK)
        return code;
    if (!nb_json_bool(plan, "image_ok", 0)) {
        code = nb_cli_fail(cli, NB_CLI_ERROR, "wrong-image",
                           "%s needs a VM from the '%s' image; VM %s runs '%s' (create one: "
                           "nilbox vm create NAME --image %s --start)",
                           app, nb_json_str(plan, "image"), vm, nb_json_str(plan, "vm_image"),
                           nb_json_str(plan, "image"));
        json_decref(plan);
        return code;
    }
    if ((code = accept_rules(cli, v, a, plan)) != NB_CLI_OK) {
        json_decref(plan);
        return code;
    }
    if (!cli->json)
        print_secrets(json_object_get(plan, "secrets"));
    json_t *servers = json_incref(json_object_get(plan, "mcp"));
    json_decref(plan);

    install_wait_t w = {.vm = vm, .app = app, .t0 = nb_cli_now_s()};
    int nowait = nb_cli_flag(v, a, "no-wait");
    nb_wsc_t *ws = nowait ? NULL : nb_cli_events_open(cli);
    snprintf(path, sizeof path, "/v1/vms/%s/apps/%s", vm, app);
    code = nb_cli_call(cli, "POST", path, NULL, &res);
    if (code != NB_CLI_OK) {
        nb_wsc_free(ws);
        json_decref(servers);
        return code;
    }
    if (!ws) {
        json_decref(servers);
        if (cli->json)
            nb_cli_print_json(res);
        else
            printf("installing %s in %s; follow with 'nilbox events --follow'\n", app, vm);
        json_decref(res);
        return NB_CLI_OK;
    }
    json_decref(res);
    fprintf(stderr, "nilbox: installing %s in VM %s\n", app, vm);
    int r = nb_cli_events_wait(ws, INSTALL_TIMEOUT_S, install_event, &w);
    nb_wsc_free(ws);
    if (r == 1) {
        /* The event's own list (older daemons: the plan's). */
        json_t *names = json_object_get(w.done, "mcp");
        const char *policy = nb_json_str(w.done, "mcp_policy");
        if (cli->json) {
            json_t *o =
                json_pack("{s:s, s:s, s:b, s:O, s:s}", "vm", vm, "app", app, "installed", 1, "mcp",
                          names ? names : json_array(), "mcp_policy", policy ? policy : "ask");
            nb_cli_print_json(o);
            json_decref(o);
        } else {
            printf("%s is installed in %s (%.0f s)\n", app, vm, nb_cli_now_s() - w.t0);
            print_mcp(servers, vm, policy ? policy : "ask");
            if (json_array_size(servers))
                printf("use it from a host MCP client: nilbox mcp config; allow a tool for good: "
                       "nilbox mcp policy %s NAME TOOL allow\n",
                       vm);
        }
        json_decref(w.done);
        json_decref(servers);
        return NB_CLI_OK;
    }
    json_decref(w.done);
    json_decref(servers);
    if (r == 2)
        return nb_cli_fail(cli, NB_CLI_ERROR, "install-failed", "installing %s in %s failed: %s",
                           app, vm, w.msg);
    if (r == -EINTR)
        return nb_cli_fail(cli, NB_CLI_ERROR, "interrupted",
                           "stopped following; the install of %s goes on in the daemon", app);
    return nb_cli_fail(cli, NB_CLI_ERROR, "install-lost", "lost track of the install of %s: %s",
                       app, nb_strerror(r));
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *vm = a->pos[0], *app = a->pos[1];
    char path[200];
    json_t *res = NULL;
    int code;
    if (!name_ok(vm))
        return bad_name("VM", vm);
    if (!name_ok(app))
        return bad_name("app", app);
    snprintf(path, sizeof path, "/v1/vms/%s/apps/%s", vm, app);
    if (!nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code)) {
        json_t *x;
        size_t i;
        json_array_foreach (json_object_get(res, "mcp_removed"), i, x)
            printf("unregistered MCP server %s/%s\n", vm, json_string_value(x));
        printf("removed %s from %s (the rules added for it stay: 'nilbox rule ls --vm %s')\n", app,
               vm, vm);
    }
    json_decref(res);
    return code;
}

static const nb_cli_opt_t ls_opts[] = {
    {"vm", 0, "VM", "also show which apps are installed in VM"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t install_opts[] = {
    {"yes", 'y', NULL, "add the rules the app proposes without asking (review them first)"},
    {"no-wait", 0, NULL, "return at once; the install goes on in the daemon"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"ls", "list the catalogue's apps and MCP servers", NULL, NULL, 0, 0, ls_opts, do_ls,
     NB_CLI_NEEDS_DAEMON},
    {"show", "show what an app installs and which rules and secrets it needs", "APP", NULL, 1, 1,
     NULL, do_show, NB_CLI_NEEDS_DAEMON},
    {"install", "install an app in a running VM", "VM APP",
     "Install APP in VM by running its recipe through the VM's agent (Debian packages, npm\n"
     "packages, a script), then its check command. The destinations it must reach are shown\n"
     "and added as allow rules for VM only once you accept them. A snapshot of the VM's disk is\n"
     "taken first; if a step fails, the VM is stopped, the disk rolled back, and the VM started\n"
     "again. The MCP servers the app declares are registered with the MCP bridge (nilbox mcp\n"
     "ls) with every tool set to 'ask': a tool's first call prompts (nilbox prompts). Installing\n"
     "an app that is there already does nothing (but registers missing MCP servers).",
     2, 2, install_opts, do_install, NB_CLI_NEEDS_DAEMON},
    {"rm", "remove an app from a VM", "VM APP",
     "Unregister APP's MCP servers, remove its npm packages and run its remove script; Debian\n"
     "packages stay (other apps may use them), and so do the rules added for it.",
     2, 2, NULL, do_rm, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_store = {"store", "install apps and MCP servers into VMs", verbs,
                                         NULL};
