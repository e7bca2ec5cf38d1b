#include "daemon/egress/hostname.h"

#include <arpa/inet.h>
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
