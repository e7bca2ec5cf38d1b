/* nilbox share add VM HOSTDIR GUESTDIR [--ro]
 * nilbox share ls [VM]
 * nilbox share rm ID */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmd.h"
#include "cli/cmdutil.h"
#include "lib/json.h"
#include "lib/log.h"

static const char *esc(char *buf, size_t n, const char *s)
{
    return s ? nb_log_escape(buf, n, s, strlen(s)) : "";
}

static int do_add(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *vm = a->pos[0], *host = a->pos[1], *guest = a->pos[2];
    char real[PATH_MAX];
    /* The daemon has another working directory: send an absolute path. */
    if (!realpath(host, real)) {
        fprintf(stderr, "nilbox: host folder '%.200s': %s\n", host, strerror(errno));
        return NB_CLI_NOTFOUND;
    }
    json_t *body = json_pack("{s:s, s:s, s:s, s:b}", "vm", vm, "host", real, "guest", guest, "ro",
                             nb_cli_flag(v, a, "ro"));
    json_t *res = NULL;
    int code;
    if (nb_cli_call_or_json(cli, "POST", "/v1/shares", body, &res, &code))
        return code;
    char b1[600], b2[300], b3[300];
    const char *state = nb_json_str(res, "state"), *err = nb_json_str(res, "error");
    printf("share %lld: %s -> %s:%s%s (%s)\n", (long long)nb_json_int(res, "id", 0),
           esc(b1, sizeof b1, nb_json_str(res, "host")), vm, esc(b2, sizeof b2, guest),
           nb_json_bool(res, "ro", 0) ? " read-only" : "", state ? state : "?");
    int rc = NB_CLI_OK;
    if (state && strcmp(state, "waiting") == 0)
        printf("the VM is not running: the folder is mounted when it starts\n");
    if (state && strcmp(state, "error") == 0) {
        fprintf(stderr, "nilbox: the share is saved but could not be mounted: %s\n",
                esc(b3, sizeof b3, err ? err : "unknown error"));
        rc = NB_CLI_ERROR;
    }
    json_decref(res);
    return rc;
}

static int do_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    char path[256];
    json_t *res = NULL;
    int code;
    if (a->npos > 0) {
        const char *vm = a->pos[0];
        if (!vm[0] || strlen(vm) > 64 ||
            strspn(vm, "abcdefghijklmnopqrstuvwxyz"
                       "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != strlen(vm)) {
            fprintf(stderr, "nilbox: '%.40s' is not a VM name\n", vm);
            return NB_CLI_USAGE;
        }
        snprintf(path, sizeof path, "/v1/shares?vm=%s", vm);
    } else {
        snprintf(path, sizeof path, "/v1/shares");
    }
    if (nb_cli_call_or_json(cli, "GET", path, NULL, &res, &code))
        return code;
    json_t *shares = json_object_get(res, "shares");
    if (json_array_size(shares) == 0)
        printf("no shares (add one with 'nilbox share add VM HOSTDIR GUESTDIR')\n");
    else
        printf("%4s  %-12s %-30s %-24s %-3s %s\n", "ID", "VM", "HOST", "GUEST", "RO", "STATE");
    size_t i;
    json_t *s;
    json_array_foreach (shares, i, s) {
        char b1[100], b2[600], b3[300], b4[300];
        const char *err = nb_json_str(s, "error");
        printf("%4lld  %-12s %-30s %-24s %-3s %s%s%s\n", (long long)nb_json_int(s, "id", 0),
               esc(b1, sizeof b1, nb_json_str(s, "vm")), esc(b2, sizeof b2, nb_json_str(s, "host")),
               esc(b3, sizeof b3, nb_json_str(s, "guest")), nb_json_bool(s, "ro", 0) ? "yes" : "",
               nb_json_str(s, "state"), err ? ": " : "", err ? esc(b4, sizeof b4, err) : "");
    }
    json_decref(res);
    return NB_CLI_OK;
}

static int do_rm(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    (void)v;
    long long id;
    if (nb_cli_parse_id(a->pos[0], "share", "share ls", &id) < 0)
        return NB_CLI_USAGE;
    return nb_cli_delete_id(cli, "shares", "share", id);
}

static const nb_cli_opt_t add_opts[] = {
    {"ro", 0, NULL, "read-only: the guest cannot change anything in the folder"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t verbs[] = {
    {"add", "share a host folder with a VM", "VM HOSTDIR GUESTDIR",
     "Mount host folder HOSTDIR at GUESTDIR inside VM (a FUSE file system served by the\n"
     "daemon; see docs/internals/share.md). Nothing outside HOSTDIR is reachable through it:\n"
     "symlinks are never followed on the host, '..' never leaves it, files with several\n"
     "hard links and device files cannot be opened. The guest's users all act as you on\n"
     "the host; your files appear owned by root in the guest. The share is remembered and\n"
     "mounted again whenever the VM starts.\n\n"
     "  nilbox share add dev ~/src/project /work\n"
     "  nilbox share add dev ~/datasets /data/ro --ro",
     3, 3, add_opts, do_add, NB_CLI_NEEDS_DAEMON},
    {"ls", "list shares (of one VM)", "[VM]", NULL, 0, 1, NULL, do_ls, NB_CLI_NEEDS_DAEMON},
    {"rm", "remove a share by id (unmounts it)", "ID", NULL, 1, 1, NULL, do_rm,
     NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_share = {"share", "share host folders with VMs", verbs, NULL};
