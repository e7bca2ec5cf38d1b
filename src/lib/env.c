/* Bounded decimal settings; see env.h. */
#include "lib/env.h"

#include <inttypes.h>
#include <stdlib.h>

#include "lib/log.h"

uint64_t nb_env_value(const char *name, const char *value, uint64_t lo, uint64_t hi, uint64_t dflt)
{
    if (!value || !*value)
        return dflt;
    char *end;
    unsigned long long v = strtoull(value, &end, 10);
    if (!*end && v >= lo && v <= hi)
        return v;
    nb_log(NB_LOG_WARN, "ignoring %s '%.20s' (%" PRIu64 "..%" PRIu64 ")", name, value, lo, hi);
    return dflt;
}

uint64_t nb_env_u64(const char *name, uint64_t lo, uint64_t hi, uint64_t dflt)
{
    return nb_env_value(name, getenv(name), lo, hi, dflt);
}
