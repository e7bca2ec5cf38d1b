/* Guest image builds (see imgbuild.h). */
#include "daemon/imgbuild.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "host/home.h"
#include "lib/err.h"
#include "lib/log.h"

#define LINE_MAX_LEN 1024

typedef struct build build_t;
typedef struct {
    uv_pipe_t p;
    build_t *b;
    char line[LINE_MAX_LEN];
    size_t len;
    int open;
} bpipe_t;

struct build {
    nb_imgbuild_t *ib; /* NULL once the builder is gone (detached) */
    char name[32];
    uv_process_t proc;
    bpipe_t out, err;
    int proc_open;
    uint64_t t0;
    char last[LINE_MAX_LEN];
    int64_t status;
    int exited;
    int fin; /* the end event went out (or must not) */
};

struct nb_imgbuild {
    uv_loop_t *loop;
    char home[NB_HOME_PATH_MAX];
    nb_events_t *ev;
    build_t *builds[NB_IMGBUILD_MAX];
};

static void emit(build_t *b, const char *type, json_t *data)
{
    if (b->ib && b->ib->ev)
        nb_events_emit(b->ib->ev, type, data);
    else
        json_decref(data);
}

static void progress(build_t *b, const char *line)
{
    char esc[LINE_MAX_LEN * 2];
    nb_log_escape(esc, sizeof esc, line, strlen(line));
    nb_log(NB_LOG_INFO, "image %s: %s", b->name, esc);
    snprintf(b->last, sizeof b->last, "%.*s", (int)sizeof b->last - 1, esc);
    emit(b, "progress",
         json_pack("{s:s, s:s, s:s}", "image", b->name, "op", "build", "message", esc));
}

/* The end event once the script exited and its output is read; the memory
 * once every handle has closed. */
static void build_check(build_t *b)
{
    if (b->exited && !b->out.open && !b->err.open && !b->fin) {
        double secs = (double)(uv_hrtime() - b->t0) / 1e9;
        b->fin = 1;
        if (b->status == 0)
            emit(b, "image.built", json_pack("{s:s, s:f}", "image", b->name, "secs", secs));
        else
            emit(b, "image.build_failed",
                 json_pack("{s:s, s:I, s:s, s:f}", "image", b->name, "status",
                           (json_int_t)b->status, "message", b->last, "secs", secs));
    }
    if (b->proc_open || b->out.open || b->err.open)
        return;
    for (int i = 0; b->ib && i < NB_IMGBUILD_MAX; i++)
        if (b->ib->builds[i] == b)
            b->ib->builds[i] = NULL;
    free(b);
}

static void on_pipe_closed(uv_handle_t *h)
{
    bpipe_t *p = h->data;
    p->open = 0;
    build_check(p->b);
}

static void on_proc_closed(uv_handle_t *h)
{
    build_t *b = h->data;
    b->proc_open = 0;
    build_check(b);
}

static void pipe_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf)
{
    bpipe_t *p = h->data;
    buf->base = p->line + p->len;
    buf->len = sizeof p->line - 1 - p->len;
}

static void pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    bpipe_t *p = s->data;
    if (n < 0) {
        if (p->len) {
            p->line[p->len] = '\0';
            progress(p->b, p->line);
            p->len = 0;
        }
        uv_close((uv_handle_t *)s, on_pipe_closed);
        return;
    }
    p->len += (size_t)n;
    char *nl;
    while ((nl = memchr(p->line, '\n', p->len))) {
        *nl = '\0';
        if (nl > p->line)
            progress(p->b, p->line);
        size_t used = (size_t)(nl - p->line) + 1;
        memmove(p->line, nl + 1, p->len - used);
        p->len -= used;
    }
    if (p->len >= sizeof p->line - 1) { /* an overlong line: show it in pieces */
        p->line[p->len] = '\0';
        progress(p->b, p->line);
        p->len = 0;
    }
}

static void on_build_exit(uv_process_t *proc, int64_t status, int sig)
{
    build_t *b = proc->data;
    b->status = sig ? 128 + sig : status;
    b->exited = 1;
    uv_close((uv_handle_t *)proc, on_proc_closed);
}

int nb_imgbuild_new(uv_loop_t *loop, const char *home, nb_events_t *ev, nb_imgbuild_t **out)
{
    if (!(*out = calloc(1, sizeof **out)))
        return -ENOMEM;
    (*out)->loop = loop;
    (*out)->ev = ev;
    snprintf((*out)->home, sizeof(*out)->home, "%s", home);
    return 0;
}

void nb_imgbuild_free(nb_imgbuild_t *ib)
{
    for (int i = 0; ib && i < NB_IMGBUILD_MAX; i++)
        if (ib->builds[i])
            ib->builds[i]->ib = NULL;
    free(ib);
}

int nb_imgbuild_running(const nb_imgbuild_t *ib, const char *name)
{
    for (int i = 0; i < NB_IMGBUILD_MAX; i++)
        if (ib->builds[i] && !strcmp(ib->builds[i]->name, name))
            return 1;
    return 0;
}

int nb_imgbuild_start(nb_imgbuild_t *ib, const char *name, const char *script, const char *agent,
                      int force, char *err, size_t errsz)
{
    char out[1200], cache[1200], envh[1200], images_dir[1200];
    int slot = -1;
    if (nb_imgbuild_running(ib, name))
        return NB_EEXIST;
    for (int i = 0; i < NB_IMGBUILD_MAX; i++)
        if (!ib->builds[i])
            slot = i;
    if (slot < 0)
        return NB_ESTATE;
    build_t *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->ib = ib;
    snprintf(b->name, sizeof b->name, "%s", name);
    snprintf(out, sizeof out, "%s/images/%s", ib->home, name);
    snprintf(cache, sizeof cache, "%s/images/.cache", ib->home);
    snprintf(envh, sizeof envh, "NILBOX_HOME=%s", ib->home);
    snprintf(images_dir, sizeof images_dir, "%s/images", ib->home);
    mkdir(images_dir, 0700);
    char *argv[] = {"bash", (char *)script, "--out",       out,  "--cache",
                    cache,  "--agent",      (char *)agent, NULL, NULL};
    if (force)
        argv[8] = "--force";
    /* The child gets the daemon's environment plus NILBOX_HOME. */
    extern char **environ;
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **env = calloc(ne + 2, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; env && i < ne; i++)
        if (strncmp(environ[i], "NILBOX_HOME=", 12) != 0)
            env[k++] = environ[i];
    if (env)
        env[k++] = envh;
    uv_pipe_init(ib->loop, &b->out.p, 0);
    uv_pipe_init(ib->loop, &b->err.p, 0);
    b->out.b = b->err.b = b;
    b->out.p.data = &b->out;
    b->err.p.data = &b->err;
    b->out.open = b->err.open = 1;
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&b->out.p},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&b->err.p},
    };
    uv_process_options_t o = {0};
    o.file = "bash";
    o.args = argv;
    o.env = env;
    o.stdio = stdio;
    o.stdio_count = 3;
    o.exit_cb = on_build_exit;
    b->proc.data = b;
    b->t0 = uv_hrtime();
    int r = env ? uv_spawn(ib->loop, &b->proc, &o) : -ENOMEM;
    free(env);
    ib->builds[slot] = b; /* on failure too: freed by the close callbacks */
    if (r < 0) {
        b->fin = 1;
        if (env) { /* uv_spawn initialised the handle: it must be closed */
            b->proc_open = 1;
            uv_close((uv_handle_t *)&b->proc, on_proc_closed);
        }
        uv_close((uv_handle_t *)&b->out.p, on_pipe_closed);
        uv_close((uv_handle_t *)&b->err.p, on_pipe_closed);
        snprintf(err, errsz, "cannot run %s: %s", script, uv_strerror(r));
        return r;
    }
    b->proc_open = 1;
    /* A build must not keep a stopping daemon's loop alive; if the daemon
     * goes, the script dies of SIGPIPE at its next line. */
    uv_unref((uv_handle_t *)&b->proc);
    uv_unref((uv_handle_t *)&b->out.p);
    uv_unref((uv_handle_t *)&b->err.p);
    uv_read_start((uv_stream_t *)&b->out.p, pipe_alloc, pipe_read);
    uv_read_start((uv_stream_t *)&b->err.p, pipe_alloc, pipe_read);
    emit(b, "image.build_started",
         json_pack("{s:s, s:s, s:s}", "image", name, "recipe", script, "agent", agent));
    return 0;
}
