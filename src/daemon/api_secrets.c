/* Routes of the secret store: status and unlock, secrets (never their
 * values), bindings. Values and passphrases arrive as raw bodies (no JSON
 * copy), only over the Unix socket or over TCP with the API token (the API
 * layer's admission rules); their routes are NB_API_SENSITIVE, so the
 * handlers copy them into locked memory and the HTTP server wipes the
 * request's buffers when they return. No answer ever carries a value (A23). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/api.h"
#include "lib/hostname.h"
#include "daemon/egress/sigv4.h"
#include "daemon/secrets/binding.h"
#include "daemon/secretsvc.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

/* The raw body of a sensitive route (a value or a passphrase, borrowed:
 * the server wipes it when the handler returns). 0 with *out set, or -1
 * after answering 415/400/413. */
static int raw_body(nb_api_ctx_t *ctx, size_t max, const char *what, nb_iov_t *out)
{
    static const char octet[] = "application/octet-stream";
    const char *ct = nb_httpd_req_header(ctx->req, "Content-Type");
    *out = nb_httpd_req_body(ctx->req);
    if (!ct || strncasecmp(ct, octet, sizeof octet - 1) != 0 ||
        !strchr("; \t", ct[sizeof octet - 1])) {
        nb_api_reply_error(ctx, 415, "unsupported-media-type",
                           "send the %s itself as the body, with Content-Type: %s (no JSON)", what,
                           octet);
        return -1;
    }
    if (out->len == 0) {
        nb_api_reply_error(ctx, 400, "empty", "the body (the %s) is empty", what);
        return -1;
    }
    if (out->len > max) {
        nb_api_reply_error(ctx, 413, "too-large", "a %s is at most %zu bytes", what, max);
        return -1;
    }
    return 0;
}

/* 423 with what to do, when the store cannot be used now. */
static int reply_unusable(nb_api_ctx_t *ctx)
{
    nb_secretsvc_t *svc = ctx->d->secrets;
    if (!svc) {
        nb_api_reply_error(ctx, 503, "unavailable", "the secret service is not running");
        return 1;
    }
    int st = nb_secretsvc_state(svc);
    if (st == NB_SECRETSVC_OPEN || st == NB_SECRETSVC_STARTING)
        return 0;
    nb_api_reply_error(ctx, 423, st == NB_SECRETSVC_LOCKED ? "locked" : "keystore-error", "%s",
                       nb_secretsvc_message(svc));
    return 1;
}

static void on_done(void *ud, int status, json_t *result)
{
    nb_api_ctx_t *ctx = ud;
    if (status == 0) {
        const char *m = nb_httpd_req_method(ctx->req);
        nb_api_reply_json(ctx, strcmp(m, "POST") == 0 ? 201 : 200, result);
        return;
    }
    json_decref(result);
    nb_api_reply_errno(ctx, status, NULL);
}

static void on_status(nb_api_ctx_t *ctx)
{
    if (!ctx->d->secrets) {
        nb_api_reply_error(ctx, 503, "unavailable", "the secret service is not running");
        return;
    }
    nb_api_reply_json(ctx, 200, nb_secretsvc_status_json(ctx->d->secrets));
}

static void on_unlock_done(void *ud, int status, json_t *result)
{
    nb_api_ctx_t *ctx = ud;
    json_decref(result);
    nb_secretsvc_t *svc = ctx->d->secrets;
    if (status == NB_EAUTH) {
        nb_api_reply_error(ctx, 403, "wrong-passphrase",
                           "wrong passphrase: the secret store stays locked");
        return;
    }
    if (status < 0) {
        nb_api_reply_errno(ctx, status, NULL);
        return;
    }
    if (nb_secretsvc_state(svc) != NB_SECRETSVC_OPEN) {
        nb_api_reply_error(ctx, 423, "keystore-error", "%s", nb_secretsvc_message(svc));
        return;
    }
    nb_api_reply_json(ctx, 200, nb_secretsvc_status_json(svc));
}

static void on_unlock(nb_api_ctx_t *ctx)
{
    nb_secretsvc_t *svc = ctx->d->secrets;
    nb_iov_t pass;
    if (!svc) {
        nb_api_reply_error(ctx, 503, "unavailable", "the secret service is not running");
        return;
    }
    if (raw_body(ctx, 1024, "passphrase", &pass) < 0)
        return;
    int r = nb_secretsvc_unlock(svc, (const char *)pass.p, pass.len, on_unlock_done, ctx);
    if (r == NB_ESTATE) {
        nb_api_reply_error(ctx, 409, "wrong-state",
                           "the secret store is %s, not waiting for a passphrase%s%s",
                           nb_secretsvc_state_name(nb_secretsvc_state(svc)),
                           nb_secretsvc_message(svc)[0] ? ": " : "", nb_secretsvc_message(svc));
    } else if (r == NB_EINVAL) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "a new passphrase needs at least %d characters (at most 1024)",
                           NB_SECRETSVC_PASSPHRASE_MIN);
    } else if (r < 0) {
        nb_api_reply_errno(ctx, r, NULL);
    }
}

static void on_list(nb_api_ctx_t *ctx)
{
    if (reply_unusable(ctx))
        return;
    int r = nb_secretsvc_list(ctx->d->secrets, on_done, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

static int check_name(nb_api_ctx_t *ctx, const char *name)
{
    if (nb_secrets_name_valid(name))
        return 0;
    nb_api_reply_error(ctx, 422, "invalid",
                       "a secret name is a placeholder name: a letter or '_', then letters, "
                       "digits or '_', at most %d characters (it becomes an environment "
                       "variable in the VM)",
                       NB_SECRETS_NAME_MAX);
    return -1;
}

static void on_set(nb_api_ctx_t *ctx)
{
    const char *name = nb_api_param(ctx, "name");
    nb_iov_t val;
    if (reply_unusable(ctx) || check_name(ctx, name) < 0 ||
        raw_body(ctx, NB_SECRETS_VALUE_MAX, "secret value", &val) < 0)
        return;
    /* Copied into locked memory now; the body is wiped on return. */
    int r = nb_secretsvc_set(ctx->d->secrets, name, val.p, val.len, on_done, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

/* A missing secret or binding: name it and say where the names are. */
static void on_rm_done(void *ud, int status, json_t *result)
{
    nb_api_ctx_t *ctx = ud;
    if (status != NB_ENOTFOUND) {
        on_done(ud, status, result);
        return;
    }
    json_decref(result);
    const char *name = nb_api_param(ctx, "name");
    if (name)
        nb_api_reply_error(ctx, 404, "not-found",
                           "no secret named '%s'; 'nilbox secret ls' lists them", name);
    else
        nb_api_reply_error(
            ctx, 404, "not-found",
            "no binding #%.40s; 'nilbox secret ls' lists the bindings with their ids",
            nb_api_param(ctx, "id"));
}

static void on_rm(nb_api_ctx_t *ctx)
{
    const char *name = nb_api_param(ctx, "name");
    if (reply_unusable(ctx) || check_name(ctx, name) < 0)
        return;
    int r = nb_secretsvc_rm(ctx->d->secrets, name, on_rm_done, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

static int str_field(nb_api_ctx_t *ctx, const char *key, char *out, size_t outsz, int *bad)
{
    json_t *v = json_object_get(ctx->body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) >= outsz) {
        nb_api_reply_error(ctx, 422, "invalid", "'%s' must be a string of at most %zu bytes", key,
                           outsz - 1);
        *bad = 1;
        return -1;
    }
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 1;
}

static void on_bind_done(void *ud, int status, json_t *result)
{
    nb_api_ctx_t *ctx = ud;
    if (status == NB_EEXIST) {
        nb_api_reply_error(ctx, 409, "conflict", "the same binding exists already (id %lld)",
                           (long long)nb_json_int(result, "id", 0));
        json_decref(result);
        return;
    }
    if (status == NB_ENOTFOUND) {
        json_decref(result);
        nb_api_reply_error(ctx, 404, "not-found", "no secret named '%s' (set it first)",
                           nb_api_param(ctx, "name"));
        return;
    }
    on_done(ud, status, result);
}

static void on_bind(nb_api_ctx_t *ctx)
{
    const char *name = nb_api_param(ctx, "name");
    nb_binding_t b;
    char header[NB_BINDING_HEADER_MAX + NB_BINDING_TMPL_MAX + 4] = "";
    char user[NB_BINDING_USER_MAX] = "", param[NB_BINDING_HEADER_MAX] = "";
    int bad = 0, nplace = 0, r;
    if (reply_unusable(ctx) || check_name(ctx, name) < 0)
        return;
    if (!ctx->body) {
        nb_api_reply_error(ctx, 422, "invalid", "the body needs at least {\"host\": \"...\"}");
        return;
    }
    if ((r = str_field(ctx, "header", header, sizeof header, &bad)) < 0)
        return;
    nplace += r;
    if ((r = str_field(ctx, "basic", user, sizeof user, &bad)) < 0)
        return;
    nplace += r;
    if ((r = str_field(ctx, "query", param, sizeof param, &bad)) < 0)
        return;
    nplace += r;
    /* AWS SigV4: {"sigv4": true, "region": "...", "service": "..."}. */
    json_t *v4 = json_object_get(ctx->body, "sigv4");
    char region[32] = "", service[NB_BINDING_HEADER_MAX] = "";
    if (v4 && !json_is_boolean(v4)) {
        nb_api_reply_error(ctx, 422, "invalid", "'sigv4' must be true or false");
        return;
    }
    nplace += json_is_true(v4);
    if (str_field(ctx, "region", region, sizeof region, &bad) < 0 ||
        str_field(ctx, "service", service, sizeof service, &bad) < 0)
        return;
    if ((region[0] || service[0]) && !json_is_true(v4)) {
        nb_api_reply_error(ctx, 422, "invalid", "'region' and 'service' need \"sigv4\": true");
        return;
    }
    if (nplace > 1) {
        nb_api_reply_error(
            ctx, 422, "invalid",
            "give one placement: 'header', 'basic', 'query' or 'sigv4' (not several)");
        return;
    }
    memset(&b, 0, sizeof b);
    if (header[0]) {
        /* Say why a header can never carry a secret, not only that it cannot. */
        char hname[NB_BINDING_HEADER_MAX];
        size_t hl = strcspn(header, ":");
        const char *why = NULL;
        if (hl < sizeof hname) {
            memcpy(hname, header, hl);
            hname[hl] = '\0';
            while (hl > 0 && (hname[hl - 1] == ' ' || hname[hl - 1] == '\t'))
                hname[--hl] = '\0';
            why = nb_binding_header_refusal(hname);
        }
        if (why) {
            nb_api_reply_error(ctx, 422, "invalid", "a secret cannot go into header '%s': %s",
                               hname, why);
            return;
        }
    }
    if (nplace == 0 || header[0]) {
        /* Default placement: the usual bearer token. */
        if (nb_binding_set_header(&b, header[0] ? header : "Authorization: Bearer {secret}") < 0) {
            nb_api_reply_error(ctx, 422, "invalid",
                               "'header' must look like 'Authorization: Bearer {secret}' or "
                               "'x-api-key: {secret}': a header name, then a template with "
                               "{secret} exactly once (framing headers such as Host are "
                               "refused)");
            return;
        }
    } else if (json_is_true(v4)) {
        /* The guest's AWS variables are fixed placeholder names; a secret
         * of one of those names would also be its own placeholder in every
         * signed request and trip the leak check (A4). */
        if (!strcmp(name, NB_SIGV4_PH_AKID) || !strcmp(name, NB_SIGV4_PH_SECRET) ||
            !strcmp(name, NB_SIGV4_PH_TOKEN)) {
            nb_api_reply_error(ctx, 422, "invalid",
                               "'%s' is one of the guest's AWS placeholder names: give the AWS "
                               "credentials another name (e.g. AWS_PROD)",
                               name);
            return;
        }
        b.placement = NB_PLACE_SIGV4;
        memcpy(b.user, region, sizeof region);
        memcpy(b.param, service, sizeof service);
    } else if (user[0]) {
        b.placement = NB_PLACE_BASIC;
        memcpy(b.user, user, sizeof b.user);
    } else {
        b.placement = NB_PLACE_QUERY;
        memcpy(b.param, param, sizeof b.param);
    }
    snprintf(b.secret, sizeof b.secret, "%s", name);
    if ((r = str_field(ctx, "host", b.host, sizeof b.host, &bad)) <= 0) {
        if (!bad)
            nb_api_reply_error(ctx, 422, "invalid", "'host' is required (a name or *.suffix)");
        return;
    }
    if (str_field(ctx, "path_prefix", b.path_prefix, sizeof b.path_prefix, &bad) < 0 ||
        str_field(ctx, "vm", b.vm, sizeof b.vm, &bad) < 0)
        return;
    json_t *ac = json_object_get(ctx->body, "allow_cleartext");
    if (ac && !json_is_boolean(ac)) {
        nb_api_reply_error(ctx, 422, "invalid", "'allow_cleartext' must be true or false");
        return;
    }
    b.allow_cleartext = json_is_true(ac);
    char hnorm[sizeof b.host];
    if (strcmp(b.host, "*") == 0) {
        nb_api_reply_error(ctx, 422, "invalid", "host '*' is refused: %s",
                           nb_binding_host_refusal("*"));
        return;
    }
    if (nb_host_pattern_normalize(b.host, strlen(b.host), hnorm, sizeof hnorm) >= 0 &&
        nb_binding_host_refusal(hnorm)) {
        nb_api_reply_error(ctx, 422, "invalid", "host '%s' is refused: %s", hnorm,
                           nb_binding_host_refusal(hnorm));
        return;
    }
    if (nb_binding_normalize(&b) < 0) {
        nb_api_reply_error(ctx, 422, "invalid",
                           "the binding is not valid: host must be a DNS name, an IP or "
                           "*.suffix; path_prefix starts with '/' without '..', '%%', '?', '#' "
                           "or '//'; basic user has no ':'; query param is a plain name; sigv4 "
                           "region and service are lower-case names; vm is a VM name");
        return;
    }
    r = nb_secretsvc_bind(ctx->d->secrets, &b, on_bind_done, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

static void on_bindings_done(void *ud, int status, json_t *result)
{
    nb_api_ctx_t *ctx = ud;
    if (status < 0) {
        nb_api_reply_errno(ctx, status, NULL);
        return;
    }
    /* The list answer carries bindings per secret; flatten it. */
    json_t *out = json_array();
    size_t i, k;
    json_t *s, *b;
    json_array_foreach (json_object_get(result, "secrets"), i, s)
        json_array_foreach (json_object_get(s, "bindings"), k, b)
            json_array_append(out, b);
    json_decref(result);
    nb_api_reply_json(ctx, 200, json_pack("{s:o}", "bindings", out ? out : json_array()));
}

static void on_bindings(nb_api_ctx_t *ctx)
{
    if (reply_unusable(ctx))
        return;
    int r = nb_secretsvc_list(ctx->d->secrets, on_bindings_done, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

static void on_unbind(nb_api_ctx_t *ctx)
{
    const char *s = nb_api_param(ctx, "id");
    char *end;
    long long id = strtoll(s, &end, 10);
    if (reply_unusable(ctx))
        return;
    if (!s[0] || *end || id < 1) {
        nb_api_reply_error(ctx, 422, "invalid", "a binding id is a number >= 1, not '%.40s'", s);
        return;
    }
    int r = nb_secretsvc_unbind(ctx->d->secrets, id, on_rm_done, ctx);
    if (r < 0)
        nb_api_reply_errno(ctx, r, NULL);
}

const nb_api_route_t nb_api_routes_secrets[] = {
    {"GET", "/v1/keystore", on_status, 0},
    {"POST", "/v1/keystore/unlock", on_unlock, NB_API_RAW_BODY | NB_API_SENSITIVE},
    {"GET", "/v1/secrets", on_list, 0},
    {"PUT", "/v1/secrets/{name}", on_set, NB_API_RAW_BODY | NB_API_SENSITIVE},
    {"DELETE", "/v1/secrets/{name}", on_rm, 0},
    {"POST", "/v1/secrets/{name}/bindings", on_bind, 0},
    {"GET", "/v1/bindings", on_bindings, 0},
    {"DELETE", "/v1/bindings/{id}", on_unbind, 0},
    {0},
};
