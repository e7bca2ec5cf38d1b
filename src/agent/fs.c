/* The `fs` service: one folder mapping (docs/internals/share.md). The
 * host opens the stream with {"path": "/guest/dir", "ro": bool}; the agent
 * mounts a FUSE file system there (libfuse3's low-level API, driven from
 * the agent's libuv loop: the /dev/fuse descriptor is non-blocking and
 * polled) and turns every kernel request into one lib/fsproto.h request
 * on the stream; the host's reply becomes the FUSE reply. The stream's end
 * (share removed, host gone) unmounts. Nothing here decides what is
 * reachable on the host: the daemon does (A19); this side only checks
 * that the host's answers are well-formed before the kernel sees them. */
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/fsproto.h"
#include "lib/json.h"
#include "lib/log.h"

#define FS_TIMEOUT 1.0 /* attribute and entry cache (s): host-side changes show within it */
/* Requests on the host at once: the daemon treats more than 512 waiting as
 * a flood and ends the share, so stop reading /dev/fuse well before. */
#define FS_INFLIGHT_MAX 256

typedef struct pending {
    struct pending *next;
    uint32_t id;
    uint8_t op;
    int slot;       /* READ_SHM/WRITE_SHM: the shared-area slot it holds; else -1 */
    uint32_t asked; /* READ/READDIR size */
    fuse_req_t req;
    struct fuse_file_info fi; /* OPEN/CREATE/OPENDIR: the info to reply with */
} pending_t;

typedef struct {
    nb_agent_t *a;
    nb_muxsess_stream_t *st;
    struct fuse_session *se;
    struct fuse_buf fbuf;
    uv_poll_t poll;
    int polling, mounted, closing, ended, ro;
    int shm; /* 1: file data through the shared area (the host offered it, the tag matched) */
    char path[256];
    nb_buf_t in; /* reply bytes not yet a whole frame */
    pending_t *pend;
    unsigned npend;
    uint32_t next_id;
} fsm_t;

/* ------------------------------------------------------------ shared area */

/* The shared data area (docs/internals/share.md, "Shared memory"): the
 * ivshmem-plain device's BAR 2, mapped once for the agent's life and used
 * by every mount. Slot k is the NB_FSP_SHM_SLOT bytes at k * SLOT; slot 0
 * holds the host's tag, so slots 1..NSLOTS-1 carry data. The agent alone
 * hands slots out: a request holds one from sending until its reply. */
#define SHM_NSLOTS (NB_FSP_SHM_SIZE / NB_FSP_SHM_SLOT)
static uint8_t *shm_base;
static uint8_t *shm_bounce; /* READ_SHM replies go to the kernel from here (on_reply) */
static int shm_tried;
static uint8_t shm_used[SHM_NSLOTS]; /* 1: in use; 2: lost (see slot_lost) */

/* The first line of /sys/bus/pci/devices/DEV/ATTR into out ("" if none). */
static void pci_attr(const char *dev, const char *attr, char *out, size_t outsz)
{
    char p[300];
    snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/%s", dev, attr);
    FILE *f = fopen(p, "re");
    if (!f || !fgets(out, (int)outsz, f))
        out[0] = '\0';
    if (f)
        fclose(f);
}

/* Finds PCI 1af4:1110 (ivshmem) and maps its BAR 2 read-write. */
static void shm_find(void)
{
    shm_tried = 1;
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    while (d && !shm_base && (e = readdir(d)) != NULL) {
        char p[300], v[16], dv[16];
        if (e->d_name[0] == '.')
            continue;
        pci_attr(e->d_name, "vendor", v, sizeof v);
        pci_attr(e->d_name, "device", dv, sizeof dv);
        if (strncmp(v, "0x1af4", 6) != 0 || strncmp(dv, "0x1110", 6) != 0)
            continue;
        /* No driver binds ivshmem: turn its memory decoding on ourselves. */
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/enable", e->d_name);
        int fd = open(p, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (write(fd, "1", 1) < 0)
                nb_log(NB_LOG_DEBUG, "fs: cannot enable %s: %s", e->d_name, strerror(errno));
            close(fd);
        }
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/resource2", e->d_name);
        struct stat st;
        fd = open(p, O_RDWR | O_CLOEXEC);
        if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size >= (off_t)NB_FSP_SHM_SIZE) {
            void *a = mmap(NULL, NB_FSP_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (a != MAP_FAILED)
                shm_base = a;
        }
        if (fd >= 0)
            close(fd);
        if (!shm_base)
            nb_log(NB_LOG_WARN, "fs: cannot map the shared area %s", p);
    }
    if (d)
        closedir(d);
}

/* 1 when the host offered the area (`j`: {"tag": hex, "size": n}) and the
 * BAR we map is that area (the host's tag at offset 0). */
static int shm_usable(const json_t *j)
{
    const char *hex = j ? nb_json_str(j, "tag") : NULL;
    json_t *sz = j ? json_object_get(j, "size") : NULL;
    uint8_t tag[NB_FSP_SHM_TAG_LEN];
    size_t got = 0;
    if (!hex || strlen(hex) != 2 * NB_FSP_SHM_TAG_LEN || !json_is_integer(sz) ||
        json_integer_value(sz) != (json_int_t)NB_FSP_SHM_SIZE ||
        sodium_hex2bin(tag, sizeof tag, hex, strlen(hex), NULL, &got, NULL) != 0 ||
        got != sizeof tag)
        return 0;
    if (!shm_tried)
        shm_find();
    return shm_base && memcmp(shm_base, tag, sizeof tag) == 0;
}

static int slot_get(void)
{
    for (int i = 1; i < (int)SHM_NSLOTS; i++)
        if (!shm_used[i]) {
            shm_used[i] = 1;
            return i;
        }
    return -1;
}

/* A request that ended without its reply (the mount ended) may still be
 * running on the host, which may still write into its slot: the slot is
 * never handed out again. At worst every slot is lost and the mounts move
 * their data over the channel. */
static void slot_lost(int slot)
{
    if (slot > 0)
        shm_used[slot] = 2;
}

static void slot_put(int slot)
{
    if (slot > 0)
        shm_used[slot] = 0;
}

/* ------------------------------------------------------------ requests */

static void fail_all(fsm_t *m, int err)
{
    while (m->pend) {
        pending_t *p = m->pend;
        m->pend = p->next;
        slot_lost(p->slot);
        fuse_reply_err(p->req, err);
        free(p);
    }
    m->npend = 0;
}

/* Where a WRITE's data starts in libfuse's receive buffer (after the
 * kernel's headers): the same for every WRITE; 0 while unknown. */
static size_t wdata_off;

static void free_wbuf(void *p)
{
    free((char *)p - wdata_off);
}

/* Sends q for `req`; on failure answers the kernel at once. With `own`,
 * q is a WRITE whose data is the tail of m->fbuf: the frame's head is
 * encoded alone and the data handed to the stream as it is (the buffer
 * becomes the stream's; libfuse allocates a new one for the next
 * request), which spares the guest CPU two copies and a wipe per byte. */
static void send_req_slot(fsm_t *m, fuse_req_t req, nb_fsp_req_t *q,
                          const struct fuse_file_info *fi, int own, int slot)
{
    if (m->closing || !m->st) {
        slot_put(slot);
        fuse_reply_err(req, EIO);
        return;
    }
    pending_t *p = calloc(1, sizeof *p);
    nb_buf_t b;
    nb_buf_init(&b, NB_FSP_FRAME_MAX + 4);
    if (!p) {
        slot_put(slot);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (++m->next_id == 0)
        m->next_id = 1;
    q->id = m->next_id;
    int r = own ? nb_fsp_req_encode_head(q, &b) : nb_fsp_req_encode(q, &b);
    if (r == 0)
        r = nb_muxsess_stream_write_owned(m->st, NB_MUX_CHAN_STDIO, b.p, b.len, free);
    else
        nb_buf_free(&b);
    if (r == 0 && own) {
        m->fbuf.mem = NULL; /* the stream's now, freed (free_wbuf) once written */
        r = nb_muxsess_stream_write_owned(m->st, NB_MUX_CHAN_STDIO, (void *)q->data.p, q->data.len,
                                          free_wbuf);
        if (r < 0) {
            /* A head without its data: the stream is beyond repair;
             * on_fuse ends the mount once libfuse is off the stack. */
            free(p);
            fuse_reply_err(req, EIO);
            m->closing = 1;
            return;
        }
    }
    if (r < 0) {
        free(p);
        slot_put(slot);
        fuse_reply_err(req, r == NB_EINVAL ? EINVAL : EIO);
        return;
    }
    p->id = q->id;
    p->op = q->op;
    p->slot = slot;
    p->asked = q->size;
    p->req = req;
    if (fi)
        p->fi = *fi;
    p->next = m->pend;
    m->pend = p;
    m->npend++;
    /* Back-pressure: stop taking kernel requests while the host lags. */
    if ((m->npend >= FS_INFLIGHT_MAX || !nb_muxsess_stream_writable(m->st)) && m->polling) {
        uv_poll_stop(&m->poll);
        m->polling = 0;
    }
}

static void send_req_data(fsm_t *m, fuse_req_t req, nb_fsp_req_t *q,
                          const struct fuse_file_info *fi, int own)
{
    send_req_slot(m, req, q, fi, own, -1);
}

static void send_req(fsm_t *m, fuse_req_t req, nb_fsp_req_t *q, const struct fuse_file_info *fi)
{
    send_req_data(m, req, q, fi, 0);
}

static fsm_t *M(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static nb_iov_t S(const char *s)
{
    return nb_iov(s, strlen(s));
}

/* A name the protocol would refuse gets its errno here, not EIO. */
static int name_err(const char *name)
{
    size_t n = strlen(name);
    if (n > NB_FSP_NAME_MAX)
        return ENAMETOOLONG;
    return nb_fsp_name_ok(nb_iov(name, n)) ? 0 : EINVAL;
}

static uint32_t wire_open(int flags)
{
    uint32_t f = (flags & O_ACCMODE) == O_WRONLY ? NB_FSP_O_WRONLY
                 : (flags & O_ACCMODE) == O_RDWR ? NB_FSP_O_RDWR
                                                 : NB_FSP_O_RDONLY;
    if (flags & O_TRUNC)
        f |= NB_FSP_O_TRUNC;
    if (flags & O_APPEND)
        f |= NB_FSP_O_APPEND;
    if (flags & O_EXCL)
        f |= NB_FSP_O_EXCL;
    return f;
}

/* The kernel caps a FUSE mount's readahead at its backing device's
 * read_ahead_kb (128 KiB by default) when it takes the INIT reply, whatever
 * max_readahead says: a sequential read would then be a round trip per
 * 128 KiB. Raise it to NB_FSP_IO_MAX before answering INIT. The device
 * number comes from /proc/self/mountinfo: a stat of the mount point would
 * wait for the INIT we have not answered yet. Best effort. */
static void raise_readahead(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[1024], dev[32] = "";
    while (f && fgets(line, sizeof line, f)) {
        /* id parent major:minor root mountpoint ... (no spaces to unescape:
         * path_ok refuses none, but a path with one just does not match) */
        char d[32], root[8], mp[300];
        if (sscanf(line, "%*u %*u %31s %7s %299s", d, root, mp) == 3 && strcmp(mp, path) == 0)
            snprintf(dev, sizeof dev, "%s", d); /* the last one is the newest mount */
    }
    if (f)
        fclose(f);
    if (!dev[0])
        return;
    char p[96];
    snprintf(p, sizeof p, "/sys/class/bdi/%s/read_ahead_kb", dev);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char v[16];
    int n = snprintf(v, sizeof v, "%u", NB_FSP_IO_MAX / 1024);
    if (write(fd, v, (size_t)n) < 0)
        nb_log(NB_LOG_DEBUG, "fs: cannot set %s: %s", p, strerror(errno));
    close(fd);
}

static void fs_init(void *ud, struct fuse_conn_info *conn)
{
    fsm_t *m = ud;
    raise_readahead(m->path);
    if (conn->max_write > NB_FSP_IO_MAX)
        conn->max_write = NB_FSP_IO_MAX;
    /* The kernel proposes its current readahead (128 KiB); ask for 1 MiB
     * (raise_readahead made the device's cap that large). */
    conn->max_readahead = NB_FSP_IO_MAX;
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE; /* the host sees writes at once */
    /* Opens keep the file's cached pages (keep_cache, on_reply); the kernel
     * drops them when a refreshed attribute shows another size or mtime. */
    if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA)
        conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
    /* READDIRPLUS in the kernel's adaptive mode: a listing's first batch
     * brings every entry's attributes, and later batches do too while the
     * program stats what it reads (busybox `ls -l`), so that costs a round
     * trip per ~25 entries instead of one lookup per entry; a plain
     * listing (`find`, a readdir loop) goes on without the lookups. */
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO)
        conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    int e = name_err(name);
    if (e) {
        fuse_reply_err(req, e == EINVAL ? ENOENT : e);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_LOOKUP, .node = parent, .name = S(name)};
    send_req(M(req), req, &q, NULL);
}

static void fs_forget_one(fsm_t *m, fuse_ino_t ino, uint64_t n)
{
    if (m->closing || !m->st || ino == FUSE_ROOT_ID)
        return;
    nb_fsp_req_t q = {.op = NB_FSP_FORGET, .node = ino, .off = n};
    nb_buf_t b;
    nb_buf_init(&b, 64);
    if (nb_fsp_req_encode(&q, &b) == 0)
        nb_muxsess_stream_write_owned(m->st, NB_MUX_CHAN_STDIO, b.p, b.len, free);
    else
        nb_buf_free(&b);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n)
{
    fs_forget_one(M(req), ino, n);
    fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
    for (size_t i = 0; i < count; i++)
        fs_forget_one(M(req), f[i].ino, f[i].nlookup);
    fuse_reply_none(req);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    nb_fsp_req_t q = {.op = NB_FSP_GETATTR, .node = ino};
    send_req(M(req), req, &q, NULL);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int set,
                       struct fuse_file_info *fi)
{
    nb_fsp_req_t q = {.op = NB_FSP_SETATTR, .node = ino, .fh = fi ? fi->fh : NB_FSP_NOFH};
    uint32_t v = 0;
    if (set & FUSE_SET_ATTR_MODE) {
        v |= NB_FSP_SET_MODE;
        q.mode = a->st_mode & 07777u;
    }
    if (set & FUSE_SET_ATTR_UID) {
        v |= NB_FSP_SET_UID;
        q.uid = a->st_uid;
    }
    if (set & FUSE_SET_ATTR_GID) {
        v |= NB_FSP_SET_GID;
        q.gid = a->st_gid;
    }
    if (set & FUSE_SET_ATTR_SIZE) {
        if (a->st_size < 0) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        v |= NB_FSP_SET_SIZE;
        q.off = (uint64_t)a->st_size;
    }
    if (set & FUSE_SET_ATTR_ATIME_NOW)
        v |= NB_FSP_SET_ATIME_NOW;
    else if (set & FUSE_SET_ATTR_ATIME) {
        v |= NB_FSP_SET_ATIME;
        q.atime = a->st_atim.tv_sec;
        q.atime_ns = (uint32_t)a->st_atim.tv_nsec;
    }
    if (set & FUSE_SET_ATTR_MTIME_NOW)
        v |= NB_FSP_SET_MTIME_NOW;
    else if (set & FUSE_SET_ATTR_MTIME) {
        v |= NB_FSP_SET_MTIME;
        q.mtime = a->st_mtim.tv_sec;
        q.mtime_ns = (uint32_t)a->st_mtim.tv_nsec;
    }
    q.flags = v;
    send_req(M(req), req, &q, NULL);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
    nb_fsp_req_t q = {.op = NB_FSP_READLINK, .node = ino};
    send_req(M(req), req, &q, NULL);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    int e = name_err(name);
    if (e) {
        fuse_reply_err(req, e);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_MKDIR, .node = parent, .mode = mode & 07777u, .name = S(name)};
    send_req(M(req), req, &q, NULL);
}

static void fs_name_op(fuse_req_t req, unsigned op, fuse_ino_t parent, const char *name)
{
    int e = name_err(name);
    if (e) {
        fuse_reply_err(req, e);
        return;
    }
    nb_fsp_req_t q = {.op = (uint8_t)op, .node = parent, .name = S(name)};
    send_req(M(req), req, &q, NULL);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs_name_op(req, NB_FSP_UNLINK, parent, name);
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs_name_op(req, NB_FSP_RMDIR, parent, name);
}

static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    int e = name_err(name);
    size_t tl = strlen(link);
    if (!e && (tl == 0 || tl > NB_FSP_TARGET_MAX))
        e = tl ? ENAMETOOLONG : ENOENT;
    if (e) {
        fuse_reply_err(req, e);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_SYMLINK, .node = parent, .name = S(name), .target = S(link)};
    send_req(M(req), req, &q, NULL);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    int e = name_err(name);
    if (!e)
        e = name_err(newname);
    if (!e && (flags & ~3u))
        e = EINVAL;
    if (e) {
        fuse_reply_err(req, e);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_RENAME,
                      .node = parent,
                      .name = S(name),
                      .node2 = newparent,
                      .name2 = S(newname),
                      .flags = flags};
    send_req(M(req), req, &q, NULL);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    nb_fsp_req_t q = {
        .op = NB_FSP_OPEN, .node = ino, .flags = wire_open(fi->flags) & ~NB_FSP_O_EXCL};
    send_req(M(req), req, &q, fi);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    int e = name_err(name);
    if (e) {
        fuse_reply_err(req, e);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_CREATE,
                      .node = parent,
                      .flags = wire_open(fi->flags),
                      .mode = mode & 07777u,
                      .name = S(name)};
    send_req(M(req), req, &q, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)ino;
    if (size == 0 || off < 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    fsm_t *m = M(req);
    nb_fsp_req_t q = {.op = NB_FSP_READ,
                      .fh = fi->fh,
                      .off = (uint64_t)off,
                      .size = (uint32_t)(size > NB_FSP_IO_MAX ? NB_FSP_IO_MAX : size)};
    /* The host preads straight into a slot; the reply carries the count. */
    int slot = m->shm ? slot_get() : -1;
    if (slot > 0) {
        q.op = NB_FSP_READ_SHM;
        q.shm = (uint64_t)slot * NB_FSP_SHM_SLOT;
    }
    send_req_slot(m, req, &q, NULL, 0, slot);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)ino;
    fsm_t *m = M(req);
    if (off < 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    size_t n = size > NB_FSP_IO_MAX ? NB_FSP_IO_MAX : size;
    nb_fsp_req_t q = {
        .op = NB_FSP_WRITE, .fh = fi->fh, .off = (uint64_t)off, .data = nb_iov(buf, n)};
    /* One guest copy into a slot; the host pwrites from it. */
    int slot = m->shm && n > 0 ? slot_get() : -1;
    if (slot > 0) {
        memcpy(shm_base + (size_t)slot * NB_FSP_SHM_SLOT, buf, n);
        q.op = NB_FSP_WRITE_SHM;
        q.size = (uint32_t)n;
        q.shm = (uint64_t)slot * NB_FSP_SHM_SLOT;
        q.data = nb_iov(NULL, 0);
        send_req_slot(m, req, &q, NULL, 0, slot);
        return;
    }
    /* The data is in our receive buffer (libfuse copies nothing for a
     * plain WRITE): hand that buffer over when it is where it always is. */
    const char *base = m->fbuf.mem;
    size_t at = base && !(m->fbuf.flags & FUSE_BUF_IS_FD) && buf > base && n <= m->fbuf.size &&
                        (size_t)(buf - base) <= m->fbuf.size - n
                    ? (size_t)(buf - base)
                    : 0;
    if (at && !wdata_off)
        wdata_off = at;
    send_req_data(m, req, &q, NULL, n > 0 && at && at == wdata_off);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    nb_fsp_req_t q = {.op = NB_FSP_RELEASE, .fh = fi->fh};
    send_req(M(req), req, &q, NULL);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    nb_fsp_req_t q = {.op = NB_FSP_FSYNC, .fh = fi->fh, .flags = datasync ? 1u : 0u};
    send_req(M(req), req, &q, NULL);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    nb_fsp_req_t q = {.op = NB_FSP_OPENDIR, .node = ino};
    send_req(M(req), req, &q, fi);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)ino;
    if (size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_READDIR,
                      .fh = fi->fh,
                      .off = (uint64_t)off,
                      .size = (uint32_t)(size > NB_FSP_IO_MAX ? NB_FSP_IO_MAX : size)};
    send_req(M(req), req, &q, NULL);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    if (size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    nb_fsp_req_t q = {.op = NB_FSP_READDIRPLUS,
                      .node = ino,
                      .fh = fi->fh,
                      .off = (uint64_t)off,
                      .size = (uint32_t)(size > NB_FSP_IO_MAX ? NB_FSP_IO_MAX : size)};
    send_req(M(req), req, &q, NULL);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    nb_fsp_req_t q = {.op = NB_FSP_RELEASEDIR, .fh = fi->fh};
    send_req(M(req), req, &q, NULL);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
    nb_fsp_req_t q = {.op = NB_FSP_STATFS, .node = ino ? ino : FUSE_ROOT_ID};
    send_req(M(req), req, &q, NULL);
}

static const struct fuse_lowlevel_ops ops = {
    .init = fs_init,
    .lookup = fs_lookup,
    .forget = fs_forget,
    .forget_multi = fs_forget_multi,
    .getattr = fs_getattr,
    .setattr = fs_setattr,
    .readlink = fs_readlink,
    .mkdir = fs_mkdir,
    .unlink = fs_unlink,
    .rmdir = fs_rmdir,
    .symlink = fs_symlink,
    .rename = fs_rename,
    .open = fs_open,
    .read = fs_read,
    .write = fs_write,
    .release = fs_release,
    .fsync = fs_fsync,
    .opendir = fs_opendir,
    .readdir = fs_readdir,
    .readdirplus = fs_readdirplus,
    .releasedir = fs_releasedir,
    .statfs = fs_statfs,
    .create = fs_create,
};

/* ------------------------------------------------------------ replies */

static void to_stat(const nb_fsp_attr_t *a, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = a->ino;
    st->st_size = (off_t)a->size;
    st->st_blocks = (blkcnt_t)a->blocks;
    st->st_atim = (struct timespec){a->atime, a->atime_ns};
    st->st_mtim = (struct timespec){a->mtime, a->mtime_ns};
    st->st_ctim = (struct timespec){a->ctime, a->ctime_ns};
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_blksize = a->blksize;
}

static void reply_entry(fuse_req_t req, const nb_fsp_reply_t *r, pending_t *p)
{
    struct fuse_entry_param e = {.ino = r->node,
                                 .generation = r->gen,
                                 .attr_timeout = FS_TIMEOUT,
                                 .entry_timeout = FS_TIMEOUT};
    to_stat(&r->attr, &e.attr);
    if (p->op == NB_FSP_CREATE) {
        p->fi.fh = r->fh;
        fuse_reply_create(req, &e, &p->fi);
    } else {
        fuse_reply_entry(req, &e);
    }
}

static void reply_readdir(fuse_req_t req, const nb_fsp_reply_t *r, uint32_t asked)
{
    char *buf = malloc(asked);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0, pos = 0;
    nb_fsp_dirent_t d;
    char name[NB_FSP_NAME_MAX + 1];
    while (nb_fsp_dirent_next(r->data, &pos, &d)) {
        struct stat st = {.st_ino = d.ino, .st_mode = (mode_t)d.type << 12};
        memcpy(name, d.name.p, d.name.len);
        name[d.name.len] = '\0';
        size_t need = fuse_add_direntry(req, buf + used, asked - used, name, &st, (off_t)d.off);
        if (need > asked - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

/* The host sized the reply for this buffer (fsproto.h), so every entry
 * fits; one that did not would still be the kernel's reference: forget it. */
static void reply_readdirplus(fsm_t *m, fuse_req_t req, const nb_fsp_reply_t *r, uint32_t asked)
{
    char *buf = malloc(asked);
    size_t used = 0, pos = 0;
    int full = 0;
    nb_fsp_dirent_t d;
    char name[NB_FSP_NAME_MAX + 1];
    while (nb_fsp_direntplus_next(r->data, &pos, &d)) {
        struct fuse_entry_param e = {.ino = d.node,
                                     .generation = d.gen,
                                     .attr_timeout = FS_TIMEOUT,
                                     .entry_timeout = FS_TIMEOUT};
        if (d.node)
            to_stat(&d.attr, &e.attr);
        else
            e.attr = (struct stat){.st_ino = d.ino, .st_mode = (mode_t)d.type << 12};
        memcpy(name, d.name.p, d.name.len);
        name[d.name.len] = '\0';
        size_t need = buf && !full ? fuse_add_direntry_plus(req, buf + used, asked - used, name, &e,
                                                            (off_t)d.off)
                                   : SIZE_MAX;
        if (need > asked - used) {
            full = 1; /* the rest comes with the next call, from this offset */
            if (d.node)
                fs_forget_one(m, d.node, 1);
            continue;
        }
        used += need;
    }
    if (buf)
        fuse_reply_buf(req, buf, used);
    else
        fuse_reply_err(req, ENOMEM);
    free(buf);
}

static void on_reply(fsm_t *m, const uint8_t *body, size_t n)
{
    uint32_t id;
    const char *why = "short reply";
    pending_t **pp = NULL, *p = NULL;
    if (nb_fsp_reply_id(body, n, &id) == 0)
        for (pp = &m->pend; *pp && (*pp)->id != id; pp = &(*pp)->next)
            ;
    if (!pp || !*pp) {
        nb_log(NB_LOG_WARN, "fs %s: a reply to no request; ending the share", m->path);
        m->closing = 1;
        return;
    }
    p = *pp;
    *pp = p->next;
    m->npend--;
    nb_fsp_reply_t r;
    if (nb_fsp_reply_parse(p->op, p->asked, body, n, &r, &why) < 0) {
        nb_log(NB_LOG_WARN, "fs %s: bad %s reply from the host: %s", m->path, nb_fsp_op_name(p->op),
               why);
        fuse_reply_err(p->req, EIO);
        slot_put(p->slot);
        free(p);
        return;
    }
    if (r.err) {
        fuse_reply_err(p->req, (int)r.err);
        slot_put(p->slot);
        free(p);
        return;
    }
    struct stat st;
    char link[NB_FSP_TARGET_MAX + 1];
    struct statvfs sv;
    switch (p->op) {
    case NB_FSP_LOOKUP:
    case NB_FSP_SYMLINK:
    case NB_FSP_MKDIR:
    case NB_FSP_CREATE:
        reply_entry(p->req, &r, p);
        break;
    case NB_FSP_GETATTR:
    case NB_FSP_SETATTR:
        to_stat(&r.attr, &st);
        fuse_reply_attr(p->req, &st, FS_TIMEOUT);
        break;
    case NB_FSP_READLINK:
        memcpy(link, r.data.p, r.data.len);
        link[r.data.len] = '\0';
        fuse_reply_readlink(p->req, link);
        break;
    case NB_FSP_OPEN:
    case NB_FSP_OPENDIR:
        p->fi.fh = r.fh;
        /* A file's pages stay cached across opens; coherence with the
         * host comes from the attributes (1 s) and AUTO_INVAL_DATA. */
        if (p->op == NB_FSP_OPEN)
            p->fi.keep_cache = 1;
        fuse_reply_open(p->req, &p->fi);
        break;
    case NB_FSP_READ:
        fuse_reply_buf(p->req, (const char *)r.data.p, r.data.len);
        break;
    case NB_FSP_READ_SHM:
        /* Not straight from the slot: the kernel takes a FUSE reply by
         * pinning the writer's pages (get_user_pages), which a PCI BAR
         * mapping (VM_PFNMAP) does not allow, so that writev fails with
         * EFAULT. One copy into ordinary memory first. */
        if (!shm_bounce && !(shm_bounce = malloc(NB_FSP_SHM_SLOT))) {
            fuse_reply_err(p->req, ENOMEM);
            break;
        }
        memcpy(shm_bounce, shm_base + (size_t)p->slot * NB_FSP_SHM_SLOT, r.count);
        fuse_reply_buf(p->req, (const char *)shm_bounce, r.count);
        break;
    case NB_FSP_WRITE:
    case NB_FSP_WRITE_SHM:
        fuse_reply_write(p->req, r.written);
        break;
    case NB_FSP_READDIR:
        reply_readdir(p->req, &r, p->asked);
        break;
    case NB_FSP_READDIRPLUS:
        reply_readdirplus(m, p->req, &r, p->asked);
        break;
    case NB_FSP_STATFS:
        memset(&sv, 0, sizeof sv);
        sv.f_bsize = r.st.bsize;
        sv.f_frsize = r.st.frsize;
        sv.f_blocks = r.st.blocks;
        sv.f_bfree = r.st.bfree;
        sv.f_bavail = r.st.bavail;
        sv.f_files = r.st.files;
        sv.f_ffree = r.st.ffree;
        sv.f_favail = r.st.ffree;
        sv.f_namemax = r.st.namemax;
        fuse_reply_statfs(p->req, &sv);
        break;
    default:
        fuse_reply_err(p->req, 0);
        break;
    }
    slot_put(p->slot);
    free(p);
}

/* ------------------------------------------------------------ lifecycle */

static void on_poll_closed(uv_handle_t *h)
{
    fsm_t *m = h->data;
    m->a->live--;
    nb_buf_free(&m->in);
    free(m->fbuf.mem);
    free(m);
}

/* Unmounts and frees (once the poll handle closed). */
static void fs_end(fsm_t *m, const char *why)
{
    if (m->ended)
        return;
    m->ended = 1;
    if (m->st) {
        nb_muxsess_stream_t *st = m->st;
        m->st = NULL;
        nb_muxsess_stream_set_cbs(st, NULL, NULL);
        nb_muxsess_stream_reset(st, NB_MUX_E_FAILED, why);
    }
    m->closing = 1;
    fail_all(m, EIO);
    if (m->polling)
        uv_poll_stop(&m->poll);
    m->polling = 0;
    if (m->se) {
        if (m->mounted) {
            fuse_session_unmount(m->se);
            nb_log(NB_LOG_INFO, "fs: unmounted %s (%s)", m->path, why);
        }
        fuse_session_destroy(m->se);
        m->se = NULL;
    }
    uv_close((uv_handle_t *)&m->poll, on_poll_closed);
}

static void on_fuse(uv_poll_t *h, int status, int events)
{
    fsm_t *m = h->data;
    (void)events;
    if (status < 0) {
        fs_end(m, "poll error");
        return;
    }
    /* A batch per wake-up; the rest on the next one. */
    for (int i = 0; i < 64 && !m->closing && m->polling; i++) {
        int r = fuse_session_receive_buf(m->se, &m->fbuf);
        if (r == -EAGAIN || r == -EINTR)
            return;
        if (r <= 0 || fuse_session_exited(m->se)) {
            fs_end(m, "unmounted in the guest");
            return;
        }
        fuse_session_process_buf(m->se, &m->fbuf);
    }
    if (m->closing)
        fs_end(m, "cannot queue a write");
}

static void resume(fsm_t *m)
{
    if (!m->closing && !m->polling && m->se && m->st && m->npend < FS_INFLIGHT_MAX &&
        nb_muxsess_stream_writable(m->st)) {
        if (uv_poll_start(&m->poll, UV_READABLE, on_fuse) == 0)
            m->polling = 1;
    }
}

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t data, void *ud)
{
    fsm_t *m = ud;
    nb_muxsess_stream_consume(st, data.len);
    if (chan != NB_MUX_CHAN_STDIO || m->closing)
        return;
    if (nb_buf_append(&m->in, data.p, data.len) < 0) {
        fs_end(m, "reply too long");
        return;
    }
    size_t pos = 0;
    while (m->in.len - pos >= 4) {
        uint32_t n = nb_fsp_get_u32(m->in.p + pos);
        if (n > NB_FSP_FRAME_MAX) {
            fs_end(m, "reply frame too long");
            return;
        }
        if (m->in.len - pos - 4 < n)
            break;
        on_reply(m, m->in.p + pos + 4, n);
        pos += 4 + n;
        if (m->closing) {
            fs_end(m, "protocol error");
            return;
        }
    }
    /* Only when a frame was taken: consume moves what is left to the front,
     * and a big reply comes in virtio-serial buffers of a few KiB, so moving
     * the partial frame after each piece would copy it over and over. */
    if (pos)
        nb_buf_consume(&m->in, pos);
    resume(m); /* answers free room for more requests */
}

static void on_drain(nb_muxsess_stream_t *st, void *ud)
{
    (void)st;
    resume(ud);
}

static void on_fin(nb_muxsess_stream_t *st, void *ud)
{
    (void)st;
    fs_end(ud, "share removed");
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    fsm_t *m = ud;
    (void)st;
    (void)err;
    (void)code;
    m->st = NULL;
    fs_end(m, msg && *msg ? msg : "stream closed");
}

static const nb_muxsess_stream_cbs_t cbs = {
    .on_data = on_data, .on_fin = on_fin, .on_drain = on_drain, .on_close = on_close};

/* /dev/fuse: the tiny image has the module but no udev. */
static void ensure_dev_fuse(void)
{
    if (access("/dev/fuse", F_OK) == 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        execl("/sbin/modprobe", "modprobe", "-q", "fuse", (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    if (access("/dev/fuse", F_OK) != 0 && mknod("/dev/fuse", S_IFCHR | 0666, makedev(10, 229)) < 0)
        nb_log(NB_LOG_WARN, "fs: cannot create /dev/fuse: %s", strerror(errno));
}

static int mkdirs(const char *path)
{
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0755) < 0 && errno != EEXIST)
                return -errno;
            *s = '/';
        }
    }
    return mkdir(p, 0755) < 0 && errno != EEXIST ? -errno : 0;
}

static int path_ok(const char *p)
{
    size_t n = strlen(p);
    if (n < 2 || n >= 255 || p[0] != '/' || p[n - 1] == '/' || strstr(p, "//"))
        return 0;
    for (const char *s = p; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == ',' || *s == '\\')
            return 0;
    return !strstr(p, "/./") && !strstr(p, "/../") && strcmp(p + n - 2, "/.") != 0 &&
           (n < 3 || strcmp(p + n - 3, "/..") != 0);
}

int nb_agent_fs_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args)
{
    json_t *j = NULL;
    char why[300];
    if (nb_agent_args_object(args, &j, why, sizeof why) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, why);
        return 0;
    }
    const char *path = nb_json_str(j, "path");
    int ro = nb_json_bool(j, "ro", 0);
    int shm = shm_usable(json_object_get(j, "shm"));
    if (!path || !path_ok(path)) {
        json_decref(j);
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS,
                                 "need an absolute, normalised guest path (\"path\")");
        return 0;
    }
    fsm_t *m = calloc(1, sizeof *m);
    if (!m) {
        json_decref(j);
        return -ENOMEM;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    json_decref(j);
    m->a = a;
    m->ro = ro;
    m->shm = shm;
    nb_buf_init(&m->in, 2 * (NB_FSP_FRAME_MAX + 4));
    ensure_dev_fuse();
    int r = mkdirs(m->path);
    if (r < 0) {
        snprintf(why, sizeof why, "cannot create %s: %s", m->path, strerror(-r));
        goto fail;
    }
    char opts[200];
    snprintf(opts, sizeof opts, "fsname=nilbox,subtype=nilbox,allow_other,nodev,nosuid%s",
             ro ? ",ro" : "");
    char *argv[] = {"nilbox-agent", "-o", opts, NULL};
    struct fuse_args fa = FUSE_ARGS_INIT(3, argv);
    m->se = fuse_session_new(&fa, &ops, sizeof ops, m);
    if (!m->se) {
        snprintf(why, sizeof why, "fuse_session_new failed");
        goto fail;
    }
    if (fuse_session_mount(m->se, m->path) != 0) {
        snprintf(why, sizeof why, "cannot mount FUSE on %s (is /dev/fuse there?)", m->path);
        goto fail;
    }
    m->mounted = 1;
    int fd = fuse_session_fd(m->se);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (uv_poll_init(a->loop, &m->poll, fd) < 0) {
        snprintf(why, sizeof why, "uv_poll_init failed");
        fuse_session_unmount(m->se);
        goto fail;
    }
    m->poll.data = m;
    a->live++;
    m->st = st;
    nb_muxsess_stream_set_cbs(st, &cbs, m);
    if (nb_muxsess_stream_accept(st) < 0) {
        m->st = NULL;
        fs_end(m, "accept failed");
        return 0;
    }
    resume(m);
    nb_log(NB_LOG_INFO, "fs: mounted the host share on %s%s%s", m->path, ro ? " (read-only)" : "",
           shm ? " (data through the shared area)" : "");
    return 0;
fail:
    if (m->se)
        fuse_session_destroy(m->se);
    nb_buf_free(&m->in);
    free(m);
    nb_log(NB_LOG_WARN, "fs: %s", why);
    nb_muxsess_stream_reject(st, NB_MUX_E_FAILED, why);
    return 0;
}
