/* The folder-mapping wire codec: see fsproto.h and docs/internals/share.md. */
#include "lib/fsproto.h"

#include <errno.h>
#include <string.h>

#include "lib/err.h"

#define F_(x) NB_FSP_F_##x

static const struct {
    const char *name;
    unsigned fields;
} ops[NB_FSP_OP_END] = {
    [NB_FSP_LOOKUP] = {"lookup", F_(NODE) | F_(NAME)},
    [NB_FSP_FORGET] = {"forget", F_(NODE) | F_(OFF)},
    [NB_FSP_GETATTR] = {"getattr", F_(NODE)},
    [NB_FSP_SETATTR] = {"setattr",
                        F_(NODE) | F_(FH) | F_(OFF) | F_(FLAGS) | F_(MODE) | F_(IDS) | F_(TIMES)},
    [NB_FSP_READLINK] = {"readlink", F_(NODE)},
    [NB_FSP_SYMLINK] = {"symlink", F_(NODE) | F_(NAME) | F_(TARGET)},
    [NB_FSP_MKDIR] = {"mkdir", F_(NODE) | F_(MODE) | F_(NAME)},
    [NB_FSP_UNLINK] = {"unlink", F_(NODE) | F_(NAME)},
    [NB_FSP_RMDIR] = {"rmdir", F_(NODE) | F_(NAME)},
    [NB_FSP_RENAME] = {"rename", F_(NODE) | F_(NODE2) | F_(FLAGS) | F_(NAME) | F_(NAME2)},
    [NB_FSP_OPEN] = {"open", F_(NODE) | F_(FLAGS)},
    [NB_FSP_CREATE] = {"create", F_(NODE) | F_(FLAGS) | F_(MODE) | F_(NAME)},
    [NB_FSP_READ] = {"read", F_(FH) | F_(OFF) | F_(SIZE)},
    [NB_FSP_WRITE] = {"write", F_(FH) | F_(OFF) | F_(DATA)},
    [NB_FSP_RELEASE] = {"release", F_(FH)},
    [NB_FSP_FSYNC] = {"fsync", F_(FH) | F_(FLAGS)},
    [NB_FSP_OPENDIR] = {"opendir", F_(NODE)},
    [NB_FSP_READDIR] = {"readdir", F_(FH) | F_(OFF) | F_(SIZE)},
    [NB_FSP_RELEASEDIR] = {"releasedir", F_(FH)},
    [NB_FSP_STATFS] = {"statfs", F_(NODE)},
    [NB_FSP_READDIRPLUS] = {"readdirplus", F_(NODE) | F_(FH) | F_(OFF) | F_(SIZE)},
    [NB_FSP_READ_SHM] = {"read_shm", F_(FH) | F_(OFF) | F_(SIZE) | F_(SHM)},
    [NB_FSP_WRITE_SHM] = {"write_shm", F_(FH) | F_(OFF) | F_(SIZE) | F_(SHM)},
};

unsigned nb_fsp_fields(unsigned op)
{
    return op > 0 && op < NB_FSP_OP_END ? ops[op].fields : 0;
}

const char *nb_fsp_op_name(unsigned op)
{
    return op > 0 && op < NB_FSP_OP_END ? ops[op].name : "?";
}

int nb_fsp_name_ok(nb_iov_t n)
{
    if (n.len == 0 || n.len > NB_FSP_NAME_MAX)
        return 0;
    if ((n.len == 1 && n.p[0] == '.') || (n.len == 2 && n.p[0] == '.' && n.p[1] == '.'))
        return 0;
    return memchr(n.p, '/', n.len) == NULL && memchr(n.p, '\0', n.len) == NULL;
}

/* ------------------------------------------------------------ reading */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
    int bad;
} rd_t;

static const uint8_t *take(rd_t *r, size_t k)
{
    if (r->bad || r->n - r->pos < k) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *q = r->p + r->pos;
    r->pos += k;
    return q;
}

static uint64_t get_le(const uint8_t *q, unsigned k)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < k; i++)
        v |= (uint64_t)q[i] << (8 * i);
    return v;
}

static uint8_t rd8(rd_t *r)
{
    const uint8_t *q = take(r, 1);
    return q ? q[0] : 0;
}
static uint16_t rd16(rd_t *r)
{
    const uint8_t *q = take(r, 2);
    return q ? (uint16_t)get_le(q, 2) : 0;
}
static uint32_t rd32(rd_t *r)
{
    const uint8_t *q = take(r, 4);
    return q ? (uint32_t)get_le(q, 4) : 0;
}
static uint64_t rd64(rd_t *r)
{
    const uint8_t *q = take(r, 8);
    return q ? get_le(q, 8) : 0;
}
static nb_iov_t rdbytes(rd_t *r, size_t k)
{
    const uint8_t *q = take(r, k);
    return q ? nb_iov(q, k) : nb_iov(NULL, 0);
}

uint32_t nb_fsp_get_u32(const uint8_t *p)
{
    return (uint32_t)get_le(p, 4);
}

int nb_fsp_req_parse(const uint8_t *p, size_t n, nb_fsp_req_t *q, const char **why)
{
    static const char *dummy;
    if (!why)
        why = &dummy;
    memset(q, 0, sizeof *q);
    rd_t r = {p, n, 0, 0};
    if (n > NB_FSP_FRAME_MAX) {
        *why = "frame too long";
        return NB_EPROTO;
    }
    q->id = rd32(&r);
    q->op = rd8(&r);
    unsigned f = nb_fsp_fields(q->op);
    if (r.bad || !f) {
        *why = r.bad ? "short header" : "unknown op";
        return NB_EPROTO;
    }
    if (f & F_(NODE))
        q->node = rd64(&r);
    if (f & F_(NODE2))
        q->node2 = rd64(&r);
    if (f & F_(FH))
        q->fh = rd64(&r);
    if (f & F_(OFF))
        q->off = rd64(&r);
    if (f & F_(SIZE))
        q->size = rd32(&r);
    if (f & F_(SHM))
        q->shm = rd64(&r);
    if (f & F_(FLAGS))
        q->flags = rd32(&r);
    if (f & F_(MODE))
        q->mode = rd32(&r);
    if (f & F_(IDS)) {
        q->uid = rd32(&r);
        q->gid = rd32(&r);
    }
    if (f & F_(TIMES)) {
        q->atime = (int64_t)rd64(&r);
        q->atime_ns = rd32(&r);
        q->mtime = (int64_t)rd64(&r);
        q->mtime_ns = rd32(&r);
    }
    if (f & F_(NAME))
        q->name = rdbytes(&r, rd16(&r));
    if (f & F_(NAME2))
        q->name2 = rdbytes(&r, rd16(&r));
    if (f & F_(TARGET))
        q->target = rdbytes(&r, rd16(&r));
    if (f & F_(DATA))
        q->data = rdbytes(&r, rd32(&r));
    if (r.bad) {
        *why = "short body";
        return NB_EPROTO;
    }
    if (r.pos != n) {
        *why = "trailing bytes";
        return NB_EPROTO;
    }
    /* Values: names, sizes, flag sets. */
    if (((f & F_(NAME)) && !nb_fsp_name_ok(q->name)) ||
        ((f & F_(NAME2)) && !nb_fsp_name_ok(q->name2))) {
        *why = "bad name";
        return NB_EPROTO;
    }
    if ((f & F_(TARGET)) && (q->target.len == 0 || q->target.len > NB_FSP_TARGET_MAX ||
                             memchr(q->target.p, '\0', q->target.len))) {
        *why = "bad symlink target";
        return NB_EPROTO;
    }
    if (((f & F_(NODE)) && q->node == 0) || ((f & F_(NODE2)) && q->node2 == 0)) {
        *why = "node 0";
        return NB_EPROTO;
    }
    if (((f & F_(SIZE)) && (q->size == 0 || q->size > NB_FSP_IO_MAX)) ||
        ((f & F_(DATA)) && q->data.len > NB_FSP_IO_MAX)) {
        *why = "bad size";
        return NB_EPROTO;
    }
    if ((f & F_(SHM)) && q->shm > UINT64_MAX - q->size) {
        *why = "bad shared-area offset";
        return NB_EPROTO;
    }
    if ((f & F_(MODE)) && (q->mode & ~07777u)) {
        *why = "bad mode";
        return NB_EPROTO;
    }
    if ((f & F_(TIMES)) && (q->atime_ns > 999999999u || q->mtime_ns > 999999999u)) {
        *why = "bad time";
        return NB_EPROTO;
    }
    if ((f & F_(OFF)) && q->op != NB_FSP_FORGET && q->op != NB_FSP_READDIR &&
        q->op != NB_FSP_READDIRPLUS && q->off > (uint64_t)INT64_MAX) {
        *why = "bad offset";
        return NB_EPROTO;
    }
    uint32_t fl = q->flags;
    const char *bad = NULL;
    if (q->op == NB_FSP_SETATTR && (fl & ~NB_FSP_SET_ALL))
        bad = "bad setattr mask";
    else if ((q->op == NB_FSP_OPEN || q->op == NB_FSP_CREATE) &&
             ((fl & ~NB_FSP_O_ALL) || (fl & NB_FSP_O_ACCMODE) == NB_FSP_O_ACCMODE))
        bad = "bad open flags";
    else if (q->op == NB_FSP_RENAME && ((fl & ~3u) || fl == 3u))
        bad = "bad rename flags";
    else if (q->op == NB_FSP_FSYNC && fl > 1)
        bad = "bad fsync flag";
    if (bad) {
        *why = bad;
        return NB_EPROTO;
    }
    return 0;
}

/* ------------------------------------------------------------ writing */

static int put_le(nb_buf_t *b, uint64_t v, unsigned k)
{
    uint8_t t[8];
    for (unsigned i = 0; i < k; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    return nb_buf_append(b, t, k);
}

int nb_fsp_put_u8(nb_buf_t *out, uint8_t v)
{
    return put_le(out, v, 1);
}
int nb_fsp_put_u16(nb_buf_t *out, uint16_t v)
{
    return put_le(out, v, 2);
}
int nb_fsp_put_u32(nb_buf_t *out, uint32_t v)
{
    return put_le(out, v, 4);
}
int nb_fsp_put_u64(nb_buf_t *out, uint64_t v)
{
    return put_le(out, v, 8);
}

static int put_str(nb_buf_t *b, nb_iov_t s)
{
    int r = put_le(b, s.len, 2);
    return r < 0 ? r : nb_buf_append(b, s.p, s.len);
}

int nb_fsp_frame_end(nb_buf_t *out)
{
    if (out->len < 4 || out->len - 4 > NB_FSP_FRAME_MAX)
        return NB_ETOOBIG;
    uint32_t n = (uint32_t)(out->len - 4);
    for (unsigned i = 0; i < 4; i++)
        out->p[i] = (uint8_t)(n >> (8 * i));
    return 0;
}

/* The frame is built without a DATA field's bytes (the frame's length and
 * the field's own length count them), checked, then appended to `out`
 * followed by the data unless `head` (the caller sends the data next):
 * the data is copied once at most. */
static int req_encode(const nb_fsp_req_t *q, int head, nb_buf_t *out)
{
    unsigned f = nb_fsp_fields(q->op);
    if (!f)
        return NB_EINVAL;
    nb_buf_t b;
    nb_buf_init(&b, NB_FSP_FRAME_MAX + 4);
    int r = put_le(&b, 0, 4);
    r = r < 0 ? r : put_le(&b, q->id, 4);
    r = r < 0 ? r : put_le(&b, q->op, 1);
    if (r == 0 && (f & F_(NODE)))
        r = put_le(&b, q->node, 8);
    if (r == 0 && (f & F_(NODE2)))
        r = put_le(&b, q->node2, 8);
    if (r == 0 && (f & F_(FH)))
        r = put_le(&b, q->fh, 8);
    if (r == 0 && (f & F_(OFF)))
        r = put_le(&b, q->off, 8);
    if (r == 0 && (f & F_(SIZE)))
        r = put_le(&b, q->size, 4);
    if (r == 0 && (f & F_(SHM)))
        r = put_le(&b, q->shm, 8);
    if (r == 0 && (f & F_(FLAGS)))
        r = put_le(&b, q->flags, 4);
    if (r == 0 && (f & F_(MODE)))
        r = put_le(&b, q->mode, 4);
    if (r == 0 && (f & F_(IDS))) {
        r = put_le(&b, q->uid, 4);
        r = r < 0 ? r : put_le(&b, q->gid, 4);
    }
    if (r == 0 && (f & F_(TIMES))) {
        r = put_le(&b, (uint64_t)q->atime, 8);
        r = r < 0 ? r : put_le(&b, q->atime_ns, 4);
        r = r < 0 ? r : put_le(&b, (uint64_t)q->mtime, 8);
        r = r < 0 ? r : put_le(&b, q->mtime_ns, 4);
    }
    if (r == 0 && (f & F_(NAME)))
        r = q->name.len > 0xffff ? NB_EINVAL : put_str(&b, q->name);
    if (r == 0 && (f & F_(NAME2)))
        r = q->name2.len > 0xffff ? NB_EINVAL : put_str(&b, q->name2);
    if (r == 0 && (f & F_(TARGET)))
        r = q->target.len > 0xffff ? NB_EINVAL : put_str(&b, q->target);
    if (r == 0 && (f & F_(DATA))) {
        r = put_le(&b, 0, 4);
    }
    r = r < 0 ? r : nb_fsp_frame_end(&b);
    /* Check what we send with the peer's own parser: a bug here is ours.
     * The frame is checked without its data, then given the real data
     * length (which the parser bounds the same way). */
    nb_fsp_req_t chk;
    if (r == 0 && nb_fsp_req_parse(b.p + 4, b.len - 4, &chk, NULL) < 0)
        r = NB_EINVAL;
    size_t dlen = f & F_(DATA) ? q->data.len : 0;
    if (r == 0 &&
        ((head && !(f & F_(DATA))) || dlen > NB_FSP_IO_MAX || b.len - 4 + dlen > NB_FSP_FRAME_MAX))
        r = NB_EINVAL;
    if (r == 0 && (f & F_(DATA))) {
        uint32_t n = (uint32_t)(b.len - 4 + dlen);
        for (unsigned i = 0; i < 4; i++) {
            b.p[i] = (uint8_t)(n >> (8 * i));
            b.p[b.len - 4 + i] = (uint8_t)(dlen >> (8 * i));
        }
    }
    if (r == 0)
        r = nb_buf_reserve(out, b.len + (head ? 0 : dlen));
    if (r == 0) {
        nb_buf_append(out, b.p, b.len);
        if (!head && dlen)
            nb_buf_append(out, q->data.p, dlen);
    }
    nb_buf_free(&b);
    return r == NB_ETOOBIG ? NB_EINVAL : r;
}

int nb_fsp_req_encode(const nb_fsp_req_t *q, nb_buf_t *out)
{
    return req_encode(q, 0, out);
}

int nb_fsp_req_encode_head(const nb_fsp_req_t *q, nb_buf_t *out)
{
    return req_encode(q, 1, out);
}

int nb_fsp_reply_begin(nb_buf_t *out, uint32_t id, uint32_t err)
{
    int r = put_le(out, 0, 4);
    r = r < 0 ? r : put_le(out, id, 4);
    return r < 0 ? r : put_le(out, err, 4);
}

int nb_fsp_put_attr(nb_buf_t *out, const nb_fsp_attr_t *a)
{
    uint64_t v[] = {
        a->ino, a->size, a->blocks, (uint64_t)a->atime, (uint64_t)a->mtime, (uint64_t)a->ctime};
    uint32_t w[] = {a->atime_ns, a->mtime_ns, a->ctime_ns, a->mode,
                    a->nlink,    a->uid,      a->gid,      a->blksize};
    int r = nb_buf_reserve(out, NB_FSP_ATTR_LEN);
    for (size_t i = 0; r == 0 && i < 6; i++)
        r = put_le(out, v[i], 8);
    for (size_t i = 0; r == 0 && i < 8; i++)
        r = put_le(out, w[i], 4);
    return r;
}

size_t nb_fsp_dirent_len(size_t namelen)
{
    return 8 + 8 + 1 + 2 + namelen;
}

int nb_fsp_put_dirent(nb_buf_t *out, uint64_t ino, uint64_t off, uint8_t type, nb_iov_t name)
{
    int r = nb_buf_reserve(out, nb_fsp_dirent_len(name.len));
    r = r < 0 ? r : put_le(out, ino, 8);
    r = r < 0 ? r : put_le(out, off, 8);
    r = r < 0 ? r : put_le(out, type, 1);
    return r < 0 ? r : put_str(out, name);
}

size_t nb_fsp_direntplus_fuse_len(size_t namelen)
{
    return (152 + namelen + 7) & ~(size_t)7;
}

int nb_fsp_put_direntplus(nb_buf_t *out, uint64_t ino, uint64_t off, uint8_t type, nb_iov_t name,
                          uint64_t node, uint64_t gen, const nb_fsp_attr_t *attr)
{
    static const nb_fsp_attr_t none;
    int r = nb_fsp_put_dirent(out, ino, off, type, name);
    r = r < 0 ? r : put_le(out, node, 8);
    r = r < 0 ? r : put_le(out, node ? gen : 0, 8);
    return r < 0 ? r : nb_fsp_put_attr(out, node ? attr : &none);
}

/* ------------------------------------------------------------ replies */

int nb_fsp_reply_id(const uint8_t *p, size_t n, uint32_t *id)
{
    if (n < 8)
        return NB_EPROTO;
    *id = (uint32_t)get_le(p, 4);
    return 0;
}

static void rd_attr(rd_t *r, nb_fsp_attr_t *a)
{
    a->ino = rd64(r);
    a->size = rd64(r);
    a->blocks = rd64(r);
    a->atime = (int64_t)rd64(r);
    a->mtime = (int64_t)rd64(r);
    a->ctime = (int64_t)rd64(r);
    a->atime_ns = rd32(r);
    a->mtime_ns = rd32(r);
    a->ctime_ns = rd32(r);
    a->mode = rd32(r);
    a->nlink = rd32(r);
    a->uid = rd32(r);
    a->gid = rd32(r);
    a->blksize = rd32(r);
}

static int attr_ok(const nb_fsp_attr_t *a)
{
    return a->atime_ns <= 999999999u && a->mtime_ns <= 999999999u && a->ctime_ns <= 999999999u &&
           a->size <= (uint64_t)INT64_MAX && (a->mode & ~0177777u) == 0 && a->mode != 0;
}

int nb_fsp_dirent_next(nb_iov_t data, size_t *pos, nb_fsp_dirent_t *e)
{
    rd_t r = {data.p, data.len, *pos, 0};
    if (r.pos >= r.n)
        return 0;
    e->ino = rd64(&r);
    e->off = rd64(&r);
    e->type = rd8(&r);
    e->name = rdbytes(&r, rd16(&r));
    if (r.bad)
        return 0;
    *pos = r.pos;
    return 1;
}

int nb_fsp_direntplus_next(nb_iov_t data, size_t *pos, nb_fsp_dirent_t *e)
{
    rd_t r = {data.p, data.len, *pos, 0};
    if (r.pos >= r.n)
        return 0;
    e->ino = rd64(&r);
    e->off = rd64(&r);
    e->type = rd8(&r);
    e->name = rdbytes(&r, rd16(&r));
    e->node = rd64(&r);
    e->gen = rd64(&r);
    rd_attr(&r, &e->attr);
    if (r.bad)
        return 0;
    *pos = r.pos;
    return 1;
}

int nb_fsp_reply_parse(unsigned op, uint32_t asked, const uint8_t *p, size_t n, nb_fsp_reply_t *q,
                       const char **why)
{
    static const char *dummy;
    if (!why)
        why = &dummy;
    memset(q, 0, sizeof *q);
    rd_t r = {p, n, 0, 0};
    q->id = rd32(&r);
    q->err = rd32(&r);
    if (r.bad || n > NB_FSP_FRAME_MAX) {
        *why = "bad reply header";
        return NB_EPROTO;
    }
    if (q->err) {
        if (q->err > 4095 || r.pos != n) {
            *why = "bad error reply";
            return NB_EPROTO;
        }
        return 0;
    }
    switch (op) {
    case NB_FSP_LOOKUP:
    case NB_FSP_SYMLINK:
    case NB_FSP_MKDIR:
    case NB_FSP_CREATE:
        q->node = rd64(&r);
        q->gen = rd64(&r);
        rd_attr(&r, &q->attr);
        if (op == NB_FSP_CREATE)
            q->fh = rd64(&r);
        if (!r.bad && (q->node == 0 || !attr_ok(&q->attr))) {
            *why = "bad entry";
            return NB_EPROTO;
        }
        break;
    case NB_FSP_GETATTR:
    case NB_FSP_SETATTR:
        rd_attr(&r, &q->attr);
        if (!r.bad && !attr_ok(&q->attr)) {
            *why = "bad attributes";
            return NB_EPROTO;
        }
        break;
    case NB_FSP_OPEN:
    case NB_FSP_OPENDIR:
        q->fh = rd64(&r);
        break;
    case NB_FSP_READLINK:
        q->data = rdbytes(&r, rd16(&r));
        if (!r.bad && (q->data.len == 0 || q->data.len > NB_FSP_TARGET_MAX ||
                       memchr(q->data.p, '\0', q->data.len))) {
            *why = "bad link target";
            return NB_EPROTO;
        }
        break;
    case NB_FSP_READ:
        q->data = rdbytes(&r, n - r.pos);
        if (q->data.len > asked) {
            *why = "read reply longer than asked";
            return NB_EPROTO;
        }
        break;
    case NB_FSP_WRITE:
        q->written = rd32(&r);
        break;
    case NB_FSP_WRITE_SHM:
        q->written = rd32(&r);
        if (!r.bad && q->written > asked) {
            *why = "wrote more than asked";
            return NB_EPROTO;
        }
        break;
    case NB_FSP_READ_SHM:
        q->count = rd32(&r);
        if (!r.bad && q->count > asked) {
            *why = "read reply longer than asked";
            return NB_EPROTO;
        }
        break;
    case NB_FSP_READDIR:
    case NB_FSP_READDIRPLUS: {
        int plus = op == NB_FSP_READDIRPLUS;
        q->count = rd32(&r);
        size_t start = r.pos, fuse = 0;
        for (uint32_t i = 0; i < q->count && !r.bad; i++) {
            (void)rd64(&r);
            (void)rd64(&r);
            uint8_t t = rd8(&r);
            nb_iov_t nm = rdbytes(&r, rd16(&r));
            int dots = nm.len && nm.len <= 2 && memcmp(nm.p, "..", nm.len) == 0;
            if (!r.bad && ((!dots && !nb_fsp_name_ok(nm)) || t > 14)) {
                *why = "bad directory entry";
                return NB_EPROTO;
            }
            if (plus) {
                nb_fsp_attr_t a;
                uint64_t node = rd64(&r), gen = rd64(&r);
                rd_attr(&r, &a);
                /* An entry with a node is a lookup: the same checks; "."
                 * and ".." never carry one (the kernel would not count it). */
                if (!r.bad && node && (dots || !attr_ok(&a))) {
                    *why = "bad directory entry";
                    return NB_EPROTO;
                }
                if (!r.bad && !node && (gen || a.mode || a.ino)) {
                    *why = "bad directory entry";
                    return NB_EPROTO;
                }
                fuse += nb_fsp_direntplus_fuse_len(nm.len);
            }
        }
        q->data = nb_iov(p + start, r.pos - start);
        if (!r.bad && (plus ? fuse : r.pos - start) > asked) {
            *why = "readdir reply longer than asked";
            return NB_EPROTO;
        }
        break;
    }
    case NB_FSP_STATFS:
        q->st.blocks = rd64(&r);
        q->st.bfree = rd64(&r);
        q->st.bavail = rd64(&r);
        q->st.files = rd64(&r);
        q->st.ffree = rd64(&r);
        q->st.bsize = rd32(&r);
        q->st.frsize = rd32(&r);
        q->st.namemax = rd32(&r);
        break;
    default:
        if (!nb_fsp_fields(op)) {
            *why = "unknown op";
            return NB_EPROTO;
        }
        break;
    }
    if (r.bad) {
        *why = "short reply";
        return NB_EPROTO;
    }
    if (r.pos != n) {
        *why = "trailing bytes in reply";
        return NB_EPROTO;
    }
    return 0;
}
