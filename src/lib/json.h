/* JSON helpers on jansson. */
#ifndef NB_JSON_H
#define NB_JSON_H

#include <jansson.h>

#include "lib/buf.h"

/* Parses untrusted JSON from `in` (not NUL-terminated). Rejects duplicate
 * keys, NUL bytes inside strings and nesting deeper than 32. On success
 * *out is a new reference (caller decrefs) and 0 is returned; on failure
 * *out is NULL, NB_EPARSE is returned and `err` (if not NULL, size errsz)
 * gets a one-line reason. */
int nb_json_parse(nb_iov_t in, json_t **out, char *err, size_t errsz);

/* Reals with 15 significant digits (what a double holds exactly): 9.18,
 * not jansson's default 17-digit 9.1799999999999997. */
#define NB_JSON_DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

/* Appends the compact serialisation of `j` to `b`. 0, NB_ETOOBIG, -ENOMEM. */
int nb_json_dump(const json_t *j, nb_buf_t *b);

/* Typed getters: NULL / `def` when the key is missing or of another type. */
const char *nb_json_str(const json_t *obj, const char *key);
json_int_t nb_json_int(const json_t *obj, const char *key, json_int_t def);
int nb_json_bool(const json_t *obj, const char *key, int def);

#endif
