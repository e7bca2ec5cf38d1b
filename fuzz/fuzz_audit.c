/* libFuzzer target for the audit log's parsers of API input
 * (src/daemon/audit.c): the `since` time parser and the kind filter.
 *
 * Input: a query value as it arrives (any bytes; a NUL ends it). Checks:
 * the parser never reads past the string, a parsed time is never negative
 * beyond the epoch's reach and never in the far future, and a valid kind
 * filter only holds the characters the SQL GLOB is safe with.
 *
 * The same bytes are also read as a head anchor file (audit.head,
 * nb_audit_anchor_read): it never reads past the file, and an anchor it
 * accepts (the MAC under the fixed fuzz key holds) is written back
 * byte-identical by nb_audit_anchor_write. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/audit.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t KEY[NB_AUDIT_KEY_BYTES] = "nilbox-fuzz-audit-anchor-key-32b";

static void anchor(const uint8_t *data, size_t size)
{
    char path[64], back[80];
    int64_t seq;
    char hash[65];
    snprintf(path, sizeof path, "/tmp/nb-fuzz-anchor-%d", (int)getpid());
    snprintf(back, sizeof back, "%s.w", path);
    FILE *f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(data, 1, size, f);
    fclose(f);
    int r = nb_audit_anchor_read(path, KEY, &seq, hash);
    if (r == 0) {
        if (seq < 0 || strlen(hash) != 64 || nb_audit_anchor_write(back, KEY, seq, hash) != 0)
            abort();
        f = fopen(back, "rb");
        char buf[512];
        size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f)
            fclose(f);
        if (n != size || memcmp(buf, data, n) != 0)
            abort();
        unlink(back);
    } else if (r != NB_EINVAL && r != NB_ECRYPTO) {
        abort();
    }
    unlink(path);
}

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
    anchor(data, size);
    return 0;
}
