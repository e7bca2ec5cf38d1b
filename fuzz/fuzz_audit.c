/* libFuzzer target for the audit log's parsers of API input
 * (src/daemon/audit.c): the `since` time parser and the kind filter.
 *
 * Input: a query value as it arrives (any bytes; a NUL ends it). Checks:
 * the parser never reads past the string, a parsed time is never negative
 * beyond the epoch's reach and never in the far future, and a valid kind
 * filter only holds the characters the SQL GLOB is safe with. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/audit.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    int64_t ms = -1, now = 1800000000000LL;
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    int r = nb_audit_parse_time(s, now, &ms);
    if (r == 0 && (ms < -(int64_t)86400000 * 2 || ms > (int64_t)1e15))
        abort();
    if (r != 0 && (r != NB_EINVAL || ms != 0))
        abort();
    if (nb_audit_kind_filter_valid(s)) {
        size_t n = strlen(s);
        if (n == 0 || n > NB_AUDIT_KIND_MAX)
            abort();
        for (size_t i = 0; i < n; i++)
            if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789._-", s[i]) &&
                !(s[i] == '*' && i == n - 1))
                abort();
    }
    free(s);
    return 0;
}
