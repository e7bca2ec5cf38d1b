/* libFuzzer target for the LLM catalogue loader (src/daemon/egress/llmcat.c).
 * A user can replace the built-in catalogue with a file in the home, so its
 * parser takes untrusted JSON: any input either loads or fails with a
 * message; what loads must answer lookups without reading out of bounds.
 * Inputs that do not load exercise the glob matcher instead (pattern and
 * subject split at the first NUL). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/llmcat.h"
#include "lib/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const probes[][2] = {
    {"api.openai.com", "/v1/chat/completions"},
    {"api.anthropic.com", "/v1/messages?beta=true"},
    {"generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent"},
    {"bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3/converse-stream"},
    {"x", "/"},
    {"a.b.c.d.e.f", "/a/b/c/d/e/f/g/h"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    nb_llmcat_t *cat = NULL;
    int rc = nb_llmcat_load((const char *)data, size, &cat, err, sizeof err);
    if (rc == 0) {
        if (!nb_llmcat_version(cat) || !nb_llmcat_prices_as_of(cat))
            abort();
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            nb_llm_match_t m;
            const char *t = probes[i][1];
            if (!nb_llmcat_match(cat, probes[i][0], "POST", nb_iov(t, strlen(t)), &m))
                continue;
            if (!m.prov || !m.api || !m.provider || strlen(m.path_model) >= NB_LLM_MODEL_MAX)
                abort();
            const nb_llm_model_t *md = nb_llmcat_model(m.prov, m.path_model);
            for (size_t k = 0; nb_llmcat_model_at(m.prov, k); k++)
                md = nb_llmcat_model_at(m.prov, k);
            double c = nb_llmcat_cost(md, 1000000, 1000000, 1000, 1000);
            if (c != c || c < 0)
                abort();
        }
        nb_llmcat_free(cat);
        return 0;
    }
    if (rc == NB_EINVAL && !err[0])
        abort(); /* a refusal always says why */
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul)
        return 0;
    char pat[128], star[32];
    size_t pl = (size_t)(nul - data) < sizeof pat - 1 ? (size_t)(nul - data) : sizeof pat - 1;
    memcpy(pat, data, pl);
    pat[pl] = 0;
    const uint8_t *s = nul + 1;
    size_t sl = size - (size_t)(nul - data) - 1;
    if (nb_llmcat_glob(pat, s, sl, (sl & 1) ? '.' : '/', star, sizeof star) &&
        strlen(star) >= sizeof star)
        abort();
    return 0;
}
