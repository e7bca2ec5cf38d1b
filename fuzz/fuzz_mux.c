/* libFuzzer target for the nbmux codec (src/lib/mux.c): incremental
 * decoding with varying split points and type masks, plus the payload
 * accessors on everything the decoder accepts. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/mux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_event(const nb_mux_ev_t *ev)
{
    const nb_mux_hdr_t *h = &ev->hdr;
    /* Whatever the decoder returns must satisfy the header rules. */
    if (nb_mux_check_hdr(h, NULL) != 0)
        abort();
    if (ev->payload.len > NB_MUX_MAX_PAYLOAD || ev->offset + ev->payload.len > h->len)
        abort();
    if (h->type != NB_MUX_DATA || h->flags == NB_MUX_CHAN_CTL) {
        if (ev->payload.len != h->len || !ev->last)
            abort();
        if (nb_mux_check_payload(h, ev->payload, NULL) != 0)
            abort();
    }
    nb_mux_hello_t hello;
    nb_iov_t a, b;
    uint32_t code;
    switch (h->type) {
    case NB_MUX_HELLO:
        if (nb_mux_parse_hello(ev->payload, &hello) != 0)
            abort();
        break;
    case NB_MUX_OPEN:
        if (nb_mux_parse_open(ev->payload, &a, &b) != 0 || !nb_mux_service_valid(a.p, a.len))
            abort();
        break;
    case NB_MUX_OPEN_ERR:
    case NB_MUX_RST:
    case NB_MUX_GOAWAY:
        if (nb_mux_parse_code(ev->payload, &code, &a) != 0 || code > NB_MUX_E_MAX)
            abort();
        break;
    case NB_MUX_WINDOW:
        if (nb_mux_parse_u32(ev->payload) == 0)
            abort();
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* Byte 0: mask choice; byte 1: split step. */
    uint32_t masks[] = {NB_MUX_MASK_ALL, NB_MUX_T(NB_MUX_HELLO), NB_MUX_T(NB_MUX_AUTH),
                        NB_MUX_MASK_SESSION};
    uint32_t mask = masks[data[0] & 3];
    size_t step = (size_t)data[1] + 1;
    data += 2;
    size -= 2;

    nb_mux_dec_t d;
    nb_mux_dec_init(&d);
    nb_mux_dec_allow(&d, mask);
    size_t off = 0;
    uint64_t seen = 0;
    int r = 0;
    while (off < size && r >= 0) {
        size_t n = size - off < step ? size - off : step;
        nb_iov_t in = nb_iov(data + off, n);
        nb_mux_ev_t ev;
        while ((r = nb_mux_dec_next(&d, &in, &ev)) == 1) {
            if (!(mask & NB_MUX_T(ev.hdr.type)))
                abort();
            check_event(&ev);
            seen += ev.payload.len;
        }
        if (r == 0 && in.len != 0)
            abort(); /* "need more" must mean the input was used up */
        off += n;
    }
    if (r < 0 && nb_mux_dec_error(&d)[0] == 0)
        abort(); /* every error has a reason */
    nb_mux_dec_free(&d);
    (void)seen;
    return 0;
}
