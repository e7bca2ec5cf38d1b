#include "daemon/egress/rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "lib/err.h"
#include "lib/log.h"

/* AUTOINCREMENT: ids are never reused (see NB_RULES_AUTOINC_MIGRATION_SQL). */
const char nb_rules_migration_sql[] =
    "CREATE TABLE IF NOT EXISTS egress_rules ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT," NB_RULES_COLUMNS_SQL ");\n";

int nb_rules_vm_valid(const char *vm)
{
    size_t n = strlen(vm);
    if (n >= NB_RULES_VM_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = vm[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

static int parse_uint(const char *s, size_t len, unsigned max, unsigned *out)
{
    unsigned v = 0;
    if (len == 0 || len > 5 || (len > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static void mask_net(nb_ipaddr_t *ip, int prefix)
{
    int bits = ip->family == AF_INET ? 32 : 128;
    for (int i = prefix; i < bits; i++)
        ip->a[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
}

static int prefix_eq(const uint8_t *a, const uint8_t *b, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, b, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t m = (uint8_t)(0xffu << (8 - rest));
    return (a[full] & m) == (b[full] & m);
}

int nb_rule_parse(const char *spec, nb_rule_t *r)
{
    size_t len = strlen(spec);
    if (len == 0 || len > NB_HOSTNAME_MAX + 64)
        return NB_EINVAL;
    const char *host = spec, *pfx = NULL, *port = NULL;
    size_t hlen = len, pfxlen = 0, portlen = 0;
    const char *end = spec + len;

    /* Split off ":port", then "/prefix". */
    if (spec[0] == '[') {
        const char *close = memchr(spec, ']', len);
        if (!close)
            return NB_EINVAL;
        const char *p = close + 1;
        hlen = (size_t)(p - spec);
        if (p < end && *p == '/') {
            pfx = p + 1;
            const char *c = memchr(pfx, ':', (size_t)(end - pfx));
            pfxlen = (size_t)((c ? c : end) - pfx);
            p = pfx + pfxlen;
        }
        if (p < end) {
            if (*p != ':')
                return NB_EINVAL;
            port = p + 1;
            portlen = (size_t)(end - port);
        }
    } else {
        size_t colons = 0;
        for (size_t i = 0; i < len; i++)
            colons += spec[i] == ':';
        if (colons == 1) {
            const char *c = memchr(spec, ':', len);
            hlen = (size_t)(c - spec);
            port = c + 1;
            portlen = (size_t)(end - port);
        }
        const char *slash = memchr(spec, '/', hlen);
        if (slash) {
            pfx = slash + 1;
            pfxlen = (size_t)(spec + hlen - pfx);
            hlen = (size_t)(slash - spec);
        }
    }

    /* "host[:PORT]": the host-service name (rules.h). */
    if (hlen == 4 && !pfx && strncasecmp(host, "host", 4) == 0) {
        host = NB_HOST_SERVICE_NAME;
        hlen = strlen(NB_HOST_SERVICE_NAME);
    }
    unsigned pv = 0;
    if (port) {
        if (portlen == 1 && port[0] == '*')
            pv = 0;
        else if (parse_uint(port, portlen, 65535, &pv) < 0 || pv == 0)
            return NB_EINVAL;
    }
    nb_ipaddr_t ip;
    if (nb_ip_parse(host, hlen, &ip)) {
        int bits = ip.family == AF_INET ? 32 : 128;
        unsigned pl = (unsigned)bits;
        /* "::ffff:10.0.0.0/104" arrives as IPv4: shift the prefix with it. */
        int mapped = ip.family == AF_INET && memchr(host, ':', hlen) != NULL;
        if (pfx && parse_uint(pfx, pfxlen, mapped ? 128 : (unsigned)bits, &pl) < 0)
            return NB_EINVAL;
        if (mapped && pfx) {
            if (pl < 96)
                return NB_EINVAL;
            pl -= 96;
        }
        mask_net(&ip, (int)pl);
        r->kind = NB_RULE_CIDR;
        r->net = ip;
        r->prefix = (int)pl;
        char a[64];
        snprintf(r->pattern, sizeof(r->pattern), "%s/%u", nb_ip_format(&ip, a, sizeof(a)), pl);
    } else {
        if (pfx)
            return NB_EINVAL;
        char norm[NB_RULES_PATTERN_MAX];
        if (nb_host_pattern_normalize(host, hlen, norm, sizeof(norm)) < 0)
            return NB_EINVAL;
        r->kind = norm[0] == '*' ? NB_RULE_SUFFIX : NB_RULE_NAME;
        memcpy(r->pattern, norm, sizeof(norm));
        memset(&r->net, 0, sizeof(r->net));
        r->prefix = 0;
    }
    r->port = (uint16_t)pv;
    return 0;
}

int nb_dest_set(nb_dest_t *d, const char *vm, const char *host, size_t len, uint16_t port)
{
    memset(d, 0, sizeof(*d));
    if (vm) {
        if (!nb_rules_vm_valid(vm))
            return NB_EINVAL;
        snprintf(d->vm, sizeof(d->vm), "%s", vm);
    }
    d->port = port;
    if (nb_ip_parse(host, len, &d->ip)) {
        d->is_ip = 1;
        return 0;
    }
    if (nb_hostname_normalize(host, len, d->name, sizeof(d->name)) < 0)
        return NB_EINVAL;
    return 0;
}

/* 1 when rule `r` applies to `d` (scope, port and pattern). */
int nb_rule_match(const nb_rule_t *r, const nb_dest_t *d)
{
    if (r->vm[0] && strcmp(r->vm, d->vm) != 0)
        return 0;
    if (r->port && r->port != d->port)
        return 0;
    switch (r->kind) {
    case NB_RULE_NAME:
        return !d->is_ip && strcmp(r->pattern, d->name) == 0;
    case NB_RULE_SUFFIX:
        return !d->is_ip && nb_host_pattern_match(r->pattern, d->name);
    case NB_RULE_CIDR:
        return d->is_ip && d->ip.family == r->net.family && prefix_eq(d->ip.a, r->net.a, r->prefix);
    default:
        return 0;
    }
}

int nb_ruleset_add(nb_ruleset_t *rs, const nb_rule_t *r)
{
    if (rs->n == rs->cap) {
        size_t nc = rs->cap ? rs->cap * 2 : 16;
        nb_rule_t *nv = realloc(rs->v, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        rs->v = nv;
        rs->cap = nc;
    }
    rs->v[rs->n++] = *r;
    return 0;
}

int nb_ruleset_remove(nb_ruleset_t *rs, int64_t id)
{
    for (size_t i = 0; i < rs->n; i++) {
        if (rs->v[i].id == id) {
            memmove(&rs->v[i], &rs->v[i + 1], (rs->n - i - 1) * sizeof(rs->v[0]));
            rs->n--;
            return 0;
        }
    }
    return NB_ENOTFOUND;
}

void nb_ruleset_free(nb_ruleset_t *rs)
{
    free(rs->v);
    rs->v = NULL;
    rs->n = rs->cap = 0;
}

/* Higher is more specific; see nb_rules_eval's contract. */
static long specificity(const nb_rule_t *r)
{
    long s = 0;
    if (r->vm[0])
        s += 1L << 20;
    if (r->kind == NB_RULE_NAME)
        s += 3L << 16;
    else if (r->kind == NB_RULE_SUFFIX)
        s += (2L << 16) + (long)strlen(r->pattern);
    else
        s += (1L << 16) + r->prefix;
    if (r->port)
        s += 1L << 12;
    return s;
}

static const nb_rule_t *best_match(const nb_ruleset_t *rs, const nb_dest_t *d, int action)
{
    const nb_rule_t *best = NULL;
    long bs = -1;
    for (size_t i = 0; i < rs->n; i++) {
        const nb_rule_t *r = &rs->v[i];
        if (r->action != action || !nb_rule_match(r, d))
            continue;
        long s = specificity(r);
        if (s > bs) {
            best = r;
            bs = s;
        }
    }
    return best;
}

const nb_rule_t *nb_rules_exact_allow(const nb_ruleset_t *rs, const nb_dest_t *d)
{
    if (d->is_ip)
        return NULL;
    for (size_t i = 0; i < rs->n; i++) {
        const nb_rule_t *r = &rs->v[i];
        if (r->action == NB_RULE_ALLOW && r->kind == NB_RULE_NAME &&
            (!r->vm[0] || strcmp(r->vm, d->vm) == 0) &&
            (!r->port || !d->port || r->port == d->port) && strcmp(r->pattern, d->name) == 0)
            return r;
    }
    return NULL;
}

void nb_rules_eval(const nb_ruleset_t *rs, const nb_dest_t *d, nb_blocklist_fn bl, void *blctx,
                   nb_gate_result_t *res)
{
    memset(res, 0, sizeof(*res));
    const nb_rule_t *r = best_match(rs, d, NB_RULE_DENY);
    if (r) {
        res->decision = NB_GATE_DENY;
        res->reason = NB_GATE_R_DENY_RULE;
        res->rule_id = r->id;
        return;
    }
    if (bl && !d->is_ip && bl(blctx, d) && !nb_rules_exact_allow(rs, d)) {
        res->decision = NB_GATE_DENY;
        res->reason = NB_GATE_R_BLOCKLIST;
        return;
    }
    r = best_match(rs, d, NB_RULE_ALLOW);
    if (r) {
        res->decision = NB_GATE_ALLOW;
        res->reason = NB_GATE_R_ALLOW_RULE;
        res->rule_id = r->id;
        res->http = r->http;
        return;
    }
    res->decision = NB_GATE_PROMPT;
    res->reason = NB_GATE_R_NO_RULE;
}

/* ---- A13: internal addresses --------------------------------------------- */

typedef struct {
    uint8_t a[16];
    int prefix;
    const char *kind;
} range_t;

static const range_t v4_ranges[] = {
    {{0, 0, 0, 0}, 8, "unspecified"},     {{10, 0, 0, 0}, 8, "private"},
    {{100, 64, 0, 0}, 10, "private"}, /* carrier-grade NAT */
    {{127, 0, 0, 0}, 8, "loopback"},      {{169, 254, 169, 254}, 32, "metadata"},
    {{169, 254, 0, 0}, 16, "link-local"}, {{172, 16, 0, 0}, 12, "private"},
    {{192, 0, 0, 0}, 24, "reserved"},     {{192, 0, 2, 0}, 24, "reserved"},
    {{192, 88, 99, 0}, 24, "reserved"},   {{192, 168, 0, 0}, 16, "private"},
    {{198, 18, 0, 0}, 15, "fake-ip"},     {{198, 51, 100, 0}, 24, "reserved"},
    {{203, 0, 113, 0}, 24, "reserved"},   {{224, 0, 0, 0}, 4, "multicast"},
    {{240, 0, 0, 0}, 4, "reserved"}, /* includes 255.255.255.255 */
};

static const range_t v6_ranges[] = {
    {{0}, 128, "unspecified"},
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "loopback"},
    {{0}, 96, "reserved"},                                  /* IPv4-compatible, deprecated */
    {{0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 96, "reserved"}, /* IPv4-translated (SIIT) */
    {{0, 0x64, 0xff, 0x9b, 0, 1}, 48, "private"},           /* local-use NAT64 */
    {{0x01, 0x00}, 64, "reserved"},                         /* discard-only */
    {{0x20, 0x01, 0x0d, 0xb8}, 32, "reserved"},             /* documentation */
    {{0x20, 0x01, 0x00, 0x00}, 32, "reserved"},             /* Teredo: hides an IPv4 */
    {{0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54}, 128, "metadata"},
    {{0xfc}, 7, "private"},
    {{0xfe, 0x80}, 10, "link-local"},
    {{0xfe, 0xc0}, 10, "private"}, /* site-local, deprecated */
    {{0xff}, 8, "multicast"},
};

/* The internal range `ip` lies in (the most specific one: the tables list
 * narrow ranges before the wider ones around them), as a network of
 * ip->family. IPv6 forms that embed an IPv4 address (NAT64, 6to4) get the
 * embedded range shifted into their own prefix. 0 for a public address. */
static int internal_range(const nb_ipaddr_t *ip, nb_ipaddr_t *net, int *prefix, const char **kind)
{
    const range_t *tab = ip->family == AF_INET ? v4_ranges : v6_ranges;
    size_t n = ip->family == AF_INET ? sizeof(v4_ranges) / sizeof(v4_ranges[0])
                                     : sizeof(v6_ranges) / sizeof(v6_ranges[0]);
    for (size_t i = 0; i < n; i++) {
        if (prefix_eq(ip->a, tab[i].a, tab[i].prefix)) {
            memset(net, 0, sizeof(*net));
            net->family = ip->family;
            memcpy(net->a, tab[i].a, sizeof(net->a));
            *prefix = tab[i].prefix;
            *kind = tab[i].kind;
            return 1;
        }
    }
    if (ip->family != AF_INET6)
        return 0;
    /* Forms that carry an IPv4 address: judge the embedded one. */
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
    nb_ipaddr_t v4 = {.family = AF_INET}, v4net;
    int off, v4prefix;
    if (memcmp(ip->a, nat64, 12) == 0)
        off = 12;
    else if (ip->a[0] == 0x20 && ip->a[1] == 0x02) /* 6to4 2002:AABB:CCDD::/48 */
        off = 2;
    else
        return 0;
    memcpy(v4.a, ip->a + off, 4);
    if (!internal_range(&v4, &v4net, &v4prefix, kind))
        return 0;
    *net = *ip;
    memset(net->a + off, 0, sizeof(net->a) - (size_t)off);
    memcpy(net->a + off, v4net.a, 4);
    *prefix = off * 8 + v4prefix;
    return 1;
}

const char *nb_ip_internal_kind(const nb_ipaddr_t *ip)
{
    nb_ipaddr_t net;
    int prefix;
    const char *kind;
    return internal_range(ip, &net, &prefix, &kind) ? kind : NULL;
}

/* 1 when CIDR net/prefix lies inside inet/iprefix (same family). */
static int cidr_within(const nb_ipaddr_t *net, int prefix, const nb_ipaddr_t *inet, int iprefix)
{
    return net->family == inet->family && prefix >= iprefix && prefix_eq(net->a, inet->a, iprefix);
}

int nb_rules_addr_allowed(const nb_ruleset_t *rs, const char *vm, const nb_ipaddr_t *addr,
                          uint16_t port)
{
    nb_dest_t d;
    memset(&d, 0, sizeof(d));
    if (vm)
        snprintf(d.vm, sizeof(d.vm), "%s", vm);
    d.is_ip = 1;
    d.ip = *addr;
    d.port = port;
    if (best_match(rs, &d, NB_RULE_DENY))
        return 0;
    nb_ipaddr_t inet;
    int iprefix;
    const char *kind;
    int internal = internal_range(addr, &inet, &iprefix, &kind);
    /* A connection to 0.0.0.0 or :: reaches the host itself, and TCP to a
     * multicast group is meaningless: no rule opens them (loopback is
     * opened by naming 127.0.0.0/8 or ::1). */
    if (internal && (strcmp(kind, "unspecified") == 0 || strcmp(kind, "multicast") == 0))
        return 0;
    for (size_t i = 0; i < rs->n; i++) {
        const nb_rule_t *r = &rs->v[i];
        if (r->action != NB_RULE_ALLOW || r->kind != NB_RULE_CIDR || !nb_rule_match(r, &d))
            continue;
        /* A13: an internal address needs a rule that names its range
         * narrowly (127.0.0.0/8 or inside it, 169.254.169.254/32 for the
         * metadata address); 0.0.0.0/0, ::/0 or 10.0.0.0/7 cover it
         * without meaning it. */
        if (!internal || cidr_within(&r->net, r->prefix, &inet, iprefix))
            return 1;
    }
    return 0;
}

size_t nb_rule_broad_warning(const nb_rule_t *r, char *out, size_t outsz)
{
    if (outsz)
        out[0] = '\0';
    if (r->kind != NB_RULE_CIDR || r->action != NB_RULE_ALLOW || outsz < 64)
        return 0;
    const range_t *tab = r->net.family == AF_INET ? v4_ranges : v6_ranges;
    size_t n = r->net.family == AF_INET ? sizeof(v4_ranges) / sizeof(v4_ranges[0])
                                        : sizeof(v6_ranges) / sizeof(v6_ranges[0]);
    const char *kinds[16];
    size_t nk = 0;
    char example[64] = "";
    for (size_t i = 0; i < n; i++) {
        nb_ipaddr_t rnet = {.family = r->net.family};
        memcpy(rnet.a, tab[i].a, sizeof(rnet.a));
        /* The rule strictly contains this internal range without lying
         * inside it: it does not open it (nb_rules_addr_allowed). */
        if (r->prefix >= tab[i].prefix || !prefix_eq(rnet.a, r->net.a, r->prefix))
            continue;
        if (cidr_within(&r->net, r->prefix, &rnet, tab[i].prefix))
            continue;
        size_t k;
        for (k = 0; k < nk && strcmp(kinds[k], tab[i].kind) != 0; k++)
            ;
        if (k == nk && nk < sizeof(kinds) / sizeof(kinds[0]))
            kinds[nk++] = tab[i].kind;
        if (!example[0]) {
            char a[64];
            snprintf(example, sizeof(example), "%s/%d", nb_ip_format(&rnet, a, sizeof(a)),
                     tab[i].prefix);
        }
    }
    if (!nk)
        return 0;
    size_t o = (size_t)snprintf(out, outsz, "%s covers internal ranges (", r->pattern);
    for (size_t k = 0; k < nk && o < outsz; k++)
        o += (size_t)snprintf(out + o, outsz - o, "%s%s", k ? ", " : "", kinds[k]);
    if (o < outsz)
        o += (size_t)snprintf(out + o, outsz - o,
                              ") but does not open them (A13): an internal address is reached "
                              "only through a rule inside its own range, e.g. %s",
                              example);
    return o < outsz ? o : outsz - 1;
}

/* ---- A16: names shown to people ------------------------------------------- */

static size_t esc_len(unsigned char c)
{
    return (c >= 0x20 && c < 0x7f) ? (c == '\\' ? 2 : 1) : 4;
}

static size_t esc_put(char *o, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    if (c >= 0x20 && c < 0x7f && c != '\\') {
        o[0] = (char)c;
        return 1;
    }
    if (c == '\\') {
        o[0] = o[1] = '\\';
        return 2;
    }
    o[0] = '\\';
    o[1] = 'x';
    o[2] = hex[c >> 4];
    o[3] = hex[c & 15];
    return 4;
}

char *nb_rules_display_name(const void *p, size_t len, char *out, size_t outsz)
{
    const unsigned char *s = p;
    size_t total = 0;
    if (outsz < 64) {
        if (outsz)
            out[0] = '\0';
        return out;
    }
    for (size_t i = 0; i < len; i++)
        total += esc_len(s[i]);
    size_t o = 0;
    if (total < outsz) {
        for (size_t i = 0; i < len; i++)
            o += esc_put(out + o, s[i]);
        out[o] = '\0';
        return out;
    }
    /* Keep the tail: "api.openai.com.<junk>.evil.example" must not show
     * as "api.openai.com...". Find how many tail bytes fit after the marker. */
    char marker[40];
    size_t room = outsz - 1 - 32; /* 32 >= the marker's longest form */
    size_t start = len, used = 0;
    while (start > 0 && used + esc_len(s[start - 1]) <= room)
        used += esc_len(s[--start]);
    int m = snprintf(marker, sizeof(marker), "[%zu bytes cut]...", start);
    memcpy(out, marker, (size_t)m);
    o = (size_t)m;
    for (size_t i = start; i < len; i++)
        o += esc_put(out + o, s[i]);
    out[o] = '\0';
    return out;
}

/* ---- persistence ----------------------------------------------------------- */

static int db_err(sqlite3 *db, const char *what)
{
    nb_log(NB_LOG_ERR, "rules: %s: %s", what, sqlite3_errmsg(db));
    return sqlite3_errcode(db) == SQLITE_CONSTRAINT ? NB_EEXIST : NB_EINTERNAL;
}

int nb_rules_db_add(sqlite3 *db, nb_rule_t *r)
{
    if ((r->action != NB_RULE_ALLOW && r->action != NB_RULE_DENY) || !r->pattern[0] ||
        !memchr(r->vm, 0, sizeof(r->vm)) || !nb_rules_vm_valid(r->vm) ||
        !memchr(r->note, 0, sizeof(r->note)))
        return NB_EINVAL;
    /* Store only what parses back to itself. */
    nb_rule_t chk = *r;
    if (nb_rule_parse(r->pattern, &chk) < 0 || strcmp(chk.pattern, r->pattern) != 0)
        return NB_EINVAL;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO egress_rules (action, dest, port, vm, http, note, "
                           "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(db, "prepare");
    r->created_at = (int64_t)time(NULL);
    sqlite3_bind_text(st, 1, r->action == NB_RULE_ALLOW ? "allow" : "deny", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->pattern, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, r->port);
    sqlite3_bind_text(st, 4, r->vm, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, r->http ? 1 : 0);
    sqlite3_bind_text(st, 6, r->note, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, r->created_at);
    int rc = 0;
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_err(db, "add");
    else
        r->id = sqlite3_last_insert_rowid(db);
    sqlite3_finalize(st);
    return rc;
}

int nb_rules_db_rm(sqlite3 *db, int64_t id)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "DELETE FROM egress_rules WHERE id = ?", -1, &st, NULL) != SQLITE_OK)
        return db_err(db, "prepare");
    sqlite3_bind_int64(st, 1, id);
    int rc;
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_err(db, "rm");
    else
        rc = sqlite3_changes(db) == 1 ? 0 : NB_ENOTFOUND;
    sqlite3_finalize(st);
    return rc;
}

int nb_rules_db_load(sqlite3 *db, nb_ruleset_t *rs)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, action, dest, port, vm, http, note, created_at "
                           "FROM egress_rules ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(db, "prepare");
    int step, rc = 0;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        nb_rule_t r;
        memset(&r, 0, sizeof(r));
        r.id = sqlite3_column_int64(st, 0);
        const char *action = (const char *)sqlite3_column_text(st, 1);
        const char *dest = (const char *)sqlite3_column_text(st, 2);
        const char *vm = (const char *)sqlite3_column_text(st, 4);
        const char *note = (const char *)sqlite3_column_text(st, 6);
        int port = sqlite3_column_int(st, 3);
        r.action = !action                        ? 0
                   : strcmp(action, "allow") == 0 ? NB_RULE_ALLOW
                   : strcmp(action, "deny") == 0  ? NB_RULE_DENY
                                                  : 0;
        if (!r.action || !dest || nb_rule_parse(dest, &r) < 0 || port < 0 || port > 65535 || !vm ||
            strlen(vm) >= sizeof(r.vm) || !nb_rules_vm_valid(vm)) {
            nb_log(NB_LOG_ERR, "rules: row %lld does not parse; ignored", (long long)r.id);
            continue;
        }
        r.port = (uint16_t)port;
        snprintf(r.vm, sizeof(r.vm), "%s", vm);
        snprintf(r.note, sizeof(r.note), "%s", note ? note : "");
        r.http = sqlite3_column_int(st, 5) != 0;
        r.created_at = sqlite3_column_int64(st, 7);
        if ((rc = nb_ruleset_add(rs, &r)) < 0)
            break;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = db_err(db, "load");
    sqlite3_finalize(st);
    return rc;
}
