/* libFuzzer target for the WebSocket frame codec (src/lib/ws.c).
 *
 * The first byte picks the role (server: masked input, client: unmasked)
 * and a split size. Checks: same transcript whole and split; delivered
 * messages respect the cap and text is valid UTF-8; close payloads are
 * valid; failures carry a close code; and every delivered message survives
 * a writer -> parser round trip unchanged. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSG 8192

typedef struct {
    nb_buf_t t;
    nb_ws_role_t role;
} rec_t;

static int on_message(void *ud, int op, const uint8_t *p, size_t len);

static int on_control(void *ud, int op, const uint8_t *p, size_t len)
{
    rec_t *r = ud;
    if (len > 125)
        abort();
    if (op == NB_WS_OP_CLOSE && len) {
        if (len < 2 || !nb_ws_close_code_sendable(p[0] << 8 | p[1]) ||
            !nb_utf8_valid(p + 2, len - 2))
            abort();
    }
    nb_buf_printf(&r->t, "C%d:%zu:", op, len);
    nb_buf_append(&r->t, p, len);
    return op == NB_WS_OP_CLOSE;
}

/* Re-encodes a delivered message and parses it back. */
static void round_trip(int op, const uint8_t *p, size_t len)
{
    static const uint8_t mask[4] = {1, 2, 3, 4};
    nb_ws_parser_t *q;
    nb_buf_t b, got;
    nb_ws_parser_cbs_t c = {.on_message = on_message};
    rec_t r2 = {.role = NB_WS_ROLE_SERVER};
    size_t used;

    nb_buf_init(&b, MAX_MSG + 64);
    nb_buf_init(&r2.t, MAX_MSG + 64);
    if (nb_ws_frame_append(&b, op, p, len, mask) != 0)
        abort();
    if (nb_ws_parser_new(NB_WS_ROLE_SERVER, MAX_MSG, &c, &r2, &q) != 0)
        abort();
    if (nb_ws_parser_feed(q, b.p, b.len, &used) != 0 || used != b.len)
        abort();
    nb_buf_init(&got, MAX_MSG + 64);
    nb_buf_printf(&got, "M%d:%zu:", op, len);
    nb_buf_append(&got, p, len);
    if (got.len != r2.t.len || memcmp(got.p, r2.t.p, got.len) != 0)
        abort();
    nb_ws_parser_free(q);
    nb_buf_free(&b);
    nb_buf_free(&got);
    nb_buf_free(&r2.t);
}

static int on_message(void *ud, int op, const uint8_t *p, size_t len)
{
    rec_t *r = ud;
    if (len > MAX_MSG || (op != NB_WS_OP_TEXT && op != NB_WS_OP_BINARY))
        abort();
    if (op == NB_WS_OP_TEXT && !nb_utf8_valid(p, len))
        abort();
    nb_buf_printf(&r->t, "M%d:%zu:", op, len);
    nb_buf_append(&r->t, p, len);
    if (r->role == NB_WS_ROLE_CLIENT) /* the outer run: check the writer too */
        round_trip(op, p, len);
    return 0;
}

static void run(nb_ws_role_t role, const uint8_t *d, size_t len, size_t step, nb_buf_t *out)
{
    nb_ws_parser_t *p;
    nb_ws_parser_cbs_t c = {.on_message = on_message, .on_control = on_control};
    rec_t r = {.role = role};
    size_t off = 0, used;

    nb_buf_init(&r.t, 1 << 22);
    if (nb_ws_parser_new(role, MAX_MSG, &c, &r, &p) != 0)
        abort();
    while (off < len) {
        size_t n = step && len - off > step ? step : len - off;
        int rc = nb_ws_parser_feed(p, d + off, n, &used);
        if (used > n)
            abort();
        if (rc < 0) {
            int code = nb_ws_parser_close_code(p);
            if (code != 1002 && code != 1007 && code != 1009)
                abort();
            nb_buf_printf(&r.t, "E%d", code);
            break;
        }
        off += used;
        if (rc == NB_WS_STOPPED) {
            nb_buf_printf(&r.t, "S%zu", off);
            break;
        }
        if (used != n)
            abort();
    }
    nb_ws_parser_free(p);
    *out = r.t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nb_buf_t a, b;
    nb_ws_role_t role;
    size_t step;

    if (size < 1)
        return 0;
    role = (data[0] & 1) ? NB_WS_ROLE_CLIENT : NB_WS_ROLE_SERVER;
    step = (size_t)(data[0] >> 1) + 1;
    data++;
    size--;
    run(role, data, size, 0, &a);
    run(role, data, size, step, &b);
    if (a.len != b.len || (a.len && memcmp(a.p, b.p, a.len) != 0))
        abort();
    nb_buf_free(&a);
    nb_buf_free(&b);
    return 0;
}
