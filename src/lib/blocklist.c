/* The DNS blocklist filter, its signed file format, builder and input
 * parser. See blocklist.h and docs/internals/blocklist.md. */
#include "lib/blocklist.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/hostname.h"
#include "lib/err.h"

struct nb_bl {
    nb_bl_hdr_t h;
    uint8_t *img; /* the whole signed file */
    size_t len;
    const uint8_t *fp; /* h.array_len fingerprints inside img */
};

struct nb_bl_builder {
    uint8_t key[16];
    uint64_t *keys;
    size_t n, cap;
};

/* ---- little-endian fields ---- */

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}
static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

/* Header layout (docs/internals/blocklist.md). */
enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 8,
    OFF_HDRLEN = 10,
    OFF_KIND = 12,
    OFF_FPBITS = 13,
    OFF_RSV0 = 14, /* 2 bytes, zero */
    OFF_CREATED = 16,
    OFF_COUNT = 24,
    OFF_SEGLEN = 28,
    OFF_SEGCOUNT = 32,
    OFF_ARRAYLEN = 36,
    OFF_KEY = 40,
    OFF_SEED = 56,
    OFF_SIGNER = 64,
    OFF_RSV1 = 96, /* 32 bytes, zero */
};

/* ---- the binary fuse filter (3-wise, 8-bit), after Graf & Lemire,
 * "Binary Fuse Filters: Fast and Smaller Than Xor Filters" (2022) and
 * their reference C code ---- */

static uint64_t murmur64(uint64_t h)
{
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t mulhi(uint64_t a, uint64_t b)
{
    return (uint64_t)(((__uint128_t)a * b) >> 64);
}

typedef struct {
    uint32_t seg_len, seg_mask, seg_count_len;
} fparams_t;

static uint32_t fuse_hash(int index, uint64_t hash, const fparams_t *p)
{
    uint64_t h = mulhi(hash, p->seg_count_len);
    h += (uint64_t)index * p->seg_len;
    uint64_t hh = hash & ((UINT64_C(1) << 36) - 1);
    h ^= (hh >> (36 - 18 * index)) & p->seg_mask;
    return (uint32_t)h;
}

static uint8_t fuse_fp(uint64_t hash)
{
    return (uint8_t)(hash ^ (hash >> 32));
}

static uint64_t name_key(const uint8_t key[16], const char *name, size_t len)
{
    uint8_t out[crypto_shorthash_siphash24_BYTES];
    crypto_shorthash_siphash24(out, (const unsigned char *)name, len, key);
    uint64_t k;
    memcpy(&k, out, sizeof k);
    return k;
}

static int probe(const nb_bl_t *b, uint64_t k)
{
    fparams_t p = {b->h.seg_len, b->h.seg_len - 1, b->h.seg_count * b->h.seg_len};
    uint64_t hash = murmur64(k + b->h.seed);
    uint8_t f = fuse_fp(hash);
    f ^= b->fp[fuse_hash(0, hash, &p)] ^ b->fp[fuse_hash(1, hash, &p)] ^
         b->fp[fuse_hash(2, hash, &p)];
    return f == 0;
}

/* Sizing of the reference implementation for arity 3. */
static void fuse_size(uint32_t n, uint32_t *seg_len, uint32_t *seg_count)
{
    uint32_t sl = 4;
    if (n > 1) {
        int e = (int)floor(log((double)n) / log(3.33) + 2.25);
        sl = e >= 18 ? NB_BL_SEG_MAX : (uint32_t)1 << (e < 2 ? 2 : e);
    }
    double sf = n <= 1 ? 0 : fmax(1.125, 0.875 + 0.25 * log(1000000.0) / log((double)n));
    uint64_t capacity = n <= 1 ? 0 : (uint64_t)llround((double)n * sf);
    uint64_t segs = (capacity + sl - 1) / sl;
    *seg_len = sl;
    *seg_count = segs > 2 ? (uint32_t)(segs - 2) : 1;
}

/* Fills fp[array_len] for the distinct hashes keys[0..n) (murmur64(k +
 * seed) is each key's filter hash). 0, 1 (this seed failed: try another),
 * -ENOMEM. */
static int fuse_populate(const uint64_t *keys, uint32_t n, uint64_t seed, const fparams_t *p,
                         uint32_t array_len, uint32_t seg_count, uint8_t *fp)
{
    int r = -ENOMEM;
    uint32_t block_bits = 1;
    while (((uint32_t)1 << block_bits) < seg_count)
        block_bits++;
    uint32_t block = (uint32_t)1 << block_bits;
    uint64_t *order = calloc((size_t)n + 1, sizeof *order);
    uint32_t *alone = malloc((size_t)array_len * sizeof *alone);
    uint8_t *t2count = calloc(array_len, 1);
    uint8_t *rev_h = malloc((size_t)n + 1);
    uint64_t *t2hash = calloc(array_len, sizeof *t2hash);
    uint32_t *start = malloc((size_t)block * sizeof *start);
    if (!order || !alone || !t2count || !rev_h || !t2hash || !start)
        goto out;
    /* Sort the hashes roughly by segment so that the counting pass walks
     * memory in order (the reference's cache trick). */
    order[n] = 1;
    for (uint32_t i = 0; i < block; i++)
        start[i] = (uint32_t)(((uint64_t)i * n) >> block_bits);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t hash = murmur64(keys[i] + seed);
        uint64_t si = hash >> (64 - block_bits);
        while (order[start[si]] != 0)
            si = (si + 1) & (block - 1);
        order[start[si]] = hash;
        start[si]++;
    }
    int error = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t hash = order[i];
        uint32_t h0 = fuse_hash(0, hash, p), h1 = fuse_hash(1, hash, p), h2 = fuse_hash(2, hash, p);
        t2count[h0] += 4;
        t2hash[h0] ^= hash;
        t2count[h1] += 4;
        t2count[h1] ^= 1;
        t2hash[h1] ^= hash;
        t2count[h2] += 4;
        t2count[h2] ^= 2;
        t2hash[h2] ^= hash;
        /* A count byte that wrapped (over 63 keys in one slot) or two keys
         * with the same hash: this seed does not work. */
        if (t2count[h0] < 4 || t2count[h1] < 4 || t2count[h2] < 4)
            error = 1;
    }
    if (error) {
        r = 1;
        goto out;
    }
    uint32_t qsize = 0, stack = 0, h012[5];
    for (uint32_t i = 0; i < array_len; i++) {
        alone[qsize] = i;
        qsize += (t2count[i] >> 2) == 1 ? 1 : 0;
    }
    while (qsize > 0) {
        uint32_t idx = alone[--qsize];
        if ((t2count[idx] >> 2) != 1)
            continue;
        uint64_t hash = t2hash[idx];
        h012[0] = fuse_hash(0, hash, p);
        h012[1] = fuse_hash(1, hash, p);
        h012[2] = fuse_hash(2, hash, p);
        h012[3] = h012[0];
        h012[4] = h012[1];
        uint8_t found = t2count[idx] & 3;
        rev_h[stack] = found;
        order[stack] = hash;
        stack++;
        for (int j = 1; j <= 2; j++) {
            uint32_t other = h012[found + j];
            alone[qsize] = other;
            qsize += (t2count[other] >> 2) == 2 ? 1 : 0;
            t2count[other] -= 4;
            t2count[other] ^= (uint8_t)((found + j) % 3);
            t2hash[other] ^= hash;
        }
    }
    if (stack != n) {
        r = 1;
        goto out;
    }
    memset(fp, 0, array_len);
    for (uint32_t i = n; i-- > 0;) {
        uint64_t hash = order[i];
        h012[0] = fuse_hash(0, hash, p);
        h012[1] = fuse_hash(1, hash, p);
        h012[2] = fuse_hash(2, hash, p);
        h012[3] = h012[0];
        h012[4] = h012[1];
        uint8_t found = rev_h[i];
        fp[h012[found]] = (uint8_t)(fuse_fp(hash) ^ fp[h012[found + 1]] ^ fp[h012[found + 2]]);
    }
    r = 0;
out:
    free(order);
    free(alone);
    free(t2count);
    free(rev_h);
    free(t2hash);
    free(start);
    return r;
}

/* ---- the file ---- */

int nb_bl_parse(const uint8_t *buf, size_t len, nb_bl_hdr_t *h, char *err, size_t errsz)
{
    memset(h, 0, sizeof *h);
    if (len < NB_BL_HDR_LEN + NB_BL_SIG_LEN || memcmp(buf + OFF_MAGIC, NB_BL_MAGIC, 8) != 0) {
        nb_err_say(err, errsz, "not a nilbox blocklist file (bad magic or shorter than %d bytes)",
                   NB_BL_HDR_LEN + NB_BL_SIG_LEN);
        return NB_EPARSE;
    }
    h->version = rd16(buf + OFF_VERSION);
    if (h->version != NB_BL_VERSION) {
        nb_err_say(err, errsz, "blocklist format version %u is not supported (this build reads %d)",
                   h->version, NB_BL_VERSION);
        return NB_EUNSUPPORTED;
    }
    h->kind = buf[OFF_KIND];
    if (rd16(buf + OFF_HDRLEN) != NB_BL_HDR_LEN || h->kind != NB_BL_KIND_FUSE8 ||
        buf[OFF_FPBITS] != 8) {
        nb_err_say(err, errsz, "blocklist header: unknown header length, filter kind or width");
        return NB_EPARSE;
    }
    for (size_t i = 0; i < 2; i++)
        if (buf[OFF_RSV0 + i])
            goto reserved;
    for (size_t i = 0; i < 32; i++)
        if (buf[OFF_RSV1 + i])
            goto reserved;
    h->created = rd64(buf + OFF_CREATED);
    h->count = rd32(buf + OFF_COUNT);
    h->seg_len = rd32(buf + OFF_SEGLEN);
    h->seg_count = rd32(buf + OFF_SEGCOUNT);
    h->array_len = rd32(buf + OFF_ARRAYLEN);
    memcpy(h->key, buf + OFF_KEY, 16);
    h->seed = rd64(buf + OFF_SEED);
    memcpy(h->signer, buf + OFF_SIGNER, 32);
    /* Every index a lookup computes stays below (seg_count + 2) * seg_len
     * = array_len; check that in 64 bits before trusting any of it. */
    if (h->seg_len < 4 || h->seg_len > NB_BL_SEG_MAX || (h->seg_len & (h->seg_len - 1)) ||
        h->seg_count < 1 || (uint64_t)(h->seg_count + (uint64_t)2) * h->seg_len != h->array_len ||
        h->count > h->array_len) {
        nb_err_say(err, errsz, "blocklist header: inconsistent filter parameters");
        return NB_EPARSE;
    }
    if ((uint64_t)NB_BL_HDR_LEN + h->array_len + NB_BL_SIG_LEN != len) {
        nb_err_say(err, errsz,
                   "blocklist file is %zu bytes but its header says %llu (truncated or extended)",
                   len, (unsigned long long)NB_BL_HDR_LEN + h->array_len + NB_BL_SIG_LEN);
        return NB_EPARSE;
    }
    return 0;
reserved:
    nb_err_say(err, errsz, "blocklist header: reserved bytes are not zero");
    return NB_EPARSE;
}

int nb_bl_open(uint8_t *buf, size_t len, const uint8_t (*pks)[32], size_t npk, nb_bl_t **out,
               char *err, size_t errsz)
{
    *out = NULL;
    nb_bl_hdr_t h;
    int r = nb_bl_parse(buf, len, &h, err, errsz);
    if (r < 0) {
        free(buf);
        return r;
    }
    size_t signed_len = len - NB_BL_SIG_LEN;
    int ok = 0;
    for (size_t i = 0; i < npk && !ok; i++)
        ok = crypto_sign_verify_detached(buf + signed_len, buf, signed_len, pks[i]) == 0;
    if (!ok) {
        char hex[65];
        nb_bl_hex(h.signer, 32, hex);
        if (npk == 0)
            nb_err_say(err, errsz,
                       "no trusted blocklist key: build a list with 'nilbox blocklist "
                       "build' or trust its signer with --pubkey");
        else
            nb_err_say(
                err, errsz,
                "blocklist signature check failed: the file is tampered with or signed by an "
                "untrusted key (it names signer %.16s...)",
                hex);
        free(buf);
        return NB_ECRYPTO;
    }
    nb_bl_t *b = calloc(1, sizeof *b);
    if (!b) {
        free(buf);
        return -ENOMEM;
    }
    b->h = h;
    b->img = buf;
    b->len = len;
    b->fp = buf + NB_BL_HDR_LEN;
    *out = b;
    return 0;
}

int nb_bl_load_file(const char *path, const uint8_t (*pks)[32], size_t npk, nb_bl_t **out,
                    char *err, size_t errsz)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        nb_err_say(err, errsz, "cannot open %s: %s", path, strerror(-e));
        return e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)NB_BL_MAX_FILE) {
        close(fd);
        nb_err_say(err, errsz, "%s is not a regular file of at most %u MiB", path,
                   NB_BL_MAX_FILE >> 20);
        return NB_ETOOBIG;
    }
    /* The header alone says how long the file must be: check that before
     * allocating for the body. */
    uint8_t hdr[NB_BL_HDR_LEN];
    ssize_t got = pread(fd, hdr, sizeof hdr, 0);
    if (got == (ssize_t)sizeof hdr) {
        uint32_t al = rd32(hdr + OFF_ARRAYLEN);
        if (memcmp(hdr, NB_BL_MAGIC, 8) == 0 && rd16(hdr + OFF_VERSION) == NB_BL_VERSION &&
            (uint64_t)NB_BL_HDR_LEN + al + NB_BL_SIG_LEN != (uint64_t)st.st_size) {
            close(fd);
            nb_err_say(err, errsz,
                       "blocklist file %s is %lld bytes but its header says %llu (truncated?)",
                       path, (long long)st.st_size,
                       (unsigned long long)NB_BL_HDR_LEN + al + NB_BL_SIG_LEN);
            return NB_EPARSE;
        }
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    if (off != len) {
        free(buf);
        nb_err_say(err, errsz, "cannot read %s", path);
        return -EIO;
    }
    return nb_bl_open(buf, len, pks, npk, out, err, errsz);
}

void nb_bl_free(nb_bl_t *b)
{
    if (!b)
        return;
    free(b->img);
    free(b);
}

const nb_bl_hdr_t *nb_bl_header(const nb_bl_t *b)
{
    return &b->h;
}

const uint8_t *nb_bl_image(const nb_bl_t *b, size_t *len)
{
    *len = b->len;
    return b->img;
}

int nb_bl_contains(const nb_bl_t *b, const char *name, size_t len)
{
    if (!b || b->h.count == 0)
        return 0;
    return probe(b, name_key(b->h.key, name, len));
}

int nb_bl_lookup(const nb_bl_t *b, const char *name, size_t *match)
{
    if (!b || b->h.count == 0)
        return 0;
    size_t len = strlen(name);
    /* Probe the name, then each parent that still has a dot in it. */
    for (size_t off = 0; off < len;) {
        const char *dot = memchr(name + off, '.', len - off);
        if (!dot)
            break;
        if (probe(b, name_key(b->h.key, name + off, len - off))) {
            if (match)
                *match = off;
            return 1;
        }
        off = (size_t)(dot - name) + 1;
    }
    return 0;
}

/* ---- building ---- */

int nb_bl_builder_new(nb_bl_builder_t **out)
{
    *out = NULL;
    if (sodium_init() < 0)
        return NB_EINTERNAL;
    nb_bl_builder_t *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    randombytes_buf(b->key, sizeof b->key);
    *out = b;
    return 0;
}

void nb_bl_builder_set_key(nb_bl_builder_t *b, const uint8_t key[16])
{
    memcpy(b->key, key, 16);
}

int nb_bl_builder_add(nb_bl_builder_t *b, const char *name, size_t len)
{
    char norm[NB_HOSTNAME_BUFSZ];
    int n = nb_hostname_normalize(name, len, norm, sizeof norm);
    if (n < 0 || !memchr(norm, '.', (size_t)n))
        return 0;
    if (b->n >= NB_BL_MAX_NAMES)
        return NB_ETOOBIG;
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 1024;
        uint64_t *nk = realloc(b->keys, nc * sizeof *nk);
        if (!nk)
            return -ENOMEM;
        b->keys = nk;
        b->cap = nc;
    }
    b->keys[b->n++] = name_key(b->key, norm, (size_t)n);
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int nb_bl_builder_finish(nb_bl_builder_t *b, const uint8_t sk[64], uint64_t created, uint8_t **out,
                         size_t *outlen, char *err, size_t errsz)
{
    *out = NULL;
    *outlen = 0;
    /* Distinct keys only: the peeling needs them (a SipHash collision of
     * two different names just makes them one entry). */
    size_t n = 0;
    if (b->n) {
        qsort(b->keys, b->n, sizeof *b->keys, cmp_u64);
        for (size_t i = 0; i < b->n; i++)
            if (n == 0 || b->keys[i] != b->keys[n - 1])
                b->keys[n++] = b->keys[i];
    }
    uint32_t seg_len, seg_count;
    fuse_size((uint32_t)n, &seg_len, &seg_count);
    uint64_t rng;
    memcpy(&rng, b->key, sizeof rng);
    uint8_t *img = NULL;
    for (int attempt = 0; attempt < 200; attempt++) {
        /* Ten failed seeds in a row: give the filter one more segment. */
        if (attempt && attempt % 10 == 0)
            seg_count++;
        uint32_t array_len = (seg_count + 2) * seg_len;
        size_t len = NB_BL_HDR_LEN + (size_t)array_len + NB_BL_SIG_LEN;
        free(img);
        img = calloc(1, len);
        if (!img)
            return -ENOMEM;
        uint64_t seed = splitmix64(&rng);
        fparams_t p = {seg_len, seg_len - 1, seg_count * seg_len};
        int r = n ? fuse_populate(b->keys, (uint32_t)n, seed, &p, array_len, seg_count,
                                  img + NB_BL_HDR_LEN)
                  : 0;
        if (r < 0) {
            free(img);
            return r;
        }
        if (r == 1)
            continue;
        memcpy(img + OFF_MAGIC, NB_BL_MAGIC, 8);
        wr16(img + OFF_VERSION, NB_BL_VERSION);
        wr16(img + OFF_HDRLEN, NB_BL_HDR_LEN);
        img[OFF_KIND] = NB_BL_KIND_FUSE8;
        img[OFF_FPBITS] = 8;
        wr64(img + OFF_CREATED, created);
        wr32(img + OFF_COUNT, (uint32_t)n);
        wr32(img + OFF_SEGLEN, seg_len);
        wr32(img + OFF_SEGCOUNT, seg_count);
        wr32(img + OFF_ARRAYLEN, array_len);
        memcpy(img + OFF_KEY, b->key, 16);
        wr64(img + OFF_SEED, seed);
        crypto_sign_ed25519_sk_to_pk(img + OFF_SIGNER, sk);
        crypto_sign_detached(img + len - NB_BL_SIG_LEN, NULL, img, len - NB_BL_SIG_LEN, sk);
        /* No false negatives, ever: check every key before handing it out. */
        nb_bl_t view = {.img = img, .len = len, .fp = img + NB_BL_HDR_LEN};
        nb_bl_parse(img, len, &view.h, NULL, 0);
        for (size_t i = 0; i < n; i++) {
            if (!probe(&view, b->keys[i])) {
                free(img);
                nb_err_say(err, errsz, "internal error: the built filter misses a name");
                return NB_EINTERNAL;
            }
        }
        *out = img;
        *outlen = len;
        return 0;
    }
    free(img);
    nb_err_say(err, errsz, "could not construct the filter (no working seed)");
    return NB_EINTERNAL;
}

void nb_bl_builder_free(nb_bl_builder_t *b)
{
    if (!b)
        return;
    free(b->keys);
    free(b);
}

/* ---- input lines ---- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* Characters a plain domain rule may hold (validity is checked later by
 * nb_hostname_normalize; this only tells names from patterns). */
static int name_chars(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return 0;
    }
    return 1;
}

static int hosts_ignored(const char *s, size_t n)
{
    static const char *const names[] = {
        "localhost",     "localhost.localdomain", "local",        "broadcasthost",
        "ip6-localhost", "ip6-loopback",          "ip6-localnet", "ip6-mcastprefix",
        "ip6-allnodes",  "ip6-allrouters",        "ip6-allhosts", "0.0.0.0",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], s, n) == 0)
            return 1;
    return 0;
}

int nb_bl_parse_line(const char *line, size_t len, nb_bl_name_fn fn, void *ud)
{
    size_t a = 0, e = len;
    while (a < e && is_space(line[a]))
        a++;
    while (e > a && is_space(line[e - 1]))
        e--;
    if (a == e || line[a] == '#' || line[a] == '!' || line[a] == '[')
        return NB_BL_LINE_EMPTY;
    const char *s = line + a;
    size_t n = e - a;
    if (n >= 2 && s[0] == '|' && s[1] == '|') {
        /* Exactly "||name^" (or "||name^|"): anything after the caret (options, paths) or
         * wildcards in the name make it something other than "block this
         * domain and its subdomains". */
        if (n >= 5 && s[n - 1] == '|' && s[n - 2] == '^')
            n--; /* "||name^|": the end anchor adds nothing for a host name */
        if (n < 4 || s[n - 1] != '^' || !name_chars(s + 2, n - 3))
            return NB_BL_LINE_SKIPPED;
        int r = fn(ud, s + 2, n - 3);
        return r < 0 ? r : NB_BL_LINE_ADBLOCK;
    }
    /* Inline comments (" #") end hosts and plain lines; a '#' inside a
     * token (AdBlock's "example.com##.ad" element hiding) is not one. */
    for (size_t i = 1; i < n; i++) {
        if (s[i] == '#' && is_space(s[i - 1])) {
            n = i;
            while (n && is_space(s[n - 1]))
                n--;
            break;
        }
    }
    size_t t = 0;
    while (t < n && !is_space(s[t]))
        t++;
    if (t == n)
        return name_chars(s, n) ? (fn(ud, s, n) < 0 ? -1 : NB_BL_LINE_PLAIN) : NB_BL_LINE_SKIPPED;
    nb_ipaddr_t ip;
    if (!nb_ip_parse(s, t, &ip))
        return NB_BL_LINE_SKIPPED;
    size_t i = t;
    for (;;) {
        while (i < n && is_space(s[i]))
            i++;
        if (i >= n)
            break;
        size_t j = i;
        while (j < n && !is_space(s[j]))
            j++;
        if (!hosts_ignored(s + i, j - i) && name_chars(s + i, j - i)) {
            int r = fn(ud, s + i, j - i);
            if (r < 0)
                return r;
        }
        i = j;
    }
    return NB_BL_LINE_HOSTS;
}
