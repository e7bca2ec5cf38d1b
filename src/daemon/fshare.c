/* One folder mapping's file server: see fshare.h (the A19 rules) and
 * docs/internals/share.md. */

#include "daemon/fshare.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lib/err.h"
#include "lib/fsproto.h"

#define RESOLVE_SAFE (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)

/* A node's O_PATH descriptor is a cache: the guest may hold far more nodes
 * (an `ls -l` of 100 000 files) than the daemon may open descriptors
 * (RLIMIT_NOFILE, often 20 000 or less). Past a budget the least recently
 * used descriptors are closed; a node without one is re-opened from its
 * parent's descriptor and its name, one component (RESOLVE_SAFE, as a
 * lookup), and must still be the same inode (else ESTALE). A node keeps
 * its parent alive (kids) for that. */
typedef struct node {
    uint64_t id;
    dev_t dev;
    ino_t ino;
    int fd;              /* O_PATH, or -1: closed (re-opened on use) */
    uint64_t nlookup;    /* the guest's references (FORGET drops them) */
    unsigned busy;       /* requests using fd right now */
    unsigned kids;       /* nodes whose parent this is */
    struct node *parent; /* NULL for the root */
    char *name;          /* the name below parent it was last seen under */
    struct node *next_id, *next_ino;
    struct node *lru_prev, *lru_next; /* nodes with an open fd, most recent first */
} node_t;

typedef struct {
    int fd; /* -1: free slot */
    int dir;
    unsigned busy;
    int closing;
    pthread_mutex_t dirlock; /* readdir: lseek + getdents as one step */
} handle_t;

struct nb_fsrv {
    pthread_mutex_t mu;
    int ro;
    uid_t uid;
    gid_t gid;
    node_t *root;
    node_t **by_id, **by_ino;
    size_t nbuckets, nnodes;
    node_t *lru_head, *lru_tail;
    size_t nfds, fd_budget; /* node descriptors open, and how many may be */
    uint64_t next_id;
    handle_t **h; /* slots (pointers: a readdir may hold one while the array grows) */
    size_t nh, hcap, hused;
    /* The shared data area (nb_fsrv_set_shm): guest memory, so only ever
     * touched by pread/pwrite (a fault there is EFAULT, never a signal),
     * at offsets the request gives and we bound by shm_len. */
    uint8_t *shm;
    size_t shm_len;
    uint64_t shm_ops; /* atomic */
};

static long sys_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    return syscall(SYS_openat2, dfd, path, &how, sizeof how);
}

/* ------------------------------------------------------------ nodes */

static size_t hid(const nb_fsrv_t *s, uint64_t id)
{
    return (size_t)(id * 0x9e3779b97f4a7c15ull >> 17) & (s->nbuckets - 1);
}

static size_t hino(const nb_fsrv_t *s, dev_t dev, ino_t ino)
{
    uint64_t k = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev * 0xc2b2ae3d27d4eb4full;
    return (size_t)(k >> 17) & (s->nbuckets - 1);
}

static int grow(nb_fsrv_t *s)
{
    size_t nb = s->nbuckets ? s->nbuckets * 2 : 1024;
    node_t **a = calloc(nb, sizeof *a), **b = calloc(nb, sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        return -ENOMEM;
    }
    node_t **oa = s->by_id;
    size_t on = s->nbuckets;
    free(s->by_ino);
    s->by_id = a;
    s->by_ino = b;
    s->nbuckets = nb;
    for (size_t i = 0; i < on; i++) {
        for (node_t *n = oa[i], *nx; n; n = nx) {
            nx = n->next_id;
            size_t k = hid(s, n->id);
            n->next_id = a[k];
            a[k] = n;
            k = hino(s, n->dev, n->ino);
            n->next_ino = b[k];
            b[k] = n;
        }
    }
    free(oa);
    return 0;
}

static node_t *find_id(nb_fsrv_t *s, uint64_t id)
{
    for (node_t *n = s->by_id[hid(s, id)]; n; n = n->next_id)
        if (n->id == id)
            return n;
    return NULL;
}

static void unlink_node(nb_fsrv_t *s, node_t *n)
{
    node_t **pp;
    for (pp = &s->by_id[hid(s, n->id)]; *pp && *pp != n; pp = &(*pp)->next_id)
        ;
    if (*pp)
        *pp = n->next_id;
    for (pp = &s->by_ino[hino(s, n->dev, n->ino)]; *pp && *pp != n; pp = &(*pp)->next_ino)
        ;
    if (*pp)
        *pp = n->next_ino;
    s->nnodes--;
}

static void lru_add(nb_fsrv_t *s, node_t *n)
{
    n->lru_prev = NULL;
    n->lru_next = s->lru_head;
    if (s->lru_head)
        s->lru_head->lru_prev = n;
    else
        s->lru_tail = n;
    s->lru_head = n;
    s->nfds++;
}

static void lru_del(nb_fsrv_t *s, node_t *n)
{
    if (n->lru_prev)
        n->lru_prev->lru_next = n->lru_next;
    else
        s->lru_head = n->lru_next;
    if (n->lru_next)
        n->lru_next->lru_prev = n->lru_prev;
    else
        s->lru_tail = n->lru_prev;
    n->lru_prev = n->lru_next = NULL;
    s->nfds--;
}

/* Closes least recently used node descriptors: down to the budget, and
 * `extra` more (after EMFILE). Never the root's or one in use. */
static void evict_locked(nb_fsrv_t *s, size_t extra)
{
    size_t want = s->nfds > s->fd_budget ? s->nfds - s->fd_budget : 0;
    want += extra;
    node_t *n = s->lru_tail;
    for (unsigned skipped = 0; n && want && skipped < 256;) {
        node_t *prev = n->lru_prev;
        if (n->busy || n == s->root) {
            skipped++;
        } else {
            lru_del(s, n);
            close(n->fd);
            n->fd = -1;
            want--;
        }
        n = prev;
    }
}

/* Frees n, then its parents, while nothing holds them. */
static void node_release_locked(nb_fsrv_t *s, node_t *n)
{
    while (n && n != s->root && n->nlookup == 0 && n->busy == 0 && n->kids == 0) {
        node_t *p = n->parent;
        unlink_node(s, n);
        if (n->fd >= 0) {
            lru_del(s, n);
            close(n->fd);
        }
        free(n->name);
        free(n);
        if (p)
            p->kids--;
        n = p;
    }
}

/* Records where n was last seen (lookup, rename), for re-opening it. */
static void node_set_path_locked(nb_fsrv_t *s, node_t *n, node_t *p, const char *name)
{
    if (!p || n == s->root || (n->parent == p && n->name && strcmp(n->name, name) == 0))
        return;
    /* Never a cycle (a bind mount inside the folder can show a directory
     * below itself): re-opening would recurse for ever. */
    for (node_t *a = p; a; a = a->parent)
        if (a == n)
            return;
    char *nm = strdup(name);
    if (!nm)
        return; /* keep the old path: at worst a later re-open says ESTALE */
    node_t *old = n->parent;
    free(n->name);
    n->name = nm;
    n->parent = p;
    p->kids++;
    if (old) {
        old->kids--;
        node_release_locked(s, old);
    }
}

static int open_child(int pfd, const char *name);
static int fstat_fd(int fd, struct stat *st);

/* Gives n a descriptor again (its parents first). n must be held. */
static int node_open_locked(nb_fsrv_t *s, node_t *n)
{
    if (n->fd >= 0)
        return 0;
    node_t *p = n->parent;
    if (!p || !n->name)
        return -ESTALE;
    p->busy++;
    int r = node_open_locked(s, p);
    if (r == 0) {
        int fd = open_child(p->fd, n->name);
        if (fd == -EMFILE || fd == -ENFILE) {
            evict_locked(s, 16);
            fd = open_child(p->fd, n->name);
        }
        struct stat st;
        if (fd >= 0 && (fstat_fd(fd, &st) < 0 || st.st_dev != n->dev || st.st_ino != n->ino)) {
            close(fd);
            fd = -ESTALE; /* moved or replaced on the host since */
        }
        if (fd >= 0) {
            n->fd = fd;
            lru_add(s, n);
        } else {
            r = fd == -ENOENT || fd == -ENOTDIR ? -ESTALE : fd;
        }
    }
    p->busy--;
    return r;
}

/* Takes a reference for one request: the node's descriptor stays open
 * until put. 0, or -ESTALE (unknown or gone) or another errno. */
static int node_get(nb_fsrv_t *s, uint64_t id, node_t **out)
{
    pthread_mutex_lock(&s->mu);
    node_t *n = find_id(s, id);
    int r = -ESTALE;
    if (n) {
        n->busy++;
        if ((r = node_open_locked(s, n)) < 0) {
            n->busy--;
            node_release_locked(s, n);
        } else {
            if (n != s->lru_head) { /* most recently used */
                lru_del(s, n);
                lru_add(s, n);
            }
            evict_locked(s, 0);
        }
    }
    pthread_mutex_unlock(&s->mu);
    *out = r == 0 ? n : NULL;
    return r;
}

static void node_put(nb_fsrv_t *s, node_t *n)
{
    pthread_mutex_lock(&s->mu);
    n->busy--;
    node_release_locked(s, n);
    pthread_mutex_unlock(&s->mu);
}

/* Adds a lookup reference for the inode open as `fd` (O_PATH, taken
 * over), found as `name` below `p`: an existing node for the same inode
 * is reused. */
static int node_add(nb_fsrv_t *s, int fd, const struct stat *st, node_t *p, const char *name,
                    uint64_t *id)
{
    pthread_mutex_lock(&s->mu);
    node_t *n;
    for (n = s->by_ino[hino(s, st->st_dev, st->st_ino)]; n; n = n->next_ino)
        if (n->dev == st->st_dev && n->ino == st->st_ino)
            break;
    if (n) {
        n->nlookup++;
        *id = n->id;
        if (n->fd < 0) {
            n->fd = fd;
            lru_add(s, n);
        } else {
            close(fd);
        }
        node_set_path_locked(s, n, p, name);
        evict_locked(s, 0);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    char *nm = NULL;
    if (s->nnodes >= NB_FSRV_MAX_NODES || (s->nnodes >= s->nbuckets && grow(s) < 0) ||
        !(nm = strdup(name)) || !(n = calloc(1, sizeof *n))) {
        pthread_mutex_unlock(&s->mu);
        free(nm);
        close(fd);
        return -ENFILE;
    }
    n->id = s->next_id++;
    n->dev = st->st_dev;
    n->ino = st->st_ino;
    n->fd = fd;
    n->nlookup = 1;
    n->parent = p;
    n->name = nm;
    p->kids++;
    size_t k = hid(s, n->id);
    n->next_id = s->by_id[k];
    s->by_id[k] = n;
    k = hino(s, n->dev, n->ino);
    n->next_ino = s->by_ino[k];
    s->by_ino[k] = n;
    s->nnodes++;
    lru_add(s, n);
    evict_locked(s, 0);
    *id = n->id;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void node_forget(nb_fsrv_t *s, uint64_t id, uint64_t count)
{
    pthread_mutex_lock(&s->mu);
    node_t *n = find_id(s, id);
    if (n && n != s->root && n->nlookup > 0) {
        n->nlookup = count >= n->nlookup ? 0 : n->nlookup - count;
        node_release_locked(s, n);
    }
    pthread_mutex_unlock(&s->mu);
}

/* The inode named `name` below p moved to `name2` below p2 (a rename the
 * guest made): its node, if any, is re-opened from there from now on. */
static void node_moved(nb_fsrv_t *s, const struct stat *st, node_t *p2, const char *name2)
{
    pthread_mutex_lock(&s->mu);
    for (node_t *n = s->by_ino[hino(s, st->st_dev, st->st_ino)]; n; n = n->next_ino)
        if (n->dev == st->st_dev && n->ino == st->st_ino)
            node_set_path_locked(s, n, p2, name2);
    pthread_mutex_unlock(&s->mu);
}

/* Descriptors are short: close some node ones and say whether to retry. */
static int relieve(nb_fsrv_t *s, int err)
{
    if (err != -EMFILE && err != -ENFILE)
        return 0;
    pthread_mutex_lock(&s->mu);
    size_t before = s->nfds;
    evict_locked(s, 16);
    int freed = s->nfds < before;
    pthread_mutex_unlock(&s->mu);
    return freed;
}

/* ------------------------------------------------------------ handles */

static int handle_add(nb_fsrv_t *s, int fd, int dir, uint64_t *fh)
{
    pthread_mutex_lock(&s->mu);
    size_t i;
    for (i = 0; i < s->nh && s->h[i]->fd >= 0; i++)
        ;
    if (i == s->nh) {
        if (s->nh >= NB_FSRV_MAX_HANDLES) {
            pthread_mutex_unlock(&s->mu);
            close(fd);
            return -ENFILE;
        }
        if (s->nh == s->hcap) {
            size_t nc = s->hcap ? s->hcap * 2 : 64;
            handle_t **nh = realloc(s->h, nc * sizeof *nh);
            if (!nh) {
                pthread_mutex_unlock(&s->mu);
                close(fd);
                return -ENOMEM;
            }
            s->h = nh;
            s->hcap = nc;
        }
        if (!(s->h[s->nh] = calloc(1, sizeof **s->h))) {
            pthread_mutex_unlock(&s->mu);
            close(fd);
            return -ENOMEM;
        }
        pthread_mutex_init(&s->h[s->nh]->dirlock, NULL);
        s->nh++;
    }
    handle_t *h = s->h[i];
    h->fd = fd;
    h->dir = dir;
    h->busy = 0;
    h->closing = 0;
    s->hused++;
    *fh = i + 1;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void handle_close_locked(nb_fsrv_t *s, handle_t *h)
{
    close(h->fd);
    h->fd = -1;
    s->hused--;
}

/* The handle's descriptor for one request (-EBADF: none of that kind). */
static int handle_get(nb_fsrv_t *s, uint64_t fh, int dir, size_t *idx)
{
    int fd = -EBADF;
    pthread_mutex_lock(&s->mu);
    if (fh >= 1 && fh <= s->nh) {
        handle_t *h = s->h[fh - 1];
        if (h->fd >= 0 && !h->closing && h->dir == dir) {
            h->busy++;
            fd = h->fd;
            *idx = (size_t)(fh - 1);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return fd;
}

static void handle_put(nb_fsrv_t *s, size_t idx)
{
    pthread_mutex_lock(&s->mu);
    handle_t *h = s->h[idx];
    if (--h->busy == 0 && h->closing)
        handle_close_locked(s, h);
    pthread_mutex_unlock(&s->mu);
}

static int handle_release(nb_fsrv_t *s, uint64_t fh, int dir)
{
    int r = -EBADF;
    pthread_mutex_lock(&s->mu);
    if (fh >= 1 && fh <= s->nh) {
        handle_t *h = s->h[fh - 1];
        if (h->fd >= 0 && !h->closing && h->dir == dir) {
            h->closing = 1;
            if (h->busy == 0)
                handle_close_locked(s, h);
            r = 0;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* ------------------------------------------------------------ helpers */

static uint32_t map_id(uint32_t v, uint32_t own)
{
    return v == own ? 0 : NB_FSRV_NOBODY;
}

static void to_attr(const nb_fsrv_t *s, const struct stat *st, nb_fsp_attr_t *a)
{
    memset(a, 0, sizeof *a);
    a->ino = st->st_ino;
    a->size = st->st_size < 0 ? 0 : (uint64_t)st->st_size;
    a->blocks = st->st_blocks < 0 ? 0 : (uint64_t)st->st_blocks;
    a->atime = st->st_atim.tv_sec;
    a->atime_ns = (uint32_t)st->st_atim.tv_nsec;
    a->mtime = st->st_mtim.tv_sec;
    a->mtime_ns = (uint32_t)st->st_mtim.tv_nsec;
    a->ctime = st->st_ctim.tv_sec;
    a->ctime_ns = (uint32_t)st->st_ctim.tv_nsec;
    a->mode = st->st_mode & 0177777u;
    a->nlink = (uint32_t)st->st_nlink;
    a->uid = map_id(st->st_uid, s->uid);
    a->gid = map_id(st->st_gid, s->gid);
    a->blksize = (uint32_t)st->st_blksize;
}

static int fstat_fd(int fd, struct stat *st)
{
    return fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

/* name as a C string (already validated: no NUL, 1..255 bytes). */
static void cname(nb_iov_t n, char out[NB_FSP_NAME_MAX + 1])
{
    memcpy(out, n.p, n.len);
    out[n.len] = '\0';
}

/* One component below the parent, never following a symlink: O_PATH of
 * the entry itself (a symlink stays a symlink). */
static int open_child(int pfd, const char *name)
{
    long fd = sys_openat2(pfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, RESOLVE_SAFE);
    return fd < 0 ? -errno : (int)fd;
}

/* Re-opens the inode behind an O_PATH descriptor with real access flags.
 * /proc/self/fd/N names exactly that inode (our own descriptor), so it
 * cannot reach anything else; callers check the file type first. */
static int reopen(int fd, int flags)
{
    char p[40];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    int r = open(p, flags | O_CLOEXEC | O_NOCTTY);
    return r < 0 ? -errno : r;
}

/* A19: only plain files with one link may be opened for data. */
static int file_ok(const struct stat *st)
{
    if (S_ISDIR(st->st_mode))
        return -EISDIR;
    if (S_ISLNK(st->st_mode))
        return -ELOOP;
    if (!S_ISREG(st->st_mode))
        return -EACCES;
    if (st->st_nlink > 1)
        return -EPERM;
    return 0;
}

static int wire_flags(uint32_t f)
{
    int o = (f & NB_FSP_O_ACCMODE) == NB_FSP_O_WRONLY ? O_WRONLY
            : (f & NB_FSP_O_ACCMODE) == NB_FSP_O_RDWR ? O_RDWR
                                                      : O_RDONLY;
    if (f & NB_FSP_O_TRUNC)
        o |= O_TRUNC;
    if (f & NB_FSP_O_APPEND)
        o |= O_APPEND;
    return o;
}

static int is_write_open(uint32_t f)
{
    return (f & NB_FSP_O_ACCMODE) != NB_FSP_O_RDONLY || (f & (NB_FSP_O_TRUNC | NB_FSP_O_APPEND));
}

/* ------------------------------------------------------------ ops */

/* Looks up `name` below node p and adds a reference: entry reply. */
static int do_lookup(nb_fsrv_t *s, node_t *p, const char *name, uint64_t *id, struct stat *st)
{
    int fd = open_child(p->fd, name);
    if (fd < 0 && relieve(s, fd))
        fd = open_child(p->fd, name);
    if (fd < 0)
        return fd;
    int r = fstat_fd(fd, st);
    if (r < 0) {
        close(fd);
        return r;
    }
    return node_add(s, fd, st, p, name, id);
}

static int put_entry(nb_fsrv_t *s, nb_buf_t *out, uint64_t id, const struct stat *st)
{
    nb_fsp_attr_t a;
    to_attr(s, st, &a);
    int r = nb_fsp_put_u64(out, id);
    r = r < 0 ? r : nb_fsp_put_u64(out, 0);
    return r < 0 ? r : nb_fsp_put_attr(out, &a);
}

static int op_setattr(nb_fsrv_t *s, int fd, const nb_fsp_req_t *q, struct stat *st)
{
    int r = fstat_fd(fd, st);
    if (r < 0)
        return r;
    uint32_t v = q->flags;
    if (v & (NB_FSP_SET_UID | NB_FSP_SET_GID)) {
        /* Only "no change" works: the guest cannot give files away. */
        if (((v & NB_FSP_SET_UID) && map_id(st->st_uid, s->uid) != q->uid) ||
            ((v & NB_FSP_SET_GID) && map_id(st->st_gid, s->gid) != q->gid))
            return -EPERM;
    }
    if (v & NB_FSP_SET_SIZE) {
        if ((r = file_ok(st)) < 0)
            return r == -EISDIR ? -EISDIR : r;
        size_t idx;
        int hfd = q->fh != NB_FSP_NOFH ? handle_get(s, q->fh, 0, &idx) : -EBADF;
        if (hfd >= 0) {
            r = ftruncate(hfd, (off_t)q->off) < 0 ? -errno : 0;
            handle_put(s, idx);
        } else {
            int wfd = reopen(fd, O_WRONLY);
            if (wfd < 0)
                return wfd;
            r = ftruncate(wfd, (off_t)q->off) < 0 ? -errno : 0;
            close(wfd);
        }
        if (r < 0)
            return r;
    }
    if (v & NB_FSP_SET_MODE) {
        if (S_ISLNK(st->st_mode))
            return -EOPNOTSUPP;
        char p[40];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        /* No setuid/setgid files for the host: a guest must not plant a
         * program that runs as the host user for other host users. */
        if (chmod(p, q->mode & 07777u & ~(unsigned)(S_ISUID | S_ISGID)) < 0)
            return -errno;
    }
    if (v & (NB_FSP_SET_ATIME | NB_FSP_SET_MTIME | NB_FSP_SET_ATIME_NOW | NB_FSP_SET_MTIME_NOW)) {
        struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (v & NB_FSP_SET_ATIME_NOW)
            ts[0].tv_nsec = UTIME_NOW;
        else if (v & NB_FSP_SET_ATIME)
            ts[0] = (struct timespec){q->atime, q->atime_ns};
        if (v & NB_FSP_SET_MTIME_NOW)
            ts[1].tv_nsec = UTIME_NOW;
        else if (v & NB_FSP_SET_MTIME)
            ts[1] = (struct timespec){q->mtime, q->mtime_ns};
        if (utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
            return -errno;
    }
    return fstat_fd(fd, st);
}

/* CREATE: a new file (or, without EXCL, an existing plain one) below pfd.
 * Never through a symlink, never truncating a multi-link file. */
static int op_create(nb_fsrv_t *s, node_t *p, const char *name, const nb_fsp_req_t *q, int *ofd,
                     uint64_t *id, struct stat *st)
{
    int pfd = p->fd;
    int fl = wire_flags(q->flags) & ~O_TRUNC;
    long fd = sys_openat2(pfd, name, (uint64_t)(fl | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC),
                          q->mode & 07777u & ~(unsigned)(S_ISUID | S_ISGID), RESOLVE_SAFE);
    int r;
    if (fd < 0 && errno == EEXIST && !(q->flags & NB_FSP_O_EXCL)) {
        int pf = open_child(pfd, name);
        if (pf < 0)
            return pf;
        if ((r = fstat_fd(pf, st)) < 0 || (r = file_ok(st)) < 0) {
            close(pf);
            return r;
        }
        fd = reopen(pf, wire_flags(q->flags));
        close(pf);
        if (fd < 0)
            return (int)fd;
    } else if (fd < 0) {
        return -errno;
    }
    int pathfd = reopen((int)fd, O_PATH);
    if (pathfd < 0 || (r = fstat_fd(pathfd, st)) < 0 ||
        (r = node_add(s, pathfd, st, p, name, id)) < 0) {
        r = pathfd < 0 ? pathfd : r;
        if (pathfd >= 0 && r != -ENFILE)
            close(pathfd);
        close((int)fd);
        return r;
    }
    *ofd = (int)fd;
    return 0;
}

/* READDIR, and READDIRPLUS: each entry also looked up (a reference the
 * guest kernel takes over), so `ls -l` needs no lookup round trip per
 * file. The reply is sized for the guest's buffer (see fsproto.h). */
static int op_readdir(nb_fsrv_t *s, const nb_fsp_req_t *q, nb_buf_t *out)
{
    size_t idx;
    int plus = q->op == NB_FSP_READDIRPLUS;
    node_t *dn = NULL;
    if (plus) {
        int e = node_get(s, q->node, &dn);
        if (e < 0)
            return e;
    }
    int fd = handle_get(s, q->fh, 1, &idx);
    if (fd < 0) {
        if (dn)
            node_put(s, dn);
        return fd;
    }
    pthread_mutex_lock(&s->mu);
    handle_t *h = s->h[idx];
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&h->dirlock);
    size_t countpos = out->len;
    int r = nb_fsp_put_u32(out, 0);
    uint32_t count = 0;
    size_t used = 0;
    char buf[32768];
    off_t pos = (off_t)q->off;
    int full = 0;
    while (r == 0 && !full) {
        if (lseek(fd, pos, SEEK_SET) < 0) {
            r = count ? 0 : -errno; /* entries already looked up are kept */
            break;
        }
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n < 0) {
            r = count ? 0 : -errno;
            break;
        }
        if (n == 0)
            break;
        for (long i = 0; i < n;) {
            struct dirent64 *d = (struct dirent64 *)(buf + i);
            size_t nl = strlen(d->d_name);
            size_t len = plus ? nb_fsp_direntplus_fuse_len(nl) : nb_fsp_dirent_len(nl);
            if (used + len > q->size) {
                full = 1;
                break;
            }
            size_t at = out->len;
            if (plus) {
                int dots = d->d_name[0] == '.' &&
                           (d->d_name[1] == '\0' || (d->d_name[1] == '.' && d->d_name[2] == '\0'));
                struct stat st;
                nb_fsp_attr_t a = {0};
                uint64_t id = 0;
                /* A failed lookup (gone meanwhile, a name the protocol
                 * refuses) leaves a plain entry: the guest looks it up. */
                if (!dots && nl <= NB_FSP_NAME_MAX && do_lookup(s, dn, d->d_name, &id, &st) == 0)
                    to_attr(s, &st, &a);
                else
                    id = 0;
                r = nb_fsp_put_direntplus(out, d->d_ino, (uint64_t)d->d_off, d->d_type,
                                          nb_iov(d->d_name, nl), id, 0, &a);
                if (r < 0 && id)
                    node_forget(s, id, 1);
            } else {
                r = nb_fsp_put_dirent(out, d->d_ino, (uint64_t)d->d_off, d->d_type,
                                      nb_iov(d->d_name, nl));
            }
            if (r < 0) {
                /* Keep what is there (its lookups are the guest's now). */
                nb_buf_truncate(out, at);
                if (count)
                    r = 0;
                full = 1;
                break;
            }
            used += len;
            count++;
            pos = d->d_off;
            i += d->d_reclen;
        }
    }
    pthread_mutex_unlock(&h->dirlock);
    handle_put(s, idx);
    if (dn)
        node_put(s, dn);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < 4; i++)
        out->p[countpos + i] = (uint8_t)(count >> (8 * i));
    return 0;
}

/* pread until `n` bytes, EOF or an error (an error after some bytes: what
 * was read). */
static ssize_t pread_full(int fd, uint8_t *p, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, p + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return got ? (ssize_t)got : -errno;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

static ssize_t pwrite_full(int fd, const uint8_t *p, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t k = pwrite(fd, p + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return done ? (ssize_t)done : (k < 0 ? -errno : -EIO);
        done += (size_t)k;
    }
    return (ssize_t)done;
}

static int op_io(nb_fsrv_t *s, const nb_fsp_req_t *q, nb_buf_t *out)
{
    size_t idx;
    uint8_t *area = NULL;
    if (q->op == NB_FSP_READ_SHM || q->op == NB_FSP_WRITE_SHM) {
        /* The offset and size come from the guest: the whole range must be
         * inside the area (the parser already refused shm + size overflow). */
        if (!s->shm || q->shm > s->shm_len || q->size > s->shm_len - q->shm)
            return -EINVAL;
        area = s->shm + q->shm;
        __atomic_add_fetch(&s->shm_ops, 1, __ATOMIC_RELAXED);
    }
    int fd = handle_get(s, q->fh, 0, &idx);
    if (fd < 0)
        return fd;
    int r = 0;
    ssize_t k;
    switch (q->op) {
    case NB_FSP_READ:
        if ((r = nb_buf_reserve(out, q->size)) == 0) {
            if ((k = pread_full(fd, out->p + out->len, q->size, q->off)) < 0)
                r = (int)k;
            else
                out->len += (size_t)k;
        }
        break;
    case NB_FSP_READ_SHM:
        /* Straight into guest memory: no copy on the host, none on the
         * channel. The guest may scribble on the area meanwhile; it only
         * spoils its own data. */
        if ((k = pread_full(fd, area, q->size, q->off)) < 0)
            r = (int)k;
        else
            r = nb_fsp_put_u32(out, (uint32_t)k);
        break;
    case NB_FSP_WRITE:
    case NB_FSP_WRITE_SHM:
        /* WRITE_SHM: the bytes are whatever the area holds while pwrite
         * copies them (nothing is validated in them, so a guest changing
         * them meanwhile only changes what it writes). */
        k = q->op == NB_FSP_WRITE ? pwrite_full(fd, q->data.p, q->data.len, q->off)
                                  : pwrite_full(fd, area, q->size, q->off);
        r = k < 0 ? (int)k : nb_fsp_put_u32(out, (uint32_t)k);
        break;
    default: /* FSYNC */
        r = (q->flags ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
        break;
    }
    handle_put(s, idx);
    return r;
}

static int is_write_op(const nb_fsp_req_t *q)
{
    switch (q->op) {
    case NB_FSP_SETATTR:
    case NB_FSP_SYMLINK:
    case NB_FSP_MKDIR:
    case NB_FSP_UNLINK:
    case NB_FSP_RMDIR:
    case NB_FSP_RENAME:
    case NB_FSP_CREATE:
    case NB_FSP_WRITE:
    case NB_FSP_WRITE_SHM:
        return 1;
    case NB_FSP_OPEN:
        return is_write_open(q->flags);
    default:
        return 0;
    }
}

/* Runs q; appends the result (after the reply header) to out. */
static int dispatch(nb_fsrv_t *s, const nb_fsp_req_t *q, nb_buf_t *out)
{
    char name[NB_FSP_NAME_MAX + 1], name2[NB_FSP_NAME_MAX + 1];
    struct stat st;
    nb_fsp_attr_t a;
    uint64_t id;
    int r = 0;
    if (s->ro && is_write_op(q))
        return -EROFS;
    switch (q->op) {
    case NB_FSP_READ:
    case NB_FSP_WRITE:
    case NB_FSP_READ_SHM:
    case NB_FSP_WRITE_SHM:
    case NB_FSP_FSYNC:
        return op_io(s, q, out);
    case NB_FSP_READDIR:
    case NB_FSP_READDIRPLUS:
        return op_readdir(s, q, out);
    case NB_FSP_RELEASE:
    case NB_FSP_RELEASEDIR:
        return handle_release(s, q->fh, q->op == NB_FSP_RELEASEDIR);
    default:
        break;
    }
    node_t *n = NULL, *n2 = NULL;
    if ((r = node_get(s, q->node, &n)) < 0)
        return r;
    if (q->op == NB_FSP_RENAME && (r = node_get(s, q->node2, &n2)) < 0) {
        node_put(s, n);
        return r;
    }
    if (q->name.len)
        cname(q->name, name);
    if (q->name2.len)
        cname(q->name2, name2);
    switch (q->op) {
    case NB_FSP_LOOKUP:
        if ((r = do_lookup(s, n, name, &id, &st)) == 0)
            r = put_entry(s, out, id, &st);
        break;
    case NB_FSP_GETATTR:
        if ((r = fstat_fd(n->fd, &st)) == 0) {
            to_attr(s, &st, &a);
            r = nb_fsp_put_attr(out, &a);
        }
        break;
    case NB_FSP_SETATTR:
        if ((r = op_setattr(s, n->fd, q, &st)) == 0) {
            to_attr(s, &st, &a);
            r = nb_fsp_put_attr(out, &a);
        }
        break;
    case NB_FSP_READLINK: {
        char t[NB_FSP_TARGET_MAX + 1];
        ssize_t k = readlinkat(n->fd, "", t, sizeof t);
        if (k < 0)
            r = -errno;
        else if (k == 0 || (size_t)k > NB_FSP_TARGET_MAX)
            r = -ENAMETOOLONG;
        else if ((r = nb_fsp_put_u16(out, (uint16_t)k)) == 0)
            r = nb_buf_append(out, t, (size_t)k);
        break;
    }
    case NB_FSP_SYMLINK: {
        char t[NB_FSP_TARGET_MAX + 1];
        memcpy(t, q->target.p, q->target.len);
        t[q->target.len] = '\0';
        /* The target is only text to the host: nothing here follows it. */
        if (symlinkat(t, n->fd, name) < 0)
            r = -errno;
        else if ((r = do_lookup(s, n, name, &id, &st)) == 0)
            r = put_entry(s, out, id, &st);
        break;
    }
    case NB_FSP_MKDIR:
        if (mkdirat(n->fd, name, q->mode & 01777u) < 0)
            r = -errno;
        else if ((r = do_lookup(s, n, name, &id, &st)) == 0)
            r = put_entry(s, out, id, &st);
        break;
    case NB_FSP_UNLINK:
    case NB_FSP_RMDIR:
        r = unlinkat(n->fd, name, q->op == NB_FSP_RMDIR ? AT_REMOVEDIR : 0) < 0 ? -errno : 0;
        break;
    case NB_FSP_RENAME: {
        unsigned fl = (q->flags & NB_FSP_RENAME_NOREPLACE ? RENAME_NOREPLACE : 0) |
                      (q->flags & NB_FSP_RENAME_EXCHANGE ? RENAME_EXCHANGE : 0);
        /* Which inodes move, so their nodes re-open from the new names. */
        struct stat sa, sb;
        int ha = fstatat(n->fd, name, &sa, AT_SYMLINK_NOFOLLOW) == 0;
        int hb = (fl & RENAME_EXCHANGE) && fstatat(n2->fd, name2, &sb, AT_SYMLINK_NOFOLLOW) == 0;
        r = renameat2(n->fd, name, n2->fd, name2, fl) < 0 ? -errno : 0;
        if (r == 0 && ha)
            node_moved(s, &sa, n2, name2);
        if (r == 0 && hb)
            node_moved(s, &sb, n, name);
        break;
    }
    case NB_FSP_OPEN:
    case NB_FSP_OPENDIR: {
        int dir = q->op == NB_FSP_OPENDIR, fd;
        if ((r = fstat_fd(n->fd, &st)) < 0)
            break;
        if (dir && !S_ISDIR(st.st_mode)) {
            r = -ENOTDIR;
            break;
        }
        if (!dir && (r = file_ok(&st)) < 0)
            break;
        for (int tries = 0; tries < 2; tries++) {
            fd = dir ? openat(n->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                     : reopen(n->fd, wire_flags(q->flags));
            if (dir && fd < 0)
                fd = -errno;
            if (fd >= 0 || !relieve(s, fd))
                break;
        }
        if (fd < 0) {
            r = fd;
            break;
        }
        if ((r = handle_add(s, fd, dir, &id)) == 0)
            r = nb_fsp_put_u64(out, id);
        break;
    }
    case NB_FSP_CREATE: {
        int fd = -1; /* set by op_create on success; -O2 cannot see that */
        uint64_t fh;
        if ((r = op_create(s, n, name, q, &fd, &id, &st)) < 0)
            break;
        if ((r = handle_add(s, fd, 0, &fh)) < 0) {
            node_forget(s, id, 1);
            break;
        }
        if ((r = put_entry(s, out, id, &st)) == 0)
            r = nb_fsp_put_u64(out, fh);
        break;
    }
    case NB_FSP_STATFS: {
        struct statfs sf;
        if (fstatfs(n->fd, &sf) < 0) {
            r = -errno;
            break;
        }
        uint64_t v[] = {sf.f_blocks, sf.f_bfree, sf.f_bavail, sf.f_files, sf.f_ffree};
        for (size_t i = 0; r == 0 && i < 5; i++)
            r = nb_fsp_put_u64(out, v[i]);
        r = r < 0 ? r : nb_fsp_put_u32(out, (uint32_t)sf.f_bsize);
        r = r < 0 ? r : nb_fsp_put_u32(out, (uint32_t)(sf.f_frsize ? sf.f_frsize : sf.f_bsize));
        r = r < 0 ? r : nb_fsp_put_u32(out, (uint32_t)sf.f_namelen);
        break;
    }
    default:
        r = -ENOSYS;
        break;
    }
    if (n2)
        node_put(s, n2);
    node_put(s, n);
    return r;
}

int nb_fsrv_handle(nb_fsrv_t *s, const uint8_t *p, size_t n, nb_buf_t *out, const char **why)
{
    nb_fsp_req_t q;
    int r = nb_fsp_req_parse(p, n, &q, why);
    if (r < 0)
        return r;
    if (q.op == NB_FSP_FORGET) {
        node_forget(s, q.node, q.off);
        return 1;
    }
    size_t start = out->len;
    if ((r = nb_fsp_reply_begin(out, q.id, 0)) < 0)
        return r;
    r = dispatch(s, &q, out);
    if (r < 0) {
        /* An error reply: header only. */
        uint32_t e = r > -4096 ? (uint32_t)-r : EIO;
        nb_buf_truncate(out, start);
        if ((r = nb_fsp_reply_begin(out, q.id, e)) < 0)
            return r;
    }
    /* Frame the reply in place (its length prefix starts at `start`). */
    uint32_t len = (uint32_t)(out->len - start - 4);
    for (unsigned i = 0; i < 4; i++)
        out->p[start + i] = (uint8_t)(len >> (8 * i));
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

int nb_fsrv_new(const char *root, int ro, nb_fsrv_t **out, char *err, size_t errsz)
{
    *out = NULL;
    if (!root || root[0] != '/') {
        snprintf(err, errsz, "the host folder must be an absolute path");
        return NB_EINVAL;
    }
    int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errsz, "cannot open the host folder %.300s: %s", root, strerror(e));
        return -e;
    }
    if (access("/proc/self/fd", X_OK) != 0) {
        close(fd);
        snprintf(err, errsz, "folder mapping needs /proc mounted");
        return NB_EUNSUPPORTED;
    }
    /* One descriptor per node the guest holds: use the hard limit. */
    struct rlimit rl;
    size_t budget = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        /* Half for node descriptors (of all mounts: each re-reads the
         * limit, and EMFILE makes room too); the rest for the daemon's
         * sockets and the open files and directories. */
        budget = rl.rlim_cur == RLIM_INFINITY ? 1u << 20 : (size_t)rl.rlim_cur / 2;
        if (budget < 64)
            budget = 64;
    }
    nb_fsrv_t *s = calloc(1, sizeof *s);
    node_t *rn = calloc(1, sizeof *rn);
    struct stat st;
    if (!s || !rn || grow(s) < 0 || fstat_fd(fd, &st) < 0) {
        if (s) {
            free(s->by_id);
            free(s->by_ino);
        }
        free(s);
        free(rn);
        close(fd);
        snprintf(err, errsz, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->ro = ro;
    s->uid = geteuid();
    s->gid = getegid();
    s->next_id = NB_FSP_ROOT + 1;
    rn->id = NB_FSP_ROOT;
    rn->dev = st.st_dev;
    rn->ino = st.st_ino;
    rn->fd = fd;
    rn->nlookup = 1;
    s->root = rn;
    rn->next_id = s->by_id[hid(s, rn->id)];
    s->by_id[hid(s, rn->id)] = rn;
    rn->next_ino = s->by_ino[hino(s, rn->dev, rn->ino)];
    s->by_ino[hino(s, rn->dev, rn->ino)] = rn;
    s->nnodes = 1;
    s->fd_budget = budget;
    lru_add(s, rn);
    *out = s;
    return 0;
}

void nb_fsrv_set_shm(nb_fsrv_t *s, void *base, size_t len)
{
    s->shm = base;
    s->shm_len = base ? len : 0;
}

uint64_t nb_fsrv_shm_ops(nb_fsrv_t *s)
{
    return __atomic_load_n(&s->shm_ops, __ATOMIC_RELAXED);
}

void nb_fsrv_set_fd_budget(nb_fsrv_t *s, size_t n)
{
    pthread_mutex_lock(&s->mu);
    s->fd_budget = n < 2 ? 2 : n;
    evict_locked(s, 0);
    pthread_mutex_unlock(&s->mu);
}

void nb_fsrv_counts(nb_fsrv_t *s, size_t *nodes, size_t *handles)
{
    pthread_mutex_lock(&s->mu);
    *nodes = s->nnodes;
    *handles = s->hused;
    pthread_mutex_unlock(&s->mu);
}

void nb_fsrv_free(nb_fsrv_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (node_t *n = s->by_id[i], *nx; n; n = nx) {
            nx = n->next_id;
            if (n->fd >= 0)
                close(n->fd);
            free(n->name);
            free(n);
        }
    }
    for (size_t i = 0; i < s->nh; i++) {
        if (s->h[i]->fd >= 0)
            close(s->h[i]->fd);
        pthread_mutex_destroy(&s->h[i]->dirlock);
        free(s->h[i]);
    }
    free(s->h);
    free(s->by_id);
    free(s->by_ino);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
