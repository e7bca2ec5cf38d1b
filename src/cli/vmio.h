/* The terminal side of `nilbox exec` and `nilbox shell`: one WebSocket to
 * the daemon's /v1/vms/NAME/exec or /pty route (protocol in docs/api.md),
 * pumping stdin to the guest and the guest's output to stdout/stderr. */
#ifndef NB_CLI_VMIO_H
#define NB_CLI_VMIO_H

#include <jansson.h>

#include "cli/cmd.h"

/* Exit codes of exec/shell besides the remote command's own status. */
#define NB_CLI_EXEC_FAILED 125   /* nilbox could not run the command */
#define NB_CLI_EXEC_NOEXEC 126   /* the command exists but cannot run */
#define NB_CLI_EXEC_NOTFOUND 127 /* no such command in the guest */

/* Runs one session. `pty`: a terminal (the local terminal goes raw when
 * stdin is one; window size changes follow); otherwise an exec with
 * `req` ({"argv": [...], ...}, borrowed) as its first message.
 * `use_stdin` 0 gives the command no input. Returns the remote exit
 * status (128+N for signal N) or one of the codes above. */
int nb_cli_vm_session(nb_cli_t *cli, const char *vm, int pty, const json_t *req, int use_stdin);

#endif
