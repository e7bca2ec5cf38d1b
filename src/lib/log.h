/* Logging to stderr with journald priority prefixes ("<3>" ...).
 *
 * Never pass secret values to these functions. Strings that come from a
 * guest or a network peer must go through nb_log_escape() first so that
 * terminal escapes and newlines cannot forge log lines (A20). */
#ifndef NB_LOG_H
#define NB_LOG_H

#include <stddef.h>
#include <stdint.h>

enum {
    NB_LOG_ERR = 3,
    NB_LOG_WARN = 4,
    NB_LOG_NOTICE = 5,
    NB_LOG_INFO = 6,
    NB_LOG_DEBUG = 7,
};

/* Messages above `level` are dropped. Default NB_LOG_INFO; the
 * NILBOX_LOG environment variable (err|warn|info|debug) overrides it. */
void nb_log_set_level(int level);
int nb_log_level(void);

/* Prefix every line with `tag` (e.g. "nilboxd"); borrows the string. */
void nb_log_set_tag(const char *tag);

void nb_log_write(int level, const char *func, uint64_t conn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define nb_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= nb_log_level())                                                             \
            nb_log_write((level), __func__, 0, __VA_ARGS__);                                       \
    } while (0)

/* Same, tagged with a per-connection id. */
#define nb_log_conn(level, conn, ...)                                                              \
    do {                                                                                           \
        if ((level) <= nb_log_level())                                                             \
            nb_log_write((level), __func__, (conn), __VA_ARGS__);                                  \
    } while (0)

/* Copies up to `len` bytes of untrusted `p` into `out` (size `outsz`, >= 4),
 * escaping anything that is not printable ASCII as \xNN and truncating with
 * "..." when it does not fit. Always NUL-terminates. Returns `out`. */
char *nb_log_escape(char *out, size_t outsz, const void *p, size_t len);

/* Fresh process-unique id for a connection (thread-safe). */
uint64_t nb_log_next_conn_id(void);

#endif
