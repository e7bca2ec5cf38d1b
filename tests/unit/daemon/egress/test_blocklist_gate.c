/* The blocklist in the gate and in the fake-IP DNS, with a real signed
 * filter: deny rules -> blocklist -> allow rules -> prompt; an exact-name
 * allow rule overrides it (port-wise, and for DNS, which asks without a
 * port), a wildcard allow rule does not; setting the blocklist re-judges
 * pending prompts; blocked names get NXDOMAIN from the DNS through the
 * same verdict guestsvc.c uses. */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>

#include "lib/blocklist.h"
#include "daemon/egress/fakedns.h"
#include "daemon/egress/gate.h"
#include "daemon/egress/rules.h"
#include "lib/err.h"
#include "nbtest.h"

static nb_bl_t *g_bl;

static int hook(void *ctx, const nb_dest_t *d)
{
    return !d->is_ip && nb_bl_lookup(ctx, d->name, NULL);
}

static nb_dest_t dest(const char *vm, const char *host, uint16_t port)
{
    nb_dest_t d;
    NB_CHECK_EQ_INT(nb_dest_set(&d, vm, host, strlen(host), port), 0);
    return d;
}

static void add_rule(nb_gate_t *g, const char *spec, int action, const char *vm, int64_t id)
{
    nb_rule_t r;
    memset(&r, 0, sizeof r);
    NB_CHECK_EQ_INT(nb_rule_parse(spec, &r), 0);
    r.action = action;
    r.id = id;
    snprintf(r.vm, sizeof r.vm, "%s", vm);
    NB_CHECK_EQ_INT(nb_gate_rule_added(g, &r), 0);
}

static void on_done(void *ud, const nb_gate_verdict_t *v)
{
    *(nb_gate_verdict_t *)ud = *v;
}

/* 1 allowed, 0 denied, -1 prompt; *why the reason. */
static int judge(nb_gate_t *g, const char *vm, const char *host, uint16_t port, int *why)
{
    nb_dest_t d = dest(vm, host, port);
    nb_gate_verdict_t v, later;
    nb_gate_wait_t *w = NULL;
    if (!nb_gate_check(g, &d, &v, on_done, &later, &w)) {
        nb_gate_cancel(w);
        return -1;
    }
    *why = v.why;
    return v.allowed;
}

static void test_gate_order_and_override(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    nb_gate_cfg_t cfg;
    nb_gate_cfg_default(&cfg);
    nb_gate_t *g = NULL;
    NB_CHECK_EQ_INT(nb_gate_new(&loop, &cfg, &g), 0);
    /* A prompt pending for a name, then the list arrives: re-judged. */
    nb_dest_t d = dest("a", "x.evil.com", 443);
    nb_gate_verdict_t v, later = {0};
    nb_gate_wait_t *w = NULL;
    later.why = -1;
    NB_CHECK_EQ_INT(nb_gate_check(g, &d, &v, on_done, &later, &w), 0);
    uint64_t gen = nb_gate_generation(g);
    nb_gate_set_blocklist(g, hook, g_bl);
    NB_CHECK(nb_gate_generation(g) > gen);
    NB_CHECK(later.why == NB_GATE_WHY_BLOCKLIST && !later.allowed);
    NB_CHECK_EQ_INT(nb_gate_prompts(g, NULL, 0), 0);

    int why = 0;
    NB_CHECK_EQ_INT(judge(g, "a", "evil.com", 443, &why), 0);
    NB_CHECK_EQ_INT(why, NB_GATE_WHY_BLOCKLIST);
    NB_CHECK_EQ_INT(judge(g, "a", "A.B.EVIL.COM", 80, &why), 0);
    NB_CHECK_EQ_INT(why, NB_GATE_WHY_BLOCKLIST);
    NB_CHECK_EQ_INT(judge(g, "a", "good.example", 443, &why), -1); /* prompted as usual */
    /* IP destinations are never looked up. */
    NB_CHECK_EQ_INT(judge(g, "a", "93.184.216.34", 443, &why), -1);
    /* Wildcard allow rules do not override. */
    add_rule(g, "*.evil.com", NB_RULE_ALLOW, "", 1);
    NB_CHECK_EQ_INT(judge(g, "a", "api.evil.com", 443, &why), 0);
    NB_CHECK_EQ_INT(why, NB_GATE_WHY_BLOCKLIST);
    /* An exact allow rule does, for its port (and VM) only. */
    add_rule(g, "api.evil.com:443", NB_RULE_ALLOW, "", 2);
    NB_CHECK_EQ_INT(judge(g, "a", "api.evil.com", 443, &why), 1);
    NB_CHECK_EQ_INT(why, NB_GATE_WHY_ALLOW_RULE);
    NB_CHECK_EQ_INT(judge(g, "a", "api.evil.com", 80, &why), 0);
    NB_CHECK_EQ_INT(why, NB_GATE_WHY_BLOCKLIST);
    NB_CHECK_EQ_INT(judge(g, "a", "x.api.evil.com", 443, &why), 0);
    add_rule(g, "cdn.evil.com", NB_RULE_ALLOW, "b", 3);
    NB_CHECK_EQ_INT(judge(g, "a", "cdn.evil.com", 443, &why), 0);
    NB_CHECK_EQ_INT(judge(g, "b", "cdn.evil.com", 443, &why), 1);
    /* A deny rule still comes first. */
    add_rule(g, "api.evil.com", NB_RULE_DENY, "", 4);
    NB_CHECK_EQ_INT(judge(g, "a", "api.evil.com", 443, &why), 0);
    NB_CHECK_EQ_INT(why, NB_GATE_WHY_DENY_RULE);
    /* DNS asks without a port: the exact rule (any port) lets it resolve. */
    nb_dest_t dd = dest("b", "cdn.evil.com", 0);
    NB_CHECK_EQ_INT(nb_gate_rules_verdict(g, &dd, &v), 1);
    NB_CHECK(v.allowed && v.why == NB_GATE_WHY_ALLOW_RULE);
    dd = dest("a", "api.evil.com", 0); /* "api.evil.com:443" is exact too, but denied above */
    NB_CHECK_EQ_INT(nb_gate_rules_verdict(g, &dd, &v), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_DENY_RULE);
    dd = dest("a", "cdn.evil.com", 0);
    NB_CHECK_EQ_INT(nb_gate_rules_verdict(g, &dd, &v), 1);
    NB_CHECK(!v.allowed && v.why == NB_GATE_WHY_BLOCKLIST);
    /* Removing the hook: nothing is blocked by it any more. */
    nb_gate_set_blocklist(g, NULL, NULL);
    NB_CHECK_EQ_INT(judge(g, "a", "evil.com", 443, &why), -1);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* What guestsvc.c's dns_policy does. */
typedef struct {
    nb_gate_t *g;
    int why;
} pol_t;

static int dns_policy(void *ud, const char *name)
{
    pol_t *p = ud;
    nb_dest_t d;
    if (nb_dest_set(&d, "a", name, strlen(name), 0) < 0)
        return 1;
    nb_gate_verdict_t v;
    if (!nb_gate_rules_verdict(p->g, &d, &v) || v.allowed)
        return 0;
    p->why = v.why;
    return 1;
}

static size_t query(uint8_t *q, const char *name)
{
    static const uint8_t hdr[12] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    memcpy(q, hdr, 12);
    size_t o = 12;
    for (const char *p = name; *p;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        q[o++] = (uint8_t)l;
        memcpy(q + o, p, l);
        o += l;
        p += l + (dot ? 1 : 0);
    }
    q[o++] = 0;
    q[o++] = 0;
    q[o++] = NB_DNS_T_A;
    q[o++] = 0;
    q[o++] = 1;
    return o;
}

static void test_dns_nxdomain(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    nb_gate_t *g = NULL;
    NB_CHECK_EQ_INT(nb_gate_new(&loop, NULL, &g), 0);
    nb_gate_set_blocklist(g, hook, g_bl);
    nb_fakedns_cfg_t cfg;
    nb_fakedns_cfg_default(&cfg);
    nb_fakedns_t *f = NULL;
    NB_CHECK_EQ_INT(nb_fakedns_new(&cfg, &f), 0);
    uint8_t q[300], r[NB_DNS_REPLY_MAX];
    nb_fakedns_result_t res;
    pol_t pol = {g, 0};
    size_t ql = query(q, "a.b.evil.com");
    NB_CHECK(nb_fakedns_answer(f, nb_iov(q, ql), 1000, dns_policy, &pol, r, sizeof r, &res) > 0);
    NB_CHECK(res.rcode == NB_DNS_NXDOMAIN && res.blocked && res.ip == 0);
    NB_CHECK_STR(nb_gate_why_name(pol.why), "blocklist");
    ql = query(q, "good.example");
    NB_CHECK(nb_fakedns_answer(f, nb_iov(q, ql), 1000, dns_policy, &pol, r, sizeof r, &res) > 0);
    NB_CHECK(res.rcode == NB_DNS_NOERROR && !res.blocked && nb_fakedns_in_range(res.ip));
    nb_fakedns_free(f);
    nb_gate_free(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    NB_CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    uint8_t pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    /* The key is random: a fixed unlisted name is a false positive with
     * probability 1/256 a probe. Build again until "good.example" is not
     * one, so the test is deterministic. */
    for (int i = 0; i < 50 && !g_bl; i++) {
        nb_bl_builder_t *b;
        NB_CHECK(nb_bl_builder_new(&b) == 0);
        nb_bl_builder_add(b, "evil.com", 8);
        uint8_t *img;
        size_t len;
        char err[200];
        NB_CHECK(nb_bl_builder_finish(b, sk, 1, &img, &len, err, sizeof err) == 0);
        nb_bl_builder_free(b);
        NB_CHECK(nb_bl_open(img, len, &pk, 1, &g_bl, err, sizeof err) == 0);
        if (nb_bl_lookup(g_bl, "good.example", NULL)) {
            nb_bl_free(g_bl);
            g_bl = NULL;
        }
    }
    NB_CHECK(g_bl != NULL);
    NB_RUN(test_gate_order_and_override);
    NB_RUN(test_dns_nxdomain);
    nb_bl_free(g_bl);
    NB_TEST_MAIN_END();
}
