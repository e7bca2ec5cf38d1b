/* Unit tests for src/daemon/egress/rules and hostname: normalisation, rule
 * syntax, matching, evaluation order, internal addresses (A13), IP
 * literals judged as IPs (A12), prompt display names (A16), persistence. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <sqlite3.h>

#include "lib/hostname.h"
#include "daemon/egress/rules.h"
#include "lib/err.h"
#include "nbtest.h"

static const char *norm(const char *in)
{
    static char out[NB_HOSTNAME_BUFSZ];
    int r = nb_hostname_normalize(in, strlen(in), out, sizeof(out));
    return r < 0 ? "(invalid)" : out;
}

static void test_hostname(void)
{
    NB_CHECK_STR(norm("API.OpenAI.COM"), "api.openai.com");
    NB_CHECK_STR(norm("example.com."), "example.com");
    NB_CHECK_STR(norm("xn--bcher-kva.example"), "xn--bcher-kva.example"); /* IDNA kept */
    NB_CHECK_STR(norm("a-b.c"), "a-b.c");
    NB_CHECK_STR(norm("localhost"), "localhost");
    NB_CHECK_STR(norm("example.com.."), "(invalid)");
    NB_CHECK_STR(norm(""), "(invalid)");
    NB_CHECK_STR(norm("."), "(invalid)");
    NB_CHECK_STR(norm("a..b"), "(invalid)");
    NB_CHECK_STR(norm(".a"), "(invalid)");
    NB_CHECK_STR(norm("-a.com"), "(invalid)");
    NB_CHECK_STR(norm("a-.com"), "(invalid)");
    NB_CHECK_STR(norm("under_score.com"), "(invalid)");
    NB_CHECK_STR(norm("bücher.example"), "(invalid)"); /* U-labels are not LDH */
    NB_CHECK_STR(norm("a b.com"), "(invalid)");
    NB_CHECK_STR(norm("evil.com\r\nX: y"), "(invalid)");
    NB_CHECK_STR(norm("*.example.com"), "(invalid)");
    /* Resolvers read these as IPv4: never accepted as names (A12/A13). */
    NB_CHECK_STR(norm("2130706433"), "(invalid)");
    NB_CHECK_STR(norm("127.1"), "(invalid)");
    NB_CHECK_STR(norm("0x7f.0.0.1"), "(invalid)");
    NB_CHECK_STR(norm("foo.0x10"), "(invalid)");
    NB_CHECK_STR(norm("1.2.3.4"), "(invalid)");
    NB_CHECK_STR(norm("123.example"), "123.example");
    char big[300];
    memset(big, 'a', sizeof(big));
    NB_CHECK(nb_hostname_normalize(big, 64, (char[300]){0}, 300) == NB_EINVAL); /* label > 63 */
    for (int i = 63; i < 300; i += 64)
        big[i] = '.';
    NB_CHECK(nb_hostname_normalize(big, 253, (char[300]){0}, 300) == 253);
    NB_CHECK(nb_hostname_normalize(big, 254, (char[300]){0}, 300) == NB_EINVAL);
    /* NUL inside the slice is not a terminator. */
    NB_CHECK(nb_hostname_normalize("a\0b.com", 7, (char[300]){0}, 300) == NB_EINVAL);

    nb_ipaddr_t ip;
    char buf[64];
    NB_CHECK(nb_ip_parse("10.0.0.1", 8, &ip) == 1 && ip.family == AF_INET);
    NB_CHECK(nb_ip_parse("010.0.0.1", 9, &ip) == 0); /* octal-looking: no */
    NB_CHECK(nb_ip_parse("1.2.3", 5, &ip) == 0);
    NB_CHECK(nb_ip_parse("1.2.3.256", 9, &ip) == 0);
    NB_CHECK(nb_ip_parse("1.2.3.4.", 8, &ip) == 0);
    NB_CHECK(nb_ip_parse("[::1]", 5, &ip) == 1 && ip.family == AF_INET6);
    NB_CHECK(nb_ip_parse("[1.2.3.4]", 9, &ip) == 0);
    NB_CHECK(nb_ip_parse("fe80::1%eth0", 12, &ip) == 0);
    NB_CHECK(nb_ip_parse("::ffff:127.0.0.1", 16, &ip) == 1 && ip.family == AF_INET);
    NB_CHECK_STR(nb_ip_format(&ip, buf, sizeof(buf)), "127.0.0.1");
    NB_CHECK(nb_ip_parse("example.com", 11, &ip) == 0);

    char pat[NB_RULES_PATTERN_MAX];
    NB_CHECK(nb_host_pattern_normalize("*.Example.COM", 13, pat, sizeof(pat)) == 13);
    NB_CHECK_STR(pat, "*.example.com");
    NB_CHECK(nb_host_pattern_normalize("*example.com", 12, pat, sizeof(pat)) == NB_EINVAL);
    NB_CHECK(nb_host_pattern_normalize("a.*.com", 7, pat, sizeof(pat)) == NB_EINVAL);
    NB_CHECK(nb_host_pattern_normalize("*.", 2, pat, sizeof(pat)) == NB_EINVAL);
    NB_CHECK(nb_host_pattern_normalize("*", 1, pat, sizeof(pat)) == NB_EINVAL);
    NB_CHECK(nb_host_pattern_match("*.example.com", "a.example.com"));
    NB_CHECK(nb_host_pattern_match("*.example.com", "a.b.example.com"));
    NB_CHECK(!nb_host_pattern_match("*.example.com", "example.com"));
    NB_CHECK(!nb_host_pattern_match("*.example.com", "badexample.com"));
    NB_CHECK(!nb_host_pattern_match("*.example.com", "example.com.evil"));
    NB_CHECK(nb_host_pattern_match("example.com", "example.com"));
    NB_CHECK(!nb_host_pattern_match("example.com", "a.example.com"));
}

static nb_rule_t mk(int action, const char *spec, const char *vm, int64_t id)
{
    nb_rule_t r;
    memset(&r, 0, sizeof(r));
    r.action = action;
    r.id = id;
    if (nb_rule_parse(spec, &r) < 0)
        r.kind = 0;
    snprintf(r.vm, sizeof(r.vm), "%s", vm ? vm : "");
    return r;
}

static void test_parse(void)
{
    nb_rule_t r;
    memset(&r, 0, sizeof(r));
    NB_CHECK_EQ_INT(nb_rule_parse("API.example.com:443", &r), 0);
    NB_CHECK(r.kind == NB_RULE_NAME && r.port == 443);
    NB_CHECK_STR(r.pattern, "api.example.com");
    /* "host" is the host-service name (A14, daemon/portsvc.h). */
    NB_CHECK_EQ_INT(nb_rule_parse("host:5432", &r), 0);
    NB_CHECK(r.kind == NB_RULE_NAME && r.port == 5432);
    NB_CHECK_STR(r.pattern, "host.nilbox.internal");
    NB_CHECK_EQ_INT(nb_rule_parse("HOST", &r), 0);
    NB_CHECK(r.kind == NB_RULE_NAME && r.port == 0);
    NB_CHECK_STR(r.pattern, "host.nilbox.internal");
    NB_CHECK_EQ_INT(nb_rule_parse("hosts:80", &r), 0);
    NB_CHECK_STR(r.pattern, "hosts");
    NB_CHECK_EQ_INT(nb_rule_parse("*.example.com:*", &r), 0);
    NB_CHECK(r.kind == NB_RULE_SUFFIX && r.port == 0);
    NB_CHECK_EQ_INT(nb_rule_parse("10.1.2.3/8", &r), 0);
    NB_CHECK(r.kind == NB_RULE_CIDR && r.prefix == 8);
    NB_CHECK_STR(r.pattern, "10.0.0.0/8");
    NB_CHECK_EQ_INT(nb_rule_parse("10.1.2.3:8080", &r), 0);
    NB_CHECK_STR(r.pattern, "10.1.2.3/32");
    NB_CHECK(r.port == 8080);
    NB_CHECK_EQ_INT(nb_rule_parse("fd00::1/8", &r), 0);
    NB_CHECK_STR(r.pattern, "fd00::/8");
    NB_CHECK(r.port == 0);
    NB_CHECK_EQ_INT(nb_rule_parse("[fd00::]/16:443", &r), 0);
    NB_CHECK_STR(r.pattern, "fd00::/16");
    NB_CHECK(r.port == 443);
    NB_CHECK_EQ_INT(nb_rule_parse("[::1]:8080", &r), 0);
    NB_CHECK_STR(r.pattern, "::1/128");
    NB_CHECK_EQ_INT(nb_rule_parse("::ffff:10.0.0.0/104", &r), 0);
    NB_CHECK_STR(r.pattern, "10.0.0.0/8");
    NB_CHECK_EQ_INT(nb_rule_parse("0.0.0.0/0", &r), 0);

    const char *bad[] = {"",
                         "*",
                         "*:443",
                         "a.*.com",
                         "example.com:0",
                         "example.com:65536",
                         "example.com:44a",
                         "example.com:",
                         "example.com/8",
                         "10.0.0.0/33",
                         "10.0.0.0/",
                         "fd00::/129",
                         "[fd00::1",
                         "[fd00::1]x",
                         "[1.2.3.4]:80",
                         "ex ample.com",
                         "a:b:c.com",
                         "::ffff:10.0.0.0/8",
                         "10.0.0.0/08"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = nb_rule_parse(bad[i], &r);
        if (rc != NB_EINVAL)
            fprintf(stderr, "accepted bad spec '%s'\n", bad[i]);
        NB_CHECK_EQ_INT(rc, NB_EINVAL);
    }
}

static int block_evil(void *ctx, const nb_dest_t *d)
{
    (*(int *)ctx)++;
    return !d->is_ip && nb_host_pattern_match("*.evil.example", d->name);
}

static nb_gate_result_t judge(const nb_ruleset_t *rs, const char *vm, const char *host,
                              uint16_t port, int *blcalls)
{
    nb_dest_t d;
    nb_gate_result_t res;
    memset(&res, 0, sizeof(res));
    if (nb_dest_set(&d, vm, host, strlen(host), port) < 0) {
        res.decision = -1;
        return res;
    }
    nb_rules_eval(rs, &d, block_evil, blcalls, &res);
    return res;
}

static void test_eval(void)
{
    nb_ruleset_t rs = NB_RULESET_INIT;
    nb_rule_t rules[] = {
        mk(NB_RULE_ALLOW, "api.openai.com:443", NULL, 1),
        mk(NB_RULE_ALLOW, "*.github.com", NULL, 2),
        mk(NB_RULE_DENY, "gist.github.com", NULL, 3),
        mk(NB_RULE_ALLOW, "registry.npmjs.org", "dev", 4),
        mk(NB_RULE_ALLOW, "*.evil.example", NULL, 5),
        mk(NB_RULE_ALLOW, "203.0.113.0/24:8443", NULL, 6),
        mk(NB_RULE_DENY, "*.github.com", "ci", 7),
        mk(NB_RULE_ALLOW, "*.api.github.com", NULL, 8),
        mk(NB_RULE_ALLOW, "uploads.github.com", NULL, 9),
    };
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        NB_CHECK(rules[i].kind != 0);
        NB_CHECK_EQ_INT(nb_ruleset_add(&rs, &rules[i]), 0);
    }
    rs.v[0].http = 1;
    int bl = 0;
    nb_gate_result_t r;
    r = judge(&rs, "a", "API.OPENAI.COM.", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 1 && r.http == 1);
    r = judge(&rs, "a", "api.openai.com", 80, &bl); /* port-scoped rule */
    NB_CHECK(r.decision == NB_GATE_PROMPT && r.reason == NB_GATE_R_NO_RULE);
    r = judge(&rs, "a", "openai.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    r = judge(&rs, "a", "x.api.openai.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    /* Suffix: subdomains only, not the bare name. */
    r = judge(&rs, "a", "raw.github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 2);
    r = judge(&rs, "a", "github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    r = judge(&rs, "a", "notgithub.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    /* Most specific allow is reported. */
    r = judge(&rs, "a", "x.api.github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 8);
    r = judge(&rs, "a", "uploads.github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 9);
    /* Deny wins over any allow. */
    r = judge(&rs, "a", "gist.github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_DENY && r.reason == NB_GATE_R_DENY_RULE && r.rule_id == 3);
    /* Per-VM rules: only for that VM (A9). */
    r = judge(&rs, "dev", "registry.npmjs.org", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 4);
    r = judge(&rs, "prod", "registry.npmjs.org", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    r = judge(&rs, NULL, "registry.npmjs.org", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    r = judge(&rs, "ci", "raw.github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_DENY && r.rule_id == 7);
    /* Blocklist sits between deny and allow: an allow rule cannot lift it... */
    bl = 0;
    r = judge(&rs, "a", "c2.evil.example", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_DENY && r.reason == NB_GATE_R_BLOCKLIST && bl == 1);
    /* ...and it is not consulted when a deny rule already decided. */
    bl = 0;
    r = judge(&rs, "a", "gist.github.com", 443, &bl);
    NB_CHECK(bl == 0);
    /* A12: IP literals are judged as IPs; name rules never admit them. */
    r = judge(&rs, "a", "203.0.113.7", 8443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 6);
    r = judge(&rs, "a", "203.0.113.7", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    r = judge(&rs, "a", "[::ffff:203.0.113.9]", 8443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW);
    r = judge(&rs, "a", "203.0.114.1", 8443, &bl);
    NB_CHECK(r.decision == NB_GATE_PROMPT);
    r = judge(&rs, "a", "2130706433", 443, &bl);
    NB_CHECK(r.decision == -1);
    r = judge(&rs, "bad vm", "api.openai.com", 443, &bl);
    NB_CHECK(r.decision == -1);

    NB_CHECK_EQ_INT(nb_ruleset_remove(&rs, 3), 0);
    NB_CHECK_EQ_INT(nb_ruleset_remove(&rs, 3), NB_ENOTFOUND);
    r = judge(&rs, "a", "gist.github.com", 443, &bl);
    NB_CHECK(r.decision == NB_GATE_ALLOW && r.rule_id == 2);
    nb_ruleset_free(&rs);
    nb_ruleset_free(&rs); /* idempotent */
}

static const char *kind_of(const char *s)
{
    nb_ipaddr_t ip;
    if (!nb_ip_parse(s, strlen(s), &ip))
        return "(not ip)";
    const char *k = nb_ip_internal_kind(&ip);
    return k ? k : "public";
}

static void test_A13_internal(void)
{
    NB_CHECK_STR(kind_of("127.0.0.1"), "loopback");
    NB_CHECK_STR(kind_of("127.255.0.9"), "loopback");
    NB_CHECK_STR(kind_of("::1"), "loopback");
    NB_CHECK_STR(kind_of("::ffff:127.0.0.1"), "loopback");
    NB_CHECK_STR(kind_of("10.2.3.4"), "private");
    NB_CHECK_STR(kind_of("172.31.255.255"), "private");
    NB_CHECK_STR(kind_of("172.32.0.1"), "public");
    NB_CHECK_STR(kind_of("192.168.1.1"), "private");
    NB_CHECK_STR(kind_of("100.64.0.1"), "private");
    NB_CHECK_STR(kind_of("169.254.169.254"), "metadata");
    NB_CHECK_STR(kind_of("169.254.1.1"), "link-local");
    NB_CHECK_STR(kind_of("fd00:ec2::254"), "metadata");
    NB_CHECK_STR(kind_of("fd12::1"), "private");
    NB_CHECK_STR(kind_of("fe80::1"), "link-local");
    NB_CHECK_STR(kind_of("0.0.0.0"), "unspecified");
    NB_CHECK_STR(kind_of("::"), "unspecified");
    NB_CHECK_STR(kind_of("198.18.0.5"), "fake-ip");
    NB_CHECK_STR(kind_of("198.19.255.255"), "fake-ip");
    NB_CHECK_STR(kind_of("224.0.0.1"), "multicast");
    NB_CHECK_STR(kind_of("ff02::1"), "multicast");
    NB_CHECK_STR(kind_of("255.255.255.255"), "reserved");
    NB_CHECK_STR(kind_of("64:ff9b::7f00:1"), "loopback"); /* NAT64 of 127.0.0.1 */
    NB_CHECK_STR(kind_of("::ffff:0:7f00:2"), "reserved"); /* IPv4-translated 127.0.0.2 */
    NB_CHECK_STR(kind_of("::7f00:2"), "reserved");        /* IPv4-compatible 127.0.0.2 */
    NB_CHECK_STR(kind_of("64:ff9b::a9fe:a9fe"), "metadata");
    NB_CHECK_STR(kind_of("2002:7f00:1::1"), "loopback"); /* 6to4 of 127.0.0.1 */
    NB_CHECK_STR(kind_of("::127.0.0.1"), "reserved");
    NB_CHECK_STR(kind_of("8.8.8.8"), "public");
    NB_CHECK_STR(kind_of("2606:4700::1111"), "public");
    NB_CHECK_STR(kind_of("64:ff9b::808:808"), "public");

    /* Only an explicit IP/CIDR allow rule admits an internal address. */
    nb_ruleset_t rs = NB_RULESET_INIT;
    nb_rule_t a = mk(NB_RULE_ALLOW, "127.0.0.1:8443", "test", 1);
    nb_rule_t n = mk(NB_RULE_ALLOW, "localhost", NULL, 2);
    nb_rule_t d = mk(NB_RULE_DENY, "10.9.0.0/16", NULL, 3);
    nb_rule_t w = mk(NB_RULE_ALLOW, "10.0.0.0/8", NULL, 4);
    nb_ruleset_add(&rs, &a);
    nb_ruleset_add(&rs, &n);
    nb_ruleset_add(&rs, &d);
    nb_ruleset_add(&rs, &w);
    nb_ipaddr_t ip;
    nb_ip_parse("127.0.0.1", 9, &ip);
    NB_CHECK(nb_rules_addr_allowed(&rs, "test", &ip, 8443));
    NB_CHECK(!nb_rules_addr_allowed(&rs, "test", &ip, 443));
    NB_CHECK(!nb_rules_addr_allowed(&rs, "other", &ip, 8443));
    nb_ip_parse("10.1.1.1", 8, &ip);
    NB_CHECK(nb_rules_addr_allowed(&rs, "x", &ip, 1));
    nb_ip_parse("10.9.1.1", 8, &ip);
    NB_CHECK(!nb_rules_addr_allowed(&rs, "x", &ip, 1));
    nb_ip_parse("169.254.169.254", 15, &ip);
    NB_CHECK(!nb_rules_addr_allowed(&rs, "x", &ip, 80));
    nb_ruleset_free(&rs);
}

static int allowed_with(const char *rule, const char *addr, uint16_t port)
{
    nb_ruleset_t rs = NB_RULESET_INIT;
    nb_rule_t r = mk(NB_RULE_ALLOW, rule, NULL, 1);
    nb_ruleset_add(&rs, &r);
    nb_ipaddr_t ip;
    NB_CHECK(nb_ip_parse(addr, strlen(addr), &ip));
    int ok = nb_rules_addr_allowed(&rs, "vm1", &ip, port);
    nb_ruleset_free(&rs);
    return ok;
}

/* A13, issue 16: a broad CIDR covers internal ranges without naming them. */
static void test_A13_narrow(void)
{
    static const char *const broad[] = {"0.0.0.0/0",   "0.0.0.0/1", "64.0.0.0/2",
                                        "126.0.0.0/7", "::/0",      "::ffff:0.0.0.0/96"};
    for (size_t i = 0; i < sizeof broad / sizeof broad[0]; i++) {
        NB_CHECK(!allowed_with(broad[i], "127.0.0.1", 80));
    }
    NB_CHECK(!allowed_with("0.0.0.0/0", "10.1.2.3", 80));
    NB_CHECK(!allowed_with("0.0.0.0/0", "169.254.169.254", 80));
    NB_CHECK(!allowed_with("0.0.0.0/0", "192.168.1.1", 80));
    NB_CHECK(!allowed_with("10.0.0.0/7", "10.1.2.3", 80));
    NB_CHECK(!allowed_with("::/0", "::1", 80));
    NB_CHECK(!allowed_with("::/0", "fd12::1", 80));
    NB_CHECK(!allowed_with("fc00::/6", "fd12::1", 80));
    NB_CHECK(!allowed_with("::/0", "64:ff9b::7f00:1", 80)); /* NAT64 of 127.0.0.1 */
    NB_CHECK(!allowed_with("2002::/16", "2002:7f00:1::1", 80));
    /* Named narrowly: open. */
    NB_CHECK(allowed_with("127.0.0.0/8", "127.0.0.1", 80));
    NB_CHECK(allowed_with("127.0.0.1", "127.0.0.1", 80));
    NB_CHECK(allowed_with("127.0.0.0/24:80", "127.0.0.1", 80));
    NB_CHECK(!allowed_with("127.0.0.0/24:80", "127.0.0.1", 81));
    NB_CHECK(allowed_with("10.0.0.0/8", "10.200.0.1", 80));
    NB_CHECK(allowed_with("172.16.0.0/12", "172.20.0.1", 80));
    NB_CHECK(allowed_with("::1", "::1", 80));
    NB_CHECK(allowed_with("fd00::/8", "fd12::1", 80));
    NB_CHECK(allowed_with("64:ff9b::7f00:0/104", "64:ff9b::7f00:1", 80));
    /* Never opened: 0.0.0.0 reaches the host itself; multicast. */
    NB_CHECK(!allowed_with("0.0.0.0/8", "0.0.0.0", 80));
    NB_CHECK(!allowed_with("0.0.0.0/32", "0.0.0.0", 80));
    NB_CHECK(!allowed_with("::/128", "::", 80));
    NB_CHECK(!allowed_with("224.0.0.0/4", "224.0.0.1", 80));
    /* The metadata address needs its own /32: link-local does not open it. */
    NB_CHECK(!allowed_with("169.254.0.0/16", "169.254.169.254", 80));
    NB_CHECK(allowed_with("169.254.0.0/16", "169.254.1.1", 80));
    NB_CHECK(allowed_with("169.254.169.254/32", "169.254.169.254", 80));
    /* A narrow rule next to a broad one: the narrow one counts. */
    nb_ruleset_t rs = NB_RULESET_INIT;
    nb_rule_t b = mk(NB_RULE_ALLOW, "0.0.0.0/0", NULL, 1);
    nb_rule_t n = mk(NB_RULE_ALLOW, "127.0.0.1:9000", NULL, 2);
    nb_ruleset_add(&rs, &b);
    nb_ruleset_add(&rs, &n);
    nb_ipaddr_t ip;
    nb_ip_parse("127.0.0.1", 9, &ip);
    NB_CHECK(nb_rules_addr_allowed(&rs, "", &ip, 9000));
    NB_CHECK(!nb_rules_addr_allowed(&rs, "", &ip, 9001));
    nb_ip_parse("8.8.8.8", 7, &ip);
    NB_CHECK(nb_rules_addr_allowed(&rs, "", &ip, 1)); /* public: the broad rule is fine */
    nb_ruleset_free(&rs);

    /* Warnings for broad allow rules, none for narrow or public ones. */
    char w[512];
    nb_rule_t r = mk(NB_RULE_ALLOW, "0.0.0.0/0", NULL, 1);
    NB_CHECK(nb_rule_broad_warning(&r, w, sizeof w) > 0);
    NB_CHECK(strstr(w, "loopback") && strstr(w, "private") && strstr(w, "metadata"));
    r = mk(NB_RULE_ALLOW, "::/0", NULL, 1);
    NB_CHECK(nb_rule_broad_warning(&r, w, sizeof w) > 0 && strstr(w, "loopback"));
    r = mk(NB_RULE_ALLOW, "10.0.0.0/7", NULL, 1);
    NB_CHECK(nb_rule_broad_warning(&r, w, sizeof w) > 0 && strstr(w, "10.0.0.0/8"));
    r = mk(NB_RULE_ALLOW, "169.254.0.0/16", NULL, 1);
    NB_CHECK(nb_rule_broad_warning(&r, w, sizeof w) > 0 && strstr(w, "metadata"));
    r = mk(NB_RULE_ALLOW, "127.0.0.0/8", NULL, 1);
    NB_CHECK_EQ_INT(nb_rule_broad_warning(&r, w, sizeof w), 0);
    NB_CHECK_STR(w, "");
    r = mk(NB_RULE_ALLOW, "8.8.8.0/24", NULL, 1);
    NB_CHECK_EQ_INT(nb_rule_broad_warning(&r, w, sizeof w), 0);
    r = mk(NB_RULE_DENY, "0.0.0.0/0", NULL, 1);
    NB_CHECK_EQ_INT(nb_rule_broad_warning(&r, w, sizeof w), 0);
    r = mk(NB_RULE_ALLOW, "*.example.com", NULL, 1);
    NB_CHECK_EQ_INT(nb_rule_broad_warning(&r, w, sizeof w), 0);
}

/* Wildcards over public suffixes (issue 16). */
static void test_public_suffix(void)
{
    static const char list[] = "// comment\n"
                               "com\n"
                               "co.uk\n"
                               "  github.io  trailing words\n"
                               "*.ck\n"
                               "!www.ck\n"
                               "\n"
                               "// ===BEGIN PRIVATE DOMAINS===\n"
                               "googleapis.com\n";
    NB_CHECK(nb_psl_contains(list, sizeof list - 1, "com"));
    NB_CHECK(nb_psl_contains(list, sizeof list - 1, "co.uk"));
    NB_CHECK(nb_psl_contains(list, sizeof list - 1, "github.io"));
    NB_CHECK(nb_psl_contains(list, sizeof list - 1, "foo.ck"));
    NB_CHECK(!nb_psl_contains(list, sizeof list - 1, "www.ck"));
    NB_CHECK(!nb_psl_contains(list, sizeof list - 1, "ck.foo"));
    NB_CHECK(!nb_psl_contains(list, sizeof list - 1, "example.com"));
    NB_CHECK(!nb_psl_contains(list, sizeof list - 1, "comment"));
    NB_CHECK(!nb_psl_contains("", 0, "com"));
    NB_CHECK(!nb_psl_contains(list, sizeof list - 1, "googleapis.com"));

    NB_CHECK(nb_host_pattern_public("*"));
    NB_CHECK(nb_host_pattern_public("*.com"));
    NB_CHECK(nb_host_pattern_public("*.io"));
    NB_CHECK(nb_host_pattern_public("*.co.uk"));
    NB_CHECK(nb_host_pattern_public("*.com.au"));
    NB_CHECK(nb_host_pattern_public("*.test"));
    NB_CHECK(!nb_host_pattern_public("*.example.com"));
    NB_CHECK(!nb_host_pattern_public("*.bbc.co.uk"));
    NB_CHECK(!nb_host_pattern_public("*.openai.com"));
    NB_CHECK(!nb_host_pattern_public("com"));
    NB_CHECK(!nb_host_pattern_public("api.openai.com"));
    NB_CHECK(!nb_host_pattern_public("*.googleapis.com")); /* private section: not counted */
    if (access(NB_PSL_FILE, R_OK) == 0)
        NB_CHECK(nb_host_pattern_public("*.k12.ak.us")); /* only the list knows this one */
}

static void test_A16_display_name(void)
{
    char out[128];
    NB_CHECK_STR(nb_rules_display_name("api.example.com", 15, out, sizeof(out)), "api.example.com");
    NB_CHECK_STR(nb_rules_display_name("a\x1b]52;c;Zm9v\x07", 13, out, sizeof(out)),
                 "a\\x1b]52;c;Zm9v\\x07");
    NB_CHECK_STR(nb_rules_display_name("x\r\nAllow: yes", 13, out, sizeof(out)),
                 "x\\x0d\\x0aAllow: yes");
    NB_CHECK_STR(nb_rules_display_name("a\\x41", 5, out, sizeof(out)), "a\\\\x41");
    NB_CHECK_STR(nb_rules_display_name("\xe2\x80\xae"
                                       "moc.evil",
                                       11, out, sizeof(out)),
                 "\\xe2\\x80\\xaemoc.evil"); /* RIGHT-TO-LEFT OVERRIDE shown, not obeyed */
    NB_CHECK_STR(nb_rules_display_name("a\0b", 3, out, sizeof(out)), "a\\x00b");
    /* Too long: the end (the real domain) stays visible. */
    char lng[400];
    memset(lng, 'a', sizeof(lng));
    memcpy(lng, "api.openai.com.", 15);
    memcpy(lng + sizeof(lng) - 13, ".evil.example", 13);
    nb_rules_display_name(lng, sizeof(lng), out, sizeof(out));
    NB_CHECK(strlen(out) < sizeof(out));
    NB_CHECK(strncmp(out, "[", 1) == 0 && strstr(out, " bytes cut]...") != NULL);
    NB_CHECK(strstr(out, "api.openai.com") == NULL);
    size_t ol = strlen(out);
    NB_CHECK(ol > 13 && strcmp(out + ol - 13, ".evil.example") == 0);
    /* Escapes are never cut in half. */
    char bin[300];
    memset(bin, 0x01, sizeof(bin));
    nb_rules_display_name(bin, sizeof(bin), out, sizeof(out));
    ol = strlen(out);
    NB_CHECK(ol < sizeof(out) && ol >= 4 && strcmp(out + ol - 4, "\\x01") == 0);
    char tiny[16] = "zz";
    NB_CHECK_STR(nb_rules_display_name("abc", 3, tiny, sizeof(tiny)), "");
}

static void test_db(void)
{
    sqlite3 *db = NULL;
    NB_CHECK(sqlite3_open(":memory:", &db) == SQLITE_OK);
    NB_CHECK(sqlite3_exec(db, nb_rules_migration_sql, NULL, NULL, NULL) == SQLITE_OK);
    NB_CHECK(sqlite3_exec(db, nb_rules_migration_sql, NULL, NULL, NULL) == SQLITE_OK);
    nb_rule_t a = mk(NB_RULE_ALLOW, "API.openai.com:443", NULL, 0);
    nb_rule_t b = mk(NB_RULE_DENY, "[fd00::]/8", "dev", 0);
    a.http = 1;
    snprintf(a.note, sizeof(a.note), "allow-always from prompt");
    NB_CHECK_EQ_INT(nb_rules_db_add(db, &a), 0);
    NB_CHECK_EQ_INT(nb_rules_db_add(db, &b), 0);
    NB_CHECK(a.id > 0 && b.id > a.id && a.created_at > 0);
    nb_rule_t dup = mk(NB_RULE_ALLOW, "api.openai.com:443", NULL, 0);
    NB_CHECK_EQ_INT(nb_rules_db_add(db, &dup), NB_EEXIST);
    nb_rule_t bad = dup;
    snprintf(bad.pattern, sizeof(bad.pattern), "Not Canonical");
    NB_CHECK_EQ_INT(nb_rules_db_add(db, &bad), NB_EINVAL);
    bad = dup;
    snprintf(bad.vm, sizeof(bad.vm), "a b");
    NB_CHECK_EQ_INT(nb_rules_db_add(db, &bad), NB_EINVAL);
    /* A row corrupted behind our back is skipped, not obeyed loosely. */
    sqlite3_exec(db,
                 "INSERT INTO egress_rules (action, dest, port, vm, created_at) "
                 "VALUES ('allow', '*', 0, '', 1)",
                 NULL, NULL, NULL);

    nb_ruleset_t rs = NB_RULESET_INIT;
    NB_CHECK_EQ_INT(nb_rules_db_load(db, &rs), 0);
    NB_CHECK_EQ_INT(rs.n, 2);
    if (rs.n == 2) {
        NB_CHECK_STR(rs.v[0].pattern, "api.openai.com");
        NB_CHECK(rs.v[0].port == 443 && rs.v[0].http == 1 && rs.v[0].action == NB_RULE_ALLOW);
        NB_CHECK_STR(rs.v[0].note, "allow-always from prompt");
        NB_CHECK_STR(rs.v[1].pattern, "fd00::/8");
        NB_CHECK_STR(rs.v[1].vm, "dev");
        NB_CHECK(rs.v[1].kind == NB_RULE_CIDR && rs.v[1].prefix == 8);
    }
    nb_ruleset_free(&rs);
    NB_CHECK_EQ_INT(nb_rules_db_rm(db, a.id), 0);
    NB_CHECK_EQ_INT(nb_rules_db_rm(db, a.id), NB_ENOTFOUND);
    NB_CHECK_EQ_INT(nb_rules_db_load(db, &rs), 0);
    NB_CHECK_EQ_INT(rs.n, 1);
    nb_ruleset_free(&rs);
    sqlite3_close(db);
}

int main(void)
{
    NB_RUN(test_hostname);
    NB_RUN(test_parse);
    NB_RUN(test_eval);
    NB_RUN(test_A13_internal);
    NB_RUN(test_A13_narrow);
    NB_RUN(test_public_suffix);
    NB_RUN(test_A16_display_name);
    NB_RUN(test_db);
    NB_TEST_MAIN_END();
}
