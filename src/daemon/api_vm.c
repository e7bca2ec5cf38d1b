/* Routes of the VM manager (docs/api.md, "VMs"): list, create, inspect,
 * start, stop, restart, remove, resize, settings, console logs and disk
 * snapshots. exec and pty (WebSockets) live in api_vmio.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define LOG_CHUNK_MAX (1u << 20)

void nb_api_vm_reply_err(nb_api_ctx_t *ctx, int r, const char *msg)
{
    if (r == -ENOSPC)
        nb_api_reply_error(ctx, 507, "no-space", "%s", msg ? msg : nb_strerror(r));
    else if (r == NB_EUNSUPPORTED || r == NB_ECLOSED)
        nb_api_reply_error(ctx, 503, "unavailable", "%s", msg ? msg : nb_strerror(r));
    else
        nb_api_reply_errno(ctx, r, msg);
}

static int have_vmm(nb_api_ctx_t *ctx)
{
    if (ctx->d->vmm)
        return 1;
    nb_api_reply_error(ctx, 503, "unavailable", "the VM manager is not running");
    return 0;
}

static void reply_with(nb_api_ctx_t *ctx, int status, int r, const char *msg, json_t *res)
{
    if (r < 0)
        nb_api_vm_reply_err(ctx, r, msg);
    else
        nb_api_reply_json(ctx, status, res ? json_incref(res) : json_object());
}

static void done_200(void *ud, int r, const char *msg, json_t *res)
{
    reply_with(ud, 200, r, msg, res);
}

static void done_201(void *ud, int r, const char *msg, json_t *res)
{
    reply_with(ud, 201, r, msg, res);
}

static void done_202(void *ud, int r, const char *msg, json_t *res)
{
    reply_with(ud, 202, r, msg, res);
}

/* 1 when query flag `name` is "1"/"true"/"" (present), 0 otherwise. */
static int qflag(nb_api_ctx_t *ctx, const char *name)
{
    char v[16];
    if (nb_api_query(ctx, name, v, sizeof v) != 1)
        return 0;
    return !v[0] || !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes");
}

static int body_flag(nb_api_ctx_t *ctx, const char *name)
{
    return nb_json_bool(ctx->body, name, 0) || qflag(ctx, name);
}

/* ------------------------------------------------------------ list / inspect */

static void on_list(nb_api_ctx_t *ctx)
{
    if (have_vmm(ctx))
        nb_api_reply_json(ctx, 200, nb_vmm_list(ctx->d->vmm));
}

static nb_vm_t *vm_or_404(nb_api_ctx_t *ctx)
{
    const char *name = nb_api_param(ctx, "name");
    nb_vm_t *vm = have_vmm(ctx) ? nb_vmm_find(ctx->d->vmm, name) : NULL;
    if (!vm && ctx->d->vmm)
        nb_api_reply_error(ctx, 404, "not-found", "no VM named '%.64s'; see 'nilbox vm ls'", name);
    return vm;
}

static void on_inspect(nb_api_ctx_t *ctx)
{
    nb_vm_t *vm = vm_or_404(ctx);
    if (vm)
        nb_api_reply_json(ctx, 200, nb_vm_json(vm, 1));
}

/* ------------------------------------------------------------ create */

static int size_field(nb_api_ctx_t *ctx, const char *key, uint64_t unit, uint64_t *out)
{
    json_t *v = json_object_get(ctx->body, key);
    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        *out = (uint64_t)json_integer_value(v) * unit;
        return 0;
    }
    if (json_is_string(v) && nb_vm_parse_size(json_string_value(v), out) == 0 && *out)
        return 0;
    return NB_EINVAL;
}

static int parse_restart(const char *s, nb_vm_restart_t *out)
{
    if (!strcmp(s, "never") || !strcmp(s, "no"))
        *out = NB_VM_RESTART_NEVER;
    else if (!strcmp(s, "on-failure"))
        *out = NB_VM_RESTART_ON_FAILURE;
    else
        return NB_EINVAL;
    return 0;
}

static int valid_accel(const char *s)
{
    return !strcmp(s, "auto") || !strcmp(s, "kvm") || !strcmp(s, "tcg");
}

#define USER_RULE                                                                                  \
    "'user' must be a guest account name: a lowercase letter or '_', then up to 31 lowercase "     \
    "letters, digits, '_' or '-' (e.g. agent or root)"

static void on_create(nb_api_ctx_t *ctx)
{
    nb_vm_spec_t s;
    uint64_t mem = 0;
    if (!have_vmm(ctx))
        return;
    memset(&s, 0, sizeof s);
    const char *name = nb_json_str(ctx->body, "name"), *image = nb_json_str(ctx->body, "image");
    const char *restart = nb_json_str(ctx->body, "restart");
    if (!name || !name[0]) {
        nb_api_reply_error(ctx, 422, "invalid", "'name' is required");
        return;
    }
    if (strlen(name) >= sizeof s.name || (image && strlen(image) >= sizeof s.image)) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'%.40s...' is not a valid VM name: start with a lowercase letter, "
                           "then up to 31 lowercase letters, digits or '-'",
                           name);
        return;
    }
    nb_vm_fmt(s.name, sizeof s.name, "%s", name);
    nb_vm_fmt(s.image, sizeof s.image, "%s", image ? image : "tiny");
    json_int_t cpus = nb_json_int(ctx->body, "cpus", 1);
    if (cpus < 1 || cpus > 64) {
        nb_api_reply_error(ctx, 422, "invalid", "'cpus' must be 1..64");
        return;
    }
    s.cpus = (unsigned)cpus;
    /* memory: an integer is MiB, a string may carry a unit ("1G"). */
    json_t *mv = json_object_get(ctx->body, "memory");
    if (json_is_integer(mv)) {
        mem = (uint64_t)json_integer_value(mv) << 20;
    } else if (mv && !json_is_null(mv) &&
               (!json_is_string(mv) || nb_vm_parse_size(json_string_value(mv), &mem) < 0)) {
        mem = 1;
    } else if (json_is_string(mv) && mem < (1u << 20)) {
        mem <<= 20; /* a bare number in a string is MiB too */
    }
    if (mv && !json_is_null(mv) && (mem < (64u << 20) || mem > (1ull << 40))) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'memory' must be 64M..1T (a number of MiB or a size like 1G)");
        return;
    }
    s.memory_mib = (unsigned)(mem >> 20);
    if (size_field(ctx, "disk", 1, &s.disk_bytes) < 0 ||
        (s.disk_bytes && (s.disk_bytes < (1u << 20) || s.disk_bytes % 512))) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "'disk' must be a size like 2G or 512M (at least 1M)");
        return;
    }
    if (restart && parse_restart(restart, &s.restart) < 0) {
        nb_api_reply_error(ctx, 422, "invalid", "'restart' must be \"never\" or \"on-failure\"");
        return;
    }
    json_t *acc = json_object_get(ctx->body, "accel");
    if (acc && !json_is_null(acc)) {
        if (!json_is_string(acc) || !valid_accel(json_string_value(acc))) {
            nb_api_reply_error(ctx, 422, "invalid", "'accel' must be \"auto\", \"kvm\" or \"tcg\"");
            return;
        }
        nb_vm_fmt(s.accel, sizeof s.accel, "%s", json_string_value(acc));
    }
    json_t *uv = json_object_get(ctx->body, "user");
    if (uv && !json_is_null(uv)) {
        if (!json_is_string(uv) || !nb_vm_valid_user(json_string_value(uv))) {
            nb_api_reply_error(ctx, 422, "invalid", "%s", USER_RULE);
            return;
        }
        nb_vm_fmt(s.user, sizeof s.user, "%s", json_string_value(uv));
    }
    nb_vmm_create(ctx->d->vmm, &s, done_201, ctx);
}

/* ------------------------------------------------------------ lifecycle */

static void on_start(nb_api_ctx_t *ctx)
{
    if (!have_vmm(ctx))
        return;
    int wait = body_flag(ctx, "wait");
    nb_vmm_start(ctx->d->vmm, nb_api_param(ctx, "name"), wait, wait ? done_200 : done_202, ctx);
}

static void on_stop(nb_api_ctx_t *ctx)
{
    if (have_vmm(ctx))
        nb_vmm_stop(ctx->d->vmm, nb_api_param(ctx, "name"), body_flag(ctx, "force"), done_200, ctx);
}

static void on_restart(nb_api_ctx_t *ctx)
{
    if (!have_vmm(ctx))
        return;
    int wait = body_flag(ctx, "wait");
    nb_vmm_restart(ctx->d->vmm, nb_api_param(ctx, "name"), wait, wait ? done_200 : done_202, ctx);
}

static void on_remove(nb_api_ctx_t *ctx)
{
    if (have_vmm(ctx))
        nb_vmm_remove(ctx->d->vmm, nb_api_param(ctx, "name"), body_flag(ctx, "force"), done_200,
                      ctx);
}

static void on_resize(nb_api_ctx_t *ctx)
{
    uint64_t bytes;
    if (!have_vmm(ctx))
        return;
    json_t *dv = json_object_get(ctx->body, "disk");
    if (!dv || json_is_null(dv)) {
        nb_api_reply_error(ctx, 422, "invalid", "'disk' is required: a size like 4G");
        return;
    }
    if (size_field(ctx, "disk", 1, &bytes) < 0 || !bytes) {
        if (json_is_string(dv))
            nb_api_reply_error(ctx, 422, "invalid",
                               "'%.40s' is not a valid disk size: a number of bytes or a number "
                               "with K, M, G or T (binary units), e.g. 4G or 8192M",
                               json_string_value(dv));
        else
            nb_api_reply_error(ctx, 422, "invalid",
                               "'disk' must be a size: a number of bytes or a string like 4G");
        return;
    }
    nb_vmm_resize(ctx->d->vmm, nb_api_param(ctx, "name"), bytes, done_200, ctx);
}

/* After the other settings of a PATCH: the default user. */
static void patch_user_done(void *ud, int r, const char *msg, json_t *res)
{
    nb_api_ctx_t *ctx = ud;
    const char *user = nb_json_str(ctx->body, "user");
    if (r < 0 || !user)
        reply_with(ctx, 200, r, msg, res);
    else
        nb_vmm_set_user(ctx->d->vmm, nb_api_param(ctx, "name"), user, done_200, ctx);
}

static void on_patch(nb_api_ctx_t *ctx)
{
    nb_vm_restart_t p;
    json_t *rv = json_object_get(ctx->body, "restart"), *av = json_object_get(ctx->body, "accel");
    json_t *uv = json_object_get(ctx->body, "user");
    if (!have_vmm(ctx))
        return;
    if (uv && (!json_is_string(uv) || !nb_vm_valid_user(json_string_value(uv)))) {
        nb_api_reply_error(ctx, 422, "invalid", "%s", USER_RULE);
        return;
    }
    if (uv && !rv && !av) {
        nb_vmm_set_user(ctx->d->vmm, nb_api_param(ctx, "name"), json_string_value(uv), done_200,
                        ctx);
        return;
    }
    if ((!rv && !av) ||
        (rv && (!json_is_string(rv) || parse_restart(json_string_value(rv), &p) < 0)) ||
        (av && (!json_is_string(av) || !valid_accel(json_string_value(av))))) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "settings: 'restart' (\"never\" or \"on-failure\"), 'accel' "
                           "(\"auto\", \"kvm\" or \"tcg\") and 'user' (a guest account)");
        return;
    }
    nb_vmm_set(ctx->d->vmm, nb_api_param(ctx, "name"), rv ? &p : NULL,
               av ? json_string_value(av) : NULL, patch_user_done, ctx);
}

/* ------------------------------------------------------------ logs */

typedef struct {
    uv_work_t w;
    nb_api_ctx_t *ctx;
    char path[1024];
    int64_t offset, tail;
    int64_t size, start;
    int err;
    char *data;
    size_t len;
} logjob_t;

static void log_work(uv_work_t *w)
{
    logjob_t *j = (logjob_t *)w;
    struct stat st;
    int fd = open(j->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) < 0) {
        j->err = errno == ENOENT ? 0 : -errno;
        if (fd >= 0)
            close(fd);
        return;
    }
    j->size = st.st_size;
    int64_t start = j->offset;
    if (j->tail >= 0)
        start = j->size > j->tail ? j->size - j->tail : 0;
    if (start > j->size)
        start = 0; /* a new boot started a new log */
    j->start = start;
    size_t want = (size_t)(j->size - start);
    if (want > LOG_CHUNK_MAX)
        want = LOG_CHUNK_MAX;
    j->data = malloc(want + 1);
    if (!j->data) {
        j->err = -ENOMEM;
        close(fd);
        return;
    }
    ssize_t n = want ? pread(fd, j->data, want, start) : 0;
    close(fd);
    j->len = n > 0 ? (size_t)n : 0;
}

/* The console carries guest bytes: keep valid UTF-8, turn the rest into
 * '?', so that the JSON string is valid. The CLI strips control bytes. */
static char *utf8_clean(const char *p, size_t n)
{
    char *o = malloc(n + 1);
    size_t k = 0;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)p[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + len <= n && c != 0;
        for (size_t t = 1; ok && t < len; t++)
            ok = ((unsigned char)p[i + t] >> 6) == 2;
        if (ok && len == 2 && c < 0xc2)
            ok = 0;
        if (!ok) {
            o[k++] = '?';
            i++;
            continue;
        }
        memcpy(o + k, p + i, len);
        k += len;
        i += len;
    }
    o[k] = '\0';
    return o;
}

static void log_done(uv_work_t *w, int status)
{
    logjob_t *j = (logjob_t *)w;
    if (j->err < 0) {
        nb_api_reply_errno(j->ctx, j->err, "cannot read the console log");
    } else {
        char *clean = utf8_clean(j->data ? j->data : "", j->len);
        nb_api_reply_json(j->ctx, 200,
                          json_pack("{s:s, s:I, s:I, s:I}", "data", clean ? clean : "", "offset",
                                    (json_int_t)j->start, "next",
                                    (json_int_t)(j->start + (int64_t)j->len), "size",
                                    (json_int_t)j->size));
        free(clean);
    }
    free(j->data);
    free(j);
}

static void on_logs(nb_api_ctx_t *ctx)
{
    char v[32];
    nb_vm_t *vm = vm_or_404(ctx);
    if (!vm)
        return;
    logjob_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    j->ctx = ctx;
    j->tail = -1;
    /* ?source=qemu: QEMU's own stderr (qemu.log) instead of the console. */
    int qemu = nb_api_query(ctx, "source", v, sizeof v) == 1 && !strcmp(v, "qemu");
    nb_vm_fmt(j->path, sizeof j->path, "%s",
              qemu ? nb_vm_qemu_log_path(vm) : nb_vm_console_path(vm));
    if (nb_api_query(ctx, "offset", v, sizeof v) == 1)
        j->offset = strtoll(v, NULL, 10);
    if (nb_api_query(ctx, "tail", v, sizeof v) == 1)
        j->tail = strtoll(v, NULL, 10);
    if (j->offset < 0)
        j->offset = 0;
    if (uv_queue_work(ctx->d->loop, &j->w, log_work, log_done) < 0) {
        free(j);
        nb_api_reply_errno(ctx, NB_EINTERNAL, NULL);
    }
}

/* ------------------------------------------------------------ snapshots */

static void on_snap_list(nb_api_ctx_t *ctx)
{
    if (have_vmm(ctx))
        nb_vmm_snapshot(ctx->d->vmm, nb_api_param(ctx, "name"), NB_VM_SNAP_LIST, NULL, done_200,
                        ctx);
}

static void on_snap_save(nb_api_ctx_t *ctx)
{
    const char *snap = nb_json_str(ctx->body, "name");
    if (!have_vmm(ctx))
        return;
    if (!snap) {
        nb_api_reply_error(ctx, 422, "invalid", "'name' (the snapshot's name) is required");
        return;
    }
    nb_vmm_snapshot(ctx->d->vmm, nb_api_param(ctx, "name"), NB_VM_SNAP_SAVE, snap, done_201, ctx);
}

static void on_snap_restore(nb_api_ctx_t *ctx)
{
    if (have_vmm(ctx))
        nb_vmm_snapshot(ctx->d->vmm, nb_api_param(ctx, "name"), NB_VM_SNAP_RESTORE,
                        nb_api_param(ctx, "snap"), done_200, ctx);
}

static void on_snap_delete(nb_api_ctx_t *ctx)
{
    if (have_vmm(ctx))
        nb_vmm_snapshot(ctx->d->vmm, nb_api_param(ctx, "name"), NB_VM_SNAP_DELETE,
                        nb_api_param(ctx, "snap"), done_200, ctx);
}

const nb_api_route_t nb_api_routes_vm[] = {
    {"GET", "/v1/vms", on_list, 0},
    {"POST", "/v1/vms", on_create, 0},
    {"GET", "/v1/vms/{name}", on_inspect, 0},
    {"PATCH", "/v1/vms/{name}", on_patch, 0},
    {"DELETE", "/v1/vms/{name}", on_remove, 0},
    {"POST", "/v1/vms/{name}/start", on_start, 0},
    {"POST", "/v1/vms/{name}/stop", on_stop, 0},
    {"POST", "/v1/vms/{name}/restart", on_restart, 0},
    {"POST", "/v1/vms/{name}/resize", on_resize, 0},
    {"GET", "/v1/vms/{name}/logs", on_logs, 0},
    {"GET", "/v1/vms/{name}/snapshots", on_snap_list, 0},
    {"POST", "/v1/vms/{name}/snapshots", on_snap_save, 0},
    {"POST", "/v1/vms/{name}/snapshots/{snap}/restore", on_snap_restore, 0},
    {"DELETE", "/v1/vms/{name}/snapshots/{snap}", on_snap_delete, 0},
    {NULL, NULL, NULL, 0},
};
