/* nilboxd: argument parsing, the state-folder lock, daemonizing with a
 * readiness pipe, and the one libuv loop. The start/stop sequence itself
 * lives in daemon.c. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "host/home.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/stream.h"

#define LOG_ROTATE_BYTES (10L << 20)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nilboxd [--foreground] [--home DIR] [--api-port N | --no-tcp] [--key-file F]\n"
            "\n"
            "The nilbox daemon: one per NILBOX_HOME. Usually started by 'nilbox daemon start'\n"
            "or on demand by the CLI.\n"
            "\n"
            "  -f, --foreground   stay in the foreground and log to stderr\n"
            "  --home DIR         state folder (default $NILBOX_HOME, else\n"
            "                     $XDG_DATA_HOME/nilbox or ~/.local/share/nilbox)\n"
            "  --api-port N       web UI/API TCP port on 127.0.0.1 (default 0: pick a free one)\n"
            "  --no-tcp           no TCP listener, only the Unix socket\n"
            "  --key-file F       take the secret store's master key from file F (0600;\n"
            "                     created when missing): for headless machines only\n"
            "                     (default: OS keyring, else passphrase; also NILBOX_KEY_FILE)\n"
            "  --debug-dumpable   allow core dumps and ptrace by the same user (debugging\n"
            "                     only: a dump holds secret values; also\n"
            "                     NILBOX_DEBUG_DUMPABLE=1)\n"
            "  -h, --help         this help\n"
            "  --version          print the version\n"
            "\n"
            "Exit status: 0 after a clean stop, 1 on errors (e.g. another nilboxd already\n"
            "uses this NILBOX_HOME), 2 on usage errors.\n");
}

/* The default soft limit of 1024 descriptors is what one busy client
 * could use up (A28): take everything the hard limit allows. The proxy
 * and API budgets are sized below the result (api_proxy.c). */
static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        nb_log(NB_LOG_WARN, "cannot raise the descriptor limit: %s", strerror(errno));
}

/* Moves a big log aside once at start; enough to keep it bounded without
 * a rotation daemon. */
static int open_log(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size > LOG_ROTATE_BYTES) {
        char old[NB_HOME_PATH_MAX + 8];
        snprintf(old, sizeof old, "%s.1", path);
        rename(path, old);
    }
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
}

/* Double fork + setsid. The original process waits on `ready` until the
 * daemon reports "OK" or an error, so `nilboxd` (and `nilbox daemon start`)
 * fail visibly instead of leaving the user to read a log. Returns in the
 * daemon with *notify_fd set; the original process exits from here. */
static int daemonize(const char *logfile, int *notify_fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0) {
        char msg[2048];
        size_t len = 0;
        ssize_t n;
        close(p[1]);
        while (len < sizeof msg - 1 && (n = read(p[0], msg + len, sizeof msg - 1 - len)) != 0) {
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                break;
            len += (size_t)n;
        }
        msg[len] = '\0';
        if (strncmp(msg, "OK ", 3) == 0) {
            printf("nilboxd: started (pid %s)\n", msg + 3);
            exit(0);
        }
        fprintf(stderr, "nilboxd: %s\n",
                len ? msg : "the daemon exited during startup; see the log in NILBOX_HOME/logs");
        exit(1);
    }
    close(p[0]);
    if (setsid() < 0)
        _exit(1);
    pid = fork();
    if (pid < 0)
        _exit(1);
    if (pid > 0)
        _exit(0); /* the session leader goes; the daemon can never get a tty back */
    if (chdir("/") < 0)
        _exit(1);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    int log = open_log(logfile);
    if (null < 0 || log < 0) {
        dprintf(p[1], "cannot open the log file %s: %s", logfile, strerror(errno));
        _exit(1);
    }
    dup2(null, STDIN_FILENO);
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    close(null);
    close(log);
    setvbuf(stderr, NULL, _IOLBF, 0);
    *notify_fd = p[1];
    return 0;
}

/* A core dump or a same-uid ptrace/process_vm_readv would copy whatever
 * is in memory, secret values included (docs/security.md "Memory"). Not
 * dumpable: no core file, /proc/PID/mem and ptrace need CAP_SYS_PTRACE.
 * RLIMIT_CORE 0 as well, so a later exec'd helper or a re-enabled flag
 * still writes no core. Before any secret is read. */
static int harden_dumps(int debug)
{
    const char *e = getenv("NILBOX_DEBUG_DUMPABLE");
    if (debug || (e && strcmp(e, "1") == 0)) {
        fprintf(stderr, "nilboxd: WARNING: core dumps allowed (--debug-dumpable): a dump or a "
                        "debugger sees every secret value\n");
        return 0;
    }
    struct rlimit rl = {0, 0};
    if (setrlimit(RLIMIT_CORE, &rl) < 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        fprintf(stderr, "nilboxd: cannot disable core dumps: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static void on_stopped(nb_daemon_t *d)
{
    /* Handles close asynchronously; uv_run returns once they are gone. */
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"foreground", no_argument, NULL, 'f'},
        {"home", required_argument, NULL, 'H'},
        {"api-port", required_argument, NULL, 'p'},
        {"no-tcp", no_argument, NULL, 'n'},
        {"key-file", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"debug-dumpable", no_argument, NULL, 'D'},
        {NULL, 0, NULL, 0},
    };
    static nb_daemon_t d;
    const char *home_arg = NULL;
    int foreground = 0, c, notify = -1, r, debug_dumpable = 0;
    char err[1024] = "";
    uv_loop_t loop;
    pid_t holder = 0;

    while ((c = getopt_long(argc, argv, "fh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            foreground = 1;
            break;
        case 'H':
            home_arg = optarg;
            break;
        case 'p': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (!optarg[0] || *end || v < 0 || v > 65535) {
                fprintf(stderr, "nilboxd: --api-port wants a port number 0-65535, not '%s'\n",
                        optarg);
                return 2;
            }
            d.api_port_req = (int)v;
            break;
        }
        case 'n':
            d.api_port_req = -1;
            break;
        case 'k':
            d.key_file = optarg;
            break;
        case 'D':
            debug_dumpable = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("nilboxd %s\n", NB_VERSION);
            return 0;
        default:
            fprintf(stderr, "nilboxd: try 'nilboxd --help'\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nilboxd: unexpected argument '%s'; try 'nilboxd --help'\n", argv[optind]);
        return 2;
    }
    /* The daemon's cwd becomes "/": make a relative key file absolute now. */
    static char key_file_abs[4096];
    if (!d.key_file)
        d.key_file = getenv("NILBOX_KEY_FILE");
    if (d.key_file && !d.key_file[0])
        d.key_file = NULL;
    if (d.key_file && d.key_file[0] != '/') {
        char cwd[2048];
        if (!getcwd(cwd, sizeof cwd) || snprintf(key_file_abs, sizeof key_file_abs, "%s/%s", cwd,
                                                 d.key_file) >= (int)sizeof key_file_abs) {
            fprintf(stderr, "nilboxd: cannot resolve the key file path '%s'\n", d.key_file);
            return 2;
        }
        d.key_file = key_file_abs;
    }
    if (harden_dumps(debug_dumpable) < 0)
        return 1;
    nb_json_wipe_on_free();
    nb_log_set_tag("nilboxd");
    raise_nofile_limit();
    umask(077);
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) {
        fprintf(stderr, "nilboxd: libsodium failed to initialise\n");
        return 1;
    }
    if ((r = nb_home_resolve(home_arg, &d.home, err, sizeof err)) < 0 ||
        (r = nb_home_prepare(&d.home, err, sizeof err)) < 0 ||
        (r = nb_home_lock(&d.home, &d.lock_fd, &holder, err, sizeof err)) < 0) {
        fprintf(stderr, "nilboxd: %s\n", err);
        return 1;
    }
    if (!foreground && (r = daemonize(d.home.logfile, &notify)) < 0) {
        fprintf(stderr, "nilboxd: cannot daemonize: %s\n", nb_strerror(r));
        return 1;
    }
    nb_home_lock_set_pid(d.lock_fd, getpid());

    if ((r = uv_loop_init(&loop)) < 0) {
        snprintf(err, sizeof err, "cannot create the event loop: %s", uv_strerror(r));
        goto fail;
    }
    d.loop = &loop;
    /* One io_uring submission for an iteration's socket writes (issue 10;
     * NILBOX_IO_URING=0 turns it off). */
    if ((r = nb_stream_loop_batch(&loop)) < 0) {
        snprintf(err, sizeof err, "cannot set up write batching: %s", nb_strerror(r));
        goto fail;
    }
    d.on_stopped = on_stopped;
    if ((r = nb_daemon_start(&d, err, sizeof err)) < 0)
        goto fail;
    if (notify >= 0) {
        dprintf(notify, "OK %ld", (long)getpid());
        close(notify);
        notify = -1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    nb_stream_loop_unbatch(&loop);
    if (uv_loop_close(&loop) == UV_EBUSY) {
        uv_walk(&loop, on_walk_close, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    /* The lock fd stays open: the kernel drops the lock when this process
     * is gone, so 'nilbox daemon stop' (which waits for the lock) reports
     * "stopped" only then, not while exit handlers (LSan, atexit) still run. */
    return d.exit_code;
fail:
    nb_log(NB_LOG_ERR, "%s", err);
    if (notify >= 0)
        dprintf(notify, "%s", err);
    else if (!foreground)
        fprintf(stderr, "nilboxd: %s\n", err);
    if (d.loop) {
        nb_stream_loop_unbatch(&loop);
        uv_walk(&loop, on_walk_close, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    close(d.lock_fd);
    return 1;
}
