/* Minimal unit-test harness: NB_CHECK records failures and keeps going;
 * main() returns non-zero when any check failed. */
#ifndef NB_TEST_H
#define NB_TEST_H

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int nbt_failures;
static int nbt_checks;

#define NB_CHECK(cond)                                                                             \
    do {                                                                                           \
        nbt_checks++;                                                                              \
        if (!(cond)) {                                                                             \
            nbt_failures++;                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define NB_CHECK_EQ_INT(a, b)                                                                      \
    do {                                                                                           \
        long long nbt_a = (long long)(a), nbt_b = (long long)(b);                                  \
        nbt_checks++;                                                                              \
        if (nbt_a != nbt_b) {                                                                      \
            nbt_failures++;                                                                        \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,  \
                    nbt_a, nbt_b);                                                                 \
        }                                                                                          \
    } while (0)

#define NB_CHECK_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *nbt_x = (a), *nbt_y = (b);                                                     \
        nbt_checks++;                                                                              \
        if (!nbt_x || !nbt_y || strcmp(nbt_x, nbt_y) != 0) {                                       \
            nbt_failures++;                                                                        \
            fprintf(stderr, "%s:%d: %s == \"%s\" failed: got \"%s\"\n", __FILE__, __LINE__, #a,    \
                    nbt_y ? nbt_y : "(null)", nbt_x ? nbt_x : "(null)");                           \
        }                                                                                          \
    } while (0)

#define NB_RUN(fn)                                                                                 \
    do {                                                                                           \
        int nbt_before = nbt_failures;                                                             \
        fn();                                                                                      \
        printf("%s %s\n", nbt_failures == nbt_before ? "ok" : "FAIL", #fn);                        \
    } while (0)

/* Removes an SQLite database and its -wal/-shm side files (cleanup
 * between tests that reopen the same path). */
static inline void nbt_rm_db(const char *path)
{
    char p[4096];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

#define NB_TEST_MAIN_END()                                                                         \
    do {                                                                                           \
        printf("%d checks, %d failed\n", nbt_checks, nbt_failures);                                \
        return nbt_failures ? 1 : 0;                                                               \
    } while (0)

#endif
