/* Sealed-secret snapshots for the proxy (see proxy_creds.h). */
#include "daemon/egress/proxy_creds.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"

struct nb_pxcreds {
    unsigned refs;
    nb_secrets_t *store; /* loaded here (nb_pxcreds_load): owns the arrays */
    nb_sealed_t *sealed; /* sorted by name */
    size_t nsealed;
    nb_binding_t *bindings;
    size_t nbindings;
    const char **names; /* point into sealed[i].name */
    /* wrapped (nb_pxcreds_wrap): borrowed arrays */
    const nb_sealed_t *wsealed;
    const nb_binding_t *wbindings;
    const char *const *wnames;
    nb_pxcreds_unseal_fn unseal;
    void *unseal_ctx;
    void (*release)(void *owner);
    void *owner;
};

static int unseal_store(void *ctx, const nb_sealed_t *e, uint8_t *buf, size_t cap, size_t *len)
{
    return nb_secrets_unseal_to(ctx, e, buf, cap, len);
}

int nb_pxcreds_wrap(const nb_sealed_t *sealed, size_t nsealed, const nb_binding_t *bindings,
                    size_t nbindings, const char *const *names, void (*release)(void *owner),
                    void *owner, nb_pxcreds_t **out)
{
    int r = nb_pxcreds_empty(out);
    if (r < 0)
        return r;
    nb_pxcreds_t *c = *out;
    c->wsealed = sealed;
    c->nsealed = nsealed;
    c->wbindings = bindings;
    c->nbindings = nbindings;
    c->wnames = names;
    c->release = release;
    c->owner = owner;
    return 0;
}

void nb_pxcreds_set_unseal(nb_pxcreds_t *c, nb_pxcreds_unseal_fn unseal, void *ctx)
{
    c->unseal = unseal;
    c->unseal_ctx = ctx;
}

int nb_pxcreds_empty(nb_pxcreds_t **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return -ENOMEM;
    (*out)->refs = 1;
    return 0;
}

int nb_pxcreds_load(nb_secrets_t *s, nb_pxcreds_t **out)
{
    int r;
    nb_pxcreds_t *c = NULL;
    *out = NULL;
    if ((r = nb_pxcreds_empty(&c)) < 0)
        return r;
    if (!s) {
        *out = c;
        return 0;
    }
    c->store = s;
    c->unseal = unseal_store;
    c->unseal_ctx = s;
    if ((r = nb_secrets_load_sealed(s, &c->sealed, &c->nsealed)) < 0)
        goto fail;
    if ((r = nb_secrets_bindings(s, &c->bindings, &c->nbindings)) < 0)
        goto fail;
    if (c->nsealed) {
        if (!(c->names = calloc(c->nsealed, sizeof *c->names))) {
            r = -ENOMEM;
            goto fail;
        }
        for (size_t i = 0; i < c->nsealed; i++)
            c->names[i] = c->sealed[i].name;
    }
    c->wsealed = c->sealed;
    c->wbindings = c->bindings;
    c->wnames = c->names;
    *out = c;
    return 0;
fail:
    nb_pxcreds_unref(c);
    return r;
}

nb_pxcreds_t *nb_pxcreds_ref(nb_pxcreds_t *c)
{
    if (c)
        c->refs++;
    return c;
}

void nb_pxcreds_unref(nb_pxcreds_t *c)
{
    if (!c || --c->refs > 0)
        return;
    if (c->release)
        c->release(c->owner);
    if (c->store)
        nb_sealed_free(c->sealed, c->nsealed);
    free(c->bindings);
    free(c->names);
    free(c);
}

const nb_binding_t *nb_pxcreds_bindings(const nb_pxcreds_t *c, size_t *n)
{
    *n = c->nbindings;
    return c->wbindings;
}

const char *const *nb_pxcreds_names(const nb_pxcreds_t *c, size_t *n)
{
    *n = c->nsealed;
    return c->wnames;
}

int nb_pxcreds_host_bound_any(const nb_pxcreds_t *c, const char *host)
{
    for (size_t i = 0; i < c->nbindings; i++) {
        if (nb_binding_host_ok(&c->wbindings[i], host))
            return 1;
    }
    return 0;
}

static int by_name(const void *key, const void *elem)
{
    return strcmp(key, ((const nb_sealed_t *)elem)->name);
}

int nb_pxcreds_get(void *ctx, const nb_binding_t *b, uint8_t *buf, size_t cap, size_t *len)
{
    nb_pxcreds_t *c = ctx;
    if (!c->unseal)
        return NB_ENOTFOUND;
    /* Only ever reached for bindings the injector matched itself (A2): the
     * name comes from the binding row, never from the request. */
    const nb_sealed_t *e =
        c->nsealed ? bsearch(b->secret, c->wsealed, c->nsealed, sizeof *c->wsealed, by_name) : NULL;
    if (!e)
        return NB_ENOTFOUND;
    return c->unseal(c->unseal_ctx, e, buf, cap, len);
}
