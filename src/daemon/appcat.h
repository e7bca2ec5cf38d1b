/* The app store's catalogue: a JSON document of installable apps and MCP
 * servers, signed with ed25519 (docs/internals/appstore.md).
 *
 * The project ships one (data/store/catalogue.json + .sig, compiled into
 * nilboxd, signed with the key whose public half is NB_APPCAT_BUILTIN_KEY);
 * a user may replace it with $NILBOX_HOME/store/catalogue.json (+ .sig),
 * signed by the built-in key or by a key listed in
 * $NILBOX_HOME/store/trusted.keys (one hex public key per line). A catalogue
 * whose signature does not verify is refused as a whole: there is no
 * unsigned path (THREATS.md A22).
 *
 * Each entry is then validated on its own; a bad entry is left out with a
 * reason (nb_appcat_t.refused) and the others stay usable. Among the checks:
 * the rules an entry proposes are exact names with a port (no wildcard, IP,
 * loopback or host.nilbox.internal), and a secret it asks to have bound may
 * only go to hosts of its own vendor's domain — an entry cannot ask for a
 * user's key to be sent somewhere its vendor does not own. Pure code: no
 * I/O except nb_appcat_load_home(); fuzzed by fuzz_appcat. */
#ifndef NB_APPCAT_H
#define NB_APPCAT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define NB_APPCAT_MAX_BYTES (4u * 1024 * 1024)
#define NB_APPCAT_MAX_APPS 512
#define NB_APPCAT_MAX_KEYS 16
#define NB_APPCAT_ID_MAX 64
#define NB_APPCAT_MCP_MAX 8 /* MCP servers one entry registers */

typedef struct {
    json_t *apps;    /* array of validated entries (objects), in file order */
    json_t *refused; /* array of {"id", "reason"} for entries left out */
    char version[64];
    char source[32]; /* "built-in" or "home" */
} nb_appcat_t;

/* Checks `sig` (64 raw bytes, or 128 hex digits with optional trailing
 * whitespace) over the exact bytes of `doc` against each of `keys`.
 * 0 when one key verifies; NB_ECRYPTO otherwise. */
int nb_appcat_verify(const uint8_t *doc, size_t n, const uint8_t *sig, size_t sign,
                     const uint8_t (*keys)[32], size_t nkeys);

/* Parses and validates a verified document into `cat` (zeroed first).
 * 0; NB_EPARSE / NB_ETOOBIG with a sentence in `err` when the document as
 * a whole is unusable (not JSON, wrong format, too many entries). */
int nb_appcat_parse(const uint8_t *doc, size_t n, nb_appcat_t *cat, char *err, size_t errsz);

/* Verify, then parse. */
int nb_appcat_load(const uint8_t *doc, size_t n, const uint8_t *sig, size_t sign,
                   const uint8_t (*keys)[32], size_t nkeys, nb_appcat_t *cat, char *err,
                   size_t errsz);

/* Loads the catalogue in effect for `home`: the home's own when
 * $home/store/catalogue.json exists (refused when it does not verify: the
 * built-in one is NOT used in its place, so a user notices), else the
 * built-in one. Trusted keys: the built-in key and $home/store/trusted.keys.
 * Blocking (reads files). */
int nb_appcat_load_home(const char *home, nb_appcat_t *cat, char *err, size_t errsz);

/* Trusted keys for `home` into `keys` (built-in first); returns the count. */
size_t nb_appcat_trusted_keys(const char *home, uint8_t (*keys)[32], size_t max);

/* The validated entry with `id`, or NULL (borrowed). */
const json_t *nb_appcat_find(const nb_appcat_t *cat, const char *id);

/* The MCP servers a validated entry registers, as a list of {name, argv}
 * whether the entry wrote one object or a list (new reference; empty when
 * it registers none). */
json_t *nb_appcat_mcp(const json_t *entry);

/* 1 when `id` is a valid app id: 1..63 of [a-z0-9-], starting with a
 * letter or digit. */
int nb_appcat_valid_id(const char *id);

void nb_appcat_clear(nb_appcat_t *cat);

/* The shipped catalogue (generated from data/store/ at build time). */
extern const unsigned char nb_appcat_builtin_doc[];
extern const size_t nb_appcat_builtin_doc_len;
extern const unsigned char nb_appcat_builtin_sig[];
extern const size_t nb_appcat_builtin_sig_len;

#endif
