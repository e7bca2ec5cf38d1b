/* nilbox secret set|ls|rm|bind|bind-aws|unbind|unlock|status
 *
 * A value never comes from argv (other users can read /proc/PID/cmdline):
 * it is read from stdin when stdin is not a terminal, otherwise from a
 * prompt with echo off. It lives in locked memory, goes from there to the
 * daemon as the raw request body (any bytes: NUL, 0xff, newlines) and is
 * wiped after the request. The passphrase travels the same way. */
#include <errno.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define VALUE_MAX 65536
#define NAME_MAX_LEN 128

/* Same rule as the daemon's nb_secrets_name_valid (placeholder names). */
static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

static int bad_name(const char *s)
{
    char esc[160];
    fprintf(stderr,
            "nilbox: '%s' is not a secret name: use a letter or '_', then letters, digits or "
            "'_' (at most %d); it becomes an environment variable in the VM\n",
            nb_log_escape(esc, sizeof esc, s, strlen(s)), NAME_MAX_LEN);
    return NB_CLI_USAGE;
}

/* ------------------------------------------------------------ reading values */

static struct termios saved_tio;
static volatile sig_atomic_t tio_saved;

static void restore_tty(void)
{
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
        tio_saved = 0;
    }
}

static void on_signal(int sig)
{
    restore_tty();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Reads one line from the terminal with echo off. */
static int read_tty(const char *prompt, uint8_t *buf, size_t cap, size_t *len)
{
    struct termios t;
    size_t n = 0;
    int r = 0;
    *len = 0;
    if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
        return -errno;
    t = saved_tio;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    t.c_lflag |= ICANON;
    tio_saved = 1;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) < 0) {
        tio_saved = 0;
        return -errno;
    }
    fputs(prompt, stderr);
    fflush(stderr);
    for (;;) {
        char c;
        ssize_t k = read(STDIN_FILENO, &c, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0 || c == '\n')
            break;
        if (n >= cap) {
            r = NB_ETOOBIG;
            continue; /* drain the line */
        }
        buf[n++] = (uint8_t)c;
    }
    restore_tty();
    fputc('\n', stderr);
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    *len = r < 0 ? 0 : n;
    return r;
}

/* Reads all of stdin (a pipe or file), dropping one trailing newline. */
static int read_stdin(uint8_t *buf, size_t cap, size_t *len)
{
    size_t n = 0;
    *len = 0;
    for (;;) {
        ssize_t k = read(STDIN_FILENO, buf + n, cap - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        if (k == 0)
            break;
        n += (size_t)k;
        if (n == cap) {
            char c;
            if (read(STDIN_FILENO, &c, 1) > 0)
                return NB_ETOOBIG;
            break;
        }
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    *len = n;
    return 0;
}

/* Asks for the len bytes at buf again (prompt `again`), into locked memory
 * that is wiped: 0 when both entries are the same, 1 when they differ, or
 * a negative error. */
static int read_again(const char *again, const uint8_t *buf, size_t len)
{
    size_t l2 = 0;
    uint8_t *chk = sodium_malloc(VALUE_MAX + 2);
    int r = chk ? read_tty(again, chk, VALUE_MAX, &l2) : -ENOMEM;
    if (r == 0 && (l2 != len || sodium_memcmp(buf, chk, l2) != 0))
        r = 1;
    sodium_free(chk);
    return r;
}

/* The value into locked memory (NUL-terminated). */
static int read_value(nb_cli_t *cli, const char *prompt, const char *again, uint8_t **out,
                      size_t *len)
{
    uint8_t *buf = sodium_malloc(VALUE_MAX + 2);
    int r;
    *out = NULL;
    *len = 0;
    if (!buf)
        return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "cannot lock memory for the value");
    if (isatty(STDIN_FILENO)) {
        r = read_tty(prompt, buf, VALUE_MAX, len);
        if (r == 0 && again && *len > 0 && (r = read_again(again, buf, *len)) > 0) {
            sodium_free(buf);
            return nb_cli_fail(cli, NB_CLI_ERROR, "mismatch", "the two entries differ");
        }
    } else {
        r = read_stdin(buf, VALUE_MAX + 1, len);
        if (r == 0 && *len > VALUE_MAX)
            r = NB_ETOOBIG;
    }
    if (r == NB_ETOOBIG) {
        sodium_free(buf);
        return nb_cli_fail(cli, NB_CLI_ERROR, "too_large", "the value is longer than %d bytes",
                           VALUE_MAX);
    }
    if (r < 0) {
        sodium_free(buf);
        return nb_cli_fail(cli, NB_CLI_ERROR, "read_failed", "cannot read the value: %s",
                           nb_strerror(r));
    }
    if (*len == 0) {
        sodium_free(buf);
        return nb_cli_fail(cli, NB_CLI_ERROR, "empty",
                           "the value is empty (pipe it on stdin, e.g. 'nilbox secret set NAME "
                           "< file', or type it at the prompt)");
    }
    buf[*len] = 0;
    *out = buf;
    return NB_CLI_OK;
}

/* Sends a secret (`val`, sodium_malloc'd, taken and freed: wiped) as the
 * raw body: no copy of it is made on the way to the socket. */
static int send_secret(nb_cli_t *cli, const char *method, const char *path, uint8_t *val,
                       size_t len, json_t **res)
{
    int code = nb_cli_send(cli, method, path, "application/octet-stream", nb_iov(val, len), res);
    sodium_free(val);
    if (code == NB_CLI_OK && cli->json)
        nb_cli_print_json(*res);
    return code;
}

/* ------------------------------------------------------------------- verbs */

static int do_set(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *name = a->pos[0];
    char path[256], prompt[200];
    uint8_t *val = NULL;
    size_t len = 0;
    json_t *res = NULL;
    if (a->npos > 1) {
        fprintf(stderr,
                "nilbox: never put a secret value on the command line (other programs "
                "can read it from the process list and your shell history); pipe it "
                "on stdin ('nilbox secret set %s < file') or type it at the prompt; "
                "see 'nilbox secret set --help'\n",
                name_ok(name) ? name : "NAME");
        return NB_CLI_USAGE;
    }
    if (!name_ok(name))
        return bad_name(name);
    snprintf(prompt, sizeof prompt, "Value for %s (not shown): ", name);
    int code = read_value(cli, prompt, NULL, &val, &len);
    if (code != NB_CLI_OK)
        return code;
    snprintf(path, sizeof path, "/v1/secrets/%s", name);
    if ((code = send_secret(cli, "PUT", path, val, len, &res)) != NB_CLI_OK || cli->json) {
        json_decref(res);
        return code;
    }
    printf("%s %s (version %lld)\n", nb_json_bool(res, "created", 0) ? "created" : "updated", name,
           (long long)nb_json_int(res, "version", 0));
    json_decref(res);
    return NB_CLI_OK;
}

static void print_binding(const json_t *b, const char *indent)
{
    char esc[600];
    const char *pl = nb_json_str(b, "placement");
    const char *host = nb_json_str(b, "host"), *pp = nb_json_str(b, "path_prefix");
    const char *vm = nb_json_str(b, "vm");
    char where[400] = "";
    if (pl && !strcmp(pl, "header"))
        snprintf(where, sizeof where, "header '%s: %s'", nb_json_str(b, "header"),
                 nb_json_str(b, "template"));
    else if (pl && !strcmp(pl, "basic"))
        snprintf(where, sizeof where, "basic user '%s'", nb_json_str(b, "user"));
    else if (pl && !strcmp(pl, "query"))
        snprintf(where, sizeof where, "query parameter '%s'", nb_json_str(b, "param"));
    else if (pl && !strcmp(pl, "sigv4")) {
        const char *rg = nb_json_str(b, "region"), *sv = nb_json_str(b, "service");
        snprintf(where, sizeof where, "AWS SigV4 re-signing (region %s, service %s)",
                 rg ? rg : "any", sv ? sv : "any");
    }
    char line[1200];
    snprintf(line, sizeof line, "#%lld %s%s %s%s%s%s", (long long)nb_json_int(b, "id", 0),
             host ? host : "?", pp && pp[0] ? pp : "", where, vm ? " vm " : "", vm ? vm : "",
             nb_json_bool(b, "allow_cleartext", 0) ? " (also over plain HTTP)" : "");
    printf("%s%s\n", indent, nb_log_escape(esc, sizeof esc, line, strlen(line)));
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/secrets", NULL, &res, &code))
        return code;
    json_t *arr = json_object_get(res, "secrets");
    if (json_array_size(arr) == 0)
        printf("no secrets (add one with 'nilbox secret set NAME')\n");
    else
        printf("%-32s %7s  %s\n", "NAME", "VERSION", "BINDINGS");
    size_t i, k;
    json_t *s, *b;
    json_array_foreach (arr, i, s) {
        char esc[160];
        const char *n = nb_json_str(s, "name");
        json_t *bl = json_object_get(s, "bindings");
        printf("%-32s %7lld  %zu%s\n",
               nb_log_escape(esc, sizeof esc, n ? n : "?", n ? strlen(n) : 1),
               (long long)nb_json_int(s, "version", 0), json_array_size(bl),
               json_array_size(bl) ? "" : " (never injected until bound: nilbox secret bind)");
        json_array_foreach (bl, k, b)
            print_binding(b, "    ");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[256];
    json_t *res = NULL;
    if (!name_ok(a->pos[0]))
        return bad_name(a->pos[0]);
    snprintf(path, sizeof path, "/v1/secrets/%s", a->pos[0]);
    int code;
    if (nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code))
        return code;
    printf("removed %s and its bindings\n", a->pos[0]);
    json_decref(res);
    return NB_CLI_OK;
}

/* Adds each given option that was set to BODY (the option "path-prefix" as the
 * field "path_prefix"), posts it as a new binding of NAME and prints the result;
 * takes BODY. */
static int post_binding(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a, const char *name,
                        json_t *body, const char *const *opts, size_t nopts)
{
    for (size_t i = 0; i < nopts; i++) {
        const char *val = nb_cli_opt(v, a, opts[i]);
        char field[32];
        snprintf(field, sizeof field, "%s", opts[i]);
        for (char *c = field; *c; c++)
            if (*c == '-')
                *c = '_';
        if (val)
            json_object_set_new(body, field, json_string(val));
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/secrets/%s/bindings", name);
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", path, body, &res, &code))
        return code;
    printf("bound %s: ", name);
    print_binding(res, "");
    json_decref(res);
    return NB_CLI_OK;
}

static int do_bind(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *name = a->pos[0];
    const char *host = nb_cli_opt(v, a, "host"), *hdr = nb_cli_opt(v, a, "header");
    const char *basic = nb_cli_opt(v, a, "basic"), *query = nb_cli_opt(v, a, "query");
    if (!name_ok(name))
        return bad_name(name);
    if (!host) {
        fprintf(stderr, "nilbox: 'nilbox secret bind' needs --host H (e.g. api.openai.com or "
                        "*.example.com); see 'nilbox secret bind --help'\n");
        return NB_CLI_USAGE;
    }
    if (!!hdr + !!basic + !!query > 1) {
        fprintf(stderr, "nilbox: give one placement: --header, --basic or --query; see "
                        "'nilbox secret bind --help'\n");
        return NB_CLI_USAGE;
    }
    json_t *body = json_pack("{s:s, s:b}", "host", host, "allow_cleartext",
                             nb_cli_flag(v, a, "allow-cleartext"));
    static const char *const opts[] = {"path-prefix", "vm", "header", "basic", "query"};
    return post_binding(cli, v, a, name, body, opts, sizeof opts / sizeof *opts);
}

/* nilbox secret bind-aws NAME --host H [--region R] [--service S]: NAME
 * holds "ACCESS_KEY_ID\nSECRET_ACCESS_KEY[\nSESSION_TOKEN]" (or a
 * credentials-file profile); the proxy re-signs, nothing is substituted. */
static int do_bind_aws(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *name = a->pos[0];
    const char *host = nb_cli_opt(v, a, "host");
    if (!name_ok(name))
        return bad_name(name);
    if (!host) {
        fprintf(stderr, "nilbox: 'nilbox secret bind-aws' needs --host H (e.g. "
                        "'*.amazonaws.com'); see 'nilbox secret bind-aws --help'\n");
        return NB_CLI_USAGE;
    }
    json_t *body = json_pack("{s:s, s:b, s:b}", "host", host, "sigv4", 1, "allow_cleartext",
                             nb_cli_flag(v, a, "allow-cleartext"));
    static const char *const opts[] = {"path-prefix", "vm", "region", "service"};
    return post_binding(cli, v, a, name, body, opts, sizeof opts / sizeof *opts);
}

static int do_unbind(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    long long id;
    if (nb_cli_parse_id(a->pos[0], "binding", "secret ls", &id) < 0)
        return NB_CLI_USAGE;
    return nb_cli_delete_id(cli, "bindings", "binding", id);
}

static void print_status(const json_t *st)
{
    char esc[700];
    const char *m = nb_json_str(st, "message"), *n = nb_json_str(st, "note");
    const char *p = nb_json_str(st, "provider"), *kf = nb_json_str(st, "key_file");
    printf("state     %s\n", nb_json_str(st, "state"));
    printf("provider  %s%s%s\n", p && p[0] ? p : "(none yet)", kf ? " " : "", kf ? kf : "");
    printf("secrets   %lld (%lld bindings)\n", (long long)nb_json_int(st, "secrets", 0),
           (long long)nb_json_int(st, "bindings", 0));
    if (m && m[0])
        printf("message   %s\n", nb_log_escape(esc, sizeof esc, m, strlen(m)));
    if (n && n[0])
        printf("note      %s\n", nb_log_escape(esc, sizeof esc, n, strlen(n)));
}

static int do_status(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    int code = nb_cli_call(cli, "GET", "/v1/keystore", NULL, &res);
    if (code != NB_CLI_OK)
        return code;
    if (cli->json)
        nb_cli_print_json(res);
    else
        print_status(res);
    const char *s = nb_json_str(res, "state");
    code = s && !strcmp(s, "open") ? NB_CLI_OK : NB_CLI_ERROR;
    json_decref(res);
    return code;
}

/* Reads the passphrase for the offer of `daemon start`: empty = skip (0
 * and *out NULL). A new store asks twice. */
static int read_offer(nb_cli_t *cli, int fresh, uint8_t **out, size_t *len)
{
    uint8_t *buf = sodium_malloc(VALUE_MAX + 2);
    *out = NULL;
    *len = 0;
    if (!buf)
        return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "cannot lock memory for the value");
    int r = read_tty(fresh ? "New passphrase for the secret store (empty: not now): "
                           : "Passphrase to unlock it now (empty: not now): ",
                     buf, VALUE_MAX, len);
    if (r == 0 && *len > 0 && fresh && (r = read_again("Repeat the passphrase: ", buf, *len)) > 0) {
        sodium_free(buf);
        return nb_cli_fail(cli, NB_CLI_ERROR, "mismatch",
                           "the two entries differ; run 'nilbox secret unlock' to try again");
    }
    if (r < 0 || *len == 0) {
        sodium_free(buf);
        *len = 0;
        return r < 0 ? nb_cli_fail(cli, NB_CLI_ERROR, "read_failed",
                                   "cannot read the passphrase: %s", nb_strerror(r))
                     : NB_CLI_OK;
    }
    buf[*len] = 0;
    *out = buf;
    return NB_CLI_OK;
}

/* Sends the passphrase (takes `pass`, a sodium_malloc'd secret). */
static int send_passphrase(nb_cli_t *cli, uint8_t *pass, size_t len, int fresh, int offer)
{
    json_t *res = NULL;
    int code = send_secret(cli, "POST", "/v1/keystore/unlock", pass, len, &res);
    if (code != NB_CLI_OK || cli->json) {
        if (code != NB_CLI_OK && offer)
            fprintf(stderr, "nilbox: the daemon runs; try again with 'nilbox secret unlock'\n");
        json_decref(res);
        return code;
    }
    printf("the secret store is open (%s)\n", fresh ? "new passphrase set" : "unlocked");
    json_decref(res);
    return NB_CLI_OK;
}

/* `offer`: called by `daemon start` on a terminal: waits for the store to
 * leave "starting", says nothing unless it is locked, and an empty entry
 * skips. */
static int unlock(nb_cli_t *cli, int offer)
{
    json_t *st = NULL;
    uint8_t *pass = NULL;
    size_t len = 0;
    int code = nb_cli_call(cli, "GET", "/v1/keystore", NULL, &st);
    /* A keyring attempt may take a few seconds after the daemon starts. */
    for (int i = 0; offer && code == NB_CLI_OK && i < 100; i++) {
        const char *s0 = nb_json_str(st, "state");
        if (!s0 || strcmp(s0, "starting") != 0)
            break;
        json_decref(st);
        st = NULL;
        usleep(100 * 1000);
        code = nb_cli_call(cli, "GET", "/v1/keystore", NULL, &st);
    }
    if (code != NB_CLI_OK)
        return code;
    const char *state = nb_json_str(st, "state");
    const char *prov = nb_json_str(st, "provider");
    int fresh = !prov || !prov[0];
    if (offer && (!state || strcmp(state, "locked") != 0)) {
        json_decref(st);
        return NB_CLI_OK;
    }
    if (!state || strcmp(state, "locked") != 0) {
        code = state && !strcmp(state, "open")
                   ? (printf("the secret store is already open\n"), NB_CLI_OK)
                   : nb_cli_fail(cli, NB_CLI_ERROR, "wrong_state",
                                 "the secret store is %s, not waiting for a passphrase: %s",
                                 state ? state : "?", nb_json_str(st, "message"));
        json_decref(st);
        return code;
    }
    if (offer) {
        json_decref(st);
        fprintf(stderr,
                "nilbox: the secret store is locked%s: guests get no placeholders and "
                "their egress answers 503 until it is unlocked.\n",
                fresh ? " (no passphrase set yet, and no OS keyring)" : "");
        code = read_offer(cli, fresh, &pass, &len);
        if (code != NB_CLI_OK)
            return code;
        if (!pass) {
            fprintf(stderr, "nilbox: not unlocked; run 'nilbox secret unlock' when you want\n");
            return NB_CLI_OK;
        }
        return send_passphrase(cli, pass, len, fresh, 1);
    }
    json_decref(st);
    code = read_value(cli, fresh ? "New passphrase for the secret store: " : "Passphrase: ",
                      fresh ? "Repeat the passphrase: " : NULL, &pass, &len);
    if (code != NB_CLI_OK)
        return code;
    return send_passphrase(cli, pass, len, fresh, 0);
}

static int do_unlock(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    return unlock(cli, 0);
}

int nb_cli_secret_unlock_offer(nb_cli_t *cli)
{
    return unlock(cli, 1);
}

static const nb_cli_opt_t bind_opts[] = {
    {"host", 'H', "HOST",
     "where the secret may go: a name, *.suffix (subdomains; not *.com or another public suffix) "
     "or an IP"},
    {"path-prefix", 0, "P", "only for request paths under P (/v1 matches /v1 and /v1/...)"},
    {"header", 0, "SPEC",
     "header placement, e.g. 'Authorization: Bearer {secret}' (the default) or 'x-api-key: "
     "{secret}'"},
    {"basic", 0, "USER", "HTTP Basic placement: Authorization: Basic base64(USER:secret)"},
    {"query", 0, "PARAM", "query parameter placement: ?PARAM=<secret>"},
    {"vm", 0, "VM", "only for this VM (default: every VM)"},
    {"allow-cleartext", 0, NULL, "also inject over plain HTTP (default: only inside TLS)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t bind_aws_opts[] = {
    {"host", 'H', "HOST",
     "where requests are re-signed: a name or *.suffix, e.g. '*.amazonaws.com'"},
    {"region", 0, "R", "only requests whose credential scope names region R (default: any)"},
    {"service", 0, "S", "only requests for service S, e.g. s3 or bedrock (default: any)"},
    {"path-prefix", 0, "P", "only for request paths under P"},
    {"vm", 0, "VM", "only for this VM (default: every VM)"},
    {"allow-cleartext", 0, NULL, "also over plain HTTP (default: only inside TLS)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"set", "store a secret (value from stdin or a hidden prompt, never argv)", "NAME",
     "Store or replace the secret NAME. The value is read from stdin when stdin is not a\n"
     "terminal (one trailing newline is dropped), else from a prompt that does not echo.\n"
     "It is never taken from the command line. NAME is also the placeholder the VM sees\n"
     "(NAME=NAME in its environment). Bind it to hosts with 'nilbox secret bind'.\n\n"
     "  printf %s \"$KEY\" | nilbox secret set OPENAI_API_KEY\n"
     "  nilbox secret set OPENAI_API_KEY < ~/keys/openai",
     1, 2, NULL, do_set, NB_CLI_NEEDS_DAEMON},
    {"ls", "list secrets and their bindings (never values)", NULL, NULL, 0, 0, NULL, do_ls,
     NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a secret and its bindings", "NAME", NULL, 1, 1, NULL, do_rm,
     NB_CLI_NEEDS_DAEMON},
    {"bind", "allow a secret to be injected for a host", "NAME",
     "Allow the secret NAME to be injected into requests to --host, in one placement\n"
     "(default: header 'Authorization: Bearer {secret}'). The VM sends the placeholder NAME\n"
     "in that place; the proxy replaces it only there, only for that host, only inside TLS\n"
     "unless --allow-cleartext.",
     1, 1, bind_opts, do_bind, NB_CLI_NEEDS_DAEMON},
    {"bind-aws", "re-sign AWS SigV4 requests to a host with the real credentials", "NAME",
     "The secret NAME holds AWS credentials: 'ACCESS_KEY_ID', 'SECRET_ACCESS_KEY' and\n"
     "optionally 'SESSION_TOKEN' on separate lines (or one profile of a credentials file).\n"
     "The VM has AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=\n"
     "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN=AWS_SESSION_TOKEN and signs with them;\n"
     "toward --host the proxy checks that signature and signs the request again with the\n"
     "real key (headers, presigned URLs, aws-chunked uploads). Anything else passes as sent.\n\n"
     "  printf '%s\\n%s\\n' \"$AKID\" \"$SECRET\" | nilbox secret set AWS\n"
     "  nilbox secret bind-aws AWS --host '*.amazonaws.com' --region eu-west-1",
     1, 1, bind_aws_opts, do_bind_aws, NB_CLI_NEEDS_DAEMON},
    {"unbind", "remove a binding by id (see 'nilbox secret ls')", "ID", NULL, 1, 1, NULL, do_unbind,
     NB_CLI_NEEDS_DAEMON},
    {"unlock", "give the passphrase that protects the secret store", NULL,
     "Unlock the secret store with its passphrase, or choose the passphrase when the store\n"
     "is new and no OS keyring is available. Read from a hidden prompt (asked twice for a\n"
     "new passphrase) or from stdin.",
     0, 0, NULL, do_unlock, NB_CLI_NEEDS_DAEMON},
    {"status", "which master key provider is in use, and whether the store is open", NULL,
     "Show the secret store's state (starting, locked, open, error), the master key\n"
     "provider (keyring, passphrase, keyfile) and why it is locked. Exit 1 unless open.",
     0, 0, NULL, do_status, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_secret = {"secret", "store API keys and bind them to hosts", verbs,
                                          NULL};
