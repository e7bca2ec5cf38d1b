/* The nilbox command table: `nilbox <noun> [<verb>] [args]`, tmux style.
 * Every noun and verb is data (name, summary, usage, options, handler), so
 * help text, option parsing, usage errors and suggestions are uniform.
 *
 * ADDING A NOUN: create src/cli/cmd_<noun>.c defining
 *     const nb_cli_noun_t nb_cli_noun_<noun> = {"<noun>", "summary", verbs, NULL};
 * add it to src/cli/meson.build and append X(<noun>) to NB_CLI_NOUNS below.
 * A verb that needs the daemon sets NB_CLI_NEEDS_DAEMON: the dispatcher
 * starts nilboxd on demand and hands over a connected context. */
#ifndef NB_CLI_CMD_H
#define NB_CLI_CMD_H

#include <jansson.h>
#include <stdio.h>

#include "host/home.h"
#include "lib/buf.h"

#define NB_CLI_NOUNS(X)                                                                            \
    X(daemon)                                                                                      \
    X(doctor)                                                                                      \
    X(events)                                                                                      \
    X(secret)                                                                                      \
    X(rule)                                                                                        \
    X(prompts)                                                                                     \
    X(audit)                                                                                       \
    X(ca)                                                                                          \
    X(proxy)                                                                                       \
    X(vm)                                                                                          \
    X(shell)                                                                                       \
    X(exec)                                                                                        \
    X(image)                                                                                       \
    X(blocklist)                                                                                   \
    X(store)                                                                                       \
    X(oauth)                                                                                       \
    X(port)                                                                                        \
    X(ssh)                                                                                         \
    X(ssh_config)                                                                                  \
    X(mcp)                                                                                         \
    X(limit)                                                                                       \
    X(usage)                                                                                       \
    X(ui)                                                                                          \
    X(share)

/* Exit codes (README.md, docs/cli.md). */
enum {
    NB_CLI_OK = 0,
    NB_CLI_ERROR = 1,
    NB_CLI_USAGE = 2,
    NB_CLI_UNREACHABLE = 3,
    NB_CLI_NOTFOUND = 4,
    NB_CLI_DENIED = 5,
};

#define NB_CLI_MAX_OPTS 16

typedef struct {
    const char *name; /* long name without dashes: "timeout" */
    char short_name;  /* 't', or 0 */
    const char *arg;  /* metavar ("SECONDS") when the option takes a value, else NULL */
    const char *help;
} nb_cli_opt_t;

/* Global state of one CLI invocation. */
typedef struct {
    int json;             /* --json: machine-readable output on stdout */
    const char *home_arg; /* --home DIR */
    nb_home_t home;       /* resolved paths */
    const char *argv0;
} nb_cli_t;

/* Parsed arguments of one verb. */
typedef struct {
    int npos;
    char **pos;                       /* positional arguments (borrowed from argv) */
    const char *val[NB_CLI_MAX_OPTS]; /* option values by index in the verb's opts */
    int set[NB_CLI_MAX_OPTS];         /* how often each option was given */
    char **rest;                      /* after "--" (NULL if none) */
    int nrest;
} nb_cli_args_t;

typedef struct nb_cli_verb nb_cli_verb_t;
typedef int (*nb_cli_fn)(nb_cli_t *cli, const nb_cli_verb_t *verb, nb_cli_args_t *a);

#define NB_CLI_NEEDS_DAEMON 0x1u /* start nilboxd on demand before calling fn */
#define NB_CLI_DASHDASH 0x2u     /* accept "-- args..." (a.rest) */

struct nb_cli_verb {
    const char *name;    /* "start"; NULL ends a verb table */
    const char *summary; /* one line for listings */
    const char *args;    /* positional synopsis, e.g. "NAME" (or NULL) */
    const char *help;    /* longer text for --help (or NULL) */
    int min_pos, max_pos;
    const nb_cli_opt_t *opts; /* terminated by {NULL}; may be NULL */
    nb_cli_fn fn;
    unsigned flags;
};

typedef struct {
    const char *name;
    const char *summary;
    const nb_cli_verb_t *verbs; /* NULL-name terminated; may be NULL */
    const nb_cli_verb_t *self;  /* action of the bare noun ("nilbox doctor"), or NULL */
} nb_cli_noun_t;

#define NB_CLI_DECLARE(n) extern const nb_cli_noun_t nb_cli_noun_##n;
NB_CLI_NOUNS(NB_CLI_DECLARE)
#undef NB_CLI_DECLARE

/* Parses argv (after the program name) and runs the command. Returns the
 * process exit code. */
int nb_cli_main(nb_cli_t *cli, int argc, char **argv);

/* Value of option `name` for this verb, or NULL when not given. */
const char *nb_cli_opt(const nb_cli_verb_t *v, const nb_cli_args_t *a, const char *name);
/* 1 when flag `name` was given. */
int nb_cli_flag(const nb_cli_verb_t *v, const nb_cli_args_t *a, const char *name);

/* Parses a non-negative integer option; prints a usage error and returns
 * -1 when malformed. `def` when absent. */
long nb_cli_opt_long(const nb_cli_verb_t *v, const nb_cli_args_t *a, const char *name, long def,
                     long max);

/* "nilbox: <message>" on stderr (and {"error","message"} on stdout with
 * --json). Returns `code` for `return nb_cli_fail(...)`. */
int nb_cli_fail(nb_cli_t *cli, int code, const char *err_code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prints `j` as indented JSON plus newline on stdout. Borrows j. */
void nb_cli_print_json(const json_t *j);

/* Calls the daemon with a JSON body (borrowed; NULL for none). On 2xx
 * *out (if not NULL) gets the JSON answer (caller decrefs) and NB_CLI_OK
 * is returned. Otherwise the daemon's message (or a sentence about the
 * transport) is printed as "nilbox: ..." and the exit code returned: 3
 * unreachable, 4 for 404, 5 for 401/403, 1 otherwise. */
int nb_cli_call(nb_cli_t *cli, const char *method, const char *path, const json_t *body,
                json_t **out);

/* The same with a raw body of type `ctype` (borrowed: a secret value goes
 * from the caller's locked memory to the socket without a copy). */
int nb_cli_send(nb_cli_t *cli, const char *method, const char *path, const char *ctype,
                nb_iov_t body, json_t **out);

/* Makes sure nilboxd answers on the socket, starting it when it does not:
 * $NILBOXD, else next to this binary, else ../daemon/nilboxd (build tree),
 * else $PATH; waits up to `timeout_s`. Prints "nilbox: started nilboxd
 * (pid N)" on stderr unless `quiet`. *started is set to 1 when we started
 * it. Returns an exit code. */
int nb_cli_ensure_daemon(nb_cli_t *cli, int timeout_s, int quiet, int *started);

/* `daemon start` on a terminal: when the secret store is locked, says so
 * and offers to unlock it (hidden passphrase; empty skips). cmd_secret.c. */
int nb_cli_secret_unlock_offer(nb_cli_t *cli);

#endif
