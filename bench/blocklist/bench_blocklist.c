/* bench/blocklist: the DNS blocklist filter at 1 million names (issue 12).
 *
 * Builds a signed filter from N synthetic names (random labels under common
 * TLDs, a quarter with a subdomain, like real block lists), then reports:
 *   - build time (hashing + construction + signature) and file size,
 *   - the false-positive rate of one probe, on N other names,
 *   - the false-positive rate of a full lookup (with the parent walk) of
 *     N other 4-label names (three probes each),
 *   - lookup latency including the parent walk: median and p99 ns, timed
 *     in batches of 64 lookups (clock overhead amortised), for listed
 *     names' subdomains (hit on the 3rd probe) and for names not listed
 *     (3 probes, all miss),
 *   - for comparison, what a classic Bloom filter would need: bits per
 *     name at the same false-positive rate, and its best rate at 1.2 MiB.
 *
 *   bench_blocklist [--names N] [--runs R] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "lib/blocklist.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void label(char *out, int minl, int maxl)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    int n = minl + (int)(rnd() % (uint64_t)(maxl - minl + 1));
    for (int i = 0; i < n; i++)
        out[i] = al[rnd() % (i == 0 ? 26 : 36)];
    out[n] = 0;
}

/* A registrable-looking name, sometimes with one subdomain. */
static void synth(char *out, size_t outsz, int sub)
{
    static const char *const tlds[] = {"com", "net", "org", "io", "info", "co.uk", "de", "ru"};
    char a[32], b[32];
    label(a, 5, 14);
    const char *tld = tlds[rnd() % 8];
    if (sub) {
        label(b, 2, 8);
        snprintf(out, outsz, "%s.%s.%s", b, a, tld);
    } else {
        snprintf(out, outsz, "%s.%s", a, tld);
    }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define BATCH 64

/* Median and p99 ns per lookup over `n` names (batches of BATCH). */
static void time_lookups(const nb_bl_t *bl, char (*names)[80], size_t n, double *med, double *p99,
                         size_t *hits)
{
    size_t nb = n / BATCH;
    double *t = malloc(nb * sizeof *t);
    volatile size_t h = 0;
    for (size_t b = 0; b < nb; b++) {
        double t0 = now_ns();
        for (size_t i = 0; i < BATCH; i++)
            h += (size_t)nb_bl_lookup(bl, names[b * BATCH + i], NULL);
        t[b] = (now_ns() - t0) / BATCH;
    }
    qsort(t, nb, sizeof *t, cmp_d);
    *med = t[nb / 2];
    *p99 = t[nb * 99 / 100];
    *hits = h;
    free(t);
}

int main(int argc, char **argv)
{
    size_t n = 1000000;
    int runs = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--names"))
            n = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
    }
    if (sodium_init() < 0 || n < BATCH * 4 || runs < 1) {
        fprintf(stderr, "usage: bench_blocklist [--names N>=256] [--runs R]\n");
        return 2;
    }
    uint8_t pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    char(*in)[64] = malloc(n * sizeof *in);
    char(*q)[80] = malloc(n * sizeof *q);
    if (!in || !q)
        return 1;
    for (size_t i = 0; i < n; i++)
        synth(in[i], sizeof in[i], i % 4 == 0);

    double best_build = 1e30;
    uint8_t *img = NULL;
    size_t len = 0;
    for (int r = 0; r < runs; r++) {
        free(img);
        double t0 = now_ns();
        nb_bl_builder_t *b;
        nb_bl_builder_new(&b);
        for (size_t i = 0; i < n; i++)
            nb_bl_builder_add(b, in[i], strlen(in[i]));
        char err[200];
        if (nb_bl_builder_finish(b, sk, (uint64_t)time(NULL), &img, &len, err, sizeof err) < 0) {
            fprintf(stderr, "build failed: %s\n", err);
            return 1;
        }
        nb_bl_builder_free(b);
        double dt = now_ns() - t0;
        if (dt < best_build)
            best_build = dt;
    }
    nb_bl_t *bl;
    char err[300];
    double tv = now_ns();
    if (nb_bl_open(img, len, &pk, 1, &bl, err, sizeof err) < 0) {
        fprintf(stderr, "open failed: %s\n", err);
        return 1;
    }
    double verify_ms = (now_ns() - tv) / 1e6;
    unsigned count = nb_bl_header(bl)->count;

    /* False negatives must be zero; false positives of one probe. */
    size_t fn = 0, fp1 = 0, fpw = 0;
    for (size_t i = 0; i < n; i++)
        fn += !nb_bl_contains(bl, in[i], strlen(in[i]));
    for (size_t i = 0; i < n; i++) {
        char name[80];
        synth(name, sizeof name, i % 4 == 0);
        fp1 += (size_t)nb_bl_contains(bl, name, strlen(name));
    }
    /* Full lookups of unlisted 4-label names (3 probes each). */
    for (size_t i = 0; i < n; i++) {
        char a[12], name[64];
        synth(name, sizeof name, 1);
        label(a, 3, 6);
        snprintf(q[i], sizeof q[i], "%s.%s", a, name);
        fpw += (size_t)nb_bl_lookup(bl, q[i], NULL);
    }
    double med_miss = 1e30, p99_miss = 0, med_hit = 1e30, p99_hit = 0;
    size_t hits_miss = 0, hits_hit = 0;
    for (int r = 0; r < runs; r++) {
        double m, p;
        time_lookups(bl, q, n, &m, &p, &hits_miss);
        if (m < med_miss) {
            med_miss = m;
            p99_miss = p;
        }
    }
    /* Subdomains of listed names: "x.y.<listed>" hits on the 3rd probe. */
    for (size_t i = 0; i < n; i++)
        snprintf(q[i], sizeof q[i], "cdn.img.%s", in[(i * 7919) % n]);
    for (int r = 0; r < runs; r++) {
        double m, p;
        time_lookups(bl, q, n, &m, &p, &hits_hit);
        if (m < med_hit) {
            med_hit = m;
            p99_hit = p;
        }
    }
    double fpr = (double)fp1 / n, bits = len * 8.0 / count;
    double bloom_bits = -log(fpr > 0 ? fpr : 1.0 / 256) / (log(2) * log(2));
    double budget_bits = 1.2 * 8 * 1048576 / (double)n;
    double bloom_best = pow(0.5, budget_bits * log(2));
    printf("names            %zu (%u distinct)\n", n, count);
    printf("build            %.0f ms (best of %d; hash + construct + sign)\n", best_build / 1e6,
           runs);
    printf("file size        %zu bytes = %.3f MiB (%.2f bits a name; goal <= 1.2 MiB)\n", len,
           len / 1048576.0, bits);
    printf("load + verify    %.1f ms\n", verify_ms);
    printf("false negatives  %zu\n", fn);
    printf("false positives  %.3f %% of %zu unlisted names, one probe (goal <= 0.5 %%)\n",
           fpr * 100, n);
    printf("                 %.3f %% of %zu unlisted 4-label names with the parent walk "
           "(3 probes)\n",
           fpw * 100.0 / n, n);
    printf("lookup, miss     median %.0f ns, p99 %.0f ns (4 labels, 3 probes; goal <= 150 ns)\n",
           med_miss, p99_miss);
    printf("lookup, hit      median %.0f ns, p99 %.0f ns (listed name's sub-subdomain, 3rd "
           "probe; %zu/%zu hit)\n",
           med_hit, p99_hit, hits_hit, (n / BATCH) * BATCH);
    printf("Bloom filter     %.1f bits a name (%.2f MiB) for the same %.3f %%; at 1.2 MiB its "
           "best is %.2f %%\n",
           bloom_bits, bloom_bits * n / 8 / 1048576, fpr * 100, bloom_best * 100);
    nb_bl_free(bl);
    free(in);
    free(q);
    (void)hits_miss;
    return fn == 0 ? 0 : 1;
}
