/* The LLM provider catalogue (data/llm-catalogue.json, compiled in; a copy
 * in the nilbox home overrides it): which hosts and paths are LLM APIs,
 * where a request names its model and output cap, where a response
 * carries its token usage, and list prices. See docs/internals/usage.md.
 *
 * Pure, no I/O; immutable once loaded (shared by every exchange). */
#ifndef NB_LLMCAT_H
#define NB_LLMCAT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define NB_LLM_PATHS 4     /* alternative JSON paths per field */
#define NB_LLM_PATH_MAX 96 /* bytes of one dotted path */
#define NB_LLM_MODEL_MAX 128

/* Usage fields a response may carry ("output2": reasoning tokens that
 * Gemini counts apart and bills as output). */
typedef enum {
    NB_UF_MODEL = 0,
    NB_UF_INPUT,
    NB_UF_OUTPUT,
    NB_UF_OUTPUT2,
    NB_UF_CACHED,
    NB_UF_CACHE_WRITE,
    NB_UF_N
} nb_usage_field_t;

typedef enum {
    NB_LLM_STREAM_NONE = 0,
    NB_LLM_STREAM_SSE,               /* text/event-stream: each event's data is JSON */
    NB_LLM_STREAM_EVENTSTREAM,       /* AWS event-stream frames whose payload is JSON */
    NB_LLM_STREAM_EVENTSTREAM_BYTES, /* ... whose payload is {"bytes": base64(JSON)} */
} nb_llm_stream_t;

typedef struct {
    char name[32];
    char req_model[NB_LLM_PATHS][NB_LLM_PATH_MAX];
    char req_max[NB_LLM_PATHS][NB_LLM_PATH_MAX];
    char req_stream[NB_LLM_PATH_MAX];
    char usage[NB_UF_N][NB_LLM_PATHS][NB_LLM_PATH_MAX]; /* "" = unused */
    char hdr_in[64], hdr_out[64]; /* usage in response headers (Bedrock InvokeModel) */
    int stream;                   /* nb_llm_stream_t of a streamed response */
    unsigned include_usage : 1;   /* OpenAI stream_options.include_usage applies */
    unsigned model_from_path : 1; /* the path's '*' names the model */
    unsigned no_output : 1;       /* embeddings: no output tokens, no output cap */
    unsigned cached_in_input : 1; /* the input count includes the cached tokens (OpenAI, Gemini) */
} nb_llm_api_t;

typedef struct {
    char match[NB_LLM_MODEL_MAX];        /* model name prefix; the longest match wins */
    double in, out, cached, cache_write; /* USD per million tokens; cached < 0: = in */
    int64_t max_out;                     /* the model's output cap, 0: provider default */
} nb_llm_model_t;

typedef struct nb_llm_provider nb_llm_provider_t;
typedef struct nb_llmcat nb_llmcat_t;

/* What nb_llmcat_match found for one request. */
typedef struct {
    const nb_llm_provider_t *prov;
    const char *provider; /* its name */
    const nb_llm_api_t *api;
    int include_usage;                 /* the API's, unless the provider turns it off */
    int64_t default_max_out;           /* the provider's cap for unknown models */
    char path_model[NB_LLM_MODEL_MAX]; /* the path's '*' (model_from_path), else "" */
} nb_llm_match_t;

/* Parses a catalogue. 0, or NB_EINVAL with a sentence in `err`, or -ENOMEM.
 * Caps: 32 APIs, 64 providers, 16 hosts, 16 endpoints and 256 models each. */
int nb_llmcat_load(const char *json, size_t len, nb_llmcat_t **out, char *err, size_t errsz);
void nb_llmcat_free(nb_llmcat_t *cat); /* NULL is a no-op */

/* The built-in catalogue text (generated from data/llm-catalogue.json). */
extern const unsigned char nb_llmcat_builtin[];
extern const size_t nb_llmcat_builtin_len;

/* The catalogue's "version" and "prices_as_of" strings. */
const char *nb_llmcat_version(const nb_llmcat_t *cat);
const char *nb_llmcat_prices_as_of(const nb_llmcat_t *cat);

/* Is `method` `host` `target` (origin-form, query ignored) an LLM API? 1
 * and *m filled, or 0. `host` lowercase (nb_hostname normalised). */
int nb_llmcat_match(const nb_llmcat_t *cat, const char *host, const char *method, nb_iov_t target,
                    nb_llm_match_t *m);

/* The price entry of `model` at the provider (longest prefix), or NULL. */
const nb_llm_model_t *nb_llmcat_model(const nb_llm_provider_t *p, const char *model);

/* The provider's i-th model entry, or NULL past the end. */
const nb_llm_model_t *nb_llmcat_model_at(const nb_llm_provider_t *p, size_t i);

/* Cost in USD of a count at the model's prices (0 when unknown). */
double nb_llmcat_cost(const nb_llm_model_t *m, int64_t in, int64_t out, int64_t cached,
                      int64_t cache_write);

/* '*' in `pat` matches a non-empty run without '/' (paths) or without '.'
 * (host labels when `sep` is '.'); the matched run of the first '*' goes
 * to `star` (capped). 1 on a match. */
int nb_llmcat_glob(const char *pat, const uint8_t *s, size_t len, char sep, char *star,
                   size_t starsz);

#endif
