/* nilbox-agent: the guest end of the nbmux channel (docs/protocol.md).
 *
 * Opens the transport (virtio-serial port by default), authenticates with
 * the per-boot key, serves exec / pty / tcp / ctl streams, and reopens the
 * transport with a short backoff whenever the host side goes away. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/transport.h"

#define DEFAULT_TRANSPORT "serial:/dev/vport0p1"
#define DEFAULT_KEY "/sys/firmware/qemu_fw_cfg/by_name/opt/nilbox/key/raw"
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
/* --hold-until: how often the file is looked for while streams wait, and
 * how long they wait at most (a broken init must not hang every exec). */
#define HOLD_POLL_MS 20
#define HOLD_MAX_MS 120000

static const char *const vm_allow[] = {
    "/etc/nilbox/",     "/etc/profile.d/nilbox-env.sh",
    "/etc/environment", "/usr/local/share/ca-certificates/nilbox/",
    "/run/nilbox/",
};

static const char usage[] =
    "usage: nilbox-agent [options]\n"
    "  --transport SPEC     unix:PATH | serial:DEVICE | vsock:CID:PORT\n"
    "                       (default " DEFAULT_TRANSPORT ")\n"
    "  --key-file FILE      per-boot key: 32 raw bytes or 64 hex digits\n"
    "                       (default: QEMU fw_cfg " DEFAULT_KEY ")\n"
    "  --vm                 running inside a nilbox VM: allow poweroff, hostname\n"
    "                       changes and the default write_file prefixes\n"
    "  --ctl-allow PREFIX   allow ctl write_file below PREFIX (dir/ or exact file)\n"
    "  --egress-proxy IP:PORT  explicit egress proxy listener (--vm: 127.0.0.1:8088)\n"
    "  --egress-transparent PORT  listener for nftables-redirected TCP on 127.0.0.1\n"
    "                       (--vm: 8089)\n"
    "  --dns IP:PORT        resolver for the guest, UDP and TCP (--vm: 127.0.0.53:53)\n"
    "  --no-egress          none of the three (also with --vm)\n"
    "  --hold-until FILE    exec and pty streams wait until FILE exists (the image's\n"
    "                       init creates it once the data disk and the egress capture\n"
    "                       are set up; at most 120 s); ctl and tcp never wait\n"
    "  --handshake-timeout MS, --ping-interval MS, --idle-timeout MS\n"
    "  --help\n";

/* An exec or pty stream that arrived before the system setup finished: its
 * OPEN stays pending (the host cannot send on it yet) with a copy of its
 * arguments, and is served once --hold-until's file exists. */
typedef struct held {
    struct held *next;
    nb_muxsess_stream_t *st;
    int pty;
    size_t len;
    uint8_t args[];
} held_t;

typedef struct {
    nb_agent_t a;
    nb_transport_t t;
    uv_timer_t retry;
    uv_signal_t sigterm, sigint;
    uint64_t backoff;
    int fails;
    /* Boot gate (--hold-until). */
    const char *hold_file;
    int hold_done;
    uint64_t hold_start;
    held_t *held, **held_tail;
    uv_timer_t hold_timer;
} agent_main_t;

static agent_main_t M;

static int load_key(const char *path, uint8_t key[NB_MUX_KEY_LEN])
{
    uint8_t buf[132];
    size_t n = 0;
    int r = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while (n < sizeof buf) {
        ssize_t k = read(fd, buf + n, sizeof buf - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = -errno;
            break;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    if (r == 0) {
        size_t bin = 0;
        if (n == NB_MUX_KEY_LEN)
            memcpy(key, buf, NB_MUX_KEY_LEN);
        else if ((n == 64 || (n == 65 && buf[64] == '\n')) &&
                 sodium_hex2bin(key, NB_MUX_KEY_LEN, (const char *)buf, 64, NULL, &bin, NULL) ==
                     0 &&
                 bin == NB_MUX_KEY_LEN)
            ;
        else
            r = NB_EINVAL;
    }
    sodium_memzero(buf, sizeof buf);
    return r;
}

static void connect_now(void);

static void on_retry(uv_timer_t *t)
{
    connect_now();
}

static void schedule_retry(void)
{
    if (M.a.stopping)
        return;
    uv_timer_start(&M.retry, on_retry, M.backoff, 0);
    M.backoff = M.backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : M.backoff * 2;
}

static void connect_now(void)
{
    if (M.a.stopping)
        return;
    int fd = nb_transport_connect(&M.t);
    if (fd < 0) {
        if (M.fails++ == 0)
            nb_log(NB_LOG_INFO, "cannot open the transport: %s (retrying)", nb_strerror(fd));
        schedule_retry();
        return;
    }
    int r = nb_muxsess_attach_fd(M.a.sess, fd);
    if (r < 0) {
        nb_log(NB_LOG_WARN, "cannot start a session: %s", nb_strerror(r));
        schedule_retry();
    }
}

static void on_up(nb_muxsess_t *s, void *ud)
{
    M.backoff = BACKOFF_MIN_MS;
    M.fails = 0;
}

static void on_down(nb_muxsess_t *s, int err, const char *reason, void *ud)
{
    /* The session already logged the reason; come back soon. */
    schedule_retry();
}

/* ---- boot gate: the agent comes up (and the host sees it ready) while the
 * image's init still mounts the data disk and loads the egress capture; the
 * commands the host runs must not see a half set-up system (a file written
 * to /data before the mount would vanish under it). */

static int hold_open(void)
{
    if (!M.hold_file || M.hold_done)
        return 1;
    uint64_t waited = uv_now(M.a.loop) - M.hold_start;
    if (access(M.hold_file, F_OK) == 0) {
        M.hold_done = 1;
        nb_log(NB_LOG_INFO, "system setup done (%s) after %llu ms", M.hold_file,
               (unsigned long long)waited);
    } else if (waited >= HOLD_MAX_MS) {
        M.hold_done = 1;
        nb_log(NB_LOG_WARN, "%s still missing after %d s: serving commands anyway", M.hold_file,
               HOLD_MAX_MS / 1000);
    }
    return M.hold_done;
}

static void held_unlink(held_t *h)
{
    held_t **pp = &M.held;
    while (*pp && *pp != h)
        pp = &(*pp)->next;
    if (!*pp)
        return;
    *pp = h->next;
    if (M.held_tail == &h->next)
        M.held_tail = pp;
}

/* The host reset a waiting stream, or the session ended. */
static void held_closed(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    held_t *h = ud;
    held_unlink(h);
    free(h);
}

static const nb_muxsess_stream_cbs_t held_cbs = {.on_close = held_closed};

static void on_hold_timer(uv_timer_t *t)
{
    if (!hold_open())
        return;
    uv_timer_stop(&M.hold_timer);
    /* In arrival order. Each open sets the stream's own callbacks. */
    while (M.held) {
        held_t *h = M.held;
        held_unlink(h);
        nb_iov_t args = {h->args, h->len};
        int r =
            h->pty ? nb_agent_pty_open(&M.a, h->st, args) : nb_agent_exec_open(&M.a, h->st, args);
        if (r < 0)
            nb_muxsess_stream_reject(h->st, NB_MUX_E_FAILED, nb_strerror(r));
        free(h);
    }
}

static int hold_stream(nb_muxsess_stream_t *st, int pty, nb_iov_t args)
{
    held_t *h = malloc(sizeof *h + args.len);
    if (!h)
        return -ENOMEM;
    h->next = NULL;
    h->st = st;
    h->pty = pty;
    h->len = args.len;
    if (args.len)
        memcpy(h->args, args.p, args.len);
    if (!M.held)
        M.held_tail = &M.held;
    *M.held_tail = h;
    M.held_tail = &h->next;
    nb_muxsess_stream_set_cbs(st, &held_cbs, h);
    if (!uv_is_active((uv_handle_t *)&M.hold_timer)) {
        nb_log(NB_LOG_INFO, "%s waits for the system setup (%s)", pty ? "pty" : "exec",
               M.hold_file);
        uv_timer_start(&M.hold_timer, on_hold_timer, HOLD_POLL_MS, HOLD_POLL_MS);
    }
    return 0;
}

static int on_open(nb_muxsess_t *s, nb_muxsess_stream_t *st, const char *service, nb_iov_t args,
                   void *ud)
{
    nb_agent_t *a = ud;
    if (!strcmp(service, "exec"))
        return hold_open() ? nb_agent_exec_open(a, st, args) : hold_stream(st, 0, args);
    if (!strcmp(service, "pty"))
        return hold_open() ? nb_agent_pty_open(a, st, args) : hold_stream(st, 1, args);
    if (!strcmp(service, "tcp"))
        return nb_agent_tcp_open(a, st, args);
    if (!strcmp(service, "ctl"))
        return nb_agent_ctl_open(a, st, args);
    if (!strcmp(service, "fs"))
        return nb_agent_fs_open(a, st, args);
    return NB_ENOTFOUND;
}

static void on_signal(uv_signal_t *h, int sig)
{
    if (M.a.stopping)
        return;
    nb_log(NB_LOG_INFO, "signal %d: shutting down", sig);
    M.a.stopping = 1;
    nb_agent_egress_stop();
    nb_agent_dns_stop();
    nb_muxsess_free(M.a.sess); /* every stream closes: children are killed */
    M.a.sess = NULL;
    uv_close((uv_handle_t *)&M.retry, NULL);
    uv_close((uv_handle_t *)&M.hold_timer, NULL);
    uv_close((uv_handle_t *)&M.sigterm, NULL);
    uv_close((uv_handle_t *)&M.sigint, NULL);
}

/* "IP:PORT" (IPv4) into ip (size >= 16) and *port. */
static int parse_ipport(const char *s, char *ip, size_t ipsz, int *port)
{
    const char *c = strrchr(s, ':');
    char *end;
    if (!c || (size_t)(c - s) >= ipsz)
        return -1;
    memcpy(ip, s, (size_t)(c - s));
    ip[c - s] = '\0';
    errno = 0;
    long v = strtol(c + 1, &end, 10);
    if (errno || *end || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    struct sockaddr_in sa;
    return uv_ip4_addr(ip, *port, &sa) == 0 ? 0 : -1;
}

static int parse_ms(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v == 0 || v > 3600000)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    const char *spec = DEFAULT_TRANSPORT, *keyfile = DEFAULT_KEY, *why = NULL;
    char px_ip[16] = "", dns_ip[16] = "";
    int px_port = -1, tp_port = -1, dns_port = -1, no_egress = 0;
    uint8_t key[NB_MUX_KEY_LEN];
    nb_muxsess_opts_t o;
    uv_loop_t loop;
    int r;

    /* The SSH gateway's `sftp` subsystem runs this through `exec`. */
    if (argc == 2 && !strcmp(argv[1], "sftp-server"))
        return nb_agent_sftp_main(0, 1);
    signal(SIGPIPE, SIG_IGN);
    nb_log_set_tag("nilbox-agent");
    nb_muxsess_opts_default(&o, NB_MUX_ROLE_GUEST);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(arg, "--vm")) {
            M.a.vm = 1;
            continue;
        } else if (!strcmp(arg, "--no-egress")) {
            no_egress = 1;
            continue;
        } else if (!val) {
            ok = 0;
        } else if (!strcmp(arg, "--transport")) {
            spec = val;
        } else if (!strcmp(arg, "--key-file")) {
            keyfile = val;
        } else if (!strcmp(arg, "--ctl-allow")) {
            if (val[0] != '/' || M.a.nallow >= NB_AGENT_MAX_ALLOW)
                ok = 0;
            else
                M.a.allow[M.a.nallow++] = val;
        } else if (!strcmp(arg, "--egress-proxy")) {
            ok = parse_ipport(val, px_ip, sizeof px_ip, &px_port) == 0;
        } else if (!strcmp(arg, "--egress-transparent")) {
            char *end;
            long v = strtol(val, &end, 10);
            ok = !*end && v >= 1 && v <= 65535;
            tp_port = (int)v;
        } else if (!strcmp(arg, "--hold-until")) {
            ok = val[0] == '/';
            M.hold_file = val;
        } else if (!strcmp(arg, "--dns")) {
            ok = parse_ipport(val, dns_ip, sizeof dns_ip, &dns_port) == 0;
        } else if (!strcmp(arg, "--handshake-timeout")) {
            ok = parse_ms(val, &o.handshake_ms) == 0;
        } else if (!strcmp(arg, "--ping-interval")) {
            ok = parse_ms(val, &o.ping_ms) == 0;
        } else if (!strcmp(arg, "--idle-timeout")) {
            ok = parse_ms(val, &o.idle_ms) == 0;
        } else {
            ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "nilbox-agent: bad option %s\n%s", arg, usage);
            return 2;
        }
        i++;
    }
    if (o.ping_ms * 2 > o.idle_ms)
        o.ping_ms = o.idle_ms / 3 ? o.idle_ms / 3 : 1; /* keep a quiet host from timing out */
    if (M.a.vm)
        for (size_t i = 0; i < sizeof vm_allow / sizeof *vm_allow; i++)
            if (M.a.nallow < NB_AGENT_MAX_ALLOW)
                M.a.allow[M.a.nallow++] = vm_allow[i];
    if (nb_transport_parse(spec, &M.t, &why) < 0) {
        fprintf(stderr, "nilbox-agent: --transport %s: %s\n", spec, why);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "nilbox-agent: libsodium failed to initialise\n");
        return 1;
    }
    if ((r = load_key(keyfile, key)) < 0) {
        fprintf(stderr, "nilbox-agent: cannot read the key from %s: %s\n", keyfile,
                r == NB_EINVAL ? "expected 32 raw bytes or 64 hex digits" : nb_strerror(r));
        return 1;
    }

    uv_loop_init(&loop);
    M.a.loop = &loop;
    M.backoff = BACKOFF_MIN_MS;
    o.on_up = on_up;
    o.on_down = on_down;
    o.on_open = on_open;
    o.ud = &M.a;
    r = nb_muxsess_new(&loop, &o, key, &M.a.sess);
    sodium_memzero(key, sizeof key);
    if (r < 0) {
        fprintf(stderr, "nilbox-agent: %s\n", nb_strerror(r));
        return 1;
    }
    uv_timer_init(&loop, &M.retry);
    uv_timer_init(&loop, &M.hold_timer);
    M.hold_start = uv_now(&loop);
    M.a.setup_done_file = M.hold_file;
    uv_signal_init(&loop, &M.sigterm);
    uv_signal_init(&loop, &M.sigint);
    uv_signal_start(&M.sigterm, on_signal, SIGTERM);
    uv_signal_start(&M.sigint, on_signal, SIGINT);
    signal(SIGHUP, SIG_IGN);

    nb_log(NB_LOG_INFO, "nilbox-agent 0.1.0 on %s", spec);
    /* Inside a VM the guest's egress and resolver default on (the image's
     * nftables rules and resolv.conf point at them). A listener that
     * cannot bind is logged; the agent still serves the host. */
    if (M.a.vm && !no_egress) {
        if (px_port < 0) {
            snprintf(px_ip, sizeof px_ip, "127.0.0.1");
            px_port = 8088;
        }
        if (tp_port < 0)
            tp_port = 8089;
        if (dns_port < 0) {
            snprintf(dns_ip, sizeof dns_ip, "127.0.0.53");
            dns_port = 53;
        }
    }
    if (!no_egress && (px_port > 0 || tp_port > 0))
        nb_agent_egress_start(&M.a, px_ip[0] ? px_ip : "127.0.0.1", px_port > 0 ? px_port : 0,
                              tp_port > 0 ? tp_port : 0);
    if (!no_egress && dns_port > 0)
        nb_agent_dns_start(&M.a, dns_ip, dns_port);
    connect_now();
    uv_run(&loop, UV_RUN_DEFAULT);

    /* Everything closed itself; anything left is a bug, but do not hang. */
    if (M.a.live)
        nb_log(NB_LOG_WARN, "%u service objects still alive at exit", M.a.live);
    r = uv_loop_close(&loop);
    nb_log(NB_LOG_INFO, "stopped");
    return r == 0 && M.a.live == 0 ? 0 : 1;
}
