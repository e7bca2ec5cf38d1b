/* The app store catalogue (daemon/appcat.c): signatures (A22) and the
 * validation of each entry. */
#include <sodium.h>
#include <stdlib.h>

#include "daemon/appcat.h"
#include "lib/err.h"
#include "lib/json.h"
#include "nbtest.h"

static uint8_t pk[32], sk[64];

/* A document with a valid entry "ok-app" and an entry "x" that is valid
 * too until the members of JSON object text `extra` replace its own. */
static char *doc_with(const char *extra)
{
    char ex[1024];
    json_t *doc = json_loads("{\"format\": 1, \"version\": \"t1\", \"apps\": [{\"id\": "
                             "\"ok-app\", \"name\": \"OK\", \"kind\": \"tool\", \"summary\": "
                             "\"fine\", \"vendor\": \"example.com\", \"image\": \"tiny\", "
                             "\"script\": \"true\", \"check\": [\"true\"]}]}",
                             0, NULL);
    json_t *x = json_deep_copy(json_array_get(json_object_get(doc, "apps"), 0));
    json_object_set_new(x, "id", json_string("x"));
    snprintf(ex, sizeof ex, "{%s}", extra);
    json_t *e = json_loads(ex, 0, NULL);
    if (!e)
        fprintf(stderr, "  bad test JSON: %s\n", ex);
    json_object_update(x, e);
    json_decref(e);
    json_array_append_new(json_object_get(doc, "apps"), x);
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return s;
}

static int load(const char *doc, nb_appcat_t *cat)
{
    uint8_t sig[64];
    char err[300];
    crypto_sign_detached(sig, NULL, (const uint8_t *)doc, strlen(doc), sk);
    int r = nb_appcat_load((const uint8_t *)doc, strlen(doc), sig, sizeof sig,
                           (const uint8_t(*)[32])pk, 1, cat, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "  (load: %s)\n", err);
    return r;
}

/* 1 when entry "x" of a document with `extra` is refused (and "ok-app"
 * is kept). */
static int refused(const char *extra)
{
    nb_appcat_t cat;
    char *d = doc_with(extra);
    int r = load(d, &cat);
    int out = r == 0 && nb_appcat_find(&cat, "ok-app") && !nb_appcat_find(&cat, "x") &&
              json_array_size(cat.refused) == 1;
    if (!out)
        fprintf(stderr, "  not refused: %s\n", extra);
    nb_appcat_clear(&cat);
    free(d);
    return out;
}

static void test_builtin_verifies(void)
{
    nb_appcat_t cat;
    char err[300];
    int r = nb_appcat_load_home("/nonexistent-nilbox-home", &cat, err, sizeof err);
    NB_CHECK_EQ_INT(r, 0);
    NB_CHECK_STR(cat.source, "built-in");
    NB_CHECK(json_array_size(cat.apps) >= 5);
    NB_CHECK_EQ_INT(json_array_size(cat.refused), 0);
    NB_CHECK(nb_appcat_find(&cat, "claude-code") != NULL);
    nb_appcat_clear(&cat);
}

static void test_signatures(void)
{
    nb_appcat_t cat;
    char err[300];
    char *d = doc_with("");
    uint8_t sig[64], other_pk[32], other_sk[64];
    crypto_sign_detached(sig, NULL, (const uint8_t *)d, strlen(d), sk);
    NB_CHECK_EQ_INT(nb_appcat_load((const uint8_t *)d, strlen(d), sig, 64, (const uint8_t(*)[32])pk,
                                   1, &cat, err, sizeof err),
                    0);
    NB_CHECK_EQ_INT(json_array_size(cat.apps), 2);
    nb_appcat_clear(&cat);
    /* Hex form with a newline. */
    char hex[130];
    sodium_bin2hex(hex, sizeof hex, sig, 64);
    hex[128] = '\n';
    NB_CHECK_EQ_INT(nb_appcat_verify((const uint8_t *)d, strlen(d), (uint8_t *)hex, 129,
                                     (const uint8_t(*)[32])pk, 1),
                    0);
    /* One byte changed in the document: refused. */
    d[40] ^= 1;
    NB_CHECK_EQ_INT(nb_appcat_load((const uint8_t *)d, strlen(d), sig, 64, (const uint8_t(*)[32])pk,
                                   1, &cat, err, sizeof err),
                    NB_ECRYPTO);
    NB_CHECK(cat.apps == NULL);
    d[40] ^= 1;
    /* Another key: refused. No signature, a short one, garbage hex: refused. */
    crypto_sign_keypair(other_pk, other_sk);
    NB_CHECK_EQ_INT(
        nb_appcat_verify((const uint8_t *)d, strlen(d), sig, 64, (const uint8_t(*)[32])other_pk, 1),
        NB_ECRYPTO);
    NB_CHECK_EQ_INT(
        nb_appcat_verify((const uint8_t *)d, strlen(d), sig, 0, (const uint8_t(*)[32])pk, 1),
        NB_ECRYPTO);
    NB_CHECK_EQ_INT(
        nb_appcat_verify((const uint8_t *)d, strlen(d), sig, 63, (const uint8_t(*)[32])pk, 1),
        NB_ECRYPTO);
    memset(hex, 'z', 128);
    NB_CHECK_EQ_INT(nb_appcat_verify((const uint8_t *)d, strlen(d), (uint8_t *)hex, 128,
                                     (const uint8_t(*)[32])pk, 1),
                    NB_ECRYPTO);
    /* No keys at all: nothing verifies. */
    NB_CHECK_EQ_INT(nb_appcat_verify((const uint8_t *)d, strlen(d), sig, 64, NULL, 0), NB_ECRYPTO);
    free(d);
}

static void test_entry_rules(void)
{
    /* A22: a secret may only be bound to hosts of the entry's vendor. */
    NB_CHECK(refused(
        "\"secrets\": [{\"name\": \"OPENAI_API_KEY\", \"hosts\": [\"evil.example.net\"]}]"));
    NB_CHECK(refused("\"secrets\": [{\"name\": \"K\", \"hosts\": [\"notexample.com\"]}]"));
    NB_CHECK(refused("\"secrets\": [{\"name\": \"K\", \"hosts\": [\"example.com.evil.net\"]}]"));
    NB_CHECK(refused("\"secrets\": [{\"name\": \"K\", \"hosts\": [\"*.example.com\"]}]"));
    NB_CHECK(refused("\"secrets\": [{\"name\": \"lower\", \"hosts\": [\"api.example.com\"]}]"));
    NB_CHECK(refused("\"vendor\": \"com\""));
    NB_CHECK(refused("\"vendor\": \"co.uk\""));
    NB_CHECK(refused("\"vendor\": \"127.0.0.1\""));
    /* Rules: exact public names with a port only. */
    NB_CHECK(refused("\"rules\": [\"*.example.com:443\"]"));
    NB_CHECK(refused("\"rules\": [\"example.com\"]"));
    NB_CHECK(refused("\"rules\": [\"10.0.0.1:80\"]"));
    NB_CHECK(refused("\"rules\": [\"localhost:80\"]"));
    NB_CHECK(refused("\"rules\": [\"host.nilbox.internal:5432\"]"));
    NB_CHECK(refused("\"rules\": [\"a.example.com:0\"]"));
    NB_CHECK(refused("\"rules\": [\"a.example.com:65536\"]"));
    NB_CHECK(refused("\"rules\": [\"2130706433:80\"]"));
    /* Packages: registry names only. */
    NB_CHECK(refused("\"npm\": [\"git+https://evil.example/x.git\"]"));
    NB_CHECK(refused("\"npm\": [\"../../etc\"]"));
    NB_CHECK(refused("\"npm\": [\"--unsafe-perm\"]"));
    NB_CHECK(refused("\"npm\": [\"@scope\"]"));
    NB_CHECK(refused("\"apt\": [\"-o=APT::x\"]"));
    NB_CHECK(refused("\"apt\": [\"Foo\"]"));
    /* Shape. */
    NB_CHECK(refused("\"check\": []"));
    NB_CHECK(refused("\"check\": \"true\""));
    NB_CHECK(refused("\"kind\": \"daemon\""));
    NB_CHECK(refused("\"image\": \"ubuntu\""));
    NB_CHECK(refused("\"surprise\": 1"));
    NB_CHECK(refused("\"id\": \"ok-app\"")); /* duplicate id */
    NB_CHECK(refused("\"id\": \"Bad_Id\""));
    NB_CHECK(refused("\"name\": \"two\\nlines\""));
    NB_CHECK(refused("\"homepage\": \"http://example.com\""));
    NB_CHECK(refused("\"mcp\": {\"name\": \"fs\"}"));
    NB_CHECK(refused("\"mcp\": {\"name\": \"fs\", \"argv\": [\"srv\", \"\"]}"));
    NB_CHECK(refused("\"mcp\": {\"name\": \"fs\", \"argv\": [\"srv\"], \"policy\": \"allow\"}"));
    NB_CHECK(
        refused("\"mcp\": {\"name\": \"a23456789012345678901234567890123\", \"argv\": [\"s\"]}"));
    NB_CHECK(refused("\"mcp\": []"));
    NB_CHECK(refused("\"mcp\": [{\"name\": \"a\", \"argv\": [\"s\"]}, "
                     "{\"name\": \"a\", \"argv\": [\"t\"]}]"));
    /* And what is fine is kept. */
    nb_appcat_t cat;
    char *d = doc_with("\"npm\": [\"@scope/name@1.2.3\", \"plain\"], \"apt\": [\"nodejs\", "
                       "\"g++\"], \"rules\": [\"registry.npmjs.org:443\"], \"secrets\": "
                       "[{\"name\": \"K_1\", \"hosts\": [\"api.example.com\", \"example.com\"]}], "
                       "\"mcp\": {\"name\": \"fs\", \"argv\": [\"srv\", \"/home\"]}");
    NB_CHECK_EQ_INT(load(d, &cat), 0);
    NB_CHECK(nb_appcat_find(&cat, "x") != NULL);
    NB_CHECK_EQ_INT(json_array_size(cat.refused), 0);
    json_t *m = nb_appcat_mcp(nb_appcat_find(&cat, "x"));
    NB_CHECK_EQ_INT(json_array_size(m), 1);
    NB_CHECK_STR(json_string_value(json_object_get(json_array_get(m, 0), "name")), "fs");
    json_decref(m);
    nb_appcat_clear(&cat);
    free(d);
    /* A list of servers is the same thing, several times. */
    d = doc_with("\"mcp\": [{\"name\": \"a\", \"argv\": [\"s\"]}, "
                 "{\"name\": \"b\", \"argv\": [\"t\", \"-x\"]}]");
    NB_CHECK_EQ_INT(load(d, &cat), 0);
    m = nb_appcat_mcp(nb_appcat_find(&cat, "x"));
    NB_CHECK_EQ_INT(json_array_size(m), 2);
    json_decref(m);
    nb_appcat_clear(&cat);
    free(d);
}

static void test_whole_document(void)
{
    nb_appcat_t cat;
    NB_CHECK_EQ_INT(load("not json", &cat), NB_EPARSE);
    NB_CHECK_EQ_INT(load("[]", &cat), NB_EPARSE);
    NB_CHECK_EQ_INT(load("{\"format\": 2, \"version\": \"v\", \"apps\": []}", &cat), NB_EPARSE);
    NB_CHECK_EQ_INT(load("{\"format\": 1, \"apps\": []}", &cat), NB_EPARSE);
    NB_CHECK_EQ_INT(load("{\"format\": 1, \"version\": \"v\", \"apps\": [1, \"x\"]}", &cat), 0);
    NB_CHECK_EQ_INT(json_array_size(cat.apps), 0);
    NB_CHECK_EQ_INT(json_array_size(cat.refused), 2);
    nb_appcat_clear(&cat);
    NB_CHECK(nb_appcat_valid_id("mcp-git"));
    NB_CHECK(!nb_appcat_valid_id("-x"));
    NB_CHECK(!nb_appcat_valid_id(""));
    NB_CHECK(!nb_appcat_valid_id(NULL));
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(pk, sk);
    NB_RUN(test_builtin_verifies);
    NB_RUN(test_signatures);
    NB_RUN(test_entry_rules);
    NB_RUN(test_whole_document);
    printf("%d checks, %d failed\n", nbt_checks, nbt_failures);
    return nbt_failures != 0;
}
