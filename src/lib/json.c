#include "lib/json.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"

#define NB_JSON_MAX_DEPTH 32

/* jansson frees its strings, and the lexer's scratch buffers that held
 * every token of a parsed body, without clearing them: in the daemon a
 * secret value sent to the API would stay in freed heap memory. */
static void wiping_free(void *p)
{
    if (!p)
        return;
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
}

void nb_json_wipe_on_free(void)
{
    json_set_alloc_funcs(malloc, wiping_free);
}

static int depth_ok(const json_t *j, int depth)
{
    if (depth > NB_JSON_MAX_DEPTH)
        return 0;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)j, k, v) {
            if (!depth_ok(v, depth + 1))
                return 0;
        }
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach (j, i, v) {
            if (!depth_ok(v, depth + 1))
                return 0;
        }
    }
    return 1;
}

int nb_json_parse(nb_iov_t in, json_t **out, char *err, size_t errsz)
{
    json_error_t e;
    *out = NULL;
    if (err && errsz)
        err[0] = '\0';
    /* jansson itself caps depth at 2048; we keep ours much lower. */
    json_t *j = json_loadb((const char *)in.p, in.len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        if (err && errsz)
            snprintf(err, errsz, "invalid JSON at line %d column %d: %s", e.line, e.column, e.text);
        return NB_EPARSE;
    }
    if (!depth_ok(j, 0)) {
        json_decref(j);
        if (err && errsz)
            snprintf(err, errsz, "JSON nested deeper than %d levels", NB_JSON_MAX_DEPTH);
        return NB_EPARSE;
    }
    *out = j;
    return 0;
}

static int dump_cb(const char *p, size_t n, void *ud)
{
    return nb_buf_append(ud, p, n) < 0 ? -1 : 0;
}

/* Reals with 15 significant digits (what a double holds exactly): 9.18,
 * not jansson's default 17-digit 9.1799999999999997. */
#define NB_JSON_DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

int nb_json_dump(const json_t *j, nb_buf_t *b)
{
    size_t before = b->len;
    if (json_dump_callback(j, dump_cb, b, NB_JSON_DUMP_FLAGS) < 0) {
        nb_buf_truncate(b, before);
        return b->max - b->len < 1024 ? NB_ETOOBIG : -ENOMEM;
    }
    return 0;
}

const char *nb_json_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

json_int_t nb_json_int(const json_t *obj, const char *key, json_int_t def)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? json_integer_value(v) : def;
}

int nb_json_bool(const json_t *obj, const char *key, int def)
{
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}
