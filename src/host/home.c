#include "host/home.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/err.h"

/* snprintf that reports truncation instead of silently cutting a path. */
static int path_fmt(char *out, size_t outsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int path_fmt(char *out, size_t outsz, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outsz, fmt, ap);
    va_end(ap);
    return (n < 0 || (size_t)n >= outsz) ? NB_ETOOBIG : 0;
}

static void strip_trailing_slashes(char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
}

static int default_home(char *out, size_t outsz, char *err, size_t errsz)
{
    const char *xdg = getenv("XDG_DATA_HOME");
    if (xdg && xdg[0] == '/')
        return path_fmt(out, outsz, "%s/nilbox", xdg);
    const char *home = getenv("HOME");
    if (!home || home[0] != '/') {
        nb_err_say(err, errsz, "cannot find the state folder: HOME is not set; set NILBOX_HOME");
        return NB_EINVAL;
    }
    return path_fmt(out, outsz, "%s/.local/share/nilbox", home);
}

int nb_home_resolve(const char *home_override, nb_home_t *h, char *err, size_t errsz)
{
    char def[NB_HOME_PATH_MAX];
    struct stat st;
    int r;
    memset(h, 0, sizeof *h);
    if (err && errsz)
        err[0] = '\0';

    const char *src = home_override && home_override[0] ? home_override : getenv("NILBOX_HOME");
    if ((r = default_home(def, sizeof def, err, errsz)) < 0) {
        if (!(src && src[0]))
            return r;
        def[0] = '\0'; /* no default, but NILBOX_HOME is enough */
        if (err && errsz)
            err[0] = '\0';
    }
    if (src && src[0]) {
        if (src[0] == '/') {
            r = path_fmt(h->home, sizeof h->home, "%s", src);
        } else {
            /* A relative home would change meaning with the cwd (the daemon
             * chdirs to /), so anchor it now. */
            char cwd[PATH_MAX];
            if (!getcwd(cwd, sizeof cwd)) {
                nb_err_say(err, errsz, "cannot resolve relative NILBOX_HOME '%s': %s", src,
                           strerror(errno));
                return -errno;
            }
            r = path_fmt(h->home, sizeof h->home, "%s/%s", cwd, src);
        }
        if (r < 0) {
            nb_err_say(err, errsz, "NILBOX_HOME is too long");
            return r;
        }
    } else {
        memcpy(h->home, def, sizeof def);
    }
    strip_trailing_slashes(h->home);
    h->home_is_default = def[0] && strcmp(h->home, def) == 0;

    const char *rt = getenv("NILBOX_RUNTIME_DIR");
    const char *xrt = getenv("XDG_RUNTIME_DIR");
    if (rt && rt[0] == '/') {
        r = path_fmt(h->runtime, sizeof h->runtime, "%s", rt);
    } else if (xrt && xrt[0] == '/' && stat(xrt, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* (A stale XDG_RUNTIME_DIR after su/sudo does not exist: fall back.) */
        if (h->home_is_default) {
            r = path_fmt(h->runtime, sizeof h->runtime, "%s/nilbox", xrt);
        } else {
            unsigned char d[crypto_generichash_BYTES_MIN];
            char hex[2 * sizeof d + 1];
            crypto_generichash(d, sizeof d, (const unsigned char *)h->home, strlen(h->home), NULL,
                               0);
            sodium_bin2hex(hex, sizeof hex, d, sizeof d);
            hex[12] = '\0';
            r = path_fmt(h->runtime, sizeof h->runtime, "%s/nilbox-%s", xrt, hex);
        }
    } else {
        r = path_fmt(h->runtime, sizeof h->runtime, "%s/run", h->home);
    }
    strip_trailing_slashes(h->runtime);
    if (r < 0 || path_fmt(h->sock, sizeof h->sock, "%s/nilboxd.sock", h->runtime) < 0) {
        nb_err_say(err, errsz,
                   "the socket path '%s/nilboxd.sock' is longer than %d bytes; "
                   "set NILBOX_RUNTIME_DIR to a shorter folder",
                   h->runtime, NB_HOME_SOCK_MAX - 1);
        return NB_ETOOBIG;
    }
    if (path_fmt(h->api_json, sizeof h->api_json, "%s/api.json", h->runtime) < 0 ||
        path_fmt(h->pidfile, sizeof h->pidfile, "%s/nilboxd.pid", h->runtime) < 0 ||
        path_fmt(h->lockfile, sizeof h->lockfile, "%s/nilboxd.lock", h->home) < 0 ||
        path_fmt(h->logdir, sizeof h->logdir, "%s/logs", h->home) < 0 ||
        path_fmt(h->logfile, sizeof h->logfile, "%s/logs/nilboxd.log", h->home) < 0 ||
        path_fmt(h->db, sizeof h->db, "%s/state.db", h->home) < 0) {
        nb_err_say(err, errsz, "NILBOX_HOME '%s' is too long", h->home);
        return NB_ETOOBIG;
    }
    return 0;
}

/* mkdir -p with mode 0700 for every component we create; an existing leaf
 * that others can access is tightened (it holds secrets and sockets). */
static int mkdir_private(const char *path, char *err, size_t errsz)
{
    char tmp[NB_HOME_PATH_MAX];
    struct stat st;
    if (path_fmt(tmp, sizeof tmp, "%s", path) < 0)
        return NB_ETOOBIG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            nb_err_say(err, errsz, "cannot create folder '%s': %s", tmp, strerror(e));
            return -e;
        }
        *p = '/';
    }
    if (mkdir(tmp, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        nb_err_say(err, errsz, "cannot create folder '%s': %s", tmp, strerror(e));
        return -e;
    }
    if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode)) {
        nb_err_say(err, errsz, "'%s' exists but is not a folder", tmp);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        nb_err_say(err, errsz, "folder '%s' belongs to another user (uid %u)", tmp,
                   (unsigned)st.st_uid);
        return -EPERM;
    }
    if ((st.st_mode & 077) && chmod(tmp, 0700) < 0) {
        int e = errno;
        nb_err_say(err, errsz, "cannot make folder '%s' private: %s", tmp, strerror(e));
        return -e;
    }
    return 0;
}

int nb_home_prepare(const nb_home_t *h, char *err, size_t errsz)
{
    int r;
    if ((r = mkdir_private(h->home, err, errsz)) < 0)
        return r;
    if ((r = mkdir_private(h->logdir, err, errsz)) < 0)
        return r;
    return mkdir_private(h->runtime, err, errsz);
}

static int write_pid_fd(int fd, pid_t pid)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)pid);
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
        return -errno;
    return 0;
}

static pid_t read_pid_fd(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    long v = strtol(buf, &end, 10);
    return (v > 0 && v < INT_MAX && (*end == '\n' || *end == '\0')) ? (pid_t)v : 0;
}

/* Open-file-description locks behave like flock (owned by the open file,
 * inherited across fork, released on the last close) but can also be
 * *tested* without taking them (F_OFD_GETLK), so `nilbox daemon status`
 * never races a starting daemon for the lock. */
static struct flock whole_file(short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    return fl;
}

int nb_home_lock(const nb_home_t *h, int *fd_out, pid_t *holder, char *err, size_t errsz)
{
    *fd_out = -1;
    if (holder)
        *holder = 0;
    int fd = open(h->lockfile, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        int e = errno;
        nb_err_say(err, errsz, "cannot open lock file '%s': %s", h->lockfile, strerror(e));
        return -e;
    }
    struct flock fl = whole_file(F_WRLCK);
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        if (e == EAGAIN || e == EACCES) {
            pid_t p = read_pid_fd(fd);
            if (holder)
                *holder = p;
            if (p)
                nb_err_say(err, errsz,
                           "another nilboxd (pid %ld) is already running for NILBOX_HOME %s "
                           "(lock %s); stop it with 'nilbox daemon stop'",
                           (long)p, h->home, h->lockfile);
            else
                nb_err_say(err, errsz, "another process holds the lock %s for NILBOX_HOME %s",
                           h->lockfile, h->home);
            close(fd);
            return NB_ELOCKED;
        }
        nb_err_say(err, errsz, "cannot lock '%s': %s", h->lockfile, strerror(e));
        close(fd);
        return -e;
    }
    int r = write_pid_fd(fd, getpid());
    if (r < 0) {
        nb_err_say(err, errsz, "cannot write lock file '%s': %s", h->lockfile, strerror(-r));
        close(fd);
        return r;
    }
    *fd_out = fd;
    return 0;
}

int nb_home_lock_set_pid(int fd, pid_t pid)
{
    return write_pid_fd(fd, pid);
}

int nb_home_lock_holder(const nb_home_t *h, pid_t *pid)
{
    *pid = 0;
    int fd = open(h->lockfile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    struct flock fl = whole_file(F_WRLCK);
    int r = 0;
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        r = -errno;
    else if (fl.l_type != F_UNLCK)
        *pid = read_pid_fd(fd);
    close(fd);
    return r;
}

int nb_home_write_private(const char *path, const void *data, size_t len)
{
    char tmp[NB_HOME_PATH_MAX];
    int r = 0;
    if (path_fmt(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
        return NB_ETOOBIG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            break;
        }
        p += n;
        len -= (size_t)n;
    }
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

int nb_home_read_small(const char *path, size_t max, char **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *buf = malloc(max + 1);
    size_t len = 0;
    int r = 0;
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, max + 1 - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max) {
            r = NB_ETOOBIG;
            break;
        }
    }
    close(fd);
    if (r < 0) {
        free(buf);
        return r;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}
