/* Unit tests for src/daemon/egress/usagex and llmcat: the built-in
 * catalogue's matches and prices, and usage extraction from each
 * provider's wire format, fed whole, split at every byte boundary and
 * byte by byte (the counts must not depend on how the bytes arrive). */
#include <errno.h>
#include <stdlib.h>
#include <zlib.h>

#include "daemon/egress/llmcat.h"
#include "daemon/egress/usagex.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "nbtest.h"

static nb_llmcat_t *cat;

static const nb_llm_api_t *api_for(const char *host, const char *path)
{
    nb_llm_match_t m;
    if (!nb_llmcat_match(cat, host, "POST", nb_iov(path, strlen(path)), &m))
        return NULL;
    return m.api;
}

/* Runs the meter over `body` in every two-piece split plus byte by byte,
 * and once more whole without the shortcut (nb_umeter_exhaustive); every
 * run must give the same result, which goes to *out. */
static void meter_all(const nb_llm_api_t *api, const char *ctype, const char *cenc,
                      const uint8_t *body, size_t len, nb_usage_seen_t *out)
{
    nb_usage_seen_t first;
    memset(&first, 0, sizeof first);
    for (size_t split = 0; split <= len + 2; split++) {
        nb_umeter_t *m;
        int r = nb_umeter_new(api, nb_iov(ctype, strlen(ctype)), nb_iov(cenc, strlen(cenc)), &m);
        NB_CHECK(r == 0 && m);
        if (!m)
            return;
        if (split == len + 2) {
            nb_umeter_exhaustive(m);
            nb_umeter_feed(m, body, len);
        } else if (split <= len) {
            nb_umeter_feed(m, body, split);
            nb_umeter_feed(m, body + split, len - split);
        } else {
            for (size_t i = 0; i < len; i++)
                nb_umeter_feed(m, body + i, 1);
        }
        nb_umeter_finish(m);
        const nb_usage_seen_t *s = nb_umeter_seen(m);
        if (split == 0) {
            first = *s;
        } else if (memcmp(s->v, first.v, sizeof s->v) != 0 || strcmp(s->model, first.model) ||
                   s->failed != first.failed || s->malformed != first.malformed) {
            fprintf(stderr, "split %zu differs\n", split);
            NB_CHECK(0);
            nb_umeter_free(m);
            break;
        }
        nb_umeter_free(m);
    }
    *out = first;
}

#define S(x) (const uint8_t *)(x), sizeof(x) - 1

static void test_catalogue(void)
{
    nb_llm_match_t m;
    NB_CHECK(
        nb_llmcat_match(cat, "api.openai.com", "POST", NB_IOV_STR("/v1/chat/completions"), &m));
    NB_CHECK_STR(m.provider, "openai");
    NB_CHECK_STR(m.api->name, "openai-chat");
    NB_CHECK(m.include_usage);
    NB_CHECK(
        nb_llmcat_match(cat, "api.openai.com", "POST", NB_IOV_STR("/v1/chat/completions?x=1"), &m));
    NB_CHECK(
        !nb_llmcat_match(cat, "api.openai.com", "GET", NB_IOV_STR("/v1/chat/completions"), &m));
    NB_CHECK(!nb_llmcat_match(cat, "api.openai.com", "POST", NB_IOV_STR("/v1/models"), &m));
    NB_CHECK(!nb_llmcat_match(cat, "evil-api.openai.com.example", "POST",
                              NB_IOV_STR("/v1/chat/completions"), &m));
    NB_CHECK(nb_llmcat_match(cat, "generativelanguage.googleapis.com", "POST",
                             NB_IOV_STR("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
                             &m));
    NB_CHECK_STR(m.path_model, "gemini-2.0-flash");
    NB_CHECK(nb_llmcat_match(cat, "bedrock-runtime.us-east-1.amazonaws.com", "POST",
                             NB_IOV_STR("/model/anthropic.claude-3-haiku-20240307-v1:0/converse"),
                             &m));
    NB_CHECK_STR(m.path_model, "anthropic.claude-3-haiku-20240307-v1:0");
    NB_CHECK_STR(m.api->name, "bedrock-converse");
    /* As the AWS SDK sends it: percent-encoded; only printable ASCII is decoded. */
    NB_CHECK(nb_llmcat_match(cat, "bedrock-runtime.us-east-1.amazonaws.com", "POST",
                             NB_IOV_STR("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
                             &m));
    NB_CHECK_STR(m.path_model, "anthropic.claude-3-haiku-20240307-v1:0");
    NB_CHECK(nb_llmcat_match(cat, "bedrock-runtime.us-east-1.amazonaws.com", "POST",
                             NB_IOV_STR("/model/a%0Ab%3%zz%/converse"), &m));
    NB_CHECK_STR(m.path_model, "a%0Ab%3%zz%");
    NB_CHECK(!nb_llmcat_match(cat, "bedrock-runtime.amazonaws.com", "POST",
                              NB_IOV_STR("/model/x/converse"), &m));
    NB_CHECK(
        nb_llmcat_match(cat, "api.mistral.ai", "POST", NB_IOV_STR("/v1/chat/completions"), &m));
    NB_CHECK(!m.include_usage); /* the provider turns it off */
    NB_CHECK(nb_llmcat_match(cat, "api.anthropic.com", "POST", NB_IOV_STR("/v1/messages"), &m));
    const nb_llm_model_t *mm = nb_llmcat_model(m.prov, "claude-3-5-haiku-20241022");
    NB_CHECK(mm && strcmp(mm->match, "claude-3-5-haiku") == 0);
    NB_CHECK(
        nb_llmcat_match(cat, "api.openai.com", "POST", NB_IOV_STR("/v1/chat/completions"), &m));
    mm = nb_llmcat_model(m.prov, "gpt-4o-mini-2024-07-18");
    NB_CHECK(mm && strcmp(mm->match, "gpt-4o-mini") == 0); /* longest prefix, not gpt-4o */
    NB_CHECK(nb_llmcat_model(m.prov, "unknown-model") == NULL);
    double c = nb_llmcat_cost(mm, 1000000, 1000000, 0, 0);
    NB_CHECK(c > 0.74 && c < 0.76);
    /* After a vendor or region prefix, at any '/' or '.' boundary, also
     * past the 16 boundaries nb_llmcat_model notes at once. */
    mm = nb_llmcat_model(m.prov, "openai/gpt-4o-2024-08-06");
    NB_CHECK(mm && strcmp(mm->match, "gpt-4o") == 0);
    mm = nb_llmcat_model(m.prov, "us.gpt-4.1-mini");
    NB_CHECK(mm && strcmp(mm->match, "gpt-4.1-mini") == 0);
    mm = nb_llmcat_model(m.prov, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r/o3-mini");
    NB_CHECK(mm && strcmp(mm->match, "o3-mini") == 0);
    NB_CHECK(nb_llmcat_model(m.prov, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r/x") == NULL);

    /* Bad catalogues are refused with a sentence. */
    char err[256];
    nb_llmcat_t *bad = NULL;
    NB_CHECK_EQ_INT(nb_llmcat_load("{", 1, &bad, err, sizeof err), NB_EINVAL);
    NB_CHECK(err[0] && !bad);
    const char *nofmt = "{\"format\":2,\"apis\":{},\"providers\":[]}";
    NB_CHECK_EQ_INT(nb_llmcat_load(nofmt, strlen(nofmt), &bad, err, sizeof err), NB_EINVAL);
    const char *badapi = "{\"format\":1,\"apis\":{},\"providers\":[{\"name\":\"x\",\"hosts\":"
                         "[\"h\"],\"endpoints\":[{\"path\":\"/a\",\"api\":\"nope\"}]}]}";
    NB_CHECK_EQ_INT(nb_llmcat_load(badapi, strlen(badapi), &bad, err, sizeof err), NB_EINVAL);
}

static void test_openai_json(void)
{
    static const char body[] =
        "{\n  \"id\": \"chatcmpl-abc\",\n  \"object\": \"chat.completion\",\n  \"created\": "
        "1741569952,\n  \"model\": \"gpt-4o-mini-2024-07-18\",\n  \"choices\": [{\"index\": 0, "
        "\"message\": {\"role\": \"assistant\", \"content\": \"Hi \\\"there\\\" \\u00e9\", "
        "\"usage\": {\"prompt_tokens\": 999}}, \"finish_reason\": \"stop\"}],\n  \"usage\": "
        "{\"prompt_tokens\": 19, \"completion_tokens\": 10, \"total_tokens\": 29, "
        "\"prompt_tokens_details\": {\"cached_tokens\": 3, \"audio_tokens\": 0}, "
        "\"completion_tokens_details\": {\"reasoning_tokens\": 0}},\n  \"service_tier\": "
        "\"default\"\n}\n";
    nb_usage_seen_t s;
    meter_all(api_for("api.openai.com", "/v1/chat/completions"), "application/json", "", S(body),
              &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 19);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 10);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 3);
    NB_CHECK_STR(s.model, "gpt-4o-mini-2024-07-18");
    NB_CHECK_EQ_INT(s.failed, 0);
    NB_CHECK_EQ_INT(s.malformed, 0);
}

static void test_openai_sse(void)
{
    static const char body[] =
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],"
        "\"usage\":null}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\","
        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\","
        "\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,"
        "\"total_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"
        "data: [DONE]\n\n";
    nb_usage_seen_t s;
    meter_all(api_for("api.openai.com", "/v1/chat/completions"), "text/event-stream; charset=utf-8",
              "", S(body), &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 8);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 2);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 0);
    NB_CHECK_EQ_INT(s.events, 4);
    NB_CHECK_STR(s.model, "gpt-4o");
}

static void test_responses_sse(void)
{
    static const char body[] =
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":"
        "\"resp_1\",\"model\":\"gpt-4.1\",\"usage\":null}}\n\n"
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","
        "\"delta\":\"Hi\"}\n\n"
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":"
        "\"resp_1\",\"model\":\"gpt-4.1-2025-04-14\",\"usage\":{\"input_tokens\":36,"
        "\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":87,"
        "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":123}}}\n\n";
    nb_usage_seen_t s;
    meter_all(api_for("api.openai.com", "/v1/responses"), "text/event-stream", "", S(body), &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 36);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 87);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 4);
    NB_CHECK_STR(s.model, "gpt-4.1-2025-04-14");
}

static void test_anthropic_sse(void)
{
    static const char body[] =
        "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\","
        "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":"
        "\"claude-3-5-haiku-20241022\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,"
        "\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,"
        "\"output_tokens\":1}}}\r\n\r\n"
        "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n"
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\r\n\r\n"
        "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
        "\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n"
        "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
    nb_usage_seen_t s;
    meter_all(api_for("api.anthropic.com", "/v1/messages"), "text/event-stream", "", S(body), &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 25);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 15);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 2000);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHE_WRITE], 100);
    NB_CHECK_STR(s.model, "claude-3-5-haiku-20241022");
}

static void test_gemini(void)
{
    static const char sse[] =
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"A\"}],\"role\": "
        "\"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 1,"
        "\"totalTokenCount\": 10},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n"
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"B\"}],\"role\": "
        "\"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 9,"
        "\"candidatesTokenCount\": 12,\"totalTokenCount\": 21,\"promptTokensDetails\": "
        "[{\"modality\": \"TEXT\",\"tokenCount\": 9}]},\"modelVersion\": \"gemini-2.0-flash\"}"
        "\r\n\r\n";
    const nb_llm_api_t *api =
        api_for("generativelanguage.googleapis.com", "/v1beta/models/x:streamGenerateContent");
    nb_usage_seen_t s;
    meter_all(api, "text/event-stream", "", S(sse), &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 9);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 12);
    NB_CHECK_STR(s.model, "gemini-2.0-flash");
    /* Without alt=sse the stream is one JSON array of the same objects. */
    static const char arr[] =
        "[{\"candidates\": [],\"usageMetadata\": {\"promptTokenCount\": 5,"
        "\"candidatesTokenCount\": 1}}\n,\r\n{\"candidates\": [],\"usageMetadata\": "
        "{\"promptTokenCount\": 5,\"candidatesTokenCount\": 7,\"thoughtsTokenCount\": 30,"
        "\"cachedContentTokenCount\": 2}}\n]";
    meter_all(api, "application/json; charset=UTF-8", "", S(arr), &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 5);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 7);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT2], 30);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 2);
    NB_CHECK_EQ_INT(s.failed, 0);
}

/* One AWS event-stream frame with string headers. */
static void put32(nb_buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    nb_buf_append(b, x, 4);
}

static void frame(nb_buf_t *b, const char *etype, const char *payload)
{
    nb_buf_t h;
    nb_buf_init(&h, 4096);
    const char *names[3] = {":event-type", ":content-type", ":message-type"};
    const char *vals[3] = {etype, "application/json", "event"};
    for (int i = 0; i < 3; i++) {
        uint8_t nl = (uint8_t)strlen(names[i]), t = 7;
        uint16_t vl = (uint16_t)strlen(vals[i]);
        uint8_t vlb[2] = {(uint8_t)(vl >> 8), (uint8_t)vl};
        nb_buf_append(&h, &nl, 1);
        nb_buf_append_str(&h, names[i]);
        nb_buf_append(&h, &t, 1);
        nb_buf_append(&h, vlb, 2);
        nb_buf_append_str(&h, vals[i]);
    }
    size_t start = b->len, pl = strlen(payload);
    put32(b, (uint32_t)(16 + h.len + pl));
    put32(b, (uint32_t)h.len);
    put32(b, (uint32_t)crc32(0, b->p + start, 8));
    nb_buf_append(b, h.p, h.len);
    nb_buf_append(b, payload, pl);
    put32(b, (uint32_t)crc32(0, b->p + start, (uInt)(b->len - start)));
    nb_buf_free(&h);
}

static void test_bedrock(void)
{
    nb_buf_t b;
    nb_buf_init(&b, 1 << 20);
    frame(&b, "messageStart", "{\"p\":\"abcd\",\"role\":\"assistant\"}");
    frame(&b, "contentBlockDelta",
          "{\"contentBlockIndex\":0,\"delta\":{\"text\":\"Hi\"},\"p\":\"x\"}");
    frame(&b, "messageStop", "{\"p\":\"ab\",\"stopReason\":\"end_turn\"}");
    frame(&b, "metadata",
          "{\"metrics\":{\"latencyMs\":300},\"p\":\"abc\",\"usage\":{\"inputTokens\":11,"
          "\"outputTokens\":22,\"totalTokens\":33,\"cacheReadInputTokens\":4}}");
    const nb_llm_api_t *api = api_for("bedrock-runtime.eu-west-1.amazonaws.com",
                                      "/model/amazon.nova-lite-v1:0/converse-stream");
    NB_CHECK(api != NULL);
    nb_usage_seen_t s;
    meter_all(api, "application/vnd.amazon.eventstream", "", b.p, b.len, &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 11);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 22);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 4);
    NB_CHECK_EQ_INT(s.events, 4);
    NB_CHECK_EQ_INT(s.failed, 0);

    /* A flipped payload byte fails the message CRC: nothing more is read. */
    b.p[b.len - 10] ^= 1;
    meter_all(api, "application/vnd.amazon.eventstream", "", b.p, b.len, &s);
    NB_CHECK_EQ_INT(s.failed, 1);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], -1);

    /* InvokeModelWithResponseStream: base64 chunks of the model's JSON. */
    nb_buf_reset(&b);
    /* {"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":7,"outputTokenCount":5}}
     */
    frame(&b, "chunk",
          "{\"bytes\":\"eyJ0eXBlIjoibWVzc2FnZV9zdG9wIiwiYW1hem9uLWJlZHJvY2staW52b2NhdGlvbk1ldHJp"
          "Y3MiOnsiaW5wdXRUb2tlbkNvdW50Ijo3LCJvdXRwdXRUb2tlbkNvdW50Ijo1fX0=\"}");
    api = api_for("bedrock-runtime.eu-west-1.amazonaws.com",
                  "/model/anthropic.claude-3-haiku/invoke-with-response-stream");
    meter_all(api, "application/vnd.amazon.eventstream", "", b.p, b.len, &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 7);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 5);
    nb_buf_free(&b);
}

static void test_gzip(void)
{
    static const char body[] = "{\"model\":\"gpt-4o\",\"usage\":{\"prompt_tokens\":123,"
                               "\"completion_tokens\":456}}";
    uint8_t out[512];
    z_stream z;
    memset(&z, 0, sizeof z);
    NB_CHECK(deflateInit2(&z, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    z.next_in = (uint8_t *)body;
    z.avail_in = sizeof body - 1;
    z.next_out = out;
    z.avail_out = sizeof out;
    NB_CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END);
    size_t n = sizeof out - z.avail_out;
    deflateEnd(&z);
    nb_usage_seen_t s;
    meter_all(api_for("api.openai.com", "/v1/chat/completions"), "application/json", "gzip", out, n,
              &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 123);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 456);
    NB_CHECK_EQ_INT(s.bytes, sizeof body - 1);
    /* zstd is not decoded: the meter only counts bytes (an estimate). */
    nb_umeter_t *m;
    NB_CHECK_EQ_INT(nb_umeter_new(api_for("api.openai.com", "/v1/chat/completions"),
                                  NB_IOV_STR("application/json"), NB_IOV_STR("zstd"), &m),
                    NB_EUNSUPPORTED);
    nb_umeter_feed(m, out, n);
    nb_umeter_finish(m);
    NB_CHECK_EQ_INT(nb_umeter_seen(m)->failed, 1);
    NB_CHECK_EQ_INT(nb_umeter_seen(m)->bytes, n);
    nb_umeter_free(m);
}

static void test_malformed(void)
{
    static const char body[] = "{\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":"
                               "99999999999999999999,\"prompt_tokens_details\":{\"cached_tokens\":"
                               "1.5}},\"model\":\"m\"}";
    nb_usage_seen_t s;
    const nb_llm_api_t *api = api_for("api.openai.com", "/v1/chat/completions");
    meter_all(api, "application/json", "", S(body), &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], -1);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], -1);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], -1);
    NB_CHECK_EQ_INT(s.malformed, 3);
    static const char str[] = "{\"usage\":{\"prompt_tokens\":\"12\",\"completion_tokens\":1e3}}";
    meter_all(api, "application/json", "", S(str), &s);
    NB_CHECK_EQ_INT(s.malformed, 2);
    /* Not JSON (an HTML error page), trailing garbage, too deep. */
    meter_all(api, "application/json", "", S("<html>oops</html>"), &s);
    NB_CHECK_EQ_INT(s.failed, 1);
    meter_all(api, "application/json", "", S("{\"usage\":{\"prompt_tokens\":1}} x"), &s);
    NB_CHECK_EQ_INT(s.failed, 1);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 1); /* seen before the garbage */
    char deep[200];
    memset(deep, '[', sizeof deep);
    meter_all(api, "application/json", "", (const uint8_t *)deep, sizeof deep, &s);
    NB_CHECK_EQ_INT(s.failed, 1);
    /* A very long key is not confused with a short one. */
    char longkey[600];
    int k = snprintf(longkey, sizeof longkey, "{\"usage\":{\"%0300d\":{\"prompt_tokens\":5}}}", 0);
    meter_all(api, "application/json", "", (const uint8_t *)longkey, (size_t)k, &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], -1);
    NB_CHECK_EQ_INT(s.failed, 0);
    NB_CHECK_EQ_INT(nb_usage_parse_count("0", 1), 0);
    NB_CHECK_EQ_INT(nb_usage_parse_count("1000000000000", 13), 1000000000000LL);
    NB_CHECK_EQ_INT(nb_usage_parse_count("1000000000001", 13), -1);
    NB_CHECK_EQ_INT(nb_usage_parse_count("", 0), -1);
}

/* The shortcut that stops scanning an SSE event past its last needle
 * (usagex.c scan_doc) reports what the whole scan reports (meter_all
 * compares), in the cases it must not get wrong: keys spelled with escapes
 * ("\r" reads as 'r', so "p\rompt_tokens" is prompt_tokens), a needle in
 * text after the model, the model named twice (last wins), a value that
 * ends the event, an event that breaks after its usage, and nested keys of
 * the same name in objects and arrays. */
static void test_shortcut(void)
{
    static const char body[] =
        "data: {\"model\":\"a\",\"usage\":{\"p\\rompt_tokens\":7}}\n\n"
        "data: {\"model\":\"b\",\"choices\":[{\"delta\":{\"content\":\"prompt_tokens "
        "model\"}}]}\n\n"
        "data: {\"model\":\"c\",\"x\":{\"model\":\"nested\"},\"model\":\"d\",\"y\":[1,2]}\n\n"
        "data: {\"usage\":{\"completion_tokens\":3}}\n\n"
        "data: {\"usage\":{\"completion_tokens\":9}} garbage\n\n"
        "data: "
        "{\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":2,\"x\":[{\"cached_tokens\":"
        "5}]},\"completion_tokens\":{\"n\":1}}}\n\n"
        "data: {\"usage\":{\"prompt_tokens\":\"\\u0038\"}}\n\n"
        "data: \"model\"\n\n"
        "data: [DONE]\n\n";
    nb_usage_seen_t s;
    meter_all(api_for("api.openai.com", "/v1/chat/completions"), "text/event-stream", "", S(body),
              &s);
    NB_CHECK_EQ_INT(s.v[NB_UF_INPUT], 7);
    NB_CHECK_EQ_INT(s.v[NB_UF_OUTPUT], 9);
    NB_CHECK_EQ_INT(s.v[NB_UF_CACHED], 2);
    NB_CHECK_EQ_INT(s.malformed, 1);
    NB_CHECK_STR(s.model, "d");
}

static int count_cb(void *ctx, const char *path, size_t pathlen, nb_ujson_kind_t kind,
                    const char *v, size_t vlen, int cut)
{
    nb_buf_t *b = ctx;
    (void)cut;
    nb_buf_append(b, path, pathlen);
    nb_buf_printf(b, "=%d:", (int)kind);
    nb_buf_append(b, v, vlen);
    nb_buf_append(b, ";", 1);
    return 0;
}

static void test_ujson_paths(void)
{
    static const char doc[] = " {\"a\":[1,{\"b\":true},[null]],\"c\":{\"d\":\"x\\\\y\"},\"e\":{}, "
                              "\"f\":[] ,\"g\":-0.5e+3}";
    for (size_t split = 0; split <= sizeof doc - 1; split++) {
        nb_buf_t b;
        nb_buf_init(&b, 4096);
        nb_ujson_t j;
        nb_ujson_init(&j, count_cb, &b);
        NB_CHECK_EQ_INT(nb_ujson_feed(&j, (const uint8_t *)doc, split), 0);
        NB_CHECK_EQ_INT(nb_ujson_feed(&j, (const uint8_t *)doc + split, sizeof doc - 1 - split), 0);
        NB_CHECK_EQ_INT(nb_ujson_finish(&j), 0);
        NB_CHECK_STR(nb_buf_cstr(&b),
                     "a.[]=1:1;a.[].b=3:true;a.[].[]=3:null;c.d=2:x\\y;g=1:-0.5e+3;");
        nb_buf_free(&b);
    }
    static const char *bad[] = {"{\"a\" 1}", "{\"a\":1,}", "[1,]", "{\"a\":tru}",     "\"\x01\"",
                                "{1:2}",     "[1 2]",      "}",    "{\"a\":\"\\q\"}", NULL};
    for (int i = 0; bad[i]; i++) {
        nb_ujson_t j;
        nb_ujson_init(&j, NULL, NULL);
        int r = nb_ujson_feed(&j, (const uint8_t *)bad[i], strlen(bad[i]));
        if (r == 0)
            r = nb_ujson_finish(&j);
        if (r == 0)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        NB_CHECK(r != 0);
    }
}

int main(void)
{
    char err[256];
    if (nb_llmcat_load((const char *)nb_llmcat_builtin, nb_llmcat_builtin_len, &cat, err,
                       sizeof err) < 0) {
        fprintf(stderr, "built-in catalogue: %s\n", err);
        return 1;
    }
    NB_RUN(test_catalogue);
    NB_RUN(test_openai_json);
    NB_RUN(test_openai_sse);
    NB_RUN(test_responses_sse);
    NB_RUN(test_anthropic_sse);
    NB_RUN(test_gemini);
    NB_RUN(test_bedrock);
    NB_RUN(test_gzip);
    NB_RUN(test_malformed);
    NB_RUN(test_shortcut);
    NB_RUN(test_ujson_paths);
    nb_llmcat_free(cat);
    NB_TEST_MAIN_END();
}
