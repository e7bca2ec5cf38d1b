/* nilbox error codes: one table with names and messages.
 *
 * Fallible functions return 0 or a negative code: either -errno or one of
 * the NB_E* codes below (all <= NB_E_BASE, far from any errno value). */
#ifndef NB_ERR_H
#define NB_ERR_H

#include <stddef.h>

#define NB_E_BASE (-10000)

/* X(name, offset, message) */
#define NB_ERR_TABLE(X)                                                                            \
    X(NB_EPROTO, 1, "protocol violation")                                                          \
    X(NB_ETOOBIG, 2, "input exceeds its size cap")                                                 \
    X(NB_EPARSE, 3, "malformed input")                                                             \
    X(NB_EAUTH, 4, "authentication failed")                                                        \
    X(NB_EDENIED, 5, "denied by policy")                                                           \
    X(NB_ENOTFOUND, 6, "not found")                                                                \
    X(NB_EEXIST, 7, "already exists")                                                              \
    X(NB_ESTATE, 8, "operation not valid in the current state")                                    \
    X(NB_ETIMEOUT, 9, "timed out")                                                                 \
    X(NB_ECLOSED, 10, "connection closed")                                                         \
    X(NB_EINVAL, 11, "invalid argument")                                                           \
    X(NB_ELOCKED, 12, "already locked by another process")                                         \
    X(NB_ECRYPTO, 13, "cryptographic check failed")                                                \
    X(NB_EUNSUPPORTED, 14, "not supported")                                                        \
    X(NB_EINTERNAL, 15, "internal error")

enum {
#define NB_ERR_ENUM(name, off, msg) name = NB_E_BASE - (off),
    NB_ERR_TABLE(NB_ERR_ENUM)
#undef NB_ERR_ENUM
};

/* Human-readable message for r (an NB_E* code or -errno). Never NULL;
 * the string is static. Thread-safe. */
const char *nb_strerror(int r);

/* Symbolic name ("NB_EPROTO", "ENOENT", ...) for r. Never NULL; static. */
const char *nb_errname(int r);

/* Formats why something failed into the caller's message buffer err
 * (errsz bytes, cut there) for functions with a `char *err, size_t errsz`
 * out-parameter. Does nothing when err is NULL or errsz is 0. */
void nb_err_say(char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
