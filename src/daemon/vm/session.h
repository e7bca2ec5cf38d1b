/* The host end of one VM's guest channel (nbmux, docs/protocol.md): a
 * Unix socket the daemon listens on (QEMU's virtio-serial chardev connects
 * to it with reconnect=1) and the nbmux session (host role) keyed with the
 * VM's per-boot key. Plus two small helpers the VM manager needs on top of
 * the session: one `ctl` call and one command run to completion.
 *
 * One connection at a time: a second connection while one is attached is
 * closed at once (only QEMU should ever connect: the socket is 0600 in a
 * 0700 folder, and a connection without the key learns nothing anyway).
 * When the transport goes away the session tears down (every stream gets
 * its on_close) and the next connection, typically QEMU reconnecting after
 * a daemon restart, runs a fresh handshake.
 *
 * Loop thread only. */
#ifndef NB_VM_SESSION_H
#define NB_VM_SESSION_H

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "lib/muxsess.h"

typedef struct nb_vmchan nb_vmchan_t;

typedef struct {
    /* The guest's agent authenticated: streams may be opened. */
    void (*on_up)(nb_vmchan_t *c, void *ud);
    /* The session went down (reason escaped, one line). */
    void (*on_down)(nb_vmchan_t *c, int err, const char *reason, void *ud);
    void *ud;
    /* The guest opened a stream (egress, dns): as nb_muxsess_opts_t.on_open.
     * NULL: every guest OPEN gets NO_SERVICE. */
    int (*on_open)(nb_vmchan_t *c, nb_muxsess_stream_t *st, const char *service, nb_iov_t args,
                   void *ud);
} nb_vmchan_cbs_t;

/* Listens on `sock_path` (a stale socket file is replaced; mode 0600) and
 * prepares a host session with `key` (NB_MUX_KEY_LEN bytes, copied into
 * locked memory by the session). `cbs` is copied. 0 with *out, or a
 * negative code (-errno of the listen, -ENOMEM). */
int nb_vmchan_new(uv_loop_t *loop, const char *sock_path, const uint8_t *key,
                  const nb_vmchan_cbs_t *cbs, nb_vmchan_t **out);

/* Stops listening, removes the socket file, tears the session down (open
 * streams get on_close from inside this call, helpers' callbacks fire with
 * NB_ECLOSED) and frees. No on_down. NULL is a no-op. */
void nb_vmchan_free(nb_vmchan_t *c);

/* The session when the agent is connected and authenticated, else NULL. */
nb_muxsess_t *nb_vmchan_session(nb_vmchan_t *c);

/* Handshakes completed since creation (reconnects count). */
uint32_t nb_vmchan_sessions(const nb_vmchan_t *c);

/* Result of a helper: r 0 or a negative code (NB_ETIMEOUT, NB_ECLOSED,
 * NB_ESTATE when the agent is not connected, NB_EPROTO for a bad answer);
 * `res` is the ctl call's JSON answer (borrowed) or NULL; `exit_code` the
 * command's status (128+N for signal N) for nb_vmchan_run. */
typedef void (*nb_vmchan_done_fn)(void *ud, int r, json_t *res, int exit_code);

/* Opens a `ctl` stream with `args` (a JSON object, borrowed: e.g.
 * {"call": "poweroff"}) and collects the agent's one JSON answer.
 * `timeout_ms` 0: none. `done` is called exactly once, possibly from
 * inside nb_vmchan_free, never from inside this call. 0 or a negative code
 * (then `done` is not called). */
int nb_vmchan_ctl(nb_vmchan_t *c, json_t *args, uint64_t timeout_ms, nb_vmchan_done_fn done,
                  void *ud);

/* Runs `argv` (NULL-terminated) through the `exec` service with no stdin
 * and discards its output; `done` gets the exit status. Same rules as
 * nb_vmchan_ctl. */
int nb_vmchan_run(nb_vmchan_t *c, const char *const *argv, uint64_t timeout_ms,
                  nb_vmchan_done_fn done, void *ud);

#endif
