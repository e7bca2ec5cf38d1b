/* The SSH gateway (docs/internals/ssh.md): an SSH server on 127.0.0.1 whose
 * user names are VM names. `ssh -p PORT VM@127.0.0.1` runs a shell or a
 * command in the VM through the agent's `pty`/`exec` services, the `sftp`
 * subsystem runs the agent's own SFTP server in the guest, and `-L`
 * forwards become `tcp` streams. Public keys only: the daemon user's
 * ~/.ssh/authorized_keys and $NILBOX_HOME/ssh/authorized_keys, read at each
 * login. The host key ($NILBOX_HOME/ssh/host_ed25519_key, 0600) is made
 * once.
 *
 * Threads: libssh's server API blocks in places (key exchange) and keeps
 * its own buffers, so each SSH connection runs in a thread of its own
 * (sshgw_sess.c) and never touches the loop's objects. Each SSH channel
 * talks to the loop over a socketpair with a small framing (sshgw_int.h);
 * the loop end (sshgw_relay.c) relays frames to one nbmux stream. A bad
 * client can only end its own thread. */
#ifndef NB_SSHGW_H
#define NB_SSHGW_H

#include <jansson.h>

#include "daemon/services.h"

typedef struct nb_sshgw nb_sshgw_t;

/* Starts the gateway on 127.0.0.1: port NILBOX_SSH_PORT when set ("off"
 * disables the gateway: *out stays NULL, 0 returned), else the port kept
 * in $NILBOX_HOME/ssh/port, else a free one (then kept). Makes the host key
 * on first use. Loop thread. */
int nb_sshgw_new(nb_daemon_t *d, nb_sshgw_t **out, char *err, size_t errsz);

/* Stops listening, ends every session (threads joined) and relay, frees
 * the gateway once its handles closed (keep running the loop). NULL ok. */
void nb_sshgw_free(nb_sshgw_t *g);

/* {"port", "host", "host_key", "fingerprint", "sessions", "channels",
 * "key_files": [{"path", "keys"}]} (new reference). */
json_t *nb_sshgw_status(nb_sshgw_t *g);

#endif
