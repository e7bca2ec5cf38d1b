/* The DNS blocklist: a signed binary fuse filter of blocked names
 * (THREATS.md A22; docs/internals/blocklist.md has the file format).
 *
 * A blocklist file holds a 3-wise binary fuse filter with 8-bit
 * fingerprints (Graf & Lemire 2022) over SipHash-2-4 of each listed name,
 * keyed by a random key stored in the header, and an ed25519 signature
 * over everything before it. About 9.1 bits per name and a false-positive
 * rate of 1/256 (0.39 %) per probe: 1 million names take 1.08 MiB, where a
 * Bloom filter at the same rate needs 11.5 bits per name (1.37 MiB).
 *
 * A name is blocked when it or any parent with at least two labels is in
 * the filter (`a.b.evil.com` when `evil.com` is listed). Single-label
 * names (TLDs) are never listed: the builder skips them, so a lookup costs
 * labels-1 probes (a deny rule `*.zip` blocks a whole TLD exactly).
 *
 * This module is shared by nilboxd and the CLI (it links no daemon code):
 *   - the pure file parser nb_bl_parse() (bounded, fuzzed: fuzz_blocklist),
 *   - nb_bl_open() / nb_bl_load_file(): parse + verify the signature,
 *   - lookups (pure, thread-safe on a loaded filter, no allocation),
 *   - the builder and the pure input-line parser (hosts files, plain
 *     domain lists, AdBlock `||domain^` rules),
 *   - the signing key and trusted keys kept in $NILBOX_HOME/blocklist/. */
#ifndef NB_BLOCKLIST_H
#define NB_BLOCKLIST_H

#include <stddef.h>
#include <stdint.h>

#define NB_BL_MAGIC "NBBLOCK\n" /* 8 bytes, no NUL in the file */
#define NB_BL_VERSION 1
#define NB_BL_HDR_LEN 128
#define NB_BL_SIG_LEN 64
#define NB_BL_KIND_FUSE8 1 /* 3-wise binary fuse, 8-bit fingerprints */
#define NB_BL_MAX_FILE (64u << 20)
#define NB_BL_MAX_NAMES (40u << 20) /* builder cap: keeps the file under 64 MiB */
#define NB_BL_SEG_MAX 262144u

/* Files under $NILBOX_HOME/blocklist/ (directory 0700). */
#define NB_BL_DIR "blocklist"
#define NB_BL_ACTIVE "active.nbbl"      /* the installed file the daemon loads */
#define NB_BL_SIGNING_KEY "signing.key" /* hex ed25519 seed, 0600, made on first build */
#define NB_BL_SIGNING_PUB "signing.pub" /* hex public key of signing.key */
#define NB_BL_TRUSTED "trusted.keys"    /* one hex public key a line: third-party signers */
#define NB_BL_MAX_KEYS 16               /* trusted keys read (own + trusted.keys) */

/* The parsed header (all integers little-endian in the file). */
typedef struct {
    uint16_t version;
    uint8_t kind;
    uint64_t created;   /* unix seconds */
    uint32_t count;     /* distinct names in the filter */
    uint32_t seg_len;   /* power of two, 4 .. NB_BL_SEG_MAX */
    uint32_t seg_count; /* >= 1 */
    uint32_t array_len; /* (seg_count + 2) * seg_len fingerprints */
    uint8_t key[16];    /* SipHash-2-4 key */
    uint64_t seed;      /* fuse filter seed */
    uint8_t signer[32]; /* ed25519 public key that signed (informative only) */
} nb_bl_hdr_t;

/* Parses and bounds-checks a whole file image (untrusted, `len` bytes):
 * magic, version, header length, kind, parameters, reserved bytes zero and
 * len == header + array_len + signature. Does NOT check the signature.
 * Pure, no allocation. 0, or NB_EPARSE / NB_EUNSUPPORTED (wrong version)
 * with a sentence in `err` (may be NULL). */
int nb_bl_parse(const uint8_t *buf, size_t len, nb_bl_hdr_t *h, char *err, size_t errsz);

/* A loaded, verified filter. Immutable: lookups may run on any thread. */
typedef struct nb_bl nb_bl_t;

/* Parses `buf` (takes ownership of the heap block, even on failure) and
 * verifies its signature against each of the `npk` trusted keys. 0, or
 * NB_EPARSE / NB_EUNSUPPORTED (bad file), NB_ECRYPTO (unsigned, tampered or
 * signed by a key that is not trusted) with a sentence in `err`. */
int nb_bl_open(uint8_t *buf, size_t len, const uint8_t (*pks)[32], size_t npk, nb_bl_t **out,
               char *err, size_t errsz);

/* Reads `path` (size checked before allocating) and nb_bl_open()s it.
 * Blocking. Adds -errno for I/O failures. */
int nb_bl_load_file(const char *path, const uint8_t (*pks)[32], size_t npk, nb_bl_t **out,
                    char *err, size_t errsz);

void nb_bl_free(nb_bl_t *b);
const nb_bl_hdr_t *nb_bl_header(const nb_bl_t *b);
/* The signed file image (for copying it into place) and its length. */
const uint8_t *nb_bl_image(const nb_bl_t *b, size_t *len);

/* 1 when exactly `name` (len bytes, normalised) is in the filter. */
int nb_bl_contains(const nb_bl_t *b, const char *name, size_t len);

/* 1 when normalised `name` or a parent of at least two labels is in the
 * filter; *match (may be NULL) then gets the offset in `name` of the
 * suffix that matched (0: the name itself). NULL `b` blocks nothing. */
int nb_bl_lookup(const nb_bl_t *b, const char *name, size_t *match);

/* ---- building ---- */

typedef struct nb_bl_builder nb_bl_builder_t;

/* A builder with a fresh random SipHash key. 0 or -ENOMEM. */
int nb_bl_builder_new(nb_bl_builder_t **out);
/* Test/bench hook: replaces the random key (before any add). */
void nb_bl_builder_set_key(nb_bl_builder_t *b, const uint8_t key[16]);

/* Adds a name (len bytes, untrusted): normalised with
 * nb_hostname_normalize(). 1 added, 0 skipped (not a valid name, or a
 * single label), NB_ETOOBIG past NB_BL_MAX_NAMES, -ENOMEM. Duplicates are
 * removed at finish. */
int nb_bl_builder_add(nb_bl_builder_t *b, const char *name, size_t len);

/* Builds and signs the file with ed25519 secret key `sk` (64 bytes,
 * libsodium layout), stamped `created`. *out is a heap block the caller
 * frees. 0, -ENOMEM, NB_EINTERNAL (construction failed: never seen). */
int nb_bl_builder_finish(nb_bl_builder_t *b, const uint8_t sk[64], uint64_t created, uint8_t **out,
                         size_t *outlen, char *err, size_t errsz);
void nb_bl_builder_free(nb_bl_builder_t *b);

/* ---- input lists ---- */

typedef enum {
    NB_BL_LINE_EMPTY = 0,   /* blank or comment (#, !, [Adblock ...]) */
    NB_BL_LINE_HOSTS = 1,   /* "0.0.0.0 a.com b.com" */
    NB_BL_LINE_PLAIN = 2,   /* "a.com" */
    NB_BL_LINE_ADBLOCK = 3, /* "||a.com^" */
    NB_BL_LINE_SKIPPED = 4, /* anything else: options, paths, exceptions, regexes */
} nb_bl_line_t;

/* Called for each name a line yields (not normalised; not NUL-terminated). */
typedef int (*nb_bl_name_fn)(void *ud, const char *name, size_t len);

/* Classifies one input line (untrusted, `len` bytes, no newline) and calls
 * `fn` for each name it lists. Hosts lines skip localhost-style names.
 * Returns an nb_bl_line_t, or the first negative value `fn` returned.
 * Pure; fuzzed. */
int nb_bl_parse_line(const char *line, size_t len, nb_bl_name_fn fn, void *ud);

/* ---- keys ---- */

/* Formats / parses 32 bytes as 64 lower-case hex digits. */
void nb_bl_hex(const uint8_t *in, size_t n, char *out);
int nb_bl_unhex(const char *in, size_t len, uint8_t *out, size_t n);

/* Loads $home/blocklist/signing.key, creating it (0600, directory 0700)
 * and signing.pub on first use (*created = 1). sk: 64 bytes. Refuses a
 * key file that group or others can read. 0 or an error with `err`. */
int nb_bl_key_load_or_create(const char *home, uint8_t sk[64], uint8_t pk[32], int *created,
                             char *err, size_t errsz);

/* Reads the trusted public keys: signing.pub, then each line of
 * trusted.keys ("#" comments). Up to `max`. Returns how many (>= 0). */
int nb_bl_trusted_keys(const char *home, uint8_t (*pks)[32], size_t max);

/* Appends `pk` to trusted.keys unless it is already trusted. 0 or error. */
int nb_bl_trust_key(const char *home, const uint8_t pk[32], char *err, size_t errsz);

#endif
