/* Finding and starting nilboxd for one home: the code behind the CLI's
 * auto-start (`nb_cli_ensure_daemon`) and nilbox-desktop's start-up, so
 * both look for the same binary and wait the same way. Blocking. */
#ifndef NB_HOST_DAEMONCTL_H
#define NB_HOST_DAEMONCTL_H

#include <stddef.h>
#include <sys/types.h>

#include "host/home.h"

/* 1 when nilboxd answers GET /v1/status on h->sock (within 5 s). */
int nb_daemonctl_answers(const nb_home_t *h);

/* Path of the nilboxd to start: $NILBOXD, else next to this binary, else
 * ../daemon/nilboxd (build tree), else $PATH. 1 when found. */
int nb_daemonctl_find(char *out, size_t outsz);

/* Makes sure nilboxd answers on h->sock, starting it (it daemonizes
 * itself) when it does not, within `timeout_s`. Returns 0 (*started = 1
 * when we started it, *pid its pid or 0) or -1 with *code set to a stable
 * token ("no_daemon_binary", "internal", "start_timeout", "start_failed")
 * and a sentence for the user in `msg`. started, pid may be NULL. */
int nb_daemonctl_ensure(const nb_home_t *h, int timeout_s, int *started, pid_t *pid,
                        const char **code, char *msg, size_t msgsz);

#endif
