#include "daemon/vm/qemu.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/log.h"

#define QEMU_DEFAULT_BIN "qemu-system-x86_64"
#define MAX_ARGS 96
#define MAX_CMDLINE 2048
#define MAX_PATH_ARG 4096

typedef struct {
    char **v;
    size_t n;
    int err;
} args_t;

static void add(args_t *a, const char *s)
{
    if (a->err)
        return;
    if (a->n + 1 >= MAX_ARGS) {
        a->err = NB_EINTERNAL;
        return;
    }
    if (!(a->v[a->n] = strdup(s))) {
        a->err = -ENOMEM;
        return;
    }
    a->n++;
}

/* Appends `s` with QEMU's option-string escape: ',' becomes ",,". */
static int buf_escaped(nb_buf_t *b, const char *s)
{
    int r = 0;
    for (; *s && r == 0; s++)
        r = *s == ',' ? nb_buf_append(b, ",,", 2) : nb_buf_append(b, s, 1);
    return r;
}

/* Adds one argument built from a format where each "%E" takes a string to
 * escape and "%s" a string used as is; "%u" an unsigned. */
static void addf(args_t *a, const char *fmt, ...)
{
    nb_buf_t b;
    va_list ap;
    int r = 0;
    if (a->err)
        return;
    nb_buf_init(&b, MAX_PATH_ARG * 2);
    va_start(ap, fmt);
    for (const char *p = fmt; *p && r == 0; p++) {
        if (*p != '%') {
            r = nb_buf_append(&b, p, 1);
            continue;
        }
        p++;
        if (*p == 'E')
            r = buf_escaped(&b, va_arg(ap, const char *));
        else if (*p == 's')
            r = nb_buf_append_str(&b, va_arg(ap, const char *));
        else if (*p == 'u')
            r = nb_buf_printf(&b, "%u", va_arg(ap, unsigned));
        else
            r = NB_EINTERNAL;
    }
    va_end(ap);
    if (r == 0 && !nb_buf_cstr(&b))
        r = -ENOMEM;
    if (r < 0)
        a->err = r;
    else
        add(a, (const char *)b.p);
    nb_buf_free(&b);
}

static int valid_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* Paths reach QEMU inside option strings: no control characters, bounded. */
static int valid_path(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= MAX_PATH_ARG)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* Kernel arguments: printable ASCII only, bounded. The key never goes here
 * (it would show in /proc/cmdline and in ps), so refuse anything that looks
 * like one. */
static int valid_cmdline(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n >= MAX_CMDLINE)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return !s || !strstr(s, "nilbox.key");
}

int nb_qemu_kvm_usable(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

int nb_qemu_host_tsc_khz(unsigned *khz)
{
    *khz = 0;
#if defined(__x86_64__)
    FILE *f = fopen("/proc/cpuinfo", "re");
    char line[8192];
    int constant = 0, nonstop = 0;
    if (!f)
        return NB_EUNSUPPORTED;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(f);
    if (!constant || !nonstop)
        return NB_EUNSUPPORTED;
    struct timespec t0, t1, d = {0, 50 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC_RAW, &t0);
    uint64_t c0 = __rdtsc();
    while (nanosleep(&d, &d) < 0 && errno == EINTR)
        ;
    uint64_t c1 = __rdtsc();
    clock_gettime(CLOCK_MONOTONIC_RAW, &t1);
    int64_t ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
    if (ns <= 0 || c1 <= c0)
        return NB_EUNSUPPORTED;
    uint64_t k = (uint64_t)((double)(c1 - c0) * 1e6 / (double)ns + 0.5);
    /* Sanity: 100 MHz .. 10 GHz. */
    if (k < 100000 || k > 10000000)
        return NB_EUNSUPPORTED;
    *khz = (unsigned)k;
    return 0;
#else
    return NB_EUNSUPPORTED;
#endif
}

static int bad(const char *what)
{
    nb_log(NB_LOG_ERR, "invalid VM spec: %s", what);
    return NB_EINVAL;
}

int nb_qemu_build_argv(const nb_qemu_spec_t *s, nb_qemu_argv_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!s)
        return NB_EINVAL;
    if (!valid_name(s->name))
        return bad("name must be 1-63 of [A-Za-z0-9_.-]");
    if (!valid_path(s->kernel))
        return bad("kernel path");
    if (s->initrd && !valid_path(s->initrd))
        return bad("initrd path");
    if (s->disk && !valid_path(s->disk))
        return bad("disk path");
    if (s->disk_is_root && !s->disk)
        return bad("root disk requested without a disk");
    if (!valid_path(s->mux_socket) || !valid_path(s->key_file) || !valid_path(s->qmp_socket) ||
        !valid_path(s->console_log) || !valid_path(s->pidfile))
        return bad("socket, key, console log and pidfile paths are required");
    if (s->qemu && !valid_path(s->qemu))
        return bad("qemu binary path");
    if (s->kvm_cpu && (!s->kvm_cpu[0] || strlen(s->kvm_cpu) >= 128 ||
                       strspn(s->kvm_cpu, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "0123456789,_=.+-") != strlen(s->kvm_cpu)))
        return bad("KVM CPU model must be 1-127 of [A-Za-z0-9,_=.+-]");
    if (s->shm_file && (!valid_path(s->shm_file) || s->shm_size < 4096 ||
                        (s->shm_size & (s->shm_size - 1)) || s->shm_size > (1u << 30)))
        return bad("shared area: a path and a power-of-two size of 4 KiB..1 GiB");
    if (!valid_cmdline(s->cmdline))
        return bad("kernel arguments must be printable ASCII, < 2048 bytes");
    unsigned cpus = s->cpus ? s->cpus : 1;
    unsigned mem = s->memory_mib ? s->memory_mib : 512;
    if (cpus > 64)
        return bad("cpus must be 1..64");
    if (mem < 64 || mem > 1024 * 1024)
        return bad("memory must be 64 MiB..1 TiB");

    nb_qemu_accel_t accel = s->accel;
    if (accel == NB_QEMU_ACCEL_AUTO)
        accel = nb_qemu_kvm_usable() ? NB_QEMU_ACCEL_KVM : NB_QEMU_ACCEL_TCG;
    nb_qemu_machine_t machine = s->machine;
    if (machine == NB_QEMU_MACHINE_AUTO)
        machine = (accel == NB_QEMU_ACCEL_KVM || s->tsc_khz) ? NB_QEMU_MACHINE_MICROVM
                                                             : NB_QEMU_MACHINE_Q35;
    int microvm = machine == NB_QEMU_MACHINE_MICROVM;
    int kvm = accel == NB_QEMU_ACCEL_KVM;

    args_t a = {calloc(MAX_ARGS, sizeof(char *)), 0, 0};
    if (!a.v)
        return -ENOMEM;
    add(&a, s->qemu ? s->qemu : QEMU_DEFAULT_BIN);
    add(&a, "-name");
    addf(&a, "guest=%E,process=nilbox-vm-%E", s->name, s->name);
    add(&a, "-machine");
    if (microvm)
        /* No option ROMs (direct kernel boot needs none). Under KVM the
         * legacy PIT/PIC are useless (kvmclock, in-kernel LAPIC); under TCG
         * the kernel needs the PIT for its timer. */
        /* The shared data area is a PCI device: microvm's PCIe host
         * (ECAM, described by ACPI) only when there is one. */
        addf(&a, "%s%s", kvm ? NB_QEMU_KVM_MICROVM : NB_QEMU_TCG_MICROVM,
             s->shm_file ? ",pcie=on" : "");
    else
        add(&a, "q35,vmport=off");
    add(&a, "-accel");
    add(&a, kvm ? "kvm" : "tcg");
    add(&a, "-cpu");
    add(&a, kvm ? (s->kvm_cpu ? s->kvm_cpu : NB_QEMU_KVM_CPU) : NB_QEMU_TCG_CPU);
    add(&a, "-smp");
    addf(&a, "%u", cpus);
    add(&a, "-m");
    addf(&a, "%uM", mem);
    /* Nothing the user's QEMU config or QEMU's defaults would add: no NIC,
     * no display, no default serial/parallel/monitor devices. */
    add(&a, "-nodefaults");
    add(&a, "-no-user-config");
    add(&a, "-nic");
    add(&a, "none");
    add(&a, "-display");
    add(&a, "none");
    /* QEMU's seccomp filter: no exec, no privilege changes. */
    add(&a, "-sandbox");
    add(&a, NB_QEMU_SANDBOX);
    add(&a, "-msg");
    add(&a, "timestamp=on");

    add(&a, "-kernel");
    add(&a, s->kernel);
    if (s->initrd) {
        add(&a, "-initrd");
        add(&a, s->initrd);
    }
    {
        char extra[64] = "";
        if (microvm && !kvm && s->tsc_khz)
            snprintf(extra, sizeof(extra), " tsc_early_khz=%u", s->tsc_khz);
        /* panic=-1 + -no-reboot: a panic or a reboot in the guest ends QEMU
         * (SHUTDOWN event, reason guest-reset); the VM manager decides
         * whether to boot again, with a new key. */
        add(&a, "-append");
        addf(&a, "console=ttyS0 quiet panic=-1%s%s%s%s", extra,
             s->disk_is_root ? " nilbox.root=/dev/vda" : "", s->cmdline && *s->cmdline ? " " : "",
             s->cmdline ? s->cmdline : "");
    }
    add(&a, "-no-reboot");

    add(&a, "-chardev");
    addf(&a, "file,id=con0,path=%E", s->console_log);
    add(&a, "-serial");
    add(&a, "chardev:con0");

    add(&a, "-device");
    add(&a, microvm ? "virtio-serial-device,id=vser0" : "virtio-serial-pci,id=vser0");
    /* QEMU connects to the daemon (not the other way round): a restarted
     * daemon just listens again and QEMU reconnects within a second. */
    add(&a, "-chardev");
    addf(&a, "socket,id=nbmux,path=%E,reconnect=1", s->mux_socket);
    add(&a, "-device");
    add(&a, "virtserialport,bus=vser0.0,chardev=nbmux,name=" NB_QEMU_MUX_PORT);
    add(&a, "-fw_cfg");
    addf(&a, "name=" NB_QEMU_KEY_FWCFG ",file=%E", s->key_file);

    if (s->shm_file) {
        /* Plain memory, no doorbell, no interrupt: the channel stays the
         * only control path; the area carries file data only. */
        add(&a, "-object");
        addf(&a, "memory-backend-file,id=nbshm,share=on,mem-path=%E,size=%u", s->shm_file,
             (unsigned)s->shm_size);
        add(&a, "-device");
        add(&a, "ivshmem-plain,memdev=nbshm");
    }

    add(&a, "-chardev");
    addf(&a, "socket,id=qmp0,path=%E,server=on,wait=off", s->qmp_socket);
    add(&a, "-mon");
    add(&a, "chardev=qmp0,mode=control");

    if (s->disk) {
        add(&a, "-drive");
        addf(&a,
             "file=%E,if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap,"
             "detect-zeroes=unmap",
             s->disk);
        add(&a, "-device");
        add(&a, microvm ? "virtio-blk-device,drive=disk0" : "virtio-blk-pci,drive=disk0");
    }
    add(&a, "-pidfile");
    add(&a, s->pidfile);

    if (a.err) {
        int r = a.err;
        nb_qemu_argv_t tmp = {a.v, a.n, 0, 0};
        nb_qemu_argv_free(&tmp);
        return r;
    }
    out->argv = a.v;
    out->argc = a.n;
    out->machine = machine;
    out->accel = accel;
    return 0;
}

void nb_qemu_argv_free(nb_qemu_argv_t *a)
{
    if (!a || !a->argv)
        return;
    for (size_t i = 0; i < a->argc; i++)
        free(a->argv[i]);
    free(a->argv);
    a->argv = NULL;
    a->argc = 0;
}

int nb_qemu_spawn(uv_loop_t *loop, const nb_qemu_argv_t *a, const char *log_path,
                  uv_process_t *proc, uv_exit_cb exit_cb)
{
    if (!loop || !a || !a->argv || !log_path || !proc)
        return NB_EINVAL;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE; /* /dev/null */
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = fd;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = fd;
    uv_process_options_t o;
    memset(&o, 0, sizeof(o));
    o.file = a->argv[0];
    o.args = a->argv;
    o.exit_cb = exit_cb;
    o.stdio = stdio;
    o.stdio_count = 3;
    /* setsid(): QEMU leaves our session and process group, so neither a
     * terminal hangup nor a signal to the daemon's group reaches it, and
     * with no pipe to us it never sees EPIPE when the daemon is gone. */
    o.flags = UV_PROCESS_DETACHED;
    int r = uv_spawn(loop, proc, &o);
    close(fd);
    if (r < 0)
        nb_log(NB_LOG_ERR, "cannot start %s: %s", a->argv[0], uv_strerror(r));
    return r;
}

int nb_qemu_write_key_file(const char *path, const uint8_t *key, size_t len)
{
    if (!path || !key || !len)
        return NB_EINVAL;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, key + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int r = n < 0 ? -errno : -EIO;
            close(fd);
            unlink(path);
            return r;
        }
        off += (size_t)n;
    }
    if (close(fd) < 0) {
        int r = -errno;
        unlink(path);
        return r;
    }
    return 0;
}

/* Reads at most cap-1 bytes of a small file; NUL-terminates. Returns the
 * byte count or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    while (off + 1 < cap) {
        ssize_t n = read(fd, buf + off, cap - 1 - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int r = -errno;
            close(fd);
            return r;
        }
        if (n == 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    buf[off] = '\0';
    return (ssize_t)off;
}

int nb_qemu_find_running(const char *pidfile, const char *qmp_socket, int *pid)
{
    char buf[64], path[64];
    *pid = 0;
    if (!pidfile || !qmp_socket)
        return NB_EINVAL;
    ssize_t n = read_small(pidfile, buf, sizeof(buf));
    if (n < 0)
        return n == -ENOENT ? NB_ENOTFOUND : (int)n;
    char *end;
    errno = 0;
    long p = strtol(buf, &end, 10);
    if (errno || end == buf || p <= 1 || p > 0x3fffffff || (*end && *end != '\n'))
        return NB_ENOTFOUND;
    if (kill((pid_t)p, 0) < 0 && errno == ESRCH)
        return NB_ENOTFOUND;
    snprintf(path, sizeof(path), "/proc/%ld/cmdline", p);
    /* QEMU command lines are a few KiB; 64 KiB is plenty. */
    size_t cap = 65536;
    char *cl = malloc(cap);
    if (!cl)
        return -ENOMEM;
    n = read_small(path, cl, cap);
    int r = NB_ENOTFOUND;
    if (n > 0) {
        /* argv[0] must be a QEMU, and one argument must name our QMP socket
         * exactly as nb_qemu_build_argv wrote it. */
        nb_buf_t want;
        nb_buf_init(&want, MAX_PATH_ARG * 2 + 64);
        const char *a0 = strrchr(cl, '/') ? strrchr(cl, '/') + 1 : cl;
        if (nb_buf_append_str(&want, "socket,id=qmp0,path=") == 0 &&
            buf_escaped(&want, qmp_socket) == 0 &&
            nb_buf_append_str(&want, ",server=on,wait=off") == 0 && nb_buf_cstr(&want) &&
            strncmp(a0, "qemu-system", 11) == 0) {
            for (size_t off = 0; off < (size_t)n; off += strlen(cl + off) + 1) {
                if (strcmp(cl + off, (const char *)want.p) == 0) {
                    *pid = (int)p;
                    r = 0;
                    break;
                }
            }
        }
        nb_buf_free(&want);
    }
    free(cl);
    return r;
}
