/* libFuzzer target for the fake-IP DNS (src/daemon/egress/fakedns.c).
 *
 * The input is one query message from the guest, answered by a small pool
 * that persists across runs (so eviction, expiry and reuse are exercised).
 * Checks: a reply is at most NB_DNS_REPLY_MAX bytes, carries the query's id
 * and the QR bit, and re-parses as a DNS header with the counts it claims
 * fitting in its length; an A answer is in 198.18.0.0/15 outside the
 * reserved /24 and maps back to the question's name; blocked names never
 * get an address. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "daemon/egress/fakedns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nb_fakedns_t *pool;
static uint64_t now;

static int policy(void *ud, const char *name)
{
    return strstr(name, "block") != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!pool) {
        if (sodium_init() < 0)
            abort();
        nb_fakedns_cfg_t cfg;
        nb_fakedns_cfg_default(&cfg);
        cfg.cap = 8;
        cfg.min_age_ms = 50;
        cfg.expire_ms = 500;
        if (nb_fakedns_new(&cfg, &pool) < 0)
            abort();
    }
    now += 7;
    uint8_t out[NB_DNS_REPLY_MAX];
    nb_fakedns_result_t res;
    size_t n =
        nb_fakedns_answer(pool, nb_iov(data, size), now, policy, NULL, out, sizeof out, &res);
    if (n == 0) {
        if (res.rcode != -1)
            abort();
        return 0;
    }
    if (n > sizeof out || n < NB_DNS_HDR_LEN || size < 2 || out[0] != data[0] ||
        out[1] != data[1] || !(out[2] & 0x80) || (out[3] & 0xf) != res.rcode)
        abort();
    unsigned qd = out[4] << 8 | out[5], an = out[6] << 8 | out[7];
    if (qd > 1 || an > 1 || (an && !qd))
        abort();
    if (res.ip) {
        char name[NB_HOSTNAME_BUFSZ];
        if (!nb_fakedns_in_range(res.ip) || (res.ip & 0xffffff00u) == NB_FAKEDNS_NET ||
            res.blocked || strstr(res.qname, "block"))
            abort();
        if (!nb_fakedns_lookup(pool, res.ip, now, name, sizeof name) ||
            strcmp(name, res.qname) != 0)
            abort();
    }
    return 0;
}
