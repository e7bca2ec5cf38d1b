/* nilbox port add VM HOSTPORT[:GUESTPORT] [--bind ADDR] [--public]
 * nilbox port ls [VM]
 * nilbox port rm ID | VM HOSTPORT
 * See docs/cli.md ("Port mappings") and docs/internals/ports.md. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/portspec.h"

static int do_add(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *vm = a->pos[0], *spec = a->pos[1];
    const char *bind = nb_cli_opt(v, a, "bind");
    int public_ = nb_cli_flag(v, a, "public");
    uint16_t hp, gp;
    if (nb_portspec_parse(spec, strlen(spec), &hp, &gp) < 0) {
        fprintf(stderr,
                "nilbox: '%.40s' is not HOSTPORT:GUESTPORT (or PORT for both): ports are numbers "
                "from 1 to 65535\n",
                spec);
        return NB_CLI_USAGE;
    }
    json_t *body = json_pack("{s:s, s:i, s:i, s:b}", "vm", vm, "host_port", hp, "guest_port", gp,
                             "public", public_);
    if (bind)
        json_object_set_new(body, "bind", json_string(bind));
    json_t *res = NULL;
    int code;
    if (!nb_cli_call_or_json(cli, "POST", "/v1/ports", body, &res, &code)) {
        const char *b = nb_json_str(res, "bind");
        int v6 = b && strchr(b, ':');
        printf("port %lld: %s%s%s:%u -> vm %s port %u\n", (long long)nb_json_int(res, "id", 0),
               v6 ? "[" : "", b ? b : "?", v6 ? "]" : "", hp, vm, gp);
        json_decref(res);
    }
    if (code == NB_CLI_OK && public_)
        fprintf(stderr,
                "nilbox: warning: %s:%u is not a loopback address: anyone who can reach it can "
                "connect to port %u of VM %s, with no authentication by nilbox\n",
                bind ? bind : "127.0.0.1", hp, gp, vm);
    return code;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[128];
    if (a->npos > 0) {
        char esc[80];
        for (const char *p = a->pos[0]; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
                return nb_cli_fail(cli, NB_CLI_USAGE, "invalid", "'%s' is not a VM name",
                                   nb_log_escape(esc, sizeof esc, a->pos[0], strlen(a->pos[0])));
        snprintf(path, sizeof path, "/v1/ports?vm=%.64s", a->pos[0]);
    } else {
        snprintf(path, sizeof path, "/v1/ports");
    }
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    json_t *ports = json_object_get(res, "ports");
    if (json_array_size(ports) == 0)
        printf("no port mappings (add one with 'nilbox port add VM HOSTPORT:GUESTPORT')\n");
    else
        printf("%4s  %-12s %-24s %6s  %-10s %5s  %s\n", "ID", "VM", "HOST", "GUEST", "STATE",
               "CONNS", "NOTE");
    size_t i;
    json_t *p;
    json_array_foreach (ports, i, p) {
        char host[80], vmb[80], err[200];
        const char *b = nb_json_str(p, "bind"), *vm = nb_json_str(p, "vm");
        const char *e = nb_json_str(p, "error");
        snprintf(host, sizeof host, strchr(b ? b : "", ':') ? "[%s]:%lld" : "%s:%lld", b ? b : "?",
                 (long long)nb_json_int(p, "host_port", 0));
        printf("%4lld  %-12s %-24s %6lld  %-10s %5lld  %s%s\n", (long long)nb_json_int(p, "id", 0),
               nb_log_escape(vmb, sizeof vmb, vm ? vm : "", vm ? strlen(vm) : 0), host,
               (long long)nb_json_int(p, "guest_port", 0),
               nb_json_bool(p, "listening", 0) ? "listening" : "error",
               (long long)nb_json_int(p, "connections", 0),
               nb_json_bool(p, "public", 0) ? "PUBLIC " : "",
               e ? nb_log_escape(err, sizeof err, e, strlen(e)) : "");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[128], *end;
    json_t *res = NULL;
    if (a->npos == 1) {
        long long id = strtoll(a->pos[0], &end, 10);
        if (!a->pos[0][0] || *end || id < 1)
            return nb_cli_fail(cli, NB_CLI_USAGE, "invalid",
                               "give a mapping id (see 'nilbox port ls') or VM HOSTPORT");
        snprintf(path, sizeof path, "/v1/ports/%lld", id);
    } else {
        uint16_t hp, gp;
        const char *vm = a->pos[0];
        if (nb_portspec_parse(a->pos[1], strlen(a->pos[1]), &hp, &gp) < 0 || strlen(vm) > 63 ||
            strspn(vm, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
                strlen(vm))
            return nb_cli_fail(cli, NB_CLI_USAGE, "invalid",
                               "give VM HOSTPORT (a VM name and a port from 1 to 65535)");
        snprintf(path, sizeof path, "/v1/ports/%s/%u", vm, hp);
    }
    int code;
    if (nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code))
        return code;
    printf("removed port mapping %lld\n", (long long)nb_json_int(res, "id", 0));
    json_decref(res);
    return NB_CLI_OK;
}

static const nb_cli_opt_t add_opts[] = {
    {"bind", 0, "ADDR", "host address to listen on (default 127.0.0.1; ::1 for IPv6)"},
    {"public", 0, NULL, "allow a non-loopback --bind address (anyone who can reach it connects)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"add", "map a host port to a port of a VM", "VM HOSTPORT:GUESTPORT",
     "Listen on 127.0.0.1:HOSTPORT and carry every connection to GUESTPORT on the VM's\n"
     "loopback through the agent (the VM has no network interface). The mapping is kept\n"
     "and comes back when the VM or nilboxd restarts. While the VM is stopped, connections\n"
     "are refused. Only processes of your own user may connect to a loopback mapping (other\n"
     "local users are refused, THREATS.md A26). A busy host port is an error.\n"
     "A non-loopback --bind (e.g. 0.0.0.0) needs --public: then anyone who can reach that\n"
     "address connects, with no check by nilbox.\n\n"
     "  nilbox port add dev 8080:3000\n"
     "  nilbox port add dev 8888 --bind ::1",
     2, 2, add_opts, do_add, NB_CLI_NEEDS_DAEMON},
    {"ls", "list the port mappings", "[VM]", NULL, 0, 1, NULL, do_ls, NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a port mapping (its connections close)", "ID | VM HOSTPORT", NULL, 1, 2, NULL,
     do_rm, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_port = {"port", "map host ports to ports of a VM", verbs, NULL};
