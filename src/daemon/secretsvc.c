/* The secret service: see secretsvc.h; module map in secretsvc_int.h. */
#include "daemon/secretsvc.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host/doctor.h"
#include "daemon/egress/rules.h"
#include "daemon/base/events.h"
#include "daemon/secretsvc_int.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

static void run_next(nb_secretsvc_t *svc);
/* ------------------------------------------------------------------ chain */

static void on_work(nb_store_t *st, void *ud)
{
    job_t *j = ud;
    (void)st;
    if (j->kind != J_OPEN && j->kind != J_UNLOCK && !j->svc->s) {
        j->status = NB_ESTATE;
        return;
    }
    int writes = j->kind == J_SET || j->kind == J_RM || j->kind == J_BIND || j->kind == J_UNBIND;
    if (writes && (j->status = nb_secretsvc_tx(j->svc->db, "BEGIN IMMEDIATE")) < 0) {
        if (j->value)
            sodium_memzero(j->value, j->vlen);
        return;
    }
    switch (j->kind) {
    case J_OPEN:
        nb_secretsvc_work_open(j);
        break;
    case J_UNLOCK:
        nb_secretsvc_work_unlock(j);
        break;
    case J_LIST:
        nb_secretsvc_work_list(j);
        break;
    case J_SET:
        nb_secretsvc_work_set(j);
        break;
    case J_RM:
        nb_secretsvc_work_rm(j);
        break;
    case J_BIND:
        nb_secretsvc_work_bind(j);
        break;
    case J_UNBIND:
        nb_secretsvc_work_unbind(j);
        break;
    }
    if (writes) {
        int c = nb_secretsvc_tx(j->svc->db, j->status < 0 ? "ROLLBACK" : "COMMIT");
        if (c < 0 && j->status >= 0) {
            /* Nothing was stored: what the job read back is not true. */
            j->status = c;
            nb_secretsvc_snap_unref(j->snap);
            j->snap = NULL;
            json_decref(j->result);
            j->result = NULL;
        }
    }
}

static void audit_row(nb_secretsvc_t *svc, const char *kind, const char *vm, const char *host,
                      json_t *detail)
{
    if (svc->audit)
        nb_audit_append(svc->audit, kind, vm, host, 0, detail);
    else
        json_decref(detail);
}

static void set_state(nb_secretsvc_t *svc, int state, const char *message)
{
    int changed = svc->state != state;
    svc->state = state;
    snprintf(svc->message, sizeof svc->message, "%s", message ? message : "");
    if (changed && svc->ev)
        nb_events_emit(svc->ev, "secrets.state",
                       json_pack("{s:s, s:s, s:s, s:b, s:s*}", "state",
                                 nb_secretsvc_state_name(state), "provider", svc->provider,
                                 "message", svc->message, "locked", state == NB_SECRETSVC_LOCKED,
                                 "hint",
                                 state == NB_SECRETSVC_LOCKED
                                     ? "guests get no placeholders and their egress answers 503 "
                                       "until it is unlocked: run 'nilbox secret unlock'"
                                     : NULL));
}

/* Loop thread: applies an open/unlock outcome. */
static void finish_open(nb_secretsvc_t *svc, job_t *j)
{
    if (j->note[0])
        snprintf(svc->note, sizeof svc->note, "%s", j->note);
    if (j->new_state == NB_SECRETSVC_OPEN && j->opened) {
        svc->s = j->opened;
        j->opened = NULL;
        svc->ca = j->ca;
        j->ca = NULL;
        snprintf(svc->provider, sizeof svc->provider, "%s", j->provider);
        nb_secretsvc_fps_replace(svc, j->fps, j->nfps);
        j->fps = NULL;
        set_state(svc, NB_SECRETSVC_OPEN, "");
        nb_log(NB_LOG_NOTICE, "secrets: store open (master key from the %s provider, %zu secrets)",
               svc->provider, j->snap ? j->snap->nsealed : 0);
        if (!strcmp(svc->provider, "keyfile"))
            nb_log(NB_LOG_WARN,
                   "secrets: THE MASTER KEY IS IN A FILE (%s): anyone who can read "
                   "it and state.db can read every secret; prefer the OS keyring "
                   "or a passphrase",
                   svc->key_file);
        if (!strcmp(svc->provider, "keyfile") && svc->key_file_explicit && svc->st)
            nb_store_setting_set(svc->st, SETTING_KEY_FILE, svc->key_file);
        if (svc->audit) {
            /* Key the audit chain from here on (docs/internals/audit.md):
             * the unlock row below is the first keyed one of this run. */
            uint8_t *ak = sodium_malloc(NB_AUDIT_KEY_BYTES);
            if (ak && nb_secrets_audit_key(svc->s, ak, NB_AUDIT_KEY_BYTES) == 0)
                nb_audit_set_key(svc->audit, ak);
            else
                nb_log(NB_LOG_ERR, "secrets: cannot derive the audit key; rows stay unkeyed");
            sodium_free(ak);
        }
        audit_row(svc, NB_AUDIT_SECRETS_UNLOCK, NULL, NULL,
                  json_pack("{s:s, s:s}", "provider", svc->provider, "outcome", "open"));
        nb_secretsvc_snap_install(svc, j->snap, "unlock", NULL);
        j->snap = NULL;
        return;
    }
    if (j->kind == J_UNLOCK && j->status == NB_EAUTH) {
        /* A wrong passphrase typed at an unlock prompt: still waiting. */
        audit_row(svc, NB_AUDIT_SECRETS_UNLOCK, NULL, NULL,
                  json_pack("{s:s, s:s}", "provider", "passphrase", "outcome", "wrong-key"));
        return;
    }
    if (j->provider[0])
        snprintf(svc->provider, sizeof svc->provider, "%s", j->provider);
    set_state(svc, j->new_state, j->message);
    nb_log(j->new_state == NB_SECRETSVC_ERROR ? NB_LOG_ERR : NB_LOG_NOTICE, "secrets: %s",
           j->message);
    if (j->new_state == NB_SECRETSVC_ERROR)
        audit_row(svc, NB_AUDIT_SECRETS_UNLOCK, NULL, NULL,
                  json_pack("{s:s, s:s, s:s}", "provider", j->provider[0] ? j->provider : "none",
                            "outcome", j->status == NB_EAUTH ? "wrong-key" : "error", "reason",
                            j->message));
}

static void finish_op(nb_secretsvc_t *svc, job_t *j)
{
    if (j->status < 0)
        return;
    switch (j->kind) {
    case J_SET:
        if (j->nfps)
            nb_secretsvc_fps_put(svc, j->fps);
        audit_row(svc, NB_AUDIT_SECRET_SET, NULL, NULL,
                  json_pack("{s:s, s:I}", "secret", j->name, "version",
                            (json_int_t)nb_json_int(j->result, "version", 0)));
        nb_secretsvc_snap_install(svc, j->snap, "set", j->name);
        break;
    case J_RM:
        nb_secretsvc_fps_remove(svc, j->name);
        audit_row(svc, NB_AUDIT_SECRET_RM, NULL, NULL, json_pack("{s:s}", "secret", j->name));
        nb_secretsvc_snap_install(svc, j->snap, "rm", j->name);
        break;
    case J_BIND:
        audit_row(svc, NB_AUDIT_SECRET_BIND, j->b.vm[0] ? j->b.vm : NULL, j->b.host,
                  json_pack("{s:s, s:I, s:s, s:s, s:b}", "secret", j->b.secret, "binding_id",
                            (json_int_t)j->b.id, "placement",
                            nb_binding_placement_name(j->b.placement), "path_prefix",
                            j->b.path_prefix, "allow_cleartext", j->b.allow_cleartext));
        nb_secretsvc_snap_install(svc, j->snap, "bind", j->b.secret);
        break;
    case J_UNBIND:
        audit_row(
            svc, NB_AUDIT_SECRET_UNBIND, j->old.vm[0] ? j->old.vm : NULL, j->old.host,
            json_pack("{s:s, s:I}", "secret", j->old.secret, "binding_id", (json_int_t)j->id));
        nb_secretsvc_snap_install(svc, j->snap, "unbind", j->old.secret);
        break;
    default:
        break;
    }
    j->snap = NULL;
}

static void job_free(job_t *j)
{
    if (!j)
        return;
    sodium_free(j->value);
    nb_mkey_free(j->mk);
    nb_secrets_close(j->opened);
    nb_ca_free(j->ca);
    nb_secretsvc_snap_unref(j->snap);
    if (j->fps)
        sodium_memzero(j->fps, (j->nfps ? j->nfps : 1) * sizeof *j->fps);
    free(j->fps);
    json_decref(j->result);
    sodium_memzero(&j->b, sizeof j->b);
    free(j);
}

static void on_done(void *ud, int status)
{
    job_t *j = ud;
    nb_secretsvc_t *svc = j->svc;
    svc->busy = 0;
    if (status < 0)
        j->status = status;
    else if (j->kind == J_OPEN || j->kind == J_UNLOCK)
        finish_open(svc, j);
    else
        finish_op(svc, j);
    if (j->done) {
        json_t *res = j->status < 0 ? NULL : j->result;
        j->result = NULL;
        if (j->status == NB_EEXIST && j->kind == J_BIND)
            res = json_pack("{s:I}", "id", (json_int_t)j->id);
        j->done(j->ud, j->status, res);
    }
    job_free(j);
    run_next(svc);
}

static void run_next(nb_secretsvc_t *svc)
{
    if (svc->busy || svc->closed || !svc->jobs)
        return;
    job_t *j = svc->jobs;
    svc->jobs = j->next;
    if (!svc->jobs)
        svc->tail = &svc->jobs;
    j->next = NULL;
    svc->busy = 1;
    int r = nb_store_queue(svc->st, svc->loop, on_work, on_done, j);
    if (r < 0) {
        svc->busy = 0;
        nb_log(NB_LOG_ERR, "secrets: cannot queue work: %s", uv_strerror(r));
        if (j->done)
            j->done(j->ud, NB_EINTERNAL, NULL);
        job_free(j);
    }
}

static job_t *job_new(nb_secretsvc_t *svc, int kind, nb_secretsvc_done_fn done, void *ud)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->svc = svc;
    j->kind = kind;
    j->done = done;
    j->ud = ud;
    return j;
}

static int push(nb_secretsvc_t *svc, job_t *j)
{
    if (svc->closed) {
        job_free(j);
        return NB_ESTATE;
    }
    *svc->tail = j;
    svc->tail = &j->next;
    run_next(svc);
    return 0;
}

/* Operations need an open store, or one that is still opening. */
static int usable(const nb_secretsvc_t *svc)
{
    return svc->state == NB_SECRETSVC_OPEN || svc->state == NB_SECRETSVC_STARTING;
}

int nb_secretsvc_unlock(nb_secretsvc_t *svc, const char *pass, size_t len,
                        nb_secretsvc_done_fn done, void *ud)
{
    if (svc->state != NB_SECRETSVC_LOCKED)
        return NB_ESTATE;
    if (len == 0 || len > 1024)
        return NB_EINVAL;
    char existing[32] = "";
    nb_secrets_provider(svc->db, existing, sizeof existing);
    if (!existing[0] && len < NB_SECRETSVC_PASSPHRASE_MIN)
        return NB_EINVAL;
    job_t *j = job_new(svc, J_UNLOCK, done, ud);
    if (!j || !(j->value = sodium_malloc(len + 1))) {
        job_free(j);
        return -ENOMEM;
    }
    memcpy(j->value, pass, len);
    j->value[len] = 0;
    j->vlen = len;
    return push(svc, j);
}

int nb_secretsvc_list(nb_secretsvc_t *svc, nb_secretsvc_done_fn done, void *ud)
{
    if (!usable(svc))
        return NB_ESTATE;
    job_t *j = job_new(svc, J_LIST, done, ud);
    return j ? push(svc, j) : -ENOMEM;
}

int nb_secretsvc_set(nb_secretsvc_t *svc, const char *name, const void *value, size_t len,
                     nb_secretsvc_done_fn done, void *ud)
{
    if (!usable(svc))
        return NB_ESTATE;
    if (!nb_secrets_name_valid(name) || len == 0 || len > NB_SECRETS_VALUE_MAX)
        return len > NB_SECRETS_VALUE_MAX ? NB_ETOOBIG : NB_EINVAL;
    job_t *j = job_new(svc, J_SET, done, ud);
    if (!j || !(j->value = sodium_malloc(len))) {
        job_free(j);
        return -ENOMEM;
    }
    memcpy(j->value, value, len);
    j->vlen = len;
    snprintf(j->name, sizeof j->name, "%s", name);
    return push(svc, j);
}

int nb_secretsvc_rm(nb_secretsvc_t *svc, const char *name, nb_secretsvc_done_fn done, void *ud)
{
    if (!usable(svc))
        return NB_ESTATE;
    if (!nb_secrets_name_valid(name))
        return NB_EINVAL;
    job_t *j = job_new(svc, J_RM, done, ud);
    if (!j)
        return -ENOMEM;
    snprintf(j->name, sizeof j->name, "%s", name);
    return push(svc, j);
}

int nb_secretsvc_bind(nb_secretsvc_t *svc, const nb_binding_t *b, nb_secretsvc_done_fn done,
                      void *ud)
{
    if (!usable(svc))
        return NB_ESTATE;
    nb_binding_t t = *b;
    if (!nb_secrets_name_valid(t.secret) || nb_binding_normalize(&t) < 0)
        return NB_EINVAL;
    job_t *j = job_new(svc, J_BIND, done, ud);
    if (!j)
        return -ENOMEM;
    j->b = t;
    return push(svc, j);
}

int nb_secretsvc_unbind(nb_secretsvc_t *svc, int64_t id, nb_secretsvc_done_fn done, void *ud)
{
    if (!usable(svc))
        return NB_ESTATE;
    job_t *j = job_new(svc, J_UNBIND, done, ud);
    if (!j)
        return -ENOMEM;
    j->id = id;
    return push(svc, j);
}

/* --------------------------------------------------------------- lifecycle */

static int schema(sqlite3 *db, char *err, size_t errsz)
{
    char *msg = NULL;
    /* Both are idempotent (CREATE ... IF NOT EXISTS); they are the secret
     * store's and the gate rules' own schema, applied before anything uses
     * them. */
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, nb_secrets_migration_sql, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, nb_rules_migration_sql, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errsz, "cannot create the secret store tables: %s",
                 msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return NB_EINTERNAL;
    }
    return 0;
}

int nb_secretsvc_new(uv_loop_t *loop, nb_store_t *st, nb_audit_t *audit, nb_events_t *ev,
                     const nb_home_t *home, const nb_secretsvc_cfg_t *cfg, nb_secretsvc_t **out,
                     char *err, size_t errsz)
{
    nb_secretsvc_t *svc = NULL;
    char existing[32] = "", *setting = NULL;
    int r;
    *out = NULL;
    err[0] = '\0';
    const char *path = sqlite3_db_filename(nb_store_db(st), "main");
    if (!path || !path[0]) {
        snprintf(err, errsz, "the state database has no file name");
        return NB_EINVAL;
    }
    if (!(svc = calloc(1, sizeof *svc)))
        return -ENOMEM;
    svc->loop = loop;
    svc->st = st;
    svc->audit = audit;
    svc->ev = ev;
    svc->home = *home;
    svc->tail = &svc->jobs;
    svc->state = NB_SECRETSVC_STARTING;
    svc->keyring_timeout_ms = cfg && cfg->keyring_timeout_ms > 0 ? cfg->keyring_timeout_ms
                                                                 : NB_SECRETSVC_KEYRING_TIMEOUT_MS;
    svc->no_keyring = cfg ? cfg->no_keyring : 0;
    if (cfg && cfg->passphrase_file && cfg->passphrase_file[0])
        snprintf(svc->passphrase_file, sizeof svc->passphrase_file, "%s", cfg->passphrase_file);
    if (!(svc->fpkey = sodium_malloc(32 + crypto_shorthash_KEYBYTES))) {
        r = -ENOMEM;
        goto fail;
    }
    randombytes_buf(svc->fpkey, 32 + crypto_shorthash_KEYBYTES);
    if (sqlite3_open_v2(path, &svc->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
                        NULL) != SQLITE_OK) {
        snprintf(err, errsz, "cannot open %s for the secret store: %s", path,
                 svc->db ? sqlite3_errmsg(svc->db) : "?");
        r = NB_EINTERNAL;
        goto fail;
    }
    sqlite3_busy_timeout(svc->db, 5000);
    sqlite3_exec(svc->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if ((r = schema(svc->db, err, errsz)) < 0)
        goto fail;
    if ((r = nb_secrets_provider(svc->db, existing, sizeof existing)) < 0) {
        snprintf(err, errsz, "cannot read the secret store: %s", nb_strerror(r));
        goto fail;
    }

    /* The key file: explicit now, or recorded when the store was sealed by one. */
    int explicit_kf = cfg && cfg->key_file && cfg->key_file[0];
    if (!explicit_kf && !strcmp(existing, "keyfile") &&
        nb_store_setting_get(st, SETTING_KEY_FILE, &setting) == 0 && setting[0])
        snprintf(svc->key_file, sizeof svc->key_file, "%s", setting);
    free(setting);
    if (explicit_kf) {
        /* main.c made it absolute (the daemon's cwd is "/"). */
        snprintf(svc->key_file, sizeof svc->key_file, "%s", cfg->key_file);
        svc->key_file_explicit = 1;
    }
    if (svc->key_file[0]) {
        nb_mkey_t *mk = NULL;
        char msg[512];
        snprintf(svc->provider, sizeof svc->provider, "keyfile");
        if (existing[0] && strcmp(existing, "keyfile") != 0) {
            snprintf(msg, sizeof msg,
                     "the secret store is sealed by the %s provider, so a key file cannot open "
                     "it; start nilboxd without --key-file",
                     existing);
            r = NB_ESTATE;
        } else {
            r = nb_mkey_keyfile_load(svc->key_file, &mk);
            if (r == -ENOENT && !existing[0] && svc->key_file_explicit)
                r = nb_mkey_keyfile_create(svc->key_file, &mk);
            if (r < 0)
                nb_secretsvc_say_key_file_error(r, svc->key_file, msg, sizeof msg);
        }
        if (r < 0) {
            if (svc->key_file_explicit) {
                snprintf(err, errsz, "%s", msg);
                goto fail;
            }
            set_state(svc, NB_SECRETSVC_ERROR, msg);
            nb_log(NB_LOG_ERR, "secrets: %s", msg);
            if (audit)
                nb_audit_set_guard(audit, nb_secretsvc_guard, svc);
            *out = svc;
            return 0;
        }
        job_t *j = job_new(svc, J_OPEN, NULL, NULL);
        if (!j) {
            nb_mkey_free(mk);
            r = -ENOMEM;
            goto fail;
        }
        j->mk = mk;
        push(svc, j);
    } else {
        job_t *j = job_new(svc, J_OPEN, NULL, NULL);
        if (!j) {
            r = -ENOMEM;
            goto fail;
        }
        push(svc, j);
    }
    if (audit)
        nb_audit_set_guard(audit, nb_secretsvc_guard, svc);
    *out = svc;
    return 0;
fail:
    if (!err[0])
        snprintf(err, errsz, "cannot start the secret service: %s", nb_strerror(r));
    nb_secretsvc_close(svc);
    return r;
}

void nb_secretsvc_close(nb_secretsvc_t *svc)
{
    if (!svc)
        return;
    svc->closed = 1;
    if (svc->audit)
        nb_audit_set_guard(svc->audit, NULL, NULL);
    if (svc->busy)
        nb_log(NB_LOG_ERR, "secrets: closed while a job is in flight (bug)");
    while (svc->jobs) {
        job_t *j = svc->jobs;
        svc->jobs = j->next;
        if (j->done)
            j->done(j->ud, UV_ECANCELED, NULL);
        job_free(j);
    }
    while (svc->watches) {
        watch_t *w = svc->watches;
        svc->watches = w->next;
        free(w);
    }
    nb_secretsvc_snap_unref(svc->snap);
    nb_secretsvc_fps_replace(svc, NULL, 0);
    nb_ca_free(svc->ca);
    nb_secrets_close(svc->s);
    if (svc->db)
        sqlite3_close_v2(svc->db);
    sodium_free(svc->fpkey);
    free(svc);
}

/* ------------------------------------------------------------------ status */

int nb_secretsvc_state(const nb_secretsvc_t *svc)
{
    return svc->state;
}

const char *nb_secretsvc_state_name(int state)
{
    switch (state) {
    case NB_SECRETSVC_STARTING:
        return "starting";
    case NB_SECRETSVC_LOCKED:
        return "locked";
    case NB_SECRETSVC_OPEN:
        return "open";
    default:
        return "error";
    }
}

const char *nb_secretsvc_provider(const nb_secretsvc_t *svc)
{
    return svc->provider;
}

const char *nb_secretsvc_message(const nb_secretsvc_t *svc)
{
    return svc->message[0] ? svc->message : svc->note;
}

nb_ca_t *nb_secretsvc_ca(nb_secretsvc_t *svc)
{
    return svc ? svc->ca : NULL;
}

json_t *nb_secretsvc_status_json(const nb_secretsvc_t *svc)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s*, s:I, s:I, s:b}", "state",
                     nb_secretsvc_state_name(svc->state), "provider", svc->provider, "message",
                     svc->message, "note", svc->note, "key_file",
                     svc->key_file[0] ? svc->key_file : NULL, "secrets",
                     (json_int_t)(svc->snap ? svc->snap->nsealed : 0), "bindings",
                     (json_int_t)(svc->snap ? svc->snap->nbindings : 0), "ca", svc->ca != NULL);
}

void nb_secretsvc_doctor(const nb_secretsvc_t *svc, json_t *report)
{
    nb_doctor_result_t res;
    memset(&res, 0, sizeof res);
    const char *note = svc->note[0] ? svc->note : "";
    switch (svc->state) {
    case NB_SECRETSVC_OPEN:
        if (!strcmp(svc->provider, "keyfile")) {
            res.status = NB_DOCTOR_WARN;
            snprintf(res.message, sizeof res.message,
                     "master key: KEY FILE %.300s (explicitly chosen); anyone who can read it and "
                     "state.db can read every secret",
                     svc->key_file);
            snprintf(res.hint, sizeof res.hint,
                     "on a desktop, prefer the OS keyring; elsewhere keep the key file on "
                     "another disk or use a passphrase (NILBOX_PASSPHRASE_FILE)");
        } else {
            res.status = NB_DOCTOR_OK;
            snprintf(res.message, sizeof res.message, "master key: %s%s%.300s%s",
                     !strcmp(svc->provider, "keyring") ? "OS keyring (Secret Service)"
                                                       : "passphrase (Argon2id)",
                     note[0] ? " (" : "", note, note[0] ? ")" : "");
        }
        break;
    case NB_SECRETSVC_STARTING:
        res.status = NB_DOCTOR_OK;
        snprintf(res.message, sizeof res.message, "the secret store is being opened");
        break;
    case NB_SECRETSVC_LOCKED:
        res.status = NB_DOCTOR_WARN;
        snprintf(res.message, sizeof res.message,
                 "the secret store is LOCKED (guests get no placeholders, their egress answers "
                 "503); master key: passphrase, not given yet: %.200s%s%.120s",
                 svc->message, note[0] ? "; " : "", note);
        snprintf(res.hint, sizeof res.hint,
                 "run 'nilbox secret unlock' (or set NILBOX_PASSPHRASE_FILE for the daemon)");
        break;
    default:
        res.status = NB_DOCTOR_FAIL;
        snprintf(res.message, sizeof res.message, "secret store unusable%s%s: %.400s",
                 svc->provider[0] ? " with the provider " : "", svc->provider, svc->message);
        snprintf(res.hint, sizeof res.hint,
                 "start nilboxd with the key or provider that sealed this store; nothing can "
                 "be read without it");
        break;
    }
    nb_doctor_add(report, "secrets", &res);
}
