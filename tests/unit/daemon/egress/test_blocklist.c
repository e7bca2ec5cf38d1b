/* Unit tests for lib/blocklist.c: build, lookup, parents, false
 * positives, tamper detection, input lines, keys. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/blocklist.h"
#include "lib/err.h"
#include "nbtest.h"

static uint8_t g_pk[32], g_sk[64], g_pk2[32], g_sk2[64];

/* A fixed SipHash key makes the filter, and so its false positives,
 * deterministic: the exact-match assertions below cannot flake. */
static const uint8_t fixed_key[16] = "nilbox-test-key";

static uint8_t *build(const char *const *names, size_t n, size_t *len)
{
    nb_bl_builder_t *b;
    uint8_t *img = NULL;
    NB_CHECK(nb_bl_builder_new(&b) == 0);
    nb_bl_builder_set_key(b, fixed_key);
    for (size_t i = 0; i < n; i++)
        nb_bl_builder_add(b, names[i], strlen(names[i]));
    char err[200] = "";
    NB_CHECK(nb_bl_builder_finish(b, g_sk, 1700000000, &img, len, err, sizeof err) == 0);
    nb_bl_builder_free(b);
    return img;
}

static uint8_t *dup_img(const uint8_t *img, size_t len)
{
    uint8_t *c = malloc(len);
    memcpy(c, img, len);
    return c;
}

static void test_parents(void)
{
    static const char *const names[] = {"evil.com", "Ads.Example.ORG.", "tracker.co.uk",
                                        "com",      "not a name",       "x..y"};
    size_t len;
    uint8_t *img = build(names, 6, &len);
    nb_bl_t *bl;
    char err[200];
    NB_CHECK(nb_bl_open(img, len, &g_pk, 1, &bl, err, sizeof err) == 0);
    const nb_bl_hdr_t *h = nb_bl_header(bl);
    NB_CHECK_EQ_INT(h->count, 3); /* "com" (one label) and the invalid lines are skipped */
    NB_CHECK_EQ_INT(h->created, 1700000000);
    NB_CHECK(memcmp(h->signer, g_pk, 32) == 0);
    size_t m = 99;
    NB_CHECK(nb_bl_lookup(bl, "evil.com", &m) == 1 && m == 0);
    NB_CHECK(nb_bl_lookup(bl, "a.b.evil.com", &m) == 1 && m == 4);
    NB_CHECK(nb_bl_lookup(bl, "ads.example.org", &m) == 1 && m == 0);
    NB_CHECK(nb_bl_lookup(bl, "x.ads.example.org", &m) == 1 && m == 2);
    NB_CHECK(nb_bl_lookup(bl, "www.tracker.co.uk", NULL) == 1);
    /* With this fixed key, none of these unlisted names is a false positive. */
    NB_CHECK(nb_bl_lookup(bl, "example.org", NULL) == 0);
    NB_CHECK(nb_bl_lookup(bl, "notevil.com", NULL) == 0);
    NB_CHECK(nb_bl_lookup(bl, "co.uk", NULL) == 0);
    NB_CHECK(nb_bl_contains(bl, "evil.com", 8) == 1);
    NB_CHECK(nb_bl_lookup(NULL, "evil.com", NULL) == 0);
    nb_bl_free(bl);
}

static void test_empty(void)
{
    size_t len;
    uint8_t *img = build(NULL, 0, &len);
    nb_bl_t *bl;
    char err[200];
    NB_CHECK(nb_bl_open(img, len, &g_pk, 1, &bl, err, sizeof err) == 0);
    NB_CHECK_EQ_INT(nb_bl_header(bl)->count, 0);
    NB_CHECK(nb_bl_lookup(bl, "a.b.c.example.com", NULL) == 0);
    nb_bl_free(bl);
}

static void synth(char *out, size_t outsz, const char *tag, uint32_t i)
{
    static const char *const tlds[] = {"com", "net", "org", "io", "co.uk"};
    snprintf(out, outsz, "%s%08x-%u.%s", tag, i * 2654435761u, i % 97, tlds[i % 5]);
}

static void test_many_and_fp(void)
{
    const uint32_t n = 100000;
    nb_bl_builder_t *b;
    NB_CHECK(nb_bl_builder_new(&b) == 0);
    char name[64];
    for (uint32_t i = 0; i < n; i++) {
        synth(name, sizeof name, "in", i);
        NB_CHECK(nb_bl_builder_add(b, name, strlen(name)) == 1 || !"add");
    }
    /* Duplicates are removed. */
    synth(name, sizeof name, "in", 7);
    nb_bl_builder_add(b, name, strlen(name));
    uint8_t *img;
    size_t len;
    char err[200] = "";
    NB_CHECK(nb_bl_builder_finish(b, g_sk, 1, &img, &len, err, sizeof err) == 0);
    nb_bl_builder_free(b);
    nb_bl_t *bl;
    NB_CHECK(nb_bl_open(img, len, &g_pk, 1, &bl, err, sizeof err) == 0);
    NB_CHECK_EQ_INT(nb_bl_header(bl)->count, n);
    /* About 9.1 bits a name. */
    NB_CHECK(len < (size_t)n * 10 / 8 + 4096);
    uint32_t missing = 0, fp = 0;
    for (uint32_t i = 0; i < n; i++) {
        synth(name, sizeof name, "in", i);
        missing += !nb_bl_contains(bl, name, strlen(name));
        synth(name, sizeof name, "out", i);
        fp += nb_bl_contains(bl, name, strlen(name));
    }
    NB_CHECK_EQ_INT(missing, 0);
    printf("  100k names: %zu bytes, %u false positives in 100k (%.3f %%)\n", len, fp,
           fp * 100.0 / n);
    NB_CHECK(fp < n / 200); /* < 0.5 % (expected 1/256 = 0.39 %) */
    NB_CHECK(fp > 0);       /* it is probabilistic: 0 would mean lookups are broken */
    nb_bl_free(bl);
}

static void test_tamper(void)
{
    static const char *const names[] = {"evil.com", "bad.example.net"};
    size_t len;
    uint8_t *img = build(names, 2, &len);
    nb_bl_t *bl;
    char err[300];
    /* Good with the right key, also when it is the second trusted key. */
    uint8_t keys[2][32];
    memcpy(keys[0], g_pk2, 32);
    memcpy(keys[1], g_pk, 32);
    NB_CHECK(nb_bl_open(dup_img(img, len), len, keys, 2, &bl, err, sizeof err) == 0);
    nb_bl_free(bl);
    /* Wrong key. */
    NB_CHECK(nb_bl_open(dup_img(img, len), len, &g_pk2, 1, &bl, err, sizeof err) == NB_ECRYPTO);
    NB_CHECK(bl == NULL && strstr(err, "signature") != NULL);
    /* No key at all. */
    NB_CHECK(nb_bl_open(dup_img(img, len), len, NULL, 0, &bl, err, sizeof err) == NB_ECRYPTO);
    /* One flipped bit anywhere: header, body, signature. */
    size_t where[] = {20, 40, 60, NB_BL_HDR_LEN + 3, len - NB_BL_SIG_LEN - 1, len - 1};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        uint8_t *c = dup_img(img, len);
        c[where[i]] ^= 0x10;
        int r = nb_bl_open(c, len, &g_pk, 1, &bl, err, sizeof err);
        NB_CHECK(r == NB_ECRYPTO || r == NB_EPARSE);
        NB_CHECK(bl == NULL);
    }
    /* Truncated, extended. */
    NB_CHECK(nb_bl_open(dup_img(img, len), len - 1, &g_pk, 1, &bl, err, sizeof err) == NB_EPARSE);
    NB_CHECK(strstr(err, "truncated") != NULL);
    NB_CHECK(nb_bl_open(dup_img(img, len), 100, &g_pk, 1, &bl, err, sizeof err) == NB_EPARSE);
    uint8_t *big = calloc(1, len + 8);
    memcpy(big, img, len);
    NB_CHECK(nb_bl_open(big, len + 8, &g_pk, 1, &bl, err, sizeof err) == NB_EPARSE);
    /* Wrong version, even re-signed: refused before the signature. */
    uint8_t *c = dup_img(img, len);
    c[8] = 2;
    crypto_sign_detached(c + len - NB_BL_SIG_LEN, NULL, c, len - NB_BL_SIG_LEN, g_sk);
    NB_CHECK(nb_bl_open(c, len, &g_pk, 1, &bl, err, sizeof err) == NB_EUNSUPPORTED);
    NB_CHECK(strstr(err, "version 2") != NULL);
    /* Bad magic; inconsistent parameters re-signed. */
    c = dup_img(img, len);
    c[0] = 'X';
    NB_CHECK(nb_bl_open(c, len, &g_pk, 1, &bl, err, sizeof err) == NB_EPARSE);
    c = dup_img(img, len);
    c[28] = 3; /* seg_len not a power of two */
    crypto_sign_detached(c + len - NB_BL_SIG_LEN, NULL, c, len - NB_BL_SIG_LEN, g_sk);
    NB_CHECK(nb_bl_open(c, len, &g_pk, 1, &bl, err, sizeof err) == NB_EPARSE);
    free(img);
}

static int collect(void *ud, const char *name, size_t len)
{
    char *out = ud;
    size_t l = strlen(out);
    snprintf(out + l, 512 - l, "%.*s,", (int)len, name);
    return 0;
}

static void check_line(const char *line, int kind, const char *names)
{
    char out[512] = "";
    int r = nb_bl_parse_line(line, strlen(line), collect, out);
    NB_CHECK_EQ_INT(r, kind);
    NB_CHECK_STR(out, names);
}

static void test_lines(void)
{
    check_line("", NB_BL_LINE_EMPTY, "");
    check_line("   # comment", NB_BL_LINE_EMPTY, "");
    check_line("! adblock comment", NB_BL_LINE_EMPTY, "");
    check_line("[Adblock Plus 2.0]", NB_BL_LINE_EMPTY, "");
    check_line("0.0.0.0 evil.com", NB_BL_LINE_HOSTS, "evil.com,");
    check_line("127.0.0.1\tads.a.com  b.com # both\r", NB_BL_LINE_HOSTS, "ads.a.com,b.com,");
    check_line("127.0.0.1 localhost", NB_BL_LINE_HOSTS, "");
    check_line("::1 ip6-localhost ip6-loopback", NB_BL_LINE_HOSTS, "");
    check_line("0.0.0.0 0.0.0.0", NB_BL_LINE_HOSTS, "");
    check_line("evil.com", NB_BL_LINE_PLAIN, "evil.com,");
    check_line("  Evil.COM  # x", NB_BL_LINE_PLAIN, "Evil.COM,");
    check_line("||evil.com^", NB_BL_LINE_ADBLOCK, "evil.com,");
    check_line("||evil.com^|", NB_BL_LINE_ADBLOCK, "evil.com,");
    check_line("||^|", NB_BL_LINE_SKIPPED, "");
    check_line("||evil.com", NB_BL_LINE_SKIPPED, "");
    check_line("||evil.com^$third-party", NB_BL_LINE_SKIPPED, "");
    check_line("||evil.com/path^", NB_BL_LINE_SKIPPED, "");
    check_line("||*.evil.com^", NB_BL_LINE_SKIPPED, "");
    check_line("@@||good.com^", NB_BL_LINE_SKIPPED, "");
    check_line("/ads[0-9]+/", NB_BL_LINE_SKIPPED, "");
    check_line("evil.com other.com", NB_BL_LINE_SKIPPED, "");
    check_line("example.com##.ad-banner", NB_BL_LINE_SKIPPED, "");
    check_line("*.evil.com", NB_BL_LINE_SKIPPED, "");
    check_line("||^", NB_BL_LINE_SKIPPED, "");
}

static void test_keys(void)
{
    char dir[] = "/tmp/nbblXXXXXX";
    NB_CHECK(mkdtemp(dir) != NULL);
    uint8_t sk[64], pk[32], sk2[64], pk2[32];
    int created = 0;
    char err[300];
    NB_CHECK(nb_bl_key_load_or_create(dir, sk, pk, &created, err, sizeof err) == 0);
    NB_CHECK(created == 1);
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/blocklist/signing.key", dir);
    NB_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    NB_CHECK(nb_bl_key_load_or_create(dir, sk2, pk2, &created, err, sizeof err) == 0);
    NB_CHECK(created == 0 && memcmp(pk, pk2, 32) == 0 && memcmp(sk, sk2, 64) == 0);
    uint8_t keys[NB_BL_MAX_KEYS][32];
    NB_CHECK_EQ_INT(nb_bl_trusted_keys(dir, keys, NB_BL_MAX_KEYS), 1);
    NB_CHECK(memcmp(keys[0], pk, 32) == 0);
    NB_CHECK(nb_bl_trust_key(dir, g_pk2, err, sizeof err) == 0);
    NB_CHECK(nb_bl_trust_key(dir, g_pk2, err, sizeof err) == 0); /* once only */
    NB_CHECK_EQ_INT(nb_bl_trusted_keys(dir, keys, NB_BL_MAX_KEYS), 2);
    NB_CHECK(memcmp(keys[1], g_pk2, 32) == 0);
    /* A key file others can read is refused. */
    chmod(path, 0644);
    NB_CHECK(nb_bl_key_load_or_create(dir, sk2, pk2, &created, err, sizeof err) == NB_EDENIED);
    unlink(path);
    snprintf(path, sizeof path, "%s/blocklist/signing.pub", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/blocklist/trusted.keys", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/blocklist", dir);
    rmdir(path);
    rmdir(dir);
    char hex[65];
    uint8_t back[32];
    nb_bl_hex(pk, 32, hex);
    NB_CHECK(nb_bl_unhex(hex, 64, back, 32) == 0 && memcmp(back, pk, 32) == 0);
    NB_CHECK(nb_bl_unhex(hex, 63, back, 32) == NB_EINVAL);
    hex[5] = 'g';
    NB_CHECK(nb_bl_unhex(hex, 64, back, 32) == NB_EINVAL);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(g_pk, g_sk);
    crypto_sign_keypair(g_pk2, g_sk2);
    NB_RUN(test_parents);
    NB_RUN(test_empty);
    NB_RUN(test_many_and_fp);
    NB_RUN(test_tamper);
    NB_RUN(test_lines);
    NB_RUN(test_keys);
    NB_TEST_MAIN_END();
}
