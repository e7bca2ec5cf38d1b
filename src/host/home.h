/* The state folder ($NILBOX_HOME), the runtime folder (sockets) and the
 * one-daemon-per-home lock. Shared by nilboxd and the nilbox CLI so both
 * agree on every path.
 *
 * Resolution (docs/cli.md):
 *   home    = --home | $NILBOX_HOME | $XDG_DATA_HOME/nilbox | ~/.local/share/nilbox
 *   runtime = $NILBOX_RUNTIME_DIR
 *           | $XDG_RUNTIME_DIR/nilbox            (default home)
 *           | $XDG_RUNTIME_DIR/nilbox-<hash>     (any other home, so a test or
 *                                                 demo home never collides
 *                                                 with the user's daemon)
 *           | $home/run                          (no XDG_RUNTIME_DIR)
 * All functions are plain blocking calls (startup and CLI only). */
#ifndef NB_HOME_H
#define NB_HOME_H

#include <stddef.h>
#include <sys/types.h>

/* sun_path is 108 bytes on Linux, including the NUL. */
#define NB_HOME_SOCK_MAX 108
#define NB_HOME_PATH_MAX 1024

typedef struct {
    char home[NB_HOME_PATH_MAX];    /* absolute, no trailing slash */
    char runtime[NB_HOME_PATH_MAX]; /* absolute */
    char sock[NB_HOME_SOCK_MAX];    /* runtime/nilboxd.sock */
    char api_json[NB_HOME_PATH_MAX];
    char pidfile[NB_HOME_PATH_MAX];
    char lockfile[NB_HOME_PATH_MAX]; /* home/nilboxd.lock */
    char logdir[NB_HOME_PATH_MAX];
    char logfile[NB_HOME_PATH_MAX]; /* home/logs/nilboxd.log */
    char db[NB_HOME_PATH_MAX];      /* home/state.db */
    int home_is_default;
} nb_home_t;

/* Computes every path. `home_override` (may be NULL) wins over the
 * environment. Touches nothing on disk. Returns 0, NB_EINVAL (no HOME,
 * relative path) or NB_ETOOBIG (path too long, e.g. the socket path does
 * not fit sun_path); `err` (size errsz) gets a sentence for the user. */
int nb_home_resolve(const char *home_override, nb_home_t *out, char *err, size_t errsz);

/* Creates home, home/logs and the runtime folder (mode 0700, parents as
 * needed) and tightens existing ones that are group/other accessible.
 * Returns 0 or -errno with a sentence in `err`. */
int nb_home_prepare(const nb_home_t *h, char *err, size_t errsz);

/* Takes the exclusive lock on h->lockfile (flock, non-blocking) and writes
 * our pid into it. On success *fd is the lock's descriptor (O_CLOEXEC;
 * keep it open for the daemon's lifetime). When another process holds it:
 * NB_ELOCKED, *holder = its pid (0 if unknown) and a sentence in `err`. */
int nb_home_lock(const nb_home_t *h, int *fd, pid_t *holder, char *err, size_t errsz);

/* Rewrites the pid stored in the lock file (after daemonizing changed it). */
int nb_home_lock_set_pid(int fd, pid_t pid);

/* Reads the pid stored in the lock file if the lock is currently held by
 * a live process; 0 with *pid = 0 when nobody holds it. */
int nb_home_lock_holder(const nb_home_t *h, pid_t *pid);

/* Writes `len` bytes to `path` atomically (temp file + fsync + rename),
 * mode 0600. Returns 0 or -errno. */
int nb_home_write_private(const char *path, const void *data, size_t len);

/* Reads a small file (at most `max` bytes) into a NUL-terminated heap
 * string (caller frees). Returns 0, -errno or NB_ETOOBIG. */
int nb_home_read_small(const char *path, size_t max, char **out);

#endif
