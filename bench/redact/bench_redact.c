/* Redactor throughput (src/daemon/egress/redact.c): MB/s over a few MiB
 * of JSON-like text with no secret in it (the common case: every response
 * byte of a bound connection is scanned), fed in 16 KiB and in 512-byte
 * chunks (SSE-like), with 1 and with 16 needles. Best of 5 runs. Prints
 * one line per case and its ratio to a baseline measured in the same run
 * (one memmem pass for one value over the same text).
 *
 *   bench_redact [MiB]   (default 4) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "daemon/egress/redact.h"

static uint64_t seen;

static int count_sink(void *ctx, const uint8_t *p, size_t n)
{
    (void)ctx;
    seen += n;
    if (n)
        seen += p[0] & 1; /* touch the bytes */
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* JSON-like text: keys, words, numbers, some base64-ish ids and escapes. */
static void fill(uint8_t *b, size_t n)
{
    static const char *const pieces[] = {
        "{\"id\":\"chatcmpl-8a7Xb3QeZ\",",        "\"object\":\"chat.completion\",",
        "\"content\":\"The quick brown fox ",     "jumps over the lazy dog. ",
        "https:\\/\\/example.com\\/a?b=c&d=e ",   "\"usage\":{\"prompt_tokens\":1234},",
        "\"data\":\"aGVsbG8gd29ybGQgdGhpcyBp\",", "caf\\u00e9 &amp; cr\\u00e8me ",
        "0123456789abcdef0123456789abcdef ",      "}\n",
    };
    uint32_t seed = 42;
    size_t o = 0;
    while (o < n) {
        seed = seed * 1103515245 + 12345;
        const char *p = pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
        size_t l = strlen(p);
        if (l > n - o)
            l = n - o;
        memcpy(b + o, p, l);
        o += l;
    }
}

static double run(const uint8_t *buf, size_t n, size_t chunk, int needles)
{
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        nb_redact_t *r = NULL;
        if (nb_redact_new(&r) != 0)
            exit(1);
        for (int i = 0; i < needles; i++) {
            char v[64], name[32];
            snprintf(v, sizeof v, "sk-ant-api03-Zq8%02dXw7Lm4Np2Rt6Vy9Bc3Df5Gh1Jk", i);
            snprintf(name, sizeof name, "KEY_%d", i);
            if (nb_redact_add(r, v, strlen(v), name, strlen(name)) != 0)
                exit(1);
        }
        double t0 = now();
        for (size_t off = 0; off < n; off += chunk)
            if (nb_redact_feed(r, buf + off, n - off < chunk ? n - off : chunk, count_sink, NULL))
                exit(1);
        if (nb_redact_finish(r, count_sink, NULL))
            exit(1);
        double mbs = (double)n / (now() - t0) / 1e6;
        if (mbs > best)
            best = mbs;
        nb_redact_free(r);
    }
    return best;
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 1;
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 4;
    if (mib == 0 || mib > 256)
        mib = 4;
    size_t n = mib << 20;
    uint8_t *buf = malloc(n);
    if (!buf)
        return 1;
    fill(buf, n);
    /* Baseline, same run: one memmem pass for one value over the same
     * text, the floor of any scan (and what the redactor did before
     * encodings and case were matched, per needle). */
    double base = 0;
    for (int rep = 0; rep < 5; rep++) {
        const char *v = "sk-ant-api03-Zq800Xw7Lm4Np2Rt6Vy9Bc3Df5Gh1Jk";
        double t0 = now();
        seen += memmem(buf, n, v, strlen(v)) != NULL;
        double mbs = (double)n / (now() - t0) / 1e6;
        if (mbs > base)
            base = mbs;
    }
    printf("baseline memmem, 1 value       %8.1f MB/s\n", base);
    static const size_t chunks[] = {16384, 512};
    static const int nneedles[] = {1, 16};
    for (size_t c = 0; c < 2; c++)
        for (size_t k = 0; k < 2; k++) {
            double mbs = run(buf, n, chunks[c], nneedles[k]);
            printf("chunk %5zu  needles %2d       %8.1f MB/s  %5.2f x baseline\n", chunks[c],
                   nneedles[k], mbs, mbs / base);
        }
    free(buf);
    return 0;
}
