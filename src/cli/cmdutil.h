/* Small helpers shared by the CLI's nouns (cmd_<noun>.c): the
 * call-then-print-JSON step most verbs share, and escaped key=value
 * output of untrusted fields. */
#ifndef NB_CLI_CMDUTIL_H
#define NB_CLI_CMDUTIL_H

#include <signal.h>
#include <stddef.h>

#include <jansson.h>

#include "cli/cmd.h"

/* Calls the daemon (nb_cli_call) and, with --json, prints the reply as it
 * is. Returns 1 when the verb is finished, with its exit code in *code (the
 * call failed, or the reply was printed and released); 0 when the caller
 * renders *res as text and json_decref's it (*code is NB_CLI_OK). Takes
 * body (may be NULL). */
int nb_cli_call_or_json(nb_cli_t *cli, const char *method, const char *path, json_t *body,
                        json_t **res, int *code);

/* Parses a positional id argument: a decimal number >= 1. On anything else
 * prints "nilbox: a(n) WHAT id is a number >= 1 (see 'nilbox SEE'), not '...'"
 * (the argument cut and escaped) and returns -1. */
int nb_cli_parse_id(const char *arg, const char *what, const char *see, long long *id);

/* DELETE /v1/COLL/ID, then (without --json) "removed WHAT ID". Returns the
 * verb's exit code. */
int nb_cli_delete_id(nb_cli_t *cli, const char *coll, const char *what, long long id);

/* Prints " key=value" for one JSON field: strings as they are, anything
 * else as compact JSON, both escaped with nb_log_escape into esc (escsz
 * bytes; longer values are cut there). Prints nothing when out of memory. */
void nb_cli_print_field(const char *key, const json_t *v, char *esc, size_t escsz);

/* Seconds on the monotonic clock (progress and timings). */
double nb_cli_now_s(void);

/* Set once SIGINT or SIGTERM (or SIGHUP after nb_cli_catch_stop(1)) came. */
extern volatile sig_atomic_t nb_cli_stop;
/* Installs the handler that sets nb_cli_stop, without SA_RESTART so that a
 * blocked poll() returns EINTR. */
void nb_cli_catch_stop(int hup);

#endif
