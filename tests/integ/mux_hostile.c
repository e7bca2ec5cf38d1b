/* mux_hostile: a misbehaving nbmux peer for the A17/A18 tests.
 *
 *   mux_hostile (--connect PATH | --listen PATH) --role host|guest
 *               --key-file F --scenario NAME [--timeout-ms T]
 *
 * It plays one scenario against an honest peer, then prints one JSON line
 * with what it saw: {"scenario", "closed" (the peer hung up), "frames"
 * (count per type received), "goaway_code", "goaway_msg", "auth_received",
 * "sent", "received"}. Blocking sockets with poll; no libuv, so nothing of
 * the session layer under test is reused except the codec. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/mux.h"
#include "lib/transport.h"

static int fd = -1;
static int role; /* our role */
static uint8_t key[32];
static nb_mux_dec_t dec;
static unsigned counts[NB_MUX_TYPE_MAX + 1];
static int closed, auth_received;
static char goaway_code[32] = "", goaway_msg[400] = "";
static uint64_t sent, received;
static uint8_t hello_peer[NB_MUX_HELLO_LEN], hello_mine[NB_MUX_HELLO_LEN];
static int have_peer_hello;
static uint32_t last_open_ok, last_window_sid;
static int timeout_ms = 5000;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void on_frame(const nb_mux_ev_t *ev)
{
    if (!ev->last)
        return;
    const nb_mux_hdr_t *h = &ev->hdr;
    counts[h->type]++;
    if (h->type == NB_MUX_HELLO && !have_peer_hello) {
        memcpy(hello_peer, ev->payload.p, NB_MUX_HELLO_LEN);
        have_peer_hello = 1;
    } else if (h->type == NB_MUX_AUTH) {
        auth_received = 1;
    } else if (h->type == NB_MUX_GOAWAY) {
        uint32_t code;
        nb_iov_t m;
        nb_mux_parse_code(ev->payload, &code, &m);
        snprintf(goaway_code, sizeof goaway_code, "%s", nb_mux_code_name(code));
        /* JSON-safe: only printable ASCII other than quote and backslash. */
        size_t o = 0;
        for (size_t i = 0; i < m.len && o + 1 < sizeof goaway_msg; i++) {
            uint8_t ch = m.p[i];
            goaway_msg[o++] = (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') ? (char)ch : '?';
        }
        goaway_msg[o] = 0;
    } else if (h->type == NB_MUX_OPEN_OK) {
        last_open_ok = h->sid;
    } else if (h->type == NB_MUX_WINDOW) {
        last_window_sid = h->sid;
    }
}

/* Reads what is available (waiting up to wait_ms for the first byte). */
static void pump_read(int wait_ms)
{
    uint8_t buf[65536];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (!closed && poll(&p, 1, wait_ms) > 0) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            closed = 1;
            return;
        }
        received += (uint64_t)n;
        nb_iov_t in = nb_iov(buf, (size_t)n);
        nb_mux_ev_t ev;
        int r;
        while ((r = nb_mux_dec_next(&dec, &in, &ev)) == 1)
            on_frame(&ev);
        wait_ms = 0;
    }
}

/* Writes everything, reading meanwhile so that neither side deadlocks.
 * Returns -1 once the peer is gone. */
static int send_all(const void *p, size_t n)
{
    const uint8_t *c = p;
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    while (n && !closed) {
        struct pollfd pf = {.fd = fd, .events = POLLIN | POLLOUT};
        if (poll(&pf, 1, 100) < 0)
            continue;
        if (pf.revents & (POLLIN | POLLHUP | POLLERR))
            pump_read(0);
        if (pf.revents & POLLOUT) {
            ssize_t w = write(fd, c, n);
            if (w < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (w < 0) {
                closed = 1;
                break;
            }
            c += w;
            n -= (size_t)w;
            sent += (uint64_t)w;
        }
        if (now_ms() > end)
            return -2; /* the peer stopped reading */
    }
    return n ? -1 : 0;
}

static int frame(uint8_t type, uint8_t flags, uint32_t sid, const void *p, size_t n)
{
    nb_buf_t b;
    nb_buf_init(&b, SIZE_MAX);
    uint8_t h[NB_MUX_HDR_LEN];
    nb_mux_put_hdr(h, type, flags, sid, (uint32_t)n);
    nb_buf_append(&b, h, sizeof h);
    nb_buf_append(&b, p, n);
    int r = send_all(b.p, b.len);
    nb_buf_free(&b);
    return r;
}

static int wait_for(unsigned type, unsigned count, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (counts[type] < count && !closed && now_ms() < end)
        pump_read(50);
    return counts[type] >= count;
}

static void wait_closed(int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (!closed && now_ms() < end)
        pump_read(50);
}

/* Full, honest handshake with `k`. */
static int handshake(const uint8_t *k)
{
    uint8_t nonce[32], mac[32];
    randombytes_buf(nonce, sizeof nonce);
    nb_mux_put_hello(hello_mine, (uint8_t)role, 0, nonce);
    if (role == NB_MUX_ROLE_HOST) {
        frame(NB_MUX_HELLO, 0, 0, hello_mine, sizeof hello_mine);
        if (!wait_for(NB_MUX_HELLO, 1, timeout_ms) || !wait_for(NB_MUX_AUTH, 1, timeout_ms))
            return -1;
        nb_mux_auth_mac(mac, k, NB_MUX_ROLE_HOST, hello_mine, hello_peer);
        frame(NB_MUX_AUTH, 0, 0, mac, sizeof mac);
    } else {
        if (!wait_for(NB_MUX_HELLO, 1, timeout_ms))
            return -1;
        nb_mux_auth_mac(mac, k, NB_MUX_ROLE_GUEST, hello_peer, hello_mine);
        frame(NB_MUX_HELLO, 0, 0, hello_mine, sizeof hello_mine);
        frame(NB_MUX_AUTH, 0, 0, mac, sizeof mac);
        if (!wait_for(NB_MUX_AUTH, 1, timeout_ms))
            return -1;
    }
    return 0;
}

static int open_stream(uint32_t sid, const char *svc, const char *args)
{
    nb_buf_t b;
    nb_buf_init(&b, SIZE_MAX);
    nb_mux_enc_open(&b, sid, svc, nb_iov(args, strlen(args)));
    int r = send_all(b.p, b.len);
    nb_buf_free(&b);
    return r;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8),
    p[3] = (uint8_t)v;
}

static int run(const char *sc)
{
    uint8_t buf[65536];
    uint32_t my_first = role == NB_MUX_ROLE_HOST ? 1 : 2;
    if (!strcmp(sc, "garbage")) {
        /* Something that is not nbmux at all, as a confused client would send. */
        const char *g = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        send_all(g, strlen(g));
        randombytes_buf(buf, 4096);
        send_all(buf, 4096);
        wait_closed(timeout_ms);
        return 0;
    }
    if (!strcmp(sc, "silent")) { /* connect and say nothing */
        wait_closed(timeout_ms);
        return 0;
    }
    if (!strcmp(sc, "wrong-key")) {
        uint8_t bad[32];
        memcpy(bad, key, 32);
        bad[5] ^= 0x40;
        handshake(bad);
        wait_closed(timeout_ms);
        return 0;
    }
    if (!strcmp(sc, "reflect")) {
        /* Send the peer's own HELLO back (or a HELLO claiming its role). */
        if (role == NB_MUX_ROLE_GUEST) {
            wait_for(NB_MUX_HELLO, 1, timeout_ms);
            frame(NB_MUX_HELLO, 0, 0, hello_peer, sizeof hello_peer);
        } else {
            uint8_t nonce[32] = {0};
            nb_mux_put_hello(hello_mine, NB_MUX_ROLE_GUEST, 0, nonce);
            frame(NB_MUX_HELLO, 0, 0, hello_mine, sizeof hello_mine);
        }
        wait_closed(timeout_ms);
        return 0;
    }
    if (!strcmp(sc, "open-before-auth")) {
        if (role == NB_MUX_ROLE_GUEST)
            wait_for(NB_MUX_HELLO, 1, timeout_ms);
        open_stream(my_first, "exec", "{\"argv\":[\"id\"]}");
        wait_closed(timeout_ms);
        return 0;
    }
    if (!strcmp(sc, "legit")) { /* an honest session: PING, PONG, goodbye */
        if (handshake(key) < 0)
            return 1;
        frame(NB_MUX_PING, 0, 0, "hostile!", 8);
        int ok = wait_for(NB_MUX_PONG, 1, timeout_ms);
        uint8_t g[4] = {0};
        frame(NB_MUX_GOAWAY, 0, 0, g, 4);
        wait_closed(timeout_ms);
        return ok ? 0 : 1;
    }

    /* Everything below happens after a successful handshake. */
    if (handshake(key) < 0) {
        fprintf(stderr, "mux_hostile: handshake failed\n");
        return 1;
    }
    if (!strcmp(sc, "oversized")) {
        uint8_t h[NB_MUX_HDR_LEN];
        nb_mux_put_hdr(h, NB_MUX_DATA, 0, my_first, 0x7fffffff);
        send_all(h, sizeof h);
        send_all(buf, 1024); /* the start of a "payload" that never ends */
    } else if (!strcmp(sc, "unknown-type")) {
        frame(0x42, 0, 0, "boo", 3);
    } else if (!strcmp(sc, "reuse")) {
        open_stream(my_first, "nosuch", "{}");
        wait_for(NB_MUX_OPEN_ERR, 1, timeout_ms);
        open_stream(my_first, "nosuch", "{}");
    } else if (!strcmp(sc, "wrong-parity")) {
        open_stream(my_first + 1, "nosuch", "{}");
    } else if (!strcmp(sc, "unopened")) {
        frame(NB_MUX_DATA, 0, my_first + 100, "x", 1);
    } else if (!strcmp(sc, "flood")) {
        /* 100k OPENs as fast as the socket takes them. */
        nb_buf_t b;
        nb_buf_init(&b, SIZE_MAX);
        uint32_t sid = my_first;
        for (int i = 0; i < 100000 && !closed; i++, sid += 2) {
            nb_mux_enc_open(&b, sid, "nosuch", NB_IOV_STR("{}"));
            if (b.len > 60000 || i == 99999) {
                if (send_all(b.p, b.len) < 0)
                    break;
                nb_buf_reset(&b);
            }
        }
        nb_buf_free(&b);
    } else if (!strcmp(sc, "credit")) {
        /* The host opens a stream whose reader never reads stdin, then
         * sends far more than the initial window without waiting. */
        open_stream(my_first, "exec", "{\"argv\":[\"sleep\",\"31.4159\"]}");
        if (!wait_for(NB_MUX_OPEN_OK, 1, timeout_ms))
            return 1;
        memset(buf, 'A', sizeof buf);
        for (int i = 0; i < 32 && !closed; i++)
            if (frame(NB_MUX_DATA, 0, my_first, buf, sizeof buf) < 0)
                break;
    } else if (!strcmp(sc, "window-overflow")) {
        open_stream(my_first, "exec", "{\"argv\":[\"sleep\",\"31.4159\"]}");
        if (!wait_for(NB_MUX_OPEN_OK, 1, timeout_ms))
            return 1;
        uint8_t inc[4];
        put_u32(inc, 0x7fffffff);
        frame(NB_MUX_WINDOW, 0, my_first, inc, 4);
        frame(NB_MUX_WINDOW, 0, my_first, inc, 4);
    } else if (!strcmp(sc, "never-read-stream")) {
        /* A stream whose output we never acknowledge: the peer must stop at
         * one window and keep its memory bounded. We keep reading the
         * transport (and answer PINGs) so only the stream is starved. */
        open_stream(my_first, "exec",
                    "{\"argv\":[\"cat\",\"/dev/zero\",\"/dev/null\"],\"stdin\":false}");
        uint64_t end = now_ms() + (uint64_t)timeout_ms;
        while (!closed && now_ms() < end)
            pump_read(100);
        printf("{\"note\":\"never-read-stream: %llu bytes received\"}\n",
               (unsigned long long)received);
        uint8_t g[4] = {0};
        frame(NB_MUX_GOAWAY, 0, 0, g, 4);
    } else if (!strcmp(sc, "never-read-transport")) {
        /* Grant huge credit, then stop reading the socket altogether. */
        open_stream(my_first, "exec",
                    "{\"argv\":[\"cat\",\"/dev/zero\",\"/dev/null\"],\"stdin\":false}");
        wait_for(NB_MUX_OPEN_OK, 1, timeout_ms);
        uint8_t inc[4];
        put_u32(inc, (1u << 30) - NB_MUX_INITIAL_WINDOW);
        frame(NB_MUX_WINDOW, 0, my_first, inc, 4);
        sleep((unsigned)(timeout_ms / 1000)); /* the peer's idle timeout must fire */
    } else if (!strcmp(sc, "ping-flood")) {
        /* PINGs without ever reading the PONGs. */
        uint8_t f[NB_MUX_HDR_LEN + 8];
        nb_mux_put_hdr(f, NB_MUX_PING, 0, 0, 8);
        memcpy(f + NB_MUX_HDR_LEN, "12345678", 8);
        uint64_t end = now_ms() + (uint64_t)timeout_ms;
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        while (now_ms() < end) {
            ssize_t w = write(fd, f, sizeof f);
            if (w < 0 && errno == EAGAIN) {
                usleep(1000);
                continue;
            }
            if (w <= 0)
                break;
            sent += (uint64_t)w;
        }
    } else {
        fprintf(stderr, "mux_hostile: unknown scenario %s\n", sc);
        return 2;
    }
    wait_closed(timeout_ms);
    return 0;
}

int main(int argc, char **argv)
{
    const char *conn = NULL, *lis = NULL, *keyfile = NULL, *scenario = NULL;
    signal(SIGPIPE, SIG_IGN);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--connect"))
            conn = argv[i + 1];
        else if (!strcmp(argv[i], "--listen"))
            lis = argv[i + 1];
        else if (!strcmp(argv[i], "--key-file"))
            keyfile = argv[i + 1];
        else if (!strcmp(argv[i], "--scenario"))
            scenario = argv[i + 1];
        else if (!strcmp(argv[i], "--timeout-ms"))
            timeout_ms = (int)strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--role"))
            role = !strcmp(argv[i + 1], "host") ? NB_MUX_ROLE_HOST : NB_MUX_ROLE_GUEST;
    }
    if ((!conn == !lis) || !keyfile || !scenario || !role) {
        fprintf(stderr, "usage: mux_hostile --connect PATH|--listen PATH --role host|guest "
                        "--key-file F --scenario NAME [--timeout-ms T]\n");
        return 2;
    }
    if (sodium_init() < 0)
        return 1;
    int kfd = open(keyfile, O_RDONLY);
    if (kfd < 0 || read(kfd, key, 32) != 32)
        return 2;
    close(kfd);
    nb_mux_dec_init(&dec);
    if (conn) {
        nb_transport_t t;
        if (nb_transport_parse(conn, &t, NULL) < 0 || (fd = nb_transport_connect(&t)) < 0) {
            fprintf(stderr, "mux_hostile: cannot connect to %s\n", conn);
            return 2;
        }
    } else {
        int l = nb_transport_listen_unix(lis, 1);
        if (l < 0) {
            fprintf(stderr, "mux_hostile: cannot listen on %s\n", lis);
            return 2;
        }
        struct pollfd p = {.fd = l, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0 || (fd = nb_transport_accept(l)) < 0) {
            fprintf(stderr, "mux_hostile: nobody connected\n");
            return 2;
        }
        close(l);
        unlink(lis);
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    int rc = run(scenario);
    printf("{\"scenario\":\"%s\",\"closed\":%s,\"auth_received\":%s,\"goaway_code\":\"%s\","
           "\"goaway_msg\":\"%s\",\"sent\":%llu,\"received\":%llu,\"frames\":{",
           scenario, closed ? "true" : "false", auth_received ? "true" : "false", goaway_code,
           goaway_msg, (unsigned long long)sent, (unsigned long long)received);
    int first = 1;
    for (unsigned t = 1; t <= NB_MUX_TYPE_MAX; t++)
        if (counts[t]) {
            printf("%s\"%s\":%u", first ? "" : ",", nb_mux_type_name(t), counts[t]);
            first = 0;
        }
    printf("}}\n");
    nb_mux_dec_free(&dec);
    close(fd);
    return rc;
}
