/* Finding and starting nilboxd (moved here from the CLI so nilbox-desktop
 * starts the daemon the same way; see daemonctl.h). */
#include "host/daemonctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "host/client.h"
#include "host/doctor.h"

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

int nb_daemonctl_find(char *out, size_t outsz)
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
        /* Build tree: build/src/{cli,desktop}/ next to build/src/daemon/nilboxd. */
        if (snprintf(out, outsz, "%s/../daemon/nilboxd", dir) < (int)outsz &&
            access(out, X_OK) == 0)
            return 1;
    }
    return nb_doctor_find_in_path("nilboxd", out, outsz);
}

int nb_daemonctl_answers(const nb_home_t *h)
{
    nb_client_resp_t resp;
    int r = nb_client_request(h->sock, "GET", "/v1/status", 5000, &resp);
    if (r < 0)
        return 0;
    r = resp.status == 200;
    nb_client_resp_free(&resp);
    return r;
}

static int fail(const char **code, const char *c, char *msg, size_t msgsz, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(const char **code, const char *c, char *msg, size_t msgsz, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msgsz, fmt, ap);
    va_end(ap);
    *code = c;
    return -1;
}

int nb_daemonctl_ensure(const nb_home_t *h, int timeout_s, int *started, pid_t *pid,
                        const char **code, char *msg, size_t msgsz)
{
    char exe[PATH_MAX], errbuf[2048];
    int pfd[2];
    if (started)
        *started = 0;
    if (pid)
        *pid = 0;
    if (nb_daemonctl_answers(h))
        return 0;
    if (!nb_daemonctl_find(exe, sizeof exe))
        return fail(code, "no_daemon_binary", msg, msgsz,
                    "cannot find the nilboxd executable (looked next to this program and in "
                    "PATH; set NILBOXD=/path/to/nilboxd)");
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return fail(code, "internal", msg, msgsz, "pipe: %s", strerror(errno));
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        close(pfd[0]);
        close(pfd[1]);
        return fail(code, "internal", msg, msgsz, "fork: %s", strerror(e));
    }
    if (child == 0) {
        /* nilboxd daemonizes itself and exits once it is ready (or failed);
         * its stderr carries the reason, which we relay. */
        int null = open("/dev/null", O_RDWR);
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(pfd[1], STDERR_FILENO);
        char *argv[] = {exe, "--home", (char *)h->home, NULL};
        execv(exe, argv);
        dprintf(STDERR_FILENO, "nilboxd: cannot run %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    int64_t deadline = nb_client_now_ms() + (int64_t)timeout_s * 1000;
    size_t len = 0;
    int status = -1, exited = 0;
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    while (nb_client_now_ms() < deadline) {
        ssize_t n = read(pfd[0], errbuf + len, sizeof errbuf - 1 - len);
        if (n > 0)
            len += (size_t)n;
        if (!exited && waitpid(child, &status, WNOHANG) == child)
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
        kill(child, SIGTERM);
        waitpid(child, NULL, 0);
        return fail(code, "start_timeout", msg, msgsz,
                    "nilboxd did not become ready within %d s; see %s", timeout_s, h->logfile);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        const char *m = strncmp(errbuf, "nilboxd: ", 9) == 0 ? errbuf + 9 : errbuf;
        return fail(code, "start_failed", msg, msgsz, "could not start nilboxd: %s",
                    len ? m : "it exited with an error");
    }
    while (!nb_daemonctl_answers(h)) {
        if (nb_client_now_ms() >= deadline)
            return fail(code, "start_timeout", msg, msgsz,
                        "nilboxd started but does not answer on %s; see %s", h->sock, h->logfile);
        usleep(50 * 1000);
    }
    pid_t dpid = 0;
    nb_home_lock_holder(h, &dpid);
    if (pid)
        *pid = dpid;
    if (started)
        *started = 1;
    return 0;
}
