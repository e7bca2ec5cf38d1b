#include "daemon/secrets/masterkey.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#ifdef NB_HAVE_LIBSECRET
#include <libsecret/secret.h>
#endif

#include "lib/err.h"
#include "lib/log.h"

struct nb_mkey {
    int kind;
    uint8_t *key; /* sodium_malloc, NB_MKEY_BYTES */
};

/* A private file never needs to be larger than this. */
#define PRIVATE_FILE_MAX 4096

const char *nb_mkey_kind_name(int kind)
{
    switch (kind) {
    case NB_MKEY_KEYRING:
        return "keyring";
    case NB_MKEY_PASSPHRASE:
        return "passphrase";
    case NB_MKEY_KEYFILE:
        return "keyfile";
    case NB_MKEY_RAW:
        return "raw";
    default:
        return "unknown";
    }
}

int nb_mkey_kind(const nb_mkey_t *mk)
{
    return mk->kind;
}

const uint8_t *nb_mkey_bytes(const nb_mkey_t *mk)
{
    return mk->key;
}

static int mkey_alloc(int kind, nb_mkey_t **out)
{
    nb_mkey_t *mk = calloc(1, sizeof(*mk));
    if (!mk)
        return -ENOMEM;
    mk->key = sodium_malloc(NB_MKEY_BYTES);
    if (!mk->key) {
        free(mk);
        return -ENOMEM;
    }
    mk->kind = kind;
    *out = mk;
    return 0;
}

int nb_mkey_from_bytes(int kind, const uint8_t key[NB_MKEY_BYTES], nb_mkey_t **out)
{
    *out = NULL;
    int r = mkey_alloc(kind, out);
    if (r < 0)
        return r;
    memcpy((*out)->key, key, NB_MKEY_BYTES);
    return 0;
}

void nb_mkey_free(nb_mkey_t *mk)
{
    if (!mk)
        return;
    sodium_free(mk->key); /* wipes */
    free(mk);
}

void nb_kdf_params_default(nb_kdf_params_t *kp)
{
    randombytes_buf(kp->salt, sizeof(kp->salt));
    kp->opslimit = crypto_pwhash_OPSLIMIT_MODERATE;
    kp->memlimit = crypto_pwhash_MEMLIMIT_MODERATE;
}

int nb_mkey_from_passphrase(const char *pass, size_t len, const nb_kdf_params_t *kp,
                            nb_mkey_t **out)
{
    *out = NULL;
    if (kp->opslimit < crypto_pwhash_OPSLIMIT_MIN || kp->opslimit > 64 ||
        kp->memlimit < crypto_pwhash_MEMLIMIT_MIN || kp->memlimit > (1ULL << 32))
        return NB_EINVAL;
    if (len == 0 || len > crypto_pwhash_PASSWD_MAX)
        return NB_EINVAL;
    nb_mkey_t *mk;
    int r = mkey_alloc(NB_MKEY_PASSPHRASE, &mk);
    if (r < 0)
        return r;
    if (crypto_pwhash(mk->key, NB_MKEY_BYTES, pass, len, kp->salt, kp->opslimit,
                      (size_t)kp->memlimit, crypto_pwhash_ALG_ARGON2ID13) != 0) {
        nb_mkey_free(mk);
        return -ENOMEM; /* libsodium's only failure mode here */
    }
    *out = mk;
    return 0;
}

/* Reads a whole private file into locked memory. Refuses anything but a
 * regular file of ours with no group/other bits, before reading a byte. */
static int read_private_file(const char *path, uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    int r, fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    uint8_t *buf = NULL;
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        r = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        nb_log(NB_LOG_ERR, "refusing %s: must be a regular file owned by uid %u with mode 0600",
               path, (unsigned)geteuid());
        r = -EPERM;
        goto out;
    }
    if (st.st_size > PRIVATE_FILE_MAX) {
        r = NB_ETOOBIG;
        goto out;
    }
    buf = sodium_malloc(PRIVATE_FILE_MAX);
    if (!buf) {
        r = -ENOMEM;
        goto out;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, PRIVATE_FILE_MAX - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == PRIVATE_FILE_MAX) {
            r = NB_ETOOBIG;
            goto out;
        }
    }
    *out = buf;
    *outlen = len;
    buf = NULL;
    r = 0;
out:
    sodium_free(buf);
    close(fd);
    return r;
}

int nb_mkey_from_passphrase_file(const char *path, const nb_kdf_params_t *kp, nb_mkey_t **out)
{
    *out = NULL;
    uint8_t *buf;
    size_t len;
    int r = read_private_file(path, &buf, &len);
    if (r < 0)
        return r;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    r = nb_mkey_from_passphrase((const char *)buf, len, kp, out);
    sodium_free(buf);
    return r;
}

int nb_mkey_keyfile_create(const char *path, nb_mkey_t **out)
{
    *out = NULL;
    nb_mkey_t *mk;
    char *hex = NULL;
    int r = mkey_alloc(NB_MKEY_KEYFILE, &mk);
    if (r < 0)
        return r;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        r = -errno;
        goto out;
    }
    randombytes_buf(mk->key, NB_MKEY_BYTES);
    hex = sodium_malloc(2 * NB_MKEY_BYTES + 2);
    if (!hex) {
        r = -ENOMEM;
        goto out;
    }
    sodium_bin2hex(hex, 2 * NB_MKEY_BYTES + 1, mk->key, NB_MKEY_BYTES);
    hex[2 * NB_MKEY_BYTES] = '\n';
    size_t want = 2 * NB_MKEY_BYTES + 1, done = 0;
    while (done < want) {
        ssize_t n = write(fd, hex + done, want - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            goto out;
        }
        done += (size_t)n;
    }
    if (fsync(fd) < 0) {
        r = -errno;
        goto out;
    }
    nb_log(NB_LOG_WARN,
           "created master key file %s: anyone who can read it and the database can read every "
           "secret; prefer the OS keyring or a passphrase",
           path);
    *out = mk;
    mk = NULL;
    r = 0;
out:
    if (fd >= 0) {
        close(fd);
        if (r < 0)
            unlink(path);
    }
    sodium_free(hex);
    nb_mkey_free(mk);
    return r;
}

int nb_mkey_keyfile_load(const char *path, nb_mkey_t **out)
{
    *out = NULL;
    uint8_t *buf;
    size_t len;
    nb_mkey_t *mk = NULL;
    int r = read_private_file(path, &buf, &len);
    if (r < 0)
        return r;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    size_t bin_len = 0;
    if (len != 2 * NB_MKEY_BYTES) {
        r = NB_EPARSE;
        goto out;
    }
    if ((r = mkey_alloc(NB_MKEY_KEYFILE, &mk)) < 0)
        goto out;
    if (sodium_hex2bin(mk->key, NB_MKEY_BYTES, (const char *)buf, len, NULL, &bin_len, NULL) != 0 ||
        bin_len != NB_MKEY_BYTES) {
        r = NB_EPARSE;
        goto out;
    }
    nb_log(NB_LOG_WARN,
           "master key taken from key file %s: the secret store is only as safe as that file",
           path);
    *out = mk;
    mk = NULL;
    r = 0;
out:
    nb_mkey_free(mk);
    sodium_free(buf);
    return r;
}

/* ---- OS keyring ---------------------------------------------------------- */

/* Without a session bus GLib would try to autolaunch one (dbus-launch, X11):
 * on a headless machine that is slow at best. Decide up front. */
static int session_bus_present(void)
{
    const char *addr = getenv("DBUS_SESSION_BUS_ADDRESS");
    if (addr && *addr)
        return 1;
    const char *rt = getenv("XDG_RUNTIME_DIR");
    if (!rt || !*rt)
        return 0;
    char path[4096];
    struct stat st;
    int n = snprintf(path, sizeof(path), "%s/bus", rt);
    return n > 0 && (size_t)n < sizeof(path) && stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

enum { KR_LOOKUP, KR_CLEAR };

#ifdef NB_HAVE_LIBSECRET

static const SecretSchema mkey_schema = {
    .name = "org.nilbox.MasterKey",
    .flags = SECRET_SCHEMA_NONE,
    .attributes = {{"store", SECRET_SCHEMA_ATTRIBUTE_STRING}, {NULL, 0}},
};

/* Shared between the caller and the keyring thread; the last one to drop
 * its reference frees it, so a timed-out caller can simply walk away. */
typedef struct {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int op;
    int create;
    char *store_id;
    GCancellable *cancel;
    int r;
    uint8_t *key; /* sodium_malloc, on success of KR_LOOKUP */
} kr_job_t;

static void kr_job_unref(kr_job_t *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    g_object_unref(j->cancel);
    free(j->store_id);
    sodium_free(j->key);
    free(j);
}

static int kr_error(GError *err)
{
    int r;
    if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        r = NB_ETIMEOUT;
    else if (err->domain == SECRET_ERROR)
        r = NB_EAUTH;
    else
        r = NB_EUNSUPPORTED; /* no bus, no Secret Service, ... */
    char esc[256];
    nb_log(NB_LOG_INFO, "keyring: %s",
           nb_log_escape(esc, sizeof(esc), err->message, strlen(err->message)));
    g_error_free(err);
    return r;
}

static int kr_lookup(kr_job_t *j)
{
    GError *err = NULL;
    gchar *pw = secret_password_lookup_nonpageable_sync(&mkey_schema, j->cancel, &err, "store",
                                                        j->store_id, NULL);
    if (err)
        return kr_error(err);
    j->key = sodium_malloc(NB_MKEY_BYTES);
    if (!j->key) {
        secret_password_free(pw);
        return -ENOMEM;
    }
    if (pw) {
        size_t bin_len = 0;
        int bad = sodium_base642bin(j->key, NB_MKEY_BYTES, pw, strlen(pw), NULL, &bin_len, NULL,
                                    sodium_base64_VARIANT_ORIGINAL) != 0 ||
                  bin_len != NB_MKEY_BYTES;
        secret_password_free(pw);
        return bad ? NB_EPARSE : 0;
    }
    if (!j->create)
        return NB_ENOTFOUND;
    size_t b64len = sodium_base64_ENCODED_LEN(NB_MKEY_BYTES, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = sodium_malloc(b64len);
    if (!b64)
        return -ENOMEM;
    randombytes_buf(j->key, NB_MKEY_BYTES);
    sodium_bin2base64(b64, b64len, j->key, NB_MKEY_BYTES, sodium_base64_VARIANT_ORIGINAL);
    char label[300];
    snprintf(label, sizeof(label), "nilbox master key (%s)", j->store_id);
    gboolean ok = secret_password_store_sync(&mkey_schema, SECRET_COLLECTION_DEFAULT, label, b64,
                                             j->cancel, &err, "store", j->store_id, NULL);
    sodium_free(b64);
    if (!ok)
        return err ? kr_error(err) : NB_EINTERNAL;
    return 0;
}

static void *kr_thread(void *arg)
{
    kr_job_t *j = arg;
    int r;
    if (j->op == KR_LOOKUP) {
        r = kr_lookup(j);
    } else {
        GError *err = NULL;
        secret_password_clear_sync(&mkey_schema, j->cancel, &err, "store", j->store_id, NULL);
        r = err ? kr_error(err) : 0;
    }
    pthread_mutex_lock(&j->mu);
    j->r = r;
    j->done = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    kr_job_unref(j);
    return NULL;
}

static int kr_run(int op, const char *store_id, int create, int timeout_ms, nb_mkey_t **out)
{
    if (!session_bus_present())
        return NB_EUNSUPPORTED;
    kr_job_t *j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    atomic_init(&j->refs, 1);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&j->mu, NULL);
    j->op = op;
    j->create = create;
    j->cancel = g_cancellable_new();
    j->store_id = strdup(store_id);
    if (!j->store_id) {
        kr_job_unref(j);
        return -ENOMEM;
    }
    pthread_t t;
    atomic_fetch_add(&j->refs, 1);
    if (pthread_create(&t, NULL, kr_thread, j) != 0) {
        atomic_fetch_sub(&j->refs, 1);
        kr_job_unref(j);
        return -EAGAIN;
    }
    pthread_detach(t);

    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int r;
    pthread_mutex_lock(&j->mu);
    while (!j->done)
        if (pthread_cond_timedwait(&j->cv, &j->mu, &dl) == ETIMEDOUT)
            break;
    if (j->done) {
        r = j->r;
        if (r == 0 && op == KR_LOOKUP) {
            nb_mkey_t *mk = calloc(1, sizeof(*mk));
            if (mk) {
                mk->kind = NB_MKEY_KEYRING;
                mk->key = j->key; /* hand the locked buffer over */
                j->key = NULL;
                *out = mk;
            } else {
                r = -ENOMEM;
            }
        }
    } else {
        g_cancellable_cancel(j->cancel); /* the thread finishes and frees */
        r = NB_ETIMEOUT;
    }
    pthread_mutex_unlock(&j->mu);
    kr_job_unref(j);
    return r;
}

#else

static int kr_run(int op, const char *store_id, int create, int timeout_ms, nb_mkey_t **out)
{
    (void)session_bus_present;
    return NB_EUNSUPPORTED;
}

#endif

int nb_mkey_from_keyring(const char *store_id, int create, int timeout_ms, nb_mkey_t **out)
{
    *out = NULL;
    return kr_run(KR_LOOKUP, store_id, create, timeout_ms, out);
}

int nb_mkey_keyring_clear(const char *store_id, int timeout_ms)
{
    nb_mkey_t *unused = NULL;
    return kr_run(KR_CLEAR, store_id, 0, timeout_ms, &unused);
}
