/* nilbox audit [--kind K] [--vm V] [--since T] [--limit N]
 * nilbox audit verify
 * nilbox audit export FILE|- */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define EXPORT_PAGE 5000

/* Appends "&key=<percent-encoded value>". */
static void add_param(char *q, size_t qsz, const char *key, const char *val)
{
    size_t o = strlen(q);
    o += (size_t)snprintf(q + o, qsz > o ? qsz - o : 0, "%s%s=", o ? "&" : "", key);
    for (const unsigned char *p = (const unsigned char *)val; *p && o + 4 < qsz; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~*", *p))
            q[o++] = (char)*p;
        else
            o += (size_t)snprintf(q + o, qsz - o, "%%%02X", *p);
    }
    q[o < qsz ? o : qsz - 1] = '\0';
}

/* One row per line: seq, time, kind, vm, host:port, then the detail's
 * fields. Everything that may come from a guest is escaped (A20). */
static void print_row(const json_t *r)
{
    char esc[1024], hp[300] = "-";
    const char *k;
    json_t *v;
    const char *vm = nb_json_str(r, "vm"), *host = nb_json_str(r, "host");
    json_int_t port = nb_json_int(r, "port", 0);
    if (host && port)
        snprintf(hp, sizeof hp, "%s:%lld", host, (long long)port);
    else if (host)
        snprintf(hp, sizeof hp, "%s", host);
    printf("%6lld %s %-16s %-12s ", (long long)nb_json_int(r, "seq", 0), nb_json_str(r, "time"),
           nb_json_str(r, "kind"), vm ? nb_log_escape(esc, 64, vm, strlen(vm)) : "-");
    printf("%s", nb_log_escape(esc, sizeof esc, hp, strlen(hp)));
    json_object_foreach (json_object_get(r, "detail"), k, v) {
        nb_cli_print_field(k, v, esc, sizeof esc);
    }
    printf("\n");
}

static int do_query(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char q[1024] = "", path[1100];
    const char *kind = nb_cli_opt(v, a, "kind"), *vm = nb_cli_opt(v, a, "vm");
    const char *since = nb_cli_opt(v, a, "since");
    long limit = nb_cli_opt_long(v, a, "limit", 100, 10000);
    json_t *res = NULL;
    if (limit < 0)
        return NB_CLI_USAGE;
    if (limit == 0) {
        fprintf(stderr, "nilbox: --limit wants a number from 1 to 10000\n");
        return NB_CLI_USAGE;
    }
    if (a->npos > 0) {
        fprintf(stderr,
                "nilbox: unknown verb '%s' for 'nilbox audit' (verify, export); see "
                "'nilbox audit --help'\n",
                a->pos[0]);
        return NB_CLI_USAGE;
    }
    if (kind)
        add_param(q, sizeof q, "kind", kind);
    if (vm)
        add_param(q, sizeof q, "vm", vm);
    if (since)
        add_param(q, sizeof q, "since", since);
    char lim[24];
    snprintf(lim, sizeof lim, "%ld", limit);
    add_param(q, sizeof q, "limit", lim);
    snprintf(path, sizeof path, "/v1/audit?%s", q);
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    size_t i;
    json_t *r;
    json_t *rows = json_object_get(res, "rows");
    if (json_array_size(rows) == 0)
        printf("no audit rows match\n");
    json_array_foreach (rows, i, r)
        print_row(r);
    json_decref(res);
    return NB_CLI_OK;
}

static int do_verify(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    int code = nb_cli_call(cli, "GET", "/v1/audit/verify", NULL, &res);
    if (code != NB_CLI_OK)
        return code;
    int ok = nb_json_bool(res, "ok", 0);
    if (cli->json) {
        nb_cli_print_json(res);
    } else if (ok) {
        printf("audit log intact: %lld rows (seq %lld..%lld), head hash %s\n",
               (long long)nb_json_int(res, "rows", 0), (long long)nb_json_int(res, "first_seq", 0),
               (long long)nb_json_int(res, "head_seq", 0), nb_json_str(res, "head_hash"));
        if (!nb_json_bool(res, "keyed", 0))
            printf("note: the secret store is locked: keyed rows were checked for linkage "
                   "only, not their MACs or the head anchor ('nilbox secret unlock')\n");
        else
            printf("%lld keyed rows, %lld unkeyed (written before an unlock, or older than the "
                   "keyed chain); head anchor: %s\n",
                   (long long)nb_json_int(res, "keyed_rows", 0),
                   (long long)nb_json_int(res, "unkeyed_rows", 0), nb_json_str(res, "anchor"));
        if (nb_json_int(res, "unanchored_rows", 0) > 0)
            printf("note: the newest %lld rows were written while the store was locked and are "
                   "not covered by a keyed row yet\n",
                   (long long)nb_json_int(res, "unanchored_rows", 0));
    } else if (nb_json_int(res, "first_bad_seq", 0) > 0) {
        long long bad = (long long)nb_json_int(res, "first_bad_seq", 0);
        long long good = (long long)nb_json_int(res, "head_seq", 0);
        printf("audit log BROKEN at seq %lld: %s\n", bad, nb_json_str(res, "reason"));
        if (good < bad)
            printf("(rows before it are intact: last good seq %lld)\n", good);
    } else {
        printf("audit log BROKEN: %s\n", nb_json_str(res, "reason"));
    }
    json_decref(res);
    return ok ? NB_CLI_OK : NB_CLI_ERROR;
}

static int write_all(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len) {
        ssize_t n = write(fd, c, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        c += n;
        len -= (size_t)n;
    }
    return 0;
}

static int do_export(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *file = a->pos[0];
    int to_stdout = !strcmp(file, "-");
    int fd = to_stdout ? STDOUT_FILENO
                       : open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    long long after = 0, total = 0;
    int code = NB_CLI_OK;
    if (fd < 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "open_failed", "cannot write %s: %s", file,
                           strerror(errno));
    fflush(stdout);
    for (;;) {
        char path[128];
        nb_client_resp_t resp;
        snprintf(path, sizeof path, "/v1/audit/export?after=%lld&limit=%d", after, EXPORT_PAGE);
        int r = nb_client_request(cli->home.sock, "GET", path, 120000, &resp);
        if (r < 0) {
            code = nb_cli_fail(cli, nb_client_unreachable(r) ? NB_CLI_UNREACHABLE : NB_CLI_ERROR,
                               "transport", "cannot read the audit log: %s", nb_strerror(r));
            break;
        }
        if (resp.status != 200) {
            const char *m = resp.json ? nb_json_str(resp.json, "message") : NULL;
            code = nb_cli_fail(cli, NB_CLI_ERROR, "export_failed", "%s",
                               m ? m : "the daemon refused the export");
            nb_client_resp_free(&resp);
            break;
        }
        /* Count lines and find the last seq to continue after. */
        size_t lines = 0;
        const char *p = (const char *)resp.body.p, *end = p + resp.body.len, *last = NULL;
        for (const char *s = p; s && s < end;) {
            const char *nl = memchr(s, '\n', (size_t)(end - s));
            if (!nl)
                break;
            last = s;
            lines++;
            s = nl + 1;
        }
        if (lines && last) {
            json_t *row = NULL;
            const char *nl = memchr(last, '\n', (size_t)(end - last));
            if (nb_json_parse(nb_iov(last, (size_t)(nl - last)), &row, NULL, 0) == 0)
                after = nb_json_int(row, "seq", after);
            json_decref(row);
        }
        r = resp.body.len ? write_all(fd, resp.body.p, resp.body.len) : 0;
        nb_client_resp_free(&resp);
        if (r < 0) {
            code = nb_cli_fail(cli, NB_CLI_ERROR, "write_failed", "cannot write %s: %s", file,
                               strerror(-r));
            break;
        }
        total += (long long)lines;
        if (lines < EXPORT_PAGE)
            break;
    }
    if (!to_stdout && close(fd) < 0 && code == NB_CLI_OK)
        code = nb_cli_fail(cli, NB_CLI_ERROR, "write_failed", "cannot write %s: %s", file,
                           strerror(errno));
    if (code == NB_CLI_OK && !to_stdout) {
        if (cli->json) {
            json_t *j = json_pack("{s:s, s:I}", "file", file, "rows", (json_int_t)total);
            nb_cli_print_json(j);
            json_decref(j);
        } else {
            printf("exported %lld rows to %s (JSON lines; check them with 'nilbox audit "
                   "verify')\n",
                   total, file);
        }
    }
    return code;
}

static const nb_cli_opt_t query_opts[] = {
    {"kind", 'k', "KIND", "only rows of this kind (gate.decision, inject, leak, secret.*, ...)"},
    {"vm", 0, "VM", "only rows about this VM"},
    {"since", 0, "T", "only rows since T: 2026-01-02T03:04:05Z, 2026-01-02, 15m, 2h, 7d"},
    {"limit", 'n', "N", "at most the newest N rows (default 100, max 10000)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"verify", "check the hash chain; say where it breaks", NULL,
     "Walk the whole audit log and check that every row links to the previous one and\n"
     "matches its hash. Prints the head hash (keep it to detect later truncation) or the\n"
     "first broken seq. Exit 1 when the chain is broken.",
     0, 0, NULL, do_verify, NB_CLI_NEEDS_DAEMON},
    {"export", "write the whole log as JSON lines to FILE (or - for stdout)", "FILE|-", NULL, 1, 1,
     NULL, do_export, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

static const nb_cli_verb_t self = {
    NULL,
    "show the audit log (gate decisions, injections, leaks, secret and rule changes)",
    NULL,
    "Show the newest rows of the audit log: gate decisions, injections (secret names only),\n"
    "leak attempts, refusals, limit events, VM lifecycle, secret/rule changes and prompt\n"
    "answers. Rows are append-only and hash-chained ('nilbox audit verify').",
    0,
    1,
    query_opts,
    do_query,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_audit = {"audit", "query, verify and export the audit log", verbs,
                                         &self};
