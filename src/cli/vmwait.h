/* Helpers shared by the VM and image commands: following the daemon's event
 * stream while an operation runs (boot progress, image builds). */
#ifndef NB_CLI_VMWAIT_H
#define NB_CLI_VMWAIT_H

#include <jansson.h>

#include "cli/cmd.h"
#include "cli/wsclient.h"

/* Opens the event stream (live events only). NULL when it cannot (the
 * caller then falls back to polling). */
nb_wsc_t *nb_cli_events_open(nb_cli_t *cli);

/* Decides, for each event, whether the wait is over: return 0 to keep
 * waiting, or a value != 0 that nb_cli_events_wait returns. */
typedef int (*nb_cli_event_fn)(const json_t *ev, void *ud);

/* Feeds events to `fn` until it returns non-zero, the stream ends
 * (NB_ECLOSED), `timeout_s` passes (NB_ETIMEOUT) or SIGINT (-EINTR). */
int nb_cli_events_wait(nb_wsc_t *ws, int timeout_s, nb_cli_event_fn fn, void *ud);

/* Prints a progress line "  [  1.2s] message" on stderr (escaped). */
void nb_cli_progress(double secs, const char *msg);

#endif
