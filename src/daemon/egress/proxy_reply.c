/* Replies the proxy writes itself: denials (403), refusals (400, 405,
 * 431) and upstream failures (502, 504), always as JSON with the reason in
 * X-Nilbox-Reason, so that an agent can tell the user what happened. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "daemon/egress/proxy_int.h"
#include "lib/log.h"

void px_reply(cconn_t *c, int status, const char *error, const char *why, const char *host,
              const char *reason, const char *hint, int close)
{
    if (c->state == CS_CLOSING)
        return;
    if (c->x.resp_head_sent) {
        /* Too late for a reply: the client already has a response head. */
        px_conn_close(c);
        return;
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "error", error, "host", host ? host : "",
                          "reason", reason, "hint", hint ? hint : "");
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) {
        px_conn_close(c);
        return;
    }
    size_t blen = strlen(body);
    char head[512];
    /* `why` is one of our own tokens; still, never let it break the head. */
    char whyesc[80];
    nb_log_escape(whyesc, sizeof whyesc, why, strlen(why));
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Nilbox-Reason: %s\r\n"
                     "Cache-Control: no-store\r\n"
                     "Connection: %s\r\n\r\n",
                     status, nb_http_status_text(status), blen + 1, whyesc,
                     close ? "close" : "keep-alive");
    uv_buf_t bufs[3] = {uv_buf_init(head, (unsigned)n), uv_buf_init(body, (unsigned)blen),
                        uv_buf_init("\n", 1)};
    int r = nb_pxio_writev(&c->io, bufs, 3, 0);
    free(body);
    c->x.resp_head_sent = 1;
    c->x.resp_done = 1;
    if (r < 0 || close)
        px_conn_linger(c);
}
