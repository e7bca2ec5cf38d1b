/* Routes of the guest images (docs/api.md, "Images"): list, remove and
 * build (the daemon's image builder runs it: imgbuild.h).
 *
 * Where things are: the recipes in $NILBOX_IMAGES_DIR, else the source
 * tree this daemon was built from (NB_IMAGES_SRC), else
 * /usr/share/nilbox/images; the guest agent in $NILBOX_AGENT, else next to
 * nilboxd, else ../agent/nilbox-agent (a build tree), else
 * NB_AGENT_BUILD_PATH. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/api.h"
#include "daemon/base/events.h"
#include "daemon/imgbuild.h"
#include "host/image.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#ifndef NB_IMAGES_SRC
#define NB_IMAGES_SRC "/usr/share/nilbox/images"
#endif
#ifndef NB_AGENT_BUILD_PATH
#define NB_AGENT_BUILD_PATH "/usr/lib/nilbox/nilbox-agent"
#endif

static void images_src(char *out, size_t outsz)
{
    const char *e = getenv("NILBOX_IMAGES_DIR");
    nb_vm_fmt(out, outsz, "%s", e && e[0] ? e : NB_IMAGES_SRC);
}

static int agent_path(char *out, size_t outsz)
{
    const char *e = getenv("NILBOX_AGENT");
    char exe[PATH_MAX];
    size_t n = sizeof exe;
    if (e && e[0]) {
        nb_vm_fmt(out, outsz, "%s", e);
        return access(out, X_OK) == 0 ? 0 : NB_ENOTFOUND;
    }
    if (uv_exepath(exe, &n) == 0) {
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            nb_vm_fmt(out, outsz, "%s/nilbox-agent", exe);
            if (access(out, X_OK) == 0)
                return 0;
            nb_vm_fmt(out, outsz, "%s/../agent/nilbox-agent", exe);
            if (access(out, X_OK) == 0)
                return 0;
        }
    }
    nb_vm_fmt(out, outsz, "%s", NB_AGENT_BUILD_PATH);
    return access(out, X_OK) == 0 ? 0 : NB_ENOTFOUND;
}

/* ------------------------------------------------------------ list */

typedef struct {
    uv_work_t w;
    nb_api_ctx_t *ctx;
    char home[1024], src[1024];
    json_t *res; /* built on the pool thread, handed over in done */
} list_job_t;

static int64_t dir_bytes(const char *dir)
{
    int64_t total = 0;
    DIR *dp = opendir(dir);
    struct dirent *de;
    while (dp && (de = readdir(dp))) {
        char p[2048];
        struct stat st;
        nb_vm_fmt(p, sizeof p, "%s/%s", dir, de->d_name);
        if (de->d_name[0] != '.' && lstat(p, &st) == 0 && S_ISREG(st.st_mode))
            total += (int64_t)st.st_blocks * 512;
    }
    if (dp)
        closedir(dp);
    return total;
}

static void add_image(json_t *arr, const char *name, const char *dir, int recipe)
{
    nb_image_t img;
    int r = nb_image_load(dir, &img);
    json_t *o = json_pack("{s:s, s:b, s:b}", "name", name, "built", r == 0, "recipe", recipe);
    if (r == 0) {
        json_object_set_new(o, "root", json_string(img.disk_is_root ? "disk" : "initramfs"));
        json_object_set_new(o, "kernel_release", json_string(img.kernel_release));
        json_object_set_new(o, "recipe_hash", json_string(img.recipe));
        json_object_set_new(o, "dir", json_string(dir));
        json_object_set_new(o, "size_bytes", json_integer(dir_bytes(dir)));
    } else if (r != NB_ENOTFOUND) {
        json_object_set_new(o, "error", json_string(nb_strerror(r)));
    }
    json_array_append_new(arr, o);
}

static void list_work(uv_work_t *w)
{
    list_job_t *j = (list_job_t *)w;
    json_t *arr = json_array();
    char idir[1200], path[2048];
    nb_vm_fmt(idir, sizeof idir, "%s/images", j->home);
    /* Recipes first (built or not), then anything else in the cache. */
    DIR *dp = opendir(j->src);
    struct dirent *de;
    json_t *seen = json_object();
    while (dp && (de = readdir(dp))) {
        nb_vm_fmt(path, sizeof path, "%s/%s/build.sh", j->src, de->d_name);
        if (!nb_image_valid_name(de->d_name) || access(path, R_OK) < 0)
            continue;
        nb_vm_fmt(path, sizeof path, "%s/%s", idir, de->d_name);
        add_image(arr, de->d_name, path, 1);
        json_object_set_new(seen, de->d_name, json_true());
    }
    if (dp)
        closedir(dp);
    dp = opendir(idir);
    while (dp && (de = readdir(dp))) {
        if (!nb_image_valid_name(de->d_name) || json_object_get(seen, de->d_name))
            continue;
        nb_vm_fmt(path, sizeof path, "%s/%s", idir, de->d_name);
        add_image(arr, de->d_name, path, 0);
    }
    if (dp)
        closedir(dp);
    json_decref(seen);
    j->res = arr;
}

static void list_done(uv_work_t *w, int status)
{
    list_job_t *j = (list_job_t *)w;
    nb_daemon_t *d = j->ctx->d;
    json_t *arr = j->res ? j->res : json_array(), *e;
    size_t i;
    /* Which VMs use each image, and which builds run (loop-side state). */
    json_array_foreach (arr, i, e) {
        const char *name = nb_json_str(e, "name");
        json_t *used = json_array();
        json_t *vms = d->vmm ? nb_vmm_list(d->vmm) : NULL, *v;
        size_t k;
        json_array_foreach (json_object_get(vms, "vms"), k, v) {
            const char *img = nb_json_str(v, "image");
            if (img && name && !strcmp(img, name))
                json_array_append_new(used, json_string(nb_json_str(v, "name")));
        }
        json_decref(vms);
        json_object_set_new(e, "used_by", used);
        json_object_set_new(
            e, "building", json_boolean(name && d->images && nb_imgbuild_running(d->images, name)));
    }
    nb_api_reply_json(j->ctx, 200, json_pack("{s:o}", "images", arr));
    free(j);
}

static void on_list(nb_api_ctx_t *ctx)
{
    list_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    j->ctx = ctx;
    nb_vm_fmt(j->home, sizeof j->home, "%s", ctx->d->home.home);
    images_src(j->src, sizeof j->src);
    if (uv_queue_work(ctx->d->loop, &j->w, list_work, list_done) < 0) {
        free(j);
        nb_api_reply_errno(ctx, NB_EINTERNAL, NULL);
    }
}

/* ------------------------------------------------------------ remove */

typedef struct {
    uv_work_t w;
    nb_api_ctx_t *ctx;
    char dir[1200];
    char name[32];
    int r;
} rm_job_t;

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

static void rm_work(uv_work_t *w)
{
    rm_job_t *j = (rm_job_t *)w;
    struct stat st;
    if (lstat(j->dir, &st) < 0) {
        j->r = NB_ENOTFOUND;
        return;
    }
    j->r = nftw(j->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) < 0 ? -errno : 0;
}

static void rm_done(uv_work_t *w, int status)
{
    rm_job_t *j = (rm_job_t *)w;
    if (j->r == NB_ENOTFOUND) {
        nb_api_reply_error(j->ctx, 404, "not-found", "image '%s' is not built", j->name);
    } else if (j->r < 0) {
        nb_api_reply_errno(j->ctx, j->r, "cannot remove the image folder");
    } else {
        if (j->ctx->d->events)
            nb_events_emit(j->ctx->d->events, "image.removed",
                           json_pack("{s:s}", "image", j->name));
        nb_api_reply_json(j->ctx, 200, json_pack("{s:s, s:b}", "image", j->name, "removed", 1));
    }
    free(j);
}

static void on_remove(nb_api_ctx_t *ctx)
{
    const char *name = nb_api_param(ctx, "name");
    nb_daemon_t *d = ctx->d;
    if (!nb_image_valid_name(name)) {
        nb_api_reply_error(ctx, 404, "not-found", "no image named '%.40s'", name);
        return;
    }
    if (d->images && nb_imgbuild_running(d->images, name)) {
        nb_api_reply_error(ctx, 409, "wrong-state", "image '%s' is being built", name);
        return;
    }
    json_t *vms = d->vmm ? nb_vmm_list(d->vmm) : NULL, *v;
    size_t k;
    char users[512] = "";
    json_array_foreach (json_object_get(vms, "vms"), k, v) {
        const char *img = nb_json_str(v, "image");
        if (img && !strcmp(img, name)) {
            size_t n = strlen(users);
            nb_vm_fmt(users + n, sizeof users - n, "%s%s", n ? ", " : "", nb_json_str(v, "name"));
        }
    }
    json_decref(vms);
    if (users[0]) {
        nb_api_reply_error(ctx, 409, "wrong-state",
                           "image '%s' is used by VM(s) %s (their disks are overlays on it); "
                           "remove them first",
                           name, users);
        return;
    }
    rm_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    j->ctx = ctx;
    nb_vm_fmt(j->name, sizeof j->name, "%s", name);
    nb_vm_fmt(j->dir, sizeof j->dir, "%s/images/%s", d->home.home, name);
    if (uv_queue_work(d->loop, &j->w, rm_work, rm_done) < 0) {
        free(j);
        nb_api_reply_errno(ctx, NB_EINTERNAL, NULL);
    }
}

/* ------------------------------------------------------------ build */

static void on_build(nb_api_ctx_t *ctx)
{
    nb_daemon_t *d = ctx->d;
    const char *name = nb_api_param(ctx, "name");
    char src[1024], script[1200], agent[PATH_MAX], out[1200], err[1400];
    images_src(src, sizeof src);
    nb_vm_fmt(script, sizeof script, "%s/%s/build.sh", src, name);
    if (!nb_image_valid_name(name) || access(script, R_OK) < 0) {
        nb_api_reply_error(ctx, 404, "not-found",
                           "there is no recipe for an image named '%.40s' in %s (try tiny or "
                           "debian)",
                           name, src);
        return;
    }
    if (!d->images || nb_imgbuild_running(d->images, name)) {
        nb_api_reply_error(ctx, 409, "wrong-state", "image '%s' is already being built", name);
        return;
    }
    if (agent_path(agent, sizeof agent) < 0) {
        nb_api_reply_error(ctx, 503, "unavailable",
                           "the guest agent binary was not found (%s); build it (ninja "
                           "src/agent/nilbox-agent) or set NILBOX_AGENT",
                           agent);
        return;
    }
    int r = nb_imgbuild_start(d->images, name, script, agent, nb_json_bool(ctx->body, "force", 0),
                              err, sizeof err);
    if (r == NB_ESTATE) {
        nb_api_reply_error(ctx, 409, "wrong-state", "%d image builds are running already",
                           NB_IMGBUILD_MAX);
    } else if (r < 0) {
        nb_api_reply_error(ctx, 500, "internal", "%s", r == -ENOMEM ? "out of memory" : err);
    } else {
        nb_vm_fmt(out, sizeof out, "%s/images/%s", d->home.home, name);
        nb_api_reply_json(ctx, 202,
                          json_pack("{s:s, s:b, s:s}", "image", name, "building", 1, "out", out));
    }
}

const nb_api_route_t nb_api_routes_image[] = {
    {"GET", "/v1/images", on_list, 0},
    {"DELETE", "/v1/images/{name}", on_remove, 0},
    {"POST", "/v1/images/{name}/build", on_build, 0},
    {NULL, NULL, NULL, 0},
};
