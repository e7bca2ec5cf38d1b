#include "host/accel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "host/image.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

extern char **environ;

/* What the kernel prints when it hands over to the initramfs' init
 * ("Run /init as init process", KERN_INFO): the whole kernel boot ran
 * under KVM, which is what breaks on bad nested hosts. */
#define PROBE_MARKER "as init process"
#define PROBE_CONSOLE_MAX (256u * 1024)
#define PROBE_STDERR_MAX (64u * 1024)
#define VERSION_TIMEOUT_MS 5000

/* One probe at a time per process: two VMs starting together share it. */
static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;

int nb_accel_parse(const char *s, nb_qemu_accel_t *out)
{
    if (!s)
        return NB_EINVAL;
    if (!strcmp(s, "auto"))
        *out = NB_QEMU_ACCEL_AUTO;
    else if (!strcmp(s, "kvm"))
        *out = NB_QEMU_ACCEL_KVM;
    else if (!strcmp(s, "tcg"))
        *out = NB_QEMU_ACCEL_TCG;
    else
        return NB_EINVAL;
    return 0;
}

const char *nb_accel_name(nb_qemu_accel_t a)
{
    return a == NB_QEMU_ACCEL_KVM ? "kvm" : a == NB_QEMU_ACCEL_TCG ? "tcg" : "auto";
}

int nb_accel_env_default(nb_qemu_accel_t *out)
{
    const char *e = getenv("NILBOX_ACCEL");
    *out = NB_QEMU_ACCEL_AUTO;
    if (!e || !e[0])
        return 0;
    return nb_accel_parse(e, out);
}

const char *nb_kvm_device(void)
{
    const char *d = getenv("NILBOX_KVM_DEVICE");
    return d && d[0] == '/' ? d : "/dev/kvm";
}

int nb_kvm_device_usable(char *why, size_t whysz)
{
    const char *dev = nb_kvm_device();
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (why)
            snprintf(why, whysz, "%s: %s", dev, strerror(errno));
        return 0;
    }
    close(fd);
    if (why && whysz)
        why[0] = '\0';
    return 1;
}

const char *nb_kvm_cpu_model(void)
{
    const char *e = getenv("NILBOX_KVM_CPU");
    if (!e || !e[0] || strlen(e) >= 128)
        return NB_QEMU_KVM_CPU;
    for (const char *p = e; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr(",_=.+-", *p)))
            return NB_QEMU_KVM_CPU;
    return e;
}

/* ------------------------------------------------------------ error lines */

/* "2026-12-04T15:40:00.123456Z " from -msg timestamp=on. */
static size_t timestamp_len(const char *s, size_t n)
{
    if (n < 21 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[0] < '0' || s[0] > '9')
        return 0;
    const char *sp = memchr(s, ' ', n < 40 ? n : 40);
    if (!sp || sp == s || sp[-1] != 'Z')
        return 0;
    return (size_t)(sp - s) + 1;
}

static int has_word(const char *s, size_t n, const char *w)
{
    size_t k = strlen(w);
    for (size_t i = 0; i + k <= n; i++)
        if (strncasecmp(s + i, w, k) == 0)
            return 1;
    return 0;
}

/* An error line: says "error", and is not one of QEMU's warnings (which
 * may mention errors it recovered from). */
static int has_error(const char *s, size_t n)
{
    return has_word(s, n, "error") && !has_word(s, n, "warning:");
}

int nb_qemu_error_line(const char *text, size_t len, char *out, size_t outsz)
{
    const char *best = NULL, *last = NULL;
    size_t best_n = 0, last_n = 0;
    if (!outsz)
        return 0;
    out[0] = '\0';
    for (size_t i = 0; text && i < len;) {
        const char *s = text + i;
        const char *nl = memchr(s, '\n', len - i);
        size_t n = nl ? (size_t)(nl - s) : len - i;
        i += n + (nl ? 1 : 0);
        size_t ts = timestamp_len(s, n);
        s += ts;
        n -= ts;
        while (n && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        while (n && (*s == ' ' || *s == '\t')) {
            s++;
            n--;
        }
        if (!n)
            continue;
        last = s;
        last_n = n;
        if (has_error(s, n)) {
            best = s;
            best_n = n;
        }
    }
    if (!best) {
        best = last;
        best_n = last_n;
    }
    if (!best)
        return 0;
    size_t k = 0;
    for (size_t i = 0; i < best_n && k + 1 < outsz; i++) {
        unsigned char c = (unsigned char)best[i];
        out[k++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    out[k] = '\0';
    return 1;
}

int nb_qemu_log_error_line(const char *path, off_t from, char *out, size_t outsz)
{
    struct stat st;
    if (outsz)
        out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    off_t start = from < 0 || from > st.st_size ? 0 : from;
    if (st.st_size - start > 65536)
        start = st.st_size - 65536;
    size_t want = (size_t)(st.st_size - start);
    char *buf = malloc(want + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    ssize_t n = want ? pread(fd, buf, want, start) : 0;
    close(fd);
    int r = n > 0 ? nb_qemu_error_line(buf, (size_t)n, out, outsz) : 0;
    free(buf);
    return r;
}

/* ------------------------------------------------------------ probe argv */

void nb_accel_argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}

static int plain_path(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (!n || n >= 4096)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

int nb_kvm_probe_argv(const char *qemu, const char *kernel, const char *initrd, const char *cpu,
                      char ***argv)
{
    *argv = NULL;
    if ((qemu && !plain_path(qemu)) || !plain_path(kernel) || (initrd && !plain_path(initrd)) ||
        !cpu || !cpu[0] || strchr(cpu, ' '))
        return NB_EINVAL;
    const char *v[] = {
        qemu ? qemu : "qemu-system-x86_64",
        "-name",
        "guest=nilbox-kvm-probe,process=nilbox-kvm-probe",
        "-machine",
        NB_QEMU_KVM_MICROVM,
        "-accel",
        "kvm",
        "-cpu",
        cpu,
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-nic",
        "none",
        "-display",
        "none",
        "-sandbox",
        NB_QEMU_SANDBOX,
        "-kernel",
        kernel,
        "-append",
        /* Not quiet: the marker is a KERN_INFO line. */
        "console=ttyS0 loglevel=7 panic=-1",
        "-no-reboot",
        "-serial",
        "stdio",
        initrd ? "-initrd" : NULL,
        initrd,
        NULL,
    };
    size_t n = sizeof v / sizeof v[0];
    char **a = calloc(n, sizeof *a);
    if (!a)
        return -ENOMEM;
    for (size_t i = 0; i < n && v[i]; i++) {
        if (!(a[i] = strdup(v[i]))) {
            nb_accel_argv_free(a);
            return -ENOMEM;
        }
    }
    *argv = a;
    return 0;
}

/* ------------------------------------------------------------ child I/O */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct {
    char *p;
    size_t n, cap;
} sbuf_t;

static void sbuf_add(sbuf_t *b, const char *s, size_t n)
{
    if (b->n + n > b->cap) {
        /* Keep the tail: the marker and the last error are at the end. */
        size_t keep = b->cap / 2;
        if (b->n > keep) {
            memmove(b->p, b->p + b->n - keep, keep);
            b->n = keep;
        }
        if (n > b->cap - b->n) {
            s += n - (b->cap - b->n);
            n = b->cap - b->n;
        }
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* Spawns argv with stdin /dev/null, stdout and stderr on pipes. */
static int spawn_piped(char *const *argv, int *pid, int *outfd, int *errfd)
{
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    if (pipe2(po, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(pe, O_CLOEXEC) < 0) {
        int r = -errno;
        close(po[0]);
        close(po[1]);
        return r;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    posix_spawnattr_init(&at);
    /* Its own process group: a Ctrl-C to the CLI's group does not reach
     * it half-way, and we always kill and reap it ourselves. */
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&at, 0);
    pid_t p;
    int r = posix_spawnp(&p, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(po[1]);
    close(pe[1]);
    if (r != 0) {
        close(po[0]);
        close(pe[0]);
        return -r;
    }
    *pid = p;
    *outfd = po[0];
    *errfd = pe[0];
    return 0;
}

static void reap(int pid, int kill_it, int *status)
{
    if (kill_it) {
        kill(-pid, SIGKILL); /* its group: a wrapper script's children too */
        kill(pid, SIGKILL);
    }
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
}

/* First line of `qemu --version`. */
static int qemu_version(const char *qemu, char *out, size_t outsz)
{
    char *argv[] = {(char *)(qemu ? qemu : "qemu-system-x86_64"), "--version", NULL};
    int pid, fo, fe, st = 0;
    out[0] = '\0';
    int r = spawn_piped(argv, &pid, &fo, &fe);
    if (r < 0)
        return r;
    close(fe);
    char buf[512];
    size_t n = 0;
    uint64_t end = now_ms() + VERSION_TIMEOUT_MS;
    while (n + 1 < sizeof buf) {
        struct pollfd p = {fo, POLLIN, 0};
        uint64_t t = now_ms();
        if (t >= end || poll(&p, 1, (int)(end - t)) <= 0)
            break;
        ssize_t k = read(fo, buf + n, sizeof buf - 1 - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    close(fo);
    reap(pid, 1, &st);
    buf[n] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
    if (!buf[0])
        return NB_EINTERNAL;
    size_t len = strlen(buf);
    if (len >= outsz)
        len = outsz - 1;
    memcpy(out, buf, len);
    out[len] = '\0';
    return 0;
}

static void host_cpu_model(char *out, size_t outsz)
{
    char line[512];
    snprintf(out, outsz, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        char *c = strchr(line, ':');
        if (c) {
            c++;
            while (*c == ' ' || *c == '\t')
                c++;
            c[strcspn(c, "\n")] = '\0';
            snprintf(out, outsz, "%s", c);
        }
        break;
    }
    fclose(f);
}

/* "kernel release | QEMU version | host CPU | our -cpu": a change in any of
 * them can change whether KVM works, so it probes again. */
static int cache_key(const char *qemu, char *out, size_t outsz)
{
    struct utsname u;
    char ver[256], cpu[256];
    int r = qemu_version(qemu, ver, sizeof ver);
    if (r < 0)
        return r;
    host_cpu_model(cpu, sizeof cpu);
    if (uname(&u) < 0)
        snprintf(u.release, sizeof u.release, "unknown");
    int n = snprintf(out, outsz, "%s|%s|%s|%s", u.release, ver, cpu, nb_kvm_cpu_model());
    return n < 0 || (size_t)n >= outsz ? NB_ETOOBIG : 0;
}

/* ------------------------------------------------------------ cache */

static int cache_path(const char *home, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%s/" NB_KVM_CACHE_FILE, home);
    return n < 0 || (size_t)n >= outsz ? NB_ETOOBIG : 0;
}

/* 1 with st/detail filled when the cache holds an answer for `key`. */
static int cache_read(const char *home, const char *key, nb_kvm_status_t *out)
{
    char path[4200];
    if (!home || cache_path(home, path, sizeof path) < 0)
        return 0;
    json_error_t e;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!j)
        return 0;
    const char *k = nb_json_str(j, "key"), *state = nb_json_str(j, "state");
    const char *detail = nb_json_str(j, "detail");
    int hit = 0;
    if (k && state && !strcmp(k, key) && (!strcmp(state, "ok") || !strcmp(state, "broken"))) {
        out->state = !strcmp(state, "ok") ? NB_KVM_OK : NB_KVM_BROKEN;
        snprintf(out->detail, sizeof out->detail, "%s", detail ? detail : "");
        out->cached = 1;
        hit = 1;
    }
    json_decref(j);
    return hit;
}

static int cache_write(const char *home, const char *key, const nb_kvm_status_t *st)
{
    char path[4200], tmp[4300];
    if (!home || cache_path(home, path, sizeof path) < 0)
        return NB_EINVAL;
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    json_t *j = json_pack("{s:s, s:s, s:s, s:I}", "key", key, "state",
                          st->state == NB_KVM_OK ? "ok" : "broken", "detail", st->detail,
                          "probed_ms", (json_int_t)time(NULL) * 1000);
    if (!j)
        return -ENOMEM;
    char *s = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    if (!s)
        return -ENOMEM;
    int r = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        r = -errno;
    } else {
        size_t len = strlen(s);
        if (write(fd, s, len) != (ssize_t)len || write(fd, "\n", 1) != 1)
            r = -EIO;
        if (close(fd) < 0 && !r)
            r = -errno;
        if (!r && rename(tmp, path) < 0)
            r = -errno;
        if (r)
            unlink(tmp);
    }
    free(s);
    if (r < 0)
        nb_log(NB_LOG_WARN, "cannot write %s: %s", path, nb_strerror(r));
    return r;
}

/* ------------------------------------------------------------ probe */

static void probe_run(char *const *argv, unsigned timeout_ms, nb_kvm_status_t *out)
{
    int pid, fo, fe, status = 0;
    uint64_t t0 = now_ms(), end = t0 + timeout_ms;
    sbuf_t con = {malloc(PROBE_CONSOLE_MAX + 1), 0, PROBE_CONSOLE_MAX};
    sbuf_t err = {malloc(PROBE_STDERR_MAX + 1), 0, PROBE_STDERR_MAX};
    if (!con.p || !err.p) {
        out->state = NB_KVM_UNPROBED;
        snprintf(out->detail, sizeof out->detail, "out of memory");
        goto done_nochild;
    }
    con.p[0] = err.p[0] = '\0';
    int r = spawn_piped(argv, &pid, &fo, &fe);
    if (r < 0) {
        out->state = NB_KVM_UNPROBED;
        snprintf(out->detail, sizeof out->detail, "cannot run %s: %s", argv[0], strerror(-r));
        goto done_nochild;
    }
    int open_o = 1, open_e = 1, verdict = 0; /* 1 ok, 2 error line, 3 timeout */
    while ((open_o || open_e) && !verdict) {
        struct pollfd p[2] = {{open_o ? fo : -1, POLLIN, 0}, {open_e ? fe : -1, POLLIN, 0}};
        uint64_t t = now_ms();
        if (t >= end) {
            verdict = 3;
            break;
        }
        int k = poll(p, 2, (int)(end - t));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            break;
        char buf[4096];
        for (int i = 0; i < 2; i++) {
            if (!p[i].revents)
                continue;
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                if (i == 0)
                    open_o = 0;
                else
                    open_e = 0;
                continue;
            }
            sbuf_add(i == 0 ? &con : &err, buf, (size_t)n);
        }
        if (strstr(con.p, PROBE_MARKER)) {
            verdict = 1;
        } else if (err.n && memchr(err.p, '\n', err.n)) {
            /* A complete error line from QEMU: an abort follows, or the
             * guest is stopped (KVM internal error) and would sit there. */
            char line[300];
            const char *lastnl = err.p + err.n;
            while (lastnl > err.p && lastnl[-1] != '\n')
                lastnl--;
            if (nb_qemu_error_line(err.p, (size_t)(lastnl - err.p), line, sizeof line) &&
                has_error(line, strlen(line)))
                verdict = 2;
        }
    }
    close(fo);
    close(fe);
    reap(pid, 1, &status);
    out->probe_secs = (double)(now_ms() - t0) / 1000.0;
    if (verdict == 1) {
        out->state = NB_KVM_OK;
        snprintf(out->detail, sizeof out->detail, "the probe booted under KVM in %.1f s",
                 out->probe_secs);
        goto done;
    }
    out->state = NB_KVM_BROKEN;
    char line[300];
    int have = nb_qemu_error_line(err.p, err.n, line, sizeof line);
    if (verdict == 3)
        snprintf(out->detail, sizeof out->detail,
                 "the guest did not start its init under KVM within %.1f s%s%s",
                 timeout_ms / 1000.0, have ? "; QEMU said: " : "", have ? line : "");
    else if (have)
        snprintf(out->detail, sizeof out->detail, "%s", line);
    else if (WIFSIGNALED(status) && verdict != 2)
        snprintf(out->detail, sizeof out->detail, "QEMU was killed by signal %d under KVM",
                 WTERMSIG(status));
    else
        snprintf(out->detail, sizeof out->detail,
                 "QEMU exited (status %d) before the guest booted under KVM",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
done:
    nb_log(NB_LOG_INFO, "KVM probe: %s (%s)", out->state == NB_KVM_OK ? "ok" : "unusable",
           out->detail);
done_nochild:
    free(con.p);
    free(err.p);
}

int nb_kvm_status(const nb_kvm_probe_opts_t *o, nb_kvm_status_t *out)
{
    memset(out, 0, sizeof *out);
    if (!nb_kvm_device_usable(out->detail, sizeof out->detail)) {
        out->state = NB_KVM_ABSENT;
        return 0;
    }
    char key[1024];
    pthread_mutex_lock(&probe_lock);
    int r = cache_key(o->qemu, key, sizeof key);
    if (r < 0) {
        pthread_mutex_unlock(&probe_lock);
        out->state = NB_KVM_UNPROBED;
        snprintf(out->detail, sizeof out->detail, "not probed: cannot run %s --version",
                 o->qemu ? o->qemu : "qemu-system-x86_64");
        return 0;
    }
    /* The cache first: a failure recorded by a VM counts even where there
     * is no tiny image to probe with. */
    if (!o->force && cache_read(o->home, key, out)) {
        pthread_mutex_unlock(&probe_lock);
        return 0;
    }
    nb_image_t img;
    const char *kernel = o->kernel, *initrd = o->initrd;
    if (!kernel) {
        char dir[4200];
        if (!o->home || nb_image_dir(o->home, "tiny", dir, sizeof dir) < 0 ||
            nb_image_load(dir, &img) < 0) {
            pthread_mutex_unlock(&probe_lock);
            out->state = NB_KVM_UNPROBED;
            snprintf(out->detail, sizeof out->detail,
                     "not probed: the tiny image is not built ('nilbox image build tiny')");
            return 0;
        }
        kernel = img.kernel;
        initrd = img.initrd[0] ? img.initrd : NULL;
    }
    char **argv = NULL;
    if ((r = nb_kvm_probe_argv(o->qemu, kernel, initrd, nb_kvm_cpu_model(), &argv)) < 0) {
        pthread_mutex_unlock(&probe_lock);
        if (r == -ENOMEM)
            return r;
        out->state = NB_KVM_UNPROBED;
        snprintf(out->detail, sizeof out->detail, "not probed: unusable kernel or QEMU path");
        return 0;
    }
    probe_run(argv, o->timeout_ms ? o->timeout_ms : NB_KVM_PROBE_TIMEOUT_MS, out);
    nb_accel_argv_free(argv);
    if (out->state == NB_KVM_OK || out->state == NB_KVM_BROKEN)
        cache_write(o->home, key, out);
    pthread_mutex_unlock(&probe_lock);
    return 0;
}

int nb_kvm_record_broken(const char *home, const char *qemu, const char *error)
{
    char key[1024];
    nb_kvm_status_t st = {.state = NB_KVM_BROKEN};
    snprintf(st.detail, sizeof st.detail, "%s",
             error && error[0] ? error : "a VM failed under KVM");
    pthread_mutex_lock(&probe_lock);
    int r = cache_key(qemu, key, sizeof key);
    if (r == 0)
        r = cache_write(home, key, &st);
    pthread_mutex_unlock(&probe_lock);
    return r;
}
