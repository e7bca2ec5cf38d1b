/* Fake-IP DNS: message parsing/answering and the per-VM pool; see
 * fakedns.h. */
#include "daemon/egress/fakedns.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/err.h"

/* ---------------------------------------------------------------- wire */

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* One parsed query. `qname` is the question's name as dotted text (ASCII
 * lower-cased, no trailing dot, "" for the root); `name_ok` is 1 when it is
 * a valid host name (nb_hostname_normalize) and then `qname` is that
 * normalised form. `wire_q` points into the message: the question as sent
 * (name, type, class), echoed in the reply. */
typedef struct {
    uint16_t id;
    uint16_t flags;
    uint16_t qtype, qclass;
    char qname[NB_HOSTNAME_BUFSZ];
    int name_ok;
    nb_iov_t wire_q;
    int edns;
} dns_query_t;

#define F_QR 0x8000u
#define F_AA 0x0400u
#define F_RD 0x0100u
#define F_RA 0x0080u
#define WIRE_NAME_MAX 255

/* Parses a query message (untrusted, `msg.len` bytes). Returns:
 *   0                a well-formed standard query with one question;
 *   NB_DNS_FORMERR / NB_DNS_NOTIMP (> 0)
 *                    the header is readable (q->id, q->flags set) but the
 *                    rest is malformed / not a standard query: answer with
 *                    that rcode and no question;
 *   NB_EPARSE (< 0)  no answer is possible (shorter than a header, or a
 *                    response rather than a query): drop it.
 * Rejects compression pointers in the question, labels over 63 bytes,
 * names over 255 wire bytes, counts other than 1 question / 0 answers / 0
 * authority / at most one OPT record, and trailing bytes. */
static int dns_parse_query(nb_iov_t msg, dns_query_t *q)
{
    memset(q, 0, sizeof *q);
    const uint8_t *m = msg.p;
    size_t len = msg.len;
    if (len < NB_DNS_HDR_LEN)
        return NB_EPARSE;
    q->id = get16(m);
    q->flags = get16(m + 2);
    if (q->flags & F_QR)
        return NB_EPARSE; /* a response: never answer one (no reflection loops) */
    if (((q->flags >> 11) & 0xf) != 0)
        return NB_DNS_NOTIMP; /* only standard queries */
    if (len > NB_DNS_QUERY_MAX)
        return NB_DNS_FORMERR;
    uint16_t qd = get16(m + 4), an = get16(m + 6), ns = get16(m + 8), ar = get16(m + 10);
    if (qd != 1 || an != 0 || ns != 0 || ar > 1)
        return NB_DNS_FORMERR;

    /* The question's name, label by label; no compression in a question. */
    char text[NB_HOSTNAME_BUFSZ + 64];
    size_t tlen = 0, pos = NB_DNS_HDR_LEN, wire = 0;
    int printable = 1;
    for (;;) {
        if (pos >= len)
            return NB_DNS_FORMERR;
        uint8_t l = m[pos++];
        wire++;
        if (l == 0)
            break;
        if (l & 0xc0)
            return NB_DNS_FORMERR; /* a pointer, or a reserved label type */
        if (l > len - pos || wire + l + 1 > WIRE_NAME_MAX)
            return NB_DNS_FORMERR;
        if (tlen)
            text[tlen++] = '.';
        for (uint8_t i = 0; i < l; i++) {
            uint8_t c = m[pos + i];
            if (c >= 'A' && c <= 'Z')
                c = (uint8_t)(c - 'A' + 'a');
            if (c <= 0x20 || c >= 0x7f || c == '.') {
                printable = 0;
                c = '?';
            }
            text[tlen++] = (char)c;
        }
        pos += l;
        wire += l;
    }
    if (len - pos < 4)
        return NB_DNS_FORMERR;
    q->qtype = get16(m + pos);
    q->qclass = get16(m + pos + 2);
    pos += 4;
    q->wire_q = nb_iov(m + NB_DNS_HDR_LEN, pos - NB_DNS_HDR_LEN);

    if (ar == 1) {
        /* Only an EDNS OPT record: root name, type 41, then the fixed
         * fields and its own data, which must end the message. */
        if (len - pos < 11 || m[pos] != 0 || get16(m + pos + 1) != NB_DNS_T_OPT)
            return NB_DNS_FORMERR;
        size_t rdlen = get16(m + pos + 9);
        pos += 11;
        if (rdlen > len - pos)
            return NB_DNS_FORMERR;
        pos += rdlen;
        q->edns = 1;
    }
    if (pos != len)
        return NB_DNS_FORMERR;

    /* tlen <= 253: at most 255 wire bytes, minus the first length byte and
     * the root label. */
    text[tlen] = '\0';
    if (printable && tlen &&
        nb_hostname_normalize(text, tlen, q->qname, sizeof q->qname) == (int)tlen) {
        q->name_ok = 1;
    } else {
        memcpy(q->qname, text, tlen + 1);
    }
    return 0;
}

/* Encodes a dotted name into wire labels. Returns the length or
 * NB_ETOOBIG. */
static int encode_name(const char *name, uint8_t *out, size_t cap)
{
    size_t o = 0;
    const char *s = name;
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t l = dot ? (size_t)(dot - s) : strlen(s);
        if (l == 0 || l > 63 || o + 1 + l + 1 > cap || o + 1 + l + 1 > WIRE_NAME_MAX)
            return NB_ETOOBIG;
        out[o++] = (uint8_t)l;
        memcpy(out + o, s, l);
        o += l;
        s += l;
        if (*s == '.')
            s++;
    }
    if (o + 1 > cap)
        return NB_ETOOBIG;
    out[o++] = 0;
    return (int)o;
}

/* Builds a reply to `q` into `out` (cap bytes; NB_DNS_REPLY_MAX is always
 * enough): header (same id, QR, AA, RA, RD echoed, `rcode`), the question
 * when q->wire_q.len > 0, then at most one answer: `ip4` (network order,
 * 4 bytes) as an A record, or `ptr` (a valid dotted name) as a PTR record,
 * with `ttl`. `with_question` 0 omits the question (FORMERR/NOTIMP).
 * Returns the length or NB_ETOOBIG. */
static int dns_build_reply(const dns_query_t *q, int with_question, int rcode, const uint8_t *ip4,
                           const char *ptr, uint32_t ttl, uint8_t *out, size_t cap)
{
    if (cap < NB_DNS_HDR_LEN)
        return NB_ETOOBIG;
    int has_q = with_question && q->wire_q.len > 0;
    size_t pos = NB_DNS_HDR_LEN;
    uint16_t an = 0;
    if (has_q) {
        if (q->wire_q.len > cap - pos)
            return NB_ETOOBIG;
        memcpy(out + pos, q->wire_q.p, q->wire_q.len);
        pos += q->wire_q.len;
        if (rcode == NB_DNS_NOERROR && (ip4 || ptr)) {
            uint8_t rdata[WIRE_NAME_MAX + 1];
            int rdlen;
            if (ip4) {
                memcpy(rdata, ip4, 4);
                rdlen = 4;
            } else if ((rdlen = encode_name(ptr, rdata, sizeof rdata)) < 0) {
                return rdlen;
            }
            if ((size_t)rdlen + 12 > cap - pos)
                return NB_ETOOBIG;
            put16(out + pos, 0xc000 | NB_DNS_HDR_LEN); /* the name: the question's */
            put16(out + pos + 2, ip4 ? NB_DNS_T_A : NB_DNS_T_PTR);
            put16(out + pos + 4, 1); /* IN */
            put32(out + pos + 6, ttl);
            put16(out + pos + 10, (uint16_t)rdlen);
            memcpy(out + pos + 12, rdata, (size_t)rdlen);
            pos += 12 + (size_t)rdlen;
            an = 1;
        }
    }
    int opt = has_q && q->edns;
    if (opt) {
        if (cap - pos < 11)
            return NB_ETOOBIG;
        out[pos] = 0;
        put16(out + pos + 1, NB_DNS_T_OPT);
        put16(out + pos + 3, NB_DNS_REPLY_MAX); /* what we send: never more */
        put32(out + pos + 5, 0);
        put16(out + pos + 9, 0);
        pos += 11;
    }
    put16(out, q->id);
    put16(out + 2, (uint16_t)(F_QR | F_AA | F_RA | (q->flags & F_RD) | (rcode & 0xf)));
    put16(out + 4, has_q ? 1 : 0);
    put16(out + 6, an);
    put16(out + 8, 0);
    put16(out + 10, opt ? 1 : 0);
    return (int)pos;
}

/* ---------------------------------------------------------------- pool */

#define OFF_SPACE (1u << 17) /* a /15 */
#define OFF_FIRST 256u       /* 198.18.0.0/24 is reserved */
#define CAP_MAX 65536u
#define NIL (-1)

typedef struct {
    char *name; /* NULL: free slot */
    uint32_t off;
    uint64_t used;
    int32_t lru_prev, lru_next; /* prev: more recent */
    int32_t hn_next, hi_next;   /* bucket chains (name, address) */
} ent_t;

struct nb_fakedns {
    nb_fakedns_cfg_t cfg;
    ent_t *e;
    int32_t *bn, *bi; /* bucket heads */
    uint32_t nbuckets;
    int32_t free_head; /* chained through hn_next */
    int32_t lru_head, lru_tail;
    size_t count;
    uint32_t cursor; /* next offset to try */
    uint8_t hkey[crypto_shorthash_KEYBYTES];
};

void nb_fakedns_cfg_default(nb_fakedns_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->cap = 4096;
    cfg->ttl_s = 60;
    cfg->min_age_ms = 120000;
    cfg->expire_ms = 3600000;
}

int nb_fakedns_new(const nb_fakedns_cfg_t *cfg, nb_fakedns_t **out)
{
    *out = NULL;
    nb_fakedns_cfg_t def;
    nb_fakedns_cfg_default(&def);
    nb_fakedns_t *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->cfg = cfg ? *cfg : def;
    if (!f->cfg.cap)
        f->cfg.cap = def.cap;
    if (!f->cfg.ttl_s)
        f->cfg.ttl_s = def.ttl_s;
    if (!f->cfg.min_age_ms)
        f->cfg.min_age_ms = 2000ull * f->cfg.ttl_s;
    if (!f->cfg.expire_ms)
        f->cfg.expire_ms = def.expire_ms;
    if (f->cfg.cap > CAP_MAX) {
        free(f);
        return NB_EINVAL;
    }
    f->nbuckets = 16;
    while (f->nbuckets < 2 * f->cfg.cap)
        f->nbuckets <<= 1;
    f->e = calloc(f->cfg.cap, sizeof *f->e);
    f->bn = malloc(f->nbuckets * sizeof *f->bn);
    f->bi = malloc(f->nbuckets * sizeof *f->bi);
    if (!f->e || !f->bn || !f->bi) {
        nb_fakedns_free(f);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < f->nbuckets; i++)
        f->bn[i] = f->bi[i] = NIL;
    for (size_t i = 0; i < f->cfg.cap; i++)
        f->e[i].hn_next = i + 1 < f->cfg.cap ? (int32_t)(i + 1) : NIL;
    f->free_head = 0;
    f->lru_head = f->lru_tail = NIL;
    f->cursor = OFF_FIRST;
    /* Keyed: the guest chooses the names, so it must not be able to aim
     * them all at one bucket. */
    randombytes_buf(f->hkey, sizeof f->hkey);
    *out = f;
    return 0;
}

void nb_fakedns_free(nb_fakedns_t *f)
{
    if (!f)
        return;
    if (f->e)
        for (size_t i = 0; i < f->cfg.cap; i++)
            free(f->e[i].name);
    free(f->e);
    free(f->bn);
    free(f->bi);
    free(f);
}

int nb_fakedns_in_range(uint32_t ip)
{
    return (ip & NB_FAKEDNS_MASK) == NB_FAKEDNS_NET;
}

static uint32_t hname(const nb_fakedns_t *f, const char *name, size_t len)
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const uint8_t *)name, len, f->hkey);
    uint32_t v;
    memcpy(&v, h, sizeof v);
    return v & (f->nbuckets - 1);
}

static uint32_t hoff(const nb_fakedns_t *f, uint32_t off)
{
    return off & (f->nbuckets - 1); /* offsets are handed out in sequence */
}

static void lru_unlink(nb_fakedns_t *f, int32_t i)
{
    ent_t *e = &f->e[i];
    if (e->lru_prev != NIL)
        f->e[e->lru_prev].lru_next = e->lru_next;
    else
        f->lru_head = e->lru_next;
    if (e->lru_next != NIL)
        f->e[e->lru_next].lru_prev = e->lru_prev;
    else
        f->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NIL;
}

static void lru_push(nb_fakedns_t *f, int32_t i)
{
    ent_t *e = &f->e[i];
    e->lru_prev = NIL;
    e->lru_next = f->lru_head;
    if (f->lru_head != NIL)
        f->e[f->lru_head].lru_prev = i;
    f->lru_head = i;
    if (f->lru_tail == NIL)
        f->lru_tail = i;
}

static void touch(nb_fakedns_t *f, int32_t i, uint64_t now)
{
    f->e[i].used = now;
    if (f->lru_head != i) {
        lru_unlink(f, i);
        lru_push(f, i);
    }
}

static void chain_remove(int32_t *head, ent_t *e, int32_t i, int by_name)
{
    int32_t *pp = head;
    while (*pp != NIL) {
        if (*pp == i) {
            *pp = by_name ? e[i].hn_next : e[i].hi_next;
            return;
        }
        pp = by_name ? &e[*pp].hn_next : &e[*pp].hi_next;
    }
}

static void remove_ent(nb_fakedns_t *f, int32_t i)
{
    ent_t *e = &f->e[i];
    chain_remove(&f->bn[hname(f, e->name, strlen(e->name))], f->e, i, 1);
    chain_remove(&f->bi[hoff(f, e->off)], f->e, i, 0);
    lru_unlink(f, i);
    free(e->name);
    e->name = NULL;
    e->hn_next = f->free_head;
    f->free_head = i;
    f->count--;
}

static void expire(nb_fakedns_t *f, uint64_t now)
{
    while (f->lru_tail != NIL && now >= f->e[f->lru_tail].used &&
           now - f->e[f->lru_tail].used >= f->cfg.expire_ms)
        remove_ent(f, f->lru_tail);
}

static int32_t find_off(const nb_fakedns_t *f, uint32_t off)
{
    for (int32_t i = f->bi[hoff(f, off)]; i != NIL; i = f->e[i].hi_next)
        if (f->e[i].off == off)
            return i;
    return NIL;
}

static int usable_off(uint32_t off)
{
    return off >= OFF_FIRST && off < OFF_SPACE && (off & 0xff) != 0 && (off & 0xff) != 0xff;
}

int nb_fakedns_assign(nb_fakedns_t *f, const char *name, uint64_t now_ms, uint32_t *ip)
{
    *ip = 0;
    size_t len = strlen(name);
    if (len == 0 || len > NB_HOSTNAME_MAX)
        return NB_EINVAL;
    expire(f, now_ms);
    uint32_t h = hname(f, name, len);
    for (int32_t i = f->bn[h]; i != NIL; i = f->e[i].hn_next) {
        if (strcmp(f->e[i].name, name) == 0) {
            touch(f, i, now_ms);
            *ip = NB_FAKEDNS_NET | f->e[i].off;
            return 0;
        }
    }
    if (f->free_head == NIL) {
        int32_t t = f->lru_tail;
        if (t == NIL || now_ms < f->e[t].used || now_ms - f->e[t].used < f->cfg.min_age_ms)
            return NB_ETOOBIG;
        remove_ent(f, t);
    }
    /* The next free address after the cursor. At most cap (<= 65536) are
     * taken out of ~130000 usable ones, so this ends quickly. */
    uint32_t off = f->cursor;
    for (;;) {
        if (off >= OFF_SPACE)
            off = OFF_FIRST;
        if (usable_off(off) && find_off(f, off) == NIL)
            break;
        off++;
    }
    f->cursor = off + 1;
    char *copy = malloc(len + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, name, len + 1);
    int32_t i = f->free_head;
    ent_t *e = &f->e[i];
    f->free_head = e->hn_next;
    e->name = copy;
    e->off = off;
    e->used = now_ms;
    e->hn_next = f->bn[h];
    f->bn[h] = i;
    uint32_t hi = hoff(f, off);
    e->hi_next = f->bi[hi];
    f->bi[hi] = i;
    lru_push(f, i);
    f->count++;
    *ip = NB_FAKEDNS_NET | off;
    return 0;
}

int nb_fakedns_lookup(nb_fakedns_t *f, uint32_t ip, uint64_t now_ms, char *name, size_t namesz)
{
    if (namesz)
        name[0] = '\0';
    if (!nb_fakedns_in_range(ip))
        return 0;
    expire(f, now_ms);
    int32_t i = find_off(f, ip & ~NB_FAKEDNS_MASK);
    if (i == NIL)
        return 0;
    size_t len = strlen(f->e[i].name);
    if (len >= namesz)
        return 0;
    memcpy(name, f->e[i].name, len + 1);
    touch(f, i, now_ms);
    return 1;
}

size_t nb_fakedns_count(nb_fakedns_t *f, uint64_t now_ms)
{
    expire(f, now_ms);
    return f->count;
}

/* ------------------------------------------------------------- answers */

/* "d.c.b.a.in-addr.arpa" -> a.b.c.d (host order). 1 when it is one. */
static int reverse_v4(const char *name, uint32_t *ip)
{
    static const char sfx[] = ".in-addr.arpa";
    size_t n = strlen(name), sl = sizeof sfx - 1;
    if (n <= sl || strcmp(name + n - sl, sfx) != 0)
        return 0;
    uint32_t parts[4];
    size_t np = 0, i = 0, end = n - sl;
    while (i < end) {
        uint32_t v = 0;
        size_t digits = 0;
        while (i < end && name[i] >= '0' && name[i] <= '9' && digits < 4) {
            v = v * 10 + (uint32_t)(name[i] - '0');
            i++;
            digits++;
        }
        if (!digits || v > 255 || np == 4 || (digits > 1 && name[i - digits] == '0'))
            return 0;
        parts[np++] = v;
        if (i < end) {
            if (name[i] != '.')
                return 0;
            i++;
            if (i == end)
                return 0;
        }
    }
    if (np != 4)
        return 0;
    *ip = parts[3] << 24 | parts[2] << 16 | parts[1] << 8 | parts[0];
    return 1;
}

static int ends_with(const char *s, const char *sfx)
{
    size_t n = strlen(s), m = strlen(sfx);
    return n >= m && strcmp(s + n - m, sfx) == 0 && (n == m || s[n - m - 1] == '.');
}

size_t nb_fakedns_answer(nb_fakedns_t *f, nb_iov_t query, uint64_t now_ms,
                         nb_fakedns_policy_fn policy, void *ud, uint8_t *out, size_t cap,
                         nb_fakedns_result_t *res)
{
    nb_fakedns_result_t dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    res->rcode = -1;
    dns_query_t q;
    int r = dns_parse_query(query, &q);
    if (r < 0)
        return 0;
    if (r > 0) {
        int n = dns_build_reply(&q, 0, r, NULL, NULL, 0, out, cap);
        if (n < 0)
            return 0;
        res->rcode = r;
        return (size_t)n;
    }
    res->qtype = q.qtype;
    memcpy(res->qname, q.qname, sizeof res->qname);
    int rcode = NB_DNS_NOERROR;
    uint8_t a[4];
    const uint8_t *ip4 = NULL;
    const char *ptr = NULL;
    char ptrname[NB_HOSTNAME_BUFSZ];
    uint32_t ip;
    if (q.qclass != 1) {
        rcode = NB_DNS_REFUSED;
    } else if (!q.name_ok) {
        rcode = NB_DNS_NXDOMAIN;
    } else if (ends_with(q.qname, "arpa")) {
        /* Reverse zones: only our own fake addresses have names. */
        rcode = NB_DNS_NXDOMAIN;
        if (reverse_v4(q.qname, &ip) && nb_fakedns_lookup(f, ip, now_ms, ptrname, sizeof ptrname)) {
            rcode = NB_DNS_NOERROR;
            if (q.qtype == NB_DNS_T_PTR)
                ptr = ptrname;
        }
    } else if (policy && policy(ud, q.qname)) {
        res->blocked = 1;
        rcode = NB_DNS_NXDOMAIN;
    } else if (q.qtype == NB_DNS_T_A) {
        if (nb_fakedns_assign(f, q.qname, now_ms, &ip) < 0) {
            rcode = NB_DNS_SERVFAIL;
        } else {
            a[0] = (uint8_t)(ip >> 24);
            a[1] = (uint8_t)(ip >> 16);
            a[2] = (uint8_t)(ip >> 8);
            a[3] = (uint8_t)ip;
            ip4 = a;
            res->ip = ip;
        }
    }
    /* Every other type of a valid name: NOERROR without records (AAAA
     * included: the guest only ever connects over IPv4). */
    int n = dns_build_reply(&q, 1, rcode, ip4, ptr, f->cfg.ttl_s, out, cap);
    if (n < 0)
        return 0;
    res->rcode = rcode;
    return (size_t)n;
}
