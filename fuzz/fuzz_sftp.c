/* libFuzzer: the SFTP v3 codec (lib/sftp.c) the agent's SFTP server runs
 * on every byte a client sends: packet lengths and request parsing, then
 * replies built from what was parsed. Checks that borrowed strings stay
 * inside the packet. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/sftp.h"

static void inside(const uint8_t *p, size_t n, nb_sftp_str_t s)
{
    if (s.n && (s.p < p || s.p + s.n > p + n))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    nb_buf_t o;
    nb_buf_init(&o, 1u << 20);
    while (off < size) {
        long pl = nb_sftp_packet_len(data + off, size - off);
        const uint8_t *p;
        size_t n;
        if (pl > 0) {
            p = data + off + 4;
            n = (size_t)pl - 4;
            off += (size_t)pl;
        } else {
            /* Not a whole packet: parse the rest as one request anyway. */
            p = data + off;
            n = size - off;
            off = size;
        }
        nb_sftp_req_t q;
        if (nb_sftp_parse(p, n, &q) == 0) {
            inside(p, n, q.path);
            inside(p, n, q.path2);
            inside(p, n, q.handle);
            inside(p, n, q.data);
            inside(p, n, q.ext);
            char name[64];
            size_t k = q.path.n < sizeof name - 1 ? q.path.n : sizeof name - 1;
            memcpy(name, q.path.p ? (const char *)q.path.p : "", k);
            name[k] = 0;
            nb_sftp_names_t nm;
            if (nb_sftp_names_begin(&nm, &o, q.id) == 0 &&
                nb_sftp_names_add(&nm, name, name, &q.attrs) == 0)
                nb_sftp_names_end(&nm);
            nb_sftp_put_attrs(&o, q.id, &q.attrs);
            nb_sftp_put_data(&o, q.id, q.data.p, q.data.n);
            nb_sftp_put_handle(&o, q.id, q.handle.p, q.handle.n);
            nb_sftp_put_status(&o, q.id, NB_SFTP_OK, name);
            /* Every reply parses back as one whole packet. */
            size_t ro = 0;
            while (ro < o.len) {
                long rl = nb_sftp_packet_len(o.p + ro, o.len - ro);
                if (rl <= 0)
                    abort();
                ro += (size_t)rl;
            }
            nb_buf_reset(&o);
        }
    }
    nb_buf_free(&o);
    return 0;
}
