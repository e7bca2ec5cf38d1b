/* Destination names and IP literals, normalised once so that every later
 * comparison (gate rules, secret bindings, SNI == CONNECT name, Host ==
 * SNI) is a plain byte comparison.
 *
 * Pure functions, no allocation, thread-safe. */
#ifndef NB_HOSTNAME_H
#define NB_HOSTNAME_H

#include <stddef.h>
#include <stdint.h>

/* Longest DNS name (RFC 1035) and the buffer size that holds it. */
#define NB_HOSTNAME_MAX 253
#define NB_HOSTNAME_BUFSZ (NB_HOSTNAME_MAX + 1)

/* An IP address; IPv4 lives in a[0..3]. IPv4-mapped IPv6 (::ffff:a.b.c.d)
 * is always stored as IPv4 so one rule covers both spellings. */
typedef struct {
    int family; /* AF_INET or AF_INET6 */
    uint8_t a[16];
} nb_ipaddr_t;

/* Normalises a DNS name from `in` (len bytes, not NUL-terminated): ASCII
 * lower-case, one trailing dot removed. Rejects (NB_EINVAL) anything that
 * is not LDH: labels of 1..63 letters, digits and hyphens without a leading
 * or trailing hyphen, at most 253 bytes in all. Internationalised names
 * must arrive as A-labels ("xn--..."): they are kept as-is, never decoded.
 * Also rejects names whose last label is numeric or 0x-hex: resolvers read
 * "2130706433" or "1.2.3" as IPv4 addresses, so such a "name" could reach
 * an address no name rule was meant for. IP literals are not names: use
 * nb_ip_parse() first. Writes a NUL-terminated result to `out` (outsz >=
 * NB_HOSTNAME_BUFSZ is always enough). Returns the length or NB_EINVAL. */
int nb_hostname_normalize(const char *in, size_t len, char *out, size_t outsz);

/* Parses an IPv4 dotted quad (exactly four decimal parts, no leading zeros)
 * or an IPv6 literal, optionally in brackets ("[::1]"); no zone ids.
 * Returns 1 and fills `out` when `in` is an IP literal, 0 when it is not,
 * never an error. */
int nb_ip_parse(const char *in, size_t len, nb_ipaddr_t *out);

/* Formats `ip` without brackets into `out` (outsz >= 46). Returns `out`. */
char *nb_ip_format(const nb_ipaddr_t *ip, char *out, size_t outsz);

/* Normalises a host pattern: an exact name or "*.suffix" (the suffix
 * normalised as above, with at least one dot-separated label). Returns the
 * length or NB_EINVAL. */
int nb_host_pattern_normalize(const char *in, size_t len, char *out, size_t outsz);

/* 1 when normalised `name` matches normalised `pattern`: equal for an exact
 * pattern; for "*.suffix", `name` must END in ".suffix" with at least one
 * more label in front, so "*.example.com" matches "a.example.com" and
 * "a.b.example.com" but NOT "example.com" itself. */
int nb_host_pattern_match(const char *pattern, const char *name);

/* ---- wildcards over public suffixes ---- */

/* Where Debian's `publicsuffix` package puts the Public Suffix List. */
#define NB_PSL_FILE "/usr/share/publicsuffix/public_suffix_list.dat"

/* 1 when normalised name `suffix` is a public suffix according to the
 * list text `list` (len bytes, the PSL format: one rule a line, "//"
 * comments, "*.ck" wildcards, "!www.ck" exceptions): it equals a rule, or
 * a wildcard rule covers it and no exception names it. 0 otherwise. Only
 * the ICANN section counts: reading stops at "===BEGIN PRIVATE DOMAINS==="
 * (that section lists names like googleapis.com under which one company
 * hands out subdomains; binding *.googleapis.com is ordinary). Pure;
 * fuzzed (fuzz/fuzz_rules.c). */
int nb_psl_contains(const char *list, size_t len, const char *suffix);

/* 1 when normalised pattern `pattern` is a wildcard over a public suffix,
 * i.e. it would match names of unrelated owners: "*.com", "*.co.uk",
 * "*.k12.ak.us", or "*" alone. Uses NB_PSL_FILE when it can be read (it is
 * read on each call: rules and bindings are added rarely), and otherwise a
 * conservative built-in rule: a suffix of one label, or of two where the
 * last is a two-letter country code and the first a usual second-level
 * label (co, com, net, org, gov, edu, ac, ...). 0 for exact names and IP
 * literals. Thread-safe (no state). */
int nb_host_pattern_public(const char *pattern);

#endif
