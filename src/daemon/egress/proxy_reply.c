/* Replies the proxy writes itself: denials (403), refusals (400, 405,
 * 431) and upstream failures (502, 504), always as JSON with the reason in
 * X-Nilbox-Reason, so that an agent can tell the user what happened.
 *
 * Tools print different parts of an error response, most of them not the
 * body: Python requests/pip and Node fetch the status line's reason phrase
 * ("403 Client Error: <reason> for url", res.statusText), npm
 * "<status> <reason> - <METHOD> <url> - <body.error>", SDKs the body's
 * `error` / `message`, git (smart HTTP) a text/plain body as "remote:"
 * lines. So the human sentence - what happened and, where there is one,
 * the exact command that would allow it - goes into each: the reason
 * phrase (printable ASCII, bounded), `error` and `message`, and for git a
 * text/plain body. The stable machine token stays in X-Nilbox-Reason and
 * the JSON `code` (the former `error` token). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "daemon/egress/proxy_int.h"
#include "lib/log.h"

#define REASON_PHRASE_MAX 300 /* bytes of the status line's reason phrase */

/* What a gate token means, for people. NULL for tokens that are not gate
 * verdicts. */
static const char *why_text(const char *why)
{
    static const struct {
        const char *tok, *text;
    } t[] = {
        {"no-rule", "no rule allows it"},
        {"prompt-timeout", "nobody answered the prompt in time"},
        {"deny-once", "the user denied it"},
        {"deny-always", "a deny rule covers it"},
        {"deny-rule", "a deny rule covers it"},
        {"blocklist", "it is on the blocklist"},
        {"too-many-prompts", "too many destinations are waiting for an answer"},
        {"shutdown", "the daemon is stopping"},
        {"internal-error", "the proxy failed internally"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(why, t[i].tok) == 0)
            return t[i].text;
    return NULL;
}

/* 1 when `s` can be printed inside a command line as is (names and
 * addresses are normalised already; anything else gets no command). */
static int cmd_safe(const char *s)
{
    if (!s || !s[0])
        return 0;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_' || ch == ':'))
            return 0;
    }
    return 1;
}

/* The command that would allow this destination, or "" when there is
 * none (blocklist, refusals of the request itself, upstream failures).
 * Returns how the sentence introduces it. */
static const char *allow_cmd(const cconn_t *c, const char *error, const char *why, const char *host,
                             int port, char *out, size_t outsz)
{
    const char *vm = c->l->vm;
    out[0] = '\0';
    if (!cmd_safe(vm) || port <= 0)
        return "";
    if (strcmp(why, "internal-address") == 0) {
        /* The narrow rule: this one address on the port connected to
         * (the destination's, unless a test-mode override moved it). */
        if (cmd_safe(c->reply_addr))
            snprintf(out, outsz, "nilbox rule add allow %s --port %d --vm %s", c->reply_addr,
                     c->reply_port ? c->reply_port : port, vm);
        return "to allow it";
    }
    if (strcmp(error, "denied") != 0 || !why_text(why) || !cmd_safe(host))
        return "";
    int deny_rule = strcmp(why, "deny-rule") == 0 || strcmp(why, "deny-always") == 0;
    if (deny_rule && c->reply_rule > 0) {
        snprintf(out, outsz, "nilbox rule rm %lld", (long long)c->reply_rule); /* it, exactly */
        return "to lift the deny rule";
    }
    if (deny_rule) {
        snprintf(out, outsz, "nilbox rule ls, then nilbox rule rm ID of the deny rule for %s",
                 host);
        return "to lift the deny rule";
    }
    if (strcmp(why, "blocklist") != 0 && strcmp(why, "shutdown") != 0)
        snprintf(out, outsz, "nilbox rule add allow %s --port %d --vm %s", host, port, vm);
    return "to allow it";
}

/* Status line text: printable ASCII only (no CR/LF, no control bytes, no
 * bytes >= 0x80), at most REASON_PHRASE_MAX bytes. */
static void phrase(char *out, size_t outsz, const char *s)
{
    size_t n = 0, cap = outsz - 1 < REASON_PHRASE_MAX ? outsz - 1 : REASON_PHRASE_MAX;
    for (; *s && n < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        out[n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    out[n] = '\0';
}

void nb_px_reply(cconn_t *c, int status, const char *error, const char *why, const char *host,
                 const char *reason, const char *hint, int close)
{
    if (c->state == CS_CLOSING)
        return;
    if (c->x.resp_head_sent) {
        /* Too late for a reply: the client already has a response head. */
        nb_px_conn_close(c);
        return;
    }
    host = host ? host : "";
    hint = hint ? hint : "";
    int port = c->x.auth.host[0] ? c->x.auth.port : c->tunnel ? c->auth.port : 0;
    char hostesc[NB_HOSTNAME_BUFSZ + 16], dest[NB_HOSTNAME_BUFSZ + 32];
    nb_log_escape(hostesc, sizeof hostesc, host, strlen(host));
    if (port > 0 && hostesc[0])
        snprintf(dest, sizeof dest, strchr(hostesc, ':') ? "[%s]:%d" : "%s:%d", hostesc, port);
    else
        snprintf(dest, sizeof dest, "%s", hostesc[0] ? hostesc : "the destination");
    char cmd[NB_HOSTNAME_BUFSZ + NB_RULES_VM_MAX + 96];
    const char *intro = allow_cmd(c, error, why, host, port, cmd, sizeof cmd);
    const char *wt = why_text(why);
    char sentence[1024];
    int sn;
    if (strcmp(error, "denied") == 0)
        sn = snprintf(sentence, sizeof sentence, "nilbox denied %s: %s", dest, wt ? wt : reason);
    else if (status == 502 || status == 504)
        sn = snprintf(sentence, sizeof sentence, "nilbox could not reach %s: %s", dest, reason);
    else
        sn = snprintf(sentence, sizeof sentence, "nilbox refused the request to %s: %s", dest,
                      reason);
    if (sn > 0 && (size_t)sn < sizeof sentence) {
        if (cmd[0])
            snprintf(sentence + sn, sizeof sentence - (size_t)sn, "; %s: %s", intro, cmd);
        else if (hint[0])
            snprintf(sentence + sn, sizeof sentence - (size_t)sn, "; %s", hint);
    }
    char *body = NULL;
    const char *ctype = "application/json";
    if (c->x.git_client) {
        /* git prints a text/plain error body line by line as "remote: ". */
        size_t cap = strlen(sentence) + strlen(why) + 32;
        if ((body = malloc(cap)))
            snprintf(body, cap, "%s\nnilbox reason: %s", sentence, why);
        ctype = "text/plain; charset=utf-8";
    } else {
        json_t *j =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "error", sentence, "message", sentence,
                      "code", error, "host", host, "reason", reason, "hint", hint);
        if (j && cmd[0])
            json_object_set_new(j, "allow", json_string(cmd));
        body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
    }
    if (!body) {
        nb_px_conn_close(c);
        return;
    }
    size_t blen = strlen(body);
    char head[1024], rp[REASON_PHRASE_MAX + 1];
    /* npm prints "<status> <phrase> - <METHOD> <url> - <body.error>": the
     * sentence once is enough. */
    phrase(rp, sizeof rp, c->x.npm_client ? "" : sentence);
    /* `why` is one of our own tokens; still, never let it break the head. */
    char whyesc[80];
    nb_log_escape(whyesc, sizeof whyesc, why, strlen(why));
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Nilbox-Reason: %s\r\n"
                     "Cache-Control: no-store\r\n"
                     "Connection: %s\r\n\r\n",
                     status, rp[0] ? rp : nb_http_status_text(status), ctype, blen + 1, whyesc,
                     close ? "close" : "keep-alive");
    if (n < 0 || (size_t)n >= sizeof head) {
        free(body);
        nb_px_conn_close(c);
        return;
    }
    uv_buf_t bufs[3] = {uv_buf_init(head, (unsigned)n), uv_buf_init(body, (unsigned)blen),
                        uv_buf_init("\n", 1)};
    int r = nb_pxio_writev(&c->io, bufs, 3);
    free(body);
    c->x.resp_head_sent = 1;
    c->x.resp_done = 1;
    if (r < 0 || close)
        nb_px_conn_linger(c);
}

const char *nb_px_why_hint(int why)
{
    switch (why) {
    case NB_GATE_WHY_DENY_RULE:
    case NB_GATE_WHY_DENY_ALWAYS:
        return "a deny rule covers this destination; the user can remove it with 'nilbox rule rm'";
    case NB_GATE_WHY_BLOCKLIST:
        return "the destination is on the blocklist";
    case NB_GATE_WHY_TIMEOUT:
        return "nobody answered the prompt in time; ask the user to run 'nilbox prompts' and retry";
    case NB_GATE_WHY_DENY_ONCE:
        return "the user denied this connection; retrying asks again";
    case NB_GATE_WHY_OVERLOAD:
        return "too many destinations are waiting for an answer; retry later";
    case NB_GATE_WHY_NO_PROMPT:
        return "no rule allows this destination; ask the user to add one with 'nilbox rule add'";
    default:
        return "ask the user to allow this destination ('nilbox prompts' or 'nilbox rule add')";
    }
}
