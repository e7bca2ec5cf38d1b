/* Command table dispatch, option parsing, help and usage errors. */
#include "cli/cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/client.h"
#include "host/daemonctl.h"
#include "host/version.h"
#include "lib/err.h"
#include "lib/json.h"

#define NB_CLI_TABLE(n) &nb_cli_noun_##n,
static const nb_cli_noun_t *const nouns[] = {NB_CLI_NOUNS(NB_CLI_TABLE) NULL};
#undef NB_CLI_TABLE

static const char exit_codes[] =
    "Exit codes: 0 ok, 1 error, 2 usage error, 3 daemon not reachable, 4 not found, 5 denied.\n";

/* ----------------------------------------------------------------- output */

int nb_cli_fail(nb_cli_t *cli, int code, const char *err_code, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "nilbox: %s\n", msg);
    if (cli && cli->json) {
        json_t *j = json_pack("{s:s, s:s, s:i}", "error", err_code, "message", msg, "exit", code);
        nb_cli_print_json(j);
        json_decref(j);
    }
    return code;
}

void nb_cli_print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
}

/* ------------------------------------------------------ talking to nilboxd */

int nb_cli_send(nb_cli_t *cli, const char *method, const char *path, const char *ctype,
                nb_iov_t body, json_t **out)
{
    nb_client_resp_t resp;
    if (out)
        *out = NULL;
    int r, fd = nb_client_connect(cli->home.sock, 60000);
    if (fd < 0) {
        r = fd;
    } else {
        r = nb_client_exchange(fd, method, path, "Connection: close\r\n", ctype, body, 60000,
                               &resp);
        close(fd);
    }
    if (r < 0) {
        if (nb_client_unreachable(r))
            return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "unreachable",
                               "nilboxd is not running (no answer on %s); start it with "
                               "'nilbox daemon start'",
                               cli->home.sock);
        if (r == NB_ETIMEOUT)
            return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "timeout",
                               "nilboxd did not answer %s %s within 60 s", method, path);
        return nb_cli_fail(cli, NB_CLI_ERROR, "transport", "talking to nilboxd failed: %s",
                           nb_strerror(r));
    }
    int code = NB_CLI_OK;
    if (resp.status >= 400) {
        const char *msg = resp.json ? nb_json_str(resp.json, "message") : NULL;
        const char *err = resp.json ? nb_json_str(resp.json, "error") : NULL;
        code = resp.status == 404                         ? NB_CLI_NOTFOUND
               : resp.status == 401 || resp.status == 403 ? NB_CLI_DENIED
                                                          : NB_CLI_ERROR;
        nb_cli_fail(cli, code, err ? err : "http_error", "%s",
                    msg ? msg : "the daemon answered with an error");
    } else if (out) {
        *out = resp.json ? json_incref(resp.json) : json_object();
    }
    nb_client_resp_free(&resp);
    return code;
}

int nb_cli_call(nb_cli_t *cli, const char *method, const char *path, const json_t *body,
                json_t **out)
{
    nb_buf_t b;
    int code;
    nb_buf_init(&b, 1u << 20);
    if (body && nb_json_dump(body, &b) < 0)
        code = nb_cli_fail(cli, NB_CLI_ERROR, "internal", "cannot encode the request");
    else
        code =
            nb_cli_send(cli, method, path, body ? "application/json" : NULL, nb_buf_iov(&b), out);
    nb_buf_free(&b);
    return code;
}

int nb_cli_ensure_daemon(nb_cli_t *cli, int timeout_s, int quiet, int *started)
{
    char msg[2048];
    const char *code = "internal";
    int we_started = 0;
    pid_t pid = 0;
    if (started)
        *started = 0;
    if (nb_daemonctl_ensure(&cli->home, timeout_s, &we_started, &pid, &code, msg, sizeof msg) < 0)
        return nb_cli_fail(cli, strcmp(code, "internal") ? NB_CLI_UNREACHABLE : NB_CLI_ERROR, code,
                           "%s", msg);
    if (we_started && !quiet)
        fprintf(stderr, "nilbox: started nilboxd (pid %ld)\n", (long)pid);
    if (started)
        *started = we_started;
    return NB_CLI_OK;
}

/* ------------------------------------------------------------ suggestions */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 32 || lb > 32)
        return 99;
    size_t prev[33], cur[33];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof cur);
    }
    return prev[lb];
}

/* " (did you mean 'x'?)" or "" */
static void suggest(const char *word, const char *const *names, size_t n, char *out, size_t outsz)
{
    const char *best = NULL;
    size_t bd = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(word, names[i]);
        if (strncmp(names[i], word, strlen(word)) == 0 && strlen(word) >= 2)
            d = 1;
        if (d < bd)
            bd = d, best = names[i];
    }
    if (best)
        snprintf(out, outsz, " (did you mean '%s'?)", best);
    else
        out[0] = '\0';
}

/* ------------------------------------------------------------------- help */

static void print_opts(FILE *f, const nb_cli_opt_t *opts)
{
    char left[64];
    fprintf(f, "\nOptions:\n");
    for (const nb_cli_opt_t *o = opts; o && o->name; o++) {
        if (o->short_name)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->short_name, o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        else
            snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        fprintf(f, "  %-24s %s\n", left, o->help);
    }
    fprintf(f, "  %-24s %s\n", "--json", "machine-readable output (JSON on stdout)");
    fprintf(f, "  %-24s %s\n", "--home DIR", "use DIR as NILBOX_HOME");
    fprintf(f, "  %-24s %s\n", "-h, --help", "this help");
}

static void verb_help(FILE *f, const nb_cli_noun_t *n, const nb_cli_verb_t *v)
{
    int bare = v == n->self;
    fprintf(f, "usage: nilbox %s%s%s [options]%s%s\n\n", n->name, bare ? "" : " ",
            bare ? "" : v->name, v->args ? " " : "", v->args ? v->args : "");
    fprintf(f, "%s\n", v->help ? v->help : v->summary);
    print_opts(f, v->opts);
    if (bare && n->verbs) {
        fprintf(f, "\nVerbs:\n");
        for (const nb_cli_verb_t *x = n->verbs; x->name; x++)
            fprintf(f, "  %-10s %s\n", x->name, x->summary);
    }
}

static void noun_help(FILE *f, const nb_cli_noun_t *n)
{
    if (n->self && !n->verbs) {
        verb_help(f, n, n->self);
        return;
    }
    fprintf(f, "usage: nilbox %s <verb> [options] [args]\n\n%s\n\nVerbs:\n", n->name, n->summary);
    for (const nb_cli_verb_t *v = n->verbs; v && v->name; v++)
        fprintf(f, "  %-10s %s\n", v->name, v->summary);
    fprintf(f, "\nRun 'nilbox %s <verb> --help' for a verb's options.\n", n->name);
}

static void top_help(FILE *f)
{
    char left[64];
    fprintf(f, "usage: nilbox [--json] [--home DIR] <command> [<verb>] [options] [args]\n\n"
               "nilbox runs AI agents in QEMU VMs whose API keys never enter the guest.\n"
               "The CLI talks to the nilboxd daemon and starts it when needed.\n\n"
               "Commands:\n");
    for (size_t i = 0; nouns[i]; i++) {
        const nb_cli_noun_t *n = nouns[i];
        size_t o = (size_t)snprintf(left, sizeof left, "%s", n->name);
        for (const nb_cli_verb_t *v = n->verbs; v && v->name && o < sizeof left; v++)
            o += (size_t)snprintf(left + o, sizeof left - o, "%s%s",
                                  v == n->verbs ? (n->self ? " [" : " ") : "|", v->name);
        if (n->self && n->verbs && o < sizeof left)
            snprintf(left + o, sizeof left - o, "]");
        fprintf(f, "  %-28s %s\n", left, n->summary);
    }
    fprintf(f, "\nGlobal options (accepted anywhere):\n"
               "  --json                       machine-readable output (JSON on stdout)\n"
               "  --home DIR                   use DIR as NILBOX_HOME\n"
               "  -h, --help                   help; also 'nilbox <command> [<verb>] --help'\n"
               "  --version                    print the version\n\n"
               "Environment: NILBOX_HOME (state folder), NILBOX_RUNTIME_DIR (sockets),\n"
               "NILBOXD (path of the daemon binary), NILBOX_LOG (err|warn|info|debug).\n");
    fputs(exit_codes, f);
}

/* ---------------------------------------------------------------- parsing */

static int find_opt(const nb_cli_verb_t *v, const char *name, size_t len, char sh)
{
    for (int i = 0; v->opts && v->opts[i].name && i < NB_CLI_MAX_OPTS; i++) {
        const nb_cli_opt_t *o = &v->opts[i];
        if (sh ? o->short_name == sh : (strlen(o->name) == len && !strncmp(o->name, name, len)))
            return i;
    }
    return -1;
}

const char *nb_cli_opt(const nb_cli_verb_t *v, const nb_cli_args_t *a, const char *name)
{
    int i = find_opt(v, name, strlen(name), 0);
    return i >= 0 && a->set[i] ? a->val[i] : NULL;
}

int nb_cli_flag(const nb_cli_verb_t *v, const nb_cli_args_t *a, const char *name)
{
    int i = find_opt(v, name, strlen(name), 0);
    return i >= 0 && a->set[i];
}

long nb_cli_opt_long(const nb_cli_verb_t *v, const nb_cli_args_t *a, const char *name, long def,
                     long max)
{
    const char *s = nb_cli_opt(v, a, name);
    if (!s)
        return def;
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (!s[0] || *end || errno || x < 0 || x > max) {
        fprintf(stderr, "nilbox: --%s wants a whole number from 0 to %ld, not '%s'; see --help\n",
                name, max, s);
        return -1;
    }
    return x;
}

/* Global options that are valid at any position. Returns 1 when argv[*i]
 * was one (consuming its value), 0 when not, -1 on a usage error. */
static int global_opt(nb_cli_t *cli, int argc, char **argv, int *i, int *help)
{
    const char *s = argv[*i];
    if (!strcmp(s, "--json")) {
        cli->json = 1;
        return 1;
    }
    if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
        *help = 1;
        return 1;
    }
    if (!strncmp(s, "--home=", 7)) {
        cli->home_arg = s + 7;
        return 1;
    }
    if (!strcmp(s, "--home")) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "nilbox: --home needs a folder; see 'nilbox --help'\n");
            return -1;
        }
        cli->home_arg = argv[++*i];
        return 1;
    }
    return 0;
}

static int usage_error(const char *where, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int usage_error(const char *where, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "nilbox: %s; see 'nilbox%s%s --help'\n", msg, where[0] ? " " : "", where);
    return NB_CLI_USAGE;
}

static int parse_verb(nb_cli_t *cli, const char *where, const nb_cli_verb_t *v, int argc,
                      char **argv, nb_cli_args_t *a, int *help)
{
    memset(a, 0, sizeof *a);
    a->pos = calloc((size_t)argc + 1, sizeof *a->pos);
    if (!a->pos)
        return NB_CLI_ERROR;
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        char *s = argv[i];
        if (only_pos || s[0] != '-' || !s[1]) {
            a->pos[a->npos++] = s;
            continue;
        }
        if (!strcmp(s, "--")) {
            if (v->flags & NB_CLI_DASHDASH) {
                a->rest = argv + i + 1;
                a->nrest = argc - i - 1;
                break;
            }
            only_pos = 1;
            continue;
        }
        int g = global_opt(cli, argc, argv, &i, help);
        if (g < 0)
            return NB_CLI_USAGE;
        if (g > 0)
            continue;
        const char *name = s + (s[1] == '-' ? 2 : 1);
        const char *eq = s[1] == '-' ? strchr(name, '=') : NULL;
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int idx = s[1] == '-' ? find_opt(v, name, len, 0)
                              : (strlen(name) == 1 ? find_opt(v, NULL, 0, name[0]) : -1);
        if (idx < 0)
            return usage_error(where, "unknown option '%s' for 'nilbox %s'", s, where);
        const nb_cli_opt_t *o = &v->opts[idx];
        a->set[idx]++;
        if (!o->arg) {
            if (eq)
                return usage_error(where, "--%s takes no value", o->name);
            continue;
        }
        if (eq) {
            a->val[idx] = eq + 1;
        } else if (i + 1 < argc) {
            a->val[idx] = argv[++i];
        } else {
            return usage_error(where, "--%s needs a value (%s)", o->name, o->arg);
        }
    }
    if (*help)
        return NB_CLI_OK;
    if (a->npos < v->min_pos)
        return usage_error(where, "'nilbox %s' needs %s", where, v->args ? v->args : "arguments");
    if (v->max_pos >= 0 && a->npos > v->max_pos)
        return usage_error(where, "unexpected argument '%s' for 'nilbox %s'", a->pos[v->max_pos],
                           where);
    return NB_CLI_OK;
}

static int run_verb(nb_cli_t *cli, const nb_cli_noun_t *n, const nb_cli_verb_t *v, int argc,
                    char **argv)
{
    char where[128], err[512];
    nb_cli_args_t a;
    int help = 0;
    snprintf(where, sizeof where, "%s%s%s", n->name, v == n->self ? "" : " ",
             v == n->self ? "" : v->name);
    int code = parse_verb(cli, where, v, argc, argv, &a, &help);
    if (code == NB_CLI_OK && help) {
        verb_help(stdout, n, v);
        goto out;
    }
    if (code != NB_CLI_OK)
        goto out;
    if (nb_home_resolve(cli->home_arg, &cli->home, err, sizeof err) < 0) {
        code = nb_cli_fail(cli, NB_CLI_ERROR, "bad_home", "%s", err);
        goto out;
    }
    if (v->flags & NB_CLI_NEEDS_DAEMON) {
        if ((code = nb_cli_ensure_daemon(cli, 20, cli->json, NULL)) != NB_CLI_OK)
            goto out;
    }
    code = v->fn(cli, v, &a);
out:
    free(a.pos);
    return code;
}

int nb_cli_main(nb_cli_t *cli, int argc, char **argv)
{
    const char *names[64];
    size_t nn = 0;
    char sug[128];
    int i = 0, help = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        int g = global_opt(cli, argc, argv, &i, &help);
        if (g < 0)
            return NB_CLI_USAGE;
        if (g > 0)
            continue;
        if (!strcmp(argv[i], "--version")) {
            if (cli->json) {
                json_t *j = json_pack("{s:s}", "version", NB_VERSION);
                nb_cli_print_json(j);
                json_decref(j);
            } else {
                printf("nilbox %s\n", NB_VERSION);
            }
            return NB_CLI_OK;
        }
        return usage_error("", "unknown option '%s'", argv[i]);
    }
    if (i >= argc) {
        top_help(help ? stdout : stderr);
        return help ? NB_CLI_OK : NB_CLI_USAGE;
    }
    const char *word = argv[i++];
    const nb_cli_noun_t *n = NULL;
    for (size_t k = 0; nouns[k]; k++) {
        if (nn < 64)
            names[nn++] = nouns[k]->name;
        if (!strcmp(nouns[k]->name, word))
            n = nouns[k];
    }
    if (!n) {
        if (!strcmp(word, "help")) {
            top_help(stdout);
            return NB_CLI_OK;
        }
        suggest(word, names, nn, sug, sizeof sug);
        return usage_error("", "unknown command '%s'%s", word, sug);
    }
    if (help) { /* "nilbox --help daemon" */
        noun_help(stdout, n);
        return NB_CLI_OK;
    }
    /* The first non-option word after a noun with verbs names the verb. */
    int vi = i;
    while (vi < argc && argv[vi][0] == '-' && strcmp(argv[vi], "--") != 0)
        vi += !strcmp(argv[vi], "--home") ? 2 : 1; /* skip the global's value too */
    if (n->verbs && vi < argc && strcmp(argv[vi], "--") != 0) {
        const char *vw = argv[vi];
        nn = 0;
        for (const nb_cli_verb_t *v = n->verbs; v->name; v++) {
            if (nn < 64)
                names[nn++] = v->name;
            if (!strcmp(v->name, vw)) {
                /* Options before the verb ("nilbox vm --json ls") are fine. */
                int m = 0;
                char **rest = calloc((size_t)argc, sizeof *rest);
                if (!rest)
                    return NB_CLI_ERROR;
                for (int k = i; k < argc; k++)
                    if (k != vi)
                        rest[m++] = argv[k];
                int code = run_verb(cli, n, v, m, rest);
                free(rest);
                return code;
            }
        }
        if (!n->self) {
            suggest(vw, names, nn, sug, sizeof sug);
            return usage_error(n->name, "unknown verb '%s' for 'nilbox %s'%s", vw, n->name, sug);
        }
    }
    if (n->self)
        return run_verb(cli, n, n->self, argc - i, argv + i);
    /* A noun alone: its help, as a usage error unless asked for. */
    for (int k = i; k < argc; k++) {
        if (!strcmp(argv[k], "-h") || !strcmp(argv[k], "--help")) {
            noun_help(stdout, n);
            return NB_CLI_OK;
        }
    }
    noun_help(stderr, n);
    fprintf(stderr, "\nnilbox: 'nilbox %s' needs a verb\n", n->name);
    return NB_CLI_USAGE;
}
