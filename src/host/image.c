#include "host/image.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

extern char **environ;

int nb_image_valid_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 31)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && (c == '-' || c == '_'));
        if (!ok)
            return 0;
    }
    return 1;
}

int nb_image_dir(const char *home, const char *name, char *buf, size_t size)
{
    if (!home || !*home || !nb_image_valid_name(name))
        return NB_EINVAL;
    int n = snprintf(buf, size, "%s/images/%s", home, name);
    return n < 0 || (size_t)n >= size ? NB_ETOOBIG : 0;
}

static int read_file_capped(const char *path, size_t cap, nb_buf_t *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = 0;
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        if (b->len + (size_t)n > cap) {
            r = NB_ETOOBIG;
            break;
        }
        if ((r = nb_buf_append(b, chunk, (size_t)n)) < 0)
            break;
    }
    close(fd);
    return r;
}

/* Artifact names are plain file names inside the image folder. */
static int safe_artifact(const char *s)
{
    if (!s || !*s || strlen(s) > 64 || s[0] == '.')
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '-' || *p == '_'))
            return 0;
    return 1;
}

static int join(char *out, size_t size, const char *dir, const char *file)
{
    int n = snprintf(out, size, "%s/%s", dir, file);
    return n < 0 || (size_t)n >= size ? NB_ETOOBIG : 0;
}

static int load_manifest(const char *dir, json_t **out)
{
    char path[PATH_MAX];
    nb_buf_t b;
    int r;
    *out = NULL;
    if ((r = join(path, sizeof(path), dir, "manifest.json")) < 0)
        return r;
    nb_buf_init(&b, NB_IMAGE_MANIFEST_MAX);
    r = read_file_capped(path, NB_IMAGE_MANIFEST_MAX, &b);
    if (r == -ENOENT)
        r = NB_ENOTFOUND;
    if (r == 0 && (nb_json_parse(nb_buf_iov(&b), out, NULL, 0) < 0 || !json_is_object(*out))) {
        json_decref(*out);
        *out = NULL;
        r = NB_EPARSE;
    }
    nb_buf_free(&b);
    return r;
}

static int copy_str(char *dst, size_t size, const char *src)
{
    if (!src)
        return NB_EPARSE;
    size_t n = strlen(src);
    if (n >= size)
        return NB_EPARSE;
    memcpy(dst, src, n + 1);
    return 0;
}

int nb_image_load(const char *dir, nb_image_t *img)
{
    json_t *m = NULL;
    int r;
    memset(img, 0, sizeof(*img));
    if (!dir || !*dir)
        return NB_EINVAL;
    if ((r = load_manifest(dir, &m)) < 0)
        return r;
    r = NB_EPARSE;
    json_t *arts = json_object_get(m, "artifacts");
    const char *kimg = nb_json_str(m, "kernel_image");
    const char *root = nb_json_str(m, "root");
    if (nb_json_int(m, "format", 0) != 1 || !json_is_object(arts) || !safe_artifact(kimg) ||
        !json_object_get(arts, kimg) || !root ||
        (strcmp(root, "initramfs") != 0 && strcmp(root, "disk") != 0))
        goto out;
    if (copy_str(img->name, sizeof(img->name), nb_json_str(m, "name")) < 0 ||
        !nb_image_valid_name(img->name) ||
        copy_str(img->recipe, sizeof(img->recipe), nb_json_str(m, "recipe")) < 0)
        goto out;
    const char *rel = nb_json_str(json_object_get(m, "kernel"), "release");
    if (rel && copy_str(img->kernel_release, sizeof(img->kernel_release), rel) < 0)
        goto out;
    img->disk_is_root = strcmp(root, "disk") == 0;

    const char *name;
    json_t *a;
    json_object_foreach (arts, name, a) {
        char path[PATH_MAX];
        struct stat st;
        json_int_t size = nb_json_int(a, "size", -1);
        if (!safe_artifact(name) || size < 0 || !nb_json_str(a, "sha256")) {
            r = NB_EPARSE;
            goto out;
        }
        if ((r = join(path, sizeof(path), dir, name)) < 0)
            goto out;
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != (off_t)size) {
            nb_log(NB_LOG_WARN, "image %s: artifact %s missing or of the wrong size", img->name,
                   name);
            r = NB_ESTATE;
            goto out;
        }
        if (strcmp(name, kimg) == 0)
            r = copy_str(img->kernel, sizeof(img->kernel), path);
        else if (strcmp(name, "initramfs.img") == 0)
            r = copy_str(img->initrd, sizeof(img->initrd), path);
        else if (strcmp(name, "disk.qcow2") == 0)
            r = copy_str(img->disk, sizeof(img->disk), path);
        else
            r = 0;
        if (r < 0)
            goto out;
    }
    if (img->disk_is_root && !img->disk[0]) {
        r = NB_EPARSE;
        goto out;
    }
    r = 0;
out:
    if (r < 0)
        memset(img, 0, sizeof(*img));
    json_decref(m);
    return r;
}

static int sha256_file(const char *path, char hex[65])
{
    crypto_hash_sha256_state st;
    unsigned char md[crypto_hash_sha256_BYTES];
    static const size_t chunk = 1 << 20;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unsigned char *buf = malloc(chunk);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    int r = 0;
    crypto_hash_sha256_init(&st);
    for (;;) {
        ssize_t n = read(fd, buf, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        crypto_hash_sha256_update(&st, buf, (unsigned long long)n);
    }
    close(fd);
    free(buf);
    if (r == 0) {
        crypto_hash_sha256_final(&st, md);
        sodium_bin2hex(hex, 65, md, sizeof(md));
    }
    return r;
}

int nb_image_verify(const char *dir)
{
    nb_image_t img;
    json_t *m = NULL;
    int r;
    if ((r = nb_image_load(dir, &img)) < 0 || (r = load_manifest(dir, &m)) < 0)
        return r;
    const char *name;
    json_t *a;
    json_object_foreach (json_object_get(m, "artifacts"), name, a) {
        char path[PATH_MAX], hex[65];
        if ((r = join(path, sizeof(path), dir, name)) < 0 || (r = sha256_file(path, hex)) < 0)
            goto out;
        if (strcmp(hex, nb_json_str(a, "sha256")) != 0) {
            nb_log(NB_LOG_WARN, "image %s: %s does not match its sha256", img.name, name);
            r = NB_ECRYPTO;
            goto out;
        }
    }
    r = 0;
out:
    json_decref(m);
    return r;
}

/* Runs argv (argv[0] looked up in PATH) and waits. 0 when it exits 0. */
static int run_wait(char *const argv[])
{
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        nb_log(NB_LOG_ERR, "cannot run %s: %s", argv[0], strerror(r));
        return -r;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        nb_log(NB_LOG_WARN, "%s %s failed (status %d)", argv[0], argv[1], st);
        return NB_EINTERNAL;
    }
    return 0;
}

int nb_image_overlay_create(const char *qemu_img, const char *base, const char *overlay,
                            uint64_t size_bytes)
{
    char size[32];
    struct stat st;
    if (!base || base[0] != '/' || !overlay || !*overlay)
        return NB_EINVAL;
    if (stat(base, &st) < 0)
        return -errno;
    if (lstat(overlay, &st) == 0)
        return -EEXIST;
    snprintf(size, sizeof(size), "%llu", (unsigned long long)size_bytes);
    char *argv[] = {(char *)(qemu_img ? qemu_img : "qemu-img"),
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    (char *)base,
                    (char *)overlay,
                    size_bytes ? size : NULL,
                    NULL};
    return run_wait(argv);
}

int nb_image_disk_size(const char *disk, uint64_t *size_bytes)
{
    unsigned char h[32];
    *size_bytes = 0;
    int fd = open(disk, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = pread(fd, h, sizeof(h), 0);
    int e = errno;
    close(fd);
    if (n < 0)
        return -e;
    /* qcow2 header: magic "QFI\xfb", version, ..., size (big-endian u64) at 24. */
    if (n != (ssize_t)sizeof(h) || memcmp(h, "QFI\xfb", 4) != 0)
        return NB_EPARSE;
    uint64_t v = 0;
    for (int i = 24; i < 32; i++)
        v = (v << 8) | h[i];
    *size_bytes = v;
    return 0;
}

int nb_image_disk_resize(const char *qemu_img, const char *disk, uint64_t size_bytes)
{
    uint64_t cur;
    char size[32];
    int r;
    if (!disk || !size_bytes)
        return NB_EINVAL;
    if ((r = nb_image_disk_size(disk, &cur)) < 0)
        return r;
    if (size_bytes < cur)
        return NB_EINVAL;
    if (size_bytes == cur)
        return 0;
    snprintf(size, sizeof(size), "%llu", (unsigned long long)size_bytes);
    char *argv[] = {(char *)(qemu_img ? qemu_img : "qemu-img"),
                    "resize",
                    "-q",
                    "-f",
                    "qcow2",
                    (char *)disk,
                    size,
                    NULL};
    return run_wait(argv);
}
