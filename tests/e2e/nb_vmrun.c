/* nb_vmrun: boots one VM with the VM manager's building blocks (argv
 * builder, detached spawn, key file, QMP client, mux socket) and reports
 * what happens as JSON lines on stdout. Used by the e2e tests and by
 * bench/boot until the daemon's VM manager exists.
 *
 *   nb_vmrun --dir DIR --kernel K [--initrd I] [--disk D] [--machine auto|microvm|q35]
 *            [--accel auto|kvm|tcg]
 *            [--root-disk] [--cmdline ARGS] [--memory MIB] [--cpus N]
 *            [--key-file F] [--no-mux] [--wait ready|byte|mux|qmp]
 *            [--stop quit|powerdown|none|die] [--timeout SEC]
 *   nb_vmrun --dir DIR --attach [--wait mux] [--stop quit] [--timeout SEC]
 *
 * DIR holds mux.sock (we listen; QEMU connects), qmp.sock, console.log,
 * qemu.log, qemu.pid and, until QMP is up, the key file. --stop die
 * SIGKILLs this process once the wait condition is met, as a crashing
 * daemon would; --attach then finds that QEMU again by pidfile + QMP.
 * Lines: {"spawned":..}, {"qmp":"ready",..}, {"key_file_removed":true},
 * {"mux":"connected",..}, {"ready_ms":..}, {"event":..}, {"exited":..}.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "host/accel.h"
#include "daemon/vm/qemu.h"
#include "daemon/vm/qmp.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

enum { WAIT_READY, WAIT_BYTE, WAIT_MUX, WAIT_QMP };
enum { STOP_QUIT, STOP_POWERDOWN, STOP_NONE, STOP_DIE };

static struct {
    uv_loop_t *loop;
    char mux[512], qmp[512], con[512], log[512], pid[512], key[512];
    int wait, stop, attach, no_mux;
    const char *given_key;
    uint64_t t0;
    uv_pipe_t listener, conn;
    int conn_open;
    char rbuf[256];
    size_t rlen;
    int reached;
    uv_process_t proc;
    int spawned;
    int qpid;
    nb_qmp_t *q;
    uv_timer_t retry, deadline, poll;
    int exit_code;
    int done;
} g;

static double ms_since_start(void)
{
    return (double)(uv_hrtime() - g.t0) / 1e6;
}

static void finish(int code);

static void on_quit_reply(nb_qmp_t *q, int r, json_t *ret, json_t *err, void *data)
{
    printf("{\"stop_sent\": \"%s\", \"r\": %d}\n", (const char *)data, r);
    fflush(stdout);
}

static void stop_vm(void)
{
    switch (g.stop) {
    case STOP_NONE:
        finish(0);
        return;
    case STOP_DIE:
        printf("{\"dying\": true}\n");
        fflush(stdout);
        raise(SIGKILL);
        return;
    case STOP_POWERDOWN:
        if (nb_qmp_command(g.q, "system_powerdown", NULL, 0, on_quit_reply, "system_powerdown") < 0)
            finish(1);
        return;
    default:
        if (nb_qmp_command(g.q, "quit", NULL, 0, on_quit_reply, "quit") < 0)
            finish(1);
        return;
    }
}

static void condition_met(void)
{
    if (g.reached)
        return;
    g.reached = 1;
    printf("{\"ready_ms\": %.1f}\n", ms_since_start());
    fflush(stdout);
    if (g.q && nb_qmp_is_ready(g.q))
        stop_vm();
}

static void mux_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    *b = uv_buf_init(g.rbuf + g.rlen, (unsigned)(sizeof(g.rbuf) - 1 - g.rlen));
}

static void mux_closed(uv_handle_t *h)
{
    g.conn_open = 0;
}

static void mux_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    if (n < 0) {
        printf("{\"mux\": \"closed\"}\n");
        fflush(stdout);
        uv_close((uv_handle_t *)&g.conn, mux_closed);
        return;
    }
    g.rlen += (size_t)n;
    g.rbuf[g.rlen] = '\0';
    if (g.wait == WAIT_BYTE && g.rlen > 0)
        condition_met();
    if (g.wait == WAIT_READY && strstr(g.rbuf, "NILBOX-READY\n"))
        condition_met();
    if (g.rlen >= sizeof(g.rbuf) - 1)
        g.rlen = 0; /* keep looking in fresh input */
}

static void on_mux_conn(uv_stream_t *l, int status)
{
    if (status < 0 || g.conn_open)
        return;
    uv_pipe_init(g.loop, &g.conn, 0);
    g.conn_open = 1;
    if (uv_accept(l, (uv_stream_t *)&g.conn) < 0)
        return;
    printf("{\"mux\": \"connected\", \"ms\": %.1f}\n", ms_since_start());
    fflush(stdout);
    uv_read_start((uv_stream_t *)&g.conn, mux_alloc, mux_read);
    if (g.wait == WAIT_MUX)
        condition_met();
}

static void on_event(nb_qmp_t *q, const char *ev, json_t *data, void *ud)
{
    const char *reason = nb_json_str(data, "reason");
    printf("{\"event\": \"%s\", \"reason\": \"%s\", \"ms\": %.1f}\n", ev, reason ? reason : "",
           ms_since_start());
    fflush(stdout);
}

static void qmp_try_connect(uv_timer_t *t);

static void on_qmp_close(nb_qmp_t *q, int r, void *ud)
{
    if (!nb_qmp_version(q)[0] && !g.done) {
        /* Not up yet (QEMU still starting): retry shortly. */
        nb_qmp_close(q);
        g.q = NULL;
        uv_timer_start(&g.retry, qmp_try_connect, 20, 0);
        return;
    }
    printf("{\"qmp\": \"closed\", \"r\": \"%s\"}\n", nb_errname(r));
    fflush(stdout);
}

static void on_qmp_ready(nb_qmp_t *q, int r, void *ud)
{
    printf("{\"qmp\": \"ready\", \"qemu\": \"%s\", \"ms\": %.1f}\n", nb_qmp_version(q),
           ms_since_start());
    /* QEMU has read its fw_cfg files by the time QMP answers. */
    if (!g.attach && unlink(g.key) == 0)
        printf("{\"key_file_removed\": true}\n");
    fflush(stdout);
    if (g.wait == WAIT_QMP)
        condition_met();
    else if (g.reached)
        stop_vm();
}

static void qmp_try_connect(uv_timer_t *t)
{
    nb_qmp_opts_t o = {0, 5000, 5000, on_event, on_qmp_ready, on_qmp_close, NULL};
    if (nb_qmp_connect(g.loop, g.qmp, &o, &g.q) < 0)
        finish(1);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish(int code)
{
    if (g.done)
        return;
    g.done = 1;
    g.exit_code = code;
    if (g.q)
        nb_qmp_close(g.q);
    g.q = NULL;
    uv_walk(g.loop, close_walk, NULL);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    printf("{\"exited\": %lld, \"signal\": %d, \"ms\": %.1f}\n", (long long)status, sig,
           ms_since_start());
    fflush(stdout);
    finish(g.reached && status == 0 && sig == 0 ? 0 : 1);
}

static void on_poll(uv_timer_t *t)
{
    /* Attached QEMU is not our child: watch its pid. */
    if (kill(g.qpid, 0) < 0 && errno == ESRCH) {
        printf("{\"exited\": 0, \"signal\": 0, \"ms\": %.1f, \"attached\": true}\n",
               ms_since_start());
        fflush(stdout);
        finish(g.reached ? 0 : 1);
    }
}

static void on_deadline(uv_timer_t *t)
{
    printf("{\"timeout\": true, \"reached\": %d}\n", g.reached);
    fflush(stdout);
    if (g.spawned)
        uv_process_kill(&g.proc, SIGKILL);
    else if (g.qpid > 0)
        kill(g.qpid, SIGKILL);
    finish(2);
}

static void usage(void)
{
    fprintf(stderr, "usage: nb_vmrun --dir DIR (--kernel K [--initrd I] [--disk D] "
                    "[--machine auto|microvm|q35] [--accel auto|kvm|tcg] [--cmdline S] [--memory "
                    "MIB] [--cpus N] | "
                    "--attach) [--wait ready|byte|mux] [--stop quit|powerdown|none|die] "
                    "[--timeout SEC]\n");
    exit(2);
}

static unsigned num(const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || v > 1000000)
        usage();
    return (unsigned)v;
}

int main(int argc, char **argv)
{
    nb_qemu_spec_t spec = {.name = "e2e", .accel = NB_QEMU_ACCEL_AUTO};
    const char *dir = NULL;
    unsigned timeout = 60;
    if (sodium_init() < 0)
        return 1;
    g.wait = WAIT_READY;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--attach") == 0) {
            g.attach = 1;
            continue;
        }
        if (strcmp(a, "--root-disk") == 0) {
            spec.disk_is_root = 1;
            continue;
        }
        if (strcmp(a, "--no-mux") == 0) {
            g.no_mux = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (strcmp(a, "--dir") == 0)
            dir = v;
        else if (strcmp(a, "--kernel") == 0)
            spec.kernel = v;
        else if (strcmp(a, "--initrd") == 0)
            spec.initrd = v;
        else if (strcmp(a, "--disk") == 0)
            spec.disk = v;
        else if (strcmp(a, "--key-file") == 0)
            g.given_key = v;
        else if (strcmp(a, "--cmdline") == 0)
            spec.cmdline = v;
        else if (strcmp(a, "--memory") == 0)
            spec.memory_mib = num(v);
        else if (strcmp(a, "--cpus") == 0)
            spec.cpus = num(v);
        else if (strcmp(a, "--timeout") == 0)
            timeout = num(v);
        else if (strcmp(a, "--accel") == 0) {
            if (nb_accel_parse(v, &spec.accel) < 0)
                usage();
        } else if (strcmp(a, "--machine") == 0)
            spec.machine = strcmp(v, "microvm") == 0 ? NB_QEMU_MACHINE_MICROVM
                           : strcmp(v, "q35") == 0   ? NB_QEMU_MACHINE_Q35
                                                     : NB_QEMU_MACHINE_AUTO;
        else if (strcmp(a, "--wait") == 0)
            g.wait = strcmp(v, "byte") == 0  ? WAIT_BYTE
                     : strcmp(v, "mux") == 0 ? WAIT_MUX
                     : strcmp(v, "qmp") == 0 ? WAIT_QMP
                                             : WAIT_READY;
        else if (strcmp(a, "--stop") == 0)
            g.stop = strcmp(v, "powerdown") == 0 ? STOP_POWERDOWN
                     : strcmp(v, "none") == 0    ? STOP_NONE
                     : strcmp(v, "die") == 0     ? STOP_DIE
                                                 : STOP_QUIT;
        else
            usage();
    }
    if (!dir || (!g.attach && !spec.kernel))
        usage();
    mkdir(dir, 0700);
    snprintf(g.mux, sizeof(g.mux), "%s/mux.sock", dir);
    snprintf(g.qmp, sizeof(g.qmp), "%s/qmp.sock", dir);
    snprintf(g.con, sizeof(g.con), "%s/console.log", dir);
    snprintf(g.log, sizeof(g.log), "%s/qemu.log", dir);
    snprintf(g.pid, sizeof(g.pid), "%s/qemu.pid", dir);
    snprintf(g.key, sizeof(g.key), "%s/boot.key", dir);

    g.loop = uv_default_loop();
    g.t0 = uv_hrtime();
    uv_timer_init(g.loop, &g.retry);
    uv_timer_init(g.loop, &g.deadline);
    uv_timer_init(g.loop, &g.poll);
    uv_timer_start(&g.deadline, on_deadline, (uint64_t)timeout * 1000, 0);

    /* The daemon's side of the channel: listen first, QEMU connects. A
     * stale socket file from a dead predecessor is replaced. With --no-mux
     * another program (a real nbmux host) listens there. */
    if (!g.no_mux) {
        unlink(g.mux);
        uv_pipe_init(g.loop, &g.listener, 0);
        if (uv_pipe_bind(&g.listener, g.mux) < 0 ||
            uv_listen((uv_stream_t *)&g.listener, 4, on_mux_conn) < 0) {
            fprintf(stderr, "nb_vmrun: cannot listen on %s\n", g.mux);
            return 1;
        }
    }

    if (g.attach) {
        int r = nb_qemu_find_running(g.pid, g.qmp, &g.qpid);
        printf("{\"attach\": \"%s\", \"pid\": %d}\n", nb_errname(r), g.qpid);
        fflush(stdout);
        if (r < 0)
            return 1;
        uv_timer_start(&g.poll, on_poll, 50, 50);
    } else {
        uint8_t key[32];
        nb_qemu_argv_t a;
        unsigned khz = 0;
        if (nb_qemu_host_tsc_khz(&khz) == 0)
            spec.tsc_khz = khz;
        spec.mux_socket = g.mux;
        spec.qmp_socket = g.qmp;
        spec.console_log = g.con;
        spec.pidfile = g.pid;
        spec.key_file = g.key;
        if (g.given_key) {
            snprintf(g.key, sizeof(g.key), "%s", g.given_key);
        } else {
            randombytes_buf(key, sizeof(key));
            unlink(g.key);
            if (nb_qemu_write_key_file(g.key, key, sizeof(key)) < 0)
                return 1;
            sodium_memzero(key, sizeof(key));
        }
        /* auto as the daemon does it: KVM only where the probe boots under
         * it (cached in $NB_E2E_CACHE, else DIR), so the boot tests pass on
         * hosts with working, broken or no KVM. */
        if (spec.accel == NB_QEMU_ACCEL_AUTO) {
            const char *home = getenv("NB_E2E_CACHE");
            nb_kvm_probe_opts_t po = {.home = home && home[0] ? home : dir,
                                      .qemu = spec.qemu,
                                      .kernel = spec.kernel,
                                      .initrd = spec.initrd};
            nb_kvm_status_t ks;
            if (nb_kvm_status(&po, &ks) < 0)
                return 1;
            spec.accel = ks.state == NB_KVM_OK || ks.state == NB_KVM_UNPROBED ? NB_QEMU_ACCEL_KVM
                                                                              : NB_QEMU_ACCEL_TCG;
            fprintf(stderr, "nb_vmrun: accel %s (%s)\n",
                    spec.accel == NB_QEMU_ACCEL_KVM ? "kvm" : "tcg", ks.detail);
        }
        spec.kvm_cpu = nb_kvm_cpu_model();
        if (nb_qemu_build_argv(&spec, &a) < 0)
            return 1;
        g.t0 = uv_hrtime();
        int r = nb_qemu_spawn(g.loop, &a, g.log, &g.proc, on_exit_cb);
        printf("{\"spawned\": %s, \"pid\": %d, \"accel\": \"%s\", \"machine\": \"%s\", "
               "\"tsc_khz\": %u}\n",
               r == 0 ? "true" : "false", r == 0 ? g.proc.pid : 0,
               a.accel == NB_QEMU_ACCEL_KVM ? "kvm" : "tcg",
               a.machine == NB_QEMU_MACHINE_MICROVM ? "microvm" : "q35", spec.tsc_khz);
        fflush(stdout);
        nb_qemu_argv_free(&a);
        if (r < 0)
            return 1;
        g.spawned = 1;
    }
    uv_timer_start(&g.retry, qmp_try_connect, g.attach ? 0 : 20, 0);
    uv_run(g.loop, UV_RUN_DEFAULT);
    uv_loop_close(g.loop);
    return g.exit_code;
}
