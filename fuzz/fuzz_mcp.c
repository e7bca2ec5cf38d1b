/* libFuzzer target for the MCP bridge's JSON-RPC framing (src/lib/jsonrpc.c).
 *
 * Byte 0 picks a split step for the newline framer, byte 1 a small cap or
 * the default. The rest is parsed as one frame and, line by line, through
 * the framer fed in pieces. Properties: a frame over the cap never parses;
 * a parsed message has a kind consistent with its fields; re-serialised
 * (what the bridge forwards) it parses again to the same kind, method and
 * id (what the policy judged is what the server gets); no line the framer
 * hands out passes the cap or holds a newline. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/jsonrpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t cap;

static void check(nb_iov_t in)
{
    nb_jsonrpc_msg_t m, m2;
    json_t *id = NULL, *id2 = NULL;
    char err[128];
    int r = nb_jsonrpc_parse(in, cap, &m, &id, err, sizeof err);
    if (r < 0) {
        if (m.msg || (r != NB_JSONRPC_PARSE_ERROR && r != NB_JSONRPC_INVALID_REQUEST &&
                      r != NB_JSONRPC_TOO_BIG))
            abort();
        if (id && !json_is_string(id) && !json_is_integer(id))
            abort();
        json_decref(id);
        return;
    }
    if (in.len > cap || id || !m.msg)
        abort();
    if ((m.kind == NB_JSONRPC_RESPONSE) != (m.method == NULL))
        abort();
    if ((m.kind == NB_JSONRPC_NOTIFICATION) != (m.id == NULL))
        abort();
    char *t = json_dumps(m.msg, JSON_COMPACT);
    if (!t)
        abort();
    if (nb_jsonrpc_parse(nb_iov(t, strlen(t)), 0, &m2, &id2, err, sizeof err) != 0)
        abort();
    if (m2.kind != m.kind || (m.method && strcmp(m.method, m2.method) != 0) ||
        ((m.id || m2.id) && !(m.id && m2.id && json_equal((json_t *)m.id, (json_t *)m2.id))))
        abort();
    if (strchr(t, '\n'))
        abort(); /* a forwarded message is one stdio line */
    char k1[160], k2[160];
    nb_jsonrpc_id_key(m.id, k1, sizeof k1);
    nb_jsonrpc_id_key(m2.id, k2, sizeof k2);
    if (strcmp(k1, k2) != 0 || (m.kind == NB_JSONRPC_REQUEST && !k1[0]))
        abort();
    free(t);
    nb_jsonrpc_msg_clear(&m);
    nb_jsonrpc_msg_clear(&m2);
}

static void on_line(void *ud, nb_iov_t line, int oversize)
{
    (void)ud;
    if (oversize) {
        if (line.len)
            abort();
        return;
    }
    if (line.len == 0 || line.len > cap || memchr(line.p, '\n', line.len))
        abort();
    check(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = (size_t)(data[0] % 17) + 1;
    cap = data[1] & 1 ? 64 + data[1] : NB_JSONRPC_FRAME_MAX;
    data += 2;
    size -= 2;
    check(nb_iov(data, size));
    nb_jsonrpc_lines_t l;
    nb_jsonrpc_lines_init(&l, cap);
    for (size_t off = 0; off < size; off += step) {
        size_t n = size - off < step ? size - off : step;
        if (nb_jsonrpc_lines_feed(&l, data + off, n, on_line, NULL) < 0)
            abort();
    }
    nb_jsonrpc_lines_free(&l);
    return 0;
}
