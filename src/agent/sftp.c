/* `nilbox-agent sftp-server`: an SFTP v3 server on stdin/stdout, what the
 * host's SSH gateway runs (through the `exec` service, as the VM's user)
 * for the `sftp` subsystem, so scp, sftp and friends work without an sshd
 * or sftp-server in the image. Blocking and single-threaded, like
 * OpenSSH's sftp-server; requests are answered in order. The packet codec
 * is lib/sftp.c (fuzzed). Paths are the guest's, with the user's own
 * rights: the agent runs this as that user, so nothing here is a
 * boundary. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/sftp.h"

#define HANDLES 256
#define READ_MAX (64u * 1024u) /* a READ answers at most this much */
#define DIR_BATCH 64
#define OUT_MAX (2u * NB_SFTP_MAX_PACKET)

typedef struct {
    int used;
    int fd;
    DIR *dir;
    char path[PATH_MAX];
} handle_t;

static handle_t H[HANDLES];

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static uint32_t errno_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
    case ELOOP:
        return NB_SFTP_NO_SUCH_FILE;
    case EACCES:
    case EPERM:
    case EROFS:
        return NB_SFTP_PERMISSION_DENIED;
    default:
        return NB_SFTP_FAILURE;
    }
}

static void status_errno(nb_buf_t *o, uint32_t id, int e)
{
    nb_sftp_put_status(o, id, errno_code(e), strerror(e));
}

/* A path string from the packet as a C string; 0 or -1 (NUL inside, too
 * long). An empty path means the current directory (OpenSSH does so). */
static int cpath(nb_sftp_str_t s, char *out)
{
    if (s.n >= PATH_MAX || (s.n && memchr(s.p, 0, s.n)))
        return -1;
    if (s.n == 0) {
        memcpy(out, ".", 2);
        return 0;
    }
    memcpy(out, s.p, s.n);
    out[s.n] = 0;
    return 0;
}

static handle_t *get_handle(nb_sftp_str_t h)
{
    uint32_t i;
    if (h.n != 4)
        return NULL;
    i = (uint32_t)h.p[0] << 24 | (uint32_t)h.p[1] << 16 | (uint32_t)h.p[2] << 8 | h.p[3];
    return i < HANDLES && H[i].used ? &H[i] : NULL;
}

static int new_handle(void)
{
    for (int i = 0; i < HANDLES; i++)
        if (!H[i].used) {
            memset(&H[i], 0, sizeof H[i]);
            H[i].used = 1;
            H[i].fd = -1;
            return i;
        }
    return -1;
}

static void put_handle(nb_buf_t *o, uint32_t id, int i)
{
    uint8_t h[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
    nb_sftp_put_handle(o, id, h, 4);
}

static void to_attrs(const struct stat *st, nb_sftp_attrs_t *a)
{
    a->flags = NB_SFTP_ATTR_SIZE | NB_SFTP_ATTR_UIDGID | NB_SFTP_ATTR_PERM | NB_SFTP_ATTR_TIME;
    a->size = (uint64_t)st->st_size;
    a->uid = st->st_uid;
    a->gid = st->st_gid;
    a->perm = st->st_mode;
    a->atime = (uint32_t)st->st_atime;
    a->mtime = (uint32_t)st->st_mtime;
}

/* `ls -l` style line, which sftp's `ls -l` shows as is. */
static void longname(char *out, size_t n, const char *name, const struct stat *st)
{
    char mode[11] = "----------", when[32];
    const char *rwx = "rwxrwxrwx";
    mode[0] = S_ISDIR(st->st_mode)    ? 'd'
              : S_ISLNK(st->st_mode)  ? 'l'
              : S_ISCHR(st->st_mode)  ? 'c'
              : S_ISBLK(st->st_mode)  ? 'b'
              : S_ISFIFO(st->st_mode) ? 'p'
              : S_ISSOCK(st->st_mode) ? 's'
                                      : '-';
    for (int i = 0; i < 9; i++)
        if (st->st_mode & (1u << (8 - i)))
            mode[1 + i] = rwx[i];
    struct tm tm;
    time_t t = st->st_mtime;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%b %e %H:%M", &tm);
    snprintf(out, n, "%s %4lu %-8u %-8u %8llu %s %s", mode, (unsigned long)st->st_nlink,
             (unsigned)st->st_uid, (unsigned)st->st_gid, (unsigned long long)st->st_size, when,
             name);
}

static int apply_attrs(const char *path, int fd, const nb_sftp_attrs_t *a)
{
    if ((a->flags & NB_SFTP_ATTR_SIZE) &&
        (fd >= 0 ? ftruncate(fd, (off_t)a->size) : truncate(path, (off_t)a->size)) < 0)
        return -errno;
    if ((a->flags & NB_SFTP_ATTR_PERM) &&
        (fd >= 0 ? fchmod(fd, a->perm & 07777) : chmod(path, a->perm & 07777)) < 0)
        return -errno;
    if (a->flags & NB_SFTP_ATTR_TIME) {
        struct timeval tv[2] = {{(time_t)a->atime, 0}, {(time_t)a->mtime, 0}};
        if ((fd >= 0 ? futimes(fd, tv) : utimes(path, tv)) < 0)
            return -errno;
    }
    if ((a->flags & NB_SFTP_ATTR_UIDGID) &&
        (fd >= 0 ? fchown(fd, a->uid, a->gid) : chown(path, a->uid, a->gid)) < 0)
        return -errno;
    return 0;
}

static void do_open(nb_buf_t *o, const nb_sftp_req_t *q, const char *path)
{
    int fl = 0;
    uint32_t pf = q->pflags;
    if ((pf & NB_SFTP_READ_F) && (pf & NB_SFTP_WRITE_F))
        fl = O_RDWR;
    else if (pf & NB_SFTP_WRITE_F)
        fl = O_WRONLY;
    else
        fl = O_RDONLY;
    if (pf & NB_SFTP_APPEND_F)
        fl |= O_APPEND;
    if (pf & NB_SFTP_CREAT_F)
        fl |= O_CREAT;
    if (pf & NB_SFTP_TRUNC_F)
        fl |= O_TRUNC;
    if (pf & NB_SFTP_EXCL_F)
        fl |= O_EXCL;
    mode_t mode = (q->attrs.flags & NB_SFTP_ATTR_PERM) ? (q->attrs.perm & 07777) : 0666;
    int i = new_handle();
    if (i < 0) {
        nb_sftp_put_status(o, q->id, NB_SFTP_FAILURE, "too many open handles");
        return;
    }
    int fd = open(path, fl | O_CLOEXEC | O_NOCTTY, mode);
    if (fd < 0) {
        H[i].used = 0;
        status_errno(o, q->id, errno);
        return;
    }
    H[i].fd = fd;
    put_handle(o, q->id, i);
}

static void do_readdir(nb_buf_t *o, const nb_sftp_req_t *q, handle_t *h)
{
    nb_sftp_names_t nm;
    struct dirent *de;
    char full[PATH_MAX + 256], ln[PATH_MAX + 128];
    if (!h->dir) {
        nb_sftp_put_status(o, q->id, NB_SFTP_FAILURE, "not a directory handle");
        return;
    }
    size_t start = o->len;
    if (nb_sftp_names_begin(&nm, o, q->id) < 0)
        return;
    errno = 0;
    while (nm.count < DIR_BATCH && (de = readdir(h->dir))) {
        struct stat st;
        nb_sftp_attrs_t a = {0};
        snprintf(full, sizeof full, "%s/%s", h->path, de->d_name);
        if (lstat(full, &st) < 0)
            continue;
        to_attrs(&st, &a);
        longname(ln, sizeof ln, de->d_name, &st);
        if (nb_sftp_names_add(&nm, de->d_name, ln, &a) < 0)
            break;
    }
    if (nm.count == 0) {
        nb_buf_truncate(o, start);
        nb_sftp_put_status(o, q->id, NB_SFTP_EOF, "end of directory");
        return;
    }
    nb_sftp_names_end(&nm);
}

static void one_name(nb_buf_t *o, uint32_t id, const char *name)
{
    nb_sftp_names_t nm;
    nb_sftp_attrs_t a = {0};
    if (nb_sftp_names_begin(&nm, o, id) == 0 && nb_sftp_names_add(&nm, name, name, &a) == 0)
        nb_sftp_names_end(&nm);
}

/* realpath, or for a path that does not exist (yet) its lexical form
 * under the current directory, as OpenSSH's server answers. */
static void do_realpath(nb_buf_t *o, uint32_t id, const char *path)
{
    char res[PATH_MAX], tmp[PATH_MAX * 2], cwd[PATH_MAX];
    if (realpath(path, res)) {
        one_name(o, id, res);
        return;
    }
    if (path[0] != '/' && getcwd(cwd, sizeof cwd))
        snprintf(tmp, sizeof tmp, "%s/%s", cwd, path);
    else
        snprintf(tmp, sizeof tmp, "%s", path);
    /* Normalise: drop "." and empty parts, resolve ".." lexically. */
    char *parts[PATH_MAX / 2], *save = NULL;
    int n = 0;
    for (char *t = strtok_r(tmp, "/", &save); t && n < PATH_MAX / 2;
         t = strtok_r(NULL, "/", &save)) {
        if (!strcmp(t, "."))
            continue;
        if (!strcmp(t, "..")) {
            n = n ? n - 1 : 0;
            continue;
        }
        parts[n++] = t;
    }
    size_t l = 0;
    res[0] = 0;
    for (int i = 0; i < n && l + strlen(parts[i]) + 2 < sizeof res; i++)
        l += (size_t)snprintf(res + l, sizeof res - l, "/%s", parts[i]);
    one_name(o, id, l ? res : "/");
}

static void handle_req(nb_buf_t *o, const nb_sftp_req_t *q)
{
    char path[PATH_MAX], path2[PATH_MAX];
    struct stat st;
    nb_sftp_attrs_t a = {0};
    handle_t *h = NULL;
    int needs_handle = q->type == NB_SFTP_CLOSE || q->type == NB_SFTP_READ ||
                       q->type == NB_SFTP_WRITE || q->type == NB_SFTP_FSTAT ||
                       q->type == NB_SFTP_FSETSTAT || q->type == NB_SFTP_READDIR;
    if (needs_handle && !(h = get_handle(q->handle))) {
        nb_sftp_put_status(o, q->id, NB_SFTP_FAILURE, "invalid handle");
        return;
    }
    if (!needs_handle && q->type != NB_SFTP_EXTENDED &&
        (cpath(q->path, path) < 0 || cpath(q->path2, path2) < 0)) {
        nb_sftp_put_status(o, q->id, NB_SFTP_BAD_MESSAGE, "bad path");
        return;
    }
    switch (q->type) {
    case NB_SFTP_OPEN:
        do_open(o, q, path);
        return;
    case NB_SFTP_CLOSE: {
        int r = h->dir ? closedir(h->dir) : close(h->fd);
        int e = errno;
        h->used = 0;
        if (r < 0)
            status_errno(o, q->id, e);
        else
            nb_sftp_put_status(o, q->id, NB_SFTP_OK, "");
        return;
    }
    case NB_SFTP_READ: {
        static uint8_t buf[READ_MAX];
        size_t want = q->len < READ_MAX ? q->len : READ_MAX;
        ssize_t k;
        if (h->fd < 0) {
            nb_sftp_put_status(o, q->id, NB_SFTP_FAILURE, "not a file handle");
            return;
        }
        do
            k = pread(h->fd, buf, want, (off_t)q->offset);
        while (k < 0 && errno == EINTR);
        if (k < 0)
            status_errno(o, q->id, errno);
        else if (k == 0 && want)
            nb_sftp_put_status(o, q->id, NB_SFTP_EOF, "end of file");
        else
            nb_sftp_put_data(o, q->id, buf, (size_t)k);
        return;
    }
    case NB_SFTP_WRITE: {
        size_t off = 0;
        if (h->fd < 0) {
            nb_sftp_put_status(o, q->id, NB_SFTP_FAILURE, "not a file handle");
            return;
        }
        while (off < q->data.n) {
            ssize_t w = pwrite(h->fd, q->data.p + off, q->data.n - off, (off_t)(q->offset + off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                status_errno(o, q->id, w < 0 ? errno : EIO);
                return;
            }
            off += (size_t)w;
        }
        nb_sftp_put_status(o, q->id, NB_SFTP_OK, "");
        return;
    }
    case NB_SFTP_LSTAT:
    case NB_SFTP_STAT:
    case NB_SFTP_FSTAT: {
        int r = q->type == NB_SFTP_FSTAT  ? (h->dir ? fstat(dirfd(h->dir), &st) : fstat(h->fd, &st))
                : q->type == NB_SFTP_STAT ? stat(path, &st)
                                          : lstat(path, &st);
        if (r < 0) {
            status_errno(o, q->id, errno);
            return;
        }
        to_attrs(&st, &a);
        nb_sftp_put_attrs(o, q->id, &a);
        return;
    }
    case NB_SFTP_SETSTAT:
    case NB_SFTP_FSETSTAT: {
        int r = apply_attrs(q->type == NB_SFTP_SETSTAT ? path : h->path,
                            q->type == NB_SFTP_SETSTAT ? -1 : (h->dir ? dirfd(h->dir) : h->fd),
                            &q->attrs);
        if (r < 0)
            status_errno(o, q->id, -r);
        else
            nb_sftp_put_status(o, q->id, NB_SFTP_OK, "");
        return;
    }
    case NB_SFTP_OPENDIR: {
        int i = new_handle();
        if (i < 0) {
            nb_sftp_put_status(o, q->id, NB_SFTP_FAILURE, "too many open handles");
            return;
        }
        if (!(H[i].dir = opendir(path))) {
            H[i].used = 0;
            status_errno(o, q->id, errno);
            return;
        }
        snprintf(H[i].path, sizeof H[i].path, "%s", path);
        put_handle(o, q->id, i);
        return;
    }
    case NB_SFTP_READDIR:
        do_readdir(o, q, h);
        return;
    case NB_SFTP_REMOVE:
    case NB_SFTP_RMDIR:
    case NB_SFTP_MKDIR:
    case NB_SFTP_SYMLINK:
    case NB_SFTP_RENAME: {
        int r;
        mode_t mode = (q->attrs.flags & NB_SFTP_ATTR_PERM) ? (q->attrs.perm & 07777) : 0777;
        if (q->type == NB_SFTP_REMOVE)
            r = unlink(path);
        else if (q->type == NB_SFTP_RMDIR)
            r = rmdir(path);
        else if (q->type == NB_SFTP_MKDIR)
            r = mkdir(path, mode);
        else if (q->type == NB_SFTP_SYMLINK)
            r = symlink(path, path2); /* OpenSSH's order: target, then the link */
        else if (lstat(path2, &st) == 0) {
            /* v3 RENAME does not replace an existing file. */
            r = -1;
            errno = EEXIST;
        } else {
            r = rename(path, path2);
        }
        if (r < 0)
            status_errno(o, q->id, errno);
        else
            nb_sftp_put_status(o, q->id, NB_SFTP_OK, "");
        return;
    }
    case NB_SFTP_REALPATH:
        do_realpath(o, q->id, path);
        return;
    case NB_SFTP_READLINK: {
        char t[PATH_MAX];
        ssize_t k = readlink(path, t, sizeof t - 1);
        if (k < 0) {
            status_errno(o, q->id, errno);
            return;
        }
        t[k] = 0;
        one_name(o, q->id, t);
        return;
    }
    default:
        nb_sftp_put_status(o, q->id, NB_SFTP_OP_UNSUPPORTED, "operation not supported");
        return;
    }
}

int nb_agent_sftp_main(int in, int out)
{
    static uint8_t buf[NB_SFTP_MAX_PACKET + 4 + 65536];
    size_t len = 0;
    nb_buf_t o;
    int inited = 0;
    nb_buf_init(&o, OUT_MAX);
    for (;;) {
        size_t off = 0;
        for (;;) {
            long pl = nb_sftp_packet_len(buf + off, len - off);
            if (pl < 0)
                goto fail; /* a client we cannot follow any more */
            if (pl == 0)
                break;
            nb_sftp_req_t q;
            int r = nb_sftp_parse(buf + off + 4, (size_t)pl - 4, &q);
            off += (size_t)pl;
            if (!inited) {
                if (r < 0 || q.type != NB_SFTP_INIT)
                    goto fail;
                inited = 1;
                nb_sftp_put_version(&o);
            } else if (r == NB_EUNSUPPORTED || (r == 0 && q.type == NB_SFTP_EXTENDED)) {
                nb_sftp_put_status(&o, q.id, NB_SFTP_OP_UNSUPPORTED, "operation not supported");
            } else if (r < 0 || q.type == NB_SFTP_INIT) {
                nb_sftp_put_status(&o, q.id, NB_SFTP_BAD_MESSAGE, "malformed request");
            } else {
                handle_req(&o, &q);
            }
            if (o.len && write_all(out, o.p, o.len) < 0)
                goto fail;
            nb_buf_reset(&o);
        }
        if (off) {
            memmove(buf, buf + off, len - off);
            len -= off;
        }
        ssize_t k = read(in, buf + len, sizeof buf - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    nb_buf_free(&o);
    return 0;
fail:
    nb_buf_free(&o);
    return 1;
}
