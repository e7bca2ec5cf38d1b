/* Fake-IP DNS: message parsing, answers and the per-VM pool. */
#include <arpa/inet.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/fakedns.h"
#include "lib/err.h"
#include "nbtest.h"

/* Builds a query for `name` (dotted, case kept) of `qtype`. */
static size_t mkq(uint8_t *b, uint16_t id, const char *name, uint16_t qtype, int edns)
{
    size_t p = 12;
    memset(b, 0, 12);
    b[0] = (uint8_t)(id >> 8);
    b[1] = (uint8_t)id;
    b[2] = 0x01; /* RD */
    b[5] = 1;    /* QDCOUNT */
    b[11] = edns ? 1 : 0;
    const char *s = name;
    while (*s) {
        const char *d = strchr(s, '.');
        size_t l = d ? (size_t)(d - s) : strlen(s);
        b[p++] = (uint8_t)l;
        memcpy(b + p, s, l);
        p += l;
        s += l;
        if (*s == '.')
            s++;
    }
    b[p++] = 0;
    b[p++] = (uint8_t)(qtype >> 8);
    b[p++] = (uint8_t)qtype;
    b[p++] = 0;
    b[p++] = 1;
    if (edns) {
        static const uint8_t opt[] = {0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0};
        memcpy(b + p, opt, sizeof opt);
        p += sizeof opt;
    }
    return p;
}

static int rcode_of(const uint8_t *r)
{
    return r[3] & 0xf;
}

static int ancount(const uint8_t *r)
{
    return r[6] << 8 | r[7];
}

static int block_evil(void *ud, const char *name)
{
    (*(int *)ud)++;
    return strcmp(name, "evil.example") == 0 || strstr(name, ".blocked.test") != NULL;
}

static uint32_t a_answer(const uint8_t *r, size_t n)
{
    /* The A rdata is the last 4 bytes when there is no OPT record. */
    return (uint32_t)r[n - 4] << 24 | (uint32_t)r[n - 3] << 16 | (uint32_t)r[n - 2] << 8 | r[n - 1];
}

static void test_answers(void)
{
    nb_fakedns_t *f;
    NB_CHECK_EQ_INT(nb_fakedns_new(NULL, &f), 0);
    uint8_t q[600], r[NB_DNS_REPLY_MAX];
    nb_fakedns_result_t res;
    int calls = 0;

    size_t ql = mkq(q, 0x1234, "Api.Example.COM", NB_DNS_T_A, 0);
    size_t n = nb_fakedns_answer(f, nb_iov(q, ql), 1000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK(n > ql);
    NB_CHECK_EQ_INT(r[0], 0x12);
    NB_CHECK_EQ_INT(r[1], 0x34);
    NB_CHECK(r[2] & 0x80); /* QR */
    NB_CHECK(r[2] & 0x01); /* RD echoed */
    NB_CHECK_EQ_INT(rcode_of(r), 0);
    NB_CHECK_EQ_INT(ancount(r), 1);
    NB_CHECK(memcmp(r + 12, q + 12, ql - 12) == 0); /* question echoed, case kept */
    NB_CHECK_STR(res.qname, "api.example.com");
    uint32_t ip1 = a_answer(r, n);
    NB_CHECK_EQ_INT(ip1, res.ip);
    NB_CHECK(nb_fakedns_in_range(ip1));
    NB_CHECK((ip1 & 0xffffff00u) != 0xc6120000u); /* 198.18.0.0/24 reserved */
    NB_CHECK((ip1 & 0xff) != 0 && (ip1 & 0xff) != 0xff);

    /* Same name (any case) -> same address; another name -> another. */
    ql = mkq(q, 7, "api.example.com.", NB_DNS_T_A, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 2000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(a_answer(r, n), ip1);
    ql = mkq(q, 8, "other.example.com", NB_DNS_T_A, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 2000, block_evil, &calls, r, sizeof r, &res);
    uint32_t ip2 = a_answer(r, n);
    NB_CHECK(ip2 != ip1 && nb_fakedns_in_range(ip2));

    char name[NB_HOSTNAME_BUFSZ];
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, ip1, 3000, name, sizeof name), 1);
    NB_CHECK_STR(name, "api.example.com");
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, ip2 + 1, 3000, name, sizeof name), 0);
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, 0x08080808, 3000, name, sizeof name), 0);

    /* AAAA: NOERROR, no answer, and no address taken. */
    size_t before = nb_fakedns_count(f, 3000);
    ql = mkq(q, 9, "v6only.example.com", NB_DNS_T_AAAA, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NOERROR);
    NB_CHECK_EQ_INT(ancount(r), 0);
    NB_CHECK_EQ_INT(nb_fakedns_count(f, 3000), before);

    /* TXT (a classic exfiltration carrier): NODATA, never an upstream. */
    ql = mkq(q, 10, "c2VjcmV0.attacker.example", 16, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK(n > 0);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NOERROR);
    NB_CHECK_EQ_INT(ancount(r), 0);

    /* Blocked names: NXDOMAIN, no address. */
    ql = mkq(q, 11, "EVIL.example", NB_DNS_T_A, 0);
    calls = 0;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(calls, 1);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NXDOMAIN);
    NB_CHECK_EQ_INT(ancount(r), 0);
    NB_CHECK_EQ_INT(res.blocked, 1);
    ql = mkq(q, 12, "x.blocked.test", NB_DNS_T_AAAA, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NXDOMAIN);

    /* Invalid names: NXDOMAIN without asking the policy. */
    static const char *bad[] = {"under_score.example", "1.2.3.4", "host.123", "-lead.example",
                                "a..b"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (strstr(bad[i], ".."))
            continue; /* not encodable as labels */
        calls = 0;
        ql = mkq(q, 13, bad[i], NB_DNS_T_A, 0);
        n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
        NB_CHECK(n > 0);
        NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NXDOMAIN);
        NB_CHECK_EQ_INT(calls, 0);
    }

    /* PTR of a mapped address gives the name; others NXDOMAIN. */
    char rev[64];
    snprintf(rev, sizeof rev, "%u.%u.%u.%u.in-addr.arpa", ip2 & 0xff, (ip2 >> 8) & 0xff,
             (ip2 >> 16) & 0xff, ip2 >> 24);
    ql = mkq(q, 14, rev, NB_DNS_T_PTR, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NOERROR);
    NB_CHECK_EQ_INT(ancount(r), 1);
    NB_CHECK(memmem(r, n,
                    "\x05other\x07"
                    "example\x03"
                    "com",
                    19) != NULL);
    ql = mkq(q, 15, "8.8.8.8.in-addr.arpa", NB_DNS_T_PTR, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NXDOMAIN);
    ql = mkq(q, 16, "foo.arpa", NB_DNS_T_A, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NXDOMAIN);

    /* EDNS: accepted, and the reply carries an OPT record. */
    ql = mkq(q, 17, "api.example.com", NB_DNS_T_A, 1);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), 0);
    NB_CHECK_EQ_INT(r[11], 1);
    NB_CHECK_EQ_INT(r[n - 11 + 2], 41);
    NB_CHECK_EQ_INT(res.ip, ip1);

    /* Class CH: refused. */
    ql = mkq(q, 18, "version.bind", 16, 0);
    q[ql - 1] = 3;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 3000, block_evil, &calls, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_REFUSED);
    nb_fakedns_free(f);
}

static void test_malformed(void)
{
    nb_fakedns_t *f;
    NB_CHECK_EQ_INT(nb_fakedns_new(NULL, &f), 0);
    uint8_t q[600], r[NB_DNS_REPLY_MAX];
    nb_fakedns_result_t res;

    /* Too short, or a response: no reply at all. */
    NB_CHECK_EQ_INT(nb_fakedns_answer(f, nb_iov(q, 5), 0, NULL, NULL, r, sizeof r, &res), 0);
    size_t ql = mkq(q, 1, "a.example", NB_DNS_T_A, 0);
    q[2] |= 0x80;
    NB_CHECK_EQ_INT(nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res), 0);
    NB_CHECK_EQ_INT(res.rcode, -1);

    /* Trailing garbage, two questions, an answer section, a pointer, a
     * label running past the end, an opcode other than QUERY. */
    ql = mkq(q, 2, "a.example", NB_DNS_T_A, 0);
    q[ql] = 0;
    size_t n = nb_fakedns_answer(f, nb_iov(q, ql + 1), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(n, 12);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);
    NB_CHECK_EQ_INT(r[5], 0); /* no question echoed */

    ql = mkq(q, 3, "a.example", NB_DNS_T_A, 0);
    q[5] = 2;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);

    ql = mkq(q, 4, "a.example", NB_DNS_T_A, 0);
    q[7] = 1;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);

    ql = mkq(q, 5, "a.example", NB_DNS_T_A, 0);
    q[12] = 0xc0;
    q[13] = 0x0c;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);

    ql = mkq(q, 6, "a.example", NB_DNS_T_A, 0);
    q[12] = 60;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);

    ql = mkq(q, 7, "a.example", NB_DNS_T_A, 0);
    q[2] |= 0x10; /* opcode 2 (STATUS) */
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NOTIMP);

    /* An additional record that is not OPT. */
    ql = mkq(q, 8, "a.example", NB_DNS_T_A, 1);
    q[ql - 9] = 1;
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);

    /* A 255-byte name is fine, one more is not. */
    char longname[300];
    size_t ll = 0;
    for (int i = 0; i < 4; i++) {
        if (i)
            longname[ll++] = '.';
        memset(longname + ll, 'a', 62);
        ll += 62;
    }
    longname[ll] = '\0';
    ql = mkq(q, 9, longname, NB_DNS_T_A, 0); /* 4*63 + 1 = 253 wire bytes */
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_NOERROR);
    NB_CHECK_EQ_INT(ancount(r), 1);
    memcpy(longname + ll, ".ab", 4);
    ql = mkq(q, 10, longname, NB_DNS_T_A, 0);
    n = nb_fakedns_answer(f, nb_iov(q, ql), 0, NULL, NULL, r, sizeof r, &res);
    NB_CHECK_EQ_INT(rcode_of(r), NB_DNS_FORMERR);
    nb_fakedns_free(f);
}

static void test_pool(void)
{
    nb_fakedns_cfg_t cfg;
    nb_fakedns_cfg_default(&cfg);
    cfg.cap = 4;
    cfg.min_age_ms = 1000;
    cfg.expire_ms = 10000;
    nb_fakedns_t *f;
    NB_CHECK_EQ_INT(nb_fakedns_new(&cfg, &f), 0);
    uint32_t ip[6];
    char n[NB_HOSTNAME_BUFSZ];
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "a.test", 0, &ip[0]), 0);
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "b.test", 10, &ip[1]), 0);
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "c.test", 20, &ip[2]), 0);
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "d.test", 30, &ip[3]), 0);
    NB_CHECK_EQ_INT(nb_fakedns_count(f, 30), 4);
    /* Full of young names: refused, nothing evicted. */
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "e.test", 500, &ip[4]), NB_ETOOBIG);
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, ip[0], 600, n, sizeof n), 1); /* touches a.test */
    /* Old enough: the least recently used (b.test) goes. */
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "e.test", 1500, &ip[4]), 0);
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, ip[1], 1500, n, sizeof n), 0);
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, ip[0], 1500, n, sizeof n), 1);
    NB_CHECK_STR(n, "a.test");
    /* A freed address is not handed out again right away. */
    for (int i = 0; i < 5; i++)
        NB_CHECK(ip[4] != ip[i] || i == 4);
    /* b.test comes back with a new address. */
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "b.test", 2600, &ip[5]), 0);
    NB_CHECK(ip[5] != ip[1]);
    NB_CHECK_EQ_INT(nb_fakedns_count(f, 2600), 4);
    /* Unused names expire. */
    NB_CHECK_EQ_INT(nb_fakedns_count(f, 12000), 1); /* only b.test (used at 2600) */
    NB_CHECK_EQ_INT(nb_fakedns_lookup(f, ip[5], 12000, n, sizeof n), 1);
    NB_CHECK_EQ_INT(nb_fakedns_count(f, 21999), 1);
    NB_CHECK_EQ_INT(nb_fakedns_count(f, 22000), 0);
    NB_CHECK_EQ_INT(nb_fakedns_assign(f, "", 0, &ip[0]), NB_EINVAL);
    nb_fakedns_free(f);

    /* Many names: all distinct, all usable addresses, stable. */
    nb_fakedns_cfg_default(&cfg);
    cfg.cap = 2000;
    NB_CHECK_EQ_INT(nb_fakedns_new(&cfg, &f), 0);
    uint32_t *all = calloc(2000, sizeof *all);
    int ok = 1;
    for (int i = 0; i < 2000; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "h%d.example", i);
        ok &= nb_fakedns_assign(f, nm, 5, &all[i]) == 0;
        ok &= nb_fakedns_in_range(all[i]) && (all[i] & 0xff) != 0 && (all[i] & 0xff) != 255 &&
              (all[i] & 0xffff00u) != 0x120000u;
    }
    NB_CHECK(ok);
    for (int i = 0; i < 2000; i += 97) {
        char nm[32];
        uint32_t again;
        snprintf(nm, sizeof nm, "h%d.example", i);
        NB_CHECK_EQ_INT(nb_fakedns_assign(f, nm, 6, &again), 0);
        NB_CHECK_EQ_INT(again, all[i]);
        NB_CHECK_EQ_INT(nb_fakedns_lookup(f, all[i], 6, n, sizeof n), 1);
        NB_CHECK_STR(n, nm);
    }
    int dup = 0;
    for (int i = 1; i < 2000; i++)
        dup |= all[i] == all[i - 1];
    NB_CHECK(!dup);
    free(all);
    nb_fakedns_free(f);
    nb_fakedns_free(NULL);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    NB_RUN(test_answers);
    NB_RUN(test_malformed);
    NB_RUN(test_pool);
    NB_TEST_MAIN_END();
}
