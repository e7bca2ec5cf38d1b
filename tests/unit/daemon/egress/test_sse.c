/* Unit tests for src/daemon/egress/sse: the WHATWG parsing rules, every
 * split of real-looking LLM streams, caps and the sticky error state. */
#include <errno.h>
#include <stdlib.h>

#include "daemon/egress/sse.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "nbtest.h"

/* Records events as "type|id|retry|data\n" lines for comparison. */
typedef struct {
    nb_buf_t log;
    int stop_after; /* 0 = never */
    int n;
} rec_t;

static int on_event(void *ctx, const nb_sse_event_t *ev)
{
    rec_t *r = ctx;
    nb_buf_append(&r->log, ev->type.p, ev->type.len);
    nb_buf_append(&r->log, "|", 1);
    nb_buf_append(&r->log, ev->id.p, ev->id.len);
    nb_buf_printf(&r->log, "|%lld|", (long long)ev->retry);
    nb_buf_append(&r->log, ev->data.p, ev->data.len);
    nb_buf_append(&r->log, "\n", 1);
    r->n++;
    return r->stop_after && r->n >= r->stop_after ? 42 : 0;
}

/* Parses `s` fed in pieces of `step` bytes; returns the event log. */
static char *parse(const char *s, size_t len, size_t step, int *rc, int *fin)
{
    rec_t r = {.stop_after = 0};
    nb_buf_init(&r.log, 1 << 20);
    nb_sse_t p;
    nb_sse_init(&p, 0, 0, on_event, &r);
    *rc = 0;
    for (size_t off = 0; off < len && *rc == 0; off += step) {
        size_t k = len - off < step ? len - off : step;
        *rc = nb_sse_feed(&p, (const uint8_t *)s + off, k);
    }
    *fin = nb_sse_finish(&p);
    nb_sse_free(&p);
    char *out = strdup(r.log.len ? nb_buf_cstr(&r.log) : "");
    nb_buf_free(&r.log);
    return out;
}

static void expect(const char *in, size_t len, const char *want, int want_fin)
{
    /* The same result for every split. */
    for (size_t step = 1; step <= len + 1; step++) {
        int rc, fin;
        char *got = parse(in, len, step, &rc, &fin);
        NB_CHECK_EQ_INT(rc, 0);
        NB_CHECK_EQ_INT(fin, want_fin);
        if (strcmp(got, want) != 0) {
            fprintf(stderr, "step %zu: got [%s] want [%s]\n", step, got, want);
            NB_CHECK(0);
            free(got);
            return;
        }
        free(got);
    }
}

#define EXPECT(in, want, fin) expect((in), sizeof(in) - 1, (want), (fin))

static void test_basic(void)
{
    EXPECT("data: hello\n\n", "message||-1|hello\n", 0);
    EXPECT("data:hello\n\n", "message||-1|hello\n", 0);
    EXPECT("data:  two spaces\n\n", "message||-1| two spaces\n", 0);
    EXPECT("data: a\ndata: b\n\n", "message||-1|a\nb\n", 0);
    EXPECT("data\n\n", "message||-1|\n", 0);           /* empty data line still dispatches */
    EXPECT("data:\ndata:\n\n", "message||-1|\n\n", 0); /* two empty lines -> "\n" */
    EXPECT("event: ping\n\n", "", 0);                  /* no data: nothing dispatched */
    EXPECT(": keep-alive\n\n", "", 0);
    EXPECT("event: delta\ndata: {\"x\":1}\n\n", "delta||-1|{\"x\":1}\n", 0);
    EXPECT("event: a\ndata: 1\n\ndata: 2\n\n", "a||-1|1\nmessage||-1|2\n", 0); /* type resets */
    /* Line endings: CRLF, CR, mixed. */
    EXPECT("data: x\r\n\r\n", "message||-1|x\n", 0);
    EXPECT("data: x\r\rdata: y\r\n\n", "message||-1|x\nmessage||-1|y\n", 0);
    EXPECT("data: a\r\ndata: b\r\r\n", "message||-1|a\nb\n", 0);
    /* id persists, NUL in id ignored, retry only digits. */
    EXPECT("id: 7\ndata: a\n\ndata: b\n\n", "message|7|-1|a\nmessage|7|-1|b\n", 0);
    EXPECT("id: 7\ndata: a\n\nid\ndata: b\n\n", "message|7|-1|a\nmessage||-1|b\n", 0);
    EXPECT("id: 1\n\nid: a\0b\ndata: x\n\n", "message|1|-1|x\n", 0);
    EXPECT("retry: 1500\ndata: x\n\nretry: 12a\ndata: y\n\n", "message||1500|x\nmessage||1500|y\n",
           0);
    /* Unknown fields and field names are case-sensitive. */
    EXPECT("Data: no\nfoo: bar\ndata: yes\n\n", "message||-1|yes\n", 0);
    /* BOM: skipped once at the start only. */
    EXPECT("\xef\xbb\xbf"
           "data: x\n\n",
           "message||-1|x\n", 0);
    EXPECT("\xef\xbb"
           "data: x\n\n",
           "", 0); /* not a BOM: part of the first line */
    /* End of stream: unfinished events are discarded. */
    EXPECT("data: x\n", "", 1);
    EXPECT("data: x", "", 1);
    EXPECT("data: x\n\ndata: y", "message||-1|x\n", 1);
    EXPECT("", "", 0);
}

static void test_llm_streams(void)
{
    static const char anthropic[] =
        "event: message_start\r\n"
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25}}}\r\n"
        "\r\n"
        "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n"
        "event: content_block_delta\r\n"
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\r\n\r\n"
        "event: message_delta\r\n"
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n"
        "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
    static const char want_a[] =
        "message_start||-1|{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25}"
        "}"
        "}\n"
        "ping||-1|{\"type\": \"ping\"}\n"
        "content_block_delta||-1|{\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n"
        "message_delta||-1|{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n"
        "message_stop||-1|{\"type\":\"message_stop\"}\n";
    EXPECT(anthropic, want_a, 0);

    static const char openai[] =
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
        ": OPENROUTER PROCESSING\n\n"
        "data: {\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n"
        "data: [DONE]\n\n";
    static const char want_o[] = "message||-1|{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n"
                                 "message||-1|{\"usage\":{\"prompt_tokens\":9,\"completion_tokens\""
                                 ":3}}\n"
                                 "message||-1|[DONE]\n";
    EXPECT(openai, want_o, 0);
}

static void test_caps_and_stop(void)
{
    rec_t r = {.stop_after = 0};
    nb_buf_init(&r.log, 1 << 20);
    nb_sse_t p;
    /* Line cap, both for a line inside one chunk and one split across chunks. */
    nb_sse_init(&p, 16, 64, on_event, &r);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: 0123456789abcdef\n", 23), NB_ETOOBIG);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: x\n\n", 9), NB_ETOOBIG); /* sticky */
    NB_CHECK_EQ_INT(nb_sse_finish(&p), NB_ETOOBIG);
    nb_sse_free(&p);
    nb_sse_init(&p, 16, 64, on_event, &r);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: 01234", 11), 0);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"56789abcdef", 11), NB_ETOOBIG);
    nb_sse_free(&p);
    /* Data cap across many lines of one event. */
    nb_sse_init(&p, 16, 64, on_event, &r);
    int rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++)
        rc = nb_sse_feed(&p, (const uint8_t *)"data: 0123456\n", 14);
    NB_CHECK_EQ_INT(rc, NB_ETOOBIG);
    nb_sse_free(&p);
    /* ...but many small events are fine: the data buffer is per event. */
    nb_sse_init(&p, 16, 64, on_event, &r);
    for (int i = 0; i < 1000 && rc != 1; i++)
        NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: 0123456\n\n", 15), 0);
    NB_CHECK_EQ_INT(nb_sse_events(&p), 1000);
    nb_sse_free(&p);
    /* The callback stops the parser. */
    r.stop_after = 2;
    r.n = 0;
    nb_sse_init(&p, 0, 0, on_event, &r);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: 1\n\ndata: 2\n\ndata: 3\n\n", 27), 42);
    NB_CHECK_EQ_INT(r.n, 2);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: 4\n\n", 9), 42);
    NB_CHECK_EQ_INT(r.n, 2);
    nb_sse_free(&p);
    /* No callback: just counts. */
    nb_sse_init(&p, 0, 0, NULL, NULL);
    NB_CHECK_EQ_INT(nb_sse_feed(&p, (const uint8_t *)"data: 1\n\ndata: 2\n\n", 18), 0);
    NB_CHECK_EQ_INT(nb_sse_events(&p), 2);
    nb_sse_free(&p);
    nb_buf_free(&r.log);
}

int main(void)
{
    NB_RUN(test_basic);
    NB_RUN(test_llm_streams);
    NB_RUN(test_caps_and_stop);
    NB_TEST_MAIN_END();
}
