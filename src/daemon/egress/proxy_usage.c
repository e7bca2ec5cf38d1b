/* Token accounting and spending limits on inspected exchanges (the glue
 * between proxy_http.c and usage.c / usagex.c; docs/internals/usage.md).
 *
 * A request to an LLM endpoint of the catalogue is held until its body is
 * complete (capped), so its model and output cap are known before any byte
 * goes upstream; its worst case is reserved against every limit it falls
 * under (or it gets a 429); the response is metered as it passes, and the
 * reservation is settled when the response ends or the exchange dies. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/egress/proxy_int.h"
#include "daemon/egress/usage.h"
#include "daemon/egress/usagex.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "lib/log.h"

#define BODY_CAP (16 * 1024 * 1024) /* a metered request body is held whole up to this */
#define STRIP_EVENT_CAP (256 * 1024)

struct px_usage {
    nb_llm_match_t m;
    char model[NB_LLM_MODEL_MAX];
    int64_t max_out;
    unsigned prepared : 1, strip : 1, strip_active : 1, stripped : 1;
    nb_usage_req_t *req;
    nb_umeter_t *meter;
    char warn[160];
    char rid[64];
    int status;
    /* The SSE strip filter: the event being read, held until its end. */
    nb_buf_t ev;
    size_t linelen;
};

static nb_usage_t *ledger(const cconn_t *c)
{
    return c->px->cfg.usage;
}

void nb_px_usage_head(cconn_t *c)
{
    exch_t *x = &c->x;
    nb_usage_t *u = ledger(c);
    if (!u || x->upgrade || !x->req_has_body)
        return;
    nb_llm_match_t m;
    if (!nb_llmcat_match(nb_usage_catalogue(u), x->auth.host, x->method, x->origin, &m))
        return;
    struct px_usage *us = calloc(1, sizeof *us);
    if (!us)
        return; /* not metered: the reservation step refuses it (below) */
    us->m = m;
    nb_buf_init(&us->ev, STRIP_EVENT_CAP);
    x->us = us;
    x->pending.max = BODY_CAP;
    /* The body is held until complete: a client waiting for 100-continue
     * gets it from us. */
    if (x->head.expect_continue && x->head.version_minor >= 1)
        nb_pxio_write(&c->io, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

int nb_px_usage_hold(const cconn_t *c)
{
    return c->x.us && !c->x.req_done;
}

/* Reads model, output cap and streaming from the held body (the bounded
 * scan, or jansson when the scan cannot stand for a parse); asks an
 * OpenAI stream for its usage chunk when the client did not. */
static int prepare(cconn_t *c, struct px_usage *us)
{
    exch_t *x = &c->x;
    nb_usage_body_t b;
    nb_str_copy(us->model, sizeof us->model, us->m.path_model);
    if (!nb_usage_body_scan(us->m.api, x->pending.p, x->pending.len, &b))
        nb_usage_body_parse(us->m.api, x->pending.p, x->pending.len, &b);
    if (!us->model[0])
        nb_str_copy(us->model, sizeof us->model, b.model);
    us->max_out = b.max_out;
    if (!(b.stream && us->m.include_usage && !b.include_usage))
        return 0;
    if (b.has_options) {
        /* Merged into the client's stream_options: re-serialised. */
        json_t *j = json_loadb((const char *)x->pending.p, x->pending.len, 0, NULL);
        json_t *so = json_object_get(j, "stream_options");
        if (!json_is_object(so)) {
            so = json_object();
            json_object_set_new(j, "stream_options", so);
        }
        json_object_set_new(so, "include_usage", json_true());
        char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
        json_decref(j);
        int r = 0;
        nb_buf_reset(&x->pending);
        if (!s || nb_buf_append(&x->pending, s, strlen(s)) < 0)
            r = -ENOMEM;
        free(s);
        if (r < 0)
            return r;
    } else {
        /* No stream_options: one member appended to the object, the
         * client's bytes otherwise as they were. */
        static const char add[] = ",\"stream_options\":{\"include_usage\":true}}";
        size_t end = x->pending.len;
        while (end && x->pending.p[end - 1] != '}')
            end--; /* an object, then only blanks */
        if (!end)
            return 0;
        nb_buf_truncate(&x->pending, end - 1);
        if (nb_buf_append(&x->pending, add, sizeof add - 1) < 0)
            return -ENOMEM;
    }
    x->head.content_length = (int64_t)x->pending.len;
    x->req_chunked = 0;
    us->strip = 1;
    return 0;
}

int nb_px_usage_prepare(cconn_t *c)
{
    struct px_usage *us = c->x.us;
    if (!us || us->prepared)
        return 0;
    us->prepared = 1;
    return prepare(c, us);
}

/* 429 with what the agent needs to understand and plan around it. */
static void reply_429(cconn_t *c, const nb_usage_denial_t *d)
{
    static const char *const units[] = {"tokens", "USD", "requests"};
    static const char *const windows[] = {"minute", "hour", "day", "month"};
    const nb_usage_limit_t *l = &d->limit;
    char what[160], sentence[400], resets[32];
    time_t s = (time_t)(d->resets_at_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(resets, sizeof resets, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(what, sizeof what, "%g %s per %s%s%s%s", l->amount, units[l->unit], windows[l->window],
             l->scope == NB_LIM_GLOBAL ? " (all VMs)" : " for ",
             l->scope == NB_LIM_VM         ? "VM "
             : l->scope == NB_LIM_PROVIDER ? "provider "
                                           : "",
             l->who);
    if (!(l->scope == NB_LIM_GLOBAL || l->scope == NB_LIM_VM || l->scope == NB_LIM_PROVIDER))
        snprintf(what + strlen(what), sizeof what - strlen(what), " (secret)");
    if (d->rate)
        snprintf(sentence, sizeof sentence,
                 "nilbox rate limit reached: %s; retry after %" PRId64 " s", what,
                 d->retry_after_s);
    else
        snprintf(sentence, sizeof sentence, "nilbox usage limit reached: %s; resets at %s", what,
                 resets);
    const char *hint = d->rate ? "slow down: wait for Retry-After seconds before the next request"
                               : "wait until resets_at, or ask the user to raise the limit "
                                 "('nilbox limit ls', 'nilbox limit set')";
    json_t *lj = json_pack("{s:I, s:s, s:s, s:s, s:s, s:f}", "id", (json_int_t)l->id, "scope",
                           l->scope == NB_LIM_GLOBAL     ? "global"
                           : l->scope == NB_LIM_VM       ? "vm"
                           : l->scope == NB_LIM_PROVIDER ? "provider"
                                                         : "secret",
                           "who", l->who, "window", windows[l->window], "unit",
                           l->unit == NB_LIM_TOKENS ? "tokens"
                           : l->unit == NB_LIM_USD  ? "usd"
                                                    : "requests",
                           "amount", l->amount);
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:O, s:f, s:f, s:s, s:s}", "error", sentence, "code",
                  d->rate ? "rate-limited" : "usage-limit", "message", sentence, "limit", lj,
                  "used", d->used, "reserved", d->reserved, "resets_at", resets, "hint", hint);
    nb_px_record(c, "limit", c->x.auth.host, c->x.auth.port,
                 json_pack("{s:s, s:o, s:f, s:f}", "action", d->rate ? "rate-limited" : "blocked",
                           "limit", lj, "used", d->used, "reserved", d->reserved));
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) {
        nb_px_conn_close(c);
        return;
    }
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nX-Nilbox-Reason: %s\r\nRetry-After: %" PRId64 "\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                     strlen(body) + 1, d->rate ? "rate-limited" : "usage-limit", d->retry_after_s);
    uv_buf_t bufs[3] = {uv_buf_init(head, (unsigned)n), uv_buf_init(body, (unsigned)strlen(body)),
                        uv_buf_init("\n", 1)};
    nb_pxio_writev(&c->io, bufs, 3);
    free(body);
    c->x.resp_head_sent = 1;
    c->x.resp_done = 1;
    nb_px_conn_linger(c);
}

int nb_px_usage_reserve(cconn_t *c)
{
    exch_t *x = &c->x;
    struct px_usage *us = x->us;
    nb_usage_t *u = ledger(c);
    if (!us || us->req)
        return 0; /* not metered, or a retry of a reserved request */
    nb_usage_ask_t a = {.vm = c->l->vm,
                        .m = &us->m,
                        .model = us->model,
                        .in_bytes = (int64_t)x->pending.len,
                        .max_out = us->max_out};
    for (size_t i = 0; i < c->inj.ninjected && a.nsecrets < NB_USAGE_SECRETS; i++)
        a.secrets[a.nsecrets++] = c->inj.injected[i].secret;
    nb_usage_denial_t d;
    json_t *wd = NULL;
    int r = nb_usage_reserve(u, &a, &us->req, &d, us->warn, sizeof us->warn, &wd);
    if (r < 0) {
        nb_inject_out_wipe(&c->inj);
        nb_px_conn_drop_up(c, 1); /* nothing was sent on it */
    }
    if (r == NB_EDENIED) {
        nb_log_conn(NB_LOG_NOTICE, c->id, "%s toward %s refused: %s limit", x->auth.host,
                    us->m.provider, d.rate ? "rate" : "usage");
        reply_429(c, &d);
        return -1;
    }
    if (r < 0) {
        nb_px_reply(c, 503, "unavailable", "out-of-memory", x->auth.host,
                    "the proxy is out of memory", "retry later", 1);
        return -1;
    }
    if (wd)
        nb_px_record(c, "limit", x->auth.host, x->auth.port,
                     json_pack("{s:s, s:o}", "action", "warning", "limit", wd));
    return 0;
}

void nb_px_usage_upstream_headers(const cconn_t *c, nb_inject_header_t *hv, size_t *n, int identity)
{
    /* Compressed LLM responses are fine (the meter decodes its own copy),
     * but only in codings this build decodes: zstd would blind it. */
    if (c->x.us && !identity) {
        hv[*n].name = NB_IOV_STR("Accept-Encoding");
        hv[(*n)++].value = NB_IOV_STR("gzip, deflate");
    }
}

int nb_px_usage_skip_header(const cconn_t *c, nb_http_hdr_kind_t kind)
{
    return c->x.us && kind == NB_HDR_ACCEPT_ENCODING;
}

static nb_iov_t header(const nb_http_head_t *h, const char *name)
{
    const nb_http_header_t *f = nb_http_head_find(h, name);
    return f ? f->value : nb_iov("", 0);
}

int nb_px_usage_resp_head(cconn_t *c, const nb_http_head_t *h)
{
    struct px_usage *us = c->x.us;
    if (!us || !us->req)
        return 0;
    us->status = h->status;
    nb_iov_t cenc = header(h, "content-encoding");
    nb_umeter_free(us->meter);
    us->meter = NULL;
    if (nb_umeter_new(us->m.api, header(h, "content-type"), cenc, &us->meter) == -ENOMEM)
        return -ENOMEM;
    static const char *const ids[] = {"x-request-id", "request-id", "x-amzn-requestid", NULL};
    for (int i = 0; ids[i] && !us->rid[0]; i++) {
        nb_iov_t v = header(h, ids[i]);
        size_t k = 0;
        for (; k < v.len && k < sizeof us->rid - 1; k++)
            us->rid[k] = v.p[k] > 0x20 && v.p[k] < 0x7f ? (char)v.p[k] : '?';
        us->rid[k] = '\0';
    }
    if (us->m.api->hdr_in[0] && nb_http_head_find(h, us->m.api->hdr_in))
        nb_umeter_header(us->meter, NB_UF_INPUT, header(h, us->m.api->hdr_in));
    if (us->m.api->hdr_out[0] && nb_http_head_find(h, us->m.api->hdr_out))
        nb_umeter_header(us->meter, NB_UF_OUTPUT, header(h, us->m.api->hdr_out));
    /* The extra usage chunk is cut out of identity text/event-stream
     * bodies only (a compressed stream is forwarded as it is). */
    us->strip_active =
        us->strip && h->status == 200 && cenc.len == 0 && nb_http_head_find(h, "content-type") &&
        nb_iov_eq_nocase(nb_iov(header(h, "content-type").p, header(h, "content-type").len < 17
                                                                 ? header(h, "content-type").len
                                                                 : 17),
                         "text/event-stream");
    return 0;
}

int nb_px_usage_rewrites(const cconn_t *c)
{
    return c->x.us && c->x.us->strip_active;
}

int nb_px_usage_warn_header(const cconn_t *c, nb_buf_t *b)
{
    const struct px_usage *us = c->x.us;
    if (!us || !us->warn[0])
        return 0;
    return nb_buf_printf(b, "X-Nilbox-Usage-Warning: %s\r\n", us->warn);
}

/* Is this SSE event OpenAI's usage-only chunk ("choices": [] and a usage
 * object)? Only then it is dropped. */
static int is_usage_chunk(const uint8_t *p, size_t len)
{
    static const char pre[] = "data: ";
    while (len && (p[len - 1] == '\n' || p[len - 1] == '\r'))
        len--;
    if (len < sizeof pre - 1 || memcmp(p, pre, sizeof pre - 1) != 0 ||
        memchr(p, '\n', len)) /* one data line, as OpenAI sends */
        return 0;
    json_t *j = json_loadb((const char *)p + 6, len - 6, 0, NULL);
    const json_t *ch = json_object_get(j, "choices");
    int yes = json_is_array(ch) && json_array_size(ch) == 0 &&
              json_is_object(json_object_get(j, "usage"));
    json_decref(j);
    return yes;
}

static int strip_feed(cconn_t *c, struct px_usage *us, const uint8_t *p, size_t len,
                      nb_px_usage_fwd_fn fwd)
{
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\r')
            continue;
        if (p[i] != '\n') {
            us->linelen++;
            continue;
        }
        int end = us->linelen == 0 && (us->ev.len || i > start);
        us->linelen = 0;
        if (!end)
            continue;
        /* An event ends at i: held bytes plus p[start..i]. */
        int r;
        if (us->ev.len) {
            if ((r = nb_buf_append(&us->ev, p + start, i + 1 - start)) < 0)
                return r;
            if (us->stripped || !is_usage_chunk(us->ev.p, us->ev.len)) {
                if ((r = fwd(c, us->ev.p, us->ev.len)) != 0)
                    return r;
            } else {
                us->stripped = 1;
            }
            nb_buf_reset(&us->ev);
        } else if (us->stripped || !is_usage_chunk(p + start, i + 1 - start)) {
            if ((r = fwd(c, p + start, i + 1 - start)) != 0)
                return r;
        } else {
            us->stripped = 1;
        }
        start = i + 1;
    }
    if (start < len && nb_buf_append(&us->ev, p + start, len - start) < 0) {
        /* An event too long to hold: pass everything on from here. */
        int r = fwd(c, us->ev.p, us->ev.len);
        nb_buf_reset(&us->ev);
        us->strip_active = 0;
        return r ? r : fwd(c, p + start, len - start);
    }
    return 0;
}

int nb_px_usage_body(cconn_t *c, const uint8_t *p, size_t len, nb_px_usage_fwd_fn fwd)
{
    struct px_usage *us = c->x.us;
    if (us->meter)
        nb_umeter_feed(us->meter, p, len);
    if (us->strip_active)
        return strip_feed(c, us, p, len, fwd);
    return fwd(c, p, len);
}

/* Settles the reservation with what the meter saw. */
static void settle(cconn_t *c, struct px_usage *us)
{
    if (!us->req)
        return;
    nb_usage_result_t res = {-1, -1, -1, -1, NULL, us->rid, c->x.auth.host, 0, us->status};
    if (us->meter) {
        nb_umeter_finish(us->meter);
        const nb_usage_seen_t *s = nb_umeter_seen(us->meter);
        res.input = s->v[NB_UF_INPUT];
        res.output = s->v[NB_UF_OUTPUT];
        if (res.output >= 0 && s->v[NB_UF_OUTPUT2] > 0)
            res.output += s->v[NB_UF_OUTPUT2];
        res.cached = s->v[NB_UF_CACHED];
        res.cache_write = s->v[NB_UF_CACHE_WRITE];
        res.model = s->model;
        res.out_bytes = (int64_t)s->bytes;
    }
    /* Refused by the provider without usage: nothing was generated. */
    if (us->status >= 400 && res.input < 0 && res.output < 0)
        res.input = res.output = 0;
    nb_usage_settle(ledger(c), us->req, &res);
    us->req = NULL;
}

int nb_px_usage_end(cconn_t *c, nb_px_usage_fwd_fn fwd)
{
    struct px_usage *us = c->x.us;
    if (!us)
        return 0;
    int r = 0;
    if (us->strip_active && us->ev.len) {
        r = fwd(c, us->ev.p, us->ev.len); /* an unterminated last event goes on as it is */
        nb_buf_reset(&us->ev);
    }
    settle(c, us);
    return r;
}

void nb_px_usage_drop(cconn_t *c)
{
    struct px_usage *us = c->x.us;
    if (!us)
        return;
    if (c->px->cfg.usage && !c->px->closing)
        settle(c, us);
    else
        nb_usage_req_free(us->req); /* the ledger may be gone with the daemon */
    us->req = NULL;
    nb_umeter_free(us->meter);
    nb_buf_free(&us->ev);
    free(us);
    c->x.us = NULL;
}
