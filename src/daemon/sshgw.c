/* The SSH gateway's service: host key, listener, the hand-over of channel
 * fds from session threads to the loop, status (sshgw.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libssh/libssh.h>
#include <libssh/server.h>

#include "daemon/sshgw_int.h"
#include "host/home.h"
#include "lib/err.h"
#include "lib/log.h"

#define BACKLOG 16

static int mkdir_private(const char *path)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Loads the host key, or makes it: the file is created 0600 before libssh
 * writes the key into it, so it is never readable by others. */
static int host_key(nb_sshgw_t *g, ssh_key *out, char *err, size_t errsz)
{
    ssh_key key = NULL;
    if (access(g->key_path, F_OK) == 0) {
        struct stat st;
        if (stat(g->key_path, &st) == 0 && (st.st_mode & 077))
            nb_log(NB_LOG_WARN, "%s is readable by others; making it 0600", g->key_path);
        chmod(g->key_path, 0600);
        if (ssh_pki_import_privkey_file(g->key_path, NULL, NULL, NULL, &key) != SSH_OK) {
            snprintf(err, errsz, "cannot read the SSH host key %s (remove it to make a new one)",
                     g->key_path);
            return NB_EINVAL;
        }
    } else {
        if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) != SSH_OK) {
            snprintf(err, errsz, "cannot generate the SSH host key");
            return NB_EINTERNAL;
        }
        int fd = open(g->key_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || close(fd) < 0 ||
            ssh_pki_export_privkey_file(key, NULL, NULL, NULL, g->key_path) != SSH_OK) {
            int e = errno;
            ssh_key_free(key);
            unlink(g->key_path);
            snprintf(err, errsz, "cannot write the SSH host key %s: %s", g->key_path,
                     strerror(e ? e : EIO));
            return -EIO;
        }
        nb_log(NB_LOG_NOTICE, "made the SSH gateway's host key %s", g->key_path);
    }
    char *b64 = NULL;
    unsigned char *hash = NULL;
    size_t hlen = 0;
    ssh_key pub = NULL;
    /* From the public half: libssh 0.10 exports a private ed25519 key's
     * base64 from the wrong field. */
    if (ssh_pki_export_privkey_to_pubkey(key, &pub) == SSH_OK &&
        ssh_pki_export_pubkey_base64(pub, &b64) == SSH_OK)
        snprintf(g->host_pub, sizeof g->host_pub, "%s %s", ssh_key_type_to_char(ssh_key_type(key)),
                 b64);
    ssh_string_free_char(b64);
    if (pub && ssh_get_publickey_hash(pub, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0) {
        char *fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
        snprintf(g->fingerprint, sizeof g->fingerprint, "%s", fp ? fp : "");
        ssh_string_free_char(fp);
        ssh_clean_pubkey_hash(&hash);
    }
    ssh_key_free(pub);
    *out = key;
    return 0;
}

/* The port: NILBOX_SSH_PORT, else the one kept in ssh/port, else 0 (any). */
static int wanted_port(nb_sshgw_t *g, const char *dir, int *kept)
{
    const char *e = getenv("NILBOX_SSH_PORT");
    char path[4200], buf[16] = "";
    *kept = 0;
    if (e && *e) {
        char *end;
        long v = strtol(e, &end, 10);
        return !*end && v >= 0 && v <= 65535 ? (int)v : -1;
    }
    snprintf(path, sizeof path, "%s/port", dir);
    FILE *f = fopen(path, "re");
    if (f) {
        if (fgets(buf, sizeof buf, f)) {
            long v = strtol(buf, NULL, 10);
            if (v > 0 && v <= 65535) {
                *kept = 1;
                fclose(f);
                return (int)v;
            }
        }
        fclose(f);
    }
    return 0;
}

static void on_async(uv_async_t *a);
static void on_conn(uv_stream_t *srv, int status);

static int listen_on(nb_sshgw_t *g, int port)
{
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    int r = uv_tcp_bind(&g->listener, (const struct sockaddr *)&sa, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&g->listener, BACKLOG, on_conn);
    return r;
}

int nb_sshgw_new(nb_daemon_t *d, nb_sshgw_t **out, char *err, size_t errsz)
{
    *out = NULL;
    const char *e = getenv("NILBOX_SSH_PORT");
    if (e && !strcmp(e, "off")) {
        nb_log(NB_LOG_INFO, "SSH gateway off (NILBOX_SSH_PORT=off)");
        return 0;
    }
    nb_sshgw_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->d = d;
    pthread_mutex_init(&g->mu, NULL);
    char dir[3800];
    snprintf(dir, sizeof dir, "%.3790s/ssh", d->home.home);
    int r = mkdir_private(dir);
    if (r < 0) {
        snprintf(err, errsz, "cannot create %s: %s", dir, nb_strerror(r));
        goto fail;
    }
    snprintf(g->key_path, sizeof g->key_path, "%s/host_ed25519_key", dir);
    snprintf(g->own_keys, sizeof g->own_keys, "%s/authorized_keys", dir);
    const char *home = getenv("HOME");
    if (home && home[0] == '/')
        snprintf(g->user_keys, sizeof g->user_keys, "%s/.ssh/authorized_keys", home);
    ssh_init();
    ssh_key key = NULL;
    if ((r = host_key(g, &key, err, errsz)) < 0)
        goto fail;
    ssh_bind b = ssh_bind_new();
    if (!b || ssh_bind_options_set(b, SSH_BIND_OPTIONS_IMPORT_KEY, key) != SSH_OK) {
        ssh_key_free(key);
        if (b)
            ssh_bind_free(b);
        snprintf(err, errsz, "cannot set up libssh's server");
        r = NB_EINTERNAL;
        goto fail;
    }
    g->bind = b;
    int kept, port = wanted_port(g, dir, &kept);
    if (port < 0) {
        snprintf(err, errsz, "NILBOX_SSH_PORT must be a port (0..65535) or 'off'");
        r = NB_EINVAL;
        goto fail;
    }
    if ((r = uv_tcp_init(d->loop, &g->listener)) < 0)
        goto fail_uv;
    g->handles++;
    g->listener.data = g;
    if ((r = uv_async_init(d->loop, &g->async, on_async)) < 0)
        goto fail_uv;
    g->handles++;
    g->async.data = g;
    r = listen_on(g, port);
    if (r < 0 && kept) {
        /* The remembered port is taken: another one, and say so (the
         * user's ~/.ssh/config block needs the new one). */
        nb_log(NB_LOG_WARN, "SSH gateway: port %d is busy (%s); taking another", port,
               uv_strerror(r));
        uv_close((uv_handle_t *)&g->listener, NULL);
        uv_run(d->loop, UV_RUN_NOWAIT);
        if ((r = uv_tcp_init(d->loop, &g->listener)) == 0)
            r = listen_on(g, 0);
        kept = 0;
    }
    if (r < 0) {
        snprintf(err, errsz, "SSH gateway: cannot listen on 127.0.0.1:%d: %s", port,
                 uv_strerror(r));
        goto fail;
    }
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    uv_tcp_getsockname(&g->listener, (struct sockaddr *)&ss, &sl);
    g->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (!kept && !(e && *e)) {
        char path[4200], buf[16];
        snprintf(path, sizeof path, "%s/port", dir);
        snprintf(buf, sizeof buf, "%d\n", g->port);
        nb_home_write_private(path, buf, strlen(buf));
    }
    nb_log(NB_LOG_NOTICE, "SSH gateway on 127.0.0.1:%d (host key %s)", g->port, g->fingerprint);
    *out = g;
    return 0;
fail_uv:
    snprintf(err, errsz, "SSH gateway: %s", uv_strerror(r));
fail:
    nb_sshgw_free(g);
    return r < 0 ? r : NB_EINTERNAL;
}

static void on_conn(uv_stream_t *srv, int status)
{
    nb_sshgw_t *g = srv->data;
    if (status < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c || uv_tcp_init(g->d->loop, c) < 0) {
        free(c);
        return;
    }
    int fd = -1;
    uv_os_fd_t ufd;
    if (uv_accept(srv, (uv_stream_t *)c) == 0 && uv_fileno((uv_handle_t *)c, &ufd) == 0)
        fd = fcntl(ufd, F_DUPFD_CLOEXEC, 3);
    uv_close((uv_handle_t *)c, (uv_close_cb)free);
    if (fd < 0)
        return;
    nb_sshgw_sess_reap(g, 0);
    /* The thread sets the socket to blocking for libssh's key exchange. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (nb_sshgw_sess_start(g, fd) < 0)
        nb_log(NB_LOG_WARN, "SSH gateway: connection refused (too many sessions)");
}

int nb_sshgw_handoff(nb_sshgw_t *g, int fd)
{
    int r = 0;
    pthread_mutex_lock(&g->mu);
    if (g->stopping) {
        r = NB_ECLOSED;
    } else if (g->nfds == g->capfds) {
        size_t cap = g->capfds ? g->capfds * 2 : 16;
        int *n = realloc(g->fds, cap * sizeof *n);
        if (!n)
            r = -ENOMEM;
        else
            g->fds = n, g->capfds = cap;
    }
    if (r == 0)
        g->fds[g->nfds++] = fd;
    pthread_mutex_unlock(&g->mu);
    if (r == 0)
        uv_async_send(&g->async);
    return r;
}

static void on_async(uv_async_t *a)
{
    nb_sshgw_t *g = a->data;
    for (;;) {
        int fd = -1;
        pthread_mutex_lock(&g->mu);
        if (g->nfds) {
            fd = g->fds[0];
            memmove(g->fds, g->fds + 1, --g->nfds * sizeof *g->fds);
        }
        pthread_mutex_unlock(&g->mu);
        if (fd < 0)
            break;
        if (g->freeing)
            close(fd);
        else
            nb_sshgw_relay_start(g, fd);
    }
    nb_sshgw_sess_reap(g, 0);
}

void nb_sshgw_maybe_free(nb_sshgw_t *g)
{
    if (g->freeing && g->handles == 0 && g->relays == 0) {
        pthread_mutex_destroy(&g->mu);
        free(g->fds);
        free(g);
    }
}

static void on_closed(uv_handle_t *h)
{
    nb_sshgw_t *g = h->data;
    g->handles--;
    nb_sshgw_maybe_free(g);
}

void nb_sshgw_free(nb_sshgw_t *g)
{
    if (!g)
        return;
    g->freeing = 1;
    pthread_mutex_lock(&g->mu);
    g->stopping = 1;
    pthread_mutex_unlock(&g->mu);
    nb_sshgw_sess_reap(g, 1); /* every thread ends within its poll interval */
    for (size_t i = 0; i < g->nfds; i++)
        close(g->fds[i]);
    g->nfds = 0;
    if (g->bind)
        ssh_bind_free(g->bind);
    g->bind = NULL;
    if (g->handles == 0) {
        nb_sshgw_maybe_free(g);
        return;
    }
    if (!uv_is_closing((uv_handle_t *)&g->listener) && g->listener.loop)
        uv_close((uv_handle_t *)&g->listener, on_closed);
    if (g->async.loop && !uv_is_closing((uv_handle_t *)&g->async))
        uv_close((uv_handle_t *)&g->async, on_closed);
}

static json_t *key_file(const char *path)
{
    int n = 0;
    FILE *f = path[0] ? fopen(path, "re") : NULL;
    char line[16384];
    while (f && fgets(line, sizeof line, f))
        if (line[0] != '#' && line[0] != '\n' && strchr(line, ' '))
            n++;
    json_t *j = json_pack("{s:s, s:b, s:i}", "path", path, "exists", f != NULL, "keys", n);
    if (f)
        fclose(f);
    return j;
}

json_t *nb_sshgw_status(nb_sshgw_t *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->nsessions;
    pthread_mutex_unlock(&g->mu);
    json_t *files = json_array();
    json_array_append_new(files, key_file(g->own_keys));
    if (g->user_keys[0])
        json_array_append_new(files, key_file(g->user_keys));
    return json_pack("{s:b, s:s, s:i, s:s, s:s, s:i, s:i, s:o}", "enabled", 1, "host", "127.0.0.1",
                     "port", g->port, "host_key", g->host_pub, "fingerprint", g->fingerprint,
                     "sessions", n, "channels", g->relays, "key_files", files);
}
