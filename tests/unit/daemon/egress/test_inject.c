/* Unit tests for src/daemon/egress/inject and redact: THREATS.md A2 (no
 * lookup by a request-chosen name), A3 (cross-host placeholder), A4
 * (placement confusion), A5 (echo redaction, streaming-safe), A7
 * (cleartext), A9 (cross-VM), plus header-injection and smuggling guards. */
#include <stdlib.h>

#include <sodium.h>

#include "daemon/egress/inject.h"
#include "daemon/egress/redact.h"
#include "lib/err.h"
#include "nbtest.h"

#define V_OPENAI "sk-live-OPENAI-0123456789abcdef"
#define V_ANTHROPIC "sk-ant-api03-ZYXWVUT"
#define V_GEMINI "AIza+real/key=="
#define V_BASIC "registry-pass-42"
#define V_VM "vm-scoped-secret-value"
#define V_PLAIN "plain-http-token-1"
#define V_PATH "path-scoped-token-9"

static const struct {
    const char *name, *value;
} values[] = {{"OPENAI_API_KEY", V_OPENAI},
              {"ANTHROPIC_KEY", V_ANTHROPIC},
              {"GEMINI_KEY", V_GEMINI},
              {"BASIC_PW", V_BASIC},
              {"VM_KEY", V_VM},
              {"PLAIN_KEY", V_PLAIN},
              {"PATH_KEY", V_PATH},
              {"UNBOUND_SECRET", "never-bound-value"},
              {"BAD_VALUE", "x\r\nX-Evil: 1"},
              {"BIG_KEY", NULL}};

static char big_value[20000]; /* larger than the injector's default work area */

static char asked[64][NB_SECRETS_NAME_MAX + 1]; /* every name the injector fetched */
static int nasked;

static int get_value(void *ctx, const nb_binding_t *b, uint8_t *buf, size_t cap, size_t *len)
{
    (void)ctx;
    if (nasked < 64)
        snprintf(asked[nasked++], sizeof(asked[0]), "%s", b->secret);
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        if (strcmp(values[i].name, b->secret) == 0) {
            const char *v = values[i].value ? values[i].value : big_value;
            size_t n = strlen(v);
            if (n > cap)
                return NB_ETOOBIG;
            memcpy(buf, v, n);
            *len = n;
            return 0;
        }
    }
    return NB_ENOTFOUND;
}

static int was_asked(const char *name)
{
    for (int i = 0; i < nasked; i++)
        if (strcmp(asked[i], name) == 0)
            return 1;
    return 0;
}

static nb_binding_t bindings[12];
static size_t nbindings;
static const char *known[] = {"UNBOUND_SECRET", "OPENAI_API_KEY"};

static void bind_header(const char *secret, const char *host, const char *spec, const char *vm,
                        const char *prefix, int cleartext)
{
    nb_binding_t *b = &bindings[nbindings];
    nb_binding_set_header(b, spec);
    b->id = (int64_t)++nbindings;
    snprintf(b->secret, sizeof(b->secret), "%s", secret);
    snprintf(b->host, sizeof(b->host), "%s", host);
    snprintf(b->vm, sizeof(b->vm), "%s", vm);
    snprintf(b->path_prefix, sizeof(b->path_prefix), "%s", prefix);
    b->allow_cleartext = cleartext;
    NB_CHECK_EQ_INT(nb_binding_normalize(b), 0);
}

static void setup(void)
{
    nbindings = 0;
    bind_header("OPENAI_API_KEY", "api.openai.com", "Authorization: Bearer {secret}", "", "", 0);
    bind_header("ANTHROPIC_KEY", "api.anthropic.com", "x-api-key: {secret}", "", "", 0);
    bind_header("VM_KEY", "api.vm.test", "Authorization: Bearer {secret}", "a", "", 0);
    bind_header("PLAIN_KEY", "plain.example", "x-token: {secret}", "", "", 1);
    bind_header("PATH_KEY", "paths.example", "x-k: {secret}", "", "/v1/", 0);
    bind_header("BAD_VALUE", "bad.example", "x-k: {secret}", "", "", 0);
    bind_header("BIG_KEY", "big.example", "x-k: {secret}", "", "", 0);
    memset(big_value, 'k', sizeof(big_value) - 1);
    nb_binding_t *b = &bindings[nbindings];
    memset(b, 0, sizeof(*b));
    b->id = (int64_t)++nbindings;
    snprintf(b->secret, sizeof(b->secret), "GEMINI_KEY");
    snprintf(b->host, sizeof(b->host), "*.googleapis.com");
    snprintf(b->param, sizeof(b->param), "key");
    b->placement = NB_PLACE_QUERY;
    NB_CHECK_EQ_INT(nb_binding_normalize(b), 0);
    b = &bindings[nbindings];
    memset(b, 0, sizeof(*b));
    b->id = (int64_t)++nbindings;
    snprintf(b->secret, sizeof(b->secret), "BASIC_PW");
    snprintf(b->host, sizeof(b->host), "registry.example.com");
    snprintf(b->user, sizeof(b->user), "bot");
    b->placement = NB_PLACE_BASIC;
    NB_CHECK_EQ_INT(nb_binding_normalize(b), 0);
}

/* Runs the injector on a request given as "METHOD TARGET" plus header
 * lines "Name: value". Returns the result code; the head is in *out. */
static nb_inject_header_t hdrs[16];
static char hbuf[16][256];

static int inject(nb_inject_out_t *out, const char *host, const char *vm, int tls,
                  const char *method, const char *target, const char *const *lines,
                  nb_redact_t *red)
{
    size_t n = 0;
    for (; lines && lines[n]; n++) {
        snprintf(hbuf[n], sizeof(hbuf[n]), "%s", lines[n]);
        char *colon = strchr(hbuf[n], ':');
        hdrs[n].name = nb_iov(hbuf[n], (size_t)(colon - hbuf[n]));
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        hdrs[n].value = nb_iov(v, strlen(v));
    }
    nb_inject_req_t req = {.method = nb_iov(method, strlen(method)),
                           .target = nb_iov(target, strlen(target)),
                           .version_minor = 1,
                           .headers = hdrs,
                           .nheaders = n};
    nb_inject_dest_t dest = {.host = host, .vm = vm, .tls = tls};
    nasked = 0;
    return nb_inject_head(&req, &dest, bindings, nbindings, known, 2, get_value, NULL, red, out);
}

static int out_has(const nb_inject_out_t *o, const char *s)
{
    return o->len && memmem(o->p, o->len, s, strlen(s)) != NULL;
}

static const char *head_str(const nb_inject_out_t *o)
{
    static char s[4096];
    size_t n = o->len < sizeof(s) - 1 ? o->len : sizeof(s) - 1;
    memcpy(s, o->p, n);
    s[n] = 0;
    return s;
}

static int has_leak(const nb_inject_out_t *o, const char *secret, int kind, const char *where)
{
    for (size_t i = 0; i < o->nleaks && i < NB_INJECT_MAX_REPORT; i++)
        if (strcmp(o->leaks[i].secret, secret) == 0 && o->leaks[i].kind == kind &&
            (!where || strcmp(o->leaks[i].where, where) == 0))
            return 1;
    return 0;
}

static void test_basic_injection(void)
{
    nb_inject_out_t o;
    NB_CHECK_EQ_INT(nb_inject_out_init(&o, 8192), 0);
    const char *h[] = {"Host: api.openai.com", "Authorization: Bearer OPENAI_API_KEY",
                       "Content-Type: application/json", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "POST", "/v1/chat/completions", h, NULL),
                    0);
    NB_CHECK_STR(head_str(&o), "POST /v1/chat/completions HTTP/1.1\r\n"
                               "Host: api.openai.com\r\n"
                               "Authorization: Bearer " V_OPENAI "\r\n"
                               "Content-Type: application/json\r\n\r\n");
    NB_CHECK_EQ_INT(o.ninjected, 1);
    NB_CHECK_STR(o.injected[0].secret, "OPENAI_API_KEY");
    NB_CHECK_EQ_INT(o.nleaks, 0);
    NB_CHECK(nasked == 1 && was_asked("OPENAI_API_KEY"));
    /* Header names are case-insensitive; the template is exact. */
    const char *h2[] = {"authorization: Bearer OPENAI_API_KEY", "X-API-KEY: ANTHROPIC_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "GET", "/", h2, NULL), 0);
    NB_CHECK(out_has(&o, "authorization: Bearer " V_OPENAI "\r\n"));
    NB_CHECK(!out_has(&o, V_ANTHROPIC));
    /* Wipe after use. */
    size_t len = o.len;
    nb_inject_out_wipe(&o);
    NB_CHECK(o.len == 0);
    int zero = 1;
    for (size_t i = 0; i < len; i++)
        zero &= o.p[i] == 0;
    NB_CHECK(zero);
    nb_inject_out_free(&o);
}

static void test_A2_no_lookup_by_request_name(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    /* An allowed host, a placement that exists, but another secret's name. */
    const char *h[] = {"Authorization: Bearer ANTHROPIC_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "GET", "/", h, NULL), 0);
    NB_CHECK(out_has(&o, "Authorization: Bearer ANTHROPIC_KEY\r\n"));
    NB_CHECK(!out_has(&o, V_ANTHROPIC) && !out_has(&o, V_OPENAI));
    NB_CHECK_EQ_INT(nasked, 0); /* nothing fetched at all */
    NB_CHECK(has_leak(&o, "ANTHROPIC_KEY", NB_LEAK_OTHER_HOST, "header:Authorization"));
    /* Names of secrets without bindings, or of internal records. */
    const char *h2[] = {"Authorization: Bearer UNBOUND_SECRET", "X-A: nilbox.ca.key",
                        "Authorization: Bearer nilbox.ca.key", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "GET", "/", h2, NULL), 0);
    NB_CHECK_EQ_INT(nasked, 0);
    NB_CHECK(has_leak(&o, "UNBOUND_SECRET", NB_LEAK_OTHER_HOST, NULL));
    NB_CHECK(!out_has(&o, "never-bound-value"));
    NB_CHECK_EQ_INT(o.ninjected, 0);
    nb_inject_out_free(&o);
}

static void test_A3_cross_host(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    const char *h[] = {"Host: evil.example", "Authorization: Bearer OPENAI_API_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "evil.example", "", 1, "POST", "/collect", h, NULL), 0);
    NB_CHECK(out_has(&o, "Authorization: Bearer OPENAI_API_KEY\r\n")); /* the dummy goes */
    NB_CHECK(!out_has(&o, V_OPENAI));
    NB_CHECK_EQ_INT(nasked, 0);
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_OTHER_HOST, "header:Authorization"));
    NB_CHECK_STR(nb_inject_leak_threat(o.leaks[0].kind), "A3");
    /* A look-alike host and a suffix trick. */
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com.evil.example", "", 1, "GET", "/", h, NULL), 0);
    NB_CHECK(!out_has(&o, V_OPENAI));
    NB_CHECK_EQ_INT(inject(&o, "googleapis.com", "", 1, "GET", "/?key=GEMINI_KEY", NULL, NULL), 0);
    NB_CHECK(!out_has(&o, "AIza") && has_leak(&o, "GEMINI_KEY", NB_LEAK_OTHER_HOST, "target"));
    nb_inject_out_free(&o);
}

static void test_A4_placement(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    const char *h[] = {"Cookie: session=OPENAI_API_KEY",
                       "X-Other: OPENAI_API_KEY",
                       "Authorization: bearer OPENAI_API_KEY",
                       "Authorization: Bearer  OPENAI_API_KEY",
                       "Authorization: Bearer OPENAI_API_KEYX",
                       "Authorization: Bearer OPENAI_API_KEY, OPENAI_API_KEY",
                       "Authorization: Token OPENAI_API_KEY",
                       NULL};
    NB_CHECK_EQ_INT(
        inject(&o, "api.openai.com", "", 1, "GET", "/v1/OPENAI_API_KEY?q=OPENAI_API_KEY", h, NULL),
        0);
    NB_CHECK(!out_has(&o, V_OPENAI));
    NB_CHECK_EQ_INT(o.ninjected, 0);
    NB_CHECK_EQ_INT(nasked, 0);
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_PLACEMENT, "header:Cookie"));
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_PLACEMENT, "header:X-Other"));
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_PLACEMENT, "target"));
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_PLACEMENT, "header:Authorization"));
    NB_CHECK_STR(nb_inject_leak_threat(NB_LEAK_PLACEMENT), "A4");
    /* "...KEYX" is another token: not reported as this name. */
    NB_CHECK(out_has(&o, "OPENAI_API_KEYX"));
    /* A query-bound secret in a header of its own host is not substituted. */
    const char *h2[] = {"X-Goog-Api-Key: GEMINI_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "a.googleapis.com", "", 1, "GET", "/", h2, NULL), 0);
    NB_CHECK(!out_has(&o, "AIza") && has_leak(&o, "GEMINI_KEY", NB_LEAK_PLACEMENT, NULL));
    /* Query: only the named parameter, only an exact value. */
    NB_CHECK_EQ_INT(inject(&o, "a.googleapis.com", "", 1, "GET",
                           "/v1?k=GEMINI_KEY&key=xGEMINI_KEY&key=GEMINI_KEY_&Key=GEMINI_KEY", NULL,
                           NULL),
                    0);
    NB_CHECK(!out_has(&o, "AIza") && o.ninjected == 0);
    nb_inject_out_free(&o);
}

/* A credential header sent twice: which one the upstream reads is its
 * choice, so neither gets the value (A4); a lone one still does. */
static void test_A4_duplicate_credential_headers(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    const char *const cases[][3] = {
        {"Authorization: Bearer OPENAI_API_KEY", "Authorization: Bearer OPENAI_API_KEY", NULL},
        {"Authorization: Bearer OPENAI_API_KEY", "authorization: Bearer other", NULL},
        {"AUTHORIZATION: Basic eDp5", "Authorization: Bearer OPENAI_API_KEY", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "GET", "/v1", cases[i], NULL),
                        NB_EPROTO);
        NB_CHECK(o.len == 0 && o.ninjected == 0 && nasked == 0);
    }
    /* Basic: the same with two Authorization fields. */
    const char *hb[] = {"Authorization: Basic Ym90OkJBU0lDX1BX", /* bot:BASIC_PW */
                        "Authorization: Basic Ym90OkJBU0lDX1BX", NULL};
    NB_CHECK_EQ_INT(inject(&o, "registry.example.com", "", 1, "GET", "/", hb, NULL), NB_EPROTO);
    NB_CHECK(o.len == 0 && nasked == 0);
    /* A query parameter named twice, one of them the placeholder. */
    const char *const targets[] = {"/v1?key=GEMINI_KEY&key=GEMINI_KEY", "/v1?key=x&key=GEMINI_KEY",
                                   "/v1?key=GEMINI_KEY&a=1&key", "/v1?key&key=GEMINI_KEY"};
    for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
        NB_CHECK_EQ_INT(inject(&o, "a.googleapis.com", "", 1, "GET", targets[i], NULL, NULL),
                        NB_EPROTO);
        NB_CHECK(o.len == 0 && nasked == 0);
    }
    NB_CHECK_EQ_INT(inject(&o, "a.googleapis.com", "", 1, "GET", "/v1?key=a&key=b", NULL, NULL), 0);
    NB_CHECK_EQ_INT(
        inject(&o, "a.googleapis.com", "", 1, "GET", "/v1?Key=x&key=GEMINI_KEY", NULL, NULL), 0);
    NB_CHECK(out_has(&o, "key=AIza") && o.ninjected == 1);
    /* Two fields of a header no value goes into here: left alone. */
    const char *h2[] = {"Authorization: Bearer OPENAI_API_KEY", "Authorization: Bearer x", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.anthropic.com", "", 1, "GET", "/", h2, NULL), 0);
    /* Positive control: one field, injected; the name as a header name is reported. */
    const char *h3[] = {"Authorization: Bearer OPENAI_API_KEY", "OPENAI_API_KEY: 1", "x-api-key: y",
                        NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "GET", "/v1", h3, NULL), 0);
    NB_CHECK(out_has(&o, "Authorization: Bearer " V_OPENAI "\r\n") && o.ninjected == 1);
    NB_CHECK(out_has(&o, "OPENAI_API_KEY: 1\r\n"));
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_PLACEMENT, "header-name"));
    nb_inject_out_free(&o);
}

static void test_A7_cleartext(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    const char *h[] = {"Authorization: Bearer OPENAI_API_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 0, "GET", "http://api.openai.com/v1", h, NULL),
                    0);
    NB_CHECK(!out_has(&o, V_OPENAI) && nasked == 0);
    NB_CHECK(has_leak(&o, "OPENAI_API_KEY", NB_LEAK_CLEARTEXT, "header:Authorization"));
    NB_CHECK_STR(nb_inject_leak_threat(NB_LEAK_CLEARTEXT), "A7");
    /* Explicitly allowed by its binding. */
    const char *h2[] = {"x-token: PLAIN_KEY", NULL};
    NB_CHECK_EQ_INT(
        inject(&o, "plain.example", "", 0, "GET", "http://PLAIN.example:80/x", h2, NULL), 0);
    NB_CHECK(out_has(&o, "GET http://PLAIN.example:80/x HTTP/1.1\r\nx-token: " V_PLAIN "\r\n"));
    /* absolute-form naming another host, or with userinfo: refused (A1). */
    NB_CHECK_EQ_INT(inject(&o, "plain.example", "", 0, "GET", "http://other.example/x", h2, NULL),
                    NB_EDENIED);
    NB_CHECK(o.len == 0);
    NB_CHECK_EQ_INT(inject(&o, "plain.example", "", 0, "GET", "http://u@plain.example/x", h2, NULL),
                    NB_EDENIED);
    nb_inject_out_free(&o);
}

static void test_A9_cross_vm(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    const char *h[] = {"Authorization: Bearer VM_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.vm.test", "b", 1, "GET", "/", h, NULL), 0);
    NB_CHECK(!out_has(&o, V_VM) && nasked == 0);
    NB_CHECK(has_leak(&o, "VM_KEY", NB_LEAK_OTHER_VM, NULL));
    NB_CHECK_STR(nb_inject_leak_threat(NB_LEAK_OTHER_VM), "A9");
    NB_CHECK_EQ_INT(inject(&o, "api.vm.test", NULL, 1, "GET", "/", h, NULL), 0);
    NB_CHECK(!out_has(&o, V_VM));
    NB_CHECK_EQ_INT(inject(&o, "api.vm.test", "a", 1, "GET", "/", h, NULL), 0);
    NB_CHECK(out_has(&o, "Authorization: Bearer " V_VM "\r\n"));
    nb_inject_out_free(&o);
}

static void test_query_and_basic(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    NB_CHECK_EQ_INT(inject(&o, "generativelanguage.googleapis.com", "", 1, "GET",
                           "/v1/models?alt=json&key=GEMINI_KEY&x=1#frag", NULL, NULL),
                    0);
    NB_CHECK(out_has(&o, "GET /v1/models?alt=json&key=AIza%2Breal%2Fkey%3D%3D&x=1#frag HTTP/1.1"));
    NB_CHECK_EQ_INT(o.nleaks, 0);
    NB_CHECK_EQ_INT(inject(&o, "x.googleapis.com", "", 1, "GET", "/?key=GEMINI_KEY", NULL, NULL),
                    0);
    NB_CHECK(out_has(&o, "GET /?key=AIza%2Breal%2Fkey%3D%3D HTTP/1.1"));
    NB_CHECK_EQ_INT(
        inject(&o, "x.googleapis.com", "", 1, "GET", "/?a&&key=GEMINI_KEY&", NULL, NULL), 0);
    NB_CHECK(out_has(&o, "GET /?a&&key=AIza%2Breal%2Fkey%3D%3D& HTTP/1.1"));

    /* Basic: base64("bot:BASIC_PW") -> base64("bot:registry-pass-42"). */
    const char *h[] = {"Authorization: Basic Ym90OkJBU0lDX1BX", NULL};
    NB_CHECK_EQ_INT(inject(&o, "registry.example.com", "", 1, "GET", "/v2/", h, NULL), 0);
    NB_CHECK(out_has(&o, "Authorization: Basic Ym90OnJlZ2lzdHJ5LXBhc3MtNDI=\r\n"));
    NB_CHECK_EQ_INT(o.ninjected, 1);
    /* Another user name: not substituted, reported (seen inside the credentials). */
    const char *h2[] = {"Authorization: Basic ZXZlOkJBU0lDX1BX", NULL}; /* eve:BASIC_PW */
    NB_CHECK_EQ_INT(inject(&o, "registry.example.com", "", 1, "GET", "/v2/", h2, NULL), 0);
    NB_CHECK(out_has(&o, "Authorization: Basic ZXZlOkJBU0lDX1BX\r\n") && nasked == 0);
    NB_CHECK(has_leak(&o, "BASIC_PW", NB_LEAK_PLACEMENT, "basic:Authorization"));
    /* The same credentials to another host: A3, seen through the base64. */
    NB_CHECK_EQ_INT(inject(&o, "evil.example", "", 1, "GET", "/", h, NULL), 0);
    NB_CHECK(has_leak(&o, "BASIC_PW", NB_LEAK_OTHER_HOST, "basic:Authorization"));
    nb_inject_out_free(&o);
}

static void test_path_prefix(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    const char *h[] = {"x-k: PATH_KEY", NULL};
    const char *good[] = {"/v1", "/v1/", "/v1/models", "/v1?x=1"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        NB_CHECK_EQ_INT(inject(&o, "paths.example", "", 1, "GET", good[i], h, NULL), 0);
        NB_CHECK(out_has(&o, V_PATH));
    }
    const char *bad[] = {"/v10",
                         "/v",
                         "/admin",
                         "/v1/../admin",
                         "/v1/%2e%2e/adm",
                         "/v1/%2E%2E/a",
                         "/v1%2f..%2fa",
                         "/v1/..;/admin",
                         "/v1//x",
                         "/v1/.",
                         "/v1/..",
                         "/v1\\..\\admin",
                         "/V1/x",
                         "*",
                         "paths.example:443"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        NB_CHECK_EQ_INT(inject(&o, "paths.example", "", 1, "GET", bad[i], h, NULL), 0);
        if (out_has(&o, V_PATH))
            fprintf(stderr, "injected into %s\n", bad[i]);
        NB_CHECK(!out_has(&o, V_PATH));
        NB_CHECK(has_leak(&o, "PATH_KEY", NB_LEAK_PLACEMENT, "header:x-k"));
    }
    nb_inject_out_free(&o);
}

static void test_work_area(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 65536);
    /* A value larger than the work area: it grows, the value goes in. */
    const char *h[] = {"x-k: BIG_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "big.example", "", 1, "GET", "/", h, NULL), 0);
    NB_CHECK(o.len > sizeof(big_value) && out_has(&o, "x-k: kkkkkkkk"));
    NB_CHECK(o.work_cap > NB_INJECT_WORK_DEFAULT);
    /* After every call the work area holds nothing: zeros, or the 0xdb
     * fill of fresh sodium_malloc memory. */
    const char *h2[] = {"Authorization: Basic Ym90OkJBU0lDX1BX", NULL};
    NB_CHECK_EQ_INT(inject(&o, "registry.example.com", "", 1, "GET", "/", h2, NULL), 0);
    NB_CHECK_EQ_INT(o.work_used, 0);
    int clean = 1;
    for (size_t i = 0; i < o.work_cap; i++)
        clean &= o.work[i] == 0 || o.work[i] == 0xdb;
    NB_CHECK(clean);
    NB_CHECK(!memmem(o.work, o.work_cap, V_BASIC, strlen(V_BASIC)));
    nb_inject_out_free(&o);
}

static void test_refusals(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    /* A value with CR LF would add a header upstream: refused, nothing written. */
    const char *h[] = {"x-k: BAD_VALUE", NULL};
    NB_CHECK_EQ_INT(inject(&o, "bad.example", "", 1, "GET", "/", h, NULL), NB_EINVAL);
    NB_CHECK(o.len == 0 && o.ninjected == 0);
    nb_inject_out_free(&o);
    /* Output cap. */
    nb_inject_out_init(&o, 40);
    const char *h2[] = {"Authorization: Bearer OPENAI_API_KEY", NULL};
    NB_CHECK_EQ_INT(inject(&o, "api.openai.com", "", 1, "GET", "/", h2, NULL), NB_ETOOBIG);
    NB_CHECK(o.len == 0);
    nb_inject_out_free(&o);
    nb_inject_out_free(&o); /* twice: no-op */
}

/* ---- redaction (A5) ---- */

typedef struct {
    uint8_t buf[1 << 16];
    size_t len;
    int calls;
    int leaked; /* a single sink call carried a whole secret */
    const char *secret;
} sink_t;

static int sink(void *ctx, const uint8_t *p, size_t n)
{
    sink_t *s = ctx;
    if (s->secret && memmem(p, n, s->secret, strlen(s->secret)))
        s->leaked = 1;
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->calls++;
    return 0;
}

/* Reference: non-streaming leftmost-longest replacement. */
static size_t ref_replace(const char *in, size_t n, const char *const *nd, const char *const *rp,
                          size_t k, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t best = k;
        for (size_t j = 0; j < k; j++) {
            size_t l = strlen(nd[j]);
            if (l <= n - i && memcmp(in + i, nd[j], l) == 0 && (best == k || l > strlen(nd[best])))
                best = j;
        }
        if (best < k) {
            memcpy(out + o, rp[best], strlen(rp[best]));
            o += strlen(rp[best]);
            i += strlen(nd[best]);
        } else {
            out[o++] = in[i++];
        }
    }
    return o;
}

static void test_A5_redaction(void)
{
    const char *nd[] = {V_OPENAI, "c3VwZXJzZWNyZXQ=", "abcabd"};
    const char *rp[] = {"OPENAI_API_KEY", "cGxhY2Vob2xkZXI=", "X"};
    char in[600];
    int n = snprintf(in, sizeof(in),
                     "{\"headers\":{\"Authorization\":\"Bearer %s\"},\"echo\":\"%s%s\","
                     "\"b64\":\"c3VwZXJzZWNyZXQ=\",\"tricky\":\"abcabcabdab\",\"tail\":\"sk-live-"
                     "OPENAI\"}%s",
                     V_OPENAI, V_OPENAI, V_OPENAI, "sk-live-OPENAI-0123456789abcde");
    char want[600];
    size_t wl = ref_replace(in, (size_t)n, nd, rp, 3, want);
    /* The stream ends in all but the last byte of the secret: redacted too. */
    memcpy(want + wl - strlen("sk-live-OPENAI-0123456789abcde"), "OPENAI_API_KEY", 14);
    wl = wl - strlen("sk-live-OPENAI-0123456789abcde") + 14;
    for (size_t step = 1; step <= (size_t)n; step++) {
        nb_redact_t *r = NULL;
        NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
        for (int j = 0; j < 3; j++)
            NB_CHECK_EQ_INT(nb_redact_add(r, nd[j], strlen(nd[j]), rp[j], strlen(rp[j])), 0);
        NB_CHECK_EQ_INT(nb_redact_add(r, nd[0], strlen(nd[0]), rp[0], strlen(rp[0])), 0); /* dup */
        NB_CHECK_EQ_INT(nb_redact_needles(r), 3);
        static sink_t s;
        memset(&s, 0, sizeof(s));
        s.secret = V_OPENAI;
        for (size_t off = 0; off < (size_t)n; off += step) {
            size_t k = (size_t)n - off < step ? (size_t)n - off : step;
            NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in + off, k, sink, &s), 0);
        }
        NB_CHECK_EQ_INT(nb_redact_finish(r, sink, &s), 0);
        int ok = s.len == wl && memcmp(s.buf, want, wl) == 0;
        if (!ok)
            fprintf(stderr, "step %zu: got %.*s\n", step, (int)s.len, (const char *)s.buf);
        NB_CHECK(ok);
        NB_CHECK(!s.leaked);
        NB_CHECK(!memmem(s.buf, s.len, V_OPENAI, strlen(V_OPENAI)));
        NB_CHECK_EQ_INT(nb_redact_count(r), 6);
        NB_CHECK_EQ_INT(nb_redact_add(r, "x", 1, "y", 1), NB_ESTATE);
        nb_redact_free(r);
    }
}

static void test_A5_streaming_latency(void)
{
    /* A chunk that cannot start a secret is passed on in the same call. */
    nb_redact_t *r = NULL;
    nb_redact_new(&r);
    nb_redact_add(r, V_OPENAI, strlen(V_OPENAI), "OPENAI_API_KEY", 14);
    static sink_t s;
    memset(&s, 0, sizeof(s));
    const char *ev = "data: {\"delta\":\"hi\"}\n\n";
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)ev, strlen(ev), sink, &s), 0);
    NB_CHECK_EQ_INT(s.len, strlen(ev));
    /* A short tail that may start the secret waits, then is released. */
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)"data: sk-", 9, sink, &s), 0);
    NB_CHECK_EQ_INT(s.len, strlen(ev) + 6);
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)"x\n\n", 3, sink, &s), 0);
    NB_CHECK_EQ_INT(s.len, strlen(ev) + 12);
    /* A short held prefix at the end is not a secret: passed through. */
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)"sk-l", 4, sink, &s), 0);
    NB_CHECK_EQ_INT(nb_redact_finish(r, sink, &s), 0);
    NB_CHECK(s.len == strlen(ev) + 16 && memcmp(s.buf + s.len - 4, "sk-l", 4) == 0);
    nb_redact_free(r);
    /* No needles: a pure pass-through. */
    nb_redact_new(&r);
    memset(&s, 0, sizeof(s));
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)"abc", 3, sink, &s), 0);
    NB_CHECK_EQ_INT(nb_redact_finish(r, sink, &s), 0);
    NB_CHECK(s.len == 3 && s.calls == 1);
    NB_CHECK_EQ_INT(nb_redact_add(r, "", 0, "x", 1), NB_ESTATE);
    nb_redact_free(r);
    nb_redact_free(NULL);
}

/* One redactor per connection, reset per response: nothing carries over. */
static void test_A5_reset(void)
{
    nb_redact_t *r = NULL;
    nb_redact_new(&r);
    static sink_t s;
    memset(&s, 0, sizeof(s));
    nb_redact_add(r, V_OPENAI, strlen(V_OPENAI), "OPENAI_API_KEY", 14);
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)"x sk-live-OPEN", 14, sink, &s), 0);
    NB_CHECK_EQ_INT(s.len, 2); /* the tail is held */
    nb_redact_reset(r);        /* response aborted: the held bytes are dropped */
    NB_CHECK_EQ_INT(nb_redact_needles(r), 0);
    NB_CHECK_EQ_INT(nb_redact_count(r), 0);
    memset(&s, 0, sizeof(s));
    NB_CHECK_EQ_INT(nb_redact_add(r, V_ANTHROPIC, strlen(V_ANTHROPIC), "ANTHROPIC_KEY", 13), 0);
    char in[128];
    int n = snprintf(in, sizeof(in), "%s %s", V_OPENAI, V_ANTHROPIC);
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in, (size_t)n, sink, &s), 0);
    NB_CHECK_EQ_INT(nb_redact_finish(r, sink, &s), 0);
    s.buf[s.len] = 0;
    NB_CHECK_STR((const char *)s.buf, V_OPENAI " ANTHROPIC_KEY"); /* the old needle is gone */
    /* Many needles force the arena to grow and move: still correct. */
    nb_redact_reset(r);
    memset(&s, 0, sizeof(s));
    char nd[NB_REDACT_MAX_NEEDLES][600];
    for (int i = 0; i < NB_REDACT_MAX_NEEDLES; i++) {
        memset(nd[i], 'a' + i % 26, 599);
        nd[i][0] = (char)('A' + i);
        NB_CHECK_EQ_INT(nb_redact_add(r, nd[i], 599, "N", 1), 0);
    }
    NB_CHECK_EQ_INT(nb_redact_add(r, "zz", 2, "Z", 1), NB_ETOOBIG);
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)nd[7], 599, sink, &s), 0);
    NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)nd[31], 599, sink, &s), 0);
    NB_CHECK_EQ_INT(nb_redact_finish(r, sink, &s), 0);
    NB_CHECK(s.len == 2 && memcmp(s.buf, "NN", 2) == 0);
    nb_redact_free(r);
}

static void test_A5_injector_registers(void)
{
    nb_inject_out_t o;
    nb_inject_out_init(&o, 8192);
    nb_redact_t *r = NULL;
    nb_redact_new(&r);
    const char *h[] = {"Authorization: Basic Ym90OkJBU0lDX1BX", NULL};
    NB_CHECK_EQ_INT(inject(&o, "registry.example.com", "", 1, "GET", "/?a=1", h, r), 0);
    NB_CHECK_EQ_INT(inject(&o, "x.googleapis.com", "", 1, "GET", "/?key=GEMINI_KEY", NULL, r), 0);
    /* An echo server reflecting everything it got. */
    char echo[1024];
    int n = snprintf(echo, sizeof(echo),
                     "{\"auth\":\"Basic Ym90OnJlZ2lzdHJ5LXBhc3MtNDI=\",\"pw\":\"%s\","
                     "\"url\":\"/?key=AIza%%2Breal%%2Fkey%%3D%%3D\",\"raw\":\"%s\"}",
                     V_BASIC, V_GEMINI);
    static sink_t s;
    memset(&s, 0, sizeof(s));
    for (int i = 0; i < n; i += 5)
        nb_redact_feed(r, (const uint8_t *)echo + i, (size_t)(n - i < 5 ? n - i : 5), sink, &s);
    nb_redact_finish(r, sink, &s);
    s.buf[s.len] = 0;
    NB_CHECK_STR((const char *)s.buf, "{\"auth\":\"Basic Ym90OkJBU0lDX1BX\",\"pw\":\"BASIC_PW\","
                                      "\"url\":\"/?key=GEMINI_KEY\",\"raw\":\"GEMINI_KEY\"}");
    nb_redact_free(r);
    nb_inject_out_free(&o);
}

/* Random streams with needles planted at random places, random splits,
 * compared with the reference. */
static void test_A5_random(void)
{
    const char *nd[] = {"s3cr3t-v4lue", "s3cr3t", "zzzzzzzzz", "t-v"};
    const char *rp[] = {"NAME_A", "NAME_B", "Z", "T"};
    uint32_t seed = 12345;
    for (int iter = 0; iter < 300; iter++) {
        char in[2048], want[4096];
        size_t n = 0;
        while (n < 1500) {
            seed = seed * 1103515245 + 12345;
            int c = (seed >> 16) % 10;
            const char *piece = c == 0   ? nd[0]
                                : c == 1 ? nd[1]
                                : c == 2 ? nd[2]
                                : c == 3 ? "s3c"
                                         : "ab z";
            memcpy(in + n, piece, strlen(piece));
            n += strlen(piece);
        }
        size_t wl = ref_replace(in, n, nd, rp, 4, want);
        nb_redact_t *r = NULL;
        nb_redact_new(&r);
        for (int j = 0; j < 4; j++)
            nb_redact_add(r, nd[j], strlen(nd[j]), rp[j], strlen(rp[j]));
        static sink_t s;
        memset(&s, 0, sizeof(s));
        for (size_t off = 0; off < n;) {
            seed = seed * 1103515245 + 12345;
            size_t k = 1 + (seed >> 16) % 40;
            if (k > n - off)
                k = n - off;
            nb_redact_feed(r, (const uint8_t *)in + off, k, sink, &s);
            off += k;
        }
        nb_redact_finish(r, sink, &s);
        /* Pieces are whole, so no partial tail of 8+ bytes: exact equality. */
        int ok = s.len == wl && memcmp(s.buf, want, wl) == 0;
        if (!ok)
            fprintf(stderr, "iter %d differs\n", iter);
        NB_CHECK(ok);
        nb_redact_free(r);
    }
}

/* Regression (found by fuzz_inject): a complete short match must wait
 * while an earlier-starting occurrence is still pending at the chunk end. */
static void test_A5_pending_leftmost(void)
{
    const char *nd[] = {"abcajdzxzz", "e", "sec"};
    const char *rp[] = {"1", "22", "333"};
    const char *in = "zzzz|xxsezcetseczcre";
    char want[64];
    size_t wl = ref_replace(in, strlen(in), nd, rp, 3, want);
    for (size_t step = 1; step <= strlen(in); step++) {
        nb_redact_t *r = NULL;
        nb_redact_new(&r);
        for (int j = 0; j < 3; j++)
            nb_redact_add(r, nd[j], strlen(nd[j]), rp[j], strlen(rp[j]));
        static sink_t s;
        memset(&s, 0, sizeof(s));
        for (size_t off = 0; off < strlen(in); off += step) {
            size_t k = strlen(in) - off < step ? strlen(in) - off : step;
            nb_redact_feed(r, (const uint8_t *)in + off, k, sink, &s);
        }
        nb_redact_finish(r, sink, &s);
        NB_CHECK(s.len == wl && memcmp(s.buf, want, wl) == 0);
        nb_redact_free(r);
    }
}

/* Issue 16: bindings that could never fire, or that would fire for hosts
 * of unrelated owners, are refused with a reason. */
static void test_binding_refusals(void)
{
    static const char *const never[] = {"Proxy-Authorization",
                                        "proxy-authorization",
                                        "Connection",
                                        "Keep-Alive",
                                        "TE",
                                        "Trailer",
                                        "Transfer-Encoding",
                                        "Upgrade",
                                        "Content-Length",
                                        "Host",
                                        "Proxy-Connection",
                                        "Proxy-Authenticate",
                                        "Expect",
                                        "Accept-Encoding"};
    nb_binding_t b;
    char spec[128];
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++) {
        NB_CHECK(nb_binding_header_refusal(never[i]) != NULL);
        snprintf(spec, sizeof spec, "%s: Bearer {secret}", never[i]);
        NB_CHECK_EQ_INT(nb_binding_set_header(&b, spec), NB_EINVAL);
        /* Through normalize too (a stored or API-made binding). */
        memset(&b, 0, sizeof b);
        snprintf(b.secret, sizeof b.secret, "K");
        snprintf(b.host, sizeof b.host, "api.example.com");
        snprintf(b.header, sizeof b.header, "%s", never[i]);
        snprintf(b.tmpl, sizeof b.tmpl, "{secret}");
        b.placement = NB_PLACE_HEADER;
        NB_CHECK_EQ_INT(nb_binding_normalize(&b), NB_EINVAL);
    }
    NB_CHECK(nb_binding_header_refusal("Authorization") == NULL);
    NB_CHECK(nb_binding_header_refusal("x-api-key") == NULL);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "x-api-key: {secret}"), 0);

    static const char *const wide[] = {"*.com", "*.COM.", "*.io", "*.co.uk", "*.com.au"};
    for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++) {
        NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Authorization: Bearer {secret}"), 0);
        snprintf(b.secret, sizeof b.secret, "K");
        snprintf(b.host, sizeof b.host, "%s", wide[i]);
        NB_CHECK_EQ_INT(nb_binding_normalize(&b), NB_EINVAL);
    }
    NB_CHECK(nb_binding_host_refusal("*.com") != NULL);
    NB_CHECK(nb_binding_host_refusal("*") != NULL);
    NB_CHECK(nb_binding_host_refusal("*.example.com") == NULL);
    NB_CHECK(nb_binding_host_refusal("api.example.com") == NULL);
    NB_CHECK_EQ_INT(nb_binding_set_header(&b, "Authorization: Bearer {secret}"), 0);
    snprintf(b.secret, sizeof b.secret, "K");
    snprintf(b.host, sizeof b.host, "*.bbc.co.uk");
    NB_CHECK_EQ_INT(nb_binding_normalize(&b), 0);
}

/* A5, stored then fetched: with dest.watch (or nb_inject_watch) every
 * secret bound for the VM is a needle, whatever its host, even when the
 * request injected nothing; secrets bound only for another VM are not.
 * The bare base64 of a value is caught too (redact.c, "literal runs"): its
 * last character, which mixes in padding bits, and the '=' stay. */
static void test_A5_watch_all_bound(void)
{
    nb_inject_out_t o;
    NB_CHECK_EQ_INT(nb_inject_out_init(&o, 65536), 0);
    for (int mode = 0; mode < 2; mode++) {
        for (int vmi = 0; vmi < 2; vmi++) {
            const char *vm = vmi ? "a" : "b";
            nb_redact_t *r = NULL;
            NB_CHECK_EQ_INT(nb_redact_new(&r), 0);
            nb_inject_dest_t dest = {.host = "api.openai.com", .vm = vm, .tls = 1, .watch = 1};
            if (mode == 0) {
                NB_CHECK_EQ_INT(nb_inject_watch(&dest, bindings, nbindings, get_value, NULL, r, &o),
                                0);
            } else {
                nb_inject_req_t req = {.method = NB_IOV_STR("GET"),
                                       .target = NB_IOV_STR("/retrieve"),
                                       .version_minor = 1};
                NB_CHECK_EQ_INT(nb_inject_head(&req, &dest, bindings, nbindings, known, 2,
                                               get_value, NULL, r, &o),
                                0);
                NB_CHECK_EQ_INT((int)o.ninjected, 0);
            }
            const char *in =
                "[" V_ANTHROPIC "|" V_GEMINI "|" V_VM "|" V_PLAIN "|" V_PATH
                "|cmVnaXN0cnktcGFzcy00Mg==|Ym90OnJlZ2lzdHJ5LXBhc3MtNDI=|sk-ant-api03%2dZYXWVUT]";
            sink_t sk = {.secret = NULL};
            NB_CHECK_EQ_INT(nb_redact_feed(r, (const uint8_t *)in, strlen(in), sink, &sk), 0);
            NB_CHECK_EQ_INT(nb_redact_finish(r, sink, &sk), 0);
            sk.buf[sk.len] = 0;
            char want[512];
            snprintf(want, sizeof want,
                     "[ANTHROPIC_KEY|GEMINI_KEY|%s|PLAIN_KEY|PATH_KEY|BASIC_PWg==|"
                     "Ym90OkJBU0lDX1BX|ANTHROPIC_KEY]",
                     vmi ? "VM_KEY" : V_VM);
            NB_CHECK_STR((char *)sk.buf, want);
            nb_redact_free(r);
        }
    }
    nb_inject_out_free(&o);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    setup();
    NB_RUN(test_basic_injection);
    NB_RUN(test_A2_no_lookup_by_request_name);
    NB_RUN(test_A3_cross_host);
    NB_RUN(test_A4_placement);
    NB_RUN(test_A7_cleartext);
    NB_RUN(test_A9_cross_vm);
    NB_RUN(test_query_and_basic);
    NB_RUN(test_path_prefix);
    NB_RUN(test_work_area);
    NB_RUN(test_refusals);
    NB_RUN(test_A4_duplicate_credential_headers);
    NB_RUN(test_A5_redaction);
    NB_RUN(test_A5_streaming_latency);
    NB_RUN(test_A5_reset);
    NB_RUN(test_A5_injector_registers);
    NB_RUN(test_A5_random);
    NB_RUN(test_A5_pending_leftmost);
    NB_RUN(test_binding_refusals);
    NB_RUN(test_A5_watch_all_bound);
    NB_TEST_MAIN_END();
}
