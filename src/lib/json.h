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

/* Appends the compact serialisation of `j` to `b`. 0, NB_ETOOBIG, -ENOMEM. */
int nb_json_dump(const json_t *j, nb_buf_t *b);

/* Typed getters: NULL / `def` when the key is missing or of another type. */
const char *nb_json_str(const json_t *obj, const char *key);
json_int_t nb_json_int(const json_t *obj, const char *key, json_int_t def);
int nb_json_bool(const json_t *obj, const char *key, int def);

#endif
