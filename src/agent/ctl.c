/* The `ctl` service: one JSON call per stream (protocol.md §6): ping,
 * metrics, hostname, write_file (atomic, allowlisted prefixes, no symlink
 * traversal below the prefix), poweroff. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <sodium.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define FILE_MAX (16u << 20)
#define MAX_WRITERS 4
#define PATH_MAX_LEN 4095
#define NAME_MAX_LEN 200

enum { C_PING, C_METRICS, C_HOSTNAME, C_WRITE_FILE, C_POWEROFF };

typedef struct {
    nb_agent_t *a;
    nb_muxsess_stream_t *st;
    int call;
    /* write_file */
    nb_buf_t content;
    char *path;
    unsigned mode;
    long long uid, gid;
    int mkdirs;
    uv_work_t work;
    int working;
    int err;
    char msg[256];
} ctl_t;

static unsigned writers;

static void ctl_free(ctl_t *c)
{
    if (c->call == C_WRITE_FILE)
        writers--;
    nb_buf_free(&c->content);
    free(c->path);
    c->a->live--;
    free(c);
}

/* Sends `res` (consumed) on STDIO and FIN. */
static void respond(ctl_t *c, json_t *res)
{
    nb_buf_t b;
    nb_buf_init(&b, 1u << 20);
    if (!res || nb_json_dump(res, &b) < 0 || nb_muxsess_stream_write(c->st, 0, b.p, b.len) < 0 ||
        nb_muxsess_stream_fin(c->st) < 0) {
        nb_muxsess_stream_reset(c->st, NB_MUX_E_INTERNAL, "cannot send the response");
        c->st = NULL;
    }
    nb_buf_free(&b);
    json_decref(res);
}

static json_t *fail(const char *msg)
{
    return json_pack("{s:b,s:s}", "ok", 0, "error", msg);
}

/* ------------------------------------------------------------- metrics */

static int read_small(const char *path, char *buf, size_t sz)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t o = 0;
    while (o + 1 < sz) {
        ssize_t n = read(fd, buf + o, sz - 1 - o);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        o += (size_t)n;
    }
    close(fd);
    buf[o] = 0;
    return (int)o;
}

static unsigned long long meminfo(const char *buf, const char *key)
{
    const char *p = strstr(buf, key);
    if (!p)
        return 0;
    return strtoull(p + strlen(key), NULL, 10) * 1024;
}

static json_t *metrics(void)
{
    static char buf[65536];
    json_t *res = json_pack("{s:b}", "ok", 1);
    if (!res)
        return NULL;
    if (read_small("/proc/stat", buf, sizeof buf) > 0) {
        unsigned long long v[8] = {0};
        sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]);
        int count = 0;
        for (const char *p = buf; (p = strstr(p, "\ncpu")); p++)
            if (p[4] >= '0' && p[4] <= '9')
                count++;
        json_object_set_new(res, "cpu",
                            json_pack("{s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "count", count,
                                      "user", (json_int_t)v[0], "nice", (json_int_t)v[1], "system",
                                      (json_int_t)v[2], "idle", (json_int_t)v[3], "iowait",
                                      (json_int_t)v[4], "irq", (json_int_t)v[5], "softirq",
                                      (json_int_t)v[6], "steal", (json_int_t)v[7]));
    }
    if (read_small("/proc/loadavg", buf, sizeof buf) > 0) {
        double l1 = 0, l5 = 0, l15 = 0;
        unsigned running = 0, total = 0;
        sscanf(buf, "%lf %lf %lf %u/%u", &l1, &l5, &l15, &running, &total);
        json_object_set_new(res, "load", json_pack("[f,f,f]", l1, l5, l15));
        json_object_set_new(res, "procs", json_integer(total));
    }
    if (read_small("/proc/meminfo", buf, sizeof buf) > 0) {
        json_object_set_new(res, "mem",
                            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "total",
                                      (json_int_t)meminfo(buf, "MemTotal:"), "available",
                                      (json_int_t)meminfo(buf, "MemAvailable:"), "free",
                                      (json_int_t)meminfo(buf, "MemFree:"), "buffers",
                                      (json_int_t)meminfo(buf, "Buffers:"), "cached",
                                      (json_int_t)meminfo(buf, "\nCached:"), "swap_total",
                                      (json_int_t)meminfo(buf, "SwapTotal:"), "swap_free",
                                      (json_int_t)meminfo(buf, "SwapFree:")));
    }
    struct statvfs sv;
    if (statvfs("/", &sv) == 0) {
        json_object_set_new(res, "disk",
                            json_pack("{s:s,s:I,s:I,s:I}", "path", "/", "total",
                                      (json_int_t)sv.f_blocks * (json_int_t)sv.f_frsize, "free",
                                      (json_int_t)sv.f_bfree * (json_int_t)sv.f_frsize, "avail",
                                      (json_int_t)sv.f_bavail * (json_int_t)sv.f_frsize));
    }
    if (read_small("/proc/uptime", buf, sizeof buf) > 0)
        json_object_set_new(res, "uptime", json_real(strtod(buf, NULL)));
    return res;
}

/* ----------------------------------------------------------- write_file */

/* Absolute, no empty, "." or ".." components, no trailing slash. */
static int path_normal(const char *p)
{
    size_t n = strlen(p);
    if (n < 2 || n > PATH_MAX_LEN || p[0] != '/' || p[n - 1] == '/')
        return 0;
    for (const char *c = p; *c;) {
        const char *s = c + 1, *e = strchr(s, '/');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if (l == 0 || (l == 1 && s[0] == '.') || (l == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        if (!e)
            break;
        c = e;
    }
    return 1;
}

/* Finds the allowlist entry covering `path`: sets the trusted anchor
 * directory and the part below it. 0 or NB_EDENIED. */
static int allowed(const nb_agent_t *a, const char *path, char *anchor, size_t asz,
                   const char **rel)
{
    for (size_t i = 0; i < a->nallow; i++) {
        const char *pre = a->allow[i];
        size_t n = strlen(pre);
        if (n && pre[n - 1] == '/') {
            if (strlen(path) > n && !strncmp(path, pre, n) && n <= asz) {
                memcpy(anchor, pre, n - 1);
                anchor[n - 1 == 0 ? 1 : n - 1] = 0;
                if (n == 1)
                    anchor[0] = '/';
                *rel = path + n;
                return 0;
            }
        } else if (!strcmp(path, pre)) {
            const char *slash = strrchr(pre, '/');
            size_t dl = (size_t)(slash - pre);
            if (dl + 2 > asz)
                continue;
            memcpy(anchor, pre, dl ? dl : 1);
            anchor[dl ? dl : 1] = 0;
            *rel = slash + 1;
            return 0;
        }
    }
    return NB_EDENIED;
}

static int mkdir_p(const char *dir)
{
    char tmp[PATH_MAX_LEN + 1];
    size_t n = strlen(dir);
    if (n > PATH_MAX_LEN)
        return -ENAMETOOLONG;
    memcpy(tmp, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] == '/' || tmp[i] == 0) {
            char c = tmp[i];
            tmp[i] = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -errno;
            tmp[i] = c;
        }
    }
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Runs on the thread pool. */
static void write_file_work(uv_work_t *req)
{
    ctl_t *c = req->data;
    char anchor[PATH_MAX_LEN + 1], tmp[NAME_MAX_LEN + 40];
    const char *rel = NULL, *what = "open";
    int dfd = -1, fd = -1, r;

    if ((r = allowed(c->a, c->path, anchor, sizeof anchor, &rel)) < 0) {
        snprintf(c->msg, sizeof c->msg, "path is not below an allowed prefix");
        goto out;
    }
    if ((dfd = open(anchor, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 && errno == ENOENT &&
        c->mkdirs && mkdir_p(anchor) == 0)
        dfd = open(anchor, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        r = -errno;
        what = "open the allowed directory";
        goto sys;
    }
    /* Walk below the anchor without following symlinks. */
    const char *comp = rel;
    for (const char *slash; (slash = strchr(comp, '/')); comp = slash + 1) {
        char name[NAME_MAX_LEN + 1];
        size_t l = (size_t)(slash - comp);
        if (l > NAME_MAX_LEN) {
            r = -ENAMETOOLONG;
            what = "walk";
            goto sys;
        }
        memcpy(name, comp, l);
        name[l] = 0;
        int nfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (nfd < 0 && errno == ENOENT && c->mkdirs) {
            if (mkdirat(dfd, name, 0755) < 0 && errno != EEXIST) {
                r = -errno;
                what = "create a directory";
                goto sys;
            }
            nfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (nfd < 0) {
            r = -errno;
            what =
                errno == ELOOP || errno == ENOTDIR ? "walk (symlink or not a directory)" : "walk";
            goto sys;
        }
        close(dfd);
        dfd = nfd;
    }
    if (strlen(comp) > NAME_MAX_LEN) {
        r = -ENAMETOOLONG;
        what = "create";
        goto sys;
    }
    snprintf(tmp, sizeof tmp, ".%s.nbtmp%08x", comp, randombytes_random());
    if ((fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0) {
        r = -errno;
        what = "create";
        goto sys;
    }
    what = "write";
    if ((r = write_all(fd, c->content.p, c->content.len)) < 0)
        goto unlink;
    what = "chmod";
    if (fchmod(fd, c->mode) < 0)
        goto errno_unlink;
    what = "chown";
    if ((c->uid >= 0 || c->gid >= 0) && fchown(fd, (uid_t)c->uid, (gid_t)c->gid) < 0)
        goto errno_unlink;
    what = "fsync";
    if (fsync(fd) < 0)
        goto errno_unlink;
    close(fd);
    fd = -1;
    what = "rename";
    if (renameat(dfd, tmp, dfd, comp) < 0)
        goto errno_unlink;
    (void)fsync(dfd);
    r = 0;
    goto out;
errno_unlink:
    r = -errno;
unlink:
    if (fd >= 0)
        close(fd);
    fd = -1;
    unlinkat(dfd, tmp, 0);
sys:
    snprintf(c->msg, sizeof c->msg, "%s: %s", what, strerror(-r));
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    c->err = r;
}

static void write_file_done(uv_work_t *req, int status)
{
    ctl_t *c = req->data;
    c->working = 0;
    if (!c->st) {
        ctl_free(c);
        return;
    }
    if (status < 0 || c->err < 0) {
        respond(c, fail(status < 0 ? "cancelled" : c->msg));
    } else {
        respond(c, json_pack("{s:b,s:I}", "ok", 1, "bytes", (json_int_t)c->content.len));
    }
    nb_buf_free(&c->content);
}

/* ---------------------------------------------------------------- poweroff */

/* A poweroff that arrives while the image's setup still runs (right after
 * boot: the agent starts first) waits for it up to this long, polling: the
 * setup may be formatting or growing the data disk, and a disk cut off in
 * mke2fs would not mount again. Below the host's 10 s for this step. */
#define POWEROFF_SETUP_WAIT_MS 8000
#define POWEROFF_POLL_MS 50

typedef struct {
    uv_timer_t t;
    nb_agent_t *a;
    uint64_t deadline;
} poweroff_t;

static void on_poweroff_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_poweroff(uv_timer_t *t)
{
    poweroff_t *p = t->data;
    if (p->a->setup_done_file && access(p->a->setup_done_file, F_OK) != 0 &&
        uv_now(t->loop) < p->deadline) {
        uv_timer_start(t, on_poweroff, POWEROFF_POLL_MS, 0);
        return;
    }
    uv_close((uv_handle_t *)t, on_poweroff_closed);
    nb_log(NB_LOG_NOTICE, "powering off on the host's request");
    sync();
    if (access("/run/systemd/system", F_OK) == 0)
        kill(1, SIGRTMIN + 4); /* systemd: orderly poweroff */
    else
        reboot(RB_POWER_OFF);
}

/* ---------------------------------------------------------------- stream */

static void on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    ctl_t *c = ud;
    nb_muxsess_stream_consume(st, d.len); /* buffered below, under FILE_MAX */
    if (c->call != C_WRITE_FILE || chan != NB_MUX_CHAN_STDIO)
        return;
    if (nb_buf_append(&c->content, d.p, d.len) < 0) {
        nb_muxsess_stream_reset(st, NB_MUX_E_BAD_ARGS, "content larger than 16 MiB");
        c->st = NULL;
        if (!c->working)
            ctl_free(c);
    }
}

static void on_fin(nb_muxsess_stream_t *st, void *ud)
{
    ctl_t *c = ud;
    if (c->call != C_WRITE_FILE || c->working)
        return;
    c->work.data = c;
    if (uv_queue_work(c->a->loop, &c->work, write_file_work, write_file_done) == 0)
        c->working = 1;
    else
        respond(c, fail("cannot queue the write"));
}

static void on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    ctl_t *c = ud;
    c->st = NULL;
    if (!c->working)
        ctl_free(c);
}

static const nb_muxsess_stream_cbs_t ctl_cbs = {
    .on_data = on_data, .on_fin = on_fin, .on_close = on_close};

static int valid_hostname(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 63 || h[0] == '-' || h[0] == '.')
        return 0;
    for (const char *p = h; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.'))
            return 0;
    return 1;
}

int nb_agent_ctl_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args)
{
    json_t *j = NULL, *res = NULL;
    char why[200];
    int r, call;
    if ((r = nb_agent_args_object(args, &j, why, sizeof why)) < 0) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, why);
        return 0;
    }
    const char *name = nb_json_str(j, "call");
    if (!name) {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, "missing \"call\"");
        goto out;
    }
    if (!strcmp(name, "ping"))
        call = C_PING;
    else if (!strcmp(name, "metrics"))
        call = C_METRICS;
    else if (!strcmp(name, "hostname"))
        call = C_HOSTNAME;
    else if (!strcmp(name, "write_file"))
        call = C_WRITE_FILE;
    else if (!strcmp(name, "poweroff"))
        call = C_POWEROFF;
    else {
        nb_muxsess_stream_reject(st, NB_MUX_E_BAD_ARGS, "unknown call");
        goto out;
    }

    ctl_t *c = calloc(1, sizeof *c);
    if (!c) {
        r = -ENOMEM;
        goto out;
    }
    c->a = a;
    c->call = call;
    c->uid = c->gid = -1;
    nb_buf_init(&c->content, FILE_MAX);
    a->live++;

    if (call == C_WRITE_FILE) {
        const char *path = nb_json_str(j, "path");
        json_int_t mode = nb_json_int(j, "mode", 0644);
        json_t *ju = json_object_get(j, "uid"), *jg = json_object_get(j, "gid");
        const char *bad = NULL;
        if (!path || !path_normal(path))
            bad = "path must be absolute and normalised";
        else if (mode < 0 || mode > 07777)
            bad = "mode must be 0..4095";
        else if ((ju && (!json_is_integer(ju) || json_integer_value(ju) < 0)) ||
                 (jg && (!json_is_integer(jg) || json_integer_value(jg) < 0)))
            bad = "uid/gid must be non-negative integers";
        else if (writers >= MAX_WRITERS)
            bad = "too many concurrent writes";
        if (!bad) {
            char anchor[PATH_MAX_LEN + 1];
            const char *rel;
            if (allowed(a, path, anchor, sizeof anchor, &rel) < 0)
                bad = "path is not below an allowed prefix";
        }
        if (bad || !(c->path = strdup(path))) {
            nb_muxsess_stream_reject(st, bad ? NB_MUX_E_REFUSED : NB_MUX_E_BUSY,
                                     bad ? bad : "out of memory");
            c->call = C_PING; /* not counted as a writer */
            ctl_free(c);
            goto out;
        }
        writers++;
        c->mode = (unsigned)mode;
        c->uid = ju ? json_integer_value(ju) : -1;
        c->gid = jg ? json_integer_value(jg) : -1;
        c->mkdirs = nb_json_bool(j, "mkdirs", 0);
    }

    c->st = st;
    nb_muxsess_stream_set_cbs(st, &ctl_cbs, c);
    if ((r = nb_muxsess_stream_accept(st)) < 0) {
        c->st = NULL;
        ctl_free(c);
        goto out;
    }
    switch (call) {
    case C_PING:
        res = json_pack("{s:b,s:s}", "ok", 1, "version", "0.1.0");
        break;
    case C_METRICS:
        res = metrics();
        break;
    case C_HOSTNAME: {
        const char *set = nb_json_str(j, "set");
        char hn[256] = "";
        if (set && !a->vm) {
            res = fail("changing the hostname needs --vm");
            break;
        }
        if (set && (!valid_hostname(set) || sethostname(set, strlen(set)) < 0)) {
            res = fail(valid_hostname(set) ? strerror(errno) : "invalid hostname");
            break;
        }
        gethostname(hn, sizeof hn - 1);
        res = json_pack("{s:b,s:s}", "ok", 1, "hostname", hn);
        break;
    }
    case C_POWEROFF:
        if (!a->vm) {
            res = fail("poweroff disabled (the agent runs without --vm)");
            break;
        }
        poweroff_t *po = malloc(sizeof *po);
        if (po) {
            po->a = a;
            uv_timer_init(a->loop, &po->t);
            po->t.data = po;
            po->deadline = uv_now(a->loop) + POWEROFF_SETUP_WAIT_MS;
            uv_timer_start(&po->t, on_poweroff, 300, 0); /* the response leaves first */
            uv_unref((uv_handle_t *)&po->t);
        }
        res = po ? json_pack("{s:b}", "ok", 1) : fail("out of memory");
        break;
    default: /* write_file: waits for the content */
        goto out;
    }
    respond(c, res);
out:
    json_decref(j);
    return r < 0 ? r : 0;
}
