/* The host side of one folder mapping (docs/internals/share.md;
 * THREATS.md A19): executes the guest's file requests (lib/fsproto.h)
 * under one host folder so that nothing outside it can be named, read or
 * written.
 *
 * How: every node the guest knows is an O_PATH descriptor; a name is only
 * ever resolved one component at a time, relative to its parent's
 * descriptor, with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
 * RESOLVE_NO_SYMLINKS) and O_NOFOLLOW: "..", "/" and symlinks are never
 * followed on the host (the guest kernel follows symlinks in its own
 * name space). Only regular files and directories are ever opened (no
 * device, FIFO or socket); a regular file with more than one hard link
 * is refused (it may be a link to a file outside the folder, which the
 * host cannot tell); hard links cannot be made. A read-only share answers
 * EROFS to every write. Ownership: files of the daemon's user appear as
 * the guest's root (uid/gid 0), everything else as nobody (65534); every
 * guest user acts as the daemon's user.
 *
 * Thread-safe: requests run on worker threads, concurrently. */
#ifndef NB_FSHARE_H
#define NB_FSHARE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

typedef struct nb_fsrv nb_fsrv_t;

#define NB_FSRV_MAX_NODES (1u << 20) /* nodes the guest may hold */
#define NB_FSRV_MAX_HANDLES 65536u   /* open files and directories */
#define NB_FSRV_NOBODY 65534u

/* Opens `root` (an existing directory, absolute path). `ro`: refuse every
 * write. 0, or a negative code with a sentence in err. */
int nb_fsrv_new(const char *root, int ro, nb_fsrv_t **out, char *err, size_t errsz);

/* Closes every descriptor. No request may be running. NULL ok. */
void nb_fsrv_free(nb_fsrv_t *s);

/* Executes one request body (untrusted bytes). 0 with a framed reply
 * appended to `out`; 1 when the op has no reply (FORGET); NB_EPROTO with
 * `why` for a malformed request (the caller ends the stream). File system
 * errors are replies (err = errno), never failures. */
int nb_fsrv_handle(nb_fsrv_t *s, const uint8_t *p, size_t n, nb_buf_t *out, const char **why);

/* The shared data area of READ_SHM/WRITE_SHM (docs/internals/share.md,
 * "Shared memory"): `len` bytes at `base`, borrowed (the caller keeps it
 * mapped until nb_fsrv_free). Guest-writable memory: the server only
 * pread()s into it and pwrite()s from it, at offsets it bounds by `len`.
 * Call before the first request; without it (or with NULL) those ops get
 * EINVAL. */
void nb_fsrv_set_shm(nb_fsrv_t *s, void *base, size_t len);

/* READ_SHM/WRITE_SHM requests executed so far (for `share ls` and tests). */
uint64_t nb_fsrv_shm_ops(nb_fsrv_t *s);

/* How many node descriptors may stay open (default: half the descriptor
 * limit); past it the least recently used are closed and re-opened on
 * use. For tests. */
void nb_fsrv_set_fd_budget(nb_fsrv_t *s, size_t n);

/* Nodes and handles currently held (for tests and `share ls`). */
void nb_fsrv_counts(nb_fsrv_t *s, size_t *nodes, size_t *handles);

#endif
