/* SFTP v3 packet codec (sftp.h). */
#include <string.h>

#include "lib/err.h"
#include "lib/sftp.h"

typedef struct {
    const uint8_t *p;
    size_t n, off;
    int bad;
} rd_t;

static uint32_t u32(rd_t *r)
{
    if (r->bad || r->n - r->off < 4) {
        r->bad = 1;
        return 0;
    }
    const uint8_t *p = r->p + r->off;
    r->off += 4;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t u64(rd_t *r)
{
    uint64_t hi = u32(r);
    return hi << 32 | u32(r);
}

static nb_sftp_str_t str(rd_t *r)
{
    nb_sftp_str_t s = {NULL, 0};
    uint32_t len = u32(r);
    if (r->bad || r->n - r->off < len) {
        r->bad = 1;
        return s;
    }
    s.p = r->p + r->off;
    s.n = len;
    r->off += len;
    return s;
}

static void attrs(rd_t *r, nb_sftp_attrs_t *a)
{
    memset(a, 0, sizeof *a);
    a->flags = u32(r);
    if (a->flags & NB_SFTP_ATTR_SIZE)
        a->size = u64(r);
    if (a->flags & NB_SFTP_ATTR_UIDGID) {
        a->uid = u32(r);
        a->gid = u32(r);
    }
    if (a->flags & NB_SFTP_ATTR_PERM)
        a->perm = u32(r);
    if (a->flags & NB_SFTP_ATTR_TIME) {
        a->atime = u32(r);
        a->mtime = u32(r);
    }
    if (a->flags & NB_SFTP_ATTR_EXT) {
        uint32_t count = u32(r);
        for (uint32_t i = 0; i < count && !r->bad; i++) {
            str(r);
            str(r);
        }
    }
}

long nb_sftp_packet_len(const uint8_t *p, size_t n)
{
    if (n < 4)
        return 0;
    uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (len == 0)
        return NB_EPARSE;
    if (len > NB_SFTP_MAX_PACKET)
        return NB_ETOOBIG;
    return n - 4 >= len ? (long)len + 4 : 0;
}

int nb_sftp_parse(const uint8_t *p, size_t n, nb_sftp_req_t *q)
{
    rd_t r = {p, n, 0, 0};
    memset(q, 0, sizeof *q);
    if (n < 1)
        return NB_EPARSE;
    q->type = p[0];
    r.off = 1;
    if (q->type == NB_SFTP_INIT) {
        q->version = u32(&r);
        return r.bad ? NB_EPARSE : 0; /* extension pairs may follow: ignored */
    }
    q->id = u32(&r);
    if (r.bad)
        return NB_EPARSE;
    switch (q->type) {
    case NB_SFTP_OPEN:
        q->path = str(&r);
        q->pflags = u32(&r);
        attrs(&r, &q->attrs);
        break;
    case NB_SFTP_CLOSE:
    case NB_SFTP_FSTAT:
    case NB_SFTP_READDIR:
        q->handle = str(&r);
        break;
    case NB_SFTP_READ:
        q->handle = str(&r);
        q->offset = u64(&r);
        q->len = u32(&r);
        break;
    case NB_SFTP_WRITE:
        q->handle = str(&r);
        q->offset = u64(&r);
        q->data = str(&r);
        break;
    case NB_SFTP_LSTAT:
    case NB_SFTP_STAT:
    case NB_SFTP_OPENDIR:
    case NB_SFTP_REMOVE:
    case NB_SFTP_RMDIR:
    case NB_SFTP_REALPATH:
    case NB_SFTP_READLINK:
        q->path = str(&r);
        break;
    case NB_SFTP_SETSTAT:
    case NB_SFTP_MKDIR:
        q->path = str(&r);
        attrs(&r, &q->attrs);
        break;
    case NB_SFTP_FSETSTAT:
        q->handle = str(&r);
        attrs(&r, &q->attrs);
        break;
    case NB_SFTP_RENAME:
    case NB_SFTP_SYMLINK:
        q->path = str(&r);
        q->path2 = str(&r);
        break;
    case NB_SFTP_EXTENDED:
        q->ext = str(&r);
        break; /* the rest depends on the extension: none is supported */
    default:
        return NB_EUNSUPPORTED;
    }
    return r.bad ? NB_EPARSE : 0;
}

/* ------------------------------------------------------------ replies */

static void be32(uint8_t *o, uint32_t v)
{
    o[0] = (uint8_t)(v >> 24);
    o[1] = (uint8_t)(v >> 16);
    o[2] = (uint8_t)(v >> 8);
    o[3] = (uint8_t)v;
}

static int put32(nb_buf_t *b, uint32_t v)
{
    uint8_t o[4];
    be32(o, v);
    return nb_buf_append(b, o, 4);
}

static int put64(nb_buf_t *b, uint64_t v)
{
    int r = put32(b, (uint32_t)(v >> 32));
    return r < 0 ? r : put32(b, (uint32_t)v);
}

static int putstr(nb_buf_t *b, const void *p, size_t n)
{
    int r = put32(b, (uint32_t)n);
    return r < 0 || !n ? r : nb_buf_append(b, p, n);
}

/* Starts a packet: length placeholder and type; returns its offset. */
static int begin(nb_buf_t *b, uint8_t type, size_t *start)
{
    *start = b->len;
    uint8_t h[5] = {0, 0, 0, 0, type};
    return nb_buf_append(b, h, 5);
}

static int end(nb_buf_t *b, size_t start, int r)
{
    if (r < 0) {
        nb_buf_truncate(b, start);
        return r;
    }
    be32(b->p + start, (uint32_t)(b->len - start - 4));
    return 0;
}

static int put_attrs(nb_buf_t *b, const nb_sftp_attrs_t *a)
{
    uint32_t f = a->flags &
                 (NB_SFTP_ATTR_SIZE | NB_SFTP_ATTR_UIDGID | NB_SFTP_ATTR_PERM | NB_SFTP_ATTR_TIME);
    int r = put32(b, f);
    if (r == 0 && (f & NB_SFTP_ATTR_SIZE))
        r = put64(b, a->size);
    if (r == 0 && (f & NB_SFTP_ATTR_UIDGID) && (r = put32(b, a->uid)) == 0)
        r = put32(b, a->gid);
    if (r == 0 && (f & NB_SFTP_ATTR_PERM))
        r = put32(b, a->perm);
    if (r == 0 && (f & NB_SFTP_ATTR_TIME) && (r = put32(b, a->atime)) == 0)
        r = put32(b, a->mtime);
    return r;
}

int nb_sftp_put_version(nb_buf_t *b)
{
    size_t s;
    int r = begin(b, NB_SFTP_VERSION, &s);
    if (r == 0)
        r = put32(b, 3);
    return end(b, s, r);
}

int nb_sftp_put_status(nb_buf_t *b, uint32_t id, uint32_t code, const char *msg)
{
    size_t s;
    int r = begin(b, NB_SFTP_STATUS, &s);
    if (r == 0 && (r = put32(b, id)) == 0 && (r = put32(b, code)) == 0 &&
        (r = putstr(b, msg, strlen(msg))) == 0)
        r = putstr(b, "en", 2);
    return end(b, s, r);
}

int nb_sftp_put_handle(nb_buf_t *b, uint32_t id, const void *h, size_t n)
{
    size_t s;
    int r = begin(b, NB_SFTP_HANDLE, &s);
    if (r == 0 && (r = put32(b, id)) == 0)
        r = putstr(b, h, n);
    return end(b, s, r);
}

int nb_sftp_put_data(nb_buf_t *b, uint32_t id, const void *p, size_t n)
{
    size_t s;
    int r = begin(b, NB_SFTP_DATA, &s);
    if (r == 0 && (r = put32(b, id)) == 0)
        r = putstr(b, p, n);
    return end(b, s, r);
}

int nb_sftp_put_attrs(nb_buf_t *b, uint32_t id, const nb_sftp_attrs_t *a)
{
    size_t s;
    int r = begin(b, NB_SFTP_ATTRS, &s);
    if (r == 0 && (r = put32(b, id)) == 0)
        r = put_attrs(b, a);
    return end(b, s, r);
}

int nb_sftp_names_begin(nb_sftp_names_t *nm, nb_buf_t *b, uint32_t id)
{
    nm->b = b;
    nm->count = 0;
    int r = begin(b, NB_SFTP_NAME, &nm->start);
    if (r == 0 && (r = put32(b, id)) == 0) {
        nm->count_at = b->len;
        r = put32(b, 0);
    }
    return end(b, nm->start, r);
}

int nb_sftp_names_add(nb_sftp_names_t *nm, const char *name, const char *longname,
                      const nb_sftp_attrs_t *a)
{
    size_t before = nm->b->len;
    int r = putstr(nm->b, name, strlen(name));
    if (r == 0)
        r = putstr(nm->b, longname, strlen(longname));
    if (r == 0)
        r = put_attrs(nm->b, a);
    if (r < 0) {
        nb_buf_truncate(nm->b, before);
        return r;
    }
    nm->count++;
    return 0;
}

void nb_sftp_names_end(nb_sftp_names_t *nm)
{
    be32(nm->b->p + nm->count_at, nm->count);
    be32(nm->b->p + nm->start, (uint32_t)(nm->b->len - nm->start - 4));
}
