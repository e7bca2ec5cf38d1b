/* The proxy's view of the secret store: every user secret as ciphertext
 * (nb_sealed_t), every binding, and the list of secret names the injector
 * watches for leaks. Loaded on the thread pool whenever secrets or
 * bindings change and swapped in on the loop; connections keep a reference
 * to the snapshot they started a request with.
 *
 * Values are unsealed one at a time, on the loop, into the injector's
 * locked work area at the moment of injection (nb_pxcreds_get), never
 * cached in plaintext. Refcounted; loop thread except nb_pxcreds_load. */
#ifndef NB_PROXY_CREDS_H
#define NB_PROXY_CREDS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/secrets/secrets.h"

typedef struct nb_pxcreds nb_pxcreds_t;

/* Reads every sealed secret and binding of `s` (blocking: thread pool or
 * startup). `s` is borrowed and must stay open while the snapshot lives.
 * `s` NULL gives an empty snapshot (no secrets: nothing is injected). */
int nb_pxcreds_load(nb_secrets_t *s, nb_pxcreds_t **out);

/* An empty snapshot. */
int nb_pxcreds_empty(nb_pxcreds_t **out);

/* Unseals record `e` into locked `buf` (contract of nb_secrets_unseal_to). */
typedef int (*nb_pxcreds_unseal_fn)(void *ctx, const nb_sealed_t *e, uint8_t *buf, size_t cap,
                                    size_t *len);

/* Wraps arrays owned elsewhere (e.g. the daemon's secret service
 * snapshot): `sealed` sorted by name, `names` the nsealed names. They are
 * borrowed until the last reference goes, when `release(owner)` runs.
 * Values are unsealed by the provider nb_pxcreds_set_unseal installs (the
 * proxy's, nb_proxy_set_creds); until then none is found. */
int nb_pxcreds_wrap(const nb_sealed_t *sealed, size_t nsealed, const nb_binding_t *bindings,
                    size_t nbindings, const char *const *names, void (*release)(void *owner),
                    void *owner, nb_pxcreds_t **out);

/* Sets the provider that unseals this snapshot's records. */
void nb_pxcreds_set_unseal(nb_pxcreds_t *c, nb_pxcreds_unseal_fn unseal, void *ctx);

nb_pxcreds_t *nb_pxcreds_ref(nb_pxcreds_t *c);
void nb_pxcreds_unref(nb_pxcreds_t *c); /* NULL is a no-op */

/* Bindings and watched names (borrowed from the snapshot). */
const nb_binding_t *nb_pxcreds_bindings(const nb_pxcreds_t *c, size_t *n);
const char *const *nb_pxcreds_names(const nb_pxcreds_t *c, size_t *n);

/* 1 when some binding, for any VM, names `host` (pattern or exact): a
 * value may have been sent there, so everything that comes back from it
 * on an inspected connection is scanned (A5), for every VM. */
int nb_pxcreds_host_bound_any(const nb_pxcreds_t *c, const char *host);

/* nb_inject_get_fn for this snapshot (ctx = the snapshot). */
int nb_pxcreds_get(void *ctx, const nb_binding_t *b, uint8_t *buf, size_t cap, size_t *len);

#endif
