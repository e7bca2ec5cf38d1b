/* The secret service: fingerprints (leak guard), snapshots, JSON shapes.
 * Module map: secretsvc_int.h. */
#include "daemon/secretsvc.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/base/events.h"
#include "daemon/secretsvc_int.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* ------------------------------------------------------------ fingerprints */

void nb_secretsvc_fp_compute(const uint8_t *key, const char *name, const uint8_t *v, size_t len,
                             fp_t *fp)
{
    memset(fp, 0, sizeof *fp);
    snprintf(fp->name, sizeof fp->name, "%s", name);
    fp->len = len;
    crypto_generichash(fp->h, FP_BYTES, v, len, key, 32);
    if (len >= 4) {
        uint8_t sh[crypto_shorthash_BYTES];
        crypto_shorthash(sh, v, 4, key + 32);
        memcpy(&fp->tag, sh, sizeof fp->tag);
    }
}

static int fp_match(const uint8_t *key, const fp_t *fp, const char *s, size_t len)
{
    uint8_t h[FP_BYTES];
    crypto_generichash(h, FP_BYTES, (const uint8_t *)s, len, key, 32);
    return sodium_memcmp(h, fp->h, FP_BYTES) == 0;
}

int nb_secretsvc_guard(void *ud, const char *s, size_t n)
{
    nb_secretsvc_t *svc = ud;
    if (!svc || !svc->nfps || !s)
        return 0;
    for (size_t k = 0; k < svc->nfps; k++)
        if (svc->fps[k].len == n && fp_match(svc->fpkey, &svc->fps[k], s, n))
            return 1;
    /* Values embedded in a longer string ("Bearer <value>"): a keyed
     * 4-byte prefix tag picks the offsets worth a full hash. */
    for (size_t i = 0; n >= 4 && i + 4 <= n; i++) {
        uint8_t sh[crypto_shorthash_BYTES];
        uint32_t tag;
        crypto_shorthash(sh, (const uint8_t *)s + i, 4, svc->fpkey + 32);
        memcpy(&tag, sh, sizeof tag);
        for (size_t k = 0; k < svc->nfps; k++) {
            const fp_t *fp = &svc->fps[k];
            if (fp->len >= 4 && fp->len <= n - i && fp->tag == tag &&
                fp_match(svc->fpkey, fp, s + i, fp->len))
                return 1;
        }
    }
    return 0;
}

void nb_secretsvc_fps_replace(nb_secretsvc_t *svc, fp_t *all, size_t n)
{
    if (svc->fps)
        sodium_memzero(svc->fps, svc->nfps * sizeof *svc->fps);
    free(svc->fps);
    svc->fps = all;
    svc->nfps = n;
}

void nb_secretsvc_fps_remove(nb_secretsvc_t *svc, const char *name)
{
    for (size_t i = 0; i < svc->nfps; i++) {
        if (strcmp(svc->fps[i].name, name) == 0) {
            svc->fps[i] = svc->fps[svc->nfps - 1];
            sodium_memzero(&svc->fps[svc->nfps - 1], sizeof(fp_t));
            svc->nfps--;
            return;
        }
    }
}

void nb_secretsvc_fps_put(nb_secretsvc_t *svc, const fp_t *fp)
{
    nb_secretsvc_fps_remove(svc, fp->name);
    fp_t *m = realloc(svc->fps, (svc->nfps + 1) * sizeof *m);
    if (!m) {
        nb_log(NB_LOG_ERR, "secrets: out of memory for the audit guard");
        return;
    }
    svc->fps = m;
    svc->fps[svc->nfps++] = *fp;
}

/* --------------------------------------------------------------- snapshots */

static void snap_free(nb_secretsvc_snap_t *sn)
{
    if (!sn)
        return;
    nb_sealed_free(sn->sealed, sn->nsealed);
    free(sn->bindings);
    free(sn->names);
    free(sn);
}

nb_secretsvc_snap_t *nb_secretsvc_snap_ref(const nb_secretsvc_snap_t *snap)
{
    nb_secretsvc_snap_t *sn = (nb_secretsvc_snap_t *)snap;
    if (sn)
        sn->refs++;
    return sn;
}

void nb_secretsvc_snap_unref(nb_secretsvc_snap_t *snap)
{
    if (snap && --snap->refs == 0)
        snap_free(snap);
}

const nb_secretsvc_snap_t *nb_secretsvc_snapshot(const nb_secretsvc_t *svc)
{
    return svc ? svc->snap : NULL;
}

/* Pool thread. */
int nb_secretsvc_snap_load(nb_secrets_t *s, nb_secretsvc_snap_t **out)
{
    nb_secretsvc_snap_t *sn = calloc(1, sizeof *sn);
    int r;
    *out = NULL;
    if (!sn)
        return -ENOMEM;
    sn->refs = 1;
    if ((r = nb_secrets_load_sealed(s, &sn->sealed, &sn->nsealed)) < 0 ||
        (r = nb_secrets_bindings(s, &sn->bindings, &sn->nbindings)) < 0)
        goto fail;
    /* A binding stored before today's checks (a public-suffix host such as
     * `*.com`, a header that can never carry it) never injects: the same
     * rules as `secret bind`, applied to what the proxy will use. It stays
     * listed so that the user can see and remove it. */
    size_t kept = 0;
    for (size_t i = 0; i < sn->nbindings; i++) {
        nb_binding_t t = sn->bindings[i];
        if (nb_binding_normalize(&t) < 0) {
            nb_log(NB_LOG_WARN,
                   "secrets: binding %lld of %s is no longer accepted (host or header); it is "
                   "ignored: remove it with 'nilbox secret unbind'",
                   (long long)sn->bindings[i].id, sn->bindings[i].secret);
            continue;
        }
        sn->bindings[kept++] = sn->bindings[i];
    }
    sn->nbindings = kept;
    sn->names = calloc(sn->nsealed + 1, sizeof *sn->names);
    if (!sn->names) {
        r = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < sn->nsealed; i++)
        sn->names[i] = sn->sealed[i].name;
    *out = sn;
    return 0;
fail:
    snap_free(sn);
    return r;
}

void nb_secretsvc_snap_install(nb_secretsvc_t *svc, nb_secretsvc_snap_t *sn, const char *reason,
                               const char *name)
{
    if (!sn)
        return;
    nb_secretsvc_snap_unref(svc->snap);
    svc->snap = sn;
    for (watch_t *w = svc->watches; w; w = w->next)
        w->fn(w->ud, sn);
    if (svc->ev) {
        json_t *f = json_pack("{s:s, s:I, s:I}", "reason", reason, "secrets",
                              (json_int_t)sn->nsealed, "bindings", (json_int_t)sn->nbindings);
        if (f && name)
            json_object_set_new(f, "name", json_string(name));
        nb_events_emit(svc->ev, "secrets.changed", f);
    }
}

uint64_t nb_secretsvc_watch(nb_secretsvc_t *svc, nb_secretsvc_change_fn fn, void *ud)
{
    watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return 0;
    w->fn = fn;
    w->ud = ud;
    w->handle = ++svc->next_watch;
    w->next = svc->watches;
    svc->watches = w;
    return w->handle;
}

void nb_secretsvc_unwatch(nb_secretsvc_t *svc, uint64_t handle)
{
    for (watch_t **pp = &svc->watches; *pp; pp = &(*pp)->next) {
        if ((*pp)->handle == handle) {
            watch_t *w = *pp;
            *pp = w->next;
            free(w);
            return;
        }
    }
}

int nb_secretsvc_unseal_to(void *ud, const nb_sealed_t *e, uint8_t *buf, size_t cap, size_t *len)
{
    const nb_secretsvc_t *svc = ud;
    if (!svc->s)
        return NB_ESTATE;
    return nb_secrets_unseal_to(svc->s, e, buf, cap, len);
}

/* -------------------------------------------------------------- JSON shapes */

json_t *nb_secretsvc_binding_json(const nb_binding_t *b)
{
    const char *pl = nb_binding_placement_name(b->placement);
    json_t *j = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s*, s:b}", "id", (json_int_t)b->id, "secret",
                          b->secret, "host", b->host, "path_prefix", b->path_prefix, "placement",
                          pl ? pl : "?", "vm", b->vm[0] ? b->vm : NULL, "allow_cleartext",
                          b->allow_cleartext);
    if (!j)
        return NULL;
    if (b->placement == NB_PLACE_HEADER) {
        json_object_set_new(j, "header", json_string(b->header));
        json_object_set_new(j, "template", json_string(b->tmpl));
    } else if (b->placement == NB_PLACE_BASIC) {
        json_object_set_new(j, "user", json_string(b->user));
    } else if (b->placement == NB_PLACE_QUERY) {
        json_object_set_new(j, "param", json_string(b->param));
    } else if (b->placement == NB_PLACE_SIGV4) {
        json_object_set_new(j, "region", b->user[0] ? json_string(b->user) : json_null());
        json_object_set_new(j, "service", b->param[0] ? json_string(b->param) : json_null());
    }
    return j;
}
