/* libFuzzer target for the blocklist parsers (src/lib/blocklist.c).
 *
 * First byte even: the input (after it) is a blocklist file image. It goes
 * through nb_bl_parse(); when the header is accepted, the image is signed
 * with the target's own key (a forger cannot do that, but it lets the
 * fuzzer reach lookups on hostile parameters) and opened, and lookups must
 * stay in bounds for any accepted header (ASan watches the fingerprint
 * array). The unsigned image must always be refused.
 * First byte odd: the input is an input list; each line goes through
 * nb_bl_parse_line() and every name it yields must lie inside that line,
 * then into a builder that is finished and must contain every valid name. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/blocklist.h"
#include "lib/hostname.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t pk[32], sk[64];

typedef struct {
    const char *line;
    size_t len;
    nb_bl_builder_t *b;
    char names[8][NB_HOSTNAME_BUFSZ];
    int nn;
} lctx_t;

static int on_name(void *ud, const char *name, size_t len)
{
    lctx_t *c = ud;
    if (name < c->line || name + len > c->line + c->len || len == 0)
        abort();
    if (nb_bl_builder_add(c->b, name, len) == 1 && c->nn < 8) {
        if (nb_hostname_normalize(name, len, c->names[c->nn], sizeof c->names[0]) < 0)
            abort();
        c->nn++;
    }
    return 0;
}

static void file_case(const uint8_t *data, size_t size)
{
    nb_bl_hdr_t h;
    char err[300];
    if (nb_bl_parse(data, size, &h, err, sizeof err) < 0)
        return;
    uint8_t *img = malloc(size);
    memcpy(img, data, size);
    /* As given (a signature the fuzzer made up): refused. */
    nb_bl_t *bl = NULL;
    if (nb_bl_open(img, size, &pk, 1, &bl, err, sizeof err) == 0) {
        /* Only if the fuzzer happened to copy a valid signature of ours. */
        nb_bl_free(bl);
    }
    img = malloc(size);
    memcpy(img, data, size);
    crypto_sign_detached(img + size - NB_BL_SIG_LEN, NULL, img, size - NB_BL_SIG_LEN, sk);
    if (nb_bl_open(img, size, &pk, 1, &bl, err, sizeof err) < 0)
        abort(); /* the header parsed and the signature is ours */
    static const char *const q[] = {"evil.com", "a.b.c.d.example.org", "x.y", "com"};
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        size_t m = 0;
        if (nb_bl_lookup(bl, q[i], &m) && m >= strlen(q[i]))
            abort();
    }
    nb_bl_free(bl);
}

static void list_case(const uint8_t *data, size_t size)
{
    lctx_t c = {0};
    if (nb_bl_builder_new(&c.b) < 0)
        abort();
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        c.line = p;
        c.len = len;
        int k = nb_bl_parse_line(p, len, on_name, &c);
        if (k < NB_BL_LINE_EMPTY || k > NB_BL_LINE_SKIPPED)
            abort();
        p += len + (nl ? 1 : 0);
    }
    uint8_t *img;
    size_t ilen;
    char err[200];
    if (nb_bl_builder_finish(c.b, sk, 1, &img, &ilen, err, sizeof err) < 0)
        abort();
    nb_bl_builder_free(c.b);
    nb_bl_t *bl;
    if (nb_bl_open(img, ilen, &pk, 1, &bl, err, sizeof err) < 0)
        abort();
    for (int i = 0; i < c.nn; i++)
        if (!nb_bl_lookup(bl, c.names[i], NULL))
            abort(); /* never a false negative */
    nb_bl_free(bl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        if (sodium_init() < 0)
            abort();
        crypto_sign_keypair(pk, sk);
        init = 1;
    }
    if (size < 1 || size > (1u << 20))
        return 0;
    if (data[0] & 1)
        list_case(data + 1, size - 1);
    else
        file_case(data + 1, size - 1);
    return 0;
}
