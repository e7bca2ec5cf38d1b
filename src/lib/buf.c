#include "lib/buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/err.h"

int nb_iov_eq(nb_iov_t a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && (n == 0 || memcmp(a.p, s, n) == 0);
}

int nb_iov_eq_nocase_n(nb_iov_t a, const char *s, size_t n)
{
    if (a.len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = a.p[i], y = (unsigned char)s[i];
        if (x == y)
            continue;
        /* Different bytes match only as the two cases of one letter:
         * they differ in bit 0x20 alone and that bit set gives a-z. */
        if ((x ^ y) != 0x20)
            return 0;
        x |= 0x20;
        if (x < 'a' || x > 'z')
            return 0;
    }
    return 1;
}

void nb_buf_init(nb_buf_t *b, size_t max)
{
    b->p = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

/* Buffers carry protocol bytes that can hold secret values (an injected
 * request head, an upstream's echo of it, a request body): no byte of one
 * is left behind in freed heap memory (issue 16, docs/security.md). Bytes
 * past len never hold data (consume, reset and truncate wipe what they
 * drop), so wiping [0, len) is enough and costs only what was used. */
void nb_buf_free(nb_buf_t *b)
{
    if (b->p)
        sodium_memzero(b->p, b->len);
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void nb_buf_wipe_free(nb_buf_t *b)
{
    nb_buf_free(b);
}

int nb_buf_reserve(nb_buf_t *b, size_t n)
{
    /* +1 keeps room for nb_buf_cstr's terminator. */
    if (n > b->max - b->len)
        return NB_ETOOBIG;
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (b->max < SIZE_MAX && cap > b->max + 1)
        cap = b->max + 1;
    /* Not realloc: it may leave the old block's bytes in freed memory. */
    uint8_t *np = malloc(cap);
    if (!np)
        return -ENOMEM;
    if (b->p) {
        memcpy(np, b->p, b->len);
        sodium_memzero(b->p, b->len);
        free(b->p);
    }
    b->p = np;
    b->cap = cap;
    return 0;
}

int nb_buf_append(nb_buf_t *b, const void *p, size_t n)
{
    int r;
    if (n == 0)
        return 0;
    if ((r = nb_buf_reserve(b, n)) < 0)
        return r;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void nb_str_copy(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int nb_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int nb_buf_append_str(nb_buf_t *b, const char *s)
{
    return nb_buf_append(b, s, strlen(s));
}

int nb_buf_printf(nb_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NB_EINVAL;
    int r = nb_buf_reserve(b, (size_t)n);
    if (r < 0)
        return r;
    va_start(ap, fmt);
    vsnprintf((char *)b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void nb_buf_consume(nb_buf_t *b, size_t n)
{
    if (n >= b->len) {
        if (b->p)
            sodium_memzero(b->p, b->len);
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    sodium_memzero(b->p + b->len - n, n);
    b->len -= n;
}

void nb_buf_truncate(nb_buf_t *b, size_t len)
{
    if (len >= b->len)
        return;
    sodium_memzero(b->p + len, b->len - len);
    b->len = len;
}

void nb_buf_reset(nb_buf_t *b)
{
    nb_buf_truncate(b, 0);
}

char *nb_buf_cstr(nb_buf_t *b)
{
    if (!b->p && nb_buf_reserve(b, 0) < 0)
        return NULL;
    b->p[b->len] = '\0';
    return (char *)b->p;
}
