/* Helpers shared by the agent's services: command and environment
 * parsing, PATH lookup, CTL messages. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "lib/err.h"
#include "lib/json.h"

#define MAX_ARGV 256
#define MAX_ENV 1024
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static void free_vec(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

void nb_agent_cmd_free(nb_agent_cmd_t *cmd)
{
    free_vec(cmd->argv);
    free_vec(cmd->envp);
    free(cmd->cwd);
    free(cmd->path);
    memset(cmd, 0, sizeof *cmd);
}

int nb_agent_args_object(nb_iov_t args, json_t **out, char *why, size_t whysz)
{
    *out = NULL;
    if (args.len == 0) {
        *out = json_object();
        return *out ? 0 : -ENOMEM;
    }
    if (nb_json_parse(args, out, why, whysz) < 0)
        return NB_EINVAL;
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        snprintf(why, whysz, "arguments must be a JSON object");
        return NB_EINVAL;
    }
    return 0;
}

/* Sets or replaces NAME=VALUE in the vector env (n entries, capacity cap). */
static int env_set(char **env, size_t *n, size_t cap, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    char *e = malloc(nl + vl + 2);
    if (!e)
        return -ENOMEM;
    memcpy(e, name, nl);
    e[nl] = '=';
    memcpy(e + nl + 1, value, vl + 1);
    for (size_t i = 0; i < *n; i++) {
        if (!strncmp(env[i], name, nl) && env[i][nl] == '=') {
            free(env[i]);
            env[i] = e;
            return 0;
        }
    }
    if (*n + 1 >= cap) {
        free(e);
        return NB_ETOOBIG;
    }
    env[(*n)++] = e;
    env[*n] = NULL;
    return 0;
}

static int env_has(char **env, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(env[i], name, nl) && env[i][nl] == '=')
            return 1;
    return 0;
}

static int valid_env_name(const char *k)
{
    if (!*k || strlen(k) > 256)
        return 0;
    for (const char *p = k; *p; p++)
        if (*p == '=')
            return 0;
    return 1;
}

int nb_agent_cmd_parse(const json_t *args, const char *default_argv0, const char *term,
                       nb_agent_cmd_t *cmd, char *why, size_t whysz)
{
    int r = NB_EINVAL;
    memset(cmd, 0, sizeof *cmd);
    json_t *jargv = json_object_get(args, "argv");
    json_t *jenv = json_object_get(args, "env");
    json_t *jcwd = json_object_get(args, "cwd");
    json_t *jclear = json_object_get(args, "clear_env");
    json_t *juser = json_object_get(args, "user");

    if (juser && (!json_is_string(juser) || !nb_agent_user_valid_name(json_string_value(juser)))) {
        snprintf(why, whysz, "user must be an account name");
        goto out;
    }
    const char *uname = juser ? json_string_value(juser) : NULL;
    if ((r = nb_agent_user_lookup(uname, geteuid(), &cmd->user)) < 0) {
        if (uname)
            snprintf(why, whysz, "no account '%s' in this VM", uname);
        else
            snprintf(why, whysz, "the agent's own account is not in /etc/passwd");
        r = NB_EINVAL;
        if (uname)
            goto out;
        /* Without a passwd entry for itself the agent still runs commands. */
        memset(&cmd->user, 0, sizeof cmd->user);
        cmd->user.uid = geteuid();
        cmd->user.gid = getegid();
        memcpy(cmd->user.home, "/", 2);
        memcpy(cmd->user.shell, "/bin/sh", 8);
        snprintf(cmd->user.name, sizeof cmd->user.name, "%u", (unsigned)geteuid());
    }
    if (cmd->user.uid != geteuid()) {
        if (geteuid() != 0) {
            snprintf(why, whysz, "cannot run as '%s': the agent does not run as root", uname);
            r = NB_EINVAL;
            goto out;
        }
        cmd->switch_user = 1;
    }
    if (default_argv0 && !*default_argv0)
        default_argv0 = cmd->user.shell;
    r = NB_EINVAL;

    if (jargv) {
        size_t n = json_array_size(jargv);
        if (!json_is_array(jargv) || n == 0 || n > MAX_ARGV) {
            snprintf(why, whysz, "argv must be an array of 1..%d strings", MAX_ARGV);
            goto out;
        }
        if (!(cmd->argv = calloc(n + 1, sizeof(char *))))
            goto oom;
        for (size_t i = 0; i < n; i++) {
            const char *v = json_string_value(json_array_get(jargv, i));
            if (!v || (i == 0 && !*v)) {
                snprintf(why, whysz, "argv[%zu] must be a%s string", i, i ? "" : " non-empty");
                goto out;
            }
            if (!(cmd->argv[i] = strdup(v)))
                goto oom;
        }
    } else if (default_argv0) {
        if (!(cmd->argv = calloc(2, sizeof(char *))) || !(cmd->argv[0] = strdup(default_argv0)))
            goto oom;
    } else {
        snprintf(why, whysz, "argv is required");
        goto out;
    }

    if (jcwd && !json_is_string(jcwd)) {
        snprintf(why, whysz, "cwd must be a string");
        goto out;
    }
    if (jcwd && !(cmd->cwd = strdup(json_string_value(jcwd))))
        goto oom;
    if (!jcwd && access(cmd->user.home, X_OK) == 0 && !(cmd->cwd = strdup(cmd->user.home)))
        goto oom;
    if (jclear && !json_is_boolean(jclear)) {
        snprintf(why, whysz, "clear_env must be a boolean");
        goto out;
    }
    if (jenv && !json_is_object(jenv)) {
        snprintf(why, whysz, "env must be an object of strings");
        goto out;
    }

    size_t n = 0, cap = MAX_ENV + 1;
    if (!(cmd->envp = calloc(cap, sizeof(char *))))
        goto oom;
    if (!json_is_true(jclear)) {
        /* A login-like environment; the agent's own (service manager
         * variables and the like) is not the command's business. */
        const char *base[][2] = {
            {"HOME", cmd->user.home},   {"USER", cmd->user.name}, {"LOGNAME", cmd->user.name},
            {"SHELL", cmd->user.shell}, {"PATH", DEFAULT_PATH},   {"LANG", "C.UTF-8"},
        };
        for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
            if ((r = env_set(cmd->envp, &n, cap, base[i][0], base[i][1])) < 0)
                goto fail;
    }
    if (term && (r = env_set(cmd->envp, &n, cap, "TERM", term)) < 0)
        goto fail;
    const char *k;
    json_t *v;
    json_object_foreach (jenv, k, v) {
        if (!json_is_string(v) || !valid_env_name(k)) {
            snprintf(why, whysz, "env: invalid entry");
            r = NB_EINVAL;
            goto out;
        }
        if ((r = env_set(cmd->envp, &n, cap, k, json_string_value(v))) < 0)
            goto fail;
    }
    if (!env_has(cmd->envp, n, "PATH") &&
        (r = env_set(cmd->envp, &n, cap, "PATH", DEFAULT_PATH)) < 0)
        goto fail;
    return 0;
oom:
    r = -ENOMEM;
fail:
    snprintf(why, whysz, "%s", r == NB_ETOOBIG ? "environment too large" : nb_strerror(r));
    if (r == NB_ETOOBIG)
        r = NB_EINVAL;
out:
    nb_agent_cmd_free(cmd);
    return r;
}

int nb_agent_cmd_resolve(nb_agent_cmd_t *cmd)
{
    const char *name = cmd->argv[0];
    if (strchr(name, '/')) {
        if (access(name, X_OK) < 0)
            return -errno;
        return (cmd->path = strdup(name)) ? 0 : -ENOMEM;
    }
    const char *path = DEFAULT_PATH;
    for (char **e = cmd->envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5))
            path = *e + 5;
    int r = -ENOENT;
    size_t nl = strlen(name);
    const char *p = path;
    while (*p || p == path) {
        const char *end = strchr(p, ':');
        size_t dl = end ? (size_t)(end - p) : strlen(p);
        char buf[4096];
        if (dl == 0) /* empty element: current directory */
            dl = 1, p = ".";
        if (dl + 1 + nl + 1 <= sizeof buf) {
            memcpy(buf, p, dl);
            buf[dl] = '/';
            memcpy(buf + dl + 1, name, nl + 1);
            if (access(buf, X_OK) == 0)
                return (cmd->path = strdup(buf)) ? 0 : -ENOMEM;
            if (errno == EACCES)
                r = -EACCES;
        }
        if (!end)
            break;
        p = end + 1;
    }
    return r;
}

static int send_ctl(nb_muxsess_stream_t *st, json_t *msg)
{
    nb_buf_t b;
    nb_buf_init(&b, NB_MUX_CTL_MAX);
    int r = nb_json_dump(msg, &b);
    if (r == 0)
        r = nb_muxsess_stream_write(st, NB_MUX_CHAN_CTL, b.p, b.len);
    nb_buf_free(&b);
    return r;
}

int nb_agent_send_exit(nb_muxsess_stream_t *st, int64_t exit_status, int term_signal,
                       int64_t stdin_read)
{
    json_t *m = term_signal ? json_pack("{s:i}", "signal", term_signal)
                            : json_pack("{s:I}", "exit", (json_int_t)exit_status);
    if (!m)
        return -ENOMEM;
    if (stdin_read >= 0 && json_object_set_new(m, "stdin_read", json_integer(stdin_read)) < 0) {
        json_decref(m);
        return -ENOMEM;
    }
    int r = send_ctl(st, m);
    json_decref(m);
    if (r == 0)
        r = nb_muxsess_stream_fin(st);
    return r;
}

void nb_agent_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    size_t n = 64 * 1024;
    char *p = malloc(n);
    *b = uv_buf_init(p, p ? (unsigned)n : 0);
}
