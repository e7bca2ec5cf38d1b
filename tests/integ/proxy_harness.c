/* proxy_harness: the egress proxy engine without the daemon, for
 * integration tests of the engine and for bench/proxy.
 *
 *   proxy_harness CONFIG.json
 *
 * CONFIG: {"vm": "a", "listen": 0, "upstream_ca": "ca.pem",
 *          "resolve": ["api.test:443:127.0.0.1:8443"],
 *          "rules": [{"action": "allow", "dest": "api.test:443", "vm": "", "http": false}],
 *          "secrets": {"NAME": "value"},
 *          "bindings": [{"secret": "NAME", "host": "api.test", "header": "Authorization: Bearer
 * {secret}", "basic": "user", "query": "key", "path_prefix": "/v1", "vm": "", "cleartext": false}],
 *          "prompt_timeout_ms": 60000, "block_leaks": false,
 *          "ca_out": "path to write the interception CA (PEM)",
 *          "transparent": [{"host": "api.test", "port": 443}]}
 * Prints "LISTEN <port>" once ready (after one "TRANSPARENT <host>:<port>
 * <listen port>" per "transparent" entry: a TCP port whose connections a
 * channel listener adopts with that destination, as guestsvc does for a
 * guest's transparent connections), then one line per event:
 *   PROMPT <json>      a prompt is pending
 *   RESOLVED <json>    a prompt is gone
 *   RECORD <json>      an audit record (kind, vm, host, port, detail)
 * Reads commands on stdin: "answer ID allow-once|allow-always|deny-once|deny-always",
 * "stats". Exits on EOF or SIGTERM. */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>
#include <sqlite3.h>
#include <uv.h>

#include "daemon/egress/ca.h"
#include "daemon/egress/gate.h"
#include "daemon/egress/proxy.h"
#include "daemon/egress/proxy_creds.h"
#include "daemon/secrets/secrets.h"
#include "lib/err.h"
#include "lib/log.h"

static uv_loop_t *loop;
static nb_proxy_t *px;
static nb_gate_t *gate;
static uv_pipe_t in_pipe;
static uv_signal_t sig;
static char linebuf[4096];
static size_t linelen;
static int quiet_records;

/* Transparent entries: connections accepted here are adopted with a fixed
 * destination by a channel listener (ip_no_prompt, like guestsvc's). */
typedef struct {
    uv_tcp_t srv;
    nb_proxy_listener_t *ch;
    char host[256];
    uint16_t port;
} tsrv_t;
static tsrv_t tsrv[4];
static size_t ntsrv;

static void on_tconn(uv_stream_t *s, int status)
{
    tsrv_t *t = s->data;
    if (status < 0)
        return;
    nb_stream_t *st;
    if (nb_stream_tcp_new(loop, &st) < 0)
        return;
    nb_proxy_dest_t dest = {.host = t->host, .port = t->port};
    if (uv_accept(s, nb_stream_uv_handle(st)) < 0 || nb_proxy_adopt_stream(t->ch, st, &dest) < 0) {
        fprintf(stderr, "proxy_harness: adopt failed\n");
        nb_stream_close(st, 0);
    }
}

static void out_json(const char *tag, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (s) {
        printf("%s %s\n", tag, s);
        fflush(stdout);
    }
    free(s);
    json_decref(j);
}

static void on_created(void *ud, const nb_gate_prompt_info_t *p)
{
    out_json("PROMPT", nb_gate_prompt_json(p));
}

static void on_resolved(void *ud, const nb_gate_prompt_info_t *p, int allowed, int why)
{
    json_t *j = nb_gate_prompt_json(p);
    json_object_set_new(j, "allowed", json_boolean(allowed));
    json_object_set_new(j, "why", json_string(nb_gate_why_name(why)));
    out_json("RESOLVED", j);
}

static void on_record(void *ud, const char *kind, const char *vm, const char *host, int port,
                      json_t *detail)
{
    if (quiet_records) {
        json_decref(detail);
        return;
    }
    out_json("RECORD", json_pack("{s:s, s:s, s:s, s:i, s:o}", "kind", kind, "vm", vm ? vm : "",
                                 "host", host ? host : "", "port", port, "detail", detail));
}

static void stop_all(void)
{
    for (size_t i = 0; i < ntsrv; i++)
        if (!uv_is_closing((uv_handle_t *)&tsrv[i].srv))
            uv_close((uv_handle_t *)&tsrv[i].srv, NULL);
    uv_read_stop((uv_stream_t *)&in_pipe);
    if (!uv_is_closing((uv_handle_t *)&in_pipe))
        uv_close((uv_handle_t *)&in_pipe, NULL);
    if (!uv_is_closing((uv_handle_t *)&sig))
        uv_close((uv_handle_t *)&sig, NULL);
    if (px) {
        nb_proxy_free(px, NULL, NULL);
        px = NULL;
    }
    if (gate) {
        nb_gate_free(gate);
        gate = NULL;
    }
}

static void handle_line(char *line)
{
    char verb[32], ans[32];
    unsigned long long id;
    if (sscanf(line, "answer %llu %31s", &id, ans) == 2) {
        int r = nb_gate_answer(gate, id, nb_gate_answer_parse(ans));
        printf("ANSWERED %llu %d\n", id, r);
        fflush(stdout);
        return;
    }
    if (sscanf(line, "%31s", verb) == 1 && strcmp(verb, "stats") == 0) {
        nb_proxy_stats_t st;
        nb_proxy_stats(px, &st);
        printf("STATS {\"requests\":%llu,\"injected\":%llu,\"leaks\":%llu,\"denied\":%llu,"
               "\"refused\":%llu,\"upstream_errors\":%llu,\"pool_reused\":%llu,\"open\":%zu}\n",
               (unsigned long long)st.requests, (unsigned long long)st.injected,
               (unsigned long long)st.leaks, (unsigned long long)st.denied,
               (unsigned long long)st.refused, (unsigned long long)st.upstream_errors,
               (unsigned long long)st.pool_reused, st.conns_open);
        fflush(stdout);
    }
}

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char buf[4096];
    b->base = buf;
    b->len = sizeof buf;
}

static void on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    if (n < 0) {
        stop_all();
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        char ch = b->base[i];
        if (ch == '\n') {
            linebuf[linelen] = '\0';
            handle_line(linebuf);
            linelen = 0;
        } else if (linelen < sizeof linebuf - 1) {
            linebuf[linelen++] = ch;
        }
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    stop_all();
}

static int die(const char *what, int r)
{
    fprintf(stderr, "proxy_harness: %s: %s\n", what, nb_strerror(r));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: proxy_harness CONFIG.json\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return die("sodium_init", NB_EINTERNAL);
    json_error_t jerr;
    json_t *cfg = json_load_file(argv[1], 0, &jerr);
    if (!cfg) {
        fprintf(stderr, "proxy_harness: %s\n", jerr.text);
        return 2;
    }
    quiet_records = json_is_true(json_object_get(cfg, "quiet"));
    loop = uv_default_loop();
    int r;

    /* secrets in a private in-memory store */
    sqlite3 *db = NULL;
    sqlite3_open(":memory:", &db);
    sqlite3_exec(db, nb_secrets_migration_sql, NULL, NULL, NULL);
    uint8_t k[NB_MKEY_BYTES];
    memset(k, 7, sizeof k);
    nb_mkey_t *mk = NULL;
    nb_mkey_from_bytes(NB_MKEY_RAW, k, &mk);
    nb_secrets_t *sec = NULL;
    if ((r = nb_secrets_open(db, mk, &sec)) < 0)
        return die("secrets", r);
    nb_mkey_free(mk);
    const char *name;
    json_t *v;
    json_object_foreach (json_object_get(cfg, "secrets"), name, v) {
        const char *val = json_string_value(v);
        if ((r = nb_secrets_set(sec, name, val, strlen(val))) < 0)
            return die("secret set", r);
    }
    size_t i;
    json_array_foreach (json_object_get(cfg, "bindings"), i, v) {
        nb_binding_t b;
        memset(&b, 0, sizeof b);
        const char *s;
        if ((s = json_string_value(json_object_get(v, "header"))) &&
            (r = nb_binding_set_header(&b, s)) < 0)
            return die("binding header", r);
        if ((s = json_string_value(json_object_get(v, "basic")))) {
            b.placement = NB_PLACE_BASIC;
            snprintf(b.user, sizeof b.user, "%s", s);
        }
        if ((s = json_string_value(json_object_get(v, "query")))) {
            b.placement = NB_PLACE_QUERY;
            snprintf(b.param, sizeof b.param, "%s", s);
        }
        snprintf(b.secret, sizeof b.secret, "%s", json_string_value(json_object_get(v, "secret")));
        snprintf(b.host, sizeof b.host, "%s", json_string_value(json_object_get(v, "host")));
        if ((s = json_string_value(json_object_get(v, "path_prefix"))))
            snprintf(b.path_prefix, sizeof b.path_prefix, "%s", s);
        if ((s = json_string_value(json_object_get(v, "vm"))))
            snprintf(b.vm, sizeof b.vm, "%s", s);
        b.allow_cleartext = json_is_true(json_object_get(v, "cleartext"));
        if ((r = nb_secrets_bind(sec, &b, NULL)) < 0)
            return die("bind", r);
    }
    nb_ca_t *ca = NULL;
    if ((r = nb_ca_load_or_create(sec, NULL, &ca)) < 0)
        return die("ca", r);
    const char *ca_out = json_string_value(json_object_get(cfg, "ca_out"));
    if (ca_out) {
        char *pem;
        size_t plen;
        nb_ca_cert_pem(ca, &pem, &plen);
        FILE *f = fopen(ca_out, "w");
        if (!f)
            return die("ca_out", -errno);
        fwrite(pem, 1, plen, f);
        fclose(f);
        free(pem);
    }

    nb_gate_cfg_t gc;
    nb_gate_cfg_default(&gc);
    gc.prompt_timeout_ms = (uint64_t)json_integer_value(json_object_get(cfg, "prompt_timeout_ms"));
    gc.hooks.on_prompt_created = on_created;
    gc.hooks.on_prompt_resolved = on_resolved;
    if ((r = nb_gate_new(loop, &gc, &gate)) < 0)
        return die("gate", r);
    int64_t rid = 1;
    json_array_foreach (json_object_get(cfg, "rules"), i, v) {
        nb_rule_t rule;
        memset(&rule, 0, sizeof rule);
        if ((r = nb_rule_parse(json_string_value(json_object_get(v, "dest")), &rule)) < 0)
            return die("rule", r);
        const char *act = json_string_value(json_object_get(v, "action"));
        rule.action = act && strcmp(act, "deny") == 0 ? NB_RULE_DENY : NB_RULE_ALLOW;
        rule.http = json_is_true(json_object_get(v, "http"));
        const char *vm = json_string_value(json_object_get(v, "vm"));
        snprintf(rule.vm, sizeof rule.vm, "%s", vm ? vm : "");
        rule.id = rid++;
        nb_gate_rule_added(gate, &rule);
    }

    nb_proxy_cfg_t pc;
    nb_proxy_cfg_default(&pc);
    pc.gate = gate;
    pc.ca = ca;
    pc.record = on_record;
    pc.block_leaks = json_is_true(json_object_get(cfg, "block_leaks"));
    if (json_integer_value(json_object_get(cfg, "idle_timeout_ms")))
        pc.idle_timeout_ms = (uint64_t)json_integer_value(json_object_get(cfg, "idle_timeout_ms"));
    if (json_integer_value(json_object_get(cfg, "head_timeout_ms")))
        pc.head_timeout_ms = (uint64_t)json_integer_value(json_object_get(cfg, "head_timeout_ms"));
    if ((r = nb_proxy_new(loop, &pc, &px)) < 0)
        return die("proxy", r);
    nb_pxcreds_t *creds = NULL;
    if ((r = nb_pxcreds_load(sec, &creds)) < 0)
        return die("creds", r);
    nb_proxy_set_creds(px, creds);

    nb_proxy_resolve_t res[NB_PROXY_MAX_RESOLVE];
    size_t nres = 0;
    json_array_foreach (json_object_get(cfg, "resolve"), i, v) {
        if (nres >= NB_PROXY_MAX_RESOLVE ||
            nb_proxy_resolve_parse(json_string_value(v), &res[nres]) < 0)
            return die("resolve", NB_EINVAL);
        nres++;
    }
    nb_proxy_listen_opts_t lo = {
        .ip = "127.0.0.1",
        .port = (int)json_integer_value(json_object_get(cfg, "listen")),
        .vm = json_string_value(json_object_get(cfg, "vm")),
        .upstream_ca_file = json_string_value(json_object_get(cfg, "upstream_ca")),
        .resolve = res,
        .nresolve = nres,
    };
    nb_proxy_listener_t *l;
    if ((r = nb_proxy_listen(px, &lo, &l)) < 0)
        return die("listen", r);
    json_array_foreach (json_object_get(cfg, "transparent"), i, v) {
        if (ntsrv >= sizeof tsrv / sizeof tsrv[0])
            return die("transparent", NB_EINVAL);
        tsrv_t *t = &tsrv[ntsrv];
        snprintf(t->host, sizeof t->host, "%s", json_string_value(json_object_get(v, "host")));
        t->port = (uint16_t)json_integer_value(json_object_get(v, "port"));
        nb_proxy_listen_opts_t co = lo;
        co.ip_no_prompt = 1;
        struct sockaddr_in sa;
        struct sockaddr_storage bound;
        int blen = sizeof bound;
        if ((r = nb_proxy_attach(px, &co, &t->ch)) < 0 || (r = uv_tcp_init(loop, &t->srv)) < 0)
            return die("transparent", r);
        t->srv.data = t;
        ntsrv++;
        uv_ip4_addr("127.0.0.1", 0, &sa);
        if ((r = uv_tcp_bind(&t->srv, (struct sockaddr *)&sa, 0)) < 0 ||
            (r = uv_listen((uv_stream_t *)&t->srv, 64, on_tconn)) < 0 ||
            (r = uv_tcp_getsockname(&t->srv, (struct sockaddr *)&bound, &blen)) < 0)
            return die("transparent", r);
        printf("TRANSPARENT %s:%u %d\n", t->host, t->port,
               ntohs(((struct sockaddr_in *)&bound)->sin_port));
    }
    printf("LISTEN %d\n", nb_proxy_listener_port(l));
    fflush(stdout);

    uv_pipe_init(loop, &in_pipe, 0);
    uv_pipe_open(&in_pipe, 0);
    uv_read_start((uv_stream_t *)&in_pipe, on_alloc, on_stdin);
    uv_signal_init(loop, &sig);
    uv_signal_start(&sig, on_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    nb_ca_free(ca);
    nb_secrets_close(sec);
    sqlite3_close(db);
    json_decref(cfg);
    r = uv_loop_close(loop);
    if (r < 0)
        fprintf(stderr, "proxy_harness: loop not empty at exit\n");
    return r < 0 ? 1 : 0;
}
