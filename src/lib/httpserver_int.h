/* Internal structures of the HTTP server, httpserver.c (not a public
 * interface; the API is lib/httpserver.h): listeners, connections,
 * requests, WebSockets. Connection states and ownership rules: the comment
 * at the top of httpserver.c and docs/internals/http.md. Loop thread only. */
#ifndef NB_HTTPSERVER_INT_H
#define NB_HTTPSERVER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/http.h"
#include "lib/httpserver.h"
#include "lib/ws.h"

#define NB_HTTPD_READ_CHUNK (64 * 1024)
#define NB_HTTPD_IN_MAX (256 * 1024)    /* unparsed input (pipelined requests) */
#define NB_HTTPD_WRITE_HWM (256 * 1024) /* stop reading above this many queued bytes */
#define NB_HTTPD_LINGER_MS 2000
#define NB_HTTPD_MAX_LISTENERS 8
#define NB_HTTPD_MAX_RESP_HEADERS (16 * 1024)
#define NB_WS_SEND_CAP (4 * 1024 * 1024)
#define NB_WS_CLOSE_WAIT_MS 3000

enum { C_HTTP, C_WS, C_LINGER, C_CLOSING };

typedef union {
    uv_handle_t h;
    uv_stream_t s;
    uv_pipe_t pipe;
    uv_tcp_t tcp;
} nb_stream_u;

typedef struct conn conn_t;

typedef struct {
    nb_stream_u u;
    nb_httpd_t *srv;
    int is_unix;
    size_t nconns;  /* live connections accepted here */
    size_t nunauth; /* of which not yet authenticated */
} listener_t;

struct nb_httpd {
    uv_loop_t *loop;
    nb_httpd_cfg_t cfg;
    nb_httpd_handler_fn on_request;
    void *ud;
    listener_t *listeners[NB_HTTPD_MAX_LISTENERS];
    int nlisteners;
    conn_t *conns; /* doubly linked list of live (not closing) connections */
    size_t nconns;
    unsigned handles; /* listeners + connections not yet fully closed */
    nb_buf_t defhdrs; /* "Name: value\r\n" lines */
    int closing;
    uint64_t last_limit_log;
    int reserve_fd; /* a spare descriptor given up on EMFILE (httpserver.c accept_short) */
    void (*done)(void *ud);
    void *done_ud;
};

struct nb_ws {
    conn_t *c;
    nb_ws_cbs_t cbs;
    void *ud;
    nb_ws_parser_t *parser;
    int close_sent;
    int close_recv;
    int closed_cb_done;
    int close_code; /* reported to on_close */
    uint64_t close_at;
    uint64_t last_ping;
    int raw; /* nb_httpd_stream_accept: unframed bytes out, input dropped, no pings */
};

struct conn {
    nb_stream_u u;
    uv_timer_t timer;
    int open_handles; /* stream + timer */
    nb_httpd_t *srv;
    conn_t *prev, *next;
    uint64_t id;
    int is_unix;
    listener_t *l; /* NULL once the connection is closing */
    long uid;      /* Unix peer uid (SO_PEERCRED), -1 when unknown */
    int authed;    /* 0: counted in l->nunauth (see nb_httpd_cfg_t) */
    uint64_t created;
    int state;
    nb_http_parser_t *parser;
    nb_buf_t in;              /* bytes read but not yet parsed */
    nb_httpd_req_t *req;      /* being received; owned by the connection */
    nb_httpd_req_t *inflight; /* with the handler */
    int reading;
    int eof;
    int processing; /* process() is on the stack */
    int err_status; /* set by parser callbacks that refuse a request */
    const char *err_reason;
    int upgraded;       /* the parser stopped at an upgrade */
    int req_started;    /* bytes of an unfinished request were fed */
    uint64_t req_start; /* uv_now() when that request began */
    uint64_t last_activity;
    uint64_t last_rx; /* last byte from the peer */
    uint64_t linger_start;
    size_t wq;       /* bytes queued for writing */
    int shut;        /* shutdown requested */
    size_t last_wqs; /* write queue size at the last timer check */
    nb_ws_t *ws;
};

struct nb_httpd_req {
    conn_t *conn;  /* NULL once orphaned */
    nb_buf_t strs; /* NUL-terminated strings: method, path, query, then name/value pairs */
    size_t method_off, path_off, query_off;
    size_t *hdr_off; /* 2 * nhdrs offsets into strs */
    size_t nhdrs;
    nb_buf_t body;
    nb_buf_t resp_hdrs; /* "Name: value\r\n" lines */
    int keep_alive;
    int head_method;
    int version_minor;
    int upgrade;
    int sensitive; /* nb_httpd_req_set_sensitive */
    uint64_t conn_id;
    int is_unix;
};

#endif
