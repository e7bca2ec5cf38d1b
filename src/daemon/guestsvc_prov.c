/* Guest provisioning: placeholders, the CA and the environment, written
 * into the guest through its agent's ctl stream. */
#include "daemon/guestsvc_int.h"

#include "daemon/egress/sigv4.h"

/* ------------------------------------------------------------ environment */

/* Names that must never be overwritten by a placeholder. */
static int env_name_reserved(const char *n)
{
    static const char *const names[] = {
        "PATH",
        "HOME",
        "SHELL",
        "USER",
        "LOGNAME",
        "TERM",
        "PWD",
        "IFS",
        "ENV",
        "BASH_ENV",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(n, names[i]) == 0)
            return 1;
    return strncmp(n, "LD_", 3) == 0;
}

static int env_name_ok(const char *n)
{
    if (!((*n >= 'A' && *n <= 'Z') || (*n >= 'a' && *n <= 'z') || *n == '_'))
        return 0;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return 0;
    return !env_name_reserved(n);
}

/* 1 when secret `name` is visible to `vm`: it has no binding at all, or a
 * binding for every VM or for this one. */
static int secret_visible(const nb_secretsvc_snap_t *s, const char *name, const char *vm)
{
    int bound = 0;
    for (size_t i = 0; i < s->nbindings; i++) {
        const nb_binding_t *b = &s->bindings[i];
        if (strcmp(b->secret, name) != 0)
            continue;
        bound = 1;
        if (!b->vm[0] || strcmp(b->vm, vm) == 0)
            return 1;
    }
    return !bound;
}

json_t *nb_guestsvc_env_json(nb_guestsvc_t *g, const char *vm)
{
    json_t *env = json_object();
    if (!env)
        return NULL;
    int have_ca = g->d->secrets && nb_secretsvc_ca(g->d->secrets);
    json_object_set_new(env, "HTTP_PROXY", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "HTTPS_PROXY", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "http_proxy", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "https_proxy", json_string(GUEST_PROXY_URL));
    json_object_set_new(env, "NO_PROXY", json_string(GUEST_NO_PROXY));
    json_object_set_new(env, "no_proxy", json_string(GUEST_NO_PROXY));
    static const char *const bundle_vars[] = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                                              "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE"};
    for (size_t i = 0; i < sizeof bundle_vars / sizeof *bundle_vars; i++)
        json_object_set_new(env, bundle_vars[i], json_string(GUEST_BUNDLE));
    /* Node adds this file to its own roots; naming a missing file makes it
     * warn on every start, so only once the CA is there. */
    if (have_ca)
        json_object_set_new(env, "NODE_EXTRA_CA_CERTS", json_string(GUEST_CA_FILE));
    const nb_secretsvc_snap_t *s = g->d->secrets ? nb_secretsvc_snapshot(g->d->secrets) : NULL;
    for (size_t i = 0; s && i < s->nsealed; i++) {
        const char *n = s->names[i];
        if (env_name_ok(n) && secret_visible(s, n, vm))
            json_object_set_new(env, n, json_string(n));
    }
    /* AWS SDKs read fixed names: with a SigV4 binding for this VM they sign
     * with these placeholders, which the proxy knows (egress/sigv4.h). */
    for (size_t i = 0; s && i < s->nbindings; i++) {
        const nb_binding_t *b = &s->bindings[i];
        if (b->placement != NB_PLACE_SIGV4 || (b->vm[0] && strcmp(b->vm, vm) != 0))
            continue;
        json_object_set_new(env, NB_SIGV4_PH_AKID, json_string(NB_SIGV4_PH_AKID));
        json_object_set_new(env, NB_SIGV4_PH_SECRET, json_string(NB_SIGV4_PH_SECRET));
        json_object_set_new(env, NB_SIGV4_PH_TOKEN, json_string(NB_SIGV4_PH_TOKEN));
        break;
    }
    return env;
}

/* ------------------------------------------------------------ provisioning */

enum { OP_WRITE = 1, OP_RUN, OP_HOSTNAME };

typedef struct {
    int kind;
    const char *path;
    int mode;
    char *content;
    size_t len;
    const char *const *argv;
} op_t;

#define PROV_MAX_OPS 8

struct prov {
    nb_guestsvc_t *g;
    gvm_t *owner; /* NULL once the VM's state is gone */
    char vm[NB_RULES_VM_MAX];
    op_t ops[PROV_MAX_OPS];
    size_t nops, cur;
    nb_muxsess_stream_t *st;
    nb_buf_t answer;
    int exit_code;
    int errors;
    uint8_t hash[16];
    uv_timer_t timer; /* next step, and the deadline of the op in flight */
    int finished;
};

static void prov_step(prov_t *p);

/* The VM's state is going away: the job ends at its next step. */
void nb_gsv_prov_orphan(prov_t *p)
{
    p->owner = NULL;
}

static void prov_freed(uv_handle_t *h)
{
    prov_t *p = h->data;
    nb_guestsvc_t *g = p->g;
    for (size_t i = 0; i < p->nops; i++)
        free(p->ops[i].content);
    nb_buf_free(&p->answer);
    free(p);
    nb_gsv_unref(g);
}

static void prov_finish(prov_t *p, const char *why)
{
    if (p->finished)
        return;
    p->finished = 1;
    nb_guestsvc_t *g = p->g;
    gvm_t *v = p->owner;
    if (p->st) {
        nb_muxsess_stream_reset(p->st, NB_MUX_E_CANCEL, "cancelled");
        p->st = NULL;
    }
    if (why || p->errors)
        nb_log(NB_LOG_WARN, "vm %s: provisioning %s", p->vm,
               why ? why : "finished with errors (see above)");
    else
        nb_log(NB_LOG_INFO, "vm %s: guest environment and CA provisioned", p->vm);
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, prov_freed);
    if (v) {
        v->prov = NULL;
        if (!why && !p->errors) {
            memcpy(v->done_hash, p->hash, sizeof v->done_hash);
            v->have_done = 1;
        }
        if (v->prov_again && !g->freed) {
            v->prov_again = 0;
            nb_gsv_prov_start(g, v);
        }
    }
}

static void prov_timer(uv_timer_t *t)
{
    prov_t *p = t->data;
    if (p->st) {
        prov_finish(p, "timed out waiting for the agent");
        return;
    }
    prov_step(p);
}

static void prov_next(prov_t *p)
{
    /* From the loop, not from inside the session's callback. */
    p->cur++;
    uv_timer_start(&p->timer, prov_timer, 0, 0);
}

static void prov_data(nb_muxsess_stream_t *st, unsigned chan, nb_iov_t d, void *ud)
{
    prov_t *p = ud;
    if (p->ops[p->cur].kind == OP_RUN) {
        json_t *m = NULL;
        if (chan == NB_MUX_CHAN_CTL && nb_json_parse(d, &m, NULL, 0) == 0) {
            json_t *e = json_object_get(m, "exit");
            p->exit_code = json_is_integer(e) ? (int)json_integer_value(e) : 128;
        }
        json_decref(m);
        return;
    }
    if (chan == NB_MUX_CHAN_STDIO)
        nb_buf_append(&p->answer, d.p, d.len); /* a longer answer is not ours: checked below */
}

static void prov_closed(nb_muxsess_stream_t *st, int err, uint32_t code, const char *msg, void *ud)
{
    prov_t *p = ud;
    op_t *op = &p->ops[p->cur];
    p->st = NULL;
    uv_timer_stop(&p->timer);
    if (err) {
        char why[400];
        snprintf(why, sizeof why, "stopped at %s: %s", op->kind != OP_RUN ? op->path : op->argv[0],
                 msg);
        prov_finish(p, why);
        return;
    }
    if (op->kind != OP_RUN) {
        json_t *a = NULL;
        if (nb_json_parse(nb_buf_iov(&p->answer), &a, NULL, 0) < 0 ||
            !json_is_true(json_object_get(a, "ok"))) {
            const char *e = nb_json_str(a, "error");
            char esc[300];
            nb_log(NB_LOG_WARN, "vm %s: writing %s failed: %s", p->vm, op->path,
                   e ? nb_log_escape(esc, sizeof esc, e, strlen(e)) : "no answer");
            p->errors++;
        }
        json_decref(a);
    } else if (p->exit_code != 0) {
        nb_log(NB_LOG_WARN, "vm %s: %s exited with %d", p->vm, op->argv[0], p->exit_code);
        p->errors++;
    }
    prov_next(p);
}

static const nb_muxsess_stream_cbs_t prov_cbs = {
    .on_data = prov_data, .on_close = prov_closed, .auto_consume = 1};

nb_muxsess_t *nb_gsv_session_of(nb_guestsvc_t *g, const char *vm)
{
    nb_vm_t *v = g->d->vmm ? nb_vmm_find(g->d->vmm, vm) : NULL;
    return v ? nb_vm_session(v) : NULL;
}

static void prov_step(prov_t *p)
{
    if (p->finished)
        return;
    if (p->cur >= p->nops) {
        prov_finish(p, NULL);
        return;
    }
    if (p->g->freed || !p->owner) {
        prov_finish(p, "cancelled: the VM stopped");
        return;
    }
    nb_muxsess_t *s = nb_gsv_session_of(p->g, p->vm);
    if (!s) {
        prov_finish(p, "stopped: the agent is not connected");
        return;
    }
    op_t *op = &p->ops[p->cur];
    json_t *args;
    if (op->kind == OP_HOSTNAME) {
        args = json_pack("{s:s, s:s}", "call", "hostname", "set", p->vm);
    } else if (op->kind == OP_WRITE) {
        args = json_pack("{s:s, s:s, s:i, s:b}", "call", "write_file", "path", op->path, "mode",
                         op->mode, "mkdirs", 1);
    } else {
        json_t *argv = json_array();
        for (size_t i = 0; argv && op->argv[i]; i++)
            json_array_append_new(argv, json_string(op->argv[i]));
        args = json_pack("{s:o?, s:b}", "argv", argv, "stdin", 0);
    }
    char *js = args ? json_dumps(args, JSON_COMPACT) : NULL;
    json_decref(args);
    if (!js) {
        prov_finish(p, "out of memory");
        return;
    }
    nb_buf_reset(&p->answer);
    p->exit_code = 0;
    int r = nb_muxsess_open(s, op->kind != OP_RUN ? "ctl" : "exec", nb_iov(js, strlen(js)),
                            &prov_cbs, p, &p->st);
    free(js);
    if (r == 0 && op->kind == OP_WRITE && op->len)
        r = nb_muxsess_stream_write(p->st, NB_MUX_CHAN_STDIO, op->content, op->len);
    if (r == 0)
        r = nb_muxsess_stream_fin(p->st);
    if (r < 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot open a stream: %s", nb_strerror(r));
        prov_finish(p, why);
        return;
    }
    uv_timer_start(&p->timer, prov_timer, PROV_OP_TIMEOUT_MS, 0);
}

static int add_write(prov_t *p, const char *path, int mode, nb_buf_t *content)
{
    if (p->nops >= PROV_MAX_OPS)
        return NB_ETOOBIG;
    op_t *op = &p->ops[p->nops++];
    op->kind = OP_WRITE;
    op->path = path;
    op->mode = mode;
    op->len = content->len;
    op->content = (char *)content->p; /* the op owns it now */
    nb_buf_init(content, content->max);
    return 0;
}

/* Renders the environment three ways. Values are URLs, paths and secret
 * names ([A-Za-z0-9_]): none needs escaping, and none is a secret. */
static int render_env(json_t *env, nb_buf_t *plain, nb_buf_t *sh, nb_buf_t *etc)
{
    const char *k;
    json_t *val;
    int r = 0;
    r |= nb_buf_append_str(sh, "# Written by nilbox (placeholders and the egress proxy). The real\n"
                               "# secrets never enter this VM: the host swaps them in.\n");
    json_object_foreach (env, k, val) {
        const char *v = json_string_value(val);
        r |= nb_buf_printf(plain, "%s=%s\n", k, v);
        r |= nb_buf_printf(sh, "export %s='%s'\n", k, v);
        r |= nb_buf_printf(etc, "%s=\"%s\"\n", k, v);
    }
    return r ? NB_ETOOBIG : 0;
}

void nb_gsv_prov_start(nb_guestsvc_t *g, gvm_t *v)
{
    /* Adds the CA to the system bundle at once. Debian's
     * update-ca-certificates would too (it takes the file under
     * /usr/local/share/ca-certificates on its next run), but it takes most
     * of a minute in an emulated guest. The tiny image's bundle is a
     * symlink to the CA file: nothing to do there. */
    static const char *const trust_argv[] = {
        "/bin/sh", "-c",
        "ca=" GUEST_CA_FILE "; b=" GUEST_BUNDLE "; [ -s \"$ca\" ] || exit 0; "
        "if [ -f \"$b\" ] && [ ! -L \"$b\" ]; then "
        "l=$(sed -n 2p \"$ca\"); grep -qF -- \"$l\" \"$b\" || cat \"$ca\" >>\"$b\"; "
        "if command -v openssl >/dev/null 2>&1; then "
        "h=$(openssl x509 -hash -noout -in \"$ca\" 2>/dev/null) && "
        "ln -sf \"$ca\" \"/etc/ssl/certs/$h.0\"; fi; fi; exit 0",
        NULL};
    if (v->prov) {
        v->prov_again = 1;
        return;
    }
    int forced = v->prov_forced;
    v->prov_forced = 0;
    prov_t *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->g = g;
    p->owner = v;
    snprintf(p->vm, sizeof p->vm, "%s", v->name);
    nb_buf_init(&p->answer, PROV_ANSWER_MAX);

    nb_buf_t plain, sh, etc, ca;
    nb_buf_init(&plain, 256 * 1024);
    nb_buf_init(&sh, 256 * 1024);
    nb_buf_init(&etc, 256 * 1024);
    nb_buf_init(&ca, 64 * 1024);
    char *pem = NULL;
    size_t pemlen = 0;
    nb_ca_t *cao = g->d->secrets ? nb_secretsvc_ca(g->d->secrets) : NULL;
    if (cao && nb_ca_cert_pem(cao, &pem, &pemlen) == 0)
        nb_buf_append(&ca, pem, pemlen);
    free(pem);
    json_t *env = nb_guestsvc_env_json(g, v->name);
    int r = env ? render_env(env, &plain, &sh, &etc) : -ENOMEM;
    json_decref(env);

    int have_ca = ca.len > 0;
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, sizeof p->hash);
    crypto_generichash_update(&hs, ca.p ? ca.p : (const uint8_t *)"", ca.len);
    crypto_generichash_update(&hs, plain.p ? plain.p : (const uint8_t *)"", plain.len);
    crypto_generichash_final(&hs, p->hash, sizeof p->hash);

    /* The guest's hostname is the VM's name (the images say "nilbox"). */
    p->ops[p->nops].kind = OP_HOSTNAME;
    p->ops[p->nops++].path = "hostname";
    if (r == 0 && have_ca) {
        nb_buf_t ca2;
        nb_buf_init(&ca2, ca.max);
        r = nb_buf_append(&ca2, ca.p, ca.len);
        if (r == 0)
            r = add_write(p, GUEST_CA_FILE, 0644, &ca);
        if (r == 0)
            r = add_write(p, GUEST_CA_LOCAL, 0644, &ca2);
        nb_buf_free(&ca2);
    }
    if (r == 0)
        r = add_write(p, GUEST_ENV_FILE, 0644, &plain);
    if (r == 0)
        r = add_write(p, GUEST_PROFILE, 0644, &sh);
    if (r == 0)
        r = add_write(p, GUEST_ENVIRONMENT, 0644, &etc);
    /* Last, so that the bundle is rebuilt from the files just written. */
    if (r == 0 && have_ca && p->nops < PROV_MAX_OPS) {
        op_t *op = &p->ops[p->nops++];
        op->kind = OP_RUN;
        op->argv = trust_argv;
    }
    nb_buf_free(&plain);
    nb_buf_free(&sh);
    nb_buf_free(&etc);
    nb_buf_free(&ca);
    if (r < 0 || (!forced && v->have_done && memcmp(v->done_hash, p->hash, sizeof p->hash) == 0)) {
        if (r < 0)
            nb_log(NB_LOG_WARN, "vm %s: cannot build the guest environment: %s", v->name,
                   nb_strerror(r));
        for (size_t i = 0; i < p->nops; i++)
            free(p->ops[i].content);
        nb_buf_free(&p->answer);
        free(p);
        return;
    }
    uv_timer_init(g->loop, &p->timer);
    p->timer.data = p;
    g->live++;
    v->prov = p;
    uv_timer_start(&p->timer, prov_timer, 0, 0);
}

void nb_guestsvc_provision(nb_guestsvc_t *g, const char *vm)
{
    if (!g || g->freed)
        return;
    gvm_t *v = nb_gsv_vm_get(g, vm);
    if (!v)
        return;
    v->prov_forced = 1; /* a (re)booted guest: write everything again */
    nb_gsv_prov_start(g, v);
}
