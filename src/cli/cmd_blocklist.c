/* nilbox blocklist build [--out FILE] INPUT...
 * nilbox blocklist update [--pubkey HEX] FILE|URL
 * nilbox blocklist check NAME
 * nilbox blocklist status
 * nilbox blocklist key
 * See docs/cli.md and docs/internals/blocklist.md. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/blocklist.h"
#include "lib/hostname.h"
#include "lib/err.h"
#include "lib/json.h"
#include "lib/log.h"

#define LINE_MAX_BYTES 4096

typedef struct {
    nb_bl_builder_t *b;
    unsigned long added, invalid;
    int err;
} add_ctx_t;

static int on_name(void *ud, const char *name, size_t len)
{
    add_ctx_t *c = ud;
    int r = nb_bl_builder_add(c->b, name, len);
    if (r < 0) {
        c->err = r;
        return r;
    }
    if (r)
        c->added++;
    else
        c->invalid++;
    return 0;
}

/* Reads one input list into the builder; per-kind counts into `o`. */
static int read_input(nb_cli_t *cli, const char *path, add_ctx_t *c, json_t *o)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        fprintf(stderr, "nilbox: cannot open %s: %s\n", path, strerror(errno));
        return NB_CLI_ERROR;
    }
    char line[LINE_MAX_BYTES];
    unsigned long lines = 0, kinds[5] = {0}, toolong = 0;
    unsigned long a0 = c->added, i0 = c->invalid;
    int rc = NB_CLI_OK;
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        lines++;
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            /* Longer than any rule we take: skip the rest of it. */
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
            toolong++;
            continue;
        }
        int k = nb_bl_parse_line(line, len, on_name, c);
        if (k < 0) {
            fprintf(stderr, "nilbox: %s: %s\n", path,
                    k == NB_ETOOBIG ? "too many names (the cap is 40 million)" : nb_strerror(k));
            rc = NB_CLI_ERROR;
            break;
        }
        kinds[k]++;
        if (!cli->json && lines % 500000 == 0 && isatty(STDERR_FILENO))
            fprintf(stderr, "  %s: %lu lines read...\r", path, lines);
    }
    if (ferror(f)) {
        fprintf(stderr, "nilbox: cannot read %s\n", path);
        rc = NB_CLI_ERROR;
    }
    if (f != stdin)
        fclose(f);
    unsigned long added = c->added - a0, invalid = c->invalid - i0;
    json_t *in = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "path", path, "lines", (json_int_t)lines,
        "names", (json_int_t)added, "hosts_lines", (json_int_t)kinds[NB_BL_LINE_HOSTS],
        "plain_lines", (json_int_t)kinds[NB_BL_LINE_PLAIN], "adblock_lines",
        (json_int_t)kinds[NB_BL_LINE_ADBLOCK], "comment_lines", (json_int_t)kinds[NB_BL_LINE_EMPTY],
        "skipped_lines", (json_int_t)(kinds[NB_BL_LINE_SKIPPED] + toolong), "invalid_names",
        (json_int_t)invalid);
    json_array_append_new(json_object_get(o, "inputs"), in);
    if (!cli->json)
        fprintf(stderr,
                "%s: %lu lines: %lu names (hosts %lu, plain %lu, adblock %lu lines), %lu "
                "comments, %lu lines skipped (not a plain domain rule), %lu invalid or "
                "single-label names\n",
                path, lines, added, kinds[NB_BL_LINE_HOSTS], kinds[NB_BL_LINE_PLAIN],
                kinds[NB_BL_LINE_ADBLOCK], kinds[NB_BL_LINE_EMPTY],
                kinds[NB_BL_LINE_SKIPPED] + toolong, invalid);
    return rc;
}

static int write_file(const char *path, const uint8_t *img, size_t len)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, img + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    int r = off == len && fsync(fd) == 0 ? 0 : -EIO;
    close(fd);
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

static int do_build(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *out = nb_cli_opt(v, a, "out");
    if (!out)
        out = "blocklist.nbbl";
    uint8_t sk[64], pk[32];
    int created = 0;
    char err[512];
    if (nb_bl_key_load_or_create(cli->home.home, sk, pk, &created, err, sizeof err) < 0) {
        fprintf(stderr, "nilbox: %s\n", err);
        return NB_CLI_ERROR;
    }
    char hex[65];
    nb_bl_hex(pk, 32, hex);
    if (created && !cli->json)
        fprintf(stderr, "created the blocklist signing key %s/%s/%s (public key %s)\n",
                cli->home.home, NB_BL_DIR, NB_BL_SIGNING_KEY, hex);
    add_ctx_t c = {0};
    if (nb_bl_builder_new(&c.b) < 0) {
        sodium_memzero(sk, sizeof sk);
        return NB_CLI_ERROR;
    }
    json_t *o = json_pack("{s:[]}", "inputs");
    double t0 = nb_cli_now_s();
    int rc = NB_CLI_OK;
    for (int i = 0; i < a->npos && rc == NB_CLI_OK; i++)
        rc = read_input(cli, a->pos[i], &c, o);
    uint8_t *img = NULL;
    size_t len = 0;
    double t1 = nb_cli_now_s();
    if (rc == NB_CLI_OK) {
        int r = nb_bl_builder_finish(c.b, sk, (uint64_t)time(NULL), &img, &len, err, sizeof err);
        if (r < 0) {
            fprintf(stderr, "nilbox: cannot build the filter: %s\n", err[0] ? err : nb_strerror(r));
            rc = NB_CLI_ERROR;
        }
    }
    sodium_memzero(sk, sizeof sk);
    nb_bl_builder_free(c.b);
    double t2 = nb_cli_now_s();
    if (rc == NB_CLI_OK) {
        int r = write_file(out, img, len);
        if (r < 0) {
            fprintf(stderr, "nilbox: cannot write %s: %s\n", out, strerror(-r));
            rc = NB_CLI_ERROR;
        }
    }
    if (rc == NB_CLI_OK) {
        nb_bl_hdr_t h;
        nb_bl_parse(img, len, &h, NULL, 0);
        json_object_set_new(o, "out", json_string(out));
        json_object_set_new(o, "names", json_integer((json_int_t)c.added));
        json_object_set_new(o, "distinct", json_integer(h.count));
        json_object_set_new(o, "size", json_integer((json_int_t)len));
        json_object_set_new(o, "bits_per_name", json_real(h.count ? len * 8.0 / h.count : 0));
        json_object_set_new(o, "fp_rate", json_real(1.0 / 256));
        json_object_set_new(o, "signer", json_string(hex));
        json_object_set_new(o, "read_s", json_real(t1 - t0));
        json_object_set_new(o, "build_s", json_real(t2 - t1));
        if (cli->json) {
            char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
            if (s)
                printf("%s\n", s);
            free(s);
        } else {
            printf("wrote %s: %u distinct names, %zu bytes (%.2f bits a name), false positives "
                   "about 0.39 %% a probe; read %.2f s, built and signed %.2f s\n",
                   out, h.count, len, h.count ? len * 8.0 / h.count : 0.0, t1 - t0, t2 - t1);
            printf("install it with: nilbox blocklist update %s\n", out);
        }
    }
    free(img);
    json_decref(o);
    return rc;
}

static int is_url(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

/* Fetches `url` with curl (no shell; bounded size and time) into `dst`. */
static int fetch(const char *url, const char *dst)
{
    pid_t pid = fork();
    if (pid < 0)
        return NB_CLI_ERROR;
    if (pid == 0) {
        char *argv[] = {"curl",     "-fsSL",      "--proto", "=http,https", "--max-filesize",
                        "67108864", "--max-time", "300",     "-o",          (char *)dst,
                        "--",       (char *)url,  NULL};
        execvp("curl", argv);
        fprintf(stderr, "nilbox: cannot run curl: %s\n", strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "nilbox: downloading %s failed (curl exit %d)\n", url,
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return NB_CLI_ERROR;
    }
    return NB_CLI_OK;
}

static int do_update(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *src = a->pos[0], *pub = nb_cli_opt(v, a, "pubkey");
    char path[PATH_MAX], tmp[PATH_MAX] = "", err[512];
    int rc = NB_CLI_ERROR;
    if (is_url(src)) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%s", cli->home.home, NB_BL_DIR);
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            fprintf(stderr, "nilbox: cannot create %s: %s\n", dir, strerror(errno));
            return NB_CLI_ERROR;
        }
        if (snprintf(tmp, sizeof tmp, "%s/download.%ld.tmp", dir, (long)getpid()) >=
            (int)sizeof tmp) {
            tmp[0] = 0;
            fprintf(stderr, "nilbox: the nilbox home path is too long\n");
            return NB_CLI_ERROR;
        }
        if (fetch(src, tmp) != NB_CLI_OK)
            goto out;
        snprintf(path, sizeof path, "%s", tmp);
    } else if (!realpath(src, path)) {
        fprintf(stderr, "nilbox: cannot find %s: %s\n", src, strerror(errno));
        return NB_CLI_ERROR;
    }
    if (pub) {
        /* Trust a third party's key, but only once a file it signed is in
         * hand and verifies: a typo never lands in trusted.keys. */
        uint8_t pk[32];
        if (nb_bl_unhex(pub, strlen(pub), pk, 32) < 0) {
            fprintf(stderr, "nilbox: --pubkey wants 64 hex digits (an ed25519 public key)\n");
            rc = NB_CLI_USAGE;
            goto out;
        }
        nb_bl_t *b = NULL;
        if (nb_bl_load_file(path, &pk, 1, &b, err, sizeof err) < 0) {
            fprintf(stderr, "nilbox: %s is not a valid blocklist signed by that key: %s\n", src,
                    err);
            goto out;
        }
        nb_bl_free(b);
        if (nb_bl_trust_key(cli->home.home, pk, err, sizeof err) < 0) {
            fprintf(stderr, "nilbox: %s\n", err);
            goto out;
        }
        if (!cli->json)
            fprintf(stderr, "trusting blocklist key %s\n", pub);
    }
    int started = 0;
    if (nb_cli_ensure_daemon(cli, 30, cli->json, &started) != NB_CLI_OK)
        goto out;
    json_t *body = json_pack("{s:s}", "path", path), *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", "/v1/blocklist/load", body, &res, &code)) {
        rc = code;
        goto out;
    }
    printf("blocklist installed: %lld names, created %s, signed by %.16s...\n",
           (long long)nb_json_int(res, "count", 0), nb_json_str(res, "created"),
           nb_json_str(res, "signer"));
    json_decref(res);
    rc = NB_CLI_OK;
out:
    if (tmp[0])
        unlink(tmp);
    return rc;
}

/* check --file: the same answer computed here from a file (verified with
 * the trusted keys), without the daemon: to test a list before installing. */
static json_t *check_file(nb_cli_t *cli, const char *file, const char *raw)
{
    uint8_t keys[NB_BL_MAX_KEYS][32];
    int nk = nb_bl_trusted_keys(cli->home.home, keys, NB_BL_MAX_KEYS);
    char err[512], name[NB_HOSTNAME_BUFSZ];
    int n = nb_hostname_normalize(raw, strlen(raw), name, sizeof name);
    if (n < 0) {
        fprintf(stderr, "nilbox: not a valid host name (letters, digits, hyphens and dots; IP "
                        "addresses are never listed)\n");
        return NULL;
    }
    nb_bl_t *b = NULL;
    if (nb_bl_load_file(file, (const uint8_t(*)[32])keys, (size_t)nk, &b, err, sizeof err) < 0) {
        fprintf(stderr, "nilbox: %s\n", err);
        return NULL;
    }
    size_t m = 0;
    int hit = nb_bl_lookup(b, name, &m);
    nb_bl_free(b);
    json_t *o = json_pack("{s:s, s:b, s:b, s:o}", "name", name, "blocked", hit, "loaded", 1,
                          "allow_rule", json_null());
    json_object_set_new(o, "matched", hit ? json_string(name + m) : json_null());
    return o;
}

static int do_check(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char q[600], path[700];
    json_t *res = NULL;
    const char *file = nb_cli_opt(v, a, "file");
    if (file) {
        if (!(res = check_file(cli, file, a->pos[0])))
            return NB_CLI_ERROR;
        if (cli->json) {
            nb_cli_print_json(res);
            json_decref(res);
            return NB_CLI_OK;
        }
        goto show;
    }
    int started = 0, rc = nb_cli_ensure_daemon(cli, 30, cli->json, &started);
    if (rc != NB_CLI_OK)
        return rc;
    /* Percent-encode everything but unreserved bytes. */
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)a->pos[0]; *p && o + 4 < sizeof q; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '.' || *p == '-' || *p == '_')
            q[o++] = (char)*p;
        else
            o += (size_t)snprintf(q + o, sizeof q - o, "%%%02X", *p);
    }
    q[o] = 0;
    snprintf(path, sizeof path, "/v1/blocklist/check?name=%s", q);
    int code;
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
show:;
    const char *name = nb_json_str(res, "name"), *m = nb_json_str(res, "matched");
    char e1[600], e2[600];
    nb_log_escape(e1, sizeof e1, name ? name : "", name ? strlen(name) : 0);
    if (!nb_json_bool(res, "loaded", 0))
        printf("not blocked: %s (no blocklist is loaded)\n", e1);
    else if (!nb_json_bool(res, "blocked", 0))
        printf("not blocked: %s\n", e1);
    else {
        nb_log_escape(e2, sizeof e2, m ? m : "", m ? strlen(m) : 0);
        json_int_t rid = nb_json_int(res, "allow_rule", 0);
        if (strcmp(e1, e2) == 0)
            printf("blocked: %s is listed", e1);
        else
            printf("blocked: %s (its parent %s is listed)", e1, e2);
        if (rid)
            printf(", but allow rule %lld names it exactly and lets it through", (long long)rid);
        printf("\n");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_status(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "GET", "/v1/blocklist", NULL, &res, &code))
        return code;
    if (nb_json_bool(res, "loaded", 0))
        printf("blocklist loaded: %lld names, %lld bytes, created %s, signed by %.16s...\n"
               "  from %s, loaded %s; %lld lookups, %lld blocked\n",
               (long long)nb_json_int(res, "count", 0), (long long)nb_json_int(res, "size", 0),
               nb_json_str(res, "created"), nb_json_str(res, "signer"), nb_json_str(res, "source"),
               nb_json_str(res, "loaded_at"), (long long)nb_json_int(res, "lookups", 0),
               (long long)nb_json_int(res, "blocked", 0));
    else
        printf("no blocklist loaded (build one with 'nilbox blocklist build', install it with "
               "'nilbox blocklist update')\n");
    json_t *le = json_object_get(res, "last_error");
    if (json_is_object(le)) {
        const char *m = nb_json_str(le, "message");
        char e[600];
        printf("last refused file (%s): %s\n", nb_json_str(le, "at"),
               nb_log_escape(e, sizeof e, m ? m : "", m ? strlen(m) : 0));
    }
    printf("trusted keys: %zu\n", json_array_size(json_object_get(res, "trusted_keys")));
    json_decref(res);
    return NB_CLI_OK;
}

static int do_key(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    uint8_t sk[64], pk[32];
    int created = 0;
    char err[512], hex[65];
    int r = nb_bl_key_load_or_create(cli->home.home, sk, pk, &created, err, sizeof err);
    sodium_memzero(sk, sizeof sk);
    if (r < 0) {
        fprintf(stderr, "nilbox: %s\n", err);
        return NB_CLI_ERROR;
    }
    nb_bl_hex(pk, 32, hex);
    if (cli->json)
        printf("{\"public_key\": \"%s\", \"created\": %s}\n", hex, created ? "true" : "false");
    else
        printf("%s\n", hex);
    return NB_CLI_OK;
}

static const nb_cli_opt_t build_opts[] = {
    {"out", 'o', "FILE", "where to write the signed filter (default: blocklist.nbbl)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t update_opts[] = {
    {"pubkey", 0, "HEX", "trust this signer's ed25519 public key (added to trusted.keys)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_opt_t check_opts[] = {
    {"file", 'f', "FILE", "look it up in this blocklist file instead of the daemon's"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"build", "compile domain lists into a signed blocklist file", "INPUT...",
     "Reads hosts files (0.0.0.0 evil.com), plain domain lists (one name a line) and AdBlock\n"
     "lists (only plain ||domain^ rules; options, paths, exceptions and cosmetic rules are\n"
     "skipped), '-' for stdin. Listing a name blocks it and all its subdomains. Signs with\n"
     "the key in $NILBOX_HOME/blocklist/signing.key (made on first use).\n\n"
     "  nilbox blocklist build --out ads.nbbl hosts.txt easylist.txt",
     1, 64, build_opts, do_build, 0},
    {"update", "install a blocklist file (or download one) into the daemon", "FILE|URL",
     "Hands the file to nilboxd, which verifies its signature against the trusted keys\n"
     "(your own signing key and $NILBOX_HOME/blocklist/trusted.keys), installs it as\n"
     "blocklist/active.nbbl and enforces it at once. A tampered or unsigned file is refused\n"
     "and the loaded blocklist stays. A URL is fetched with curl. --pubkey trusts a third\n"
     "party's signing key once the file verifies with it.",
     1, 1, update_opts, do_update, 0},
    {"check", "is a name blocked, and by which listed parent", "NAME",
     "Asks nilboxd about its loaded blocklist, or with --file looks the name up in a built\n"
     "file (verified with the trusted keys) without the daemon.",
     1, 1, check_opts, do_check, 0},
    {"status", "the loaded blocklist, counters, the last refused file", NULL, NULL, 0, 0, NULL,
     do_status, NB_CLI_NEEDS_DAEMON},
    {"key", "print your blocklist signing public key (to share)", NULL, NULL, 0, 0, NULL, do_key,
     0},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_blocklist = {
    "blocklist", "the signed DNS blocklist (blocked names get NXDOMAIN and 403)", verbs, NULL};
