/* A tiny MCP stdio server for the bridge's e2e tests and bench/mcp:
 * statically linked (jansson), shipped into the tiny image's VM, so the
 * suite needs no Node.js in the guest. One JSON-RPC message per line.
 *
 * Tools: echo {text}; add {a, b}; slow {steps} (a progress notification per
 * step, 100 ms apart, stops without answering when cancelled); crash (exits
 * at once, no answer); garbage (a malformed line, then a good answer); big
 * {bytes} (an answer that size); secret, asked (for policy tests: they
 * answer like echo); later (answers, then, outside any request, sends
 * notifications/tools/list_changed and a ping request of its own: the
 * client's answer is noted in the log). Every line received is noted on stderr (the log).
 * SIGUSR1: stops reading, waits for input to arrive on stdin, and kills
 * itself with it unread (a server that dies with a request in its pipe). */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static FILE *out; /* stdout, or (--http) the connection being answered */
static int http_mode;
static FILE *get_stream; /* --http: the client's GET stream, if open */
static int later_due;    /* --http: `later` sends once its POST is answered */

static void send_msg(json_t *m)
{
    char *t = json_dumps(m, JSON_COMPACT);
    if (http_mode)
        fprintf(out, "event: message\ndata: %s\n\n", t);
    else
        fprintf(out, "%s\n", t);
    fflush(out);
    free(t);
    json_decref(m);
}

/* What `later` sends after its answer, outside any request. */
static void later_msgs(void)
{
    send_msg(
        json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", "notifications/tools/list_changed"));
    send_msg(json_pack("{s:s, s:s, s:s}", "jsonrpc", "2.0", "id", "srv-ping-1", "method", "ping"));
}

static json_t *text_result(const char *text)
{
    return json_pack("{s:[{s:s, s:s}]}", "content", "type", "text", "text", text);
}

static void answer(json_t *id, json_t *result)
{
    send_msg(json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id, "result", result));
}

static json_t *tool(const char *name, const char *desc)
{
    return json_pack("{s:s, s:s, s:{s:s, s:{}}}", "name", name, "description", desc, "inputSchema",
                     "type", "object", "properties");
}

static char *line;
static size_t cap;

/* Waits up to ms for a line; 1 when one was read into `line`. */
static int read_line(int ms)
{
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (ms >= 0 && poll(&p, 1, ms) <= 0)
        return 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0)
        exit(0);
    return 1;
}

static void slow(json_t *id, json_t *params)
{
    json_int_t steps =
        json_integer_value(json_object_get(json_object_get(params, "arguments"), "steps"));
    json_t *token = json_object_get(json_object_get(params, "_meta"), "progressToken");
    for (json_int_t i = 1; i <= steps; i++) {
        if (token)
            send_msg(json_pack("{s:s, s:s, s:{s:O, s:I, s:I}}", "jsonrpc", "2.0", "method",
                               "notifications/progress", "params", "progressToken", token,
                               "progress", i, "total", steps));
        /* Between steps, a cancellation of this request ends it. */
        if (http_mode) {
            usleep(100000);
        } else if (read_line(100)) {
            json_t *m = json_loads(line, 0, NULL);
            const char *meth = json_string_value(json_object_get(m, "method"));
            fprintf(stderr, "testsrv: during slow: %s\n", meth ? meth : "?");
            if (meth && !strcmp(meth, "notifications/cancelled") &&
                json_equal(json_object_get(json_object_get(m, "params"), "requestId"), id)) {
                fprintf(stderr, "testsrv: slow cancelled at step %lld\n", (long long)i);
                json_decref(m);
                return;
            }
            json_decref(m);
        }
    }
    answer(id, text_result("slow done"));
}

static void call(json_t *id, json_t *params)
{
    const char *name = json_string_value(json_object_get(params, "name"));
    json_t *args = json_object_get(params, "arguments");
    char buf[256];
    if (!name)
        name = "";
    if (!strcmp(name, "echo") || !strcmp(name, "secret") || !strcmp(name, "asked")) {
        const char *t = json_string_value(json_object_get(args, "text"));
        answer(id, text_result(t ? t : ""));
    } else if (!strcmp(name, "add")) {
        snprintf(buf, sizeof buf, "%lld",
                 (long long)(json_integer_value(json_object_get(args, "a")) +
                             json_integer_value(json_object_get(args, "b"))));
        answer(id, text_result(buf));
    } else if (!strcmp(name, "slow")) {
        slow(id, params);
    } else if (!strcmp(name, "later")) {
        answer(id, text_result("later"));
        if (http_mode) {
            later_due = 1; /* on the GET stream, once this POST is over */
        } else {
            usleep(300000); /* the answer has arrived; what follows belongs to no request */
            later_msgs();
        }
    } else if (!strcmp(name, "crash")) {
        fprintf(stderr, "testsrv: crashing on purpose\n");
        exit(3);
    } else if (!strcmp(name, "garbage")) {
        fputs(http_mode ? "event: message\ndata: {\"jsonrpc\": \"2.0\", not json\n\n"
                        : "{\"jsonrpc\": \"2.0\", this is not json\n",
              out);
        fflush(out);
        answer(id, text_result("after garbage"));
    } else if (!strcmp(name, "big")) {
        json_int_t n = json_integer_value(json_object_get(args, "bytes"));
        char *b = malloc((size_t)n + 1);
        memset(b, 'x', (size_t)n);
        b[n] = 0;
        answer(id, text_result(b));
        free(b);
    } else {
        send_msg(json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id, "error", "code",
                           -32602, "message", "unknown tool"));
    }
}

static void handle(json_t *m);

/* --http PORT: Streamable HTTP on 127.0.0.1:PORT, one POST per connection,
 * answers as event streams (202 for notifications and responses); a GET
 * is held open as the stream for messages outside a request. */
static int serve_http(int port)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 16) < 0) {
        perror("testsrv: bind");
        return 1;
    }
    http_mode = 1;
    fprintf(stderr, "testsrv: http on port %d\n", port);
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0)
            continue;
        static char buf[1 << 20];
        size_t len = 0;
        char *end = NULL;
        while (!end && len < sizeof buf - 1) {
            ssize_t n = read(c, buf + len, sizeof buf - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            buf[len] = 0;
            end = strstr(buf, "\r\n\r\n");
        }
        if (!end) {
            close(c);
            continue;
        }
        size_t cl = 0;
        for (char *h = buf; h && h < end; h = strstr(h, "\r\n") ? strstr(h, "\r\n") + 2 : NULL)
            if (!strncasecmp(h, "Content-Length:", 15))
                cl = strtoul(h + 15, NULL, 10);
        size_t head = (size_t)(end + 4 - buf);
        while (len < head + cl && len < sizeof buf - 1) {
            ssize_t n = read(c, buf + len, sizeof buf - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        out = fdopen(c, "w");
        if (!strncmp(buf, "GET ", 4)) {
            fprintf(stderr, "testsrv: GET stream opened\n");
            fputs("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: "
                  "close\r\n\r\n",
                  out);
            fflush(out);
            if (get_stream)
                fclose(get_stream);
            get_stream = out;
            continue;
        }
        json_t *m = json_loadb(buf + head, cl, 0, NULL);
        const char *meth = json_string_value(json_object_get(m, "method"));
        if (!m || !json_object_get(m, "id") || !meth) {
            fputs("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", out);
            if (m)
                handle(m); /* notes it in the log */
        } else {
            fprintf(out,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n%sConnection: "
                    "close\r\n\r\n",
                    !strcmp(meth, "initialize") ? "Mcp-Session-Id: testsid-1\r\n" : "");
            handle(m);
        }
        fclose(out);
        json_decref(m);
        if (later_due) {
            later_due = 0;
            usleep(300000);
            if (get_stream) {
                out = get_stream;
                later_msgs();
            } else {
                fprintf(stderr, "testsrv: no GET stream for later\n");
            }
        }
    }
}

/* Never returns: the read the main loop may be in stays interrupted. Only
 * async-signal-safe calls. */
static void on_usr1(int sig)
{
    (void)sig;
    static const char stalled[] = "testsrv: stalled, not reading\n";
    static const char dying[] = "testsrv: input waiting unread, dying\n";
    if (write(2, stalled, sizeof stalled - 1) < 0)
        _exit(3);
    for (;;) {
        int n = 0;
        if (ioctl(0, FIONREAD, &n) == 0 && n > 0) {
            if (write(2, dying, sizeof dying - 1) < 0)
                _exit(3);
            kill(getpid(), SIGKILL);
        }
        struct timespec t = {0, 20 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
}

int main(int argc, char **argv)
{
    signal(SIGUSR1, on_usr1);
    fprintf(stderr, "testsrv: started, pid %d\n", (int)getpid());
    out = stdout;
    signal(SIGPIPE, SIG_IGN); /* a GET stream the client left */
    if (argc == 3 && !strcmp(argv[1], "--http"))
        return serve_http(atoi(argv[2]));
    for (;;) {
        read_line(-1);
        json_t *m = json_loads(line, 0, NULL);
        handle(m);
        json_decref(m);
    }
}

static void handle(json_t *m)
{
    {
        const char *meth = json_string_value(json_object_get(m, "method"));
        json_t *id = json_object_get(m, "id");
        if (meth)
            fprintf(stderr, "testsrv: got %s\n", meth);
        else if (json_is_string(id))
            fprintf(stderr, "testsrv: got response %s%s\n", json_string_value(id),
                    json_object_get(m, "result") ? " (result)" : "");
        if (!meth || !id)
            return;
        json_t *params = json_object_get(m, "params");
        if (!strcmp(meth, "initialize")) {
            json_t *pv = json_object_get(params, "protocolVersion");
            answer(id, json_pack("{s:O, s:{s:{}}, s:{s:s, s:s}}", "protocolVersion",
                                 pv ? pv : json_string("2025-06-18"), "capabilities", "tools",
                                 "serverInfo", "name", "nilbox-testsrv", "version", "1.0"));
        } else if (!strcmp(meth, "tools/list")) {
            answer(id, json_pack("{s:[o,o,o,o,o,o,o,o,o]}", "tools", tool("echo", "echo text"),
                                 tool("add", "add a and b"), tool("slow", "progress steps"),
                                 tool("crash", "exit at once"), tool("garbage", "bad line first"),
                                 tool("big", "a large answer"), tool("secret", "for deny tests"),
                                 tool("asked", "for ask tests"),
                                 tool("later", "server messages outside a request")));
        } else if (!strcmp(meth, "tools/call")) {
            call(id, params);
        } else if (!strcmp(meth, "ping")) {
            answer(id, json_object());
        } else {
            send_msg(json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id, "error",
                               "code", -32601, "message", "method not found"));
        }
    }
}
