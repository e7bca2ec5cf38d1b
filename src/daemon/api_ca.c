/* Routes of the interception CA: its certificate only (PEM), never the key. */
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/api.h"
#include "daemon/secretsvc.h"
#include "lib/err.h"

/* The CA and its certificate as PEM (*pem freed by the caller), or an
 * answer saying why there is none. */
static nb_ca_t *ca_or_reply(nb_api_ctx_t *ctx, char **pem, size_t *len)
{
    nb_secretsvc_t *svc = ctx->d->secrets;
    nb_ca_t *ca = nb_secretsvc_ca(svc);
    int r;
    if (ca && (r = nb_ca_cert_pem(ca, pem, len)) < 0)
        nb_api_reply_errno(ctx, r, NULL);
    else if (ca)
        return ca;
    else if (!svc)
        nb_api_reply_error(ctx, 503, "unavailable", "the secret service is not running");
    else if (nb_secretsvc_state(svc) == NB_SECRETSVC_STARTING)
        nb_api_reply_error(ctx, 503, "unavailable",
                           "the secret store is still opening; try again in a moment");
    else if (nb_secretsvc_state(svc) != NB_SECRETSVC_OPEN)
        nb_api_reply_error(
            ctx, 423, "locked", "the interception CA lives in the secret store, which is %s: %s",
            nb_secretsvc_state_name(nb_secretsvc_state(svc)), nb_secretsvc_message(svc));
    else
        nb_api_reply_error(ctx, 500, "internal",
                           "the interception CA could not be loaded (see the daemon log)");
    return NULL;
}

static void asn1_time(const ASN1_TIME *t, char *out, size_t outsz)
{
    struct tm tm;
    out[0] = '\0';
    if (t && ASN1_TIME_to_tm(t, &tm) == 1)
        strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void on_ca(nb_api_ctx_t *ctx)
{
    char *pem = NULL, subject[256] = "", nb[32], na[32], fp[3 * EVP_MAX_MD_SIZE + 1] = "";
    size_t len = 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    nb_ca_t *ca = ca_or_reply(ctx, &pem, &len);
    if (!ca)
        return;
    X509 *c = nb_ca_cert(ca);
    X509_NAME_oneline(X509_get_subject_name(c), subject, sizeof subject);
    asn1_time(X509_get0_notBefore(c), nb, sizeof nb);
    asn1_time(X509_get0_notAfter(c), na, sizeof na);
    if (X509_digest(c, EVP_sha256(), md, &mdlen) == 1) {
        for (unsigned i = 0; i < mdlen; i++)
            snprintf(fp + 3 * i, sizeof fp - 3 * i, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");
    }
    nb_api_reply_json(ctx, 200,
                      json_pack("{s:s, s:s, s:s, s:s, s:s}", "pem", pem, "subject", subject,
                                "sha256", fp, "not_before", nb, "not_after", na));
    free(pem);
}

static void on_ca_pem(nb_api_ctx_t *ctx)
{
    char *pem = NULL;
    size_t len = 0;
    if (!ca_or_reply(ctx, &pem, &len))
        return;
    nb_httpd_respond(nb_api_take_req(ctx), 200, "application/x-pem-file", pem, len);
    free(pem);
}

const nb_api_route_t nb_api_routes_ca[] = {
    {"GET", "/v1/ca", on_ca, 0},
    {"GET", "/v1/ca/cert.pem", on_ca_pem, 0},
    {0},
};
