#include "lib/hostname.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/err.h"

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A label that resolvers would read as a number: decimal, or 0x-hex. */
static int label_is_numeric(const char *l, size_t n)
{
    size_t i = 0;
    if (n >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X')) {
        for (i = 2; i < n; i++)
            if (!is_hex((unsigned char)l[i]))
                return 0;
        return 1;
    }
    for (; i < n; i++)
        if (!is_digit((unsigned char)l[i]))
            return 0;
    return 1;
}

int nb_hostname_normalize(const char *in, size_t len, char *out, size_t outsz)
{
    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len == 0 || len > NB_HOSTNAME_MAX || outsz < len + 1)
        return NB_EINVAL;
    size_t label_start = 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = i < len ? (unsigned char)in[i] : '.';
        if (c == '.') {
            size_t n = i - label_start;
            if (n == 0 || n > 63)
                return NB_EINVAL;
            if (out[label_start] == '-' || out[i - 1] == '-')
                return NB_EINVAL;
            if (i == len && label_is_numeric(out + label_start, n))
                return NB_EINVAL;
            if (i < len)
                out[i] = '.';
            label_start = i + 1;
            continue;
        }
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (!((c >= 'a' && c <= 'z') || is_digit(c) || c == '-'))
            return NB_EINVAL;
        out[i] = (char)c;
    }
    out[len] = '\0';
    return (int)len;
}

static int parse_v4(const char *s, size_t len, uint8_t a[4])
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= len || s[i] != '.')
                return 0;
            i++;
        }
        size_t start = i;
        unsigned v = 0;
        while (i < len && is_digit((unsigned char)s[i]) && i - start < 4)
            v = v * 10 + (unsigned)(s[i++] - '0');
        size_t n = i - start;
        if (n == 0 || n > 3 || v > 255 || (n > 1 && s[start] == '0'))
            return 0;
        a[part] = (uint8_t)v;
    }
    return i == len;
}

int nb_ip_parse(const char *in, size_t len, nb_ipaddr_t *out)
{
    memset(out, 0, sizeof(*out));
    if (len >= 2 && in[0] == '[' && in[len - 1] == ']') {
        in++;
        len -= 2;
        if (!memchr(in, ':', len))
            return 0; /* brackets hold only IPv6 */
    }
    if (len == 0 || len > 45)
        return 0;
    if (parse_v4(in, len, out->a)) {
        out->family = AF_INET;
        return 1;
    }
    char tmp[46];
    memcpy(tmp, in, len);
    tmp[len] = '\0';
    uint8_t a6[16];
    if (!memchr(tmp, ':', len) || inet_pton(AF_INET6, tmp, a6) != 1)
        return 0;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a6, mapped, 12) == 0) {
        out->family = AF_INET;
        memcpy(out->a, a6 + 12, 4);
        return 1;
    }
    out->family = AF_INET6;
    memcpy(out->a, a6, 16);
    return 1;
}

char *nb_ip_format(const nb_ipaddr_t *ip, char *out, size_t outsz)
{
    if (!inet_ntop(ip->family == AF_INET ? AF_INET : AF_INET6, ip->a, out, (socklen_t)outsz))
        out[0] = '\0';
    return out;
}

int nb_host_pattern_normalize(const char *in, size_t len, char *out, size_t outsz)
{
    if (len >= 2 && in[0] == '*' && in[1] == '.') {
        if (outsz < 3)
            return NB_EINVAL;
        int r = nb_hostname_normalize(in + 2, len - 2, out + 2, outsz - 2);
        if (r < 0)
            return r;
        out[0] = '*';
        out[1] = '.';
        return r + 2;
    }
    return nb_hostname_normalize(in, len, out, outsz);
}

int nb_host_pattern_match(const char *pattern, const char *name)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *suffix = pattern + 1; /* ".example.com" */
        size_t sl = strlen(suffix), nl = strlen(name);
        /* nl > sl: at least one character of label before the dot. */
        return nl > sl && memcmp(name + nl - sl, suffix, sl) == 0;
    }
    return strcmp(pattern, name) == 0;
}

/* ---- wildcards over public suffixes ---- */

/* The next rule of the list from *pos: its bytes without surrounding
 * blanks; comments and empty lines skipped. 0 at the end. */
static int psl_next(const char *list, size_t len, size_t *pos, const char **rule, size_t *rlen)
{
    while (*pos < len) {
        size_t s = *pos, e = s;
        while (e < len && list[e] != '\n')
            e++;
        *pos = e + 1;
        while (s < e && (list[s] == ' ' || list[s] == '\t' || list[s] == '\r'))
            s++;
        size_t t = s;
        /* A rule ends at the first blank (the format allows trailing text). */
        while (t < e && list[t] != ' ' && list[t] != '\t' && list[t] != '\r')
            t++;
        if (t - s >= 2 && list[s] == '/' && list[s + 1] == '/') {
            /* Only the ICANN section: the private one lists suffixes such
             * as googleapis.com where one company hands out names, and a
             * binding to *.googleapis.com is ordinary. */
            static const char priv[] = "===BEGIN PRIVATE DOMAINS===";
            size_t pl = sizeof priv - 1;
            for (size_t k = s; k + pl <= e; k++)
                if (memcmp(list + k, priv, pl) == 0)
                    return 0;
            continue;
        }
        if (t == s)
            continue;
        *rule = list + s;
        *rlen = t - s;
        return 1;
    }
    return 0;
}

static int bytes_eq_nocase(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (x != y)
            return 0;
    }
    return 1;
}

int nb_psl_contains(const char *list, size_t len, const char *suffix)
{
    const char *dot = strchr(suffix, '.');
    const char *parent = dot ? dot + 1 : NULL;
    size_t pos = 0, rl;
    const char *rule;
    int wild = 0;
    while (psl_next(list, len, &pos, &rule, &rl)) {
        if (rule[0] == '!') {
            if (bytes_eq_nocase(rule + 1, rl - 1, suffix))
                return 0; /* an exception: a registrable name */
            continue;
        }
        if (bytes_eq_nocase(rule, rl, suffix))
            return 1;
        if (parent && rl > 2 && rule[0] == '*' && rule[1] == '.' &&
            bytes_eq_nocase(rule + 2, rl - 2, parent))
            wild = 1; /* keep looking: an exception may follow */
    }
    return wild;
}

static int builtin_public(const char *suffix)
{
    static const char *const second[] = {"co",  "com", "net", "org", "gov", "edu", "ac",
                                         "or",  "ne",  "go",  "gob", "mil", "nic", "ltd",
                                         "plc", "sch", "nom", "gen", "biz", "info"};
    const char *dot = strchr(suffix, '.');
    if (!dot)
        return 1; /* a top-level domain */
    const char *last = dot + 1;
    if (strchr(last, '.') || strlen(last) != 2)
        return 0;
    for (size_t i = 0; i < sizeof(second) / sizeof(second[0]); i++)
        if (strlen(second[i]) == (size_t)(dot - suffix) &&
            memcmp(second[i], suffix, (size_t)(dot - suffix)) == 0)
            return 1;
    return 0;
}

int nb_host_pattern_public(const char *pattern)
{
    if (strcmp(pattern, "*") == 0)
        return 1;
    if (pattern[0] != '*' || pattern[1] != '.')
        return 0;
    const char *suffix = pattern + 2;
    if (!strchr(suffix, '.'))
        return 1; /* never ask a file whether "com" is public */
    int r = -1;
    FILE *f = fopen(NB_PSL_FILE, "re");
    if (f) {
        char *buf = NULL;
        size_t cap = 0, n = 0, got;
        for (;;) {
            if (n + 65536 > cap) {
                if (cap > (16u << 20))
                    break; /* not the list we know */
                char *nb = realloc(buf, cap + 262144);
                if (!nb)
                    break;
                buf = nb;
                cap += 262144;
            }
            got = fread(buf + n, 1, cap - n, f);
            n += got;
            if (got == 0) {
                if (!ferror(f))
                    r = nb_psl_contains(buf, n, suffix);
                break;
            }
        }
        fclose(f);
        free(buf);
    }
    if (r < 0)
        r = builtin_public(suffix);
    return r;
}
