/* QEMU argv builder, key file, pidfile check, and image/disk helpers
 * (real qemu-img for the disk tests). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "host/accel.h"
#include "host/image.h"
#include "daemon/vm/qemu.h"
#include "lib/err.h"
#include "nbtest.h"

static char g_dir[] = "/tmp/nb-qemu-test.XXXXXX";

static void path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", g_dir, name);
}

/* Index of the argument equal to s, or -1. */
static int find(const nb_qemu_argv_t *a, const char *s)
{
    for (size_t i = 0; i < a->argc; i++)
        if (strcmp(a->argv[i], s) == 0)
            return (int)i;
    return -1;
}

/* The value following option `opt` whose value starts with `prefix`. */
static const char *opt_value(const nb_qemu_argv_t *a, const char *opt, const char *prefix)
{
    for (size_t i = 0; i + 1 < a->argc; i++)
        if (strcmp(a->argv[i], opt) == 0 && strncmp(a->argv[i + 1], prefix, strlen(prefix)) == 0)
            return a->argv[i + 1];
    return NULL;
}

static nb_qemu_spec_t base_spec(void)
{
    static char mux[256], key[256], qmp[256], con[256], pid[256];
    path(mux, sizeof(mux), "mux.sock");
    path(key, sizeof(key), "key");
    path(qmp, sizeof(qmp), "qmp.sock");
    path(con, sizeof(con), "console.log");
    path(pid, sizeof(pid), "qemu.pid");
    nb_qemu_spec_t s = {
        .name = "box1",
        .accel = NB_QEMU_ACCEL_TCG,
        .kernel = "/img/vmlinux",
        .initrd = "/img/initramfs.img",
        .mux_socket = mux,
        .key_file = key,
        .qmp_socket = qmp,
        .console_log = con,
        .pidfile = pid,
    };
    return s;
}

static void test_argv_q35_tcg(void)
{
    nb_qemu_spec_t s = base_spec();
    nb_qemu_argv_t a;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK_EQ_INT(a.machine, NB_QEMU_MACHINE_Q35); /* TCG without a TSC frequency */
    NB_CHECK_EQ_INT(a.accel, NB_QEMU_ACCEL_TCG);
    NB_CHECK(a.argv[a.argc] == NULL);
    NB_CHECK_STR(a.argv[0], "qemu-system-x86_64");
    NB_CHECK(find(&a, "-nodefaults") > 0);
    NB_CHECK(find(&a, "-no-user-config") > 0);
    int i = find(&a, "-nic");
    NB_CHECK(i > 0 && strcmp(a.argv[i + 1], "none") == 0);
    NB_CHECK(opt_value(&a, "-accel", "tcg") != NULL);
    NB_CHECK(opt_value(&a, "-machine", "q35") != NULL);
    NB_CHECK(opt_value(&a, "-device", "virtio-serial-pci") != NULL);
    NB_CHECK(opt_value(&a, "-m", "512M") != NULL);
    NB_CHECK(opt_value(&a, "-smp", "1") != NULL);
    NB_CHECK(opt_value(&a, "-sandbox", "on,") != NULL);
    NB_CHECK(find(&a, "-no-reboot") > 0);
    const char *app = opt_value(&a, "-append", "console=ttyS0");
    NB_CHECK(app && !strstr(app, "tsc_early_khz") && !strstr(app, "nilbox.root"));
    /* The mux chardev connects (no server=on) and reconnects. */
    char want[512];
    snprintf(want, sizeof(want), "socket,id=nbmux,path=%s,reconnect=1", s.mux_socket);
    NB_CHECK(find(&a, want) > 0);
    NB_CHECK(
        opt_value(&a, "-device", "virtserialport,bus=vser0.0,chardev=nbmux,name=org.nilbox.mux"));
    snprintf(want, sizeof(want), "socket,id=qmp0,path=%s,server=on,wait=off", s.qmp_socket);
    NB_CHECK(find(&a, want) > 0);
    snprintf(want, sizeof(want), "name=opt/nilbox/key,file=%s", s.key_file);
    NB_CHECK(find(&a, want) > 0);
    snprintf(want, sizeof(want), "file,id=con0,path=%s", s.console_log);
    NB_CHECK(find(&a, want) > 0);
    NB_CHECK(opt_value(&a, "-pidfile", s.pidfile) != NULL);
    NB_CHECK(find(&a, "-drive") < 0); /* no disk asked for */
    /* Nothing that would give the guest a network. */
    for (size_t k = 0; k < a.argc; k++) {
        NB_CHECK(!strstr(a.argv[k], "netdev"));
        NB_CHECK(!strstr(a.argv[k], "virtio-net"));
        NB_CHECK(!strstr(a.argv[k], "user,"));
    }
    nb_qemu_argv_free(&a);
    NB_CHECK(a.argv == NULL);
    nb_qemu_argv_free(&a); /* twice is fine */
}

static void test_argv_microvm(void)
{
    nb_qemu_spec_t s = base_spec();
    nb_qemu_argv_t a;
    s.tsc_khz = 2096013;
    s.cpus = 2;
    s.memory_mib = 256;
    s.disk = "/vms/box1/disk.qcow2";
    s.disk_is_root = 1;
    s.cmdline = "loglevel=4";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK_EQ_INT(a.machine, NB_QEMU_MACHINE_MICROVM);
    const char *m = opt_value(&a, "-machine", "microvm");
    NB_CHECK(m && !strstr(m, "pit=off")); /* TCG needs the PIT */
    NB_CHECK(opt_value(&a, "-device", "virtio-serial-device") != NULL);
    NB_CHECK(opt_value(&a, "-device", "virtio-blk-device,drive=disk0") != NULL);
    NB_CHECK(opt_value(&a, "-drive", "file=/vms/box1/disk.qcow2,if=none,id=disk0,format=qcow2"));
    const char *app = opt_value(&a, "-append", "console=ttyS0");
    NB_CHECK(app && strstr(app, " tsc_early_khz=2096013"));
    NB_CHECK(app && strstr(app, " nilbox.root=/dev/vda"));
    NB_CHECK(app && strstr(app, " loglevel=4"));
    NB_CHECK(opt_value(&a, "-smp", "2") != NULL);
    NB_CHECK(opt_value(&a, "-m", "256M") != NULL);
    NB_CHECK(opt_value(&a, "-name", "guest=box1,process=nilbox-vm-box1") != NULL);
    nb_qemu_argv_free(&a);

    /* Forced KVM: host CPU, no legacy timers, no TSC hint. */
    s.accel = NB_QEMU_ACCEL_KVM;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK_EQ_INT(a.accel, NB_QEMU_ACCEL_KVM);
    NB_CHECK(opt_value(&a, "-accel", "kvm") != NULL);
    /* The nested-safe model, exactly (the KVM probe uses the same). */
    NB_CHECK_STR(opt_value(&a, "-cpu", "host"), NB_QEMU_KVM_CPU);
    NB_CHECK(strstr(NB_QEMU_KVM_CPU, "-arch-capabilities") && strstr(NB_QEMU_KVM_CPU, "-vmx"));
    m = opt_value(&a, "-machine", "microvm");
    NB_CHECK_STR(m, NB_QEMU_KVM_MICROVM);
    NB_CHECK(m && strstr(m, "pit=off") && strstr(m, "pic=off"));
    app = opt_value(&a, "-append", "console=ttyS0");
    NB_CHECK(app && !strstr(app, "tsc_early_khz"));
    nb_qemu_argv_free(&a);

    /* A CPU model override goes in as one argument; junk is refused. */
    s.kvm_cpu = "host,-arch-capabilities";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK_STR(opt_value(&a, "-cpu", "host"), "host,-arch-capabilities");
    nb_qemu_argv_free(&a);
    s.kvm_cpu = "host -netdev user";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), NB_EINVAL);
    s.kvm_cpu = "";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), NB_EINVAL);
    s.kvm_cpu = NULL;
    /* TCG ignores it and uses "max". */
    s.accel = NB_QEMU_ACCEL_TCG;
    s.kvm_cpu = "host";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK_STR(opt_value(&a, "-cpu", ""), NB_QEMU_TCG_CPU);
    nb_qemu_argv_free(&a);
    s.kvm_cpu = NULL;

    /* Forced q35 even with a TSC frequency. */
    s.accel = NB_QEMU_ACCEL_TCG;
    s.machine = NB_QEMU_MACHINE_Q35;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK(opt_value(&a, "-device", "virtio-blk-pci,drive=disk0") != NULL);
    nb_qemu_argv_free(&a);

    /* AUTO accel follows /dev/kvm. */
    s.accel = NB_QEMU_ACCEL_AUTO;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK_EQ_INT(a.accel, nb_qemu_kvm_usable() ? NB_QEMU_ACCEL_KVM : NB_QEMU_ACCEL_TCG);
    nb_qemu_argv_free(&a);
}

/* The folder mapping's shared data area: a shared file-backed memory
 * object shown as ivshmem-plain; microvm gets its PCIe bus for it; no
 * device without a file; bad sizes refused; a comma in the path escaped. */
static void test_argv_shm(void)
{
    nb_qemu_spec_t s = base_spec();
    nb_qemu_argv_t a;
    s.tsc_khz = 2096013;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK(!strstr(opt_value(&a, "-machine", "microvm"), "pcie"));
    NB_CHECK(find(&a, "-object") < 0);
    NB_CHECK(opt_value(&a, "-device", "ivshmem") == NULL);
    nb_qemu_argv_free(&a);

    s.shm_file = "/run/nb/vms/box1/share,x.shm";
    s.shm_size = 32u << 20;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    const char *m = opt_value(&a, "-machine", "microvm");
    NB_CHECK(m && strstr(m, ",pcie=on"));
    NB_CHECK_STR(opt_value(&a, "-object", "memory-backend-file"),
                 "memory-backend-file,id=nbshm,share=on,mem-path=/run/nb/vms/box1/share,,x.shm,"
                 "size=33554432");
    NB_CHECK_STR(opt_value(&a, "-device", "ivshmem"), "ivshmem-plain,memdev=nbshm");
    nb_qemu_argv_free(&a);

    s.accel = NB_QEMU_ACCEL_KVM;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    m = opt_value(&a, "-machine", "microvm");
    NB_CHECK(m && strstr(m, "pit=off") && strstr(m, ",pcie=on"));
    nb_qemu_argv_free(&a);

    s.machine = NB_QEMU_MACHINE_Q35; /* a PCI machine: the device alone */
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK(opt_value(&a, "-device", "ivshmem-plain,memdev=nbshm") != NULL);
    NB_CHECK(opt_value(&a, "-machine", "q35") != NULL &&
             !strstr(opt_value(&a, "-machine", "q35"), "pcie"));
    nb_qemu_argv_free(&a);

    size_t bad[] = {0, 1000, (32u << 20) + 4096, (size_t)2 << 30};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s.shm_size = bad[i];
        NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), NB_EINVAL);
    }
    s.shm_size = 32u << 20;
    s.shm_file = "/run/a\nb.shm";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), NB_EINVAL);
}

static void test_argv_escaping_and_errors(void)
{
    nb_qemu_spec_t s = base_spec();
    nb_qemu_argv_t a;
    s.qmp_socket = "/tmp/a,b/qmp.sock";
    s.key_file = "/tmp/k,ey";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    NB_CHECK(find(&a, "socket,id=qmp0,path=/tmp/a,,b/qmp.sock,server=on,wait=off") > 0);
    NB_CHECK(find(&a, "name=opt/nilbox/key,file=/tmp/k,,ey") > 0);
    nb_qemu_argv_free(&a);

    nb_qemu_spec_t b;
    a.argv = (char **)1; /* cleared on entry */
    b = base_spec();
    b.name = "a b";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    NB_CHECK(a.argv == NULL);
    b = base_spec();
    b.name = "this-name-is-much-too-long-for-a-vm-0123456789012345678901234567890";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.key_file = NULL;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.kernel = NULL;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.console_log = "/tmp/evil\nlog";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.cmdline = "nilbox.key=00112233";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.cmdline = "quiet\x1b[2J";
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.disk_is_root = 1;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.cpus = 1000;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    b = base_spec();
    b.memory_mib = 16;
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&b, &a), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_qemu_build_argv(NULL, &a), NB_EINVAL);
}

/* The key goes to a 0600 file, and never into argv. */
static void test_key_file_not_in_argv(void)
{
    uint8_t key[32];
    char hex[65];
    nb_qemu_spec_t s = base_spec();
    nb_qemu_argv_t a;
    struct stat st;
    randombytes_buf(key, sizeof(key));
    sodium_bin2hex(hex, sizeof(hex), key, sizeof(key));
    unlink(s.key_file);
    NB_CHECK_EQ_INT(nb_qemu_write_key_file(s.key_file, key, sizeof(key)), 0);
    NB_CHECK(stat(s.key_file, &st) == 0);
    NB_CHECK_EQ_INT(st.st_mode & 0777, 0600);
    NB_CHECK_EQ_INT(st.st_size, 32);
    NB_CHECK_EQ_INT(nb_qemu_write_key_file(s.key_file, key, sizeof(key)), -EEXIST);
    NB_CHECK_EQ_INT(nb_qemu_build_argv(&s, &a), 0);
    for (size_t i = 0; i < a.argc; i++) {
        NB_CHECK(!strstr(a.argv[i], hex));
        NB_CHECK(!memmem(a.argv[i], strlen(a.argv[i]), key, 8));
    }
    nb_qemu_argv_free(&a);
    unlink(s.key_file);
}

static void test_find_running(void)
{
    char pf[256], buf[32];
    int pid = -1;
    path(pf, sizeof(pf), "x.pid");
    NB_CHECK_EQ_INT(nb_qemu_find_running(pf, "/tmp/q.sock", &pid), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(pid, 0);
    /* Our own pid is alive but not a QEMU with that socket. */
    FILE *f = fopen(pf, "w");
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    NB_CHECK_EQ_INT(nb_qemu_find_running(pf, "/tmp/q.sock", &pid), NB_ENOTFOUND);
    f = fopen(pf, "w");
    fputs("garbage\n", f);
    fclose(f);
    NB_CHECK_EQ_INT(nb_qemu_find_running(pf, "/tmp/q.sock", &pid), NB_ENOTFOUND);
    snprintf(buf, sizeof(buf), "%d", 0x3ffffff0);
    f = fopen(pf, "w");
    fputs(buf, f);
    fclose(f);
    NB_CHECK_EQ_INT(nb_qemu_find_running(pf, "/tmp/q.sock", &pid), NB_ENOTFOUND);
    unlink(pf);
}

static void test_tsc(void)
{
    unsigned khz = 1;
    int r = nb_qemu_host_tsc_khz(&khz);
    if (r == 0)
        NB_CHECK(khz >= 100000 && khz <= 10000000);
    else
        NB_CHECK(r == NB_EUNSUPPORTED && khz == 0);
}

/* ---- images ---- */

static void write_file(const char *p, const char *data, size_t len)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    NB_CHECK(fd >= 0);
    NB_CHECK(write(fd, data, len) == (ssize_t)len);
    close(fd);
}

static void sha_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[32];
    crypto_hash_sha256(md, (const unsigned char *)data, len);
    sodium_bin2hex(out, 65, md, 32);
}

static void make_image(const char *dir, const char *extra_artifact)
{
    char p[512], m[2048], h1[65], h2[65];
    mkdir(dir, 0755);
    snprintf(p, sizeof(p), "%s/vmlinux", dir);
    write_file(p, "KERNEL", 6);
    snprintf(p, sizeof(p), "%s/initramfs.img", dir);
    write_file(p, "INITRD!", 7);
    sha_hex("KERNEL", 6, h1);
    sha_hex("INITRD!", 7, h2);
    snprintf(m, sizeof(m),
             "{\"name\": \"tiny\", \"format\": 1, \"recipe\": \"abc\", \"root\": \"initramfs\","
             " \"kernel_image\": \"vmlinux\", \"kernel\": {\"release\": \"6.1.0-56-amd64\"},"
             " \"artifacts\": {\"vmlinux\": {\"size\": 6, \"sha256\": \"%s\"},"
             " \"initramfs.img\": {\"size\": 7, \"sha256\": \"%s\"}%s}}",
             h1, h2, extra_artifact ? extra_artifact : "");
    snprintf(p, sizeof(p), "%s/manifest.json", dir);
    write_file(p, m, strlen(m));
}

static void test_image_manifest(void)
{
    char home[256], dir[512], p[600];
    nb_image_t img;
    snprintf(home, sizeof(home), "%s/home", g_dir);
    mkdir(home, 0755);
    snprintf(dir, sizeof(dir), "%s/images", home);
    mkdir(dir, 0755);
    NB_CHECK_EQ_INT(nb_image_dir(home, "tiny", dir, sizeof(dir)), 0);
    NB_CHECK_EQ_INT(nb_image_dir(home, "../etc", p, sizeof(p)), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_image_dir(home, "Tiny", p, sizeof(p)), NB_EINVAL);
    NB_CHECK(nb_image_valid_name("debian") && !nb_image_valid_name("") &&
             !nb_image_valid_name("-x") && !nb_image_valid_name("a/b"));

    NB_CHECK_EQ_INT(nb_image_load(dir, &img), NB_ENOTFOUND); /* not built */
    make_image(dir, NULL);
    NB_CHECK_EQ_INT(nb_image_load(dir, &img), 0);
    NB_CHECK_STR(img.name, "tiny");
    NB_CHECK_STR(img.kernel_release, "6.1.0-56-amd64");
    snprintf(p, sizeof(p), "%s/vmlinux", dir);
    NB_CHECK_STR(img.kernel, p);
    snprintf(p, sizeof(p), "%s/initramfs.img", dir);
    NB_CHECK_STR(img.initrd, p);
    NB_CHECK_STR(img.disk, "");
    NB_CHECK_EQ_INT(img.disk_is_root, 0);
    NB_CHECK_EQ_INT(nb_image_verify(dir), 0);

    /* Same size, other bytes: only verify notices. */
    snprintf(p, sizeof(p), "%s/vmlinux", dir);
    write_file(p, "KERNEl", 6);
    NB_CHECK_EQ_INT(nb_image_load(dir, &img), 0);
    NB_CHECK_EQ_INT(nb_image_verify(dir), NB_ECRYPTO);
    /* Truncated artifact. */
    write_file(p, "KERN", 4);
    NB_CHECK_EQ_INT(nb_image_load(dir, &img), NB_ESTATE);
    NB_CHECK_STR(img.kernel, "");
    /* An artifact name that walks out of the folder. */
    make_image(dir, ", \"../x\": {\"size\": 1, \"sha256\": \"00\"}");
    NB_CHECK_EQ_INT(nb_image_load(dir, &img), NB_EPARSE);
    /* Not JSON. */
    snprintf(p, sizeof(p), "%s/manifest.json", dir);
    write_file(p, "{\"name\": ", 9);
    NB_CHECK_EQ_INT(nb_image_load(dir, &img), NB_EPARSE);
}

static void test_disks(void)
{
    char base[256], ov[256], cmd[700];
    uint64_t sz = 0;
    path(base, sizeof(base), "base.qcow2");
    path(ov, sizeof(ov), "vm.qcow2");
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 '%s' 64M", base);
    NB_CHECK(system(cmd) == 0);
    NB_CHECK_EQ_INT(nb_image_disk_size(base, &sz), 0);
    NB_CHECK_EQ_INT(sz, 64ull << 20);
    NB_CHECK_EQ_INT(nb_image_overlay_create(NULL, "relative.qcow2", ov, 0), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_image_overlay_create(NULL, base, ov, 0), 0);
    NB_CHECK_EQ_INT(nb_image_disk_size(ov, &sz), 0);
    NB_CHECK_EQ_INT(sz, 64ull << 20);
    NB_CHECK_EQ_INT(nb_image_overlay_create(NULL, base, ov, 0), -EEXIST);
    NB_CHECK_EQ_INT(nb_image_disk_resize(NULL, ov, 128ull << 20), 0);
    NB_CHECK_EQ_INT(nb_image_disk_size(ov, &sz), 0);
    NB_CHECK_EQ_INT(sz, 128ull << 20);
    NB_CHECK_EQ_INT(nb_image_disk_resize(NULL, ov, 32ull << 20), NB_EINVAL); /* never shrinks */
    NB_CHECK_EQ_INT(nb_image_disk_size(ov, &sz), 0);
    NB_CHECK_EQ_INT(sz, 128ull << 20);
    unlink(ov);
    /* Overlay bigger than its base from the start. */
    NB_CHECK_EQ_INT(nb_image_overlay_create(NULL, base, ov, 1ull << 30), 0);
    NB_CHECK_EQ_INT(nb_image_disk_size(ov, &sz), 0);
    NB_CHECK_EQ_INT(sz, 1ull << 30);
    NB_CHECK_EQ_INT(nb_image_disk_size(g_dir, &sz), -EISDIR);
    unlink(ov);
    unlink(base);
}

static int argv_find(char **v, const char *s)
{
    for (int i = 0; v[i]; i++)
        if (strcmp(v[i], s) == 0)
            return i;
    return -1;
}

static void test_probe_argv(void)
{
    char **v = NULL;
    NB_CHECK_EQ_INT(nb_kvm_probe_argv("/usr/bin/qemu-system-x86_64", "/img/vmlinux",
                                      "/img/initramfs.img", NB_QEMU_KVM_CPU, &v),
                    0);
    NB_CHECK_STR(v[0], "/usr/bin/qemu-system-x86_64");
    int i = argv_find(v, "-accel");
    NB_CHECK(i > 0 && strcmp(v[i + 1], "kvm") == 0);
    /* Same machine and CPU as a VM under KVM: that is what the probe tests. */
    i = argv_find(v, "-machine");
    NB_CHECK(i > 0 && strcmp(v[i + 1], NB_QEMU_KVM_MICROVM) == 0);
    i = argv_find(v, "-cpu");
    NB_CHECK(i > 0 && strcmp(v[i + 1], NB_QEMU_KVM_CPU) == 0);
    i = argv_find(v, "-initrd");
    NB_CHECK(i > 0 && strcmp(v[i + 1], "/img/initramfs.img") == 0);
    i = argv_find(v, "-serial");
    NB_CHECK(i > 0 && strcmp(v[i + 1], "stdio") == 0);
    i = argv_find(v, "-nic");
    NB_CHECK(i > 0 && strcmp(v[i + 1], "none") == 0);
    NB_CHECK(argv_find(v, "-nodefaults") > 0 && argv_find(v, "-no-user-config") > 0);
    i = argv_find(v, "-append");
    NB_CHECK(i > 0 && strstr(v[i + 1], "loglevel=7") && !strstr(v[i + 1], "quiet"));
    for (int k = 0; v[k]; k++)
        NB_CHECK(!strstr(v[k], "netdev") && !strstr(v[k], "virtio-net"));
    nb_accel_argv_free(v);
    /* No initrd: no -initrd; bad paths refused. */
    NB_CHECK_EQ_INT(nb_kvm_probe_argv(NULL, "/img/vmlinux", NULL, "host", &v), 0);
    NB_CHECK_STR(v[0], "qemu-system-x86_64");
    NB_CHECK(argv_find(v, "-initrd") < 0);
    nb_accel_argv_free(v);
    NB_CHECK_EQ_INT(nb_kvm_probe_argv(NULL, "/img/vm\nlinux", NULL, "host", &v), NB_EINVAL);
    NB_CHECK(v == NULL);
    NB_CHECK_EQ_INT(nb_kvm_probe_argv(NULL, "/img/vmlinux", NULL, "host x", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_kvm_probe_argv(NULL, NULL, NULL, "host", &v), NB_EINVAL);
}

static void test_accel_parse(void)
{
    nb_qemu_accel_t a = NB_QEMU_ACCEL_TCG;
    NB_CHECK_EQ_INT(nb_accel_parse("auto", &a), 0);
    NB_CHECK_EQ_INT(a, NB_QEMU_ACCEL_AUTO);
    NB_CHECK_EQ_INT(nb_accel_parse("kvm", &a), 0);
    NB_CHECK_EQ_INT(a, NB_QEMU_ACCEL_KVM);
    NB_CHECK_EQ_INT(nb_accel_parse("tcg", &a), 0);
    NB_CHECK_EQ_INT(a, NB_QEMU_ACCEL_TCG);
    NB_CHECK_EQ_INT(nb_accel_parse("KVM", &a), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_accel_parse("", &a), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_accel_parse("bogus", &a), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_accel_parse("tcg ", &a), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_accel_parse(NULL, &a), NB_EINVAL);
    NB_CHECK_STR(nb_accel_name(NB_QEMU_ACCEL_KVM), "kvm");
    NB_CHECK_STR(nb_accel_name(NB_QEMU_ACCEL_AUTO), "auto");
    setenv("NILBOX_ACCEL", "tcg", 1);
    NB_CHECK_EQ_INT(nb_accel_env_default(&a), 0);
    NB_CHECK_EQ_INT(a, NB_QEMU_ACCEL_TCG);
    setenv("NILBOX_ACCEL", "fast", 1);
    NB_CHECK_EQ_INT(nb_accel_env_default(&a), NB_EINVAL);
    unsetenv("NILBOX_ACCEL");
    NB_CHECK_EQ_INT(nb_accel_env_default(&a), 0);
    NB_CHECK_EQ_INT(a, NB_QEMU_ACCEL_AUTO);
    /* NILBOX_KVM_CPU: plain values only. */
    setenv("NILBOX_KVM_CPU", "EPYC,-svm", 1);
    NB_CHECK_STR(nb_kvm_cpu_model(), "EPYC,-svm");
    setenv("NILBOX_KVM_CPU", "host -S", 1);
    NB_CHECK_STR(nb_kvm_cpu_model(), NB_QEMU_KVM_CPU);
    unsetenv("NILBOX_KVM_CPU");
}

static void test_error_line(void)
{
    char out[200];
    const char *msr = "2026-12-04T15:40:00.123456Z qemu-system-x86_64: warning: host doesn't "
                      "support requested feature\n"
                      "2026-12-04T15:40:00.223456Z qemu-system-x86_64: error: failed to set MSR "
                      "0x10a to 0x2000c0ab\n"
                      "qemu-system-x86_64: ../target/i386/kvm/kvm.c:3052: kvm_put_msrs: Assertion "
                      "`ret == cpu->kvm_msr_buf->nmsrs' failed.\n";
    NB_CHECK_EQ_INT(nb_qemu_error_line(msr, strlen(msr), out, sizeof out), 1);
    NB_CHECK_STR(out, "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c0ab");
    const char *warn = "qemu-system-x86_64: error: real one\n"
                       "qemu-system-x86_64: warning: recovered from a read error\n";
    NB_CHECK_EQ_INT(nb_qemu_error_line(warn, strlen(warn), out, sizeof out), 1);
    NB_CHECK_STR(out, "qemu-system-x86_64: error: real one");
    const char *kie = "KVM internal error. Suberror: 1\nemulation failure\nEAX=00000000 "
                      "EBX=00000000\nEFER=0000000000000000\n\n";
    NB_CHECK_EQ_INT(nb_qemu_error_line(kie, strlen(kie), out, sizeof out), 1);
    NB_CHECK_STR(out, "KVM internal error. Suberror: 1");
    /* No "error" line: the last non-empty one; control bytes neutralised. */
    const char *plain = "starting\nqemu: terminating on signal 15 \x1b[31m\n  \n";
    NB_CHECK_EQ_INT(nb_qemu_error_line(plain, strlen(plain), out, sizeof out), 1);
    NB_CHECK_STR(out, "qemu: terminating on signal 15 ?[31m");
    NB_CHECK_EQ_INT(nb_qemu_error_line("\n\n", 2, out, sizeof out), 0);
    NB_CHECK_STR(out, "");
    NB_CHECK_EQ_INT(nb_qemu_error_line(NULL, 0, out, sizeof out), 0);
    char small[8];
    NB_CHECK_EQ_INT(nb_qemu_error_line("an ERROR here\n", 14, small, sizeof small), 1);
    NB_CHECK_STR(small, "an ERRO");
    /* From a log file, from an offset: an earlier boot's error is not this one's. */
    char p[256];
    path(p, sizeof p, "qemu.log");
    FILE *f = fopen(p, "w");
    NB_CHECK(f != NULL);
    fputs("qemu-system-x86_64: error: old boot\n", f);
    long off = ftell(f);
    fputs("qemu-system-x86_64: terminating on signal 15 from pid 1\n", f);
    fclose(f);
    NB_CHECK_EQ_INT(nb_qemu_log_error_line(p, off, out, sizeof out), 1);
    NB_CHECK_STR(out, "qemu-system-x86_64: terminating on signal 15 from pid 1");
    NB_CHECK_EQ_INT(nb_qemu_log_error_line(p, 0, out, sizeof out), 1);
    NB_CHECK_STR(out, "qemu-system-x86_64: error: old boot");
    path(p, sizeof p, "missing.log");
    NB_CHECK_EQ_INT(nb_qemu_log_error_line(p, 0, out, sizeof out), -ENOENT);
}

/* A stand-in QEMU for the probe: `--version` prints VERSION; otherwise it
 * acts as MODE says: "abort" (QEMU's MSR error and SIGABRT), "boot" (the
 * kernel's init line on the console) or "hang". */
static void write_fake_qemu(const char *p, const char *version, const char *mode)
{
    FILE *f = fopen(p, "w");
    NB_CHECK(f != NULL);
    if (!f)
        return;
    fprintf(f,
            "#!/bin/sh\n"
            "if [ \"$1\" = --version ]; then echo '%s'; exit 0; fi\n"
            "echo \"$@\" > \"$0.args\"\n"
            "case %s in\n"
            "abort) echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c0ab' >&2;\n"
            "  echo 'qemu-system-x86_64: kvm.c:3052: kvm_put_msrs: Assertion failed.' >&2;\n"
            "  kill -ABRT $$ ;;\n"
            "boot) echo '[    0.9] Run /init as init process'; sleep 30 ;;\n"
            "hang) exec sleep 30 ;;\n"
            "warn) echo 'qemu-system-x86_64: warning: MSR error ignored' >&2; sleep 0.2;\n"
            "  echo 'Run /init as init process'; sleep 30 ;;\n"
            "esac\n",
            version, mode);
    fclose(f);
    chmod(p, 0700);
}

static void test_kvm_status(void)
{
    char qemu[256], kernel[256], cache[256], args[300];
    nb_kvm_status_t st;
    path(qemu, sizeof qemu, "fake-qemu");
    path(kernel, sizeof kernel, "vmlinux");
    path(cache, sizeof cache, NB_KVM_CACHE_FILE);
    snprintf(args, sizeof args, "%s.args", qemu);
    FILE *f = fopen(kernel, "w");
    if (f)
        fclose(f);
    nb_kvm_probe_opts_t o = {.home = g_dir, .qemu = qemu, .kernel = kernel, .timeout_ms = 3000};

    /* No device: "no kvm" at once, QEMU never runs. */
    setenv("NILBOX_KVM_DEVICE", "/nonexistent/kvm", 1);
    write_fake_qemu(qemu, "QEMU emulator version 9.9.9", "abort");
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_ABSENT);
    NB_CHECK(strstr(st.detail, "/nonexistent/kvm") != NULL);
    NB_CHECK(access(args, F_OK) < 0);
    NB_CHECK(access(cache, F_OK) < 0);

    /* A device that opens; QEMU aborts under KVM: broken, with its line. */
    setenv("NILBOX_KVM_DEVICE", "/dev/null", 1);
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_BROKEN);
    NB_CHECK_EQ_INT(st.cached, 0);
    NB_CHECK_STR(st.detail, "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c0ab");
    NB_CHECK(access(args, F_OK) == 0);
    struct stat sb;
    NB_CHECK(stat(cache, &sb) == 0 && (sb.st_mode & 0777) == 0600);
    /* Same key: the cache answers, QEMU is not started again. */
    unlink(args);
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_BROKEN);
    NB_CHECK_EQ_INT(st.cached, 1);
    NB_CHECK(access(args, F_OK) < 0);

    /* A new QEMU version is a new key: probe again, and now it boots. */
    write_fake_qemu(qemu, "QEMU emulator version 10.0.0", "boot");
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_OK);
    NB_CHECK_EQ_INT(st.cached, 0);
    NB_CHECK(st.probe_secs < 2.5); /* the marker ends it, not the 30 s sleep */
    NB_CHECK(access(args, F_OK) == 0);
    /* A VM that failed under KVM anyway marks the host broken for this key. */
    NB_CHECK_EQ_INT(nb_kvm_record_broken(g_dir, qemu, "KVM internal error. Suberror: 1"), 0);
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_BROKEN);
    NB_CHECK_STR(st.detail, "KVM internal error. Suberror: 1");

    /* QEMU's warnings do not fail the probe, even when they say "error". */
    write_fake_qemu(qemu, "QEMU emulator version 10.0.3", "warn");
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_OK);

    /* A guest that makes no progress: broken after the timeout. */
    write_fake_qemu(qemu, "QEMU emulator version 10.0.1", "hang");
    o.timeout_ms = 500;
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_BROKEN);
    NB_CHECK(strstr(st.detail, "did not start its init") != NULL);
    NB_CHECK(st.probe_secs < 2.0);

    /* No kernel to boot (no tiny image in home): present, not probed... */
    write_fake_qemu(qemu, "QEMU emulator version 10.0.2", "boot");
    o.kernel = NULL;
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_UNPROBED);
    /* ...unless a VM found KVM broken for this key: that still counts. */
    NB_CHECK_EQ_INT(nb_kvm_record_broken(g_dir, qemu, "QEMU killed by signal 6"), 0);
    NB_CHECK_EQ_INT(nb_kvm_status(&o, &st), 0);
    NB_CHECK_EQ_INT(st.state, NB_KVM_BROKEN);
    NB_CHECK_STR(st.detail, "QEMU killed by signal 6");
    unsetenv("NILBOX_KVM_DEVICE");
}

int main(void)
{
    if (sodium_init() < 0 || !mkdtemp(g_dir))
        return 1;
    NB_RUN(test_argv_q35_tcg);
    NB_RUN(test_argv_microvm);
    NB_RUN(test_argv_shm);
    NB_RUN(test_argv_escaping_and_errors);
    NB_RUN(test_key_file_not_in_argv);
    NB_RUN(test_find_running);
    NB_RUN(test_tsc);
    NB_RUN(test_image_manifest);
    NB_RUN(test_disks);
    NB_RUN(test_probe_argv);
    NB_RUN(test_accel_parse);
    NB_RUN(test_error_line);
    NB_RUN(test_kvm_status);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        return 1;
    NB_TEST_MAIN_END();
}
