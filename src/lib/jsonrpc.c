/* JSON-RPC 2.0 framing (see jsonrpc.h). */
#include "lib/jsonrpc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lib/err.h"

void nb_jsonrpc_msg_clear(nb_jsonrpc_msg_t *m)
{
    json_decref(m->msg);
    memset(m, 0, sizeof *m);
}

static int id_ok(const json_t *id)
{
    return json_is_string(id) || json_is_integer(id);
}

static int fail(int code, char *err, size_t errsz, const char *why)
{
    if (errsz)
        snprintf(err, errsz, "%s", why);
    return code;
}

int nb_jsonrpc_parse(nb_iov_t in, size_t max, nb_jsonrpc_msg_t *out, json_t **err_id, char *err,
                     size_t errsz)
{
    memset(out, 0, sizeof *out);
    *err_id = NULL;
    if (errsz)
        err[0] = 0;
    if (!max)
        max = NB_JSONRPC_FRAME_MAX;
    if (in.len > max)
        return fail(NB_JSONRPC_TOO_BIG, err, errsz, "message too large");
    json_error_t je;
    /* Duplicate keys are refused: the bridge judges a tool call by its
     * name, and a server that read another "name" than ours would run a
     * tool the policy never saw. Messages are forwarded re-serialised from
     * this parse, so both ends see the same object. */
    json_t *j =
        json_loadb((const char *)in.p, in.len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!j)
        return fail(NB_JSONRPC_PARSE_ERROR, err, errsz, "not valid JSON");
    if (json_is_array(j)) {
        json_decref(j);
        return fail(NB_JSONRPC_INVALID_REQUEST, err, errsz, "batches are not supported");
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return fail(NB_JSONRPC_INVALID_REQUEST, err, errsz, "a message must be a JSON object");
    }
    json_t *id = json_object_get(j, "id");
    if (id && id_ok(id))
        *err_id = json_incref(id);
    const char *why = NULL;
    json_t *ver = json_object_get(j, "jsonrpc");
    json_t *method = json_object_get(j, "method");
    json_t *result = json_object_get(j, "result");
    json_t *error = json_object_get(j, "error");
    if (!json_is_string(ver) || strcmp(json_string_value(ver), "2.0") != 0) {
        why = "\"jsonrpc\" must be \"2.0\"";
    } else if (method) {
        const char *m = json_string_value(method);
        if (!m || !m[0] || strlen(m) > NB_JSONRPC_METHOD_MAX)
            why = "\"method\" must be a non-empty string";
        else if (result || error)
            why = "a request cannot carry \"result\" or \"error\"";
        else if (id && !id_ok(id))
            why = "\"id\" must be a string or an integer";
        else if (json_object_get(j, "params") && !json_is_object(json_object_get(j, "params")) &&
                 !json_is_array(json_object_get(j, "params")))
            why = "\"params\" must be an object or an array";
        else {
            out->kind = id ? NB_JSONRPC_REQUEST : NB_JSONRPC_NOTIFICATION;
            out->method = m;
        }
    } else if (!id) {
        why = "a message needs \"method\" or \"id\"";
    } else if (!!result == !!error) {
        why = "a response carries exactly one of \"result\" and \"error\"";
    } else if (!id_ok(id) && !(json_is_null(id) && error)) {
        why = "\"id\" must be a string or an integer";
    } else if (error &&
               (!json_is_object(error) || !json_is_integer(json_object_get(error, "code")) ||
                !json_is_string(json_object_get(error, "message")))) {
        why = "\"error\" must be {\"code\": int, \"message\": string}";
    } else {
        out->kind = NB_JSONRPC_RESPONSE;
    }
    if (why) {
        json_decref(j);
        return fail(NB_JSONRPC_INVALID_REQUEST, err, errsz, why);
    }
    out->msg = j;
    out->id = id;
    json_decref(*err_id);
    *err_id = NULL;
    return 0;
}

json_t *nb_jsonrpc_error(const json_t *id, int code, const char *msg)
{
    return json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id",
                     id ? (json_t *)id : json_null(), "error", "code", code, "message", msg);
}

void nb_jsonrpc_id_key(const json_t *id, char *out, size_t outsz)
{
    if (json_is_string(id))
        snprintf(out, outsz, "s:%s", json_string_value(id));
    else if (json_is_integer(id))
        snprintf(out, outsz, "i:%" JSON_INTEGER_FORMAT, json_integer_value(id));
    else if (outsz)
        out[0] = 0;
}

void nb_jsonrpc_lines_init(nb_jsonrpc_lines_t *l, size_t max)
{
    memset(l, 0, sizeof *l);
    l->max = max ? max : NB_JSONRPC_FRAME_MAX;
    /* One byte of slack: a line of exactly `max` bytes is fine. */
    nb_buf_init(&l->line, l->max + 1);
}

int nb_jsonrpc_lines_feed(nb_jsonrpc_lines_t *l, const uint8_t *p, size_t n, nb_jsonrpc_line_fn fn,
                          void *ud)
{
    while (n) {
        const uint8_t *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        if (!l->skipping) {
            if (l->line.len + take > l->max) {
                /* Over the cap: report once, then drop up to the newline. */
                nb_buf_reset(&l->line);
                l->skipping = 1;
                fn(ud, nb_iov(NULL, 0), 1);
            } else if (take) {
                int r = nb_buf_append(&l->line, p, take);
                if (r < 0)
                    return r;
            }
        }
        if (!nl)
            return 0;
        if (!l->skipping) {
            size_t len = l->line.len;
            if (len && l->line.p[len - 1] == '\r')
                len--;
            if (len)
                fn(ud, nb_iov(l->line.p, len), 0);
        }
        l->skipping = 0;
        nb_buf_reset(&l->line);
        p += take + 1;
        n -= take + 1;
    }
    return 0;
}

void nb_jsonrpc_lines_free(nb_jsonrpc_lines_t *l)
{
    nb_buf_free(&l->line);
}
