/* libFuzzer target for folder mapping (src/lib/fsproto.c and
 * src/daemon/fshare.c): both strict parsers and the host server.
 *
 * Byte 0 picks the mode:
 *   0  request parser: an accepted request re-encodes to the same bytes
 *      (a WRITE also as head + data) and carries only valid names;
 *   1  reply parser for op byte 1, `asked` from bytes 2..3: an accepted
 *      READDIR(PLUS) reply iterates to exactly its count of entries (and
 *      READDIRPLUS entries fit the guest's buffer of `asked` bytes);
 *   2  the server on a read-only copy of a small tree (files, a
 *      directory, a symlink out): every answer it gives parses with the
 *      agent's reply parser, and nothing outside the tree changes. It has
 *      a shared area of two slots followed by an inaccessible page, so a
 *      READ_SHM that escaped the bounds check would fault. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/fshare.h"
#include "lib/err.h"
#include "lib/fsproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nb_fsrv_t *srv;

static void setup(void)
{
    static char root[64];
    snprintf(root, sizeof root, "/tmp/nb-fuzz-fshare-%d", (int)getpid());
    char p[128];
    mkdir(root, 0755);
    snprintf(p, sizeof p, "%s/d", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/f", root);
    int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, "hello", 5) < 0)
            abort();
        close(fd);
    }
    snprintf(p, sizeof p, "%s/ln", root);
    if (symlink("/etc", p) < 0) {
        /* exists from an earlier run */
    }
    char err[200];
    if (nb_fsrv_new(root, 1, &srv, err, sizeof err) < 0)
        abort();
    size_t len = 2 * NB_FSP_SHM_SLOT;
    uint8_t *area =
        mmap(NULL, len + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED || mprotect(area + len, 4096, PROT_NONE) < 0)
        abort();
    nb_fsrv_set_shm(srv, area, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0] % 3;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    if (mode == 0) {
        nb_fsp_req_t q;
        if (nb_fsp_req_parse(p, n, &q, NULL) < 0)
            return 0;
        unsigned f = nb_fsp_fields(q.op);
        if (((f & NB_FSP_F_NAME) && !nb_fsp_name_ok(q.name)) ||
            ((f & NB_FSP_F_NAME2) && !nb_fsp_name_ok(q.name2)))
            abort();
        nb_buf_t b;
        nb_buf_init(&b, NB_FSP_FRAME_MAX + 8);
        if (nb_fsp_req_encode(&q, &b) < 0 || b.len != n + 4 || memcmp(b.p + 4, p, n) != 0)
            abort();
        nb_buf_free(&b);
        /* A request with data, as the agent sends it: head, then the data. */
        if (f & NB_FSP_F_DATA) {
            nb_buf_init(&b, NB_FSP_FRAME_MAX + 8);
            if (nb_fsp_req_encode_head(&q, &b) < 0 || b.len + q.data.len != n + 4 ||
                memcmp(b.p + 4, p, b.len - 4) != 0)
                abort();
            nb_buf_free(&b);
        }
    } else if (mode == 1) {
        if (n < 3)
            return 0;
        unsigned op = p[0] % (NB_FSP_OP_END + 1);
        uint32_t asked = (uint32_t)p[1] | (uint32_t)p[2] << 8;
        nb_fsp_reply_t r;
        if (nb_fsp_reply_parse(op, asked, p + 3, n - 3, &r, NULL) < 0)
            return 0;
        if ((op == NB_FSP_READDIR || op == NB_FSP_READDIRPLUS) && !r.err) {
            size_t pos = 0, fuse = 0;
            uint32_t k = 0;
            nb_fsp_dirent_t e;
            while (op == NB_FSP_READDIR ? nb_fsp_dirent_next(r.data, &pos, &e)
                                        : nb_fsp_direntplus_next(r.data, &pos, &e)) {
                fuse += nb_fsp_direntplus_fuse_len(e.name.len);
                k++;
            }
            if (k != r.count || pos != r.data.len)
                abort();
            if (op == NB_FSP_READDIRPLUS && fuse > asked) /* the agent must fit them all */
                abort();
        }
    } else {
        if (!srv)
            setup();
        nb_buf_t out;
        nb_buf_init(&out, NB_FSP_FRAME_MAX + 8);
        nb_fsp_req_t q;
        int r = nb_fsrv_handle(srv, p, n, &out, NULL);
        if (r == 0) {
            nb_fsp_reply_t rep;
            if (nb_fsp_req_parse(p, n, &q, NULL) < 0 || out.len < 12 ||
                nb_fsp_get_u32(out.p) != out.len - 4 ||
                nb_fsp_reply_parse(q.op, q.size, out.p + 4, out.len - 4, &rep, NULL) < 0 ||
                rep.id != q.id)
                abort();
        } else if (r != 1 && r != NB_EPROTO) {
            abort();
        }
        nb_buf_free(&out);
    }
    return 0;
}
