/* Fake-IP DNS for one VM (DESIGN.md section 6, guest side; THREATS.md
 * A11, A12). See docs/internals/guestsvc.md.
 *
 * The guest's resolver (the agent on 127.0.0.53) forwards every query to
 * the host, which answers it here WITHOUT asking any upstream resolver:
 *   A      a name the policy blocks      -> NXDOMAIN
 *          any other valid name          -> an address from 198.18.0.0/15
 *                                           that maps back to the name
 *   AAAA, and every other type           -> NOERROR with no answer (NODATA)
 *   PTR of a mapped fake address          -> the name
 *   invalid names, reverse zones, others  -> NXDOMAIN
 * So a name the guest merely asks about never leaves the host (A11), and
 * every TCP connection the guest makes to a fake address can be judged by
 * the name it stands for (A12: other addresses are judged as IPs).
 *
 * The pool is per VM, bounded (`cap` names), reuses the address of a name
 * while the name is known, hands out addresses round-robin over the range
 * (so a forgotten address is not soon given to another name), forgets
 * names unused for `expire_ms`, and when full evicts the least recently
 * used name only if it is older than `min_age_ms` (else the query gets
 * SERVFAIL: a flood cannot churn live mappings). 198.18.0.0/24 is never
 * handed out (the guest's dummy0 uses 198.18.0.1), nor are addresses
 * ending in .0 or .255.
 *
 * Pure: no I/O, no clock (callers pass `now_ms`), no globals. Not
 * thread-safe; one pool belongs to one thread (the daemon's loop). */
#ifndef NB_FAKEDNS_H
#define NB_FAKEDNS_H

#include <stddef.h>
#include <stdint.h>

#include "lib/hostname.h"
#include "lib/buf.h"

#define NB_FAKEDNS_NET 0xc6120000u  /* 198.18.0.0 */
#define NB_FAKEDNS_MASK 0xfffe0000u /* /15 */
#define NB_FAKEDNS_GUEST_ADDR "198.18.0.1"

#define NB_DNS_HDR_LEN 12
#define NB_DNS_QUERY_MAX 4096 /* longest query accepted (bytes) */
#define NB_DNS_REPLY_MAX 512  /* our replies always fit in a classic UDP message */

enum {
    NB_DNS_T_A = 1,
    NB_DNS_T_PTR = 12,
    NB_DNS_T_AAAA = 28,
    NB_DNS_T_OPT = 41,
};

enum {
    NB_DNS_NOERROR = 0,
    NB_DNS_FORMERR = 1,
    NB_DNS_SERVFAIL = 2,
    NB_DNS_NXDOMAIN = 3,
    NB_DNS_NOTIMP = 4,
    NB_DNS_REFUSED = 5,
};

/* ---- the per-VM pool ---- */

typedef struct nb_fakedns nb_fakedns_t;

typedef struct {
    size_t cap;          /* names mapped at once; default 4096 */
    uint32_t ttl_s;      /* TTL of answers; default 60 */
    uint64_t min_age_ms; /* a name younger than this is never evicted; default 2 * ttl */
    uint64_t expire_ms;  /* unused names are forgotten after; default 1 h */
} nb_fakedns_cfg_t;

void nb_fakedns_cfg_default(nb_fakedns_cfg_t *cfg);

/* Creates an empty pool (`cfg` copied; NULL: defaults; zero fields take
 * the defaults). 0 or -ENOMEM / NB_EINVAL (cap above 65536). */
int nb_fakedns_new(const nb_fakedns_cfg_t *cfg, nb_fakedns_t **out);
void nb_fakedns_free(nb_fakedns_t *f);

/* 1 when `ip` (host order) is in 198.18.0.0/15. */
int nb_fakedns_in_range(uint32_t ip);

/* The address of normalised name `name` (NUL-terminated, <= 253 bytes),
 * assigning one if needed. Touches the entry. 0 with *ip (host order),
 * NB_ETOOBIG when the pool is full of names younger than min_age_ms,
 * NB_EINVAL for an empty or too long name, -ENOMEM. */
int nb_fakedns_assign(nb_fakedns_t *f, const char *name, uint64_t now_ms, uint32_t *ip);

/* The name mapped to `ip` (host order): copies it into `name` (size
 * namesz >= NB_HOSTNAME_BUFSZ) and touches the entry. 1 found, 0 not
 * (outside the range, never assigned, or expired). */
int nb_fakedns_lookup(nb_fakedns_t *f, uint32_t ip, uint64_t now_ms, char *name, size_t namesz);

/* Names currently mapped (after dropping the expired ones as of now_ms). */
size_t nb_fakedns_count(nb_fakedns_t *f, uint64_t now_ms);

/* Decides whether `name` (normalised) gets NXDOMAIN: return 1 to block. */
typedef int (*nb_fakedns_policy_fn)(void *ud, const char *name);

/* What one answer did, for logs and tests. */
typedef struct {
    int rcode;      /* the reply's rcode, or -1 when the query was dropped */
    uint16_t qtype; /* 0 when unparsed */
    char qname[NB_HOSTNAME_BUFSZ];
    uint32_t ip; /* the A answer (host order), 0 if none */
    int blocked; /* the policy blocked the name */
} nb_fakedns_result_t;

/* Answers one query message: parses it, applies the table above (the
 * policy decides NXDOMAIN for A queries of valid names; NULL blocks
 * nothing) and writes the reply into `out` (cap >= NB_DNS_REPLY_MAX).
 * Returns the reply length (> 0), or 0 when the message gets no reply.
 * `res` (may be NULL) says what happened. Never fails otherwise: pool
 * exhaustion or allocation failure answer SERVFAIL. */
size_t nb_fakedns_answer(nb_fakedns_t *f, nb_iov_t query, uint64_t now_ms,
                         nb_fakedns_policy_fn policy, void *ud, uint8_t *out, size_t cap,
                         nb_fakedns_result_t *res);

#endif
