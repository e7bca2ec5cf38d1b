#include "cli/client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <llhttp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host/version.h"
#include "lib/err.h"
#include "lib/json.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return NB_ETIMEOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)(left > INT_MAX ? INT_MAX : left));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

int nb_client_connect(const char *sock, int timeout_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        /* A Unix connect only blocks when the backlog is full. */
        if (e != EAGAIN && e != EINPROGRESS) {
            close(fd);
            return -e;
        }
        int r = wait_fd(fd, POLLOUT, now_ms() + timeout_ms);
        socklen_t len = sizeof e;
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0 || e) {
            close(fd);
            return r < 0 ? r : -(e ? e : errno);
        }
    }
    return fd;
}

static int write_all(int fd, const void *p, size_t len, int64_t deadline)
{
    const char *s = p;
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -errno;
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

/* --- response parsing with llhttp --- */
typedef struct {
    nb_client_resp_t *resp;
    char field[64];
    size_t field_len;
    int in_accept, in_ctype, json_ct, done;
    size_t head_bytes;
} parse_t;

static int on_hfield(llhttp_t *p, const char *at, size_t len)
{
    parse_t *ps = p->data;
    ps->head_bytes += len;
    if (ps->field_len + len < sizeof ps->field) {
        memcpy(ps->field + ps->field_len, at, len);
        ps->field_len += len;
    } else {
        ps->field_len = sizeof ps->field; /* too long to be one we care about */
    }
    return ps->head_bytes > NB_CLIENT_MAX_HEAD ? -1 : 0;
}

static int on_hvalue(llhttp_t *p, const char *at, size_t len)
{
    parse_t *ps = p->data;
    ps->head_bytes += len;
    if (ps->field_len < sizeof ps->field) {
        ps->field[ps->field_len] = '\0';
        ps->in_accept = strcasecmp(ps->field, "Sec-WebSocket-Accept") == 0;
        ps->in_ctype = strcasecmp(ps->field, "Content-Type") == 0;
    }
    if (ps->in_accept) {
        size_t have = strlen(ps->resp->accept);
        if (have + len < sizeof ps->resp->accept)
            memcpy(ps->resp->accept + have, at, len);
    }
    if (ps->in_ctype && len >= 16 && strncasecmp(at, "application/json", 16) == 0)
        ps->json_ct = 1;
    return ps->head_bytes > NB_CLIENT_MAX_HEAD ? -1 : 0;
}

static int on_hvalue_done(llhttp_t *p)
{
    parse_t *ps = p->data;
    ps->field_len = 0;
    ps->in_accept = ps->in_ctype = 0;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    parse_t *ps = p->data;
    return nb_buf_append(&ps->resp->body, at, len) < 0 ? -1 : 0;
}

static int on_complete(llhttp_t *p)
{
    ((parse_t *)p->data)->done = 1;
    /* An upgrade must surface as HPE_PAUSED_UPGRADE so the bytes after the
     * head are kept; anything else stops right after this message. */
    return p->upgrade ? 0 : HPE_PAUSED;
}

int nb_client_exchange(int fd, const char *method, const char *path, const json_t *body,
                       const char *extra_headers, int timeout_ms, nb_client_resp_t *resp)
{
    int64_t deadline = now_ms() + timeout_ms;
    nb_buf_t req, jb;
    llhttp_t p;
    llhttp_settings_t s;
    parse_t ps = {.resp = resp};
    char buf[16384];
    int r;
    memset(resp, 0, sizeof *resp);
    nb_buf_init(&resp->body, NB_CLIENT_MAX_BODY);
    nb_buf_init(&req, 1u << 20);
    nb_buf_init(&jb, 1u << 20);
    if (body && (r = nb_json_dump(body, &jb)) < 0)
        goto out;
    r = nb_buf_printf(&req,
                      "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: nilbox/" NB_VERSION
                      "\r\nAccept: application/json\r\n%s",
                      method, path, extra_headers ? extra_headers : "");
    if (r == 0 && body)
        r = nb_buf_printf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                          jb.len);
    else if (r == 0 && (!strcmp(method, "POST") || !strcmp(method, "PUT")))
        r = nb_buf_append_str(&req, "Content-Length: 0\r\n");
    if (r == 0)
        r = nb_buf_append_str(&req, "\r\n");
    if (r == 0 && body)
        r = nb_buf_append(&req, jb.p, jb.len);
    if (r < 0 || (r = write_all(fd, req.p, req.len, deadline)) < 0)
        goto out;

    llhttp_settings_init(&s);
    s.on_header_field = on_hfield;
    s.on_header_value = on_hvalue;
    s.on_header_value_complete = on_hvalue_done;
    s.on_body = on_body;
    s.on_message_complete = on_complete;
    llhttp_init(&p, HTTP_RESPONSE, &s);
    p.data = &ps;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                r = -errno;
                goto out;
            }
            if ((r = wait_fd(fd, POLLIN, deadline)) < 0)
                goto out;
            continue;
        }
        llhttp_errno_t e = n == 0 ? llhttp_finish(&p) : llhttp_execute(&p, buf, (size_t)n);
        if (e == HPE_PAUSED_UPGRADE) {
            /* Keep what followed the head: it is the first WebSocket data. */
            const char *pos = llhttp_get_error_pos(&p);
            resp->upgraded = 1;
            if (pos && pos >= buf && pos < buf + n)
                nb_buf_append(&resp->body, pos, (size_t)(buf + n - pos));
            break;
        }
        if (ps.done || (e == HPE_OK && n == 0 && p.status_code))
            break;
        if (e != HPE_OK) {
            r = resp->body.len >= NB_CLIENT_MAX_BODY ? NB_ETOOBIG : NB_EPROTO;
            goto out;
        }
        if (n == 0) {
            r = NB_ECLOSED;
            goto out;
        }
    }
    resp->status = p.status_code;
    if (ps.json_ct && resp->body.len && !resp->upgraded)
        nb_json_parse(nb_buf_iov(&resp->body), &resp->json, NULL, 0);
    r = 0;
out:
    nb_buf_free(&req);
    nb_buf_free(&jb);
    if (r < 0)
        nb_client_resp_free(resp);
    return r;
}

int nb_client_request(const char *sock, const char *method, const char *path, const json_t *body,
                      int timeout_ms, nb_client_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    int fd = nb_client_connect(sock, timeout_ms);
    if (fd < 0)
        return fd;
    int r = nb_client_exchange(fd, method, path, body, "Connection: close\r\n", timeout_ms, resp);
    close(fd);
    return r;
}

void nb_client_resp_free(nb_client_resp_t *resp)
{
    nb_buf_free(&resp->body);
    json_decref(resp->json);
    resp->json = NULL;
}

int nb_client_unreachable(int r)
{
    return r == -ENOENT || r == -ECONNREFUSED || r == -ENOTSOCK || r == -ENOTDIR ||
           r == -ECONNRESET || r == NB_ECLOSED;
}

/* ---------------------------------------------------------- CLI helpers */

int nb_cli_call(nb_cli_t *cli, const char *method, const char *path, const json_t *body,
                json_t **out)
{
    nb_client_resp_t resp;
    if (out)
        *out = NULL;
    int r = nb_client_request(cli->home.sock, method, path, body, 60000, &resp);
    if (r < 0) {
        if (nb_client_unreachable(r))
            return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "unreachable",
                               "nilboxd is not running (no answer on %s); start it with "
                               "'nilbox daemon start'",
                               cli->home.sock);
        if (r == NB_ETIMEOUT)
            return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "timeout",
                               "nilboxd did not answer %s %s within 60 s", method, path);
        return nb_cli_fail(cli, NB_CLI_ERROR, "transport", "talking to nilboxd failed: %s",
                           nb_strerror(r));
    }
    int code = NB_CLI_OK;
    if (resp.status >= 400) {
        const char *msg = resp.json ? nb_json_str(resp.json, "message") : NULL;
        const char *err = resp.json ? nb_json_str(resp.json, "error") : NULL;
        code = resp.status == 404                         ? NB_CLI_NOTFOUND
               : resp.status == 401 || resp.status == 403 ? NB_CLI_DENIED
                                                          : NB_CLI_ERROR;
        nb_cli_fail(cli, code, err ? err : "http_error", "%s",
                    msg ? msg : "the daemon answered with an error");
    } else if (out) {
        *out = resp.json ? json_incref(resp.json) : json_object();
    }
    nb_client_resp_free(&resp);
    return code;
}

static int exe_dir(char *out, size_t outsz)
{
    ssize_t n = readlink("/proc/self/exe", out, outsz - 1);
    if (n <= 0)
        return 0;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    return 1;
}

int nb_cli_find_nilboxd(char *out, size_t outsz)
{
    char dir[PATH_MAX];
    const char *env = getenv("NILBOXD");
    if (env && env[0]) {
        snprintf(out, outsz, "%s", env);
        return access(out, X_OK) == 0;
    }
    if (exe_dir(dir, sizeof dir)) {
        if (snprintf(out, outsz, "%s/nilboxd", dir) < (int)outsz && access(out, X_OK) == 0)
            return 1;
        /* Build tree: build/src/cli/nilbox next to build/src/daemon/nilboxd. */
        if (snprintf(out, outsz, "%s/../daemon/nilboxd", dir) < (int)outsz &&
            access(out, X_OK) == 0)
            return 1;
    }
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path ? path : "/usr/local/bin:/usr/bin:/bin");
    for (char *p = buf, *next; p; p = next) {
        next = strchr(p, ':');
        if (next)
            *next++ = '\0';
        if (*p && snprintf(out, outsz, "%s/nilboxd", p) < (int)outsz && access(out, X_OK) == 0)
            return 1;
    }
    out[0] = '\0';
    return 0;
}

static int answers(nb_cli_t *cli)
{
    nb_client_resp_t resp;
    int r = nb_client_request(cli->home.sock, "GET", "/v1/status", NULL, 5000, &resp);
    if (r < 0)
        return 0;
    r = resp.status == 200;
    nb_client_resp_free(&resp);
    return r;
}

int nb_cli_ensure_daemon(nb_cli_t *cli, int timeout_s, int quiet, int *started)
{
    char exe[PATH_MAX], errbuf[2048];
    int pfd[2];
    if (started)
        *started = 0;
    if (answers(cli))
        return NB_CLI_OK;
    if (!nb_cli_find_nilboxd(exe, sizeof exe))
        return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "no_daemon_binary",
                           "cannot find the nilboxd executable (looked next to nilbox and in "
                           "PATH; set NILBOXD=/path/to/nilboxd)");
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "fork: %s", strerror(errno));
    if (pid == 0) {
        /* nilboxd daemonizes itself and exits once it is ready (or failed);
         * its stderr carries the reason, which we relay. */
        int null = open("/dev/null", O_RDWR);
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(pfd[1], STDERR_FILENO);
        char *argv[] = {exe, "--home", cli->home.home, NULL};
        execv(exe, argv);
        dprintf(STDERR_FILENO, "nilboxd: cannot run %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
    size_t len = 0;
    int status = -1, exited = 0;
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    while (now_ms() < deadline) {
        ssize_t n = read(pfd[0], errbuf + len, sizeof errbuf - 1 - len);
        if (n > 0)
            len += (size_t)n;
        if (!exited && waitpid(pid, &status, WNOHANG) == pid)
            exited = 1;
        if (exited && n <= 0)
            break;
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        poll(&p, 1, 50);
    }
    close(pfd[0]);
    errbuf[len] = '\0';
    while (len && errbuf[len - 1] == '\n')
        errbuf[--len] = '\0';
    if (!exited) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "start_timeout",
                           "nilboxd did not become ready within %d s; see %s", timeout_s,
                           cli->home.logfile);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        const char *m = strncmp(errbuf, "nilboxd: ", 9) == 0 ? errbuf + 9 : errbuf;
        return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "start_failed", "could not start nilboxd: %s",
                           len ? m : "it exited with an error");
    }
    while (!answers(cli)) {
        if (now_ms() >= deadline)
            return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "start_timeout",
                               "nilboxd started but does not answer on %s; see %s", cli->home.sock,
                               cli->home.logfile);
        usleep(50 * 1000);
    }
    pid_t dpid = 0;
    nb_home_lock_holder(&cli->home, &dpid);
    if (!quiet)
        fprintf(stderr, "nilbox: started nilboxd (pid %ld)\n", (long)dpid);
    if (started)
        *started = 1;
    return NB_CLI_OK;
}
