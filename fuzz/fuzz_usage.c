/* libFuzzer target for the usage extractors (src/daemon/egress/usagex.c):
 * the JSON scanner, SSE and AWS event-stream framing through the meter,
 * and the request body reader.
 *
 * Byte 0 picks the API (from the built-in catalogue) and the framing,
 * byte 1 a split step. The rest is metered whole and in pieces, and whole
 * without the shortcut that skips what cannot hold usage
 * (nb_umeter_exhaustive): the results must be identical, and counts stay
 * within the documented cap. The rest is also read as a request body:
 * when the scan says it stands for a parse and jansson reads an object,
 * both must read the same fields. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/llmcat.h"
#include "daemon/egress/usagex.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nb_llmcat_t *cat;

static const char *const hosts[][2] = {
    {"api.openai.com", "/v1/chat/completions"},
    {"api.openai.com", "/v1/responses"},
    {"api.anthropic.com", "/v1/messages"},
    {"generativelanguage.googleapis.com", "/v1beta/models/g:streamGenerateContent"},
    {"bedrock-runtime.x.amazonaws.com", "/model/m/converse-stream"},
    {"bedrock-runtime.x.amazonaws.com", "/model/m/invoke-with-response-stream"},
};
static const char *const ctypes[] = {"application/json", "text/event-stream",
                                     "application/vnd.amazon.eventstream"};

static void run(const nb_llm_api_t *api, const char *ct, const uint8_t *p, size_t n, size_t step,
                int exhaustive, nb_usage_seen_t *out)
{
    nb_umeter_t *m;
    if (nb_umeter_new(api, nb_iov(ct, strlen(ct)), nb_iov("", 0), &m) < 0)
        abort();
    if (exhaustive)
        nb_umeter_exhaustive(m);
    for (size_t off = 0; off < n; off += step)
        nb_umeter_feed(m, p + off, n - off < step ? n - off : step);
    nb_umeter_finish(m);
    *out = *nb_umeter_seen(m);
    nb_umeter_free(m);
    for (int f = 1; f < NB_UF_N; f++)
        if (out->v[f] < -1 || out->v[f] > NB_USAGE_MAX_TOKENS)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!cat) {
        char err[256];
        if (nb_llmcat_load((const char *)nb_llmcat_builtin, nb_llmcat_builtin_len, &cat, err,
                           sizeof err) < 0)
            abort();
    }
    if (size < 2)
        return 0;
    size_t h = data[0] % (sizeof hosts / sizeof hosts[0]);
    const char *ct = ctypes[(data[0] >> 4) % 3];
    size_t step = (size_t)data[1] % 64 + 1;
    nb_llm_match_t mt;
    const char *path = hosts[h][1];
    if (!nb_llmcat_match(cat, hosts[h][0], "POST", nb_iov(path, strlen(path)), &mt))
        abort();
    nb_usage_seen_t a, b, c;
    run(mt.api, ct, data + 2, size - 2, size, 0, &a);
    run(mt.api, ct, data + 2, size - 2, step, 0, &b);
    run(mt.api, ct, data + 2, size - 2, size, 1, &c);
    if (memcmp(a.v, b.v, sizeof a.v) != 0 || strcmp(a.model, b.model) != 0 ||
        a.failed != b.failed || a.malformed != b.malformed || a.bytes != b.bytes)
        abort();
    if (memcmp(a.v, c.v, sizeof a.v) != 0 || strcmp(a.model, c.model) != 0 ||
        a.failed != c.failed || a.malformed != c.malformed || a.bytes != c.bytes ||
        a.events != c.events)
        abort();
    nb_usage_body_t sb, pb;
    if (nb_usage_body_scan(mt.api, data + 2, size - 2, &sb)) {
        nb_usage_body_parse(mt.api, data + 2, size - 2, &pb);
        if (pb.object && (strcmp(sb.model, pb.model) != 0 || sb.max_out != pb.max_out ||
                          sb.stream != pb.stream || sb.include_usage != pb.include_usage ||
                          sb.has_options != pb.has_options))
            abort();
    }
    return 0;
}
