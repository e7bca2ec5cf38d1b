/* The DNS blocklist in the daemon: loads $NILBOX_HOME/blocklist/active.nbbl
 * at start, reloads on POST /v1/blocklist/load, answers status and check,
 * and is the gate's blocklist hook (egress/gate.h). See
 * docs/internals/blocklist.md and docs/api.md.
 *
 * A file is only ever swapped in after its signature verified against a
 * trusted key (egress/blocklist.h); a refused file leaves the loaded one
 * in place, in memory and on disk. Loading from the API runs on the
 * thread pool (file read + signature check); the swap is on the loop. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "daemon/api.h"
#include "daemon/audit.h"
#include "daemon/daemon.h"
#include "lib/blocklist.h"
#include "daemon/egress/gate.h"
#include "daemon/events.h"
#include "host/home.h"
#include "lib/err.h"
#include "lib/log.h"

#define BL_ERR_MAX 512

struct nb_blstate {
    nb_daemon_t *d;
    nb_bl_t *cur;
    char active[NB_HOME_PATH_MAX + 32];
    char source[PATH_MAX]; /* where the loaded file came from */
    int64_t loaded_ms;
    char last_error[BL_ERR_MAX];
    int64_t last_error_ms;
    uint64_t lookups, blocked;
    int busy; /* a load is on the thread pool */
};

/* The gate's hook (loop thread): names only; IP destinations never match. */
static int bl_hook(void *ctx, const nb_dest_t *dst)
{
    struct nb_blstate *s = ctx;
    if (!s->cur || dst->is_ip)
        return 0;
    s->lookups++;
    int hit = nb_bl_lookup(s->cur, dst->name, NULL);
    s->blocked += (uint64_t)hit;
    return hit;
}

static int active_path(const nb_daemon_t *d, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%s/%s/%s", d->home.home, NB_BL_DIR, NB_BL_ACTIVE);
    return n < 0 || (size_t)n >= outsz ? NB_ETOOBIG : 0;
}

static void set_error(struct nb_blstate *s, const char *msg)
{
    snprintf(s->last_error, sizeof s->last_error, "%s", msg);
    s->last_error_ms = nb_events_now_ms();
}

/* Swaps `b` in (takes it) and tells the gate: open connections and pending
 * prompts are judged again (a newly listed name is cut, see gate.h). */
static void install(struct nb_blstate *s, nb_bl_t *b, const char *source)
{
    nb_bl_free(s->cur);
    s->cur = b;
    snprintf(s->source, sizeof s->source, "%s", source);
    s->loaded_ms = nb_events_now_ms();
    s->last_error[0] = 0;
    s->last_error_ms = 0;
    if (s->d->gate)
        nb_gate_set_blocklist(s->d->gate, bl_hook, s);
}

int nb_api_blocklist_start(nb_daemon_t *d)
{
    struct nb_blstate *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->d = d;
    d->blocklist = s;
    if (active_path(d, s->active, sizeof s->active) < 0)
        return 0;
    if (d->gate)
        nb_gate_set_blocklist(d->gate, bl_hook, s);
    if (access(s->active, F_OK) != 0)
        return 0; /* no blocklist installed: nothing is blocked by it */
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int nk = nb_bl_trusted_keys(d->home.home, keys, NB_BL_MAX_KEYS);
    char err[BL_ERR_MAX] = "";
    nb_bl_t *b = NULL;
    int r = nb_bl_load_file(s->active, (const uint8_t(*)[32])keys, (size_t)nk, &b, err, sizeof err);
    if (r < 0) {
        /* Not fatal: the daemon runs with rules and prompts only, and says
         * why in the log, /v1/blocklist and the audit log. */
        nb_log(NB_LOG_ERR, "blocklist %s refused: %s", s->active, err);
        set_error(s, err);
        if (d->audit)
            nb_audit_append(d->audit, "blocklist.refused", NULL, NULL, 0,
                            json_pack("{s:s, s:s}", "path", s->active, "error", err));
        return 0;
    }
    install(s, b, s->active);
    nb_log(NB_LOG_NOTICE, "blocklist loaded: %u names", nb_bl_header(b)->count);
    return 0;
}

void nb_api_blocklist_free(nb_daemon_t *d)
{
    struct nb_blstate *s = d->blocklist;
    if (!s)
        return;
    if (s->busy) {
        /* The pool job still points at s: it frees s when it lands. */
        s->d = NULL;
        d->blocklist = NULL;
        return;
    }
    nb_bl_free(s->cur);
    free(s);
    d->blocklist = NULL;
}

/* ---- routes ---- */

static json_t *status_json(const struct nb_blstate *s)
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
    int nk = nb_bl_trusted_keys(s->d->home.home, keys, NB_BL_MAX_KEYS);
    json_t *ka = json_array();
    for (int i = 0; i < nk; i++) {
        nb_bl_hex(keys[i], 32, hex);
        json_array_append_new(ka, json_string(hex));
    }
    json_object_set_new(o, "trusted_keys", ka);
    return o;
}

static void on_status(nb_api_ctx_t *ctx)
{
    struct nb_blstate *s = ctx->d->blocklist;
    if (!s) {
        nb_api_reply_error(ctx, 409, "wrong-state", "the blocklist is not available");
        return;
    }
    nb_api_reply_json(ctx, 200, status_json(s));
}

static void on_check(nb_api_ctx_t *ctx)
{
    struct nb_blstate *s = ctx->d->blocklist;
    char raw[NB_HOSTNAME_BUFSZ + 8], name[NB_HOSTNAME_BUFSZ];
    int r = nb_api_query(ctx, "name", raw, sizeof raw);
    if (r <= 0) {
        nb_api_reply_error(ctx, 422, "invalid", "give the name to check: ?name=NAME");
        return;
    }
    if (!s) {
        nb_api_reply_error(ctx, 409, "wrong-state", "the blocklist is not available");
        return;
    }
    int n = nb_hostname_normalize(raw, strlen(raw), name, sizeof name);
    if (n < 0) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "not a valid host name (letters, digits, "
                           "hyphens and dots; IP addresses are never listed)");
        return;
    }
    size_t m = 0;
    int hit = nb_bl_lookup(s->cur, name, &m);
    json_t *o =
        json_pack("{s:s, s:b, s:b}", "name", name, "blocked", hit, "loaded", s->cur != NULL);
    json_object_set_new(o, "matched", hit ? json_string(name + m) : json_null());
    /* Would an exact allow rule let it through anyway (gate.h, rules.h)? */
    const nb_rule_t *ar = NULL;
    nb_dest_t dst;
    if (hit && ctx->d->gate && nb_dest_set(&dst, NULL, name, (size_t)n, 0) == 0)
        ar = nb_rules_exact_allow(nb_gate_rules(ctx->d->gate), &dst);
    json_object_set_new(o, "allow_rule", ar ? json_integer(ar->id) : json_null());
    nb_api_reply_json(ctx, 200, o);
}

typedef struct {
    uv_work_t w;
    struct nb_blstate *s;
    nb_api_ctx_t *ctx;
    char path[PATH_MAX];
    char home[NB_HOME_PATH_MAX];
    char active[NB_HOME_PATH_MAX + 32];
    int r;
    nb_bl_t *b;
    char err[BL_ERR_MAX];
} load_job_t;

/* Pool thread: read, verify, and copy into place when it came from
 * elsewhere. Nothing on disk changes unless the file verified. */
static void load_work(uv_work_t *w)
{
    load_job_t *j = w->data;
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int nk = nb_bl_trusted_keys(j->home, keys, NB_BL_MAX_KEYS);
    j->r = nb_bl_load_file(j->path, (const uint8_t(*)[32])keys, (size_t)nk, &j->b, j->err,
                           sizeof j->err);
    if (j->r < 0 || strcmp(j->path, j->active) == 0)
        return;
    size_t len;
    const uint8_t *img = nb_bl_image(j->b, &len);
    char dir[NB_HOME_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/%s", j->home, NB_BL_DIR);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        j->r = -errno;
    } else {
        j->r = nb_home_write_private(j->active, img, len);
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
    struct nb_blstate *s = j->s;
    s->busy = 0;
    if (!s->d) { /* the daemon stopped meanwhile */
        nb_bl_free(j->b);
        nb_bl_free(s->cur);
        free(s);
        free(j);
        return;
    }
    nb_daemon_t *d = s->d;
    if (status < 0 && j->r == 0) {
        j->r = status;
        snprintf(j->err, sizeof j->err, "the load was cancelled");
    }
    if (j->r < 0) {
        nb_bl_free(j->b);
        set_error(s, j->err);
        nb_log(NB_LOG_ERR, "blocklist %s refused: %s", j->path, j->err);
        if (d->audit)
            nb_audit_append(d->audit, "blocklist.refused", NULL, NULL, 0,
                            json_pack("{s:s, s:s}", "path", j->path, "error", j->err));
        if (d->events)
            nb_events_emit(d->events, "blocklist.refused",
                           json_pack("{s:s, s:s}", "path", j->path, "error", j->err));
        nb_api_reply_error(j->ctx, 422, "refused", "%s; the previous blocklist stays loaded%s",
                           j->err, s->cur ? "" : " (none)");
        free(j);
        return;
    }
    install(s, j->b, j->path);
    const nb_bl_hdr_t *h = nb_bl_header(j->b);
    char hex[65];
    nb_bl_hex(h->signer, 32, hex);
    nb_log(NB_LOG_NOTICE, "blocklist loaded from %s: %u names", j->path, h->count);
    if (d->audit)
        nb_audit_append(d->audit, "blocklist.loaded", NULL, NULL, 0,
                        json_pack("{s:s, s:I, s:s}", "path", j->path, "count", (json_int_t)h->count,
                                  "signer", hex));
    if (d->events)
        nb_events_emit(d->events, "blocklist.loaded",
                       json_pack("{s:I}", "count", (json_int_t)h->count));
    nb_api_reply_json(j->ctx, 200, status_json(s));
    free(j);
}

static void on_load(nb_api_ctx_t *ctx)
{
    struct nb_blstate *s = ctx->d->blocklist;
    if (!s) {
        nb_api_reply_error(ctx, 409, "wrong-state", "the blocklist is not available");
        return;
    }
    if (s->busy) {
        nb_api_reply_error(ctx, 409, "wrong-state", "a blocklist load is already running");
        return;
    }
    const char *path = s->active;
    json_t *p = ctx->body ? json_object_get(ctx->body, "path") : NULL;
    if (p) {
        path = json_string_value(p);
        if (!path || path[0] != '/' || strlen(path) >= PATH_MAX) {
            nb_api_reply_error(ctx, 422, "invalid", "\"path\" must be an absolute file path");
            return;
        }
    }
    load_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nb_api_reply_errno(ctx, -ENOMEM, NULL);
        return;
    }
    j->w.data = j;
    j->s = s;
    j->ctx = ctx;
    snprintf(j->path, sizeof j->path, "%s", path);
    snprintf(j->home, sizeof j->home, "%s", ctx->d->home.home);
    snprintf(j->active, sizeof j->active, "%s", s->active);
    int r = uv_queue_work(ctx->d->loop, &j->w, load_work, load_done);
    if (r < 0) {
        free(j);
        nb_api_reply_errno(ctx, r, NULL);
        return;
    }
    s->busy = 1;
}

const nb_api_route_t nb_api_routes_blocklist[] = {
    {"GET", "/v1/blocklist", on_status, 0},
    {"GET", "/v1/blocklist/check", on_check, 0},
    {"POST", "/v1/blocklist/load", on_load, 0},
    {0},
};
