/* The blocklist's signing key and trusted keys in $NILBOX_HOME/blocklist/
 * (blocklist.h, docs/internals/blocklist.md "Keys and trust"). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/buf.h"
#include "lib/blocklist.h"
#include "lib/err.h"

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* ---- keys ---- */

void nb_bl_hex(const uint8_t *in, size_t n, char *out)
{
    sodium_bin2hex(out, 2 * n + 1, in, n);
}

int nb_bl_unhex(const char *in, size_t len, uint8_t *out, size_t n)
{
    if (len != 2 * n)
        return NB_EINVAL;
    for (size_t i = 0; i < n; i++) {
        int hi = nb_hexval(in[2 * i]), lo = nb_hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return NB_EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int bl_path(const char *home, const char *file, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%s/%s%s%s", home, NB_BL_DIR, file ? "/" : "", file ? file : "");
    return n < 0 || (size_t)n >= outsz ? NB_ETOOBIG : 0;
}

/* Reads a small text file into buf (NUL-terminated, trailing space cut). */
static int read_text(const char *path, char *buf, size_t bufsz, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (st && fstat(fd, st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    ssize_t n = read(fd, buf, bufsz - 1);
    int e = n < 0 ? -errno : 0;
    close(fd);
    if (n < 0)
        return e;
    while (n > 0 && is_space(buf[n - 1]))
        n--;
    buf[n] = 0;
    return (int)n;
}

static int write_new(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return -errno;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int e = w != (ssize_t)len ? -EIO : 0;
    if (fsync(fd) < 0 && !e)
        e = -errno;
    close(fd);
    return e;
}

int nb_bl_key_load_or_create(const char *home, uint8_t sk[64], uint8_t pk[32], int *created,
                             char *err, size_t errsz)
{
    char dir[1100], kp[1200], pp[1200], text[200];
    uint8_t seed[32];
    struct stat st;
    *created = 0;
    if (sodium_init() < 0)
        return NB_EINTERNAL;
    if (bl_path(home, NULL, dir, sizeof dir) < 0 ||
        bl_path(home, NB_BL_SIGNING_KEY, kp, sizeof kp) ||
        bl_path(home, NB_BL_SIGNING_PUB, pp, sizeof pp) < 0) {
        nb_err_say(err, errsz, "the nilbox home path is too long");
        return NB_ETOOBIG;
    }
    /* The home itself too: building needs no daemon to have run. */
    if ((mkdir(home, 0700) < 0 && errno != EEXIST) || (mkdir(dir, 0700) < 0 && errno != EEXIST)) {
        int e = -errno;
        nb_err_say(err, errsz, "cannot create %s: %s", dir, strerror(-e));
        return e;
    }
    int n = read_text(kp, text, sizeof text, &st);
    if (n == -ENOENT) {
        randombytes_buf(seed, sizeof seed);
        crypto_sign_seed_keypair(pk, sk, seed);
        nb_bl_hex(seed, 32, text);
        sodium_memzero(seed, sizeof seed);
        size_t tl = strlen(text);
        text[tl] = '\n';
        text[tl + 1] = 0;
        int r = write_new(kp, text, 0600);
        sodium_memzero(text, sizeof text);
        if (r < 0) {
            nb_err_say(err, errsz, "cannot create the signing key %s: %s", kp, strerror(-r));
            return r;
        }
        char pub[80];
        nb_bl_hex(pk, 32, pub);
        size_t pl = strlen(pub);
        pub[pl] = '\n';
        pub[pl + 1] = 0;
        unlink(pp);
        if ((r = write_new(pp, pub, 0644)) < 0) {
            nb_err_say(err, errsz, "cannot write %s: %s", pp, strerror(-r));
            return r;
        }
        *created = 1;
        return 0;
    }
    if (n < 0) {
        nb_err_say(err, errsz, "cannot read the signing key %s: %s", kp, strerror(-n));
        return n;
    }
    if (st.st_mode & 077) {
        sodium_memzero(text, sizeof text);
        nb_err_say(err, errsz, "the signing key %s is readable by others (mode %03o): chmod 600 it",
                   kp, (unsigned)(st.st_mode & 0777));
        return NB_EDENIED;
    }
    int r = nb_bl_unhex(text, (size_t)n, seed, sizeof seed);
    sodium_memzero(text, sizeof text);
    if (r < 0) {
        nb_err_say(err, errsz, "the signing key %s is not 64 hex digits", kp);
        return NB_EPARSE;
    }
    crypto_sign_seed_keypair(pk, sk, seed);
    sodium_memzero(seed, sizeof seed);
    return 0;
}

static int add_key(uint8_t (*pks)[32], size_t *n, size_t max, const uint8_t pk[32])
{
    for (size_t i = 0; i < *n; i++)
        if (memcmp(pks[i], pk, 32) == 0)
            return 0;
    if (*n >= max)
        return 0;
    memcpy(pks[(*n)++], pk, 32);
    return 1;
}

int nb_bl_trusted_keys(const char *home, uint8_t (*pks)[32], size_t max)
{
    char path[1200], text[NB_BL_MAX_KEYS * 80 + 80];
    uint8_t pk[32];
    size_t n = 0;
    if (bl_path(home, NB_BL_SIGNING_PUB, path, sizeof path) == 0) {
        int len = read_text(path, text, sizeof text, NULL);
        if (len > 0 && nb_bl_unhex(text, (size_t)len, pk, 32) == 0)
            add_key(pks, &n, max, pk);
    }
    if (bl_path(home, NB_BL_TRUSTED, path, sizeof path) == 0) {
        int len = read_text(path, text, sizeof text, NULL);
        for (char *p = text; len > 0 && *p;) {
            char *nl = strchr(p, '\n');
            size_t l = nl ? (size_t)(nl - p) : strlen(p);
            size_t a = 0;
            while (a < l && is_space(p[a]))
                a++;
            size_t e = l;
            while (e > a && is_space(p[e - 1]))
                e--;
            if (e > a && p[a] != '#' && nb_bl_unhex(p + a, e - a, pk, 32) == 0)
                add_key(pks, &n, max, pk);
            if (!nl)
                break;
            p = nl + 1;
        }
    }
    return (int)n;
}

int nb_bl_trust_key(const char *home, const uint8_t pk[32], char *err, size_t errsz)
{
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int n = nb_bl_trusted_keys(home, keys, NB_BL_MAX_KEYS);
    for (int i = 0; i < n; i++)
        if (memcmp(keys[i], pk, 32) == 0)
            return 0;
    if (n >= NB_BL_MAX_KEYS) {
        nb_err_say(err, errsz, "already %d trusted blocklist keys", NB_BL_MAX_KEYS);
        return NB_ETOOBIG;
    }
    char dir[1100], path[1200], line[80];
    if (bl_path(home, NULL, dir, sizeof dir) < 0 ||
        bl_path(home, NB_BL_TRUSTED, path, sizeof path)) {
        nb_err_say(err, errsz, "the nilbox home path is too long");
        return NB_ETOOBIG;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = -errno;
        nb_err_say(err, errsz, "cannot create %s: %s", dir, strerror(-e));
        return e;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        int e = -errno;
        nb_err_say(err, errsz, "cannot open %s: %s", path, strerror(-e));
        return e;
    }
    nb_bl_hex(pk, 32, line);
    size_t l = strlen(line);
    line[l++] = '\n';
    int e = write(fd, line, l) == (ssize_t)l ? 0 : -EIO;
    close(fd);
    if (e < 0)
        nb_err_say(err, errsz, "cannot write %s", path);
    return e;
}
