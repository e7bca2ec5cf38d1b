/* nilbox image ls|build|rm: guest images built locally from Debian packages
 * (docs/images.md). `build` runs the recipe in the daemon and prints its
 * progress from the event stream. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli/cmdutil.h"
#include "cli/vmwait.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"

#define BUILD_TIMEOUT_S 3600

static int image_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 31 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n &&
           s[0] != '-' && s[0] != '_';
}

static int bad_image(const char *s)
{
    fprintf(stderr, "nilbox: '%s' is not an image name (e.g. tiny or debian)\n", s);
    return NB_CLI_USAGE;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL, *img;
    size_t i;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/images", NULL, &res, &code))
        return code;
    printf("%-12s %-10s %-10s %9s  %s\n", "NAME", "STATUS", "ROOT", "SIZE", "USED BY");
    json_array_foreach (json_object_get(res, "images"), i, img) {
        char size[32] = "-", users[256] = "";
        json_t *u;
        size_t k;
        int built = nb_json_bool(img, "built", 0);
        if (built)
            snprintf(size, sizeof size, "%lldM",
                     (long long)(nb_json_int(img, "size_bytes", 0) >> 20));
        json_array_foreach (json_object_get(img, "used_by"), k, u) {
            size_t n = strlen(users);
            snprintf(users + n, sizeof users - n, "%s%s", n ? "," : "", json_string_value(u));
        }
        const char *status = nb_json_bool(img, "building", 0) ? "building"
                             : built                          ? "built"
                             : nb_json_str(img, "error")      ? "damaged"
                                                              : "not built";
        const char *root = nb_json_str(img, "root");
        printf("%-12s %-10s %-10s %9s  %s\n", nb_json_str(img, "name"), status, root ? root : "-",
               size, users[0] ? users : "-");
    }
    json_decref(res);
    return NB_CLI_OK;
}

typedef struct {
    const char *image;
    struct timespec t0;
    int status;
    char msg[512];
} build_wait_t;

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static int build_event(const json_t *e, void *ud)
{
    build_wait_t *w = ud;
    const char *type = nb_json_str(e, "type"), *img = nb_json_str(e, "image");
    if (!type || !img || strcmp(img, w->image) != 0)
        return 0;
    if (!strcmp(type, "progress")) {
        const char *m = nb_json_str(e, "message");
        if (m)
            nb_cli_progress(since(&w->t0), m);
        return 0;
    }
    if (!strcmp(type, "image.built"))
        return 1;
    if (!strcmp(type, "image.build_failed")) {
        const char *m = nb_json_str(e, "message");
        w->status = (int)nb_json_int(e, "status", 1);
        snprintf(w->msg, sizeof w->msg, "%s", m ? m : "");
        return 2;
    }
    return 0;
}

static int do_build(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *name = a->pos[0];
    char path[128];
    json_t *res = NULL;
    if (!image_name_ok(name))
        return bad_image(name);
    build_wait_t w = {.image = name};
    clock_gettime(CLOCK_MONOTONIC, &w.t0);
    int nowait = nb_cli_flag(v, a, "no-wait");
    nb_wsc_t *ws = nowait ? NULL : nb_cli_events_open(cli);
    json_t *body = json_pack("{s:b}", "force", nb_cli_flag(v, a, "force"));
    snprintf(path, sizeof path, "/v1/images/%s/build", name);
    int code = nb_cli_call(cli, "POST", path, body, &res);
    json_decref(body);
    if (code != NB_CLI_OK) {
        nb_wsc_free(ws);
        return code;
    }
    if (!ws) {
        if (cli->json)
            nb_cli_print_json(res);
        else
            printf("building image %s; follow with 'nilbox events --follow'\n", name);
        json_decref(res);
        return NB_CLI_OK;
    }
    json_decref(res);
    fprintf(stderr, "nilbox: building image %s\n", name);
    int r = nb_cli_events_wait(ws, BUILD_TIMEOUT_S, build_event, &w);
    nb_wsc_free(ws);
    if (r == 1) {
        printf("image %s is ready (%.0f s)\n", name, since(&w.t0));
        return NB_CLI_OK;
    }
    if (r == 2)
        return nb_cli_fail(cli, NB_CLI_ERROR, "build_failed",
                           "building image %s failed (exit %d): %s; see the daemon log", name,
                           w.status, w.msg);
    if (r == -EINTR)
        return nb_cli_fail(cli, NB_CLI_ERROR, "interrupted",
                           "stopped following; the build of %s goes on in the daemon", name);
    return nb_cli_fail(cli, NB_CLI_ERROR, "build_lost", "lost track of the build of %s: %s", name,
                       nb_strerror(r));
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[128];
    json_t *res = NULL;
    if (!image_name_ok(a->pos[0]))
        return bad_image(a->pos[0]);
    snprintf(path, sizeof path, "/v1/images/%s", a->pos[0]);
    int code;
    if (!nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code))
        printf("removed image %s\n", a->pos[0]);
    json_decref(res);
    return code;
}

static const nb_cli_opt_t build_opts[] = {
    {"force", 'f', NULL, "rebuild even when the recipe did not change"},
    {"no-wait", 0, NULL, "return at once; the build goes on in the daemon"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"ls", "list images (recipes and built ones)", NULL, NULL, 0, 0, NULL, do_ls,
     NB_CLI_NEEDS_DAEMON},
    {"build", "build an image from Debian packages", "NAME",
     "Build a guest image locally (tiny: ~30 s; debian: minutes) into $NILBOX_HOME/images/NAME.\n"
     "Rebuilds only when the recipe changed, unless --force.",
     1, 1, build_opts, do_build, NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a built image (refused while VMs use it)", "NAME", NULL, 1, 1, NULL, do_rm,
     NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_image = {"image", "build and manage guest images", verbs, NULL};
