#include "lib/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *nb_strerror(int r)
{
    switch (r) {
#define NB_ERR_MSG(name, off, msg)                                                                 \
    case name:                                                                                     \
        return msg;
        NB_ERR_TABLE(NB_ERR_MSG)
#undef NB_ERR_MSG
    default:
        break;
    }
    if (r < 0 && r > NB_E_BASE)
        return strerrordesc_np(-r) ? strerrordesc_np(-r) : "unknown error";
    return r == 0 ? "success" : "unknown error";
}

const char *nb_errname(int r)
{
    switch (r) {
#define NB_ERR_NAME(name, off, msg)                                                                \
    case name:                                                                                     \
        return #name;
        NB_ERR_TABLE(NB_ERR_NAME)
#undef NB_ERR_NAME
    default:
        break;
    }
    if (r < 0 && r > NB_E_BASE && strerrorname_np(-r))
        return strerrorname_np(-r);
    return r == 0 ? "OK" : "EUNKNOWN";
}

void nb_err_say(char *err, size_t errsz, const char *fmt, ...)
{
    if (!err || !errsz)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsz, fmt, ap);
    va_end(ap);
}
