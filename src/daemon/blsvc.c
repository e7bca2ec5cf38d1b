/* The DNS blocklist service (see blsvc.h). */
#include "daemon/blsvc.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/blocklist.h"
#include "host/home.h"
#include "lib/err.h"
#include "lib/log.h"

#define BL_ERR_MAX 512

struct nb_blsvc {
    nb_blsvc_cfg_t cfg;
    char home[NB_HOME_PATH_MAX];
    nb_bl_t *cur;
    char active[NB_HOME_PATH_MAX + 32];
    char source[PATH_MAX]; /* where the loaded file came from */
    int64_t loaded_ms;
    char last_error[BL_ERR_MAX];
    int64_t last_error_ms;
    uint64_t lookups, blocked;
    int busy;   /* a load is on the thread pool */
    int closed; /* freed while busy: the load frees the service */
};

/* The gate's hook (loop thread): names only; IP destinations never match. */
static int bl_hook(void *ctx, const nb_dest_t *dst)
{
    nb_blsvc_t *s = ctx;
    if (!s->cur || dst->is_ip)
        return 0;
    s->lookups++;
    int hit = nb_bl_lookup(s->cur, dst->name, NULL);
    s->blocked += (uint64_t)hit;
    return hit;
}

/* Logged, audited and (from a load) announced; the loaded list stays. */
static void refused(nb_blsvc_t *s, const char *path, const char *err, int announce)
{
    nb_log(NB_LOG_ERR, "blocklist %s refused: %s", path, err);
    snprintf(s->last_error, sizeof s->last_error, "%s", err);
    s->last_error_ms = nb_events_now_ms();
    if (s->cfg.audit)
        nb_audit_append(s->cfg.audit, "blocklist.refused", NULL, NULL, 0,
                        json_pack("{s:s, s:s}", "path", path, "error", err));
    if (announce && s->cfg.events)
        nb_events_emit(s->cfg.events, "blocklist.refused",
                       json_pack("{s:s, s:s}", "path", path, "error", err));
}

/* Swaps `b` in (takes it) and tells the gate: open connections and pending
 * prompts are judged again (a newly listed name is cut, see gate.h). */
static void install(nb_blsvc_t *s, nb_bl_t *b, const char *source)
{
    nb_bl_free(s->cur);
    s->cur = b;
    snprintf(s->source, sizeof s->source, "%s", source);
    s->loaded_ms = nb_events_now_ms();
    s->last_error[0] = 0;
    s->last_error_ms = 0;
    if (s->cfg.gate)
        nb_gate_set_blocklist(s->cfg.gate, bl_hook, s);
}

int nb_blsvc_new(const nb_blsvc_cfg_t *cfg, nb_blsvc_t **out)
{
    nb_blsvc_t *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s)
        return -ENOMEM;
    s->cfg = *cfg;
    snprintf(s->home, sizeof s->home, "%s", cfg->home);
    s->cfg.home = s->home;
    *out = s;
    int n = snprintf(s->active, sizeof s->active, "%s/%s/%s", s->home, NB_BL_DIR, NB_BL_ACTIVE);
    if (n < 0 || (size_t)n >= sizeof s->active)
        return 0;
    if (s->cfg.gate)
        nb_gate_set_blocklist(s->cfg.gate, bl_hook, s);
    if (access(s->active, F_OK) != 0)
        return 0; /* no blocklist installed: nothing is blocked by it */
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int nk = nb_bl_trusted_keys(s->home, keys, NB_BL_MAX_KEYS);
    char err[BL_ERR_MAX] = "";
    nb_bl_t *b = NULL;
    if (nb_bl_load_file(s->active, (const uint8_t(*)[32])keys, (size_t)nk, &b, err, sizeof err) <
        0) {
        /* Not fatal: the daemon runs with rules and prompts only, and says
         * why in the log, /v1/blocklist and the audit log. */
        refused(s, s->active, err, 0);
        return 0;
    }
    install(s, b, s->active);
    nb_log(NB_LOG_NOTICE, "blocklist loaded: %u names", nb_bl_header(b)->count);
    return 0;
}

void nb_blsvc_free(nb_blsvc_t *s)
{
    if (!s)
        return;
    if (s->busy) {
        s->closed = 1; /* the pool job still points at s: it frees s when it lands */
        return;
    }
    nb_bl_free(s->cur);
    free(s);
}

int nb_blsvc_loaded(const nb_blsvc_t *s)
{
    return s->cur != NULL;
}

int nb_blsvc_lookup(const nb_blsvc_t *s, const char *name, size_t *matched)
{
    return nb_bl_lookup(s->cur, name, matched);
}

json_t *nb_blsvc_status_json(const nb_blsvc_t *s)
{
    char t[40], hex[65];
    json_t *o = json_object();
    json_object_set_new(o, "loaded", json_boolean(s->cur != NULL));
    json_object_set_new(o, "path", json_string(s->active));
    if (s->cur) {
        const nb_bl_hdr_t *h = nb_bl_header(s->cur);
        size_t len;
        nb_bl_image(s->cur, &len);
        json_object_set_new(o, "source", json_string(s->source));
        json_object_set_new(o, "filter", json_string("binary-fuse-8"));
        json_object_set_new(o, "version", json_integer(h->version));
        json_object_set_new(o, "count", json_integer(h->count));
        json_object_set_new(o, "size", json_integer((json_int_t)len));
        json_object_set_new(o, "fp_rate", json_real(1.0 / 256));
        nb_events_format_time((int64_t)h->created * 1000, t, sizeof t);
        json_object_set_new(o, "created", json_string(t));
        nb_bl_hex(h->signer, 32, hex);
        json_object_set_new(o, "signer", json_string(hex));
        nb_events_format_time(s->loaded_ms, t, sizeof t);
        json_object_set_new(o, "loaded_at", json_string(t));
    }
    json_object_set_new(o, "lookups", json_integer((json_int_t)s->lookups));
    json_object_set_new(o, "blocked", json_integer((json_int_t)s->blocked));
    if (s->last_error[0]) {
        nb_events_format_time(s->last_error_ms, t, sizeof t);
        json_object_set_new(o, "last_error",
                            json_pack("{s:s, s:s}", "message", s->last_error, "at", t));
    } else {
        json_object_set_new(o, "last_error", json_null());
    }
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int nk = nb_bl_trusted_keys(s->home, keys, NB_BL_MAX_KEYS);
    json_t *ka = json_array();
    for (int i = 0; i < nk; i++) {
        nb_bl_hex(keys[i], 32, hex);
        json_array_append_new(ka, json_string(hex));
    }
    json_object_set_new(o, "trusted_keys", ka);
    return o;
}

typedef struct {
    uv_work_t w;
    nb_blsvc_t *s;
    nb_blsvc_done_fn done;
    void *ud;
    char path[PATH_MAX];
    int r;
    nb_bl_t *b;
    char err[BL_ERR_MAX];
} load_job_t;

/* Pool thread: read, verify, and copy into place when it came from
 * elsewhere. Nothing on disk changes unless the file verified. The
 * service's home and active path do not change while it lives. */
static void load_work(uv_work_t *w)
{
    load_job_t *j = w->data;
    const nb_blsvc_t *s = j->s;
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int nk = nb_bl_trusted_keys(s->home, keys, NB_BL_MAX_KEYS);
    j->r = nb_bl_load_file(j->path, (const uint8_t(*)[32])keys, (size_t)nk, &j->b, j->err,
                           sizeof j->err);
    if (j->r < 0 || strcmp(j->path, s->active) == 0)
        return;
    size_t len;
    const uint8_t *img = nb_bl_image(j->b, &len);
    char dir[NB_HOME_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/%s", s->home, NB_BL_DIR);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        j->r = -errno;
    } else {
        j->r = nb_home_write_private(s->active, img, len);
    }
    if (j->r < 0) {
        snprintf(j->err, sizeof j->err, "cannot install the blocklist as %s/%s: %s", NB_BL_DIR,
                 NB_BL_ACTIVE, nb_strerror(j->r));
        nb_bl_free(j->b);
        j->b = NULL;
    }
}

static void load_done(uv_work_t *w, int status)
{
    load_job_t *j = w->data;
    nb_blsvc_t *s = j->s;
    s->busy = 0;
    if (s->closed) { /* the daemon stopped meanwhile */
        nb_bl_free(j->b);
        nb_blsvc_free(s);
        free(j);
        return;
    }
    if (status < 0 && j->r == 0) {
        j->r = status;
        snprintf(j->err, sizeof j->err, "the load was cancelled");
    }
    if (j->r < 0) {
        nb_bl_free(j->b);
        refused(s, j->path, j->err, 1);
    } else {
        install(s, j->b, j->path);
        const nb_bl_hdr_t *h = nb_bl_header(j->b);
        char hex[65];
        nb_bl_hex(h->signer, 32, hex);
        nb_log(NB_LOG_NOTICE, "blocklist loaded from %s: %u names", j->path, h->count);
        if (s->cfg.audit)
            nb_audit_append(s->cfg.audit, "blocklist.loaded", NULL, NULL, 0,
                            json_pack("{s:s, s:I, s:s}", "path", j->path, "count",
                                      (json_int_t)h->count, "signer", hex));
        if (s->cfg.events)
            nb_events_emit(s->cfg.events, "blocklist.loaded",
                           json_pack("{s:I}", "count", (json_int_t)h->count));
    }
    j->done(j->ud, j->r, j->err);
    free(j);
}

int nb_blsvc_load(nb_blsvc_t *s, const char *path, nb_blsvc_done_fn done, void *ud)
{
    if (s->busy)
        return NB_ESTATE;
    load_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->w.data = j;
    j->s = s;
    j->done = done;
    j->ud = ud;
    snprintf(j->path, sizeof j->path, "%s", path ? path : s->active);
    int r = uv_queue_work(s->cfg.loop, &j->w, load_work, load_done);
    if (r < 0) {
        free(j);
        return r;
    }
    s->busy = 1;
    return 0;
}
