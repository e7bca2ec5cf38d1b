/* libFuzzer target for the API's pre-authentication parsers
 * (src/daemon/apiroute.c): query lookup (the token arrives there),
 * percent-decoding, pattern matching and Host sanity.
 *
 * Input: first byte selects a pattern; the rest, split at the first '\n',
 * is a path and a query/Host string. Checks: decoded values never contain
 * NUL or '/', fit their caps, and matching with and without params agree. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/apiroute.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const patterns[] = {
    "/",
    "/v1/status",
    "/v1/events/{id}",
    "/v1/vms/{name}/start",
    "/v1/{a}/{b}/{c}/{d}",
    "/v1/{a}/{b}/{c}/{d}/{e}",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    const char *pat = patterns[data[0] % (sizeof patterns / sizeof patterns[0])];
    char *buf = malloc(size);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    char *second = strchr(buf, '\n');
    if (second)
        *second++ = '\0';
    else
        second = buf + strlen(buf);

    nb_apiroute_params_t p;
    int bare = nb_apiroute_match(pat, buf, NULL);
    int full = nb_apiroute_match(pat, buf, &p);
    if (bare != 1 && full == 1)
        abort();
    if (bare == 1 && full == 0)
        abort();
    if (full == 1) {
        for (size_t i = 0; i < p.n; i++) {
            if (strchr(p.values[i], '/') || strlen(p.values[i]) > NB_APIROUTE_MAX_VALUE ||
                !nb_apiroute_param(&p, p.names[i]))
                abort();
        }
        nb_apiroute_params_free(&p);
    } else if (p.n != 0) {
        abort(); /* a failed match leaves nothing behind */
    }

    char out[80];
    int r = nb_apiroute_query_get(second, "token", out, sizeof out);
    if (r == 1 && strlen(out) >= sizeof out)
        abort();
    if (r != 0 && r != 1 && r != NB_EPARSE && r != NB_ETOOBIG)
        abort();
    (void)nb_apiroute_unix_host_ok(second);
    free(buf);
    return 0;
}
