/* nilbox mcp add|ls|rm|logs|policy|stdio|config: MCP servers that run in a
 * VM, used by host MCP clients (docs/cli.md, "mcp").
 *
 * `mcp stdio VM NAME` is what a host client (Claude Desktop) runs: JSON-RPC
 * lines on stdin/stdout, one WebSocket text message each to the daemon's
 * session route. It prints nothing else on stdout (the client reads it);
 * its own trouble goes to stderr. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

static int valid_name(const char *n)
{
    size_t len = strlen(n);
    return len >= 1 && len <= 32 && strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789_-") == len &&
           n[0] != '-' && n[0] != '_';
}

static int check_names(nb_cli_t *cli, const char *vm, const char *name)
{
    if (valid_name(vm) && (!name || valid_name(name)))
        return 0;
    return nb_cli_fail(cli, NB_CLI_USAGE, "usage",
                       "VM and server names are 1-32 of a-z, 0-9, _ and -");
}

static int do_add(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *url = nb_cli_opt(v, a, "url");
    if (check_names(cli, a->pos[0], a->pos[1]))
        return NB_CLI_USAGE;
    if (!url == !a->nrest)
        return nb_cli_fail(cli, NB_CLI_USAGE, "usage",
                           "give the server's command after '--', or --url (not both)");
    json_t *body = json_pack("{s:s, s:s}", "vm", a->pos[0], "name", a->pos[1]);
    if (url) {
        json_object_set_new(body, "url", json_string(url));
    } else {
        json_t *argv = json_array();
        for (int i = 0; i < a->nrest; i++)
            json_array_append_new(argv, json_string(a->rest[i]));
        json_object_set_new(body, "command", argv);
    }
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", "/v1/mcp", body, &res, &code))
        return code;
    printf("added MCP server %s/%s (%s); host endpoint %s\n"
           "use it from a client: nilbox mcp config --client claude-desktop\n",
           a->pos[0], a->pos[1], nb_json_str(res, "kind"), nb_json_str(res, "endpoint"));
    json_decref(res);
    return NB_CLI_OK;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[128] = "/v1/mcp";
    if (a->npos) {
        if (check_names(cli, a->pos[0], NULL))
            return NB_CLI_USAGE;
        snprintf(path, sizeof path, "/v1/mcp?vm=%s", a->pos[0]);
    }
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    json_t *arr = json_object_get(res, "servers"), *s;
    size_t i;
    if (!json_array_size(arr))
        printf("no MCP servers (add one: nilbox mcp add VM NAME -- CMD ARGS...)\n");
    else
        printf("%-16s %-20s %-6s %-28s %s\n", "VM", "NAME", "KIND", "ENDPOINT", "COMMAND/URL");
    json_array_foreach (arr, i, s) {
        char what[512] = "", esc[600];
        const char *url = nb_json_str(s, "url");
        if (url) {
            snprintf(what, sizeof what, "%s", url);
        } else {
            size_t k;
            json_t *w;
            size_t off = 0;
            json_array_foreach (json_object_get(s, "command"), k, w) {
                int n = snprintf(what + off, sizeof what - off, "%s%s", k ? " " : "",
                                 json_string_value(w));
                if (n < 0 || (size_t)n >= sizeof what - off)
                    break;
                off += (size_t)n;
            }
        }
        nb_log_escape(esc, sizeof esc, what, strlen(what));
        printf("%-16s %-20s %-6s %-28s %s\n", nb_json_str(s, "vm"), nb_json_str(s, "name"),
               nb_json_str(s, "kind"), nb_json_str(s, "endpoint"), esc);
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[128];
    if (check_names(cli, a->pos[0], a->pos[1]))
        return NB_CLI_USAGE;
    snprintf(path, sizeof path, "/v1/mcp/%s/%s", a->pos[0], a->pos[1]);
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code))
        return code;
    printf("removed MCP server %s/%s\n", a->pos[0], a->pos[1]);
    json_decref(res);
    return NB_CLI_OK;
}

static int do_logs(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[128];
    if (check_names(cli, a->pos[0], a->pos[1]))
        return NB_CLI_USAGE;
    snprintf(path, sizeof path, "/v1/mcp/%s/%s/logs", a->pos[0], a->pos[1]);
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    /* The server's own bytes: escaped for the terminal line by line (A20). */
    const char *log = nb_json_str(res, "log");
    size_t len = json_string_length(json_object_get(res, "log"));
    char esc[2048];
    for (size_t off = 0; log && off < len;) {
        const char *nl = memchr(log + off, '\n', len - off);
        size_t n = nl ? (size_t)(nl - (log + off)) : len - off;
        printf("%s\n", nb_log_escape(esc, sizeof esc, log + off, n));
        off += n + 1;
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_policy(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[160];
    if (check_names(cli, a->pos[0], a->pos[1]))
        return NB_CLI_USAGE;
    json_t *res = NULL;
    int rc;
    if (a->npos == 2) {
        snprintf(path, sizeof path, "/v1/mcp/%s/%s", a->pos[0], a->pos[1]);
        rc = nb_cli_call(cli, "GET", path, NULL, &res);
    } else if (a->npos == 4) {
        snprintf(path, sizeof path, "/v1/mcp/%s/%s/policy", a->pos[0], a->pos[1]);
        json_t *body = json_pack("{s:s, s:s}", "tool", a->pos[2], "action", a->pos[3]);
        rc = nb_cli_call(cli, "PUT", path, body, &res);
        json_decref(body);
    } else {
        return nb_cli_fail(cli, NB_CLI_USAGE, "usage",
                           "give VM NAME to show the policy, or VM NAME TOOL ACTION to set it");
    }
    if (rc != NB_CLI_OK)
        return rc;
    json_t *pol = json_object_get(res, "policy");
    if (cli->json) {
        nb_cli_print_json(pol);
    } else {
        const char *k;
        json_t *val;
        char esc[300];
        if (!json_object_size(pol))
            printf("every tool allowed (no policy entries; the default '*' is allow)\n");
        json_object_foreach (pol, k, val)
            printf("%-40s %s\n", nb_log_escape(esc, sizeof esc, k, strlen(k)),
                   json_string_value(val));
    }
    json_decref(res);
    return NB_CLI_OK;
}

/* ------------------------------------------------------------ stdio */

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int drain(nb_wsc_t *ws, nb_buf_t *msg)
{
    for (;;) {
        int op = 0, code = 0;
        int r = nb_wsc_recv(ws, 0, &op, msg, &code);
        if (r == NB_ETIMEOUT || r == -EINTR)
            return 0;
        if (r == NB_ECLOSED)
            return code == 1000 || code == 1001 ? 1 : -1;
        if (r < 0)
            return -1;
        if (op == NB_WSC_TEXT && (write_all(1, msg->p, msg->len) < 0 || write_all(1, "\n", 1) < 0))
            return -1;
    }
}

static void too_big(void)
{
    static const char e[] =
        "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32001,\"message\":\"message too "
        "large\"}}\n";
    write_all(1, e, sizeof e - 1);
}

static int do_stdio(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[160], err[512];
    if (check_names(cli, a->pos[0], a->pos[1]))
        return NB_CLI_USAGE;
    snprintf(path, sizeof path, "/v1/mcp/%s/%s", a->pos[0], a->pos[1]);
    json_t *info = NULL;
    int rc = nb_cli_call(cli, "GET", path, NULL, &info);
    if (rc != NB_CLI_OK)
        return rc;
    /* Lines up to twice the bridge's cap go to it (it answers the ones
     * over the cap with a JSON-RPC error); longer ones are refused here. */
    size_t cap = 2 * (size_t)nb_json_int(info, "frame_max", 1 << 20);
    json_decref(info);
    snprintf(path, sizeof path, "/v1/mcp/%s/%s/session", a->pos[0], a->pos[1]);
    nb_wsc_t *ws = NULL;
    int status = 0;
    int r = nb_wsc_connect(cli->home.sock, path, 10000, &ws, &status, err, sizeof err);
    if (r < 0)
        return nb_cli_fail(cli, status == 404 ? NB_CLI_NOTFOUND : NB_CLI_ERROR, "connect",
                           "cannot open the MCP session: %s", err[0] ? err : nb_strerror(r));
    nb_buf_t line, msg;
    nb_buf_init(&line, cap + 1);
    nb_buf_init(&msg, cap + 4096);
    int skipping = 0, in_open = 1, ret = NB_CLI_OK;
    uint8_t buf[65536];
    for (;;) {
        struct pollfd pf[2] = {{.fd = nb_wsc_fd(ws), .events = POLLIN},
                               {.fd = 0, .events = POLLIN}};
        if (poll(pf, in_open ? 2 : 1, -1) < 0 && errno != EINTR)
            break;
        if (pf[0].revents) {
            int d = drain(ws, &msg);
            if (d != 0) {
                ret = d > 0 ? NB_CLI_OK : NB_CLI_ERROR;
                break;
            }
        }
        if (!in_open || !pf[1].revents)
            continue;
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the client closed our stdin: the session ends */
        for (ssize_t off = 0; off < n;) {
            uint8_t *nl = memchr(buf + off, '\n', (size_t)(n - off));
            size_t take = nl ? (size_t)(nl - (buf + off)) : (size_t)(n - off);
            if (!skipping && nb_buf_append(&line, buf + off, take) < 0) {
                nb_buf_reset(&line);
                skipping = 1;
                too_big();
            }
            off += (ssize_t)take + (nl ? 1 : 0);
            if (!nl)
                break;
            size_t len = line.len;
            if (len && line.p[len - 1] == '\r')
                len--;
            if (!skipping && len && nb_wsc_send(ws, NB_WSC_TEXT, line.p, len) < 0) {
                ret = NB_CLI_ERROR;
                goto out;
            }
            skipping = 0;
            nb_buf_reset(&line);
        }
    }
out:
    nb_buf_free(&line);
    nb_buf_free(&msg);
    nb_wsc_free(ws);
    return ret;
}

/* ------------------------------------------------------------ config */

static json_t *entry(nb_cli_t *cli, const char *client, const json_t *s, const char *self)
{
    const char *endpoint = nb_json_str(s, "endpoint");
    char auth[128];
    snprintf(auth, sizeof auth, "Bearer %s",
             nb_json_str(s, "token") ? nb_json_str(s, "token") : "");
    if (!strcmp(client, "claude-desktop"))
        return json_pack("{s:s, s:[s,s,s,s], s:{s:s}}", "command", self, "args", "mcp", "stdio",
                         nb_json_str(s, "vm"), nb_json_str(s, "name"), "env", "NILBOX_HOME",
                         cli->home.home);
    if (!strcmp(client, "cursor"))
        return json_pack("{s:s, s:{s:s}}", "url", endpoint, "headers", "Authorization", auth);
    return json_pack("{s:s, s:s, s:{s:s}}", "type", "http", "url", endpoint, "headers",
                     "Authorization", auth);
}

static int do_config(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *client = nb_cli_opt(v, a, "client");
    if (!client)
        client = "claude-desktop";
    if (strcmp(client, "claude-desktop") && strcmp(client, "claude-code") &&
        strcmp(client, "cursor") && strcmp(client, "vscode"))
        return nb_cli_fail(cli, NB_CLI_USAGE, "usage",
                           "--client is claude-desktop, claude-code, cursor or vscode");
    if (a->npos == 1 || (a->npos == 2 && check_names(cli, a->pos[0], a->pos[1])))
        return nb_cli_fail(cli, NB_CLI_USAGE, "usage", "give VM NAME, or nothing for every server");
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        snprintf(self, sizeof self, "nilbox");
    else
        self[n] = 0;
    json_t *list = NULL;
    int rc = nb_cli_call(cli, "GET", "/v1/mcp", NULL, &list);
    if (rc != NB_CLI_OK)
        return rc;
    json_t *servers = json_object();
    json_t *s;
    size_t i;
    int found = 0;
    json_array_foreach (json_object_get(list, "servers"), i, s) {
        const char *vm = nb_json_str(s, "vm"), *name = nb_json_str(s, "name");
        if (a->npos == 2 && (strcmp(vm, a->pos[0]) || strcmp(name, a->pos[1])))
            continue;
        char path[160], key[80];
        json_t *full = NULL;
        snprintf(path, sizeof path, "/v1/mcp/%s/%s?token=1", vm, name);
        if ((rc = nb_cli_call(cli, "GET", path, NULL, &full)) != NB_CLI_OK)
            break;
        snprintf(key, sizeof key, "%s-%s", vm, name);
        json_object_set_new(servers, key, entry(cli, client, full, self));
        json_decref(full);
        found++;
    }
    json_decref(list);
    if (rc == NB_CLI_OK && a->npos == 2 && !found)
        rc = nb_cli_fail(cli, NB_CLI_NOTFOUND, "not-found", "no MCP server %s/%s", a->pos[0],
                         a->pos[1]);
    if (rc == NB_CLI_OK) {
        json_t *out =
            json_pack("{s:O}", !strcmp(client, "vscode") ? "servers" : "mcpServers", servers);
        nb_cli_print_json(out);
        json_decref(out);
        if (!cli->json && isatty(2))
            fprintf(stderr, "nilbox: %s\n",
                    !strcmp(client, "claude-desktop") ? "merge into claude_desktop_config.json"
                    : !strcmp(client, "claude-code")
                        ? "merge into .mcp.json (project) or ~/.claude.json"
                    : !strcmp(client, "cursor") ? "merge into ~/.cursor/mcp.json"
                                                : "merge into .vscode/mcp.json");
    }
    json_decref(servers);
    return rc;
}

static const nb_cli_opt_t add_opts[] = {
    {"url", 0, "URL", "an HTTP MCP server in the guest: http://127.0.0.1:PORT/PATH"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t config_opts[] = {
    {"client", 'c', "CLIENT", "claude-desktop (default), claude-code, cursor or vscode"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"add", "register an MCP server that runs in a VM", "VM NAME [-- CMD ARGS...]",
     "Register a stdio MCP server (the command after '--' runs in the VM through the agent,\n"
     "started when a client connects and again when it dies; its stderr goes to the log) or,\n"
     "with --url, an HTTP MCP server listening in the guest. Each server gets a loopback\n"
     "endpoint on the host (MCP Streamable HTTP at /mcp, the older HTTP+SSE at /sse, with a\n"
     "bearer token) and can be used through\n"
     "'nilbox mcp stdio VM NAME'.",
     2, 2, add_opts, do_add, NB_CLI_NEEDS_DAEMON | NB_CLI_DASHDASH},
    {"ls", "list the registered MCP servers", "[VM]", NULL, 0, 1, NULL, do_ls, NB_CLI_NEEDS_DAEMON},
    {"rm", "remove an MCP server (its sessions end)", "VM NAME", NULL, 2, 2, NULL, do_rm,
     NB_CLI_NEEDS_DAEMON},
    {"logs", "show a server's stderr log", "VM NAME",
     "The last 64 KiB of what the server wrote on stderr, with the bridge's own notes\n"
     "(starts, exits, malformed messages) marked [nilbox].",
     2, 2, NULL, do_logs, NB_CLI_NEEDS_DAEMON},
    {"policy", "show or set the per-tool policy", "VM NAME [TOOL allow|deny|ask|clear]",
     "Without TOOL, show the policy. TOOL '*' is the server's default (allow when unset).\n"
     "deny: tools/call answers an error and tools/list hides the tool; ask: every call waits\n"
     "for a prompt ('nilbox prompts'; allow-always/deny-always set the tool's policy). Every\n"
     "call is an audit row (server, tool, decision; never the arguments).",
     2, 4, NULL, do_policy, NB_CLI_NEEDS_DAEMON},
    {"stdio", "speak MCP on stdin/stdout (for host MCP clients)", "VM NAME",
     "Bridge a host MCP client's stdio to the server in the VM: one JSON-RPC message per\n"
     "line. This is the command that goes into Claude Desktop's configuration.",
     2, 2, NULL, do_stdio, NB_CLI_NEEDS_DAEMON},
    {"config", "print a client configuration snippet", "[VM NAME]",
     "Print the mcpServers snippet for a client: claude-desktop runs 'nilbox mcp stdio';\n"
     "claude-code, cursor and vscode use the loopback HTTP endpoint with its bearer token\n"
     "(keep that file private).",
     0, 2, config_opts, do_config, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_mcp = {"mcp", "bridge MCP servers in VMs to host MCP clients",
                                       verbs, NULL};
