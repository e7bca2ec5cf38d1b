/* Scripted OAuth: provider scripts (Lua 5.4) in a sandbox, and the pure
 * rewrites of a token exchange (docs/internals/oauth.md).
 *
 * A provider script is Lua text that returns a table: where the token
 * endpoint is, which request fields carry which of the binding's secrets
 * (slots, a closed list: the script names a slot, never a secret), which
 * API hosts take the access token and how, and optionally a function
 * `parse(resp, ctx)` that reads the token response. Every call runs in a
 * fresh Lua state (nothing survives between calls or between bindings)
 * with: no io, os, require, debug, coroutine, dofile/loadfile, pcall or
 * xpcall (a caught "budget exceeded" error must not be survivable), no
 * string pattern functions (their backtracking runs in C, out of reach
 * of the instruction hook), `load` limited to text; a memory cap (custom
 * allocator), an instruction budget and a wall-clock timeout (count hook).
 *
 * The script sees only the response of its own binding's exchange; the
 * request rewrite is done here in C from the binding's own slot values,
 * given by a callback: a script cannot name another secret. Pure apart
 * from the callback; any thread. */
#ifndef NB_OAUTH_H
#define NB_OAUTH_H
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define NB_OAUTH_SCRIPT_MAX (64 * 1024)
#define NB_OAUTH_SCRIPT_NAME_MAX 64
#define NB_OAUTH_FIELDS_MAX 8
#define NB_OAUTH_API_HOSTS_MAX 8
#define NB_OAUTH_BODY_MAX (64 * 1024) /* token request and response bodies */
#define NB_OAUTH_TOKEN_MAX 8192       /* one token's value */
#define NB_OAUTH_JSON_DEPTH 16        /* nesting handed to a script */
#define NB_OAUTH_MEM_DEFAULT (4u << 20)
#define NB_OAUTH_STEPS_DEFAULT 5000000u
#define NB_OAUTH_TIMEOUT_MS_DEFAULT 250u

typedef struct {
    size_t mem_max;      /* bytes the Lua state may hold */
    uint64_t steps_max;  /* VM instructions per call */
    uint32_t timeout_ms; /* wall clock per call */
    int quiet;           /* 1: a script's error text is left out of `err` (only where it
                            failed): it may quote the response, and so a real token */
} nb_oauth_limits_t;

void nb_oauth_limits_default(nb_oauth_limits_t *l);

/* The binding's secrets a request field may carry. */
typedef enum {
    NB_OAUTH_SLOT_CLIENT_SECRET = 0,
    NB_OAUTH_SLOT_REFRESH_TOKEN = 1,
    NB_OAUTH_SLOT_N
} nb_oauth_slot_t;

const char *nb_oauth_slot_name(int slot); /* "client_secret", "refresh_token" */

typedef struct {
    char token_host[256]; /* lower case */
    int token_port;       /* 443 unless the URL says otherwise */
    char token_path[512]; /* path without query */
    int request_json;     /* 1: the request body is JSON, 0: form-urlencoded */
    struct {
        char field[64];
        int slot; /* nb_oauth_slot_t */
    } fields[NB_OAUTH_FIELDS_MAX];
    size_t nfields;
    char api_hosts[NB_OAUTH_API_HOSTS_MAX][256];
    size_t napi;
    char api_header[320]; /* "Authorization: Bearer {secret}" */
    int has_parse;        /* the script has parse(); otherwise the standard fields */
} nb_oauth_decl_t;

/* Runs the script and reads its declaration. 0, or NB_EINVAL / NB_ETIMEOUT / -ENOMEM
 * (budget, memory, timeout) with a sentence naming `name` in `err`. */
int nb_oauth_declare(const char *src, size_t len, const char *name, const nb_oauth_limits_t *lim,
                     nb_oauth_decl_t *out, char *err, size_t errsz);

/* What a token response yields. Values are in locked memory
 * (sodium_malloc); free with nb_oauth_tokens_free (wipes). */
typedef struct {
    uint8_t *access;
    size_t access_len;
    uint8_t *refresh; /* NULL: none in this response (no rotation) */
    size_t refresh_len;
    int64_t expires_in; /* seconds, -1 unknown */
} nb_oauth_tokens_t;

void nb_oauth_tokens_free(nb_oauth_tokens_t *t);

/* Hands the token response (status, body, Content-Type value) to the
 * script's parse() (or reads access_token / refresh_token / expires_in
 * when it has none). JSON bodies become tables, form bodies
 * (a=b&c=d) flat tables. 0 with out->access set, 1 when the response
 * carries no token (an error answer: forwarded as is), or a negative
 * code with a sentence naming the script in `err`. */
int nb_oauth_parse(const char *src, size_t len, const char *name, const nb_oauth_limits_t *lim,
                   int status, nb_iov_t body, nb_iov_t ctype, nb_oauth_tokens_t *out, char *err,
                   size_t errsz);

/* Value of a slot of the binding being served, into locked `buf`. */
typedef int (*nb_oauth_value_fn)(void *ctx, int slot, uint8_t *buf, size_t cap, size_t *len);

/* Rewrites a token request body: in each declared field whose value is
 * exactly the slot's placeholder (placeholders[slot]), the placeholder
 * becomes the real value (percent-encoded in a form, a JSON string in a
 * JSON body). Other fields and values stay as sent. The result goes to
 * `out` (cleared first; it should be a wipe-on-free buffer; the caller
 * wipes it after the write). *nreplaced counts substitutions. 0,
 * NB_EINVAL (not a body of that format), NB_ETOOBIG, or the callback's
 * error. */
int nb_oauth_rewrite_request(const nb_oauth_decl_t *d, const char *const *placeholders,
                             nb_iov_t body, nb_oauth_value_fn get, void *ctx, nb_buf_t *out,
                             int *nreplaced);

/* Copies `body` to `out` with every occurrence of needles[i] replaced by
 * repl[i] (longest first at a position). 0 or NB_ETOOBIG / -ENOMEM. */
int nb_oauth_replace(nb_iov_t body, const nb_iov_t *needles, const char *const *repl, size_t n,
                     nb_buf_t *out);

/* ---- bindings as the engine sees them ---- */

#define NB_OAUTH_NAME_MAX 64

/* One OAuth binding: its script (text and declaration), its VM scope,
 * and the names of its secrets, which are also the guest's placeholders. */
typedef struct {
    char name[NB_OAUTH_NAME_MAX + 1];
    char script[NB_OAUTH_SCRIPT_NAME_MAX + 1];
    char *src; /* malloc, the script text */
    size_t srclen;
    nb_oauth_decl_t decl;
    char vm[64];                       /* "" = every VM */
    char secret[NB_OAUTH_SLOT_N][129]; /* NAME_CLIENT_SECRET, NAME_REFRESH_TOKEN */
    char access[129];                  /* NAME_ACCESS_TOKEN */
} nb_oauth_provider_t;

/* A refcounted, immutable set of bindings (swapped whole on change). */
typedef struct {
    unsigned refs;
    nb_oauth_provider_t *v;
    size_t n;
} nb_oauth_set_t;

/* n zeroed providers, one reference. NULL on ENOMEM. */
nb_oauth_set_t *nb_oauth_set_new(size_t n);
nb_oauth_set_t *nb_oauth_set_ref(nb_oauth_set_t *s);
void nb_oauth_set_unref(nb_oauth_set_t *s); /* NULL is a no-op */

/* The binding whose token endpoint is `host`:`port` `path` (no query)
 * for `vm`, or -1. */
int nb_oauth_set_match(const nb_oauth_set_t *s, const char *host, int port, nb_iov_t path,
                       const char *vm);

#endif
