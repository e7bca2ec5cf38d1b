/* nilbox proxy --listen 127.0.0.1:PORT --vm NAME [--upstream-ca FILE] [--resolve SPEC]
 *
 * Runs the daemon's egress proxy engine for host clients: the daemon opens
 * the listener on its own loop (same gate, rules, prompts, secrets and
 * audit as a VM), tied to a WebSocket session of this command, so the
 * listener closes when the command ends (Ctrl-C, end of input, crash).
 *
 * Any local user can reach a loopback port, so the listener takes only
 * clients that know the token this command makes (A26): it prints the
 * proxy URL http://nilbox:TOKEN@ADDR (the standard userinfo form, which
 * curl, Python and Node clients turn into Proxy-Authorization: Basic). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/cmdutil.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* Watch standard input for its end only when it is a terminal or a pipe:
 * `nilbox proxy ... &` in a script gets /dev/null and must keep running. */
static int stdin_watchable(void)
{
    struct stat st;
    if (isatty(STDIN_FILENO))
        return 1;
    return fstat(STDIN_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
}

static int add_list(json_t *arr, const char *csv)
{
    char buf[1024];
    if (!csv)
        return 0;
    if (strlen(csv) >= sizeof buf)
        return -1;
    snprintf(buf, sizeof buf, "%s", csv);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (*t)
            json_array_append_new(arr, json_string(t));
    return 0;
}

static int do_proxy(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *listen = nb_cli_opt(v, a, "listen");
    const char *vm = nb_cli_opt(v, a, "vm");
    if (!vm)
        vm = nb_cli_opt(v, a, "as");
    const char *ca = nb_cli_opt(v, a, "upstream-ca");
    const char *res = nb_cli_opt(v, a, "resolve");
    if (!listen || !vm) {
        fprintf(stderr, "nilbox: 'nilbox proxy' needs --listen 127.0.0.1:PORT and --vm NAME\n");
        return NB_CLI_USAGE;
    }
    /* --listen unix:PATH: a 0600 Unix socket (no token; the daemon serves
     * only this user), the path made absolute for the daemon. */
    char sockarg[PATH_MAX + 8], cwd[PATH_MAX];
    int is_unix = strncmp(listen, "unix:", 5) == 0;
    if (is_unix && listen[5] != '/') {
        if (!getcwd(cwd, sizeof cwd) ||
            snprintf(sockarg, sizeof sockarg, "unix:%s/%s", cwd, listen + 5) >= (int)sizeof sockarg)
            return nb_cli_fail(cli, NB_CLI_USAGE, "invalid", "the socket path is too long");
        listen = sockarg;
    }
    char capath[PATH_MAX];
    if (ca && !realpath(ca, capath))
        return nb_cli_fail(cli, NB_CLI_ERROR, "invalid", "cannot read %s: %s", ca, strerror(errno));
    /* The token is made here, so the daemon never has to send it back. */
    unsigned char raw[32];
    char token[65], url[400];
    if (sodium_init() < 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "libsodium failed to initialise");
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(token, sizeof token, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);
    json_t *req = is_unix
                      ? json_pack("{s:s, s:s}", "listen", listen, "vm", vm)
                      : json_pack("{s:s, s:s, s:s}", "listen", listen, "vm", vm, "token", token);
    json_t *rl = json_array();
    if (!req || !rl || add_list(rl, res) < 0) {
        json_decref(req);
        json_decref(rl);
        return nb_cli_fail(cli, NB_CLI_USAGE, "invalid", "--resolve is too long");
    }
    if (ca)
        json_object_set_new(req, "upstream_ca", json_string(capath));
    if (json_array_size(rl))
        json_object_set_new(req, "resolve", rl);
    else
        json_decref(rl);

    char err[512];
    nb_wsc_t *ws = NULL;
    int status = 0, code = NB_CLI_OK, cc = 0, op = 0;
    int r =
        nb_wsc_connect(cli->home.sock, "/v1/proxies/session", 10000, &ws, &status, err, sizeof err);
    if (r < 0) {
        json_decref(req);
        return nb_cli_fail(cli, nb_client_unreachable(r) ? NB_CLI_UNREACHABLE : NB_CLI_ERROR,
                           "session_failed", "cannot open a proxy session: %s",
                           err[0] ? err : nb_strerror(r));
    }
    char *s = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    r = s ? nb_wsc_send(ws, NB_WSC_TEXT, s, strlen(s)) : -ENOMEM;
    free(s);
    nb_buf_t msg;
    nb_buf_init(&msg, 1u << 20);
    json_t *ans = NULL;
    if (r == 0)
        r = nb_wsc_recv(ws, 15000, &op, &msg, &cc);
    if (r < 0 || nb_json_parse(nb_buf_iov(&msg), &ans, NULL, 0) < 0) {
        code = nb_cli_fail(cli, NB_CLI_ERROR, "session_failed",
                           "the daemon did not open the proxy: %s", nb_strerror(r));
        goto out;
    }
    const char *type = nb_json_str(ans, "type");
    if (!type || strcmp(type, "listening") != 0) {
        int st = (int)nb_json_int(ans, "status", 0);
        const char *m = nb_json_str(ans, "message");
        char esc[400];
        nb_log_escape(esc, sizeof esc, m ? m : "refused", m ? strlen(m) : 7);
        code = nb_cli_fail(cli, st == 403 ? NB_CLI_DENIED : NB_CLI_ERROR, "refused", "%s", esc);
        goto out;
    }
    const char *addr = nb_json_str(ans, "listen");
    snprintf(url, sizeof url, "http://nilbox:%s@%s", token, addr ? addr : "?");
    if (is_unix) {
        if (cli->json) {
            json_object_set_new(ans, "socket", json_string(listen + 5));
            nb_cli_print_json(ans);
        } else {
            printf("listening on %s for vm %s\n", addr ? addr : "?", vm);
            printf("proxy socket: %s (mode 0600: only your user can connect; no token)\n",
                   listen + 5);
        }
    } else if (cli->json) {
        json_object_set_new(ans, "token", json_string(token));
        json_object_set_new(ans, "proxy_url", json_string(url));
        nb_cli_print_json(ans);
    } else {
        printf("listening on %s for vm %s\n", addr ? addr : "?", vm);
        printf("proxy URL: %s\n", url);
        printf("export HTTPS_PROXY=%s\n", url);
        printf("export HTTP_PROXY=%s\n", url);
        printf("# clients must send the token (Proxy-Authorization); Ctrl-C to stop\n");
    }
    fflush(stdout);

    nb_cli_catch_stop(1);
    int watch_in = stdin_watchable();
    while (!nb_cli_stop) {
        struct pollfd pf[2] = {{.fd = nb_wsc_fd(ws), .events = POLLIN},
                               {.fd = STDIN_FILENO, .events = POLLIN}};
        int n = poll(pf, watch_in ? 2 : 1, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (pf[0].revents) {
            r = nb_wsc_recv(ws, 0, &op, &msg, &cc);
            if (r != 0 && r != NB_ETIMEOUT) {
                fprintf(stderr, "nilbox: the daemon ended the proxy session%s\n",
                        cc == 1001 ? " (it is stopping)" : "");
                code = NB_CLI_UNREACHABLE;
                break;
            }
        }
        if (watch_in && pf[1].revents) {
            char buf[256];
            ssize_t k = read(STDIN_FILENO, buf, sizeof buf);
            if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN))
                break; /* end of input */
        }
    }
out:
    sodium_memzero(token, sizeof token);
    sodium_memzero(url, sizeof url);
    json_decref(ans);
    nb_buf_free(&msg);
    nb_wsc_free(ws); /* closing the session closes the listener */
    return code;
}

static const nb_cli_opt_t opts[] = {
    {"listen", 'l', "ADDR:PORT",
     "loopback address and port to listen on (port 0: any), or unix:PATH for a 0600 socket"},
    {"vm", 0, "NAME", "the VM whose rules, secrets and prompts apply"},
    {"as", 0, "NAME", "same as --vm"},
    {"upstream-ca", 0, "FILE", "test only: also trust this CA for upstreams (NILBOX_TEST_MODE=1)"},
    {"resolve", 0, "HOST:ADDR[,...]",
     "test only: connect HOST (or HOST:PORT:ADDR:PORT) to ADDR (NILBOX_TEST_MODE=1)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t self = {
    NULL,
    "run the egress proxy for host clients (explicit HTTP proxy with CONNECT)",
    NULL,
    "Serve the egress proxy on a loopback port for programs on this host, with the rules,\n"
    "prompts, secret bindings and audit of VM NAME. Point clients at it with\n"
    "HTTPS_PROXY/HTTP_PROXY and trust the interception CA ('nilbox ca export'). Runs until\n"
    "Ctrl-C or end of input; the listener closes with this command.\n"
    "Clients must authenticate: the command prints the proxy URL\n"
    "http://nilbox:TOKEN@ADDR:PORT with a fresh random token (any user name works; --json\n"
    "gives 'token' and 'proxy_url'). Requests without it get 407. With --listen unix:PATH\n"
    "the proxy is a 0600 Unix socket that serves only your user, without a token.",
    0,
    0,
    opts,
    do_proxy,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_proxy = {"proxy", "run the egress proxy for host clients", NULL,
                                         &self};
