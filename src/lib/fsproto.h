/* The folder-mapping wire protocol (docs/internals/share.md): requests
 * the agent's FUSE file system sends over an `fs` nbmux stream and the
 * daemon's answers. Pure codec, no I/O; both parsers are strict (every
 * byte accounted for, names checked) because each side distrusts the
 * other: the daemon treats the guest as hostile (THREATS.md A19), the
 * agent refuses a confused host rather than hand the kernel garbage.
 *
 * Framing on the stream's STDIO channel: u32 body length (little endian)
 * then the body. Request body: u32 id, u8 op, then the op's fields in a
 * fixed order (see nb_fsp_fields). Reply body: u32 id, u32 err (0 or a
 * positive Linux errno), then, when err is 0, the op's result. */
#ifndef NB_FSPROTO_H
#define NB_FSPROTO_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define NB_FSP_FRAME_MAX (NB_FSP_IO_MAX + 4096u) /* largest body either way */
#define NB_FSP_IO_MAX (1024u * 1024u)            /* read/write/readdir bytes per request */
#define NB_FSP_NAME_MAX 255u                     /* one path component */
#define NB_FSP_TARGET_MAX 4095u                  /* a symlink's target */
#define NB_FSP_NOFH UINT64_MAX                   /* SETATTR without an open file */
#define NB_FSP_ROOT 1u                           /* the share's root node (FUSE_ROOT_ID) */
#define NB_FSP_ATTR_LEN 80u

/* The shared data area (docs/internals/share.md, "Shared memory"): a host
 * file QEMU shows the guest as ivshmem-plain (PCI 1af4:1110, BAR 2). The
 * daemon writes a random tag at offset 0 at each boot and names it in the
 * stream's open arguments, so the agent knows the BAR it mapped is that
 * file. The agent owns every byte after the first slot and allocates
 * slots of NB_FSP_SHM_SLOT bytes for READ_SHM/WRITE_SHM. */
#define NB_FSP_SHM_SIZE (32u << 20)
#define NB_FSP_SHM_TAG_LEN 16u
#define NB_FSP_SHM_SLOT NB_FSP_IO_MAX

enum {
    NB_FSP_LOOKUP = 1,
    NB_FSP_FORGET, /* no reply */
    NB_FSP_GETATTR,
    NB_FSP_SETATTR,
    NB_FSP_READLINK,
    NB_FSP_SYMLINK,
    NB_FSP_MKDIR,
    NB_FSP_UNLINK,
    NB_FSP_RMDIR,
    NB_FSP_RENAME,
    NB_FSP_OPEN,
    NB_FSP_CREATE,
    NB_FSP_READ,
    NB_FSP_WRITE,
    NB_FSP_RELEASE,
    NB_FSP_FSYNC,
    NB_FSP_OPENDIR,
    NB_FSP_READDIR,
    NB_FSP_RELEASEDIR,
    NB_FSP_STATFS,
    NB_FSP_READDIRPLUS, /* READDIR + a lookup of each entry (node 0: none) */
    NB_FSP_READ_SHM,    /* READ into the shared area at `shm`; reply: u32 count */
    NB_FSP_WRITE_SHM,   /* WRITE `size` bytes from the shared area at `shm` */
    NB_FSP_OP_END
};

/* SETATTR `valid` bits (the subset of FUSE_SET_ATTR_* we carry). */
#define NB_FSP_SET_MODE 0x1u
#define NB_FSP_SET_UID 0x2u
#define NB_FSP_SET_GID 0x4u
#define NB_FSP_SET_SIZE 0x8u
#define NB_FSP_SET_ATIME 0x10u
#define NB_FSP_SET_MTIME 0x20u
#define NB_FSP_SET_ATIME_NOW 0x80u
#define NB_FSP_SET_MTIME_NOW 0x100u
#define NB_FSP_SET_ALL 0x1bfu

/* OPEN/CREATE flags on the wire (not the host's O_* values). */
#define NB_FSP_O_RDONLY 0x0u
#define NB_FSP_O_WRONLY 0x1u
#define NB_FSP_O_RDWR 0x2u
#define NB_FSP_O_ACCMODE 0x3u
#define NB_FSP_O_TRUNC 0x4u
#define NB_FSP_O_APPEND 0x8u
#define NB_FSP_O_EXCL 0x10u
#define NB_FSP_O_ALL 0x1fu

#define NB_FSP_RENAME_NOREPLACE 0x1u
#define NB_FSP_RENAME_EXCHANGE 0x2u

/* Field bits; each op has a fixed set, encoded in this order. */
#define NB_FSP_F_NODE 0x001u   /* u64 */
#define NB_FSP_F_NODE2 0x002u  /* u64 */
#define NB_FSP_F_FH 0x004u     /* u64 */
#define NB_FSP_F_OFF 0x008u    /* u64 */
#define NB_FSP_F_SIZE 0x010u   /* u32 */
#define NB_FSP_F_FLAGS 0x020u  /* u32 */
#define NB_FSP_F_MODE 0x040u   /* u32 */
#define NB_FSP_F_IDS 0x080u    /* u32 uid, u32 gid */
#define NB_FSP_F_TIMES 0x100u  /* s64 atime, u32 ns, s64 mtime, u32 ns */
#define NB_FSP_F_NAME 0x200u   /* u16 len + a name */
#define NB_FSP_F_NAME2 0x400u  /* u16 len + a name */
#define NB_FSP_F_TARGET 0x800u /* u16 len + a symlink target */
#define NB_FSP_F_DATA 0x1000u  /* u32 len + bytes */
#define NB_FSP_F_SHM 0x2000u   /* u64: an offset in the shared data area (after SIZE) */

typedef struct {
    uint64_t ino, size, blocks;
    int64_t atime, mtime, ctime;
    uint32_t atime_ns, mtime_ns, ctime_ns;
    uint32_t mode, nlink, uid, gid, blksize;
} nb_fsp_attr_t;

typedef struct {
    uint32_t id;
    uint8_t op;
    uint64_t node;  /* the node, or the parent for name ops; RENAME: old parent */
    uint64_t node2; /* RENAME: new parent */
    uint64_t fh;    /* open file/dir handle; SETATTR: NB_FSP_NOFH or one */
    uint64_t off;   /* READ/WRITE/READDIR offset; FORGET: lookups to drop; SETATTR: size */
    uint32_t size;  /* READ/READDIR: most bytes wanted; WRITE_SHM: bytes to write */
    uint64_t shm;   /* READ_SHM/WRITE_SHM: where the data is in the shared area (unchecked:
                       the server bounds it by its own area's size) */
    uint32_t flags; /* OPEN/CREATE: NB_FSP_O_*; RENAME: NB_FSP_RENAME_*; FSYNC: datasync;
                       SETATTR: NB_FSP_SET_* */
    uint32_t mode;  /* MKDIR/CREATE/SETATTR: permission bits (07777) */
    uint32_t uid, gid;
    int64_t atime, mtime;
    uint32_t atime_ns, mtime_ns;
    nb_iov_t name, name2, target, data; /* borrowed from the frame */
} nb_fsp_req_t;

/* The fields of `op` (0 for an unknown op). */
unsigned nb_fsp_fields(unsigned op);
/* The op's name ("lookup"...), "?" when unknown. */
const char *nb_fsp_op_name(unsigned op);

/* 1 when `n` is a valid single path component: 1..255 bytes, no '/' or
 * NUL, not "." or "..". */
int nb_fsp_name_ok(nb_iov_t n);

/* Parses one request body (untrusted). 0, or NB_EPROTO with a reason in
 * `why` (static string) for anything malformed: unknown op, short or
 * trailing bytes, bad names, out-of-range values. */
int nb_fsp_req_parse(const uint8_t *p, size_t n, nb_fsp_req_t *r, const char **why);

/* Appends a framed request (length prefix included) to `out`; the fields
 * of r->op are taken from r. 0, NB_EINVAL (invalid request) or -ENOMEM. */
int nb_fsp_req_encode(const nb_fsp_req_t *r, nb_buf_t *out);
/* The same for an op with data (WRITE) but without the data's bytes: the
 * length prefix and the data field's length count r->data.len, and the
 * caller sends those bytes right after (the agent hands the kernel's
 * buffer to the stream instead of copying it into a frame). */
int nb_fsp_req_encode_head(const nb_fsp_req_t *r, nb_buf_t *out);

/* ---- replies ---- */

typedef struct {
    uint64_t blocks, bfree, bavail, files, ffree;
    uint32_t bsize, frsize, namemax;
} nb_fsp_statfs_t;

typedef struct {
    uint32_t id;
    uint32_t err; /* 0 or 1..4095 */
    /* When err is 0, by op: */
    uint64_t node, gen; /* LOOKUP/SYMLINK/MKDIR/CREATE */
    nb_fsp_attr_t attr; /* those and GETATTR/SETATTR */
    uint64_t fh;        /* OPEN/OPENDIR/CREATE */
    uint32_t written;   /* WRITE, WRITE_SHM */
    uint32_t count;     /* READDIR(PLUS): entries in `data` (already checked); READ_SHM: bytes
                           placed in the shared area (at most the size asked) */
    nb_iov_t data;      /* READ bytes, READLINK target, READDIR(PLUS) entries (borrowed) */
    nb_fsp_statfs_t st; /* STATFS */
} nb_fsp_reply_t;

/* Reads the id of a reply body without parsing the rest (the agent needs
 * it to know the op). NB_EPROTO when shorter than the header. */
int nb_fsp_reply_id(const uint8_t *p, size_t n, uint32_t *id);

/* Parses a reply body for a request of `op` that asked for `asked` bytes
 * (READ/READDIR; ignored otherwise). 0 or NB_EPROTO with `why`. */
int nb_fsp_reply_parse(unsigned op, uint32_t asked, const uint8_t *p, size_t n, nb_fsp_reply_t *r,
                       const char **why);

/* One READDIR entry, iterated from a parsed reply's data. */
typedef struct {
    uint64_t ino, off;
    uint8_t type; /* DT_* */
    nb_iov_t name;
    /* READDIRPLUS only: the entry (a lookup reference when node != 0). */
    uint64_t node, gen;
    nb_fsp_attr_t attr;
} nb_fsp_dirent_t;

/* Next entry at *pos in data (already validated by nb_fsp_reply_parse).
 * 1 with *e filled, 0 at the end. */
int nb_fsp_dirent_next(nb_iov_t data, size_t *pos, nb_fsp_dirent_t *e);
/* The same for READDIRPLUS entries. */
int nb_fsp_direntplus_next(nb_iov_t data, size_t *pos, nb_fsp_dirent_t *e);

/* READDIRPLUS replies are sized for the guest kernel's buffer, which
 * holds fewer entries than the wire: every entry carries a lookup
 * reference, so the agent must be able to pass all of them on. The sum of
 * this over a reply's entries is at most the `size` asked. (FUSE's
 * struct fuse_direntplus: 152 bytes + the name, 8-byte aligned.) */
size_t nb_fsp_direntplus_fuse_len(size_t namelen);

/* Reply building (daemon side). Start with the header, add the result. */
int nb_fsp_reply_begin(nb_buf_t *out, uint32_t id, uint32_t err);
int nb_fsp_put_u8(nb_buf_t *out, uint8_t v);
int nb_fsp_put_u16(nb_buf_t *out, uint16_t v);
int nb_fsp_put_u32(nb_buf_t *out, uint32_t v);
int nb_fsp_put_u64(nb_buf_t *out, uint64_t v);
int nb_fsp_put_attr(nb_buf_t *out, const nb_fsp_attr_t *a);
/* Encoded size of one READDIR entry with a name of `namelen` bytes. */
size_t nb_fsp_dirent_len(size_t namelen);
int nb_fsp_put_dirent(nb_buf_t *out, uint64_t ino, uint64_t off, uint8_t type, nb_iov_t name);
/* A READDIRPLUS entry: the dirent, then node, gen and attr (node 0: no
 * entry, attr all zero). */
int nb_fsp_put_direntplus(nb_buf_t *out, uint64_t ino, uint64_t off, uint8_t type, nb_iov_t name,
                          uint64_t node, uint64_t gen, const nb_fsp_attr_t *attr);
/* Writes the body length into the first 4 bytes (after everything was
 * added). NB_ETOOBIG over NB_FSP_FRAME_MAX. */
int nb_fsp_frame_end(nb_buf_t *out);

/* Little-endian u32 at p (the frame length prefix). */
uint32_t nb_fsp_get_u32(const uint8_t *p);

#endif
