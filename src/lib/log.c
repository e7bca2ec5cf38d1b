#include "lib/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_level = -1;
static const char *g_tag = "nilbox";
static atomic_uint_fast64_t g_conn_ids;

static int level_from_env(void)
{
    const char *e = getenv("NILBOX_LOG");
    if (!e)
        return NB_LOG_INFO;
    if (!strcmp(e, "err") || !strcmp(e, "error"))
        return NB_LOG_ERR;
    if (!strcmp(e, "warn"))
        return NB_LOG_WARN;
    if (!strcmp(e, "debug"))
        return NB_LOG_DEBUG;
    return NB_LOG_INFO;
}

int nb_log_level(void)
{
    if (g_level < 0)
        g_level = level_from_env();
    return g_level;
}

void nb_log_set_tag(const char *tag)
{
    g_tag = tag;
}

void nb_log_write(int level, const char *func, uint64_t conn, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One fprintf per line keeps concurrent writers from interleaving. */
    if (conn)
        fprintf(stderr, "<%d>%s: %s: [c%llu] %s\n", level, g_tag, func, (unsigned long long)conn,
                msg);
    else
        fprintf(stderr, "<%d>%s: %s: %s\n", level, g_tag, func, msg);
}

char *nb_log_escape(char *out, size_t outsz, const void *p, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = p;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        size_t need = (c >= 0x20 && c < 0x7f && c != '\\') ? 1 : (c == '\\' ? 2 : 4);
        if (o + need + 4 > outsz) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (need == 1) {
            out[o++] = (char)c;
        } else if (need == 2) {
            out[o++] = '\\';
            out[o++] = '\\';
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return out;
}

uint64_t nb_log_next_conn_id(void)
{
    return atomic_fetch_add(&g_conn_ids, 1) + 1;
}
