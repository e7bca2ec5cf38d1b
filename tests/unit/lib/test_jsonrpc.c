/* Unit tests for the MCP bridge's JSON-RPC framing (src/lib/jsonrpc.c):
 * classification, every refusal and its code, ids kept for error replies,
 * duplicate keys, the size cap, and the newline framer fed byte by byte. */
#include <stdlib.h>
#include <string.h>

#include "lib/jsonrpc.h"
#include "nbtest.h"

static int parse(const char *s, nb_jsonrpc_msg_t *m, json_t **id)
{
    char err[128];
    return nb_jsonrpc_parse(nb_iov(s, strlen(s)), 0, m, id, err, sizeof err);
}

static void test_kinds(void)
{
    nb_jsonrpc_msg_t m;
    json_t *id = NULL;
    NB_CHECK_EQ_INT(parse("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}", &m, &id), 0);
    NB_CHECK_EQ_INT(m.kind, NB_JSONRPC_REQUEST);
    NB_CHECK_STR(m.method, "tools/list");
    NB_CHECK(json_integer_value(m.id) == 1);
    nb_jsonrpc_msg_clear(&m);
    NB_CHECK_EQ_INT(
        parse("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}", &m, &id), 0);
    NB_CHECK_EQ_INT(m.kind, NB_JSONRPC_NOTIFICATION);
    NB_CHECK(m.id == NULL);
    nb_jsonrpc_msg_clear(&m);
    NB_CHECK_EQ_INT(parse("{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{}}", &m, &id), 0);
    NB_CHECK_EQ_INT(m.kind, NB_JSONRPC_RESPONSE);
    NB_CHECK(m.method == NULL);
    nb_jsonrpc_msg_clear(&m);
    NB_CHECK_EQ_INT(
        parse("{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-1,\"message\":\"x\"}}", &m,
              &id),
        0);
    nb_jsonrpc_msg_clear(&m);
}

static void test_refusals(void)
{
    static const struct {
        const char *in;
        int code;
        int has_id;
    } cases[] = {
        {"not json", NB_JSONRPC_PARSE_ERROR, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\"} trailing", NB_JSONRPC_PARSE_ERROR, 0},
        {"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\"}]", NB_JSONRPC_INVALID_REQUEST, 0},
        {"42", NB_JSONRPC_INVALID_REQUEST, 0},
        {"{\"id\":7,\"method\":\"a\"}", NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"1.0\",\"id\":7,\"method\":\"a\"}", NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"\"}", NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":3}", NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"a\"}", NB_JSONRPC_INVALID_REQUEST, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"a\"}", NB_JSONRPC_INVALID_REQUEST, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"a\",\"result\":1}", NB_JSONRPC_INVALID_REQUEST,
         1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"a\",\"params\":5}", NB_JSONRPC_INVALID_REQUEST,
         1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7}", NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":1,\"error\":{}}", NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":\"x\",\"message\":\"m\"}}",
         NB_JSONRPC_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":1}", NB_JSONRPC_INVALID_REQUEST, 0},
        {"{\"jsonrpc\":\"2.0\"}", NB_JSONRPC_INVALID_REQUEST, 0},
        /* Two names: the bridge and the server could read different tools. */
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"a\","
         "\"name\":\"b\"}}",
         NB_JSONRPC_PARSE_ERROR, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":\"\\u0000\",\"method\":\"a\"}", NB_JSONRPC_PARSE_ERROR, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nb_jsonrpc_msg_t m;
        json_t *id = NULL;
        int r = parse(cases[i].in, &m, &id);
        if (r != cases[i].code || !!id != cases[i].has_id)
            fprintf(stderr, "case %zu: %s -> %d id %p\n", i, cases[i].in, r, (void *)id);
        NB_CHECK_EQ_INT(r, cases[i].code);
        NB_CHECK_EQ_INT(!!id, cases[i].has_id);
        NB_CHECK(m.msg == NULL);
        json_decref(id);
    }
}

static void test_cap_and_errors(void)
{
    char big[2100];
    memset(big, ' ', sizeof big);
    memcpy(big, "{\"jsonrpc\":\"2.0\",\"method\":\"a\"}", 30);
    nb_jsonrpc_msg_t m;
    json_t *id = NULL;
    char err[64];
    NB_CHECK_EQ_INT(nb_jsonrpc_parse(nb_iov(big, sizeof big), 2048, &m, &id, err, sizeof err),
                    NB_JSONRPC_TOO_BIG);
    NB_CHECK_EQ_INT(nb_jsonrpc_parse(nb_iov(big, sizeof big), 4096, &m, &id, err, sizeof err), 0);
    nb_jsonrpc_msg_clear(&m);
    json_t *five = json_integer(5);
    json_t *e = nb_jsonrpc_error(five, NB_JSONRPC_DENIED, "no");
    char *t = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
    NB_CHECK_STR(t,
                 "{\"error\":{\"code\":-32002,\"message\":\"no\"},\"id\":5,\"jsonrpc\":\"2.0\"}");
    free(t);
    json_decref(e);
    e = nb_jsonrpc_error(NULL, -1, "x");
    NB_CHECK(json_is_null(json_object_get(e, "id")));
    json_decref(e);
    char key[32];
    nb_jsonrpc_id_key(five, key, sizeof key);
    NB_CHECK_STR(key, "i:5");
    json_decref(five);
    json_t *s = json_string("5");
    nb_jsonrpc_id_key(s, key, sizeof key);
    NB_CHECK_STR(key, "s:5"); /* 5 and "5" are different ids */
    json_decref(s);
}

typedef struct {
    char out[512];
    int over;
} rec_t;

static void on_line(void *ud, nb_iov_t line, int oversize)
{
    rec_t *r = ud;
    size_t n = strlen(r->out);
    if (oversize) {
        r->over++;
        snprintf(r->out + n, sizeof r->out - n, "<BIG>");
        return;
    }
    snprintf(r->out + n, sizeof r->out - n, "[%.*s]", (int)line.len, (const char *)line.p);
}

static void test_lines(void)
{
    const char *in = "a\r\n\nbb\n0123456789ABC\nccc\nd";
    for (int split = 1; split <= 4; split++) {
        nb_jsonrpc_lines_t l;
        rec_t r = {{0}, 0};
        nb_jsonrpc_lines_init(&l, 10);
        size_t len = strlen(in);
        for (size_t off = 0; off < len; off += (size_t)split) {
            size_t n = len - off < (size_t)split ? len - off : (size_t)split;
            NB_CHECK_EQ_INT(nb_jsonrpc_lines_feed(&l, (const uint8_t *)in + off, n, on_line, &r),
                            0);
        }
        /* 13 bytes is over the 10-byte cap: reported once, skipped, and
         * the next line is whole again; "d" waits for its newline. */
        NB_CHECK_STR(r.out, "[a][bb]<BIG>[ccc]");
        NB_CHECK_EQ_INT(r.over, 1);
        nb_jsonrpc_lines_free(&l);
    }
}

int main(void)
{
    NB_RUN(test_kinds);
    NB_RUN(test_refusals);
    NB_RUN(test_cap_and_errors);
    NB_RUN(test_lines);
    NB_TEST_MAIN_END();
}
