/* The app store's catalogue: signature check and strict validation
 * (appcat.h). The format is documented in docs/internals/appstore.md. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/appcat.h"
#include "lib/err.h"
#include "lib/hostname.h"
#include "lib/json.h"

/* The project's store signing key (public half). The private half is held
 * by the maintainers; scripts/sign-catalogue.sh signs with it. */
#define NB_APPCAT_BUILTIN_KEY "1f758df7af82dfee8aa7205fd93cc02b4461c50989cb7c1f5821a334a800d0e0"

#define SUMMARY_MAX 300
#define SCRIPT_MAX (16 * 1024)
#define LIST_MAX 64
#define ARG_MAX_LEN 1024

int nb_appcat_verify(const uint8_t *doc, size_t n, const uint8_t *sig, size_t sign,
                     const uint8_t (*keys)[32], size_t nkeys)
{
    uint8_t raw[crypto_sign_BYTES];
    if (sign == crypto_sign_BYTES) {
        memcpy(raw, sig, sizeof raw);
    } else {
        /* Hex text, maybe with a trailing newline. */
        while (sign > 0 && (sig[sign - 1] == '\n' || sig[sign - 1] == '\r' ||
                            sig[sign - 1] == ' ' || sig[sign - 1] == '\t'))
            sign--;
        size_t got = 0;
        if (sign != 2 * crypto_sign_BYTES ||
            sodium_hex2bin(raw, sizeof raw, (const char *)sig, sign, NULL, &got, NULL) != 0 ||
            got != sizeof raw)
            return NB_ECRYPTO;
    }
    for (size_t i = 0; i < nkeys; i++)
        if (crypto_sign_verify_detached(raw, doc, n, keys[i]) == 0)
            return 0;
    return NB_ECRYPTO;
}

int nb_appcat_valid_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n >= 1 && n < NB_APPCAT_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789-") == n && id[0] != '-';
}

/* ---------------------------------------------------------- validation */

/* Each check returns NULL when fine, else a reason (static text or `why`). */

static int printable(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static int text_field(const json_t *e, const char *key, size_t max, int required)
{
    json_t *v = json_object_get(e, key);
    if (!v)
        return !required;
    return json_is_string(v) && printable(json_string_value(v), max);
}

static int debian_pkg_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 2 && n <= 100 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789.+-") == n &&
           s[0] != '-' && s[0] != '.' && s[0] != '+';
}

/* npm: "name", "@scope/name", each optionally "@version" (no URLs, paths,
 * git specs or flags: a catalogue installs from the registry only). */
static int npm_pkg_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 214 || s[0] == '-' || s[0] == '.')
        return 0;
    const char *body = s[0] == '@' ? s + 1 : s;
    const char *slash = strchr(body, '/');
    if (s[0] == '@' && (!slash || slash == body))
        return 0;
    if (s[0] != '@' && slash)
        return 0;
    const char *ver = strchr(slash ? slash + 1 : body, '@');
    size_t name_end = ver ? (size_t)(ver - s) : n;
    for (size_t i = 0; i < name_end; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
              c == '_' || c == '/' || (c == '@' && i == 0)))
            return 0;
    }
    if (ver) {
        size_t vl = strlen(ver + 1);
        if (vl == 0 || vl > 64 ||
            strspn(ver + 1,
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-+^~") != vl)
            return 0;
    }
    return 1;
}

static int string_list(const json_t *e, const char *key, int (*ok)(const char *), int required)
{
    json_t *v = json_object_get(e, key), *x;
    size_t i;
    if (!v)
        return !required;
    if (!json_is_array(v) || json_array_size(v) > LIST_MAX || (required && json_array_size(v) == 0))
        return 0;
    json_array_foreach (v, i, x)
        if (!json_is_string(x) || !ok(json_string_value(x)))
            return 0;
    return 1;
}

static int arg_ok(const char *s)
{
    return strlen(s) <= ARG_MAX_LEN && (s[0] == '\0' || printable(s, ARG_MAX_LEN));
}

static int argv_ok(const json_t *v)
{
    json_t *x;
    size_t i;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > LIST_MAX)
        return 0;
    json_array_foreach (v, i, x)
        if (!json_is_string(x) || !arg_ok(json_string_value(x)) ||
            (i == 0 && !json_string_value(x)[0]))
            return 0;
    return 1;
}

/* A name a rule or binding may name: a DNS name (not an IP literal), not
 * loopback or our own internal names. Writes the normalised name. */
static int public_name(const char *s, size_t len, char *out, size_t outsz)
{
    nb_ipaddr_t ip;
    if (len == 0 || nb_ip_parse(s, len, &ip) || memchr(s, '*', len))
        return 0;
    if (nb_hostname_normalize(s, len, out, outsz) < 0 || !strchr(out, '.'))
        return 0;
    static const char *const internal[] = {"localhost", "nilbox.internal", "internal", "local"};
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) {
        size_t l = strlen(out), k = strlen(internal[i]);
        if (!strcmp(out, internal[i]) ||
            (l > k && out[l - k - 1] == '.' && !strcmp(out + l - k, internal[i])))
            return 0;
    }
    return 1;
}

/* "name:port" with an exact public name and a port 1..65535. */
static int rule_ok(const char *s)
{
    const char *colon = strrchr(s, ':');
    char name[NB_HOSTNAME_BUFSZ];
    if (!colon || colon == s || !colon[1] || strlen(colon + 1) > 5 ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return 0;
    long port = strtol(colon + 1, NULL, 10);
    return port >= 1 && port <= 65535 && public_name(s, (size_t)(colon - s), name, sizeof name);
}

static int secret_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 64 && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == n &&
           !(s[0] >= '0' && s[0] <= '9');
}

/* 1 when normalised `host` is `vendor` or below it. */
static int under_vendor(const char *host, const char *vendor)
{
    size_t h = strlen(host), v = strlen(vendor);
    return !strcmp(host, vendor) ||
           (h > v && host[h - v - 1] == '.' && !strcmp(host + h - v, vendor));
}

static const char *check_secrets(const json_t *e, const char *vendor)
{
    json_t *v = json_object_get(e, "secrets"), *s, *h;
    size_t i, k;
    if (!v)
        return NULL;
    if (!json_is_array(v) || json_array_size(v) > 16)
        return "'secrets' must be an array of at most 16 {name, hosts}";
    json_array_foreach (v, i, s) {
        const char *name = nb_json_str(s, "name");
        json_t *hosts = json_object_get(s, "hosts");
        if (!json_is_object(s) || !name || !secret_name_ok(name))
            return "a secret needs a 'name' of A-Z, 0-9 and _";
        if (!json_is_array(hosts) || json_array_size(hosts) == 0 || json_array_size(hosts) > 16)
            return "a secret needs 'hosts': 1 to 16 names";
        json_array_foreach (hosts, k, h) {
            char name_n[NB_HOSTNAME_BUFSZ];
            const char *hs = json_string_value(h);
            if (!hs || !public_name(hs, strlen(hs), name_n, sizeof name_n))
                return "a secret's hosts must be exact public DNS names";
            if (!under_vendor(name_n, vendor))
                return "asks for a secret binding to a host outside its vendor's domain "
                       "(an entry may only have keys sent to hosts its vendor owns)";
        }
    }
    return NULL;
}

/* One MCP server an entry registers with the bridge (mcp.h): a name the
 * bridge takes (at most 32 characters) and a command of non-empty words. */
static int mcp_server_ok(const json_t *v)
{
    const char *k, *name = nb_json_str(v, "name");
    json_t *x;
    size_t i;
    if (!json_is_object(v) || !nb_appcat_valid_id(name) || strlen(name) > 32 ||
        !argv_ok(json_object_get(v, "argv")))
        return 0;
    json_object_foreach ((json_t *)v, k, x)
        if (strcmp(k, "name") && strcmp(k, "argv"))
            return 0;
    json_array_foreach (json_object_get(v, "argv"), i, x)
        if (!json_string_value(x)[0])
            return 0;
    return 1;
}

/* "mcp": one server object, or a list of 1..8 with distinct names. */
static int mcp_ok(const json_t *v)
{
    json_t *x, *y;
    size_t i, k;
    if (json_is_object(v))
        return mcp_server_ok(v);
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > NB_APPCAT_MCP_MAX)
        return 0;
    json_array_foreach (v, i, x) {
        if (!mcp_server_ok(x))
            return 0;
        for (k = 0; k < i && (y = json_array_get(v, k)); k++)
            if (!strcmp(nb_json_str(x, "name"), nb_json_str(y, "name")))
                return 0;
    }
    return 1;
}

json_t *nb_appcat_mcp(const json_t *entry)
{
    json_t *v = json_object_get(entry, "mcp");
    if (json_is_array(v))
        return json_incref(v);
    return v ? json_pack("[O]", v) : json_array();
}

static const char *check_entry(const json_t *e)
{
    static const char *const kinds[] = {"agent", "mcp", "tool"};
    static const char *const images[] = {"tiny", "debian"};
    static const char *const known[] = {"id",     "name",   "kind",  "summary", "homepage",
                                        "vendor", "image",  "apt",   "npm",     "script",
                                        "check",  "remove", "rules", "secrets", "mcp"};
    const char *k;
    json_t *v;
    if (!json_is_object(e))
        return "an entry must be an object";
    json_object_foreach ((json_t *)e, k, v) {
        size_t i = 0;
        while (i < sizeof known / sizeof known[0] && strcmp(known[i], k) != 0)
            i++;
        if (i == sizeof known / sizeof known[0])
            return "unknown field (a newer catalogue format? update nilbox)";
    }
    if (!nb_appcat_valid_id(nb_json_str(e, "id")))
        return "'id' must be 1-63 of a-z, 0-9 and -";
    if (!text_field(e, "name", 80, 1) || !text_field(e, "summary", SUMMARY_MAX, 1) ||
        !text_field(e, "homepage", 200, 0))
        return "'name' and 'summary' are required single-line texts";
    const char *homepage = nb_json_str(e, "homepage");
    if (homepage && strncmp(homepage, "https://", 8) != 0)
        return "'homepage' must be an https:// URL";
    const char *kind = nb_json_str(e, "kind"), *image = nb_json_str(e, "image");
    size_t i;
    for (i = 0; kind && i < 3 && strcmp(kind, kinds[i]); i++)
        ;
    if (!kind || i == 3)
        return "'kind' must be agent, mcp or tool";
    for (i = 0; image && i < 2 && strcmp(image, images[i]); i++)
        ;
    if (!image || i == 2)
        return "'image' must be tiny or debian";
    const char *vendor = nb_json_str(e, "vendor");
    char vendor_n[NB_HOSTNAME_BUFSZ], pat[NB_HOSTNAME_BUFSZ + 2];
    if (!vendor || !public_name(vendor, strlen(vendor), vendor_n, sizeof vendor_n))
        return "'vendor' must be the vendor's DNS domain (e.g. example.com)";
    snprintf(pat, sizeof pat, "*.%s", vendor_n);
    if (nb_host_pattern_public(pat))
        return "'vendor' is a public suffix, not a domain one vendor owns";
    if (!string_list(e, "apt", debian_pkg_ok, 0))
        return "'apt' must be a list of Debian package names";
    if (!string_list(e, "npm", npm_pkg_ok, 0))
        return "'npm' must be a list of npm registry package names (name or name@version)";
    if ((v = json_object_get(e, "script")) &&
        (!json_is_string(v) || strlen(json_string_value(v)) > SCRIPT_MAX))
        return "'script' must be a text of at most 16 KiB";
    if ((v = json_object_get(e, "remove")) &&
        (!json_is_string(v) || strlen(json_string_value(v)) > SCRIPT_MAX))
        return "'remove' must be a text of at most 16 KiB";
    if (!json_object_get(e, "apt") && !json_object_get(e, "npm") && !json_object_get(e, "script"))
        return "an entry must install something: 'apt', 'npm' or 'script'";
    if (!argv_ok(json_object_get(e, "check")))
        return "'check' must be a command (argv list) that exits 0 once the app is installed";
    if (!string_list(e, "rules", rule_ok, 0))
        return "'rules' must be exact public names with a port (host:443): no wildcard, IP, "
               "loopback or nilbox-internal name";
    const char *why = check_secrets(e, vendor_n);
    if (why)
        return why;
    if ((v = json_object_get(e, "mcp")) && !mcp_ok(v))
        return "'mcp' must be {name (1-32 of a-z, 0-9, -), argv (the server's command, non-empty "
               "words)} or a list of at most 8 of those with different names";
    return NULL;
}

void nb_appcat_clear(nb_appcat_t *cat)
{
    json_decref(cat->apps);
    json_decref(cat->refused);
    memset(cat, 0, sizeof *cat);
}

int nb_appcat_parse(const uint8_t *doc, size_t n, nb_appcat_t *cat, char *err, size_t errsz)
{
    json_t *root = NULL, *apps, *e;
    size_t i;
    char perr[200];
    memset(cat, 0, sizeof *cat);
    if (n > NB_APPCAT_MAX_BYTES) {
        nb_err_say(err, errsz, "the catalogue is larger than %u bytes", NB_APPCAT_MAX_BYTES);
        return NB_ETOOBIG;
    }
    if (nb_json_parse(nb_iov(doc, n), &root, perr, sizeof perr) < 0 || !json_is_object(root)) {
        nb_err_say(err, errsz, "the catalogue is not a JSON object%s%s", root ? "" : ": ",
                   root ? "" : perr);
        json_decref(root);
        return NB_EPARSE;
    }
    const char *version = nb_json_str(root, "version");
    apps = json_object_get(root, "apps");
    if (nb_json_int(root, "format", 0) != 1 || !version || !printable(version, 63) ||
        !json_is_array(apps)) {
        nb_err_say(err, errsz,
                   "the catalogue is not format 1 ({\"format\": 1, \"version\", "
                   "\"apps\": [...]}); a newer nilbox may read it");
        json_decref(root);
        return NB_EPARSE;
    }
    if (json_array_size(apps) > NB_APPCAT_MAX_APPS) {
        nb_err_say(err, errsz, "the catalogue has more than %d apps", NB_APPCAT_MAX_APPS);
        json_decref(root);
        return NB_ETOOBIG;
    }
    snprintf(cat->version, sizeof cat->version, "%s", version);
    cat->apps = json_array();
    cat->refused = json_array();
    json_array_foreach (apps, i, e) {
        const char *why = check_entry(e);
        const char *id = json_is_object(e) ? nb_json_str(e, "id") : NULL;
        if (!why && nb_appcat_find(cat, id))
            why = "the same id appears twice";
        if (why) {
            char idbuf[NB_APPCAT_ID_MAX];
            snprintf(idbuf, sizeof idbuf, "%s", nb_appcat_valid_id(id) ? id : "?");
            json_array_append_new(cat->refused, json_pack("{s:s, s:I, s:s}", "id", idbuf, "index",
                                                          (json_int_t)i, "reason", why));
            continue;
        }
        json_array_append(cat->apps, e);
    }
    json_decref(root);
    return 0;
}

int nb_appcat_load(const uint8_t *doc, size_t n, const uint8_t *sig, size_t sign,
                   const uint8_t (*keys)[32], size_t nkeys, nb_appcat_t *cat, char *err,
                   size_t errsz)
{
    memset(cat, 0, sizeof *cat);
    if (nb_appcat_verify(doc, n, sig, sign, keys, nkeys) < 0) {
        nb_err_say(err, errsz, "its signature does not verify against any trusted store key");
        return NB_ECRYPTO;
    }
    return nb_appcat_parse(doc, n, cat, err, errsz);
}

const json_t *nb_appcat_find(const nb_appcat_t *cat, const char *id)
{
    json_t *e;
    size_t i;
    if (!id || !cat->apps)
        return NULL;
    json_array_foreach (cat->apps, i, e)
        if (!strcmp(nb_json_str(e, "id"), id))
            return e;
    return NULL;
}

/* ---------------------------------------------------------------- files */

/* Reads at most `max` bytes of `path` into a new buffer. 0, -errno, or
 * NB_ETOOBIG. */
static int read_file(const char *path, size_t max, uint8_t **out, size_t *outn)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return NB_ETOOBIG;
    }
    uint8_t *b = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (b && got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!b || got != (size_t)st.st_size) {
        free(b);
        return b ? -EIO : -ENOMEM;
    }
    *out = b;
    *outn = got;
    return 0;
}

size_t nb_appcat_trusted_keys(const char *home, uint8_t (*keys)[32], size_t max)
{
    size_t n = 0, got;
    char path[4096];
    if (max == 0)
        return 0;
    if (sodium_hex2bin(keys[0], 32, NB_APPCAT_BUILTIN_KEY, 64, NULL, &got, NULL) == 0 && got == 32)
        n = 1;
    uint8_t *text = NULL;
    size_t len = 0;
    if (snprintf(path, sizeof path, "%s/store/trusted.keys", home) >= (int)sizeof path ||
        read_file(path, 64 * 1024, &text, &len) < 0)
        return n;
    text[len] = '\0';
    for (char *line = (char *)text, *next; line && *line && n < max; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line += strspn(line, " \t\r");
        size_t l = strcspn(line, " \t\r#");
        if (l == 64 && sodium_hex2bin(keys[n], 32, line, 64, NULL, &got, NULL) == 0 && got == 32)
            n++;
    }
    free(text);
    return n;
}

int nb_appcat_load_home(const char *home, nb_appcat_t *cat, char *err, size_t errsz)
{
    uint8_t keys[NB_APPCAT_MAX_KEYS][32];
    size_t nk = nb_appcat_trusted_keys(home, keys, NB_APPCAT_MAX_KEYS);
    char path[4096], spath[4200];
    uint8_t *doc = NULL, *sig = NULL;
    size_t n = 0, sn = 0;
    memset(cat, 0, sizeof *cat);
    if (snprintf(path, sizeof path, "%s/store/catalogue.json", home) >= (int)sizeof path) {
        nb_err_say(err, errsz, "the nilbox home path is too long");
        return NB_ETOOBIG;
    }
    snprintf(spath, sizeof spath, "%s.sig", path);
    int r = read_file(path, NB_APPCAT_MAX_BYTES, &doc, &n);
    if (r == -ENOENT) {
        r = nb_appcat_load(nb_appcat_builtin_doc, nb_appcat_builtin_doc_len, nb_appcat_builtin_sig,
                           nb_appcat_builtin_sig_len, (const uint8_t(*)[32])keys, nk, cat, err,
                           errsz);
        snprintf(cat->source, sizeof cat->source, "built-in");
        return r;
    }
    if (r < 0) {
        nb_err_say(err, errsz, "cannot read %s: %s", path,
                   r == NB_ETOOBIG ? "larger than 4 MiB" : strerror(-r));
        return r;
    }
    r = read_file(spath, 1024, &sig, &sn);
    if (r < 0) {
        nb_err_say(err, errsz,
                   "%s has no readable signature %s: an unsigned catalogue is refused (sign it "
                   "with scripts/sign-catalogue.sh, or remove it to use the built-in one)",
                   path, spath);
        free(doc);
        return NB_ECRYPTO;
    }
    char why[256];
    r = nb_appcat_load(doc, n, sig, sn, (const uint8_t(*)[32])keys, nk, cat, why, sizeof why);
    if (r < 0)
        nb_err_say(err, errsz,
                   "catalogue %s refused: %s (trust its signer's key in %s/store/trusted.keys, "
                   "or remove the file to use the built-in catalogue)",
                   path, why, home);
    else
        snprintf(cat->source, sizeof cat->source, "home");
    free(doc);
    free(sig);
    return r;
}
