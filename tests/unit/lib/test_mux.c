/* Unit tests for src/lib/mux.c: the nbmux codec. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/mux.h"
#include "lib/transport.h"
#include "nbtest.h"

/* Decodes all of `in`, feeding `step` bytes at a time; records frames
 * (DATA pieces merged) into a compact log string like "OPEN:1:12 DATA:1:5". */
static int decode_all(const uint8_t *p, size_t n, size_t step, char *log, size_t logsz,
                      nb_buf_t *data)
{
    nb_mux_dec_t d;
    nb_mux_dec_init(&d);
    size_t o = 0;
    int r = 0;
    log[0] = 0;
    while (o < n) {
        size_t k = n - o < step ? n - o : step;
        nb_iov_t in = nb_iov(p + o, k);
        o += k;
        nb_mux_ev_t ev;
        while ((r = nb_mux_dec_next(&d, &in, &ev)) == 1) {
            if (ev.hdr.type == NB_MUX_DATA && data)
                nb_buf_append(data, ev.payload.p, ev.payload.len);
            if (ev.last) {
                size_t l = strlen(log);
                snprintf(log + l, logsz - l, "%s%s:%u:%u", l ? " " : "",
                         nb_mux_type_name(ev.hdr.type), ev.hdr.sid, ev.hdr.len);
            }
        }
        if (r < 0)
            break;
    }
    nb_mux_dec_free(&d);
    return r;
}

static void test_roundtrip(void)
{
    nb_buf_t b, data;
    nb_buf_init(&b, 1 << 20);
    nb_buf_init(&data, 1 << 20);
    uint8_t nonce[32] = {1, 2, 3}, hello[NB_MUX_HELLO_LEN];
    nb_mux_put_hello(hello, NB_MUX_ROLE_HOST, 0, nonce);
    NB_CHECK_EQ_INT(nb_mux_enc_frame(&b, NB_MUX_HELLO, 0, 0, hello, sizeof hello), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_open(&b, 1, "exec", NB_IOV_STR("{\"argv\":[\"ls\"]}")), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_frame(&b, NB_MUX_OPEN_OK, 0, 1, NULL, 0), 0);
    uint8_t big[70000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    NB_CHECK_EQ_INT(nb_mux_enc_frame(&b, NB_MUX_DATA, 0, 1, big, 65536), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_frame(&b, NB_MUX_DATA, NB_MUX_CHAN_CTL, 1, "{\"exit\":0}", 10), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_window(&b, 1, 4096), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_code(&b, NB_MUX_RST, 1, NB_MUX_E_CANCEL, "bye"), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_frame(&b, NB_MUX_PING, 0, 0, "12345678", 8), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_code(&b, NB_MUX_GOAWAY, 0, NB_MUX_E_NONE, NULL), 0);
    NB_CHECK_EQ_INT(nb_mux_enc_frame(&b, NB_MUX_DATA, 0, 1, big, 65537), NB_ETOOBIG);

    const char *want = "HELLO:0:44 OPEN:1:20 OPEN_OK:1:0 DATA:1:65536 DATA:1:10 WINDOW:1:4 "
                       "RST:1:7 PING:0:8 GOAWAY:0:4";
    char log[512];
    size_t steps[] = {1, 3, 10, 4096, 1 << 20};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        nb_buf_reset(&data);
        NB_CHECK_EQ_INT(decode_all(b.p, b.len, steps[i], log, sizeof log, &data), 0);
        NB_CHECK_STR(log, want);
        NB_CHECK_EQ_INT(data.len, 65536 + 10);
        NB_CHECK(data.len >= 65536 && memcmp(data.p, big, 65536) == 0);
    }
    nb_buf_free(&b);
    nb_buf_free(&data);
}

static int decode_one(const uint8_t *p, size_t n, uint32_t allow, char *err, size_t errsz)
{
    nb_mux_dec_t d;
    nb_mux_dec_init(&d);
    if (allow)
        nb_mux_dec_allow(&d, allow);
    nb_iov_t in = nb_iov(p, n);
    nb_mux_ev_t ev;
    int r;
    while ((r = nb_mux_dec_next(&d, &in, &ev)) == 1)
        ;
    snprintf(err, errsz, "%s", nb_mux_dec_error(&d));
    nb_mux_dec_free(&d);
    return r;
}

static void test_reject(void)
{
    uint8_t f[64];
    char err[160];
    /* Unknown type. */
    nb_mux_put_hdr(f, 0x7f, 0, 0, 0);
    NB_CHECK_EQ_INT(decode_one(f, 10, 0, err, sizeof err), NB_EPROTO);
    NB_CHECK(strstr(err, "unknown frame type") != NULL);
    /* Oversized length: refused on the header alone, before any payload. */
    nb_mux_put_hdr(f, NB_MUX_DATA, 0, 1, 0x7fffffff);
    NB_CHECK_EQ_INT(decode_one(f, 10, 0, err, sizeof err), NB_ETOOBIG);
    NB_CHECK(strstr(err, "maximum payload") != NULL);
    nb_mux_put_hdr(f, NB_MUX_DATA, NB_MUX_CHAN_CTL, 1, NB_MUX_CTL_MAX + 1);
    NB_CHECK_EQ_INT(decode_one(f, 10, 0, err, sizeof err), NB_ETOOBIG);
    nb_mux_put_hdr(f, NB_MUX_HELLO, 0, 0, 45);
    NB_CHECK_EQ_INT(decode_one(f, 10, 0, err, sizeof err), NB_ETOOBIG);
    /* Bad flags, channel 3, stream id rules, empty DATA. */
    nb_mux_put_hdr(f, NB_MUX_FIN, 1, 1, 0);
    NB_CHECK_EQ_INT(decode_one(f, 10, 0, err, sizeof err), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_DATA, 3, 1, 1);
    NB_CHECK_EQ_INT(decode_one(f, 11, 0, err, sizeof err), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_DATA, 0, 0, 1);
    NB_CHECK_EQ_INT(decode_one(f, 11, 0, err, sizeof err), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_PING, 0, 5, 8);
    NB_CHECK_EQ_INT(decode_one(f, 18, 0, err, sizeof err), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_DATA, 0, 1, 0);
    NB_CHECK_EQ_INT(decode_one(f, 10, 0, err, sizeof err), NB_EPROTO);
    /* Type not allowed (only HELLO before the handshake). */
    nb_mux_put_hdr(f, NB_MUX_OPEN, 0, 1, 5);
    NB_CHECK_EQ_INT(decode_one(f, 10, NB_MUX_T(NB_MUX_HELLO), err, sizeof err), NB_EPROTO);
    NB_CHECK(strstr(err, "not allowed") != NULL);
    /* Garbage instead of a HELLO. */
    NB_CHECK_EQ_INT(decode_one((const uint8_t *)"GET / HTTP/1.1\r\n", 16, NB_MUX_T(NB_MUX_HELLO),
                               err, sizeof err),
                    NB_EPROTO);
    /* Payload-level checks. */
    nb_mux_put_hdr(f, NB_MUX_OPEN, 0, 1, 5);
    memcpy(f + 10,
           "\x04"
           "EXEC",
           5); /* upper case */
    NB_CHECK_EQ_INT(decode_one(f, 15, 0, err, sizeof err), NB_EPROTO);
    memcpy(f + 10,
           "\x09"
           "exec",
           5); /* name longer than the payload */
    NB_CHECK_EQ_INT(decode_one(f, 15, 0, err, sizeof err), NB_EPROTO);
    memcpy(f + 10,
           "\x04"
           "exec",
           5);
    NB_CHECK_EQ_INT(decode_one(f, 15, 0, err, sizeof err), 0);
    nb_mux_put_hdr(f, NB_MUX_WINDOW, 0, 1, 4);
    memset(f + 10, 0, 4);
    NB_CHECK_EQ_INT(decode_one(f, 14, 0, err, sizeof err), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_RST, 0, 1, 4);
    memcpy(f + 10, "\0\0\0\x63", 4); /* code 99 */
    NB_CHECK_EQ_INT(decode_one(f, 14, 0, err, sizeof err), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_HELLO, 0, 0, 44);
    memset(f + 10, 0, 44);
    memcpy(f + 10, "NBMY", 4);
    NB_CHECK_EQ_INT(decode_one(f, 54, 0, err, sizeof err), NB_EPROTO);
    /* Errors are sticky. */
    nb_mux_dec_t d;
    nb_mux_dec_init(&d);
    nb_mux_put_hdr(f, 0, 0, 0, 0);
    nb_iov_t in = nb_iov(f, 10);
    nb_mux_ev_t ev;
    NB_CHECK_EQ_INT(nb_mux_dec_next(&d, &in, &ev), NB_EPROTO);
    nb_mux_put_hdr(f, NB_MUX_FIN, 0, 1, 0);
    in = nb_iov(f, 10);
    NB_CHECK_EQ_INT(nb_mux_dec_next(&d, &in, &ev), NB_EPROTO);
    nb_mux_dec_free(&d);
}

static void test_parse(void)
{
    uint8_t nonce[32], hello[NB_MUX_HELLO_LEN];
    memset(nonce, 0xab, sizeof nonce);
    nb_mux_put_hello(hello, NB_MUX_ROLE_GUEST, 0x5, nonce);
    nb_mux_hello_t h;
    NB_CHECK_EQ_INT(nb_mux_parse_hello(nb_iov(hello, sizeof hello), &h), 0);
    NB_CHECK_EQ_INT(h.version, NB_MUX_VERSION);
    NB_CHECK_EQ_INT(h.role, NB_MUX_ROLE_GUEST);
    NB_CHECK_EQ_INT(h.features, 5);
    NB_CHECK(memcmp(h.nonce, nonce, 32) == 0);

    nb_iov_t svc, args;
    NB_CHECK_EQ_INT(nb_mux_parse_open(NB_IOV_STR("\x03tcp{}"), &svc, &args), 0);
    NB_CHECK(nb_iov_eq(svc, "tcp") && nb_iov_eq(args, "{}"));
    NB_CHECK_EQ_INT(nb_mux_parse_open(NB_IOV_STR("\x00tcp"), &svc, &args), NB_EPROTO);
    uint32_t code;
    nb_iov_t msg;
    NB_CHECK_EQ_INT(nb_mux_parse_code(NB_IOV_STR("\0\0\0\x0dspawn failed"), &code, &msg), 0);
    NB_CHECK_EQ_INT(code, NB_MUX_E_FAILED);
    NB_CHECK(nb_iov_eq(msg, "spawn failed"));
    NB_CHECK_STR(nb_mux_code_name(NB_MUX_E_FLOOD), "FLOOD");
    NB_CHECK_STR(nb_mux_type_name(NB_MUX_WINDOW), "WINDOW");
    NB_CHECK_STR(nb_mux_type_name(200), "UNKNOWN");
    NB_CHECK_EQ_INT(nb_mux_code_to_err(nb_mux_err_to_code(NB_ENOTFOUND)), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_mux_enc_open(&(nb_buf_t){0}, 1, "Bad Name", NB_IOV_STR("")), NB_EINVAL);

    /* A message longer than the cap is cut, never rejected. */
    char longmsg[600];
    memset(longmsg, 'x', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = 0;
    nb_buf_t b;
    nb_buf_init(&b, 4096);
    NB_CHECK_EQ_INT(nb_mux_enc_code(&b, NB_MUX_GOAWAY, 0, NB_MUX_E_PROTOCOL, longmsg), 0);
    NB_CHECK_EQ_INT(b.len, NB_MUX_HDR_LEN + 4 + NB_MUX_MSG_MAX);
    char err[160];
    NB_CHECK_EQ_INT(decode_one(b.p, b.len, 0, err, sizeof err), 0);
    nb_buf_free(&b);
}

static void test_auth(void)
{
    uint8_t key[32], key2[32], nh[32], ng[32], hh[44], hg[44], mac[32];
    randombytes_buf(key, sizeof key);
    memcpy(key2, key, sizeof key);
    key2[31] ^= 1;
    randombytes_buf(nh, sizeof nh);
    randombytes_buf(ng, sizeof ng);
    nb_mux_put_hello(hh, NB_MUX_ROLE_HOST, 0, nh);
    nb_mux_put_hello(hg, NB_MUX_ROLE_GUEST, 0, ng);
    nb_mux_auth_mac(mac, key, NB_MUX_ROLE_GUEST, hh, hg);
    NB_CHECK_EQ_INT(nb_mux_auth_verify(mac, key, NB_MUX_ROLE_GUEST, hh, hg), 0);
    /* Role-bound: the guest's MAC is not the host's (no reflection). */
    NB_CHECK_EQ_INT(nb_mux_auth_verify(mac, key, NB_MUX_ROLE_HOST, hh, hg), NB_EAUTH);
    /* Wrong key, other nonces. */
    NB_CHECK_EQ_INT(nb_mux_auth_verify(mac, key2, NB_MUX_ROLE_GUEST, hh, hg), NB_EAUTH);
    hh[20] ^= 1;
    NB_CHECK_EQ_INT(nb_mux_auth_verify(mac, key, NB_MUX_ROLE_GUEST, hh, hg), NB_EAUTH);
}

static void test_transport_parse(void)
{
    nb_transport_t t;
    const char *why = NULL;
    NB_CHECK_EQ_INT(nb_transport_parse("unix:/run/x.sock", &t, &why), 0);
    NB_CHECK(t.kind == NB_TRANSPORT_UNIX && !strcmp(t.path, "/run/x.sock"));
    NB_CHECK_EQ_INT(nb_transport_parse("serial:/dev/vport0p1", &t, &why), 0);
    NB_CHECK(t.kind == NB_TRANSPORT_SERIAL && !strcmp(t.path, "/dev/vport0p1"));
    NB_CHECK_EQ_INT(nb_transport_parse("vsock:2:5000", &t, &why), 0);
    NB_CHECK(t.kind == NB_TRANSPORT_VSOCK && t.cid == 2 && t.port == 5000);
    const char *bad[] = {"vsock:2", "vsock::1",      "vsock:2:x", "vsock:99999999999:1",
                         "unix:",   "tcp:1.2.3.4:5", "serial:",   ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        why = NULL;
        NB_CHECK_EQ_INT(nb_transport_parse(bad[i], &t, &why), NB_EINVAL);
        NB_CHECK(why != NULL);
    }
    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    memcpy(longp, "unix:/", 6);
    NB_CHECK_EQ_INT(nb_transport_parse(longp, &t, &why), NB_EINVAL);
    /* Listening refuses to replace something that is not a socket. */
    char path[] = "/tmp/nb-test-transport-XXXXXX";
    int fd = mkstemp(path);
    NB_CHECK(fd >= 0);
    close(fd);
    NB_CHECK_EQ_INT(nb_transport_listen_unix(path, 1), -EEXIST);
    unlink(path);
    int l = nb_transport_listen_unix(path, 1);
    NB_CHECK(l >= 0);
    struct stat stb;
    NB_CHECK(stat(path, &stb) == 0 && (stb.st_mode & 0777) == 0600);
    NB_CHECK_EQ_INT(nb_transport_accept(l), -EAGAIN);
    close(l);
    l = nb_transport_listen_unix(path, 1); /* a stale socket is replaced */
    NB_CHECK(l >= 0);
    nb_transport_t u = {.kind = NB_TRANSPORT_UNIX};
    memcpy(u.path, path, sizeof path);
    int c = nb_transport_connect(&u);
    NB_CHECK(c >= 0);
    int a = nb_transport_accept(l);
    NB_CHECK(a >= 0);
    close(a);
    close(c);
    close(l);
    unlink(path);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    NB_RUN(test_roundtrip);
    NB_RUN(test_reject);
    NB_RUN(test_parse);
    NB_RUN(test_auth);
    NB_RUN(test_transport_parse);
    NB_TEST_MAIN_END();
}
