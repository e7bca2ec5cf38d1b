/* bench/share guest side: one timed file-system workload on a folder,
 * static so it runs in the tiny image. Prints "<seconds> <units>" on
 * stdout (units: bytes or files). The clock runs inside the guest, so the
 * `nilbox exec` around it is not counted.
 *
 *   share_io write DIR MiB     write DIR/big in 1 MiB blocks, then fsync
 *   share_io read  DIR         read DIR/big in 1 MiB blocks
 *   share_io create DIR N      create DIR/s/f0..f<N-1> with 100 bytes each
 *   share_io stat DIR N        lstat DIR/s/f0..f<N-1>
 *   share_io clean DIR N       unlink them and DIR/s (not timed) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (1u << 20)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, const char *p)
{
    fprintf(stderr, "share_io: %s %s: %s\n", what, p, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: share_io write|read|create|stat|clean DIR [N]\n");
        return 2;
    }
    const char *op = argv[1], *dir = argv[2];
    long n = argc > 3 ? atol(argv[3]) : 0;
    char p[4096];
    static char buf[BLOCK];
    double t0 = now();
    unsigned long long units = 0;
    if (!strcmp(op, "write") || !strcmp(op, "read")) {
        snprintf(p, sizeof p, "%s/big", dir);
        int w = op[0] == 'w';
        int fd = open(p, w ? O_WRONLY | O_CREAT | O_TRUNC : O_RDONLY, 0644);
        if (fd < 0)
            return die("open", p);
        memset(buf, 'x', sizeof buf);
        t0 = now();
        for (long i = 0; w ? i < n : 1; i++) {
            ssize_t k = w ? write(fd, buf, BLOCK) : read(fd, buf, BLOCK);
            if (k < 0)
                return die(w ? "write" : "read", p);
            if (k == 0)
                break;
            units += (unsigned long long)k;
        }
        if (w && fsync(fd) < 0)
            return die("fsync", p);
        close(fd);
    } else if (!strcmp(op, "create")) {
        snprintf(p, sizeof p, "%s/s", dir);
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            return die("mkdir", p);
        memset(buf, 'y', 100);
        t0 = now();
        for (long i = 0; i < n; i++) {
            snprintf(p, sizeof p, "%s/s/f%ld", dir, i);
            int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0)
                return die("create", p);
            if (write(fd, buf, 100) != 100)
                return die("write", p);
            close(fd);
            units++;
        }
    } else if (!strcmp(op, "stat")) {
        struct stat st;
        for (long i = 0; i < n; i++) {
            snprintf(p, sizeof p, "%s/s/f%ld", dir, i);
            if (lstat(p, &st) < 0 || st.st_size != 100)
                return die("stat", p);
            units++;
        }
    } else if (!strcmp(op, "clean")) {
        for (long i = 0; i < n; i++) {
            snprintf(p, sizeof p, "%s/s/f%ld", dir, i);
            unlink(p);
        }
        snprintf(p, sizeof p, "%s/s", dir);
        rmdir(p);
        snprintf(p, sizeof p, "%s/big", dir);
        unlink(p);
    } else {
        fprintf(stderr, "share_io: unknown op %s\n", op);
        return 2;
    }
    printf("%.6f %llu\n", now() - t0, units);
    return 0;
}
