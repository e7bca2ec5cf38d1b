/* nilbox vm create|start|stop|restart|rm|ls|inspect|logs|resize|set|snapshot
 *
 * Lifecycle commands talk to the daemon's /v1/vms routes. `start` (and
 * `create --start`, `restart`) follow the event stream and print the boot
 * progress until the VM's agent is ready. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cmdutil.h"
#include "cli/logfilter.h"
#include "cli/vmwait.h"
#include "cli/wsclient.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define START_TIMEOUT_S 300

/* ------------------------------------------------------------ event helpers */

nb_wsc_t *nb_cli_events_open(nb_cli_t *cli)
{
    nb_wsc_t *ws = NULL;
    char err[256];
    if (nb_wsc_connect(cli->home.sock, "/v1/events", 10000, &ws, NULL, err, sizeof err) < 0)
        return NULL;
    return ws;
}

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    interrupted = 1;
}

int nb_cli_events_wait(nb_wsc_t *ws, int timeout_s, nb_cli_event_fn fn, void *ud)
{
    nb_buf_t msg;
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigaction(SIGINT, &sa, &old); /* no SA_RESTART: poll returns EINTR */
    nb_buf_init(&msg, 16u << 20);
    double end = nb_cli_now_s() + timeout_s;
    int ret = 0;
    interrupted = 0;
    while (!ret) {
        int left = (int)((end - nb_cli_now_s()) * 1000);
        if (interrupted) {
            ret = -EINTR;
            break;
        }
        if (left <= 0) {
            ret = NB_ETIMEOUT;
            break;
        }
        int op = 0, r = nb_wsc_recv(ws, left, &op, &msg, NULL);
        if (r == -EINTR)
            continue;
        if (r < 0) {
            ret = r;
            break;
        }
        json_t *e = NULL;
        if (op == NB_WSC_TEXT && nb_json_parse(nb_buf_iov(&msg), &e, NULL, 0) == 0)
            ret = fn(e, ud);
        json_decref(e);
    }
    nb_buf_free(&msg);
    sigaction(SIGINT, &old, NULL);
    return ret;
}

void nb_cli_progress(double secs, const char *msg)
{
    char esc[600];
    fprintf(stderr, "  [%6.1fs] %s\n", secs, nb_log_escape(esc, sizeof esc, msg, strlen(msg)));
    fflush(stderr);
}

/* ------------------------------------------------------------ start + wait */

typedef struct {
    const char *vm;
    double t0;
    int quiet;
    int seen_starting; /* a restart stops the VM first: only later ends count */
    int restart;
    char last_exit[1024];
    json_t *running; /* the vm.running event */
} boot_wait_t;

static int boot_event(const json_t *e, void *ud)
{
    boot_wait_t *w = ud;
    const char *type = nb_json_str(e, "type"), *vm = nb_json_str(e, "vm");
    if (!type || !vm || strcmp(vm, w->vm) != 0)
        return 0;
    if (!strcmp(type, "progress")) {
        const char *m = nb_json_str(e, "message");
        if (m && !w->quiet)
            nb_cli_progress(nb_cli_now_s() - w->t0, m);
        return 0;
    }
    if (!strcmp(type, "vm.starting"))
        w->seen_starting = 1;
    if (!strcmp(type, "vm.running") ||
        (!strcmp(type, "vm.agent") && nb_json_bool(e, "connected", 0))) {
        w->running = json_deep_copy(e);
        return 1;
    }
    if (w->seen_starting && (!strcmp(type, "vm.crashed") || !strcmp(type, "vm.stopped"))) {
        const char *le = nb_json_str(e, "last_exit");
        snprintf(w->last_exit, sizeof w->last_exit, "%s", le ? le : type + 3);
        return 2;
    }
    return 0;
}

/* POSTs `path` (start or restart) and follows the boot until the agent is
 * ready. */
static int start_and_wait(nb_cli_t *cli, const char *name, const char *path, int nowait)
{
    boot_wait_t w = {.vm = name, .t0 = nb_cli_now_s(), .quiet = cli->json};
    w.restart = strstr(path, "/restart") != NULL;
    nb_wsc_t *ws = nowait ? NULL : nb_cli_events_open(cli);
    json_t *res = NULL;
    int code = nb_cli_call(cli, "POST", path, NULL, &res);
    if (code != NB_CLI_OK) {
        nb_wsc_free(ws);
        return code;
    }
    if (nowait || !ws) {
        if (!nowait)
            fprintf(stderr,
                    "nilbox: cannot follow the boot (no event stream); see "
                    "'nilbox vm inspect %s'\n",
                    name);
        if (cli->json)
            nb_cli_print_json(res);
        else
            printf("VM %s is starting\n", name);
        json_decref(res);
        nb_wsc_free(ws);
        return NB_CLI_OK;
    }
    const char *state = nb_json_str(res, "state");
    if (state && !strcmp(state, "running") && nb_json_bool(res, "agent", 0) && !w.restart) {
        if (cli->json)
            nb_cli_print_json(res);
        else
            printf("VM %s is already running\n", name);
        json_decref(res);
        nb_wsc_free(ws);
        return NB_CLI_OK;
    }
    json_decref(res);
    if (!cli->json)
        fprintf(stderr, "nilbox: starting VM %s\n", name);
    int r = nb_cli_events_wait(ws, START_TIMEOUT_S, boot_event, &w);
    nb_wsc_free(ws);
    if (r == 1) {
        if (cli->json) {
            nb_cli_print_json(w.running);
        } else {
            json_t *b = json_object_get(w.running, "boot_secs");
            printf("VM %s is running (agent ready after %.1f s)\n", name,
                   json_is_number(b) ? json_number_value(b) : nb_cli_now_s() - w.t0);
            printf("open a shell: nilbox shell %s    run a command: nilbox exec %s -- CMD\n", name,
                   name);
        }
        json_decref(w.running);
        return NB_CLI_OK;
    }
    if (r == 2)
        return nb_cli_fail(cli, NB_CLI_ERROR, "start_failed",
                           "VM %s did not come up: %s; see 'nilbox vm logs %s'", name, w.last_exit,
                           name);
    if (r == -EINTR)
        return nb_cli_fail(cli, NB_CLI_ERROR, "interrupted",
                           "stopped waiting; VM %s keeps booting (see 'nilbox vm ls')", name);
    return nb_cli_fail(cli, NB_CLI_ERROR, "start_timeout",
                       "VM %s is not ready after %d s; see 'nilbox vm logs %s'", name,
                       START_TIMEOUT_S, name);
}

static int vm_path(char *out, size_t outsz, const char *name, const char *suffix)
{
    /* Names are validated by the daemon; refuse what would break the path. */
    if (!name[0] || strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(name) ||
        strlen(name) > 64) {
        fprintf(stderr,
                "nilbox: '%s' is not a valid VM name: start with a lowercase letter, then up to 31 "
                "lowercase letters, digits or '-'\n",
                name);
        return -1;
    }
    snprintf(out, outsz, "/v1/vms/%s%s", name, suffix);
    return 0;
}

/* ------------------------------------------------------------ verbs */

/* --accel VALUE: NULL (not given), or 0 and usage error. */
static int accel_opt(const nb_cli_verb_t *v, nb_cli_args_t *a, const char **out)
{
    const char *s = nb_cli_opt(v, a, "accel");
    *out = s;
    if (s && strcmp(s, "auto") != 0 && strcmp(s, "kvm") != 0 && strcmp(s, "tcg") != 0) {
        char esc[80];
        fprintf(stderr, "nilbox: --accel must be auto, kvm or tcg (not '%s')\n",
                nb_log_escape(esc, sizeof esc, s, strlen(s)));
        return -1;
    }
    return 0;
}

static int do_create(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *name = a->pos[0];
    json_t *body = json_pack("{s:s}", "name", name), *res = NULL;
    const char *image = nb_cli_opt(v, a, "image"), *mem = nb_cli_opt(v, a, "memory");
    const char *disk = nb_cli_opt(v, a, "disk"), *restart = nb_cli_opt(v, a, "restart");
    long cpus = nb_cli_opt_long(v, a, "cpus", 1, 64);
    const char *accel;
    if (cpus < 0 || accel_opt(v, a, &accel) < 0) {
        json_decref(body);
        return NB_CLI_USAGE;
    }
    if (accel)
        json_object_set_new(body, "accel", json_string(accel));
    if (nb_cli_opt(v, a, "user"))
        json_object_set_new(body, "user", json_string(nb_cli_opt(v, a, "user")));
    json_object_set_new(body, "cpus", json_integer(cpus));
    if (image)
        json_object_set_new(body, "image", json_string(image));
    if (mem)
        json_object_set_new(body, "memory", json_string(mem));
    if (disk)
        json_object_set_new(body, "disk", json_string(disk));
    if (restart)
        json_object_set_new(body, "restart", json_string(restart));
    int code = nb_cli_call(cli, "POST", "/v1/vms", body, &res);
    json_decref(body);
    if (code != NB_CLI_OK)
        return code;
    if (nb_cli_flag(v, a, "start")) {
        char path[128];
        json_decref(res);
        if (!cli->json)
            printf("created VM %s\n", name);
        fflush(stdout);
        vm_path(path, sizeof path, name, "/start");
        return start_and_wait(cli, name, path, 0);
    }
    if (cli->json)
        nb_cli_print_json(res);
    else
        printf("created VM %s (image %s, %lld CPU, %lld MiB, disk %lld MiB, user %s); start it "
               "with 'nilbox vm start %s'\n",
               name, nb_json_str(res, "image"), (long long)nb_json_int(res, "cpus", 0),
               (long long)nb_json_int(res, "memory_mib", 0),
               (long long)(nb_json_int(res, "disk_bytes", 0) >> 20), nb_json_str(res, "user"),
               name);
    json_decref(res);
    return NB_CLI_OK;
}

/* `vm start` and `vm restart`: POST /v1/vms/NAME/<verb>. */
static int do_start(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[128], suffix[16];
    snprintf(suffix, sizeof suffix, "/%s", v->name);
    if (vm_path(path, sizeof path, a->pos[0], suffix) < 0)
        return NB_CLI_USAGE;
    return start_and_wait(cli, a->pos[0], path, nb_cli_flag(v, a, "no-wait"));
}

static int simple(nb_cli_t *cli, const char *method, const char *name, const char *suffix,
                  json_t *body, const char *done)
{
    char path[160];
    json_t *res = NULL;
    if (vm_path(path, sizeof path, name, suffix) < 0) {
        json_decref(body);
        return NB_CLI_USAGE;
    }
    int code = nb_cli_call(cli, method, path, body, &res);
    json_decref(body);
    if (code == NB_CLI_OK) {
        if (cli->json)
            nb_cli_print_json(res);
        else if (done)
            printf("VM %s %s\n", name, done);
    }
    json_decref(res);
    return code;
}

static int do_stop(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[160];
    json_t *res = NULL;
    if (vm_path(path, sizeof path, a->pos[0], "") < 0)
        return NB_CLI_USAGE;
    /* Say "already stopped" rather than "stopping" for a VM that is not
     * running; the stop request still goes out (it cancels the pending
     * restart of a crashed VM). */
    int code = nb_cli_call(cli, "GET", path, NULL, &res);
    if (code != NB_CLI_OK)
        return code;
    const char *state = nb_json_str(res, "state");
    int down = state && (!strcmp(state, "stopped") || !strcmp(state, "crashed"));
    char was[16];
    snprintf(was, sizeof was, "%s", state ? state : "");
    json_decref(res);
    if (!cli->json && !down)
        fprintf(stderr, "nilbox: stopping VM %s\n", a->pos[0]);
    return simple(cli, "POST", a->pos[0], "/stop",
                  json_pack("{s:b}", "force", nb_cli_flag(v, a, "force")),
                  !down                     ? "is stopped"
                  : !strcmp(was, "crashed") ? "was not running (it had crashed); it stays stopped"
                                            : "is already stopped");
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[160];
    if (vm_path(path, sizeof path, a->pos[0], nb_cli_flag(v, a, "force") ? "?force=1" : "") < 0)
        return NB_CLI_USAGE;
    json_t *res = NULL;
    int code;
    if (!nb_cli_call_or_json(cli, "DELETE", path, NULL, &res, &code))
        printf("removed VM %s\n", a->pos[0]);
    json_decref(res);
    return code;
}

static int do_resize(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    return simple(cli, "POST", a->pos[0], "/resize", json_pack("{s:s}", "disk", a->pos[1]),
                  "resized; the guest grows its file system at the next boot");
}

static int do_set(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *restart = nb_cli_opt(v, a, "restart"), *accel, *user = nb_cli_opt(v, a, "user");
    if (accel_opt(v, a, &accel) < 0)
        return NB_CLI_USAGE;
    if (!restart && !accel && !user) {
        fprintf(stderr, "nilbox: nothing to set; try --restart never|on-failure, --accel "
                        "auto|kvm|tcg or --user NAME\n");
        return NB_CLI_USAGE;
    }
    json_t *body = json_object();
    if (restart)
        json_object_set_new(body, "restart", json_string(restart));
    if (accel)
        json_object_set_new(body, "accel", json_string(accel));
    if (user)
        json_object_set_new(body, "user", json_string(user));
    return simple(cli, "PATCH", a->pos[0], "", body,
                  accel ? "updated (the accelerator applies from the next start)" : "updated");
}

static int do_inspect(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[160];
    json_t *res = NULL;
    if (vm_path(path, sizeof path, a->pos[0], "") < 0)
        return NB_CLI_USAGE;
    int code = nb_cli_call(cli, "GET", path, NULL, &res);
    if (code == NB_CLI_OK)
        nb_cli_print_json(res);
    json_decref(res);
    return code;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL, *vm;
    size_t i;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/vms", NULL, &res, &code))
        return code;
    json_t *vms = json_object_get(res, "vms");
    if (json_array_size(vms) == 0)
        printf("no VMs; create one with 'nilbox vm create NAME'\n");
    else
        printf("%-20s %-9s %-7s %4s %7s %8s %-6s %-10s %s\n", "NAME", "STATE", "IMAGE", "CPUS",
               "MEMORY", "DISK", "AGENT", "RESTART", "USER");
    json_array_foreach (vms, i, vm) {
        char mem[16], disk[16];
        snprintf(mem, sizeof mem, "%lldM", (long long)nb_json_int(vm, "memory_mib", 0));
        snprintf(disk, sizeof disk, "%lldM", (long long)(nb_json_int(vm, "disk_bytes", 0) >> 20));
        const char *user = nb_json_str(vm, "user");
        printf("%-20s %-9s %-7s %4lld %7s %8s %-6s %-10s %s\n", nb_json_str(vm, "name"),
               nb_json_str(vm, "state"), nb_json_str(vm, "image"),
               (long long)nb_json_int(vm, "cpus", 0), mem, disk,
               nb_json_bool(vm, "agent", 0) ? "yes" : "-", nb_json_str(vm, "restart"),
               user ? user : "-");
    }
    json_decref(res);
    return NB_CLI_OK;
}

/* The console carries whatever the guest printed: see logfilter.h. */
static nb_logfilter_t log_filter;

static void on_log_filtered(void *ud, const uint8_t *p, size_t n)
{
    fwrite(p, 1, n, stdout);
}

static void print_console(const char *s)
{
    nb_logfilter_feed(&log_filter, (const uint8_t *)s, strlen(s));
    fflush(stdout);
}

/* Prints one log (console or QEMU's stderr) from `offset` (-1: the last
 * `tail` bytes); with `follow`, keeps printing until interrupted. */
static int print_log(nb_cli_t *cli, const char *base, const char *source, long tail, int follow,
                     const char *header)
{
    char path[240];
    long long offset = -1;
    int printed_header = 0;
    for (;;) {
        json_t *res = NULL;
        if (offset < 0)
            snprintf(path, sizeof path, "%s?source=%s&tail=%ld", base, source, tail);
        else
            snprintf(path, sizeof path, "%s?source=%s&offset=%lld", base, source, offset);
        int code = nb_cli_call(cli, "GET", path, NULL, &res);
        if (code != NB_CLI_OK)
            return code;
        const char *data = nb_json_str(res, "data");
        if (header && !printed_header && data && data[0]) {
            printf("%s", header);
            printed_header = 1;
        }
        print_console(data ? data : "");
        offset = (long long)nb_json_int(res, "next", 0);
        int more = nb_json_int(res, "size", 0) > offset;
        json_decref(res);
        if ((!follow && !more) || interrupted) {
            nb_logfilter_finish(&log_filter);
            fflush(stdout);
            return NB_CLI_OK;
        }
        if (!more)
            usleep(300 * 1000);
    }
}

static int do_logs(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char base[160], header[1400];
    long tail = nb_cli_opt_long(v, a, "tail", 65536, 1L << 30);
    int follow = nb_cli_flag(v, a, "follow"), qemu = nb_cli_flag(v, a, "qemu");
    if (tail < 0 || vm_path(base, sizeof base, a->pos[0], "/logs") < 0)
        return NB_CLI_USAGE;
    struct sigaction sa = {.sa_handler = on_sigint};
    interrupted = 0;
    nb_logfilter_init(&log_filter, isatty(STDOUT_FILENO), on_log_filtered, NULL);
    if (follow)
        sigaction(SIGINT, &sa, NULL);
    if (qemu)
        return print_log(cli, base, "qemu", tail, follow, NULL);
    /* Without --follow: the console, then QEMU's own stderr, marked. With
     * --follow: QEMU's stderr so far, then the console as it grows. */
    snprintf(header, sizeof header,
             "\n----- QEMU's own output (stderr: %s/vms/%s/qemu.log; only this: --qemu) -----\n",
             cli->home.home, a->pos[0]);
    int code;
    if (follow) {
        code = print_log(cli, base, "qemu", tail, 0, header + 1);
        if (code == NB_CLI_OK)
            code =
                print_log(cli, base, "console", tail, 1, "----- guest console (following) -----\n");
        return code;
    }
    code = print_log(cli, base, "console", tail, 0, NULL);
    if (code == NB_CLI_OK)
        code = print_log(cli, base, "qemu", tail, 0, header);
    fflush(stdout);
    return code;
}

static int do_snapshot(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *op = a->pos[0], *name = a->pos[1], *snap = a->npos > 2 ? a->pos[2] : NULL;
    char path[256], base[160];
    json_t *res = NULL;
    int code;
    if (vm_path(base, sizeof base, name, "/snapshots") < 0)
        return NB_CLI_USAGE;
    if (strcmp(op, "ls") != 0 && !snap) {
        fprintf(stderr, "nilbox: 'nilbox vm snapshot %s' needs VM and SNAPSHOT names\n", op);
        return NB_CLI_USAGE;
    }
    if (snap && (!snap[0] || strchr(snap, '/') || strchr(snap, '?') || strchr(snap, '%') ||
                 strlen(snap) > 64)) {
        fprintf(stderr, "nilbox: '%s' is not a valid snapshot name\n", snap);
        return NB_CLI_USAGE;
    }
    if (!strcmp(op, "ls")) {
        code = nb_cli_call(cli, "GET", base, NULL, &res);
        if (code == NB_CLI_OK && !cli->json) {
            json_t *s;
            size_t i;
            json_t *arr = json_object_get(res, "snapshots");
            if (!json_array_size(arr))
                printf("VM %s has no snapshots\n", name);
            json_array_foreach (arr, i, s)
                printf("%-32s %s\n", nb_json_str(s, "name"), nb_json_str(s, "created"));
        }
    } else if (!strcmp(op, "save")) {
        json_t *body = json_pack("{s:s}", "name", snap);
        code = nb_cli_call(cli, "POST", base, body, &res);
        json_decref(body);
        if (code == NB_CLI_OK && !cli->json)
            printf("saved snapshot %s of VM %s\n", snap, name);
    } else if (!strcmp(op, "restore")) {
        snprintf(path, sizeof path, "%s/%s/restore", base, snap);
        code = nb_cli_call(cli, "POST", path, NULL, &res);
        if (code == NB_CLI_OK && !cli->json)
            printf("restored snapshot %s of VM %s\n", snap, name);
    } else if (!strcmp(op, "rm")) {
        snprintf(path, sizeof path, "%s/%s", base, snap);
        code = nb_cli_call(cli, "DELETE", path, NULL, &res);
        if (code == NB_CLI_OK && !cli->json)
            printf("removed snapshot %s of VM %s\n", snap, name);
    } else {
        fprintf(stderr, "nilbox: unknown snapshot action '%s' (save, restore, ls or rm)\n", op);
        return NB_CLI_USAGE;
    }
    if (code == NB_CLI_OK && cli->json)
        nb_cli_print_json(res);
    json_decref(res);
    return code;
}

/* ------------------------------------------------------------ table */

static const nb_cli_opt_t create_opts[] = {
    {"image", 'i', "IMAGE", "guest image: tiny (default) or debian"},
    {"cpus", 'c', "N", "virtual CPUs (default 1)"},
    {"memory", 'm', "SIZE", "memory, e.g. 512M or 2G (default 512M)"},
    {"disk", 'd', "SIZE", "disk size, e.g. 4G (default: the image's, 1G for tiny)"},
    {"restart", 'r', "POLICY", "never (default) or on-failure"},
    {"accel", 'a', "ACCEL",
     "auto (default: KVM when it works here, else TCG), kvm or tcg; NILBOX_ACCEL sets the "
     "daemon's default"},
    {"user", 'u', "USER",
     "guest account that exec and shell run as (default: agent, the images' unprivileged "
     "user with sudo in debian; root for root)"},
    {"start", 's', NULL, "start the VM right away and wait for its agent"},
    {NULL, 0, NULL, NULL},
};
static const nb_cli_opt_t start_opts[] = {
    {"no-wait", 0, NULL, "return once QEMU runs, without waiting for the agent"},
    {NULL, 0, NULL, NULL},
};
static const nb_cli_opt_t stop_opts[] = {
    {"force", 'f', NULL, "skip the clean shutdown: QMP quit, then kill"},
    {NULL, 0, NULL, NULL},
};
static const nb_cli_opt_t rm_opts[] = {
    {"force", 'f', NULL, "stop the VM first if it runs"},
    {NULL, 0, NULL, NULL},
};
static const nb_cli_opt_t logs_opts[] = {
    {"follow", 'f', NULL, "keep printing new console output until interrupted"},
    {"tail", 't', "BYTES", "start this many bytes before the end (default 65536)"},
    {"qemu", 'q', NULL, "only QEMU's own output (its stderr, qemu.log)"},
    {NULL, 0, NULL, NULL},
};
static const nb_cli_opt_t set_opts[] = {
    {"restart", 'r', "POLICY", "restart policy: never or on-failure"},
    {"accel", 'a', "ACCEL", "accelerator from the next start: auto, kvm or tcg"},
    {"user", 'u', "USER", "guest account of exec and shell when they name none (e.g. agent, root)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"create", "create a VM (instant: a copy-on-write disk on the image)", "NAME",
     "Create a VM. NAME: a lowercase letter, then up to 31 lowercase letters, digits or '-'.\n"
     "The image must be built ('nilbox image build tiny').",
     1, 1, create_opts, do_create, NB_CLI_NEEDS_DAEMON},
    {"start", "boot a VM and wait until its agent is ready", "NAME",
     "Boot a VM and print its progress until the guest agent is ready.", 1, 1, start_opts, do_start,
     NB_CLI_NEEDS_DAEMON},
    {"stop", "shut a VM down (agent, then ACPI, then quit, then kill)", "NAME",
     "Shut a VM down: the agent powers the guest off; if it does not, ACPI powerdown, then QMP\n"
     "quit, then SIGKILL, each after a timeout.",
     1, 1, stop_opts, do_stop, NB_CLI_NEEDS_DAEMON},
    {"restart", "stop and start a VM", "NAME", NULL, 1, 1, start_opts, do_start,
     NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a VM and its disk", "NAME",
     "Remove a VM, its disk and snapshots. A running VM is refused unless --force.", 1, 1, rm_opts,
     do_rm, NB_CLI_NEEDS_DAEMON},
    {"ls", "list VMs", NULL, NULL, 0, 0, NULL, do_ls, NB_CLI_NEEDS_DAEMON},
    {"inspect", "show everything about a VM (JSON)", "NAME", NULL, 1, 1, NULL, do_inspect,
     NB_CLI_NEEDS_DAEMON},
    {"logs", "show a VM's serial console and QEMU's own output", "NAME",
     "Show the guest's serial console, then QEMU's own output (its stderr, qemu.log: why QEMU\n"
     "failed or stopped the guest), under a marked header. --qemu: only QEMU's output.\n"
     "--follow: QEMU's output so far, then the console as it grows.",
     1, 1, logs_opts, do_logs, NB_CLI_NEEDS_DAEMON},
    {"resize", "grow a stopped VM's disk", "NAME SIZE",
     "Grow the disk of a stopped VM to SIZE (e.g. 4G); disks never shrink. The guest grows its\n"
     "file system at the next boot.",
     2, 2, NULL, do_resize, NB_CLI_NEEDS_DAEMON},
    {"set", "change a VM's settings", "NAME",
     "Change a VM's restart policy (at once), accelerator (from the next start) or default\n"
     "guest user (the next exec or shell; --user on those overrides it).",
     1, 1, set_opts, do_set, NB_CLI_NEEDS_DAEMON},
    {"snapshot", "disk snapshots: save|restore|ls|rm", "save|restore|ls|rm NAME [SNAPSHOT]",
     "Disk snapshots of a VM (internal qcow2 snapshots of its disk; RAM is not saved).\n"
     "save and rm work on running VMs too (after a sync in the guest); restore needs a stopped "
     "VM.",
     2, 3, NULL, do_snapshot, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_vm = {"vm", "create, start, stop and manage VMs", verbs, NULL};
