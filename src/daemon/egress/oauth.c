/* Scripted OAuth: the Lua sandbox and the token exchange rewrites
 * (oauth.h; docs/internals/oauth.md). */
#include "daemon/egress/oauth.h"

#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lib/err.h"
#include <strings.h>
#include "lib/hostname.h"
#include "lib/json.h"

void nb_oauth_limits_default(nb_oauth_limits_t *l)
{
    l->mem_max = NB_OAUTH_MEM_DEFAULT;
    l->steps_max = NB_OAUTH_STEPS_DEFAULT;
    l->timeout_ms = NB_OAUTH_TIMEOUT_MS_DEFAULT;
    l->quiet = 0;
}

const char *nb_oauth_slot_name(int slot)
{
    switch (slot) {
    case NB_OAUTH_SLOT_CLIENT_SECRET:
        return "client_secret";
    case NB_OAUTH_SLOT_REFRESH_TOKEN:
        return "refresh_token";
    default:
        return NULL;
    }
}

static int slot_parse(const char *s)
{
    for (int i = 0; i < NB_OAUTH_SLOT_N; i++)
        if (strcmp(s, nb_oauth_slot_name(i)) == 0)
            return i;
    return -1;
}

/* ---- the sandbox ---- */

#define HOOK_EVERY 1000 /* instructions between two budget checks */

typedef struct {
    size_t used, max;
    int oom;
    uint64_t steps, steps_max;
    uint64_t deadline_ns;
    int stop; /* 1: budget, 2: timeout */
    int quiet;
} sbx_t;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The memory cap: Lua's every allocation goes through here. */
static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sbx_t *s = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        s->used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > s->max - s->used) {
        s->oom = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) {
        s->oom = 1;
        return NULL;
    }
    s->used = s->used - old + nsize;
    return p;
}

/* The instruction budget and the wall clock. Once either is spent every
 * later check fails again at once, so nothing can run on (no pcall in the
 * sandbox can catch it, and finalizers stop at their next check). */
static void sbx_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    sbx_t *s;
    lua_getallocf(L, (void **)&s);
    s->steps += HOOK_EVERY;
    if (!s->stop && s->steps > s->steps_max)
        s->stop = 1;
    if (!s->stop && now_ns() > s->deadline_ns)
        s->stop = 2;
    if (s->stop)
        luaL_error(L, s->stop == 1 ? "instruction budget exceeded" : "timed out");
}

/* load() for text chunks only, in the sandbox's globals. */
static int sbx_load(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    return 1;
}

static void drop_fields(lua_State *L, const char *table, const char *const *names)
{
    if (lua_getglobal(L, table) != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    for (size_t i = 0; names[i]; i++) {
        lua_pushnil(L);
        lua_setfield(L, -2, names[i]);
    }
    lua_pop(L, 1);
}

/* A sandboxed state for script `name`; NULL (the reason in err) when it
 * cannot be made. */
static lua_State *sbx_open(sbx_t *s, const nb_oauth_limits_t *lim, const char *name, char *err,
                           size_t errsz)
{
    nb_oauth_limits_t def;
    if (!lim) {
        nb_oauth_limits_default(&def);
        lim = &def;
    }
    memset(s, 0, sizeof *s);
    s->max = lim->mem_max;
    s->quiet = lim->quiet;
    s->steps_max = lim->steps_max;
    s->deadline_ns = now_ns() + (uint64_t)lim->timeout_ms * 1000000u;
    lua_State *L = lua_newstate(sbx_alloc, s);
    if (!L) {
        snprintf(err, errsz, "oauth script %s: cannot create a Lua state", name);
        return NULL;
    }
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},        {LUA_TABLIBNAME, luaopen_table},
        {LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},  {NULL, NULL}};
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    static const char *const base_drop[] = {"dofile",         "loadfile", "pcall",   "xpcall",
                                            "collectgarbage", "print",    "require", NULL};
    for (size_t i = 0; base_drop[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, base_drop[i]);
    }
    static const char *const str_drop[] = {"find", "match", "gmatch", "gsub", "dump", NULL};
    drop_fields(L, LUA_STRLIBNAME, str_drop);
    static const char *const math_drop[] = {"random", "randomseed", NULL};
    drop_fields(L, LUA_MATHLIBNAME, math_drop);
    lua_pushcfunction(L, sbx_load);
    lua_setglobal(L, "load");
    /* package.loaded keeps references to the libraries: gone with it. */
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_sethook(L, sbx_hook, LUA_MASKCOUNT, HOOK_EVERY);
    return L;
}

/* A sentence for a failed call, naming the script. */
static int sbx_fail(lua_State *L, sbx_t *s, int status, const char *name, const char *what,
                    char *err, size_t errsz)
{
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object";
    if (s->oom || status == LUA_ERRMEM) {
        snprintf(err, errsz, "oauth script %s: %s: memory limit exceeded", name, what);
        return -ENOMEM;
    }
    if (s->stop == 1) {
        snprintf(err, errsz, "oauth script %s: %s: instruction budget exceeded", name, what);
        return NB_ETIMEOUT;
    }
    if (s->stop == 2) {
        snprintf(err, errsz, "oauth script %s: %s: timed out", name, what);
        return NB_ETIMEOUT;
    }
    if (s->quiet) {
        /* Keep "script:line" only: the text may quote the response. */
        size_t n = strlen(name), k = 0;
        if (strncmp(msg, name, n) == 0 && msg[n] == ':')
            for (k = n + 1; msg[k] >= '0' && msg[k] <= '9'; k++)
                ;
        snprintf(err, errsz, "oauth script %s: %s: runtime error%s%.*s", name, what,
                 k ? " at " : "", (int)k, msg);
        return NB_EINVAL;
    }
    snprintf(err, errsz, "oauth script %s: %s: %.200s", name, what, msg);
    return NB_EINVAL;
}

/* Loads and runs the chunk; leaves its result (a table) on the stack. */
static int sbx_chunk(lua_State *L, sbx_t *s, const char *src, size_t len, const char *name,
                     char *err, size_t errsz)
{
    if (len > NB_OAUTH_SCRIPT_MAX) {
        snprintf(err, errsz, "oauth script %s: larger than %d bytes", name, NB_OAUTH_SCRIPT_MAX);
        return NB_ETOOBIG;
    }
    char chunk[NB_OAUTH_SCRIPT_NAME_MAX + 2];
    snprintf(chunk, sizeof chunk, "=%s", name);
    int st = luaL_loadbufferx(L, src, len, chunk, "t");
    if (st != LUA_OK)
        return sbx_fail(L, s, st, name, "load", err, errsz);
    st = lua_pcall(L, 0, 1, 0);
    if (st != LUA_OK)
        return sbx_fail(L, s, st, name, "run", err, errsz);
    if (!lua_istable(L, -1)) {
        snprintf(err, errsz, "oauth script %s: must return a table", name);
        return NB_EINVAL;
    }
    return 0;
}

/* ---- declaration ---- */

static const char *field_str(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1); /* the table still holds the string */
    return v;
}

static int parse_url(const char *url, nb_oauth_decl_t *d)
{
    if (strncmp(url, "https://", 8) != 0)
        return -1;
    const char *h = url + 8, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    const char *colon = memchr(h, ':', hl);
    d->token_port = 443;
    size_t namelen = colon ? (size_t)(colon - h) : hl;
    if (colon) {
        long p = 0;
        for (const char *q = colon + 1; q < h + hl; q++) {
            if (*q < '0' || *q > '9' || (p = p * 10 + (*q - '0')) > 65535)
                return -1;
        }
        if (p < 1)
            return -1;
        d->token_port = (int)p;
    }
    if (nb_hostname_normalize(h, namelen, d->token_host, sizeof d->token_host) < 0)
        return -1;
    const char *path = slash ? slash : "/";
    size_t pl = strcspn(path, "?#");
    if (pl >= sizeof d->token_path)
        return -1;
    for (size_t i = 0; i < pl; i++)
        if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f)
            return -1;
    memcpy(d->token_path, path, pl);
    d->token_path[pl] = '\0';
    return 0;
}

static int read_decl(lua_State *L, const char *name, nb_oauth_decl_t *d, char *err, size_t errsz)
{
    int t = lua_gettop(L);
    const char *url = field_str(L, t, "token_url");
    if (!url || parse_url(url, d) < 0) {
        snprintf(err, errsz, "oauth script %s: token_url must be an https:// URL", name);
        return NB_EINVAL;
    }
    const char *fmt = field_str(L, t, "request");
    if (fmt && strcmp(fmt, "json") != 0 && strcmp(fmt, "form") != 0) {
        snprintf(err, errsz, "oauth script %s: request must be \"form\" or \"json\"", name);
        return NB_EINVAL;
    }
    d->request_json = fmt && strcmp(fmt, "json") == 0;
    if (lua_getfield(L, t, "secrets") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                snprintf(err, errsz, "oauth script %s: secrets maps field names to slots", name);
                return NB_EINVAL;
            }
            const char *field = lua_tostring(L, -2), *slot = lua_tostring(L, -1);
            int sl = slot_parse(slot);
            if (sl < 0) {
                snprintf(err, errsz,
                         "oauth script %s: unknown slot \"%.64s\" (client_secret or "
                         "refresh_token)",
                         name, slot);
                return NB_EINVAL;
            }
            if (d->nfields == NB_OAUTH_FIELDS_MAX || strlen(field) == 0 ||
                strlen(field) >= sizeof d->fields[0].field) {
                snprintf(err, errsz, "oauth script %s: too many or bad secret fields", name);
                return NB_EINVAL;
            }
            snprintf(d->fields[d->nfields].field, sizeof d->fields[0].field, "%s", field);
            d->fields[d->nfields++].slot = sl;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "api_hosts") == LUA_TTABLE) {
        for (lua_Integer i = 1;; i++) {
            if (lua_geti(L, -1, i) != LUA_TSTRING) {
                lua_pop(L, 1);
                break;
            }
            size_t hl;
            const char *h = lua_tolstring(L, -1, &hl);
            int wild = hl > 2 && h[0] == '*' && h[1] == '.';
            char *dst = d->napi < NB_OAUTH_API_HOSTS_MAX ? d->api_hosts[d->napi] : NULL;
            if (!dst || nb_hostname_normalize(h + (wild ? 2 : 0), hl - (wild ? 2 : 0),
                                              dst + (wild ? 2 : 0), 256 - (wild ? 2 : 0)) < 0) {
                snprintf(err, errsz, "oauth script %s: bad or too many api_hosts", name);
                return NB_EINVAL;
            }
            if (wild)
                memcpy(dst, "*.", 2);
            d->napi++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    const char *hdr = field_str(L, t, "api_header");
    if (!hdr)
        hdr = "Authorization: Bearer {secret}";
    if (strlen(hdr) >= sizeof d->api_header || !strstr(hdr, "{secret}")) {
        snprintf(err, errsz, "oauth script %s: api_header must hold {secret}", name);
        return NB_EINVAL;
    }
    snprintf(d->api_header, sizeof d->api_header, "%s", hdr);
    lua_getfield(L, t, "parse");
    int ty = lua_type(L, -1);
    lua_pop(L, 1);
    if (ty != LUA_TNIL && ty != LUA_TFUNCTION) {
        snprintf(err, errsz, "oauth script %s: parse must be a function", name);
        return NB_EINVAL;
    }
    d->has_parse = ty == LUA_TFUNCTION;
    return 0;
}

int nb_oauth_declare(const char *src, size_t len, const char *name, const nb_oauth_limits_t *lim,
                     nb_oauth_decl_t *out, char *err, size_t errsz)
{
    memset(out, 0, sizeof *out);
    err[0] = '\0';
    sbx_t s;
    lua_State *L = sbx_open(&s, lim, name, err, errsz);
    if (!L)
        return -ENOMEM;
    int r = sbx_chunk(L, &s, src, len, name, err, errsz);
    if (r == 0)
        r = read_decl(L, name, out, err, errsz);
    lua_close(L);
    return r;
}

/* ---- script-facing JSON: values to Lua and back ---- */

/* Pushes a JSON value as a Lua value; objects and arrays become tables
 * (arrays 1-based), null is nil. Depth-capped. */
static int push_json(lua_State *L, const json_t *j, int depth)
{
    if (depth > NB_OAUTH_JSON_DEPTH || !lua_checkstack(L, 4))
        return -1;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *k;
        const json_t *v;
        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_foreach ((json_t *)j, k, v) {
            if (push_json(L, v, depth + 1) < 0)
                return -1;
            lua_setfield(L, -2, k);
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t i;
        const json_t *v;
        lua_createtable(L, (int)json_array_size(j), 0);
        json_array_foreach (j, i, v) {
            if (push_json(L, v, depth + 1) < 0)
                return -1;
            lua_seti(L, -2, (lua_Integer)i + 1);
        }
        return 0;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        return 0;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        return 0;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(j));
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        lua_pushboolean(L, json_is_true(j));
        return 0;
    default:
        lua_pushnil(L);
        return 0;
    }
}

/* Percent-decodes (and '+' → ' ') into `b`; NB_EPARSE on a bad escape. */
static int form_decode(const uint8_t *p, size_t n, nb_buf_t *b)
{
    nb_buf_reset(b);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '+')
            c = ' ';
        else if (c == '%') {
            if (n - i < 3)
                return NB_EPARSE;
            int hi = nb_hexval(p[i + 1]), lo = nb_hexval(p[i + 2]);
            if (hi < 0 || lo < 0)
                return NB_EPARSE;
            c = (uint8_t)(hi << 4 | lo);
            i += 2;
        }
        int r = nb_buf_append(b, &c, 1);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Pushes a form body as a flat table of strings (later duplicates win). */
static int push_form(lua_State *L, nb_iov_t body)
{
    nb_buf_t k, v;
    nb_buf_init(&k, NB_OAUTH_BODY_MAX);
    nb_buf_init(&v, NB_OAUTH_BODY_MAX);
    int r = 0;
    lua_newtable(L);
    size_t i = 0;
    while (i < body.len && r == 0) {
        const uint8_t *amp = memchr(body.p + i, '&', body.len - i);
        size_t end = amp ? (size_t)(amp - body.p) : body.len;
        const uint8_t *eq = memchr(body.p + i, '=', end - i);
        size_t klen = eq ? (size_t)(eq - body.p) - i : end - i;
        if (klen) {
            if ((r = form_decode(body.p + i, klen, &k)) == 0 &&
                (r = eq ? form_decode(eq + 1, end - (size_t)(eq + 1 - body.p), &v) : 0) == 0) {
                if (!eq)
                    nb_buf_reset(&v);
                lua_pushlstring(L, (const char *)k.p ? (const char *)k.p : "", k.len);
                lua_pushlstring(L, v.p ? (const char *)v.p : "", v.len);
                lua_settable(L, -3);
            }
        }
        i = end + 1;
    }
    nb_buf_free(&k);
    nb_buf_free(&v);
    return r;
}

static int is_form_ctype(nb_iov_t ct)
{
    static const char f[] = "application/x-www-form-urlencoded";
    return ct.len >= sizeof f - 1 && strncasecmp((const char *)ct.p, f, sizeof f - 1) == 0;
}

/* ---- parse ---- */

static int copy_token(lua_State *L, int t, const char *key, uint8_t **out, size_t *outlen,
                      const char *name, char *err, size_t errsz)
{
    lua_getfield(L, t, key);
    int ty = lua_type(L, -1);
    if (ty == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    size_t n;
    const char *v = ty == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (!v || n == 0 || n > NB_OAUTH_TOKEN_MAX) {
        lua_pop(L, 1);
        snprintf(err, errsz, "oauth script %s: parse: %s must be a non-empty string", name, key);
        return NB_EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e) {
            lua_pop(L, 1);
            snprintf(err, errsz, "oauth script %s: parse: %s holds a byte a header cannot carry",
                     name, key);
            return NB_EINVAL;
        }
    if (!(*out = sodium_malloc(n))) {
        lua_pop(L, 1);
        return -ENOMEM;
    }
    memcpy(*out, v, n);
    *outlen = n;
    lua_pop(L, 1);
    return 0;
}

void nb_oauth_tokens_free(nb_oauth_tokens_t *t)
{
    if (!t)
        return;
    sodium_free(t->access);
    sodium_free(t->refresh);
    memset(t, 0, sizeof *t);
    t->expires_in = -1;
}

/* The standard fields, for scripts without parse(). */
static const char std_parse[] = "return function(r) if type(r) ~= 'table' then return nil end "
                                "return {access_token = r.access_token, refresh_token = "
                                "r.refresh_token, expires_in = tonumber(r.expires_in)} end";

int nb_oauth_parse(const char *src, size_t len, const char *name, const nb_oauth_limits_t *lim,
                   int status, nb_iov_t body, nb_iov_t ctype, nb_oauth_tokens_t *out, char *err,
                   size_t errsz)
{
    memset(out, 0, sizeof *out);
    out->expires_in = -1;
    err[0] = '\0';
    if (body.len > NB_OAUTH_BODY_MAX) {
        snprintf(err, errsz, "oauth script %s: the token response is too large", name);
        return NB_ETOOBIG;
    }
    sbx_t s;
    lua_State *L = sbx_open(&s, lim, name, err, errsz);
    if (!L)
        return -ENOMEM;
    int r = sbx_chunk(L, &s, src, len, name, err, errsz);
    json_t *j = NULL;
    if (r < 0)
        goto out;
    if (lua_getfield(L, -1, "parse") != LUA_TFUNCTION) {
        lua_pop(L, 1);
        if (luaL_loadbufferx(L, std_parse, sizeof std_parse - 1, "=std", "t") != LUA_OK ||
            lua_pcall(L, 0, 1, 0) != LUA_OK) {
            r = sbx_fail(L, &s, LUA_ERRRUN, name, "parse", err, errsz);
            goto out;
        }
    }
    /* The response as a value: JSON when it parses as JSON, a form table
     * for a form body, else the raw string. */
    if (is_form_ctype(ctype)) {
        if (push_form(L, body) < 0)
            lua_pushlstring(L, (const char *)body.p, body.len);
    } else {
        char jerr[64];
        if (nb_json_parse(body, &j, jerr, sizeof jerr) == 0) {
            if (push_json(L, j, 0) < 0) {
                snprintf(err, errsz, "oauth script %s: the token response is nested too deeply",
                         name);
                r = NB_EINVAL;
                goto out;
            }
        } else if (push_form(L, body) < 0) {
            lua_pushlstring(L, (const char *)body.p, body.len);
        }
    }
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "script");
    int st = lua_pcall(L, 2, 1, 0);
    if (st != LUA_OK) {
        r = sbx_fail(L, &s, st, name, "parse", err, errsz);
        goto out;
    }
    if (lua_isnil(L, -1)) {
        r = 1;
        goto out;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errsz, "oauth script %s: parse must return a table or nil", name);
        r = NB_EINVAL;
        goto out;
    }
    int t = lua_gettop(L);
    if ((r = copy_token(L, t, "access_token", &out->access, &out->access_len, name, err, errsz)) <
            0 ||
        (r = copy_token(L, t, "refresh_token", &out->refresh, &out->refresh_len, name, err,
                        errsz)) < 0)
        goto out;
    lua_getfield(L, t, "expires_in");
    if (lua_isinteger(L, -1) || lua_type(L, -1) == LUA_TNUMBER) {
        lua_Number e = lua_tonumber(L, -1);
        out->expires_in = e >= 0 && e < 1e10 ? (int64_t)e : -1;
    }
    lua_pop(L, 1);
    r = out->access ? 0 : 1;
out:
    if (j)
        json_decref(j);
    lua_close(L);
    if (r != 0 && r != 1)
        nb_oauth_tokens_free(out);
    if (r == 1)
        nb_oauth_tokens_free(out);
    return r;
}

/* ---- request rewrite ---- */

static int field_slot(const nb_oauth_decl_t *d, const uint8_t *k, size_t klen)
{
    for (size_t i = 0; i < d->nfields; i++)
        if (strlen(d->fields[i].field) == klen && memcmp(d->fields[i].field, k, klen) == 0)
            return d->fields[i].slot;
    return -1;
}

static int slot_value(nb_oauth_value_fn get, void *ctx, int slot, uint8_t **val, size_t *vlen)
{
    if (!(*val = sodium_malloc(NB_OAUTH_TOKEN_MAX)))
        return -ENOMEM;
    int r = get(ctx, slot, *val, NB_OAUTH_TOKEN_MAX, vlen);
    if (r < 0) {
        sodium_free(*val);
        *val = NULL;
    }
    return r;
}

static int form_encode(nb_buf_t *b, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        uint8_t c = p[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            r = nb_buf_append(b, &c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            r = nb_buf_append(b, e, 3);
        }
    }
    return r;
}

static int rewrite_form(const nb_oauth_decl_t *d, const char *const *ph, nb_iov_t body,
                        nb_oauth_value_fn get, void *ctx, nb_buf_t *out, int *n)
{
    int r = 0;
    size_t i = 0;
    while (i <= body.len && r == 0) {
        const uint8_t *amp = i < body.len ? memchr(body.p + i, '&', body.len - i) : NULL;
        size_t end = amp ? (size_t)(amp - body.p) : body.len;
        const uint8_t *eq = memchr(body.p + i, '=', end - i);
        int slot = eq ? field_slot(d, body.p + i, (size_t)(eq - body.p) - i) : -1;
        size_t vlen = eq ? end - (size_t)(eq + 1 - body.p) : 0;
        if (slot >= 0 && ph[slot] && strlen(ph[slot]) == vlen &&
            memcmp(eq + 1, ph[slot], vlen) == 0) {
            uint8_t *val = NULL;
            size_t len = 0;
            if ((r = slot_value(get, ctx, slot, &val, &len)) < 0)
                return r;
            r = nb_buf_append(out, body.p + i, (size_t)(eq + 1 - body.p) - i);
            if (r == 0)
                r = form_encode(out, val, len);
            sodium_free(val);
            (*n)++;
        } else {
            r = nb_buf_append(out, body.p + i, end - i);
        }
        if (r == 0 && amp)
            r = nb_buf_append(out, "&", 1);
        if (!amp)
            break;
        i = end + 1;
    }
    return r;
}

static int rewrite_json(const nb_oauth_decl_t *d, const char *const *ph, nb_iov_t body,
                        nb_oauth_value_fn get, void *ctx, nb_buf_t *out, int *n)
{
    json_t *j = NULL;
    char jerr[64];
    int r = nb_json_parse(body, &j, jerr, sizeof jerr);
    if (r < 0 || !json_is_object(j)) {
        if (j)
            json_decref(j);
        return NB_EINVAL;
    }
    for (size_t i = 0; i < d->nfields && r == 0; i++) {
        json_t *v = json_object_get(j, d->fields[i].field);
        int slot = d->fields[i].slot;
        if (!json_is_string(v) || !ph[slot] || strcmp(json_string_value(v), ph[slot]) != 0)
            continue;
        uint8_t *val = NULL;
        size_t len = 0;
        if ((r = slot_value(get, ctx, slot, &val, &len)) < 0)
            break;
        json_t *s = json_stringn((const char *)val, len);
        sodium_free(val);
        if (!s || json_object_set_new(j, d->fields[i].field, s) < 0)
            r = -ENOMEM;
        else
            (*n)++;
    }
    if (r == 0)
        r = nb_json_dump(j, out);
    json_decref(j);
    return r;
}

int nb_oauth_rewrite_request(const nb_oauth_decl_t *d, const char *const *placeholders,
                             nb_iov_t body, nb_oauth_value_fn get, void *ctx, nb_buf_t *out,
                             int *nreplaced)
{
    nb_buf_reset(out);
    *nreplaced = 0;
    if (body.len > NB_OAUTH_BODY_MAX)
        return NB_ETOOBIG;
    int r = d->request_json ? rewrite_json(d, placeholders, body, get, ctx, out, nreplaced)
                            : rewrite_form(d, placeholders, body, get, ctx, out, nreplaced);
    if (r < 0)
        nb_buf_reset(out);
    return r;
}

int nb_oauth_replace(nb_iov_t body, const nb_iov_t *needles, const char *const *repl, size_t n,
                     nb_buf_t *out)
{
    nb_buf_reset(out);
    size_t i = 0, copied = 0;
    int r = 0;
    while (i < body.len && r == 0) {
        size_t best = n, blen = 0;
        for (size_t k = 0; k < n; k++) {
            size_t l = needles[k].len;
            if (l && l > blen && l <= body.len - i && memcmp(body.p + i, needles[k].p, l) == 0) {
                best = k;
                blen = l;
            }
        }
        if (best == n) {
            i++;
            continue;
        }
        if ((r = nb_buf_append(out, body.p + copied, i - copied)) == 0)
            r = nb_buf_append_str(out, repl[best]);
        i += blen;
        copied = i;
    }
    if (r == 0)
        r = nb_buf_append(out, body.p + copied, body.len - copied);
    return r;
}

/* ---- binding sets ---- */

nb_oauth_set_t *nb_oauth_set_new(size_t n)
{
    nb_oauth_set_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (n && !(s->v = calloc(n, sizeof *s->v))) {
        free(s);
        return NULL;
    }
    s->n = n;
    s->refs = 1;
    return s;
}

nb_oauth_set_t *nb_oauth_set_ref(nb_oauth_set_t *s)
{
    if (s)
        s->refs++;
    return s;
}

void nb_oauth_set_unref(nb_oauth_set_t *s)
{
    if (!s || --s->refs)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].src);
    free(s->v);
    free(s);
}

int nb_oauth_set_match(const nb_oauth_set_t *s, const char *host, int port, nb_iov_t path,
                       const char *vm)
{
    if (!s)
        return -1;
    const uint8_t *q = memchr(path.p, '?', path.len);
    size_t pl = q ? (size_t)(q - path.p) : path.len;
    for (size_t i = 0; i < s->n; i++) {
        const nb_oauth_provider_t *p = &s->v[i];
        if (p->vm[0] && (!vm || strcmp(p->vm, vm) != 0))
            continue;
        if (p->decl.token_port == port && strcmp(p->decl.token_host, host) == 0 &&
            strlen(p->decl.token_path) == pl && memcmp(p->decl.token_path, path.p, pl) == 0)
            return (int)i;
    }
    return -1;
}
