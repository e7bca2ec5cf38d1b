/* libFuzzer target for gate rules and name handling (src/daemon/egress/
 * rules.c, hostname.c).
 *
 * The input is split into lines. Lines starting with '+' or '-' are allow
 * or deny rule specs ("+*.example.com:443", "-10.0.0.0/8"), optionally
 * prefixed by "@vm " for a VM scope; every other line is a destination
 * "host port vm" to judge. Checks: canonical rule text re-parses to itself
 * (same kind, prefix, pattern); normalised names are fixed points; the
 * decision follows the documented order (deny > blocklist, unless an
 * exact-name allow rule names it > allow > prompt) as recomputed by brute
 * force; display names are printable,
 * bounded and terminated. The whole input is also read as a Public
 * Suffix List (nb_psl_contains) for a few suffixes, and every allow rule's
 * A13 breadth warning must be bounded and terminated. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/hostname.h"
#include "daemon/egress/rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int blocked(void *ctx, const nb_dest_t *d)
{
    (void)ctx;
    return !d->is_ip && strstr(d->name, "block") != NULL;
}

static void check_display(const char *p, size_t n)
{
    char out[96];
    nb_rules_display_name(p, n, out, sizeof(out));
    size_t l = strnlen(out, sizeof(out));
    if (l >= sizeof(out))
        abort();
    for (size_t i = 0; i < l; i++)
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] >= 0x7f)
            abort();
}

static void check_rule(const char *spec, int action, const char *vm, nb_ruleset_t *rs, int64_t id)
{
    nb_rule_t r;
    memset(&r, 0, sizeof(r));
    r.action = action;
    if (nb_rule_parse(spec, &r) < 0)
        return;
    nb_rule_t again = r;
    if (nb_rule_parse(r.pattern, &again) < 0 || strcmp(again.pattern, r.pattern) != 0 ||
        again.kind != r.kind || again.prefix != r.prefix || again.port != 0)
        abort();
    if (r.kind == NB_RULE_CIDR && (r.prefix < 0 || r.prefix > (r.net.family == AF_INET ? 32 : 128)))
        abort();
    char w[256];
    size_t wl = nb_rule_broad_warning(&r, w, sizeof(w));
    if (wl >= sizeof(w) || strlen(w) != wl)
        abort();
    r.id = id;
    if (!nb_rules_vm_valid(vm))
        return;
    snprintf(r.vm, sizeof(r.vm), "%s", vm);
    nb_ruleset_add(rs, &r);
}

static void judge(const nb_ruleset_t *rs, const char *host, size_t hl, unsigned port,
                  const char *vm)
{
    nb_dest_t d;
    check_display(host, hl);
    if (nb_dest_set(&d, vm, host, hl, (uint16_t)port) < 0)
        return;
    if (!d.is_ip) {
        char again[NB_HOSTNAME_BUFSZ];
        if (nb_hostname_normalize(d.name, strlen(d.name), again, sizeof(again)) < 0 ||
            strcmp(again, d.name) != 0)
            abort();
    } else {
        nb_ip_internal_kind(&d.ip);
        nb_rules_addr_allowed(rs, vm, &d.ip, (uint16_t)port);
    }
    nb_gate_result_t res;
    nb_rules_eval(rs, &d, blocked, NULL, &res);
    int any_deny = 0, any_allow = 0, exact_allow = 0;
    for (size_t i = 0; i < rs->n; i++) {
        /* An exact-name allow rule overrides the blocklist (rules.h), on
         * its port or when the destination has none (DNS). */
        const nb_rule_t *r = &rs->v[i];
        exact_allow |= r->action == NB_RULE_ALLOW && r->kind == NB_RULE_NAME && !d.is_ip &&
                       (!r->vm[0] || !strcmp(r->vm, d.vm)) &&
                       (!r->port || !d.port || r->port == d.port) && !strcmp(r->pattern, d.name);
        if (!nb_rule_match(&rs->v[i], &d))
            continue;
        any_deny |= rs->v[i].action == NB_RULE_DENY;
        any_allow |= rs->v[i].action == NB_RULE_ALLOW;
    }
    int want = any_deny                            ? NB_GATE_DENY
               : blocked(NULL, &d) && !exact_allow ? NB_GATE_DENY
               : any_allow                         ? NB_GATE_ALLOW
                                                   : NB_GATE_PROMPT;
    if (res.decision != want)
        abort();
    if ((res.reason == NB_GATE_R_DENY_RULE || res.reason == NB_GATE_R_ALLOW_RULE) &&
        res.rule_id == 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    static const char *const sfx[] = {"com", "co.uk", "a.ck", "www.ck", "x"};
    for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++)
        if (nb_psl_contains(s, size, sfx[i]) > 1)
            abort();
    nb_ruleset_t rs = NB_RULESET_INIT;
    int64_t id = 1;
    char *line = s, *end = s + size;
    /* First pass: rules. Second pass: destinations. */
    for (int pass = 0; pass < 2; pass++) {
        line = s;
        while (line < end) {
            char *nl = memchr(line, '\n', (size_t)(end - line));
            size_t len = nl ? (size_t)(nl - line) : (size_t)(end - line);
            char buf[512];
            if (len < sizeof(buf)) {
                memcpy(buf, line, len);
                buf[len] = 0;
                const char *vm = "";
                char *spec = buf;
                if (pass == 0 && (buf[0] == '+' || buf[0] == '-')) {
                    int action = buf[0] == '+' ? NB_RULE_ALLOW : NB_RULE_DENY;
                    spec = buf + 1;
                    if (spec[0] == '@') {
                        char *sp = strchr(spec, ' ');
                        if (sp) {
                            *sp = 0;
                            vm = spec + 1;
                            spec = sp + 1;
                        }
                    }
                    check_rule(spec, action, vm, &rs, id++);
                } else if (pass == 1 && buf[0] != '+' && buf[0] != '-') {
                    /* "host port vm", host may contain anything but spaces */
                    char *sp = memchr(buf, ' ', len);
                    size_t hl = sp ? (size_t)(sp - buf) : len;
                    unsigned port = sp ? (unsigned)strtoul(sp + 1, NULL, 10) & 0xffff : 443;
                    char *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
                    judge(&rs, buf, hl, port, sp2 ? sp2 + 1 : "");
                }
            }
            line += len + 1;
        }
    }
    nb_ruleset_free(&rs);
    free(s);
    return 0;
}
