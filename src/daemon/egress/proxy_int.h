/* Internal structures shared by the proxy's files (proxy.c lists them and
 * their layers). Not a public interface. */
#ifndef NB_PROXY_INT_H
#define NB_PROXY_INT_H

#include <stdint.h>
#include <stdlib.h>

#include "daemon/egress/ca.h"
#include "daemon/egress/gate.h"
#include "daemon/egress/inject.h"
#include "daemon/egress/proxy.h"
#include "daemon/egress/proxy_creds.h"
#include "daemon/egress/proxy_io.h"
#include "daemon/egress/proxy_upstream.h"
#include "daemon/egress/proxy_sigv4.h"
#include "daemon/egress/proxy_url.h"
#include "daemon/egress/decode.h"
#include "daemon/egress/redact.h"
#include "daemon/egress/wsscan.h"
#include "lib/buf.h"
#include "lib/http.h"

#define PX_MAX_HEADERS 128
#define IN_PAUSED_MAX (64 * 1024) /* pipelined client bytes held while an exchange runs */
#define IN_CAP (1024 * 1024)      /* hard cap on held client bytes */
#define PX_INJECT_CAP (128 * 1024)
#define PX_RESP_HEAD_MAX (64 * 1024)
#define PX_TALLY_MAX 8      /* bindings tallied per connection */
#define PX_LEAK_ROWS_MAX 32 /* leak rows per connection before they are only counted */

typedef struct cconn cconn_t;

/* Refusals of one kind on one listener: the first of a burst is an audit
 * row at once, later ones within PX_BURST_MS are only counted and the
 * count goes into the next row (or the listener's last one). */
#define PX_BURST_MS 10000
typedef struct {
    uint64_t last_row; /* uv_now of the last row, 0: none yet */
    uint64_t suppressed;
} nb_px_burst_t;

struct nb_proxy {
    uv_loop_t *loop;
    nb_proxy_cfg_t cfg;
    SSL_CTX *server_ctx;
    nb_pxcreds_t *creds;
    nb_proxy_listener_t *listeners;
    uint64_t next_listener_id;
    unsigned closing : 1;
    void (*done)(void *ud);
    void *done_ud;
    nb_proxy_stats_t st;
    uint64_t gate_watch;        /* nb_gate_watch handle: rule changes walk the connections */
    size_t nconns;              /* client connections of every listener */
    size_t nrefusing;           /* of which being refused (503 lingering) */
    int reserve_fd;             /* a spare descriptor given up on EMFILE (proxy.c accept_short) */
    void (*tunnel)(cconn_t *c); /* nb_px_tunnel_connect: proxy_http.c hands CONNECTs up */
    nb_oauth_set_t *oauth;      /* OAuth bindings (proxy_oauth.c) */
    struct nb_px_oauth_op *oauth_ops; /* token stores in flight (orphaned when the engine goes) */
    void (*http_check_done)(cconn_t *c); /* nb_px_http_check_done: proxy_oauth.c calls it */
    void (*usage_drop)(cconn_t *c);      /* nb_px_usage_drop: a closing connection settles */
};

struct nb_proxy_listener {
    nb_proxy_t *px;
    nb_proxy_listener_t *next, *prev;
    uint64_t id;
    uv_tcp_t srv;
    char vm[NB_RULES_VM_MAX];
    char ip[64];
    int port;
    unsigned test_mode : 1;
    unsigned channel : 1;      /* nb_proxy_attach(): no TCP server, connections are adopted */
    unsigned ip_no_prompt : 1; /* IP destinations without a rule are denied, not prompted (A12) */
    char token[129];           /* client authentication (proxy.h auth_token); "" for none */
    unsigned is_unix : 1;      /* nb_proxy_listen_unix(): psrv, path; peers checked by uid */
    uv_pipe_t psrv;
    char path[108];
    size_t token_len;
    nb_px_burst_t auth_burst, full_burst; /* rate-limited refusal rows */
    nb_proxy_resolve_t resolve[NB_PROXY_MAX_RESOLVE];
    cconn_t *conns;
    size_t nconns;
    size_t nrefusing;  /* connections being refused (proxy.c refuse_full) */
    size_t nunauth;    /* connections with no authenticated request yet */
    nb_px_pool_t pool; /* upstream connections */
    unsigned closing : 1;
    unsigned srv_closed : 1;
};

enum {
    CS_START = 0,  /* expecting CONNECT or an absolute-form request */
    CS_GATE,       /* CONNECT waiting for the gate */
    CS_SNIFF,      /* tunnel established, waiting for the first byte */
    CS_HANDSHAKE,  /* TLS handshake with the client */
    CS_HTTP,       /* inspected HTTP (in a tunnel or plain proxy requests) */
    CS_CONNECTING, /* raw tunnel: upstream being connected */
    CS_PIPE,       /* raw bytes both ways (tunnel, WebSocket) */
    CS_CLOSING,
};

/* One request/response exchange on an inspected connection. */
typedef struct {
    unsigned active : 1;
    unsigned is_connect : 1; /* a CONNECT request (handled by proxy.c once read) */
    unsigned started : 1;    /* gate / upstream work began */
    unsigned retried : 1;    /* re-sent once on a fresh upstream after a stale pooled one */
    unsigned head_ok : 1;    /* request head accepted */
    unsigned req_done : 1;   /* request message fully received */
    unsigned req_sent : 1;   /* request (head + body) fully written upstream */
    unsigned upgrade : 1;    /* WebSocket upgrade requested */
    unsigned absolute : 1;   /* absolute-form request (plain proxy) */
    nb_http_head_t head;     /* borrowed slices stay valid until the next message is fed */
    char method[16];
    nb_iov_t origin;           /* path + query to send upstream */
    nb_pxurl_authority_t auth; /* destination of this request */
    nb_dest_t dest;
    unsigned tls : 1; /* upstream is TLS */
    unsigned gate_waiting : 1;
    unsigned head_sent : 1;   /* upstream head written */
    unsigned req_chunked : 1; /* body re-framed as chunked upstream */
    unsigned req_has_body : 1;
    nb_buf_t pending;            /* body bytes received before the upstream was ready */
    unsigned resp_head_sent : 1; /* final response head written to the client */
    unsigned resp_done : 1;
    unsigned resp_out_chunked : 1;
    unsigned resp_out_close : 1; /* body delimited by closing the client connection */
    unsigned resp_redact : 1;
    nb_decode_t *dec;       /* decoding a compressed body for the redactor (A5) */
    const char *fail_token; /* set by resp_on_head to refuse the response */
    char fail_msg[160];
    int resp_status;
    unsigned resp_keepalive : 1; /* upstream may be reused */
    unsigned client_keepalive : 1;
    unsigned interim : 1; /* a 1xx response was being forwarded */
    int reject_status;    /* set in on_head when the request is refused */
    const char *reject_token;
    char reject_msg[256];
    unsigned
        git_client : 1; /* User-Agent git/...: our replies are text/plain (shown as "remote:") */
    unsigned npm_client : 1; /* User-Agent npm/...: it prints body.error after the reason phrase */
    int ninjected;
    uint64_t t0;
    unsigned oauth : 1;         /* a token exchange of an OAuth binding (c->oa) */
    unsigned oauth_wait : 1;    /* its upstream waits for the whole request body */
    unsigned oauth_storing : 1; /* its tokens are being sealed; the response waits */
    struct px_usage *us;        /* token accounting of an LLM request (proxy_usage.c), or NULL */
} exch_t;

struct cconn {
    nb_proxy_listener_t *l;
    nb_proxy_t *px;
    cconn_t *next, *prev;
    uint64_t id;
    nb_pxio_t io;
    uv_timer_t timer;
    unsigned io_closed : 1, timer_closed : 1;
    uint8_t state;         /* CS_* */
    uint64_t last_active;  /* uv_now */
    uint64_t head_started; /* uv_now when a request head began, 0 when none pending */

    /* CONNECT tunnel destination (tunnel == 1) */
    unsigned tunnel : 1;
    unsigned
        transparent : 1; /* adopted with a destination: a tunnel without the CONNECT exchange */
    nb_pxurl_authority_t auth;
    nb_dest_t dest;
    unsigned inspect : 1; /* parse HTTP inside */
    unsigned tls : 1;     /* client side is TLS (intercepted) */
    unsigned deny : 1;    /* deny mode: every request gets 403 */
    int deny_why;         /* nb_gate_why_t */
    char deny_reason[64];
    char reply_addr[64]; /* the internal address of a 502 internal-address (nb_px_reply) */
    uint16_t reply_port; /* ... and its port */
    int64_t reply_rule;  /* the deny rule of the last verdict (nb_px_reply names it), or 0 */
    nb_gate_wait_t *wait;
    /* The CONNECT (or transparent connection) was answered before its gate
     * decision: its TLS handshake, first request (inspected ports) or
     * first bytes (raw ports) wait for the verdict; nothing goes upstream
     * and no name is resolved before it. Cleared by the verdict. */
    unsigned held : 1;
    unsigned early : 1; /* the CONNECT was answered before its verdict (stays set) */
    unsigned rule_http : 1;
    /* Policy follow-up: the gate generation the destination was last
     * judged at, and why it was admitted (an allow-once answer holds for
     * this connection only as long as no rule decides otherwise). */
    uint64_t pol_gen;
    int pol_why;

    nb_http_parser_t *rp;
    nb_buf_t in; /* received, not yet fed */
    unsigned parse_paused : 1;
    unsigned feeding : 2; /* nb_px_conn_feed, or an upstream read being parsed */
    unsigned close_after : 1;
    unsigned client_eof : 1;
    unsigned auth_failed : 2; /* 1: no, 2: wrong Proxy-Authorization (proxy.c answers 407) */
    unsigned refusing : 1;    /* refused (503, then close) or made room for: out of the budgets */
    unsigned unauth : 1;      /* counted in l->nunauth: no request passed auth yet */
    uint64_t created;

    exch_t x;
    upconn_t *up;
    nb_inject_out_t inj;
    unsigned inj_ready : 1;
    struct nb_pxsv4 *sv; /* AWS SigV4 re-signing of the current request (proxy_sigv4.h) */
    nb_redact_t *red;
    nb_buf_t scratch;       /* response head building */
    nb_http_header_t *hdrs; /* PX_MAX_HEADERS + extras, for the injector */
    nb_pxcreds_t *creds;    /* snapshot used by the current request */
    unsigned sink_raw : 1;  /* redactor output is the response head (no chunk framing) */
    char clbuf[24];         /* Content-Length value for the upstream head */

    /* pipe mode */
    unsigned pipe_c_eof : 1, pipe_u_eof : 1;
    nb_wsscan_t *ws;      /* WebSocket on a scanned host: server frames redacted (A5) */
    nb_redact_t *red_ctl; /* the WebSocket control frames' redactor */
    uint64_t ws_reported; /* replacements already audited */

    /* Audit volume control: the first injection of each binding toward
     * each destination is a row at once; repeats on the same connection are
     * counted and summed up in one row when it closes. Leak rows are capped
     * per connection the same way. */
    struct {
        int64_t binding_id;
        char secret[NB_SECRETS_NAME_MAX + 1];
        char host[NB_HOSTNAME_BUFSZ];
        uint16_t port;
        int placement;
        uint64_t count;
    } tally[PX_TALLY_MAX];
    size_t ntally;
    unsigned leak_rows;
    uint64_t leaks_unrecorded;
    unsigned summarized : 1;
    struct nb_px_oauth *oa; /* the current token exchange (proxy_oauth.c), or NULL */
};

/* Each file calls only the layers below it (proxy.c lists them). */

/* proxy_conn.c */
void nb_px_record(cconn_t *c, const char *kind, const char *host, int port, json_t *detail);
/* A gate.decision row; a deny verdict's rule is what nb_px_reply names. */
void nb_px_record_gate(cconn_t *c, const char *host, int port, const nb_gate_verdict_t *v,
                       const char *how);
/* Refusal rows rate-limited per listener (nb_px_burst_t); the counts not yet
 * in a row when the listener closes. */
void nb_px_burst_row(nb_proxy_t *px, nb_proxy_listener_t *l, nb_px_burst_t *b, uint64_t conn,
                     const char *reason, const char *threat, const char *msg);
void nb_px_burst_flush(nb_proxy_listener_t *l, nb_px_burst_t *b, const char *reason,
                       const char *threat);
/* nb_gate_check() for a connection's destination: on listeners with
 * ip_no_prompt an IP literal that no rule decides is denied at once. */
int nb_px_gate_check(cconn_t *c, const nb_dest_t *d, nb_gate_verdict_t *v, nb_gate_done_fn done);
/* Records the failure of c's upstream connection `u` (a refusal row) and
 * keeps the refused address for the reply. */
void nb_px_record_up_failure(cconn_t *c, const upconn_t *u, const char *host, int port);
/* Gives c's upstream connection back (to the pool when `reusable`). */
void nb_px_conn_drop_up(cconn_t *c, int reusable);
void nb_px_conn_close(cconn_t *c);
/* Ends the connection once our last reply is written (reads and drops
 * what the client still sends for a moment). */
void nb_px_conn_linger(cconn_t *c);
void nb_px_conn_update_read(cconn_t *c);
void nb_px_conn_summarize(cconn_t *c); /* the audit summary rows of a closing connection */
/* Free a closed listener once empty, the engine once it has none. */
void nb_px_listener_maybe_free(nb_proxy_listener_t *l);
void nb_px_engine_maybe_free(nb_proxy_t *px);

/* proxy_reply.c */
/* Writes a complete JSON error response on the client connection:
 * {"error", "host", "reason", "hint"} plus X-Nilbox-Reason: `why` (a
 * stable token). `close` adds Connection: close and ends the connection
 * once the reply is written. */
void nb_px_reply(cconn_t *c, int status, const char *error, const char *why, const char *host,
                 const char *reason, const char *hint, int close);
const char *nb_px_why_hint(int why);

/* proxy_pipe.c */
/* Bytes both ways between the client and c->up (which it takes over), the
 * client's `cpre` first. */
void nb_px_pipe_start(cconn_t *c, const uint8_t *cpre, size_t cprelen);
void nb_px_pipe_client_data(cconn_t *c, const uint8_t *p, size_t len);
void nb_px_pipe_client_eof(cconn_t *c);
void nb_px_pipe_client_drain(cconn_t *c);
void nb_px_pipe_shutdown_done(cconn_t *c);
/* Scans the upstream's WebSocket frames from now on (hosts with bindings). */
int nb_px_pipe_scan_ws(cconn_t *c);
/* Upstream bytes to the client, scanned when they must be (also those
 * that came with the 101 head). */
int nb_px_pipe_up_to_client(cconn_t *c, const uint8_t *p, size_t len);

/* proxy_http.c */
/* A fresh request parser for the connection (plain proxy or tunnel). */
int nb_px_conn_start_http(cconn_t *c);
/* Feeds held client bytes to the request parser until a message ends
 * (the parser then pauses until the exchange is over). A complete
 * CONNECT goes to px->tunnel. */
void nb_px_conn_feed(cconn_t *c);
void nb_px_http_client_drain(cconn_t *c);
/* The tunnel's held request goes on (or gets its 403 in deny mode) now
 * that the CONNECT's verdict is in (proxy_tunnel.c records the verdict). */
void nb_px_http_release(cconn_t *c);
void nb_px_exch_reset(cconn_t *c);

/* The state of one token exchange (proxy_oauth.c). */
struct nb_px_oauth {
    nb_oauth_set_t *set;
    int idx;
    nb_buf_t body; /* rewritten request body */
    nb_buf_t head; /* response head, held */
    nb_buf_t resp; /* response body, held */
    nb_buf_t out;  /* scrubbed response body */
    nb_buf_t outh; /* scrubbed response head */
    int status;
    char ctype[128];
};

/* Ends a token exchange's state (end of exchange or connection). Inline
 * so that proxy_conn.c does not call up into proxy_oauth.c. */
static inline void nb_px_oauth_reset(cconn_t *c)
{
    struct nb_px_oauth *oa = c->oa;
    if (!oa)
        return;
    nb_oauth_set_unref(oa->set);
    nb_buf_free(&oa->body);
    nb_buf_free(&oa->head);
    nb_buf_free(&oa->resp);
    nb_buf_free(&oa->out);
    nb_buf_free(&oa->outh);
    free(oa);
    c->oa = NULL;
}

/* proxy_oauth.c: token exchanges of OAuth bindings (docs/internals/oauth.md) */
/* Marks the exchange as a token exchange when its destination is one. */
void nb_px_oauth_match(cconn_t *c);
/* Rewrites the buffered request body (placeholders -> the binding's
 * values) into the exchange's locked output. 0, or -1 after a reply. */
int nb_px_oauth_request(cconn_t *c);
/* The rewritten body, length (0 before nb_px_oauth_request). */
nb_iov_t nb_px_oauth_body(cconn_t *c);
void nb_px_oauth_body_wipe(cconn_t *c);
/* The response head (its bytes are kept: sent once the body is rewritten). */
int nb_px_oauth_resp_head(cconn_t *c, const nb_http_head_t *h, const uint8_t *head, size_t len);
int nb_px_oauth_resp_body(cconn_t *c, const uint8_t *p, size_t len);
/* Parses the response with the script, seals the tokens; the client's
 * response leaves from the store's completion (or at once without tokens).
 * Negative with x->fail_token set on failure. */
int nb_px_oauth_resp_complete(cconn_t *c);
void nb_px_oauth_engine_free(nb_proxy_t *px);
/* proxy_http.c: the exchange may end now (after a deferred response). */
void nb_px_http_check_done(cconn_t *c);
/* proxy_usage.c: token accounting and limits on LLM requests (usage.h).
 * proxy_http.c calls these at each step of an exchange. */
typedef int (*nb_px_usage_fwd_fn)(cconn_t *c, const uint8_t *p, size_t len);
void nb_px_usage_head(cconn_t *c);      /* request head accepted: an LLM endpoint? */
int nb_px_usage_hold(const cconn_t *c); /* 1: wait for the whole body before starting */
int nb_px_usage_prepare(cconn_t *c);    /* send_head, before the head is built */
int nb_px_usage_skip_header(const cconn_t *c, nb_http_hdr_kind_t kind);
void nb_px_usage_upstream_headers(const cconn_t *c, nb_inject_header_t *hv, size_t *n,
                                  int identity);
int nb_px_usage_reserve(cconn_t *c); /* after injection: -1 when refused (replied) */
int nb_px_usage_resp_head(cconn_t *c, const nb_http_head_t *h);
int nb_px_usage_rewrites(const cconn_t *c); /* the body is filtered: no Content-Length */
int nb_px_usage_warn_header(const cconn_t *c, nb_buf_t *b);
int nb_px_usage_body(cconn_t *c, const uint8_t *p, size_t len, nb_px_usage_fwd_fn fwd);
int nb_px_usage_end(cconn_t *c, nb_px_usage_fwd_fn fwd);
void nb_px_usage_drop(cconn_t *c); /* settles what is left and frees */

/* proxy_tunnel.c */
/* A CONNECT request was read completely (any bytes after it are in
 * c->in), or a transparent connection starts. */
void nb_px_tunnel_connect(cconn_t *c);
/* The tunnel's first bytes are in c->in: TLS to terminate or plain HTTP. */
void nb_px_tunnel_sniff(cconn_t *c);

static inline void nb_px_conn_touch(cconn_t *c)
{
    c->last_active = uv_now(c->px->loop);
}

#endif
