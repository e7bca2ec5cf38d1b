/* Byte slices and capped growable buffers.
 *
 * Every buffer fed by a peer has an explicit cap (`max`): appends that
 * would exceed it fail with NB_ETOOBIG and leave the buffer unchanged. */
#ifndef NB_BUF_H
#define NB_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A borrowed view of wire data; never assumed NUL-terminated. */
typedef struct {
    const uint8_t *p;
    size_t len;
} nb_iov_t;

#define NB_IOV_STR(s) ((nb_iov_t){(const uint8_t *)(s), sizeof(s) - 1})

static inline nb_iov_t nb_iov(const void *p, size_t len)
{
    return (nb_iov_t){(const uint8_t *)p, len};
}

/* Case-sensitive / ASCII case-insensitive comparison with a C string. */
int nb_iov_eq(nb_iov_t a, const char *s);
/* a equals the n bytes at s, ASCII case-insensitive. */
int nb_iov_eq_nocase_n(nb_iov_t a, const char *s, size_t n);
/* Inline so that the length of a literal is a constant and a name of
 * another length costs one compare (header names are matched this way
 * several times a request). */
static inline int nb_iov_eq_nocase(nb_iov_t a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && nb_iov_eq_nocase_n(a, s, n);
}

/* snprintf(dst, size, "%s", src) without the format machinery: copies at
 * most size - 1 bytes of src and NUL-terminates (size > 0). */
void nb_str_copy(char *dst, size_t size, const char *src);

/* The value of hex digit c (either case), or -1. */
int nb_hexval(int c);

/* ASCII case mapping of one byte (other bytes unchanged). */
static inline uint8_t nb_ascii_lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

static inline uint8_t nb_ascii_upper(uint8_t c)
{
    return c >= 'a' && c <= 'z' ? (uint8_t)(c - 32) : c;
}

/* Every buffer is wiped: growing copies the bytes and wipes the old block
 * (never realloc), consume/truncate/reset wipe what they drop, free wipes
 * the rest. Only [0, len) is ever wiped, so never lower len by hand: bytes
 * past len must hold no data (writing into reserved room and then raising
 * len is fine). */
typedef struct {
    uint8_t *p; /* owned; NULL until the first append */
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated */
    size_t max; /* hard cap on len */
} nb_buf_t;

/* Empty buffer that may grow to `max` bytes. Allocates nothing. */
void nb_buf_init(nb_buf_t *b, size_t max);

/* Wipes and frees the storage, and resets to empty (both names do the
 * same). */
void nb_buf_free(nb_buf_t *b);
void nb_buf_wipe_free(nb_buf_t *b);

/* Ensures room for `n` more bytes. 0, NB_ETOOBIG or -ENOMEM. */
int nb_buf_reserve(nb_buf_t *b, size_t n);

/* Appends. 0, NB_ETOOBIG or -ENOMEM; on error the buffer is unchanged. */
int nb_buf_append(nb_buf_t *b, const void *p, size_t n);
int nb_buf_append_str(nb_buf_t *b, const char *s);
int nb_buf_printf(nb_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Drops the first `n` bytes (n <= len). */
void nb_buf_consume(nb_buf_t *b, size_t n);

/* Drops the bytes from `len` on (wiped); no-op when len >= b->len. */
void nb_buf_truncate(nb_buf_t *b, size_t len);

/* Keeps storage (wiped), sets len to 0. */
void nb_buf_reset(nb_buf_t *b);

/* NUL-terminates without counting the NUL in len; returns p (never NULL on
 * success) or NULL on cap/alloc failure. */
char *nb_buf_cstr(nb_buf_t *b);

static inline nb_iov_t nb_buf_iov(const nb_buf_t *b)
{
    return (nb_iov_t){b->p, b->len};
}

#endif
