#include "lib/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "lib/err.h"

static int parse_u32(const char *s, const char *end, uint32_t *out)
{
    uint64_t v = 0;
    if (s == end)
        return -1;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

int nb_transport_parse(const char *spec, nb_transport_t *out, const char **why)
{
    const char *w = NULL;
    memset(out, 0, sizeof *out);
    if (!strncmp(spec, "unix:", 5) || !strncmp(spec, "serial:", 7)) {
        int unix_ = spec[0] == 'u';
        const char *p = spec + (unix_ ? 5 : 7);
        size_t n = strlen(p);
        if (n == 0 || n >= sizeof out->path) {
            w = "path empty or too long";
            goto bad;
        }
        memcpy(out->path, p, n + 1);
        out->kind = unix_ ? NB_TRANSPORT_UNIX : NB_TRANSPORT_SERIAL;
        return 0;
    }
    if (!strncmp(spec, "vsock:", 6)) {
        const char *p = spec + 6, *colon = strchr(p, ':');
        if (!colon || parse_u32(p, colon, &out->cid) < 0 ||
            parse_u32(colon + 1, colon + 1 + strlen(colon + 1), &out->port) < 0) {
            w = "expected vsock:CID:PORT";
            goto bad;
        }
        out->kind = NB_TRANSPORT_VSOCK;
        return 0;
    }
    w = "expected unix:PATH, serial:PATH or vsock:CID:PORT";
bad:
    if (why)
        *why = w;
    return NB_EINVAL;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int nb_transport_connect(const nb_transport_t *t)
{
    int fd = -1, r;
    switch (t->kind) {
    case NB_TRANSPORT_UNIX: {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, t->path, strlen(t->path) + 1);
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            goto fail;
        break;
    }
    case NB_TRANSPORT_VSOCK: {
        struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = t->cid, .svm_port = t->port};
        if ((fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            goto fail;
        break;
    }
    case NB_TRANSPORT_SERIAL: {
        if ((fd = open(t->path, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK)) < 0)
            return -errno;
        struct termios tio;
        if (isatty(fd) && tcgetattr(fd, &tio) == 0) {
            /* A tty line discipline would eat or translate frame bytes. */
            cfmakeraw(&tio);
            if (tcsetattr(fd, TCSANOW, &tio) < 0)
                goto fail;
        }
        break;
    }
    default:
        return NB_EINVAL;
    }
    if ((r = set_nonblock(fd)) < 0) {
        close(fd);
        return r;
    }
    return fd;
fail:
    r = -errno;
    close(fd);
    return r;
}

int nb_transport_listen_unix(const char *path, int backlog)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat stb;
    size_t n = strlen(path);
    int fd, r;
    if (n == 0 || n >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, n + 1);
    if (lstat(path, &stb) == 0) {
        if (!S_ISSOCK(stb.st_mode))
            return -EEXIST;
        if (unlink(path) < 0)
            return -errno;
    }
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return -errno;
    /* chmod rather than umask: umask is process-wide and the thread pool
     * may be creating files. The socket's directory should be 0700 anyway,
     * and the handshake refuses peers without the key (A18). */
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(path, 0600) < 0 ||
        listen(fd, backlog) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

int nb_transport_accept(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return fd < 0 ? -errno : fd;
}
