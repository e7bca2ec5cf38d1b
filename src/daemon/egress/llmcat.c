/* The LLM provider catalogue: parsing and lookups (llmcat.h). */
#include "daemon/egress/llmcat.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"

#define MAX_APIS 32
#define MAX_PROVIDERS 64
#define MAX_HOSTS 16
#define MAX_ENDPOINTS 16
#define MAX_MODELS 256

typedef struct {
    char path[NB_LLM_PATH_MAX];
    const nb_llm_api_t *api;
} endpoint_t;

struct nb_llm_provider {
    char name[32];
    char hosts[MAX_HOSTS][96];
    size_t nhosts;
    endpoint_t ep[MAX_ENDPOINTS];
    size_t nep;
    int include_usage; /* -1: the API's */
    int64_t default_max_out;
    nb_llm_model_t *models;
    size_t nmodels;
};

struct nb_llmcat {
    char version[64];
    char prices_as_of[32];
    nb_llm_api_t apis[MAX_APIS];
    size_t napis;
    nb_llm_provider_t *prov;
    size_t nprov;
};

static int copy_str(char *dst, size_t sz, const json_t *v)
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) >= sz || !*s)
        return -1;
    memcpy(dst, s, strlen(s) + 1);
    return 0;
}

/* A list of dotted paths ("a.b" or a single string). */
static int copy_paths(char dst[][NB_LLM_PATH_MAX], const json_t *v)
{
    if (!v)
        return 0;
    if (json_is_string(v))
        return copy_str(dst[0], NB_LLM_PATH_MAX, v);
    if (!json_is_array(v) || json_array_size(v) > NB_LLM_PATHS)
        return -1;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (copy_str(dst[i], NB_LLM_PATH_MAX, json_array_get(v, i)) < 0)
            return -1;
    return 0;
}

static const char *const field_names[NB_UF_N] = {"model",   "input",  "output",
                                                 "output2", "cached", "cache_write"};

static int load_api(nb_llm_api_t *a, const char *name, const json_t *j, char *err, size_t errsz)
{
    if (strlen(name) >= sizeof a->name || !json_is_object(j)) {
        snprintf(err, errsz, "api '%.40s': not an object or name too long", name);
        return NB_EINVAL;
    }
    memcpy(a->name, name, strlen(name) + 1);
    const json_t *rq = json_object_get(j, "request"), *us = json_object_get(j, "usage");
    if (!json_is_object(us)) {
        snprintf(err, errsz, "api '%s': no usage object", name);
        return NB_EINVAL;
    }
    int bad = copy_paths(a->req_model, json_object_get(rq, "model")) < 0 ||
              copy_paths(a->req_max, json_object_get(rq, "max_out")) < 0;
    const json_t *st = json_object_get(rq, "stream");
    if (json_is_array(st) && json_array_size(st))
        st = json_array_get(st, 0);
    if (st && copy_str(a->req_stream, sizeof a->req_stream, st) < 0)
        bad = 1;
    for (int f = 0; f < NB_UF_N; f++)
        if (copy_paths(a->usage[f], json_object_get(us, field_names[f])) < 0)
            bad = 1;
    const json_t *h = json_object_get(j, "headers");
    if (h && ((json_object_get(h, "input") &&
               copy_str(a->hdr_in, sizeof a->hdr_in, json_object_get(h, "input")) < 0) ||
              (json_object_get(h, "output") &&
               copy_str(a->hdr_out, sizeof a->hdr_out, json_object_get(h, "output")) < 0)))
        bad = 1;
    const char *sm = json_string_value(json_object_get(j, "stream"));
    if (!sm)
        a->stream = NB_LLM_STREAM_NONE;
    else if (strcmp(sm, "sse") == 0)
        a->stream = NB_LLM_STREAM_SSE;
    else if (strcmp(sm, "eventstream") == 0)
        a->stream = NB_LLM_STREAM_EVENTSTREAM;
    else if (strcmp(sm, "eventstream-bytes") == 0)
        a->stream = NB_LLM_STREAM_EVENTSTREAM_BYTES;
    else
        bad = 1;
    a->include_usage = json_is_true(json_object_get(j, "include_usage"));
    a->model_from_path = json_is_true(json_object_get(j, "model_from_path"));
    a->no_output = json_is_true(json_object_get(j, "no_output"));
    a->cached_in_input = json_is_true(json_object_get(j, "cached_in_input"));
    if (bad) {
        snprintf(err, errsz, "api '%s': a malformed field (paths are strings of at most %d bytes)",
                 name, NB_LLM_PATH_MAX - 1);
        return NB_EINVAL;
    }
    return 0;
}

static double price(const json_t *m, const char *k, double def)
{
    const json_t *v = json_object_get(m, k);
    if (!json_is_number(v))
        return def;
    double d = json_number_value(v);
    return d >= 0 && d < 1e6 ? d : def;
}

static int load_provider(nb_llmcat_t *cat, nb_llm_provider_t *p, const json_t *j, char *err,
                         size_t errsz)
{
    if (copy_str(p->name, sizeof p->name, json_object_get(j, "name")) < 0) {
        snprintf(err, errsz, "a provider without a usable name");
        return NB_EINVAL;
    }
    const json_t *hosts = json_object_get(j, "hosts"), *eps = json_object_get(j, "endpoints");
    const json_t *models = json_object_get(j, "models");
    if (!json_is_array(hosts) || !json_array_size(hosts) || json_array_size(hosts) > MAX_HOSTS ||
        !json_is_array(eps) || !json_array_size(eps) || json_array_size(eps) > MAX_ENDPOINTS ||
        (models && (!json_is_array(models) || json_array_size(models) > MAX_MODELS))) {
        snprintf(err, errsz, "provider '%s': hosts, endpoints or models missing or too many",
                 p->name);
        return NB_EINVAL;
    }
    for (size_t i = 0; i < json_array_size(hosts); i++)
        if (copy_str(p->hosts[p->nhosts++], sizeof p->hosts[0], json_array_get(hosts, i)) < 0) {
            snprintf(err, errsz, "provider '%s': a bad host pattern", p->name);
            return NB_EINVAL;
        }
    for (size_t i = 0; i < json_array_size(eps); i++) {
        const json_t *e = json_array_get(eps, i);
        endpoint_t *ep = &p->ep[p->nep++];
        const char *api = json_string_value(json_object_get(e, "api"));
        for (size_t k = 0; api && k < cat->napis; k++)
            if (strcmp(cat->apis[k].name, api) == 0)
                ep->api = &cat->apis[k];
        if (copy_str(ep->path, sizeof ep->path, json_object_get(e, "path")) < 0 || !ep->api ||
            ep->path[0] != '/') {
            snprintf(err, errsz, "provider '%s': endpoint %zu has a bad path or unknown api",
                     p->name, i);
            return NB_EINVAL;
        }
    }
    const json_t *iu = json_object_get(j, "include_usage");
    p->include_usage = iu ? json_is_true(iu) : -1;
    json_int_t dm = json_integer_value(json_object_get(j, "default_max_out"));
    p->default_max_out = dm > 0 && dm < 10000000 ? dm : 8192;
    p->nmodels = models ? json_array_size(models) : 0;
    if (p->nmodels && !(p->models = calloc(p->nmodels, sizeof *p->models)))
        return -ENOMEM;
    for (size_t i = 0; i < p->nmodels; i++) {
        const json_t *m = json_array_get(models, i);
        nb_llm_model_t *mm = &p->models[i];
        if (copy_str(mm->match, sizeof mm->match, json_object_get(m, "match")) < 0) {
            snprintf(err, errsz, "provider '%s': model %zu has no match", p->name, i);
            return NB_EINVAL;
        }
        mm->in = price(m, "in", 0);
        mm->out = price(m, "out", 0);
        mm->cached = price(m, "cached", mm->in);
        mm->cache_write = price(m, "cache_write", mm->in);
        json_int_t mo = json_integer_value(json_object_get(m, "max_out"));
        mm->max_out = mo > 0 && mo < 10000000 ? mo : 0;
    }
    return 0;
}

int nb_llmcat_load(const char *text, size_t len, nb_llmcat_t **out, char *err, size_t errsz)
{
    *out = NULL;
    err[0] = '\0';
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        snprintf(err, errsz, "not JSON: %s (line %d)", je.text, je.line);
        return NB_EINVAL;
    }
    int r = NB_EINVAL;
    nb_llmcat_t *cat = calloc(1, sizeof *cat);
    if (!cat) {
        r = -ENOMEM;
        goto out;
    }
    if (json_integer_value(json_object_get(j, "format")) != 1) {
        snprintf(err, errsz, "unknown catalogue format (this build reads format 1)");
        goto out;
    }
    if (copy_str(cat->version, sizeof cat->version, json_object_get(j, "version")) < 0)
        snprintf(cat->version, sizeof cat->version, "unversioned");
    if (copy_str(cat->prices_as_of, sizeof cat->prices_as_of, json_object_get(j, "prices_as_of")) <
        0)
        snprintf(cat->prices_as_of, sizeof cat->prices_as_of, "unknown");
    const json_t *apis = json_object_get(j, "apis"), *provs = json_object_get(j, "providers");
    if (!json_is_object(apis) || json_object_size(apis) > MAX_APIS || !json_is_array(provs) ||
        json_array_size(provs) > MAX_PROVIDERS) {
        snprintf(err, errsz, "apis (object) or providers (array) missing or too many");
        goto out;
    }
    const char *k;
    const json_t *v;
    json_object_foreach ((json_t *)apis, k, v) {
        if ((r = load_api(&cat->apis[cat->napis++], k, v, err, errsz)) < 0)
            goto out;
    }
    r = NB_EINVAL;
    cat->nprov = json_array_size(provs);
    if (cat->nprov && !(cat->prov = calloc(cat->nprov, sizeof *cat->prov))) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < cat->nprov; i++)
        if ((r = load_provider(cat, &cat->prov[i], json_array_get(provs, i), err, errsz)) < 0)
            goto out;
    *out = cat;
    cat = NULL;
    r = 0;
out:
    nb_llmcat_free(cat);
    json_decref(j);
    return r;
}

void nb_llmcat_free(nb_llmcat_t *cat)
{
    if (!cat)
        return;
    for (size_t i = 0; i < cat->nprov; i++)
        free(cat->prov[i].models);
    free(cat->prov);
    free(cat);
}

const char *nb_llmcat_version(const nb_llmcat_t *cat)
{
    return cat->version;
}

const char *nb_llmcat_prices_as_of(const nb_llmcat_t *cat)
{
    return cat->prices_as_of;
}

int nb_llmcat_glob(const char *pat, const uint8_t *s, size_t len, char sep, char *star,
                   size_t starsz)
{
    size_t i = 0;
    int first = 1;
    for (; *pat; pat++) {
        if (*pat != '*') {
            if (i >= len || s[i] != (uint8_t)*pat)
                return 0;
            i++;
            continue;
        }
        /* The run ends where the rest of the pattern's next literal byte
         * first matches after at least one byte (paths and hosts put a
         * separator right after a '*'). */
        char next = pat[1];
        size_t j = i;
        while (j < len && s[j] != (uint8_t)sep && (next == '\0' || j == i || s[j] != (uint8_t)next))
            j++;
        if (j == i)
            return 0;
        if (first && star) {
            size_t n = j - i < starsz - 1 ? j - i : starsz - 1;
            memcpy(star, s + i, n);
            star[n] = '\0';
        }
        first = 0;
        i = j;
    }
    return i == len;
}

/* SDKs percent-encode the model in the path (the AWS SDK sends Bedrock's
 * "...-v1:0" as "...-v1%3A0"); the record and the price lookup want the id.
 * Only printable ASCII is decoded: anything else stays as sent. */
static void pct_decode(char *s)
{
    char *o = s;
    for (const char *i = s; *i; i++) {
        int hi = i[0] == '%' ? nb_hexval(i[1]) : -1, lo = hi >= 0 ? nb_hexval(i[2]) : -1;
        int c = hi * 16 + lo;
        if (hi >= 0 && lo >= 0 && c > 0x20 && c < 0x7f) {
            *o++ = (char)c;
            i += 2;
        } else {
            *o++ = *i;
        }
    }
    *o = '\0';
}

int nb_llmcat_match(const nb_llmcat_t *cat, const char *host, const char *method, nb_iov_t target,
                    nb_llm_match_t *m)
{
    memset(m, 0, sizeof *m);
    if (!cat || strcmp(method, "POST") != 0)
        return 0;
    size_t plen = 0;
    while (plen < target.len && target.p[plen] != '?' && target.p[plen] != '#')
        plen++;
    size_t hlen = strlen(host);
    for (size_t i = 0; i < cat->nprov; i++) {
        const nb_llm_provider_t *p = &cat->prov[i];
        int hit = 0;
        for (size_t h = 0; h < p->nhosts && !hit; h++)
            hit = nb_llmcat_glob(p->hosts[h], (const uint8_t *)host, hlen, '.', NULL, 0);
        if (!hit)
            continue;
        for (size_t e = 0; e < p->nep; e++) {
            char star[NB_LLM_MODEL_MAX] = "";
            if (!nb_llmcat_glob(p->ep[e].path, target.p, plen, '/', star, sizeof star))
                continue;
            m->prov = p;
            m->provider = p->name;
            m->api = p->ep[e].api;
            m->include_usage = p->include_usage >= 0 ? p->include_usage : m->api->include_usage;
            m->default_max_out = p->default_max_out;
            if (m->api->model_from_path) {
                memcpy(m->path_model, star, sizeof star);
                pct_decode(m->path_model);
            }
            return 1;
        }
    }
    return 0;
}

const nb_llm_model_t *nb_llmcat_model(const nb_llm_provider_t *p, const char *model)
{
    const nb_llm_model_t *best = NULL;
    size_t bestlen = 0;
    if (!p || !model)
        return NULL;
    /* Bedrock ids carry a region prefix ("us.anthropic...") and OpenRouter
     * a vendor ("openai/gpt-4o"): match after the last '/' or at a '.'
     * boundary too. The places a match may start are found once (a model
     * is priced twice per request or more). */
    enum { STARTS = 16 };
    const char *start[STARTS];
    size_t ns = 0;
    start[ns++] = model;
    for (const char *d = model; (d = strpbrk(d, "./")) != NULL && ns < STARTS;)
        start[ns++] = ++d;
    if (ns == STARTS && strpbrk(start[ns - 1], "./"))
        ns = 0; /* more boundaries than kept: every one below */
    for (size_t i = 0; i < p->nmodels; i++) {
        const char *pat = p->models[i].match;
        size_t n = strlen(pat);
        if (n <= bestlen)
            continue;
        for (size_t k = 0; k < ns; k++)
            if (start[k][0] == pat[0] && strncmp(start[k], pat, n) == 0) {
                best = &p->models[i];
                bestlen = n;
                break;
            }
        for (const char *s = ns ? NULL : model; s;) {
            if (strncmp(s, pat, n) == 0 && n > bestlen) {
                best = &p->models[i];
                bestlen = n;
            }
            const char *d = strpbrk(s, "./");
            s = d ? d + 1 : NULL;
        }
    }
    return best;
}

const nb_llm_model_t *nb_llmcat_model_at(const nb_llm_provider_t *p, size_t i)
{
    return p && i < p->nmodels ? &p->models[i] : NULL;
}

double nb_llmcat_cost(const nb_llm_model_t *m, int64_t in, int64_t out, int64_t cached,
                      int64_t cache_write)
{
    if (!m)
        return 0;
    return ((double)in * m->in + (double)out * m->out + (double)cached * m->cached +
            (double)cache_write * m->cache_write) /
           1e6;
}
