/* The secret service: master key provider and secret operations, on the
 * store's worker thread. Module map: secretsvc_int.h. */
#include "daemon/secretsvc.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/secretsvc_int.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* ----------------------------------------------------------------- provider */

void nb_secretsvc_say_key_file_error(int r, const char *path, char *out, size_t outsz)
{
    struct stat st;
    switch (r) {
    case -ENOENT:
        snprintf(out, outsz, "key file %s does not exist", path);
        break;
    case -EPERM:
    case -EACCES:
        if (lstat(path, &st) == 0 && st.st_uid != geteuid())
            snprintf(out, outsz,
                     "key file %s is owned by uid %u, not by you (uid %u): refused; a master "
                     "key must be your own file with mode 0600",
                     path, (unsigned)st.st_uid, (unsigned)geteuid());
        else if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
            snprintf(out, outsz, "key file %s is not a regular file: refused", path);
        else
            snprintf(out, outsz,
                     "key file %s has mode %04o: other users may read it, so it is refused; run "
                     "'chmod 600 %s'",
                     path, lstat(path, &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0u, path);
        break;
    case -ELOOP:
        snprintf(out, outsz, "key file %s is a symbolic link: refused (name the file itself)",
                 path);
        break;
    case NB_EPARSE:
        snprintf(out, outsz, "key file %s does not hold a key (64 hex digits)", path);
        break;
    default:
        snprintf(out, outsz, "key file %s cannot be read: %s", path, nb_strerror(r));
        break;
    }
}

static const char *keyring_reason(int r)
{
    switch (r) {
    case NB_EUNSUPPORTED:
        return "no Secret Service (no D-Bus session bus, none running, or built without "
               "libsecret)";
    case NB_ETIMEOUT:
        return "the keyring did not answer in time";
    case NB_EAUTH:
        return "the keyring refused (locked, or the prompt was dismissed)";
    case NB_ENOTFOUND:
        return "the keyring holds no key for this store";
    default:
        return nb_strerror(r);
    }
}

/* Write transactions start IMMEDIATE: a deferred one that read first and
 * then wants to write gets SQLITE_BUSY at once, without the busy handler,
 * when another connection (the audit log's) committed in between. */
int nb_secretsvc_tx(sqlite3 *db, const char *sql)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK)
        return 0;
    nb_log(NB_LOG_ERR, "secrets: %s failed: %s", sql, sqlite3_errmsg(db));
    if (strcmp(sql, "BEGIN IMMEDIATE") != 0)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return NB_EINTERNAL;
}

/* The Argon2id parameters, created on first use (a write). */
static int kdf_params(sqlite3 *db, nb_kdf_params_t *kp)
{
    int r = nb_secretsvc_tx(db, "BEGIN IMMEDIATE");
    if (r < 0)
        return r;
    r = nb_secrets_kdf_params(db, kp);
    int c = nb_secretsvc_tx(db, r < 0 ? "ROLLBACK" : "COMMIT");
    return r < 0 ? r : c;
}

static void open_locked(job_t *j, nb_mkey_t *mk);

/* Pool thread: unwraps the data key with `mk`, loads the CA and the
 * fingerprints and the first snapshot, in one write transaction (a new
 * store writes its data key, a new CA its records). Takes ownership of mk. */
static void open_with(job_t *j, nb_mkey_t *mk)
{
    sqlite3 *db = j->svc->db;
    if (nb_secretsvc_tx(db, "BEGIN IMMEDIATE") < 0) {
        nb_mkey_free(mk);
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message, "the state database is busy: %s",
                 sqlite3_errmsg(db));
        j->status = NB_EINTERNAL;
        return;
    }
    open_locked(j, mk);
    if (nb_secretsvc_tx(db, j->status < 0 ? "ROLLBACK" : "COMMIT") < 0 && j->status == 0) {
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message, "cannot write the secret store: %s",
                 sqlite3_errmsg(db));
        j->status = NB_EINTERNAL;
    }
}

static void open_locked(job_t *j, nb_mkey_t *mk)
{
    nb_secretsvc_t *svc = j->svc;
    nb_secrets_t *s = NULL;
    nb_secret_value_t v = {0};
    int r = nb_secrets_open(svc->db, mk, &s);
    snprintf(j->provider, sizeof j->provider, "%s", nb_mkey_kind_name(nb_mkey_kind(mk)));
    nb_mkey_free(mk);
    if (r == NB_EAUTH) {
        j->new_state = j->kind == J_UNLOCK ? NB_SECRETSVC_LOCKED : NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message,
                 "the master key from the %s provider does not open this secret store (wrong "
                 "%s?); no secret can be read",
                 j->provider,
                 !strcmp(j->provider, "keyfile")      ? "key file"
                 : !strcmp(j->provider, "passphrase") ? "passphrase"
                                                      : "key");
        j->status = NB_EAUTH;
        return;
    }
    if (r < 0) {
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message, "cannot open the secret store: %s", nb_strerror(r));
        j->status = r;
        return;
    }
    if ((r = nb_ca_load_or_create(s, NULL, &j->ca)) < 0) {
        nb_log(NB_LOG_ERR, "secrets: cannot load the interception CA: %s", nb_strerror(r));
        snprintf(j->note, sizeof j->note, "the interception CA could not be loaded: %s",
                 nb_strerror(r));
    }
    nb_secretsvc_snap_t *sn = NULL;
    if ((r = nb_secretsvc_snap_load(s, &sn)) < 0) {
        nb_secrets_close(s);
        nb_ca_free(j->ca);
        j->ca = NULL;
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message, "cannot read the secret store: %s", nb_strerror(r));
        j->status = r;
        return;
    }
    j->fps = calloc(sn->nsealed + 1, sizeof *j->fps);
    for (size_t i = 0; j->fps && i < sn->nsealed; i++) {
        if (nb_secrets_unseal(s, &sn->sealed[i], &v) == 0) {
            nb_secretsvc_fp_compute(svc->fpkey, sn->sealed[i].name, v.p, v.len, &j->fps[j->nfps++]);
            nb_secret_value_free(&v);
        } else {
            nb_log(NB_LOG_ERR, "secrets: record '%s' does not authenticate (tampered?)",
                   sn->sealed[i].name);
        }
    }
    j->snap = sn;
    j->opened = s;
    j->new_state = NB_SECRETSVC_OPEN;
    j->status = 0;
}

void nb_secretsvc_work_open(job_t *j)
{
    nb_secretsvc_t *svc = j->svc;
    char existing[32] = "";
    nb_mkey_t *mk = NULL;
    int r;
    if (j->mk) {
        nb_mkey_t *k = j->mk;
        j->mk = NULL;
        open_with(j, k);
        return;
    }
    if ((r = nb_secrets_provider(svc->db, existing, sizeof existing)) < 0) {
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message, "cannot read the secret store: %s", nb_strerror(r));
        return;
    }
    /* Known before any key is at hand: status and doctor name it. */
    snprintf(j->provider, sizeof j->provider, "%s", existing);
    if (!strcmp(existing, "keyfile")) {
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message,
                 "the secret store is sealed by a key file: start nilboxd with --key-file FILE "
                 "(or set NILBOX_KEY_FILE)");
        return;
    }
    if (!strcmp(existing, "") || !strcmp(existing, "keyring")) {
        if (svc->no_keyring) {
            r = NB_EUNSUPPORTED;
        } else {
            r = nb_mkey_from_keyring(svc->home.home, existing[0] == '\0', svc->keyring_timeout_ms,
                                     &mk);
        }
        if (r == 0) {
            open_with(j, mk);
            return;
        }
        if (existing[0]) {
            j->new_state = NB_SECRETSVC_ERROR;
            snprintf(j->message, sizeof j->message,
                     "the secret store is sealed by the OS keyring, which is not usable: %s",
                     keyring_reason(r));
            return;
        }
        snprintf(j->note, sizeof j->note, "the OS keyring is not used: %s", keyring_reason(r));
        nb_log(NB_LOG_NOTICE, "secrets: %s; falling back to a passphrase", j->note);
    }
    /* Passphrase: a new store, or one sealed by a passphrase. */
    if (svc->passphrase_file[0]) {
        nb_kdf_params_t kp;
        if ((r = kdf_params(svc->db, &kp)) < 0 ||
            (r = nb_mkey_from_passphrase_file(svc->passphrase_file, &kp, &mk)) < 0) {
            j->new_state = NB_SECRETSVC_ERROR;
            if (r == -EPERM || r == -ELOOP || r == -ENOENT || r == NB_EPARSE)
                nb_secretsvc_say_key_file_error(r, svc->passphrase_file, j->message,
                                                sizeof j->message);
            else
                snprintf(j->message, sizeof j->message,
                         "cannot derive the master key from NILBOX_PASSPHRASE_FILE: %s",
                         nb_strerror(r));
            /* say_key_file_error speaks of a "key file"; this one holds a passphrase. */
            if (!strncmp(j->message, "key file", 8)) {
                char tmp[512];
                snprintf(tmp, sizeof tmp, "passphrase file%s", j->message + 8);
                snprintf(j->message, sizeof j->message, "%s", tmp);
            }
            return;
        }
        open_with(j, mk);
        return;
    }
    j->new_state = NB_SECRETSVC_LOCKED;
    if (existing[0])
        snprintf(j->message, sizeof j->message,
                 "the secret store is locked: unlock it with 'nilbox secret unlock' (or set "
                 "NILBOX_PASSPHRASE_FILE before the daemon starts)");
    else
        snprintf(j->message, sizeof j->message,
                 "no master key yet: choose a passphrase with 'nilbox secret unlock' (or set "
                 "NILBOX_PASSPHRASE_FILE, or start nilboxd with --key-file FILE on headless "
                 "machines)");
}

void nb_secretsvc_work_unlock(job_t *j)
{
    nb_secretsvc_t *svc = j->svc;
    nb_kdf_params_t kp;
    nb_mkey_t *mk = NULL;
    int r;
    if ((r = kdf_params(svc->db, &kp)) < 0 ||
        (r = nb_mkey_from_passphrase((const char *)j->value, j->vlen, &kp, &mk)) < 0) {
        j->status = r;
        j->new_state = NB_SECRETSVC_LOCKED;
        snprintf(j->message, sizeof j->message, "cannot derive the master key: %s", nb_strerror(r));
        return;
    }
    open_with(j, mk);
}

/* ---------------------------------------------------------------- ops (pool) */

static json_t *info_json(const nb_secret_info_t *in, const nb_binding_t *b, size_t nb)
{
    json_t *bl = json_array();
    for (size_t k = 0; bl && k < nb; k++)
        if (!strcmp(b[k].secret, in->name))
            json_array_append_new(bl, nb_secretsvc_binding_json(&b[k]));
    return json_pack("{s:s, s:I, s:I, s:I, s:o}", "name", in->name, "version",
                     (json_int_t)in->version, "created_at", (json_int_t)in->created_at,
                     "updated_at", (json_int_t)in->updated_at, "bindings", bl ? bl : json_array());
}

void nb_secretsvc_work_list(job_t *j)
{
    nb_secret_info_t *in = NULL;
    nb_binding_t *b = NULL;
    size_t n = 0, nb = 0;
    int r;
    if ((r = nb_secrets_ls(j->svc->s, &in, &n)) < 0 ||
        (r = nb_secrets_bindings(j->svc->s, &b, &nb)) < 0)
        goto out;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, info_json(&in[i], b, nb));
    j->result = json_pack("{s:o}", "secrets", arr ? arr : json_array());
    r = j->result ? 0 : -ENOMEM;
out:
    j->status = r;
    free(in);
    free(b);
}

static int find_info(nb_secrets_t *s, const char *name, nb_secret_info_t *out)
{
    nb_secret_info_t *in = NULL;
    size_t n = 0;
    int r = nb_secrets_ls(s, &in, &n);
    if (r < 0)
        return r;
    r = NB_ENOTFOUND;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(in[i].name, name)) {
            *out = in[i];
            r = 0;
        }
    }
    free(in);
    return r;
}

void nb_secretsvc_work_set(job_t *j)
{
    nb_secretsvc_t *svc = j->svc;
    nb_secret_info_t info;
    int existed = find_info(svc->s, j->name, &info) == 0;
    int r = nb_secrets_set(svc->s, j->name, j->value, j->vlen);
    if (r == 0 && (j->fps = calloc(1, sizeof *j->fps))) {
        nb_secretsvc_fp_compute(svc->fpkey, j->name, j->value, j->vlen, j->fps);
        j->nfps = 1;
    }
    sodium_free(j->value); /* wipes */
    j->value = NULL;
    if (r < 0 || (r = find_info(svc->s, j->name, &info)) < 0) {
        j->status = r;
        return;
    }
    j->result = json_pack("{s:s, s:I, s:b}", "name", j->name, "version", (json_int_t)info.version,
                          "created", !existed);
    j->status = nb_secretsvc_snap_load(svc->s, &j->snap);
}

void nb_secretsvc_work_rm(job_t *j)
{
    int r = nb_secrets_rm(j->svc->s, j->name);
    if (r == 0) {
        j->result = json_pack("{s:s, s:b}", "name", j->name, "removed", 1);
        r = nb_secretsvc_snap_load(j->svc->s, &j->snap);
    }
    j->status = r;
}

static int binding_same(const nb_binding_t *a, const nb_binding_t *b)
{
    return !strcmp(a->secret, b->secret) && !strcmp(a->host, b->host) &&
           !strcmp(a->path_prefix, b->path_prefix) && a->placement == b->placement &&
           !strcmp(a->header, b->header) && !strcmp(a->user, b->user) &&
           !strcmp(a->param, b->param) && !strcmp(a->vm, b->vm);
}

void nb_secretsvc_work_bind(job_t *j)
{
    nb_secretsvc_t *svc = j->svc;
    nb_binding_t *all = NULL, b = j->b;
    size_t n = 0;
    int64_t id = 0;
    int r;
    nb_secret_info_t info;
    if ((r = find_info(svc->s, b.secret, &info)) < 0)
        goto out;
    if (nb_binding_normalize(&b) < 0) {
        r = NB_EINVAL;
        goto out;
    }
    /* The table's UNIQUE constraint would say "internal error"; say what it is. */
    if ((r = nb_secrets_bindings(svc->s, &all, &n)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (binding_same(&all[i], &b)) {
            j->id = all[i].id;
            r = NB_EEXIST;
            goto out;
        }
    }
    if ((r = nb_secrets_bind(svc->s, &b, &id)) < 0)
        goto out;
    b.id = id;
    j->b = b;
    j->result = nb_secretsvc_binding_json(&b);
    r = nb_secretsvc_snap_load(svc->s, &j->snap);
out:
    free(all);
    j->status = r;
}

void nb_secretsvc_work_unbind(job_t *j)
{
    nb_binding_t *all = NULL;
    size_t n = 0;
    int r = nb_secrets_bindings(j->svc->s, &all, &n);
    if (r == 0) {
        r = NB_ENOTFOUND;
        for (size_t i = 0; i < n; i++)
            if (all[i].id == j->id) {
                j->old = all[i];
                r = 0;
            }
    }
    free(all);
    if (r == 0)
        r = nb_secrets_unbind(j->svc->s, j->id);
    if (r == 0) {
        j->result = json_pack("{s:I, s:b}", "id", (json_int_t)j->id, "removed", 1);
        r = nb_secretsvc_snap_load(j->svc->s, &j->snap);
    }
    j->status = r;
}
