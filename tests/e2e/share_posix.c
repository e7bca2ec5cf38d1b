/* POSIX behaviour checks run INSIDE a guest on a nilbox share (static
 * binary, copied into the share by tests/e2e/test_share.py and executed
 * from it). One line per check: "ok NAME" or "FAIL NAME: why"; exit 1 on
 * any failure.
 *
 *   share_posix check DIR     the suite, in DIR (an empty folder on the share)
 *   share_posix count DIR     prints the number of entries (without . and ..)
 *   share_posix bigfile PATH  writes "far" at 5 GiB + 3 and reads it back */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <unistd.h>

static int failures;

#define CHECK(name, cond)                                                                          \
    do {                                                                                           \
        if (cond)                                                                                  \
            printf("ok %s\n", name);                                                               \
        else {                                                                                     \
            printf("FAIL %s: %s (errno %d %s)\n", name, #cond, errno, strerror(errno));            \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static int put(const char *p, const char *s, int flags)
{
    int fd = open(p, O_WRONLY | O_CREAT | flags, 0644);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, s, strlen(s));
    close(fd);
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

static int get(const char *p, char *out, size_t n)
{
    int fd = open(p, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t k = read(fd, out, n - 1);
    close(fd);
    if (k < 0)
        return -1;
    out[k] = '\0';
    return 0;
}

static int bigfile(const char *p)
{
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    off_t off = (5LL << 30) + 3;
    char b[4] = "";
    int ok = fd >= 0 && pwrite(fd, "far", 3, off) == 3 && pread(fd, b, 3, off) == 3 &&
             memcmp(b, "far", 3) == 0;
    struct stat st;
    ok = ok && fstat(fd, &st) == 0 && st.st_size == off + 3;
    if (fd >= 0)
        close(fd);
    CHECK("bigfile_5GiB_offset", ok);
    return failures ? 1 : 0;
}

static long count(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int check(const char *dir)
{
    char buf[256];
    struct stat st;
    if (chdir(dir) != 0) {
        perror(dir);
        return 2;
    }
    /* create, write, read, append, O_EXCL */
    CHECK("create_write_read", put("a", "hello", O_TRUNC) == 0 && get("a", buf, sizeof buf) == 0 &&
                                   strcmp(buf, "hello") == 0);
    CHECK("append", put("a", " world", O_APPEND) == 0 && get("a", buf, sizeof buf) == 0 &&
                        strcmp(buf, "hello world") == 0);
    errno = 0;
    CHECK("excl_existing", open("a", O_WRONLY | O_CREAT | O_EXCL, 0644) < 0 && errno == EEXIST);
    CHECK("otrunc", put("a", "new", O_TRUNC) == 0 && get("a", buf, sizeof buf) == 0 &&
                        strcmp(buf, "new") == 0);
    /* truncate grow / shrink */
    CHECK("truncate_grow", truncate("a", 10) == 0 && stat("a", &st) == 0 && st.st_size == 10);
    CHECK("truncate_shrink",
          truncate("a", 2) == 0 && get("a", buf, sizeof buf) == 0 && strcmp(buf, "ne") == 0);
    /* rename, including over an existing file */
    put("b", "bee", O_TRUNC);
    CHECK("rename_over_existing", rename("b", "a") == 0 && get("a", buf, sizeof buf) == 0 &&
                                      strcmp(buf, "bee") == 0 && access("b", F_OK) != 0);
    /* directories */
    CHECK("mkdir", mkdir("d", 0755) == 0 && stat("d", &st) == 0 && S_ISDIR(st.st_mode));
    errno = 0;
    CHECK("mkdir_exists", mkdir("d", 0755) < 0 && errno == EEXIST);
    put("d/f", "x", O_TRUNC);
    errno = 0;
    CHECK("rmdir_notempty", rmdir("d") < 0 && (errno == ENOTEMPTY || errno == EEXIST));
    CHECK("rename_dir", rename("d", "d2") == 0 && get("d2/f", buf, sizeof buf) == 0);
    CHECK("unlink", unlink("d2/f") == 0 && access("d2/f", F_OK) != 0);
    CHECK("rmdir", rmdir("d2") == 0 && access("d2", F_OK) != 0);
    errno = 0;
    CHECK("enoent", open("missing", O_RDONLY) < 0 && errno == ENOENT);
    /* an unlinked open file stays readable */
    put("u", "still here", O_TRUNC);
    int fd = open("u", O_RDONLY);
    CHECK("unlink_open_file", fd >= 0 && unlink("u") == 0 && pread(fd, buf, 10, 0) == 10 &&
                                  memcmp(buf, "still here", 10) == 0);
    if (fd >= 0)
        close(fd);
    /* symlinks: readlink, followed by the guest */
    char t[64] = "";
    CHECK("symlink", symlink("a", "ln") == 0 && readlink("ln", t, sizeof t) == 1 && t[0] == 'a');
    CHECK("symlink_follow", get("ln", buf, sizeof buf) == 0 && strcmp(buf, "bee") == 0);
    CHECK("lstat_symlink", lstat("ln", &st) == 0 && S_ISLNK(st.st_mode));
    /* hard links and device nodes are refused */
    errno = 0;
    CHECK("link_refused", link("a", "hard") < 0 && access("hard", F_OK) != 0);
    CHECK("mknod_refused", mknod("dev", S_IFCHR | 0600, makedev(1, 3)) < 0);
    CHECK("mkfifo_refused", mkfifo("fifo", 0600) < 0);
    /* chmod, utimes, owner */
    CHECK("chmod_drops_setid",
          chmod("a", 06755) == 0 && stat("a", &st) == 0 && (st.st_mode & 07777) == 0755);
    CHECK("chmod", chmod("a", 0600) == 0 && stat("a", &st) == 0 && (st.st_mode & 0777) == 0600);
    struct timeval tv[2] = {{1000000000, 0}, {1000000000, 0}};
    CHECK("utimes", utimes("a", tv) == 0 && stat("a", &st) == 0 && st.st_mtime == 1000000000);
    CHECK("owner_is_root", stat("a", &st) == 0 && st.st_uid == 0);
    /* fsync, statfs */
    fd = open("a", O_RDWR);
    CHECK("fsync", fd >= 0 && fsync(fd) == 0 && fdatasync(fd) == 0);
    if (fd >= 0)
        close(fd);
    struct statfs sf;
    CHECK("statfs", statfs(".", &sf) == 0 && sf.f_bsize > 0 && sf.f_blocks > 0);
    /* mmap through the page cache: shared write, then read() sees it */
    fd = open("m", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int ok = fd >= 0 && ftruncate(fd, 8192) == 0;
    char *p = ok ? mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    ok = ok && p != MAP_FAILED;
    if (ok) {
        memcpy(p + 4096, "mapped", 6);
        ok = msync(p, 8192, MS_SYNC) == 0;
        munmap(p, 8192);
    }
    ok = ok && pread(fd, buf, 6, 4096) == 6 && memcmp(buf, "mapped", 6) == 0;
    CHECK("mmap_shared_write", ok);
    p = fd >= 0 ? mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    CHECK("mmap_read", p != MAP_FAILED && memcmp(p + 4096, "mapped", 6) == 0);
    if (p != MAP_FAILED)
        munmap(p, 8192);
    if (fd >= 0)
        close(fd);
    /* a directory listing */
    CHECK("readdir", count(".") == 3); /* a, ln, m */
    bigfile("big");
    unlink("big");
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && !strcmp(argv[1], "check"))
        return check(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "count")) {
        long n = count(argv[2]);
        printf("%ld\n", n);
        return n < 0;
    }
    if (argc == 3 && !strcmp(argv[1], "bigfile"))
        return bigfile(argv[2]);
    fprintf(stderr, "usage: share_posix check|count|bigfile PATH\n");
    return 2;
}
