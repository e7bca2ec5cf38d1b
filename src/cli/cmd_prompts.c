/* nilbox prompts [--watch]
 * nilbox prompts answer ID allow-once|allow-always|deny-once|deny-always
 *
 * Destination names in prompts come from the guest. The gate has already
 * escaped and cut them (A16); they are escaped once more for the terminal
 * here, so no byte sequence can draw a fake question (A20). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define WATCH_MAX 256

static const char *const answers[] = {"allow-once", "allow-always", "deny-once", "deny-always"};

/* "allow-once" etc., or the short forms of the interactive question. */
static const char *parse_answer(const char *s)
{
    static const struct {
        const char *in, *out;
    } map[] = {
        {"o", "allow-once"},        {"once", "allow-once"},   {"a", "allow-always"},
        {"always", "allow-always"}, {"d", "deny-once"},       {"deny", "deny-once"},
        {"n", "deny-always"},       {"never", "deny-always"},
    };
    for (size_t i = 0; i < 4; i++)
        if (!strcmp(s, answers[i]))
            return answers[i];
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(s, map[i].in))
            return map[i].out;
    return NULL;
}

/* "VM 'dev' wants api.example.com port 443" with everything escaped. */
static void describe(const json_t *p, char *out, size_t outsz)
{
    char host[400], vm[160];
    const char *h = nb_json_str(p, "host"), *v = nb_json_str(p, "vm");
    nb_log_escape(host, sizeof host, h ? h : "?", h ? strlen(h) : 1);
    nb_log_escape(vm, sizeof vm, v ? v : "", v ? strlen(v) : 0);
    snprintf(out, outsz, "%s%s%s wants to connect to %s%s port %lld", v && v[0] ? "VM '" : "",
             vm[0] ? vm : "a client without a VM", v && v[0] ? "'" : "", host,
             nb_json_bool(p, "is_ip", 0) ? " (an IP address)" : "",
             (long long)nb_json_int(p, "port", 0));
}

static void print_prompt_line(const json_t *p)
{
    char d[700];
    const char *dl = nb_json_str(p, "deadline");
    describe(p, d, sizeof d);
    long long nw = (long long)nb_json_int(p, "waiters", 0);
    char wt[48];
    if (nw > 0)
        snprintf(wt, sizeof wt, "%lld waiting", nw);
    else
        snprintf(wt, sizeof wt, "nobody waiting now; an answer still applies");
    printf("%5lld  %s (denied at %s unless answered; %s)\n", (long long)nb_json_int(p, "id", 0), d,
           dl ? dl : "?", wt);
}

static int do_answer(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[64];
    json_t *res = NULL;
    long long id;
    const char *ans = parse_answer(a->pos[1]);
    if (nb_cli_parse_id(a->pos[0], "prompt", "prompts", &id) < 0)
        return NB_CLI_USAGE;
    if (!ans) {
        fprintf(stderr,
                "nilbox: answer with allow-once, allow-always, deny-once or deny-always, "
                "not '%.40s'\n",
                a->pos[1]);
        return NB_CLI_USAGE;
    }
    json_t *body = json_pack("{s:s}", "answer", ans);
    snprintf(path, sizeof path, "/v1/prompts/%lld/answer", id);
    int code;
    if (nb_cli_call_or_json(cli, "POST", path, body, &res, &code))
        return code;
    char d[700];
    const json_t *pj = json_object_get(res, "prompt");
    describe(pj, d, sizeof d);
    printf("%s: %s%s\n", ans, d,
           nb_json_int(pj, "waiters", 0) > 0 ? ""
           : strncmp(ans, "allow-a", 7) == 0 || strncmp(ans, "deny-a", 6) == 0
               ? " (nobody was waiting; the rule applies to the next connections)"
               : " (nobody was waiting)");
    json_decref(res);
    return NB_CLI_OK;
}

/* ------------------------------------------------------------------ watch */

typedef struct {
    json_t *q[WATCH_MAX]; /* pending prompts, oldest first */
    size_t n;
    int64_t asking; /* id of the prompt on screen, 0 when none */
} watch_t;

static size_t find(const watch_t *w, int64_t id)
{
    for (size_t i = 0; i < w->n; i++)
        if (nb_json_int(w->q[i], "id", 0) == id)
            return i;
    return (size_t)-1;
}

static void add(watch_t *w, json_t *p)
{
    int64_t id = nb_json_int(p, "id", 0);
    if (id < 1 || find(w, id) != (size_t)-1 || w->n >= WATCH_MAX)
        return;
    w->q[w->n++] = json_incref(p);
}

static void drop(watch_t *w, size_t i)
{
    json_decref(w->q[i]);
    memmove(w->q + i, w->q + i + 1, (w->n - i - 1) * sizeof w->q[0]);
    w->n--;
}

static void ask(nb_cli_t *cli, watch_t *w)
{
    char d[700];
    json_t *p = w->q[0];
    w->asking = nb_json_int(p, "id", 0);
    if (cli->json) {
        char *s = json_dumps(p, JSON_COMPACT);
        if (s)
            printf("%s\n", s);
        free(s);
    }
    describe(p, d, sizeof d);
    printf("\n[prompt %lld] %s\n  (denied at %s unless answered)\n"
           "  allow [o]nce, allow [a]lways, [d]eny once, deny [n]ever again, [s]kip? ",
           (long long)w->asking, d, nb_json_str(p, "deadline"));
    fflush(stdout);
}

/* Handles one event of the stream. */
static void on_event(nb_cli_t *cli, watch_t *w, const json_t *e)
{
    const char *t = nb_json_str(e, "type");
    if (!t)
        return;
    if (!strcmp(t, "prompt.created")) {
        add(w, json_object_get(e, "prompt"));
    } else if (!strcmp(t, "prompt.updated")) {
        /* Its waiter count changed: keep the newest copy. */
        json_t *p = json_object_get(e, "prompt");
        size_t i = find(w, nb_json_int(p, "id", 0));
        if (i != (size_t)-1 && p) {
            json_decref(w->q[i]);
            w->q[i] = json_incref(p);
            if (nb_json_int(p, "id", 0) == w->asking && nb_json_int(p, "waiters", 0) == 0) {
                printf("\n  (nobody is waiting any more; an answer still applies) ");
                fflush(stdout);
            }
        }
    } else if (!strcmp(t, "prompt.resolved")) {
        int64_t id = nb_json_int(e, "prompt_id", 0); /* "id" is the event's */
        size_t i = find(w, id);
        if (i == (size_t)-1)
            return;
        if (id == w->asking) {
            char esc[100];
            const char *why = nb_json_str(e, "reason");
            printf("\n  prompt %lld is gone (%s: %s)\n", (long long)id,
                   nb_json_bool(e, "allowed", 0) ? "allowed" : "denied",
                   nb_log_escape(esc, sizeof esc, why ? why : "?", why ? strlen(why) : 1));
            fflush(stdout);
            w->asking = 0;
        }
        drop(w, i);
    }
}

static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t k = read(STDIN_FILENO, &c, 1);
        if (k < 0 && errno == EINTR)
            return -EINTR;
        if (k <= 0)
            return n ? (int)n : -1; /* EOF */
        if (c == '\n')
            break;
        if (n + 1 < cap)
            buf[n++] = c;
    }
    while (n && (buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    return (int)n;
}

/* On a terminal an answer is one key, no Enter: the terminal leaves
 * canonical mode while watching and is restored on every way out. */
static struct termios saved_tio;
static int tio_saved;

static void key_mode_end(void)
{
    if (tio_saved)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
    tio_saved = 0;
}

static void key_mode_begin(void)
{
    struct termios t;
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tio) < 0)
        return;
    t = saved_tio;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0) {
        tio_saved = 1;
        atexit(key_mode_end);
    }
}

/* One answer: a key on a terminal (echoed; blanks are ignored and give 0),
 * else a line. Same returns as read_line. */
static int read_answer(char *buf, size_t cap)
{
    if (!tio_saved)
        return read_line(buf, cap);
    char c;
    ssize_t k = read(STDIN_FILENO, &c, 1);
    if (k < 0 && errno == EINTR)
        return -EINTR;
    if (k <= 0 || c == 4) /* EOF or Ctrl-D */
        return -1;
    if (c == '\n' || c == '\r' || c == ' ' || c == '\t')
        return 0;
    buf[0] = c;
    buf[1] = '\0';
    if (c >= 0x20 && c < 0x7f)
        printf("%c\n", c);
    else
        printf("\n");
    return 1;
}

static int watch(nb_cli_t *cli)
{
    char err[512];
    nb_wsc_t *ws = NULL;
    nb_buf_t msg;
    watch_t w = {0};
    json_t *list = NULL;
    int status = 0, code = NB_CLI_OK;
    int r = nb_wsc_connect(cli->home.sock, "/v1/events", 10000, &ws, &status, err, sizeof err);
    if (r < 0)
        return nb_cli_fail(cli, nb_client_unreachable(r) ? NB_CLI_UNREACHABLE : NB_CLI_ERROR,
                           "stream_failed", "cannot open the event stream: %s",
                           err[0] ? err : nb_strerror(r));
    /* The stream is open first, so no prompt created in between is missed. */
    if ((code = nb_cli_call(cli, "GET", "/v1/prompts", NULL, &list)) != NB_CLI_OK) {
        nb_wsc_free(ws);
        return code;
    }
    size_t i;
    json_t *p;
    json_array_foreach (json_object_get(list, "prompts"), i, p)
        add(&w, p);
    json_decref(list);
    nb_cli_catch_stop(0);
    nb_buf_init(&msg, 16u << 20);
    key_mode_begin();
    if (!cli->json)
        printf("watching for prompts (%sCtrl-C to stop)\n",
               tio_saved ? "answer with one key; " : "");
    fflush(stdout);
    while (!nb_cli_stop) {
        int op = 0, cc = 0;
        /* Everything already received first, then wait for more. */
        while ((r = nb_wsc_recv(ws, 0, &op, &msg, &cc)) == 0) {
            json_t *e = NULL;
            if (op == NB_WSC_TEXT && nb_json_parse(nb_buf_iov(&msg), &e, NULL, 0) == 0)
                on_event(cli, &w, e);
            json_decref(e);
        }
        if (r != NB_ETIMEOUT && r != -EINTR) {
            fprintf(stderr, "\nnilbox: the daemon closed the event stream%s\n",
                    cc == 1001 ? " (it is stopping)" : "");
            code = NB_CLI_UNREACHABLE;
            break;
        }
        if (!w.asking && w.n)
            ask(cli, &w);
        struct pollfd pf[2] = {{.fd = nb_wsc_fd(ws), .events = POLLIN},
                               {.fd = STDIN_FILENO, .events = POLLIN}};
        int n = poll(pf, w.asking ? 2 : 1, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (!w.asking || !(pf[1].revents & (POLLIN | POLLHUP)))
            continue;
        char line[64];
        int len = read_answer(line, sizeof line);
        if (len == -EINTR || len == 0)
            continue;
        if (len < 0) /* stdin closed: nobody left to answer */
            break;
        if (!strcmp(line, "s") || !strcmp(line, "skip")) {
            size_t k = find(&w, w.asking);
            if (k != (size_t)-1 && w.n > 1) { /* to the back of the queue */
                json_t *x = w.q[k];
                memmove(w.q + k, w.q + k + 1, (w.n - k - 1) * sizeof w.q[0]);
                w.q[w.n - 1] = x;
            }
            w.asking = 0;
            if (w.n <= 1)
                printf("  skipped; it stays pending\n");
            continue;
        }
        const char *ans = parse_answer(line);
        if (!ans) {
            printf("  answer o, a, d, n or s: ");
            fflush(stdout);
            continue;
        }
        char path[64];
        json_t *body = json_pack("{s:s}", "answer", ans), *res = NULL;
        int64_t id = w.asking;
        snprintf(path, sizeof path, "/v1/prompts/%lld/answer", (long long)id);
        int c = nb_cli_call(cli, "POST", path, body, &res);
        json_decref(body);
        json_decref(res);
        if (c == NB_CLI_OK)
            printf("  %s\n", ans);
        fflush(stdout);
        size_t k = find(&w, id);
        if (k != (size_t)-1)
            drop(&w, k);
        w.asking = 0;
    }
    while (w.n)
        drop(&w, 0);
    key_mode_end();
    nb_buf_free(&msg);
    nb_wsc_free(ws);
    return code;
}

static int do_list(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    if (nb_cli_flag(v, a, "watch"))
        return watch(cli);
    if (a->npos > 0) {
        fprintf(stderr,
                "nilbox: unknown verb '%.40s' for 'nilbox prompts' (answer); see "
                "'nilbox prompts --help'\n",
                a->pos[0]);
        return NB_CLI_USAGE;
    }
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/prompts", NULL, &res, &code))
        return code;
    size_t i;
    json_t *p, *arr = json_object_get(res, "prompts");
    if (json_array_size(arr) == 0)
        printf("no pending prompts\n");
    json_array_foreach (arr, i, p)
        print_prompt_line(p);
    if (json_array_size(arr))
        printf("answer with 'nilbox prompts answer ID allow-once|allow-always|deny-once|"
               "deny-always'\n");
    json_decref(res);
    return NB_CLI_OK;
}

static const nb_cli_verb_t verbs[] = {
    {"answer", "answer a pending prompt", "ID allow-once|allow-always|deny-once|deny-always",
     "Answer prompt ID: allow-once (the waiting connections only), allow-always (adds an\n"
     "allow rule for that VM, name and port), deny-once, deny-always (adds a deny rule).\n"
     "Exit 4 when the prompt is gone (answered, or timed out: unanswered prompts deny).",
     2, 2, NULL, do_answer, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

static const nb_cli_opt_t opts[] = {
    {"watch", 'w', NULL, "answer prompts interactively as they arrive (until Ctrl-C)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t self = {
    NULL,
    "list pending destination prompts, or answer them as they come (--watch)",
    NULL,
    "List the destinations waiting for your decision (a VM wants to reach a host no rule\n"
    "covers). Each prompt denies by itself when its deadline passes. With --watch, ask about\n"
    "each prompt as it arrives: [o]nce, [a]lways, [d]eny once, [n]ever, [s]kip (one key on a\n"
    "terminal, no Enter; a line otherwise).",
    0,
    1,
    opts,
    do_list,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_prompts = {"prompts", "answer the gate's destination prompts",
                                           verbs, &self};
