/* Runs one command in a VM from inside the daemon (the app store's
 * recipes): an `exec` stream to the VM's agent with the guest environment
 * (placeholders, proxy, CA) under the command's own, no stdin, output
 * delivered line by line and the last few KiB kept for error messages.
 * Loop thread. */
#ifndef NB_VMEXEC_H
#define NB_VMEXEC_H

#include <jansson.h>
#include <stdint.h>

#include "daemon/services.h"

#define NB_VMEXEC_TAIL 2048 /* bytes of output kept for the result */
#define NB_VMEXEC_LINE 400  /* longer lines are cut for on_line */

typedef struct nb_vmexec nb_vmexec_t;

typedef struct {
    /* One line of output (without its newline, cut at NB_VMEXEC_LINE,
     * control characters replaced). Optional. */
    void (*on_line)(void *ud, int is_stderr, const char *line);
    /* Once, at the end: err 0 and the exit status (a signal N is 128 + N),
     * or err < 0 (NB_ETIMEOUT, NB_ESTATE: not running, NB_ECLOSED: the
     * channel closed) with a sentence in msg. tail: the last output bytes
     * (stdout and stderr as they came). The runner is freed after it. */
    void (*on_done)(void *ud, int err, int status, const char *msg, const char *tail);
} nb_vmexec_cbs_t;

/* Starts `argv` (a JSON array of strings, borrowed) in `vm` as `user`
 * ("root", or NULL for the VM's default user) with `env` (object or
 * NULL, borrowed), killed after timeout_ms. 0 with *out set (on_done will
 * come), or NB_ESTATE when the VM's agent is not connected (no callback).
 * `out` may be NULL when the caller never cancels. */
int nb_vmexec_start(nb_daemon_t *d, const char *vm, json_t *argv, const char *user, json_t *env,
                    uint64_t timeout_ms, const nb_vmexec_cbs_t *cbs, void *ud, nb_vmexec_t **out);

/* Kills the command (RST) and frees the runner; on_done is not called. */
void nb_vmexec_cancel(nb_vmexec_t *x);

#endif
