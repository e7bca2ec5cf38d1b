#include "daemon/secretsvc.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/doctor.h"
#include "daemon/egress/rules.h"
#include "daemon/events.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define SETTING_KEY_FILE "secrets.key_file"
#define FP_BYTES 16

/* Keyed fingerprint of one value: never the value, and useless without the
 * per-process key (which lives in locked memory). */
typedef struct {
    char name[NB_SECRETS_NAME_MAX + 1];
    size_t len;
    uint32_t tag; /* keyed short hash of the first 4 bytes (len >= 4): a cheap prefilter */
    uint8_t h[FP_BYTES];
} fp_t;

typedef struct watch {
    struct watch *next;
    uint64_t handle;
    nb_secretsvc_change_fn fn;
    void *ud;
} watch_t;

enum { J_OPEN, J_UNLOCK, J_LIST, J_SET, J_RM, J_BIND, J_UNBIND, J_RUN };

typedef struct job {
    struct job *next;
    nb_secretsvc_t *svc;
    int kind;
    nb_secretsvc_done_fn done;
    void *ud;
    int status;
    json_t *result;
    /* inputs */
    char name[NB_SECRETS_NAME_MAX + 1];
    uint8_t *value; /* sodium_malloc: value or passphrase */
    size_t vlen;
    nb_binding_t b;
    int64_t id;
    nb_mkey_t *mk; /* J_OPEN with a key file */
    /* outputs for the loop */
    nb_secrets_t *opened;
    nb_ca_t *ca;
    char provider[16];
    char message[512];
    char note[256];
    int new_state;
    nb_secretsvc_snap_t *snap;
    fp_t *fps; /* J_OPEN/J_UNLOCK: all; J_SET: one */
    size_t nfps;
    nb_binding_t old;              /* J_UNBIND: what was removed (for the audit row) */
    nb_secretsvc_work_fn run_work; /* J_RUN */
    nb_secretsvc_after_fn run_done;
} job_t;

struct nb_secretsvc {
    uv_loop_t *loop;
    nb_store_t *st;
    nb_audit_t *audit;
    nb_events_t *ev;
    nb_home_t home;
    sqlite3 *db;
    nb_secrets_t *s;
    nb_ca_t *ca;
    int state;
    char provider[16];
    char message[512];
    char note[256]; /* e.g. why the keyring was not used */
    char key_file[PATH_MAX];
    int key_file_explicit;
    char passphrase_file[PATH_MAX];
    int keyring_timeout_ms, no_keyring;
    job_t *jobs, **tail;
    int busy, closed;
    nb_secretsvc_snap_t *snap;
    fp_t *fps;
    size_t nfps;
    uint8_t *fpkey; /* sodium_malloc: 32 bytes BLAKE2b key + 16 bytes SipHash key */
    watch_t *watches;
    uint64_t next_watch;
};

static void run_next(nb_secretsvc_t *svc);

/* ------------------------------------------------------------ fingerprints */

static void fp_compute(const uint8_t *key, const char *name, const uint8_t *v, size_t len, fp_t *fp)
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

static void fps_replace(nb_secretsvc_t *svc, fp_t *all, size_t n)
{
    if (svc->fps)
        sodium_memzero(svc->fps, svc->nfps * sizeof *svc->fps);
    free(svc->fps);
    svc->fps = all;
    svc->nfps = n;
}

static void fps_remove(nb_secretsvc_t *svc, const char *name)
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

static void fps_put(nb_secretsvc_t *svc, const fp_t *fp)
{
    fps_remove(svc, fp->name);
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
static int snap_load(nb_secrets_t *s, nb_secretsvc_snap_t **out)
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

static void snap_install(nb_secretsvc_t *svc, nb_secretsvc_snap_t *sn, const char *reason,
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

int nb_secretsvc_unseal_to(const nb_secretsvc_t *svc, const nb_sealed_t *e, uint8_t *buf,
                           size_t cap, size_t *len)
{
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
    }
    return j;
}

/* ----------------------------------------------------------------- provider */

static void say_key_file_error(int r, const char *path, char *out, size_t outsz)
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
static int tx(sqlite3 *db, const char *sql)
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
    int r = tx(db, "BEGIN IMMEDIATE");
    if (r < 0)
        return r;
    r = nb_secrets_kdf_params(db, kp);
    int c = tx(db, r < 0 ? "ROLLBACK" : "COMMIT");
    return r < 0 ? r : c;
}

static void open_locked(job_t *j, nb_mkey_t *mk);

/* Pool thread: unwraps the data key with `mk`, loads the CA and the
 * fingerprints and the first snapshot, in one write transaction (a new
 * store writes its data key, a new CA its records). Takes ownership of mk. */
static void open_with(job_t *j, nb_mkey_t *mk)
{
    sqlite3 *db = j->svc->db;
    if (tx(db, "BEGIN IMMEDIATE") < 0) {
        nb_mkey_free(mk);
        j->new_state = NB_SECRETSVC_ERROR;
        snprintf(j->message, sizeof j->message, "the state database is busy: %s",
                 sqlite3_errmsg(db));
        j->status = NB_EINTERNAL;
        return;
    }
    open_locked(j, mk);
    if (tx(db, j->status < 0 ? "ROLLBACK" : "COMMIT") < 0 && j->status == 0) {
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
    if ((r = snap_load(s, &sn)) < 0) {
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
            fp_compute(svc->fpkey, sn->sealed[i].name, v.p, v.len, &j->fps[j->nfps++]);
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

static void work_open(job_t *j)
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
                say_key_file_error(r, svc->passphrase_file, j->message, sizeof j->message);
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

static void work_unlock(job_t *j)
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

static void work_list(job_t *j)
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

static void work_set(job_t *j)
{
    nb_secretsvc_t *svc = j->svc;
    nb_secret_info_t info;
    int existed = find_info(svc->s, j->name, &info) == 0;
    int r = nb_secrets_set(svc->s, j->name, j->value, j->vlen);
    if (r == 0 && (j->fps = calloc(1, sizeof *j->fps))) {
        fp_compute(svc->fpkey, j->name, j->value, j->vlen, j->fps);
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
    j->status = snap_load(svc->s, &j->snap);
}

static void work_rm(job_t *j)
{
    int r = nb_secrets_rm(j->svc->s, j->name);
    if (r == 0) {
        j->result = json_pack("{s:s, s:b}", "name", j->name, "removed", 1);
        r = snap_load(j->svc->s, &j->snap);
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

static void work_bind(job_t *j)
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
    r = snap_load(svc->s, &j->snap);
out:
    free(all);
    j->status = r;
}

static void work_unbind(job_t *j)
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
        r = snap_load(j->svc->s, &j->snap);
    }
    j->status = r;
}

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
    if (writes && (j->status = tx(j->svc->db, "BEGIN IMMEDIATE")) < 0) {
        if (j->value)
            sodium_memzero(j->value, j->vlen);
        return;
    }
    switch (j->kind) {
    case J_OPEN:
        work_open(j);
        break;
    case J_UNLOCK:
        work_unlock(j);
        break;
    case J_LIST:
        work_list(j);
        break;
    case J_SET:
        work_set(j);
        break;
    case J_RM:
        work_rm(j);
        break;
    case J_BIND:
        work_bind(j);
        break;
    case J_UNBIND:
        work_unbind(j);
        break;
    case J_RUN:
        j->status = j->run_work(j->svc->s, j->ud);
        break;
    }
    if (writes) {
        int c = tx(j->svc->db, j->status < 0 ? "ROLLBACK" : "COMMIT");
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
                       json_pack("{s:s, s:s, s:s}", "state", nb_secretsvc_state_name(state),
                                 "provider", svc->provider, "message", svc->message));
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
        fps_replace(svc, j->fps, j->nfps);
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
        audit_row(svc, NB_AUDIT_SECRETS_UNLOCK, NULL, NULL,
                  json_pack("{s:s, s:s}", "provider", svc->provider, "outcome", "open"));
        snap_install(svc, j->snap, "unlock", NULL);
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
            fps_put(svc, j->fps);
        audit_row(svc, NB_AUDIT_SECRET_SET, NULL, NULL,
                  json_pack("{s:s, s:I}", "secret", j->name, "version",
                            (json_int_t)nb_json_int(j->result, "version", 0)));
        snap_install(svc, j->snap, "set", j->name);
        break;
    case J_RM:
        fps_remove(svc, j->name);
        audit_row(svc, NB_AUDIT_SECRET_RM, NULL, NULL, json_pack("{s:s}", "secret", j->name));
        snap_install(svc, j->snap, "rm", j->name);
        break;
    case J_BIND:
        audit_row(svc, NB_AUDIT_SECRET_BIND, j->b.vm[0] ? j->b.vm : NULL, j->b.host,
                  json_pack("{s:s, s:I, s:s, s:s, s:b}", "secret", j->b.secret, "binding_id",
                            (json_int_t)j->b.id, "placement",
                            nb_binding_placement_name(j->b.placement), "path_prefix",
                            j->b.path_prefix, "allow_cleartext", j->b.allow_cleartext));
        snap_install(svc, j->snap, "bind", j->b.secret);
        break;
    case J_UNBIND:
        audit_row(
            svc, NB_AUDIT_SECRET_UNBIND, j->old.vm[0] ? j->old.vm : NULL, j->old.host,
            json_pack("{s:s, s:I}", "secret", j->old.secret, "binding_id", (json_int_t)j->id));
        snap_install(svc, j->snap, "unbind", j->old.secret);
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
    if (j->run_done)
        j->run_done(j->ud, j->status);
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
        if (j->run_done)
            j->run_done(j->ud, NB_EINTERNAL);
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

int nb_secretsvc_run(nb_secretsvc_t *svc, nb_secretsvc_work_fn work, nb_secretsvc_after_fn done,
                     void *ud)
{
    if (!usable(svc))
        return NB_ESTATE;
    job_t *j = job_new(svc, J_RUN, NULL, ud);
    if (!j)
        return -ENOMEM;
    j->run_work = work;
    j->run_done = done;
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
                say_key_file_error(r, svc->key_file, msg, sizeof msg);
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
        if (j->run_done)
            j->run_done(j->ud, UV_ECANCELED);
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
    fps_replace(svc, NULL, 0);
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
                 "master key: passphrase, not given yet: %.300s%s%.150s", svc->message,
                 note[0] ? "; " : "", note);
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
