/* Guest images in the cache ($NILBOX_HOME/images/<name>/) and VM disks.
 *
 * An image folder is complete when its manifest.json exists: the build
 * scripts (images/<name>/build.sh) write the artifacts first and the
 * manifest last. The manifest lists every artifact with its size and
 * sha256, the recipe hash, the kernel image to boot and whether the root
 * file system is the initramfs (tiny) or the disk (debian). See
 * docs/images.md.
 *
 * Functions here block (file reads, hashing, running qemu-img): call them
 * from the thread pool, never on the loop thread.
 */
#ifndef NB_VM_IMAGE_H
#define NB_VM_IMAGE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define NB_IMAGE_MANIFEST_MAX (64 * 1024)

typedef struct {
    char name[32];
    char recipe[65];       /* hex sha256 */
    char kernel[PATH_MAX]; /* absolute path of the kernel to boot */
    char initrd[PATH_MAX]; /* "" when the image has none */
    char disk[PATH_MAX];   /* base qcow2 for VM overlays; "" when none */
    char kernel_release[64];
    int disk_is_root; /* 1: the root file system is on the disk (debian) */
} nb_image_t;

/* 1 when `name` is a valid image name ([a-z0-9][a-z0-9_-]{0,30}). */
int nb_image_valid_name(const char *name);

/* Writes "<home>/images/<name>" to buf. 0, NB_EINVAL or NB_ETOOBIG. */
int nb_image_dir(const char *home, const char *name, char *buf, size_t size);

/* Loads and checks `dir`/manifest.json (<= NB_IMAGE_MANIFEST_MAX bytes):
 * known format, every artifact present as a regular file of the recorded
 * size, the kernel present. 0, NB_ENOTFOUND (no manifest: not built),
 * NB_EPARSE (bad manifest), NB_ESTATE (artifact missing or of the wrong
 * size) or -errno. *img is cleared on entry. */
int nb_image_load(const char *dir, nb_image_t *img);

/* Recomputes the sha256 of every artifact of `dir` and compares it with the
 * manifest. 0, NB_ECRYPTO (a mismatch) or an error of nb_image_load. Reads
 * every byte: slow for big images. */
int nb_image_verify(const char *dir);

/* Creates the qcow2 overlay `overlay` backed by `base` (qemu-img create -f
 * qcow2 -F qcow2 -b base), of `size_bytes` (0: the base's size). Fails
 * with -EEXIST if `overlay` exists. `qemu_img` NULL means "qemu-img" from
 * PATH. 0, or NB_EINVAL / -errno / NB_EINTERNAL (qemu-img failed). */
int nb_image_overlay_create(const char *qemu_img, const char *base, const char *overlay,
                            uint64_t size_bytes);

/* Grows `disk` to `size_bytes` (qemu-img resize; never shrinks: a smaller
 * size fails with NB_EINVAL). The guest grows its file system at the next
 * boot. */
int nb_image_disk_resize(const char *qemu_img, const char *disk, uint64_t size_bytes);

/* Virtual size of a qcow2 disk, read from its header (no qemu-img). */
int nb_image_disk_size(const char *disk, uint64_t *size_bytes);

#endif
