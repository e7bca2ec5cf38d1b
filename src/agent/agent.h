/* nilbox-agent internals: the guest end of the nbmux channel and its
 * services (docs/protocol.md §6). Everything runs on one libuv loop. */
#ifndef NB_AGENT_H
#define NB_AGENT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "lib/buf.h"
#include "lib/muxsess.h"

#define NB_AGENT_MAX_ALLOW 32

typedef struct {
    uv_loop_t *loop;
    nb_muxsess_t *sess;
    const char *allow[NB_AGENT_MAX_ALLOW]; /* ctl write_file prefixes (borrowed) */
    size_t nallow;
    int vm;        /* really inside a VM: poweroff and hostname changes allowed */
    int stopping;  /* shutting down: no reconnects */
    unsigned live; /* service objects alive (for the shutdown log) */
    /* --hold-until: the image's setup runs until this file exists (NULL:
     * nothing to wait for). Set by main.c; ctl's poweroff waits for it. */
    const char *setup_done_file;
} nb_agent_t;

/* Service entry points, called from the session's on_open. Each either
 * accepts/rejects the stream itself and returns 0, or returns a negative
 * code and the session rejects the stream. */
int nb_agent_exec_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args);
int nb_agent_pty_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args);
int nb_agent_tcp_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args);
int nb_agent_ctl_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args);
/* fs.c: a folder mapping (FUSE mount at args.path, requests to the host). */
int nb_agent_fs_open(nb_agent_t *a, nb_muxsess_stream_t *st, nb_iov_t args);

/* Guest -> host services (egress.c, dns.c): listeners in the guest whose
 * connections / queries become `egress` / `dns` streams. Port 0 leaves a
 * listener off. Errors are logged and returned (libuv codes). */
int nb_agent_egress_start(nb_agent_t *a, const char *proxy_ip, int proxy_port,
                          int transparent_port);
void nb_agent_egress_stop(void);
int nb_agent_dns_start(nb_agent_t *a, const char *ip, int port);
void nb_agent_dns_stop(void);

/* ---- helpers shared by the services (proc.c) ---- */

#define NB_AGENT_USER_NAME_MAX 33
#define NB_AGENT_USER_GROUPS_MAX 32

/* A guest account (user.c), read from /etc/passwd and /etc/group. */
typedef struct {
    uid_t uid;
    gid_t gid;
    char name[NB_AGENT_USER_NAME_MAX];
    char home[256];
    char shell[256];
    gid_t groups[NB_AGENT_USER_GROUPS_MAX]; /* supplementary, without gid */
    size_t ngroups;
} nb_agent_user_t;

/* Looks an account up by `name`, or by `uid` when name is NULL.
 * 0, -ENOENT (no such account), NB_ETOOBIG or another -errno. */
int nb_agent_user_lookup(const char *name, uid_t uid, nb_agent_user_t *u);
/* 1 when `name` is a plausible account name (the useradd rules). */
int nb_agent_user_valid_name(const char *name);

/* A command to start: argv and envp are NULL-terminated, owned. */
typedef struct {
    char **argv;
    char **envp;
    char *cwd;       /* NULL: inherit */
    char *path;      /* resolved executable (pty: resolved before fork) */
    int switch_user; /* run as `user` (the agent's own uid differs) */
    nb_agent_user_t user;
} nb_agent_cmd_t;

/* Parses {"argv": [...], "env": {...}, "clear_env": bool, "cwd": "...",
 * "user": "name"} from `args` (untrusted). The command runs as `user`
 * (default: the agent's own account) with a login-like environment: HOME,
 * USER, LOGNAME, SHELL, PATH, LANG, TERM (when `term` is set), then `env`
 * on top; nothing of the agent's own environment leaks in. With clear_env,
 * only `env` (and a default PATH). The working directory defaults to the
 * user's home. `default_argv0` (may be NULL) is used when argv is absent
 * (pty: the login shell; "" means the user's shell). On error returns
 * NB_EINVAL with a reason in `why` (size whysz). */
int nb_agent_cmd_parse(const json_t *args, const char *default_argv0, const char *term,
                       nb_agent_cmd_t *cmd, char *why, size_t whysz);

/* Looks up cmd->argv[0] in the PATH of cmd->envp (or takes it as is when
 * it contains a '/'); sets cmd->path. 0 or -ENOENT / -EACCES. */
int nb_agent_cmd_resolve(nb_agent_cmd_t *cmd);

void nb_agent_cmd_free(nb_agent_cmd_t *cmd);

/* Parses args as a JSON object. NB_EINVAL (reason in why) otherwise. */
int nb_agent_args_object(nb_iov_t args, json_t **out, char *why, size_t whysz);

/* Sends {"exit": code} or {"signal": n} on CTL and FIN; with
 * "stdin_read": N when stdin_read >= 0 (exec's "stdin_read" option). */
int nb_agent_send_exit(nb_muxsess_stream_t *st, int64_t exit_status, int term_signal,
                       int64_t stdin_read);

/* uv_alloc_cb that mallocs a 64 KiB buffer (handed to the stream with
 * nb_muxsess_stream_write_owned) and the matching free. */
void nb_agent_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);

/* `nilbox-agent sftp-server` (sftp.c): an SFTP v3 server on `in`/`out`
 * until EOF; the exit code. */
int nb_agent_sftp_main(int in, int out);

#endif
