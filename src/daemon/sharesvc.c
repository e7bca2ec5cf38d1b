/* Folder mapping service: see sharesvc.h and docs/internals/share.md. */
#include "daemon/sharesvc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "daemon/base/events.h"
#include "daemon/base/store.h"
#include "daemon/egress/rules.h"
#include "daemon/fshare.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "lib/fsproto.h"
#include "lib/json.h"
#include "lib/log.h"

#define MNT_INFLIGHT 4  /* requests of one mount on the workers at once */
#define MNT_WAITING 512 /* parsed requests waiting: more is a flood, the stream ends */
#define GUEST_PATH_MAX 200

typedef struct share share_t;
typedef struct mnt mnt_t;
typedef struct job job_t;

struct job {
    job_t *next;
    mnt_t *m;
    uint8_t *body;
    size_t n;
    nb_buf_t out;
    int rc;
    const char *why;
};

/* One mount: a live `fs` stream and its file server. Outlives the stream
 * until the last job came back (refs). */
struct mnt {
    nb_sharesvc_t *s;
    share_t *sh; /* NULL once detached */
    nb_fsrv_t *srv;
    nb_muxsess_stream_t *st; /* NULL once closed */
    nb_buf_t in;
    void *shm; /* the VM's shared data area, mapped for this mount; NULL: none */
    job_t *wait_head, *wait_tail;
    unsigned nwait, inflight, refs;
};

struct share {
    share_t *next;
    int64_t id;
    char vm[NB_RULES_VM_MAX];
    char host[PATH_MAX];
    char guest[GUEST_PATH_MAX + 1];
    int ro;
    int64_t created_ms;
    mnt_t *mnt;
    const char *state; /* "waiting", "mounting", "mounted", "error" */
    char error[256];
    nb_sharesvc_cb cb; /* an add waiting for the mount's outcome */
    void *cb_ud;
};

struct nb_sharesvc {
    nb_daemon_t *d;
    uv_loop_t *loop;
    share_t *shares;
    uint64_t evsub;
    /* the worker pool */
    pthread_t th[NB_SHARE_WORKERS];
    int nth;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *q_head, *q_tail, *done;
    int stop;
    uv_async_t async;
};

static void pump(mnt_t *m);

/* ------------------------------------------------------------ workers */

static void *worker(void *arg)
{
    nb_sharesvc_t *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->q_head && !s->stop)
            pthread_cond_wait(&s->cv, &s->mu);
        if (!s->q_head)
            break;
        job_t *j = s->q_head;
        s->q_head = j->next;
        if (!s->q_head)
            s->q_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        j->rc = nb_fsrv_handle(j->m->srv, j->body, j->n, &j->out, &j->why);
        pthread_mutex_lock(&s->mu);
        j->next = s->done;
        s->done = j;
        uv_async_send(&s->async);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void mnt_unref(mnt_t *m)
{
    if (--m->refs == 0) {
        while (m->wait_head) {
            job_t *j = m->wait_head;
            m->wait_head = j->next;
            free(j->body);
            free(j);
        }
        nb_fsrv_free(m->srv);
        if (m->shm)
            munmap(m->shm, NB_FSP_SHM_SIZE);
        nb_buf_free(&m->in);
        free(m);
    }
}

/* Maps the VM's shared data area (created by the boot, see
 * nb_vm_share_shm_path) and reads its tag. Only our own regular 0600 file
 * of the right size is used; anything else means "no area" and the share
 * moves its data over the channel. The mapping is never read or written
 * directly (the guest can change it any time, and a page the host cannot
 * allocate would be a SIGBUS): only pread/pwrite go through it. */
static void *shm_map(const char *path, uint8_t tag[NB_FSP_SHM_TAG_LEN])
{
    int fd = path ? open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC) : -1;
    if (fd < 0)
        return NULL;
    struct stat st;
    void *p = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
        (st.st_mode & 077) == 0 && st.st_size == (off_t)NB_FSP_SHM_SIZE &&
        pread(fd, tag, NB_FSP_SHM_TAG_LEN, 0) == NB_FSP_SHM_TAG_LEN) {
        p = mmap(NULL, NB_FSP_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
            p = NULL;
    }
    close(fd);
    return p;
}

static void mnt_reset(mnt_t *m, const char *why)
{
    if (m->st) {
        nb_muxsess_stream_t *st = m->st;
        m->st = NULL;
        nb_muxsess_stream_reset(st, NB_MUX_E_PROTOCOL, why);
    }
}

static void mnt_malformed(mnt_t *m, const char *why)
{
    char vm[80];
    nb_log(NB_LOG_WARN, "share %s: malformed request from the guest (%s); unmounting",
           m->sh ? nb_log_escape(vm, sizeof vm, m->sh->vm, strlen(m->sh->vm)) : "?",
           why ? why : "?");
    mnt_reset(m, "malformed fs request");
    if (m->sh) {
        m->sh->state = "error";
        snprintf(m->sh->error, sizeof m->sh->error, "the guest sent a malformed request");
        m->sh->mnt = NULL;
        m->sh = NULL;
        m->refs--; /* the share's reference */
    }
}

static void job_finish(job_t *j)
{
    mnt_t *m = j->m;
    m->inflight--;
    if (j->rc == NB_EPROTO) {
        mnt_malformed(m, j->why);
    } else if (j->rc == 0 && m->st) {
        int r = nb_muxsess_stream_write_owned(m->st, NB_MUX_CHAN_STDIO, j->out.p, j->out.len, free);
        j->out.p = NULL; /* the stream owns (or freed) it */
        j->out.len = j->out.cap = 0;
        if (r < 0)
            mnt_reset(m, "reply queue overflow");
    }
    nb_buf_free(&j->out);
    free(j->body);
    free(j);
    pump(m);
    mnt_unref(m);
}

static void on_async(uv_async_t *h)
{
    nb_sharesvc_t *s = h->data;
    pthread_mutex_lock(&s->mu);
    job_t *d = s->done;
    s->done = NULL;
    pthread_mutex_unlock(&s->mu);
    /* Oldest first. */
    job_t *rev = NULL;
    while (d) {
        job_t *n = d->next;
        d->next = rev;
        rev = d;
        d = n;
    }
    while (rev) {
        job_t *n = rev->next;
        job_finish(rev);
        rev = n;
    }
}

/* Hands waiting requests to the workers while the reply path has room. */
static void pump(mnt_t *m)
{
    nb_sharesvc_t *s = m->s;
    while (m->wait_head && m->st && m->inflight < MNT_INFLIGHT &&
           nb_muxsess_stream_writable(m->st)) {
        job_t *j = m->wait_head;
        m->wait_head = j->next;
        if (!m->wait_head)
            m->wait_tail = NULL;
        m->nwait--;
        m->inflight++;
        m->refs++;
        j->next = NULL;
        pthread_mutex_lock(&s->mu);
        if (s->q_tail)
            s->q_tail->next = j;
        else
            s->q_head = j;
        s->q_tail = j;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
}

/* ------------------------------------------------------------ shares */

static json_t *share_json(const share_t *sh)
{
    json_t *j = json_pack("{s:I, s:s, s:s, s:s, s:b, s:I, s:s}", "id", (json_int_t)sh->id, "vm",
                          sh->vm, "host", sh->host, "guest", sh->guest, "ro", sh->ro, "created_ms",
                          (json_int_t)sh->created_ms, "state", sh->state);
    if (j && sh->error[0] && strcmp(sh->state, "mounted") != 0)
        json_object_set_new(j, "error", json_string(sh->error));
    if (j && sh->mnt && sh->mnt->srv) {
        size_t nodes, handles;
        nb_fsrv_counts(sh->mnt->srv, &nodes, &handles);
        json_object_set_new(j, "nodes", json_integer((json_int_t)nodes));
        json_object_set_new(j, "open_files", json_integer((json_int_t)handles));
        /* Which data path the mount has: the shared area when the daemon
         * offered it and the guest used it (shm_ops counts its reads and
         * writes), else the channel. */
        json_object_set_new(j, "shm", json_boolean(sh->mnt->shm != NULL));
        json_object_set_new(j, "shm_ops", json_integer((json_int_t)nb_fsrv_shm_ops(sh->mnt->srv)));
    }
    return j;
}

static void fire(share_t *sh, int r, const char *msg)
{
    nb_sharesvc_cb cb = sh->cb;
    if (!cb)
        return;
    sh->cb = NULL;
    json_t *j = share_json(sh);
    cb(sh->cb_ud, r, msg, j);
    json_decref(j);
}

/* The mount ended (stream closed or reset): detach it from its share. */
static void mnt_detach(mnt_t *m, const char *why)
{
    share_t *sh = m->sh;
    m->st = NULL;
    if (!sh)
        return;
    if (strcmp(sh->state, "mounting") == 0) {
        sh->state = "error";
        snprintf(sh->error, sizeof sh->error, "%s", why && *why ? why : "mount failed");
    } else {
        sh->state = "waiting";
    }
    sh->mnt = NULL;
    m->sh = NULL;
    fire(sh, 0, NULL);
    mnt_unref(m);
}

static void st_on_open_ok(nb_muxsess_stream_t *st, void *ud)
{
    mnt_t *m = ud;
    (void)st;
    if (m->sh) {
        m->sh->state = "mounted";
        m->sh->error[0] = '\0';
        nb_log(NB_LOG_INFO, "share %lld mounted in vm %s at %s", (long long)m->sh->id, m->sh->vm,
               m->sh->guest);
        fire(m->sh, 0, NULL);
    }
}

static void st_on_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t data, void *ud)
{
    mnt_t *m = ud;
    nb_muxsess_stream_consume(st, data.len);
    if (chan != NB_MUX_CHAN_STDIO || !m->st)
        return;
    if (nb_buf_append(&m->in, data.p, data.len) < 0) {
        mnt_reset(m, "request too long");
        mnt_detach(m, "the guest sent a request that is too long");
        return;
    }
    size_t pos = 0;
    while (m->in.len - pos >= 4) {
        uint32_t n = nb_fsp_get_u32(m->in.p + pos);
        if (n > NB_FSP_FRAME_MAX || n < 5 || m->nwait >= MNT_WAITING) {
            mnt_reset(m, n > NB_FSP_FRAME_MAX || n < 5 ? "bad frame length" : "request flood");
            mnt_detach(m, "the guest broke the fs protocol");
            return;
        }
        if (m->in.len - pos - 4 < n)
            break;
        const uint8_t *fb = m->in.p + pos + 4;
        if (fb[4] == NB_FSP_FORGET) {
            /* No reply, no host I/O but a close(): done here, in order of
             * arrival. The guest kernel sends thousands at once when it
             * shrinks its inode cache (an `ls -l` of a big directory);
             * queued, they would wait behind requests and count as a
             * flood. A forget only drops lookups already answered, so
             * running it before queued requests changes nothing. */
            nb_buf_t none;
            const char *why = NULL;
            nb_buf_init(&none, 0);
            if (nb_fsrv_handle(m->srv, fb, n, &none, &why) < 0) {
                nb_buf_free(&none);
                m->refs++; /* mnt_malformed drops the share's without freeing */
                mnt_malformed(m, why);
                mnt_unref(m);
                return;
            }
            nb_buf_free(&none);
            pos += 4 + n;
            continue;
        }
        job_t *j = calloc(1, sizeof *j);
        uint8_t *body = malloc(n);
        if (!j || !body) {
            free(j);
            free(body);
            mnt_reset(m, "out of memory");
            mnt_detach(m, "out of memory");
            return;
        }
        memcpy(body, m->in.p + pos + 4, n);
        j->m = m;
        j->body = body;
        j->n = n;
        nb_buf_init(&j->out, NB_FSP_FRAME_MAX + 4);
        if (m->wait_tail)
            m->wait_tail->next = j;
        else
            m->wait_head = j;
        m->wait_tail = j;
        m->nwait++;
        pos += 4 + n;
    }
    if (pos) /* else nothing to drop, and consume would move the partial frame */
        nb_buf_consume(&m->in, pos);
    pump(m);
}

static void st_on_drain(nb_muxsess_stream_t *st, void *ud)
{
    (void)st;
    pump(ud);
}

static void st_on_fin(nb_muxsess_stream_t *st, void *ud)
{
    mnt_t *m = ud;
    (void)st;
    mnt_reset(m, "unmounted");
    mnt_detach(m, "unmounted in the guest");
}

static void st_on_close(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    (void)st;
    (void)err;
    (void)code;
    mnt_detach(ud, msg);
}

static const nb_muxsess_stream_cbs_t st_cbs = {.on_data = st_on_data,
                                               .on_fin = st_on_fin,
                                               .on_open_ok = st_on_open_ok,
                                               .on_drain = st_on_drain,
                                               .on_close = st_on_close};

static void mount_start(nb_sharesvc_t *s, share_t *sh)
{
    if (sh->mnt)
        return;
    nb_vm_t *vm = s->d->vmm ? nb_vmm_find(s->d->vmm, sh->vm) : NULL;
    nb_muxsess_t *sess = vm ? nb_vm_session(vm) : NULL;
    if (!sess) {
        sh->state = "waiting";
        fire(sh, 0, NULL);
        return;
    }
    mnt_t *m = calloc(1, sizeof *m);
    char err[400];
    int r;
    if (!m) {
        snprintf(sh->error, sizeof sh->error, "out of memory");
        sh->state = "error";
        fire(sh, 0, NULL);
        return;
    }
    m->s = s;
    nb_buf_init(&m->in, 2 * (NB_FSP_FRAME_MAX + 4));
    if ((r = nb_fsrv_new(sh->host, sh->ro, &m->srv, err, sizeof err)) < 0) {
        free(m);
        snprintf(sh->error, sizeof sh->error, "%.250s", err);
        sh->state = "error";
        fire(sh, 0, NULL);
        return;
    }
    json_t *args = json_pack("{s:s, s:b}", "path", sh->guest, "ro", sh->ro);
    uint8_t tag[NB_FSP_SHM_TAG_LEN];
    char hex[2 * NB_FSP_SHM_TAG_LEN + 1];
    if (args && (m->shm = shm_map(nb_vm_share_shm_path(vm), tag)) != NULL) {
        sodium_bin2hex(hex, sizeof hex, tag, sizeof tag);
        nb_fsrv_set_shm(m->srv, m->shm, NB_FSP_SHM_SIZE);
        json_object_set_new(
            args, "shm", json_pack("{s:s, s:I}", "tag", hex, "size", (json_int_t)NB_FSP_SHM_SIZE));
    }
    char *a = args ? json_dumps(args, JSON_COMPACT) : NULL;
    json_decref(args);
    r = a ? nb_muxsess_open(sess, "fs", nb_iov(a, strlen(a)), &st_cbs, m, &m->st) : -ENOMEM;
    free(a);
    if (r < 0) {
        nb_fsrv_free(m->srv);
        if (m->shm)
            munmap(m->shm, NB_FSP_SHM_SIZE);
        free(m);
        snprintf(sh->error, sizeof sh->error, "cannot open the fs stream: %s", nb_strerror(r));
        sh->state = "error";
        fire(sh, 0, NULL);
        return;
    }
    m->sh = sh;
    m->refs = 1; /* the share's */
    sh->mnt = m;
    sh->state = "mounting";
}

static void mount_stop(share_t *sh, const char *why)
{
    mnt_t *m = sh->mnt;
    if (!m)
        return;
    mnt_reset(m, why);
    m->sh = NULL;
    sh->mnt = NULL;
    sh->state = "waiting";
    mnt_unref(m);
}

static void share_free(share_t *sh)
{
    mount_stop(sh, "share removed");
    fire(sh, NB_ECLOSED, "the share was removed");
    free(sh);
}

/* ------------------------------------------------------------ store */

static int load(nb_sharesvc_t *s, char *err, size_t errsz)
{
    sqlite3 *db = nb_store_db(s->d->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT id, vm, host, guest, ro, created_ms FROM shares ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errsz, "cannot read the shares: %s", sqlite3_errmsg(db));
        return NB_EINTERNAL;
    }
    share_t **tail = &s->shares;
    while (sqlite3_step(st) == SQLITE_ROW) {
        share_t *sh = calloc(1, sizeof *sh);
        if (!sh)
            break;
        sh->id = sqlite3_column_int64(st, 0);
        snprintf(sh->vm, sizeof sh->vm, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(sh->host, sizeof sh->host, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(sh->guest, sizeof sh->guest, "%s", (const char *)sqlite3_column_text(st, 3));
        sh->ro = sqlite3_column_int(st, 4) != 0;
        sh->created_ms = sqlite3_column_int64(st, 5);
        sh->state = "waiting";
        *tail = sh;
        tail = &sh->next;
    }
    sqlite3_finalize(st);
    return 0;
}

static int row_delete(nb_sharesvc_t *s, int64_t id)
{
    sqlite3 *db = nb_store_db(s->d->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "DELETE FROM shares WHERE id = ?", -1, &st, NULL) != SQLITE_OK)
        return NB_EINTERNAL;
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st) == SQLITE_DONE ? 0 : NB_EINTERNAL;
    sqlite3_finalize(st);
    return r;
}

/* ------------------------------------------------------------ events */

static void on_event(const json_t *ev, void *ud)
{
    nb_sharesvc_t *s = ud;
    const char *type = nb_json_str(ev, "type"), *vm = nb_json_str(ev, "vm");
    if (!type || !vm)
        return;
    /* The agent is up: "vm.running" at boot (the first handshake of a
     * start), "vm.agent" when it reconnects to a running VM. */
    if (strcmp(type, "vm.running") == 0 ||
        (strcmp(type, "vm.agent") == 0 && nb_json_bool(ev, "connected", 0))) {
        for (share_t *sh = s->shares; sh; sh = sh->next)
            if (strcmp(sh->vm, vm) == 0)
                mount_start(s, sh);
    } else if (strcmp(type, "vm.removed") == 0) {
        for (share_t **pp = &s->shares; *pp;) {
            share_t *sh = *pp;
            if (strcmp(sh->vm, vm) == 0) {
                *pp = sh->next;
                row_delete(s, sh->id);
                share_free(sh);
            } else {
                pp = &sh->next;
            }
        }
    }
}

/* ------------------------------------------------------------ API */

int nb_sharesvc_guest_path_ok(const char *p)
{
    size_t n = p ? strlen(p) : 0;
    if (n < 2 || n > GUEST_PATH_MAX || p[0] != '/' || p[n - 1] == '/' || strstr(p, "//"))
        return 0;
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == ',' || *c == '\\')
            return 0;
    if (strstr(p, "/./") || strstr(p, "/../") || strcmp(p + n - 2, "/.") == 0 ||
        (n >= 3 && strcmp(p + n - 3, "/..") == 0))
        return 0;
    static const char *sys[] = {"/proc", "/sys", "/dev"};
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(sys[i]);
        if (strncmp(p, sys[i], k) == 0 && (p[k] == '\0' || p[k] == '/'))
            return 0;
    }
    return 1;
}

json_t *nb_sharesvc_list(nb_sharesvc_t *s, const char *vm)
{
    json_t *a = json_array();
    for (share_t *sh = s->shares; sh && a; sh = sh->next)
        if (!vm || strcmp(vm, sh->vm) == 0)
            json_array_append_new(a, share_json(sh));
    return json_pack("{s:o}", "shares", a ? a : json_array());
}

int nb_sharesvc_add(nb_sharesvc_t *s, const char *vm, const char *host, const char *guest, int ro,
                    nb_sharesvc_cb cb, void *ud, char *err, size_t errsz)
{
    struct stat st;
    if (!vm || !nb_rules_vm_valid(vm) || strlen(vm) >= NB_RULES_VM_MAX) {
        snprintf(err, errsz, "not a valid VM name");
        return NB_EINVAL;
    }
    if (!s->d->vmm || !nb_vmm_find(s->d->vmm, vm)) {
        snprintf(err, errsz, "no VM named '%s' (see 'nilbox vm ls')", vm);
        return NB_ENOTFOUND;
    }
    if (!host || host[0] != '/' || strlen(host) >= PATH_MAX) {
        snprintf(err, errsz, "the host folder must be an absolute path");
        return NB_EINVAL;
    }
    char real[PATH_MAX];
    if (!realpath(host, real) || stat(real, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errsz, "the host folder '%.300s' is not an existing directory", host);
        return NB_EINVAL;
    }
    if (!nb_sharesvc_guest_path_ok(guest)) {
        snprintf(err, errsz,
                 "the guest folder must be an absolute, normalised path of at most %d bytes "
                 "(not /, nor under /proc, /sys or /dev; no commas)",
                 GUEST_PATH_MAX);
        return NB_EINVAL;
    }
    for (share_t *sh = s->shares; sh; sh = sh->next) {
        if (strcmp(sh->vm, vm) != 0)
            continue;
        size_t a = strlen(sh->guest), b = strlen(guest), k = a < b ? a : b;
        if (strncmp(sh->guest, guest, k) == 0 &&
            (a == b || (a < b ? guest : sh->guest)[k] == '/')) {
            snprintf(err, errsz, "vm %s already has share %lld at %s (nested shares are refused)",
                     vm, (long long)sh->id, sh->guest);
            return NB_EEXIST;
        }
    }
    sqlite3 *db = nb_store_db(s->d->store);
    sqlite3_stmt *q = NULL;
    uv_update_time(s->loop);
    int64_t now = (int64_t)uv_now(s->loop);
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
        now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (sqlite3_prepare_v2(
            db, "INSERT INTO shares (vm, host, guest, ro, created_ms) VALUES (?,?,?,?,?)", -1, &q,
            NULL) != SQLITE_OK) {
        snprintf(err, errsz, "cannot store the share: %s", sqlite3_errmsg(db));
        return NB_EINTERNAL;
    }
    sqlite3_bind_text(q, 1, vm, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 2, real, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 3, guest, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(q, 4, ro ? 1 : 0);
    sqlite3_bind_int64(q, 5, now);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) {
        snprintf(err, errsz, "cannot store the share: %s", sqlite3_errmsg(db));
        return rc == SQLITE_CONSTRAINT ? NB_EEXIST : NB_EINTERNAL;
    }
    share_t *sh = calloc(1, sizeof *sh);
    if (!sh) {
        snprintf(err, errsz, "out of memory");
        return -ENOMEM;
    }
    sh->id = sqlite3_last_insert_rowid(db);
    snprintf(sh->vm, sizeof sh->vm, "%s", vm);
    snprintf(sh->host, sizeof sh->host, "%s", real);
    snprintf(sh->guest, sizeof sh->guest, "%s", guest);
    sh->ro = ro != 0;
    sh->created_ms = now;
    sh->state = "waiting";
    share_t **tail = &s->shares;
    while (*tail)
        tail = &(*tail)->next;
    *tail = sh;
    if (s->d->events)
        nb_events_emit(s->d->events, "share.added",
                       json_pack("{s:I, s:s, s:s, s:b}", "id", (json_int_t)sh->id, "vm", vm,
                                 "guest", guest, "ro", sh->ro));
    sh->cb = cb;
    sh->cb_ud = ud;
    mount_start(s, sh);
    return 0;
}

int nb_sharesvc_rm(nb_sharesvc_t *s, int64_t id)
{
    for (share_t **pp = &s->shares; *pp; pp = &(*pp)->next) {
        share_t *sh = *pp;
        if (sh->id != id)
            continue;
        int r = row_delete(s, id);
        if (r < 0)
            return r;
        *pp = sh->next;
        if (s->d->events)
            nb_events_emit(s->d->events, "share.removed",
                           json_pack("{s:I, s:s, s:s}", "id", (json_int_t)id, "vm", sh->vm, "guest",
                                     sh->guest));
        share_free(sh);
        return 0;
    }
    return NB_ENOTFOUND;
}

/* ------------------------------------------------------------ lifecycle */

int nb_sharesvc_new(nb_daemon_t *d, nb_sharesvc_t **out, char *err, size_t errsz)
{
    *out = NULL;
    nb_sharesvc_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->d = d;
    s->loop = d->loop;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int r = uv_async_init(d->loop, &s->async, on_async);
    if (r < 0) {
        snprintf(err, errsz, "share service: %s", uv_strerror(r));
        free(s);
        return r;
    }
    s->async.data = s;
    for (int i = 0; i < NB_SHARE_WORKERS; i++)
        if (pthread_create(&s->th[i], NULL, worker, s) == 0)
            s->nth++;
    if (!s->nth || (d->store && (r = load(s, err, errsz)) < 0)) {
        if (!s->nth)
            snprintf(err, errsz, "share service: cannot start its threads");
        nb_sharesvc_free(s);
        return r < 0 ? r : NB_EINTERNAL;
    }
    if (d->events && nb_events_subscribe(d->events, on_event, s, &s->evsub) < 0)
        s->evsub = 0;
    /* VMs whose agent is already up (a share service created late). */
    for (share_t *sh = s->shares; sh; sh = sh->next)
        mount_start(s, sh);
    *out = s;
    return 0;
}

static void on_async_closed(uv_handle_t *h)
{
    free(h->data);
}

void nb_sharesvc_free(nb_sharesvc_t *s)
{
    if (!s)
        return;
    if (s->d->events && s->evsub)
        nb_events_unsubscribe(s->d->events, s->evsub);
    while (s->shares) {
        share_t *sh = s->shares;
        s->shares = sh->next;
        mount_stop(sh, "daemon stopping");
        fire(sh, NB_ECLOSED, "the daemon is stopping");
        free(sh);
    }
    /* Let the workers finish what they hold, then deliver it (the mounts'
     * last references go with it). */
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->nth; i++)
        pthread_join(s->th[i], NULL);
    on_async(&s->async);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    uv_close((uv_handle_t *)&s->async, on_async_closed);
}
