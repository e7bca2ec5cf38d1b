/* Bounded decimal settings (environment variables, stored settings) with one
 * warning for a value that is not one. */
#ifndef NB_ENV_H
#define NB_ENV_H

#include <stdint.h>

/* `value` (setting `name`'s; may be NULL) when it is a decimal number in
 * lo..hi; else dflt, with a warning "ignoring NAME 'VALUE' (LO..HI)" unless
 * value is NULL or empty. */
uint64_t nb_env_value(const char *name, const char *value, uint64_t lo, uint64_t hi, uint64_t dflt);

/* nb_env_value(name, getenv(name), lo, hi, dflt). */
uint64_t nb_env_u64(const char *name, uint64_t lo, uint64_t hi, uint64_t dflt);

#endif
