/* SFTP version 3 (draft-ietf-secsh-filexfer-02, the version OpenSSH
 * speaks) packet codec, no I/O: the agent's SFTP server (agent/sftp.c)
 * parses requests with it and builds replies. Pure; fuzzed (fuzz_sftp).
 *
 * A packet on the wire is uint32 length, byte type, payload; requests
 * (after INIT) start their payload with a uint32 id. Strings are uint32
 * length + bytes; int64 big endian. */
#ifndef NB_SFTP_H
#define NB_SFTP_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

enum {
    NB_SFTP_INIT = 1,
    NB_SFTP_VERSION = 2,
    NB_SFTP_OPEN = 3,
    NB_SFTP_CLOSE = 4,
    NB_SFTP_READ = 5,
    NB_SFTP_WRITE = 6,
    NB_SFTP_LSTAT = 7,
    NB_SFTP_FSTAT = 8,
    NB_SFTP_SETSTAT = 9,
    NB_SFTP_FSETSTAT = 10,
    NB_SFTP_OPENDIR = 11,
    NB_SFTP_READDIR = 12,
    NB_SFTP_REMOVE = 13,
    NB_SFTP_MKDIR = 14,
    NB_SFTP_RMDIR = 15,
    NB_SFTP_REALPATH = 16,
    NB_SFTP_STAT = 17,
    NB_SFTP_RENAME = 18,
    NB_SFTP_READLINK = 19,
    NB_SFTP_SYMLINK = 20,
    NB_SFTP_STATUS = 101,
    NB_SFTP_HANDLE = 102,
    NB_SFTP_DATA = 103,
    NB_SFTP_NAME = 104,
    NB_SFTP_ATTRS = 105,
    NB_SFTP_EXTENDED = 200,
    NB_SFTP_EXTENDED_REPLY = 201,
};

enum {
    NB_SFTP_OK = 0,
    NB_SFTP_EOF = 1,
    NB_SFTP_NO_SUCH_FILE = 2,
    NB_SFTP_PERMISSION_DENIED = 3,
    NB_SFTP_FAILURE = 4,
    NB_SFTP_BAD_MESSAGE = 5,
    NB_SFTP_OP_UNSUPPORTED = 8,
};

/* Attribute flags and open flags. */
#define NB_SFTP_ATTR_SIZE 0x1u
#define NB_SFTP_ATTR_UIDGID 0x2u
#define NB_SFTP_ATTR_PERM 0x4u
#define NB_SFTP_ATTR_TIME 0x8u
#define NB_SFTP_ATTR_EXT 0x80000000u
#define NB_SFTP_READ_F 0x1u
#define NB_SFTP_WRITE_F 0x2u
#define NB_SFTP_APPEND_F 0x4u
#define NB_SFTP_CREAT_F 0x8u
#define NB_SFTP_TRUNC_F 0x10u
#define NB_SFTP_EXCL_F 0x20u

/* Largest packet taken (OpenSSH's sftp-server: 256 KiB). */
#define NB_SFTP_MAX_PACKET (256u * 1024u)

typedef struct {
    const uint8_t *p; /* borrowed from the packet; not NUL-terminated */
    size_t n;
} nb_sftp_str_t;

typedef struct {
    uint32_t flags;
    uint64_t size;
    uint32_t uid, gid, perm, atime, mtime;
} nb_sftp_attrs_t;

typedef struct {
    uint8_t type;
    uint32_t id;      /* not for INIT */
    uint32_t version; /* INIT */
    nb_sftp_str_t path, path2, handle, data, ext;
    uint64_t offset;
    uint32_t len, pflags;
    nb_sftp_attrs_t attrs;
} nb_sftp_req_t;

/* Length of the packet at the start of p[0..n) including its 4-byte length
 * field: > 0 when complete, 0 when more bytes are needed, NB_ETOOBIG past
 * NB_SFTP_MAX_PACKET, NB_EPARSE for a length of 0. */
long nb_sftp_packet_len(const uint8_t *p, size_t n);

/* Parses one request (p: type byte onwards, n bytes). 0; NB_EPARSE for a
 * truncated or malformed request (the id, when it could be read, is in
 * out->id and out->type is set); NB_EUNSUPPORTED for a type this server
 * does not know (id set). Strings point into p. */
int nb_sftp_parse(const uint8_t *p, size_t n, nb_sftp_req_t *out);

/* Reply builders: each appends one whole packet (length included) to b.
 * 0 or the nb_buf error (NB_ETOOBIG past the buffer's cap). */
int nb_sftp_put_version(nb_buf_t *b);
int nb_sftp_put_status(nb_buf_t *b, uint32_t id, uint32_t code, const char *msg);
int nb_sftp_put_handle(nb_buf_t *b, uint32_t id, const void *h, size_t n);
int nb_sftp_put_data(nb_buf_t *b, uint32_t id, const void *p, size_t n);
int nb_sftp_put_attrs(nb_buf_t *b, uint32_t id, const nb_sftp_attrs_t *a);

/* NAME replies: begin, add `count` entries, then finish. */
typedef struct {
    nb_buf_t *b;
    size_t start, count_at;
    uint32_t count;
} nb_sftp_names_t;
int nb_sftp_names_begin(nb_sftp_names_t *nm, nb_buf_t *b, uint32_t id);
int nb_sftp_names_add(nb_sftp_names_t *nm, const char *name, const char *longname,
                      const nb_sftp_attrs_t *a);
void nb_sftp_names_end(nb_sftp_names_t *nm);

#endif
