/* nilbox ssh / nilbox ssh-config: the SSH gateway (docs/internals/ssh.md).
 * status and the config block come from the daemon (GET /v1/ssh); the
 * key list is a file in the home ($NILBOX_HOME/ssh/authorized_keys) that
 * the daemon reads at each login, so `keys` edits it here. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cmd.h"
#include "lib/json.h"
#include "lib/log.h"

static int get_status(nb_cli_t *cli, json_t **out)
{
    int r = nb_cli_call(cli, "GET", "/v1/ssh", NULL, out);
    if (r != NB_CLI_OK)
        return r;
    if (!nb_json_bool(*out, "enabled", 0)) {
        json_decref(*out);
        *out = NULL;
        return nb_cli_fail(cli, NB_CLI_ERROR, "disabled",
                           "the SSH gateway is off (nilboxd runs with NILBOX_SSH_PORT=off)");
    }
    return NB_CLI_OK;
}

static int do_status(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *st = NULL;
    int r = nb_cli_call(cli, "GET", "/v1/ssh", NULL, &st);
    if (r != NB_CLI_OK)
        return r;
    if (cli->json) {
        nb_cli_print_json(st);
    } else if (!nb_json_bool(st, "enabled", 0)) {
        printf("enabled      no (NILBOX_SSH_PORT=off)\n");
    } else {
        printf("listening    127.0.0.1:%lld\n", (long long)nb_json_int(st, "port", 0));
        printf("host key     %s\n", nb_json_str(st, "fingerprint"));
        printf("sessions     %lld (%lld channels)\n", (long long)nb_json_int(st, "sessions", 0),
               (long long)nb_json_int(st, "channels", 0));
        size_t i;
        json_t *f;
        json_array_foreach (json_object_get(st, "key_files"), i, f)
            printf("keys         %s: %lld\n", nb_json_str(f, "path"),
                   (long long)nb_json_int(f, "keys", 0));
        printf(
            "usage        ssh -p %lld VM@127.0.0.1   (or 'nilbox ssh-config >> ~/.ssh/config')\n",
            (long long)nb_json_int(st, "port", 0));
    }
    json_decref(st);
    return NB_CLI_OK;
}

/* A ~/.ssh/config block: `ssh nilbox-VM` for any VM, the gateway's host
 * key pinned in a known_hosts file of the home. */
static int do_config(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *st = NULL;
    int r = get_status(cli, &st);
    if (r != NB_CLI_OK)
        return r;
    long long port = nb_json_int(st, "port", 0);
    char kh[4200];
    snprintf(kh, sizeof kh, "%s/ssh/known_hosts", cli->home.home);
    FILE *f = fopen(kh, "we");
    if (f) {
        fprintf(f, "[127.0.0.1]:%lld %s\n", port, nb_json_str(st, "host_key"));
        fclose(f);
    }
    if (cli->json) {
        json_object_set_new(st, "known_hosts", json_string(kh));
        nb_cli_print_json(st);
    } else {
        /* One User line per VM (OpenSSH does not expand tokens in User). */
        json_t *vms = NULL, *vm;
        size_t i;
        if (nb_cli_call(cli, "GET", "/v1/vms", NULL, &vms) == NB_CLI_OK)
            json_array_foreach (json_object_get(vms, "vms"), i, vm)
                if (nb_json_str(vm, "name"))
                    printf("Host nilbox-%s\n    User %s\n", nb_json_str(vm, "name"),
                           nb_json_str(vm, "name"));
        json_decref(vms);
        printf(
            "# nilbox SSH gateway: 'ssh nilbox-VM' opens a shell in VM (scp, sftp, rsync, -L too)\n"
            "Host nilbox-*\n"
            "    HostName 127.0.0.1\n"
            "    Port %lld\n"
            "    UserKnownHostsFile %s\n"
            "    StrictHostKeyChecking yes\n"
            "    PasswordAuthentication no\n"
            "    KbdInteractiveAuthentication no\n"
            "    ForwardAgent no\n"
            "    ForwardX11 no\n",
            port, kh);
    }
    json_decref(st);
    return NB_CLI_OK;
}

static void keys_path(nb_cli_t *cli, char *out, size_t n)
{
    snprintf(out, n, "%s/ssh/authorized_keys", cli->home.home);
}

/* Checks one public key line: "TYPE BASE64 [comment]", no options. */
static int valid_key_line(const char *l)
{
    static const char *types[] = {"ssh-ed25519",
                                  "ssh-rsa",
                                  "ecdsa-sha2-nistp256",
                                  "ecdsa-sha2-nistp384",
                                  "ecdsa-sha2-nistp521",
                                  "sk-ssh-ed25519@openssh.com",
                                  "sk-ecdsa-sha2-nistp256@openssh.com"};
    const char *sp = strchr(l, ' ');
    if (!sp)
        return 0;
    int ok = 0;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if ((size_t)(sp - l) == strlen(types[i]) && !strncmp(l, types[i], (size_t)(sp - l)))
            ok = 1;
    const char *b = sp + 1;
    size_t bl = strcspn(b, " \n");
    return ok && bl >= 16 &&
           strspn(b, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") == bl;
}

static int do_keys_add(nb_cli_t *cli, const char *src)
{
    char line[16384] = "", path[4200];
    FILE *in = strcmp(src, "-") ? fopen(src, "re") : stdin;
    if (!in)
        return nb_cli_fail(cli, NB_CLI_ERROR, "io", "cannot read %s: %s", src, strerror(errno));
    if (!fgets(line, sizeof line, in))
        line[0] = 0;
    if (in != stdin)
        fclose(in);
    line[strcspn(line, "\r\n")] = 0;
    if (!valid_key_line(line))
        return nb_cli_fail(cli, NB_CLI_USAGE, "invalid",
                           "%s does not hold an OpenSSH public key line (TYPE BASE64 [comment], "
                           "e.g. ~/.ssh/id_ed25519.pub)",
                           src);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/ssh", cli->home.home);
    mkdir(cli->home.home, 0700);
    mkdir(dir, 0700);
    keys_path(cli, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "io", "cannot write %s: %s", path, strerror(errno));
    dprintf(fd, "%s\n", line);
    close(fd);
    if (cli->json) {
        json_t *j = json_pack("{s:b, s:s}", "ok", 1, "file", path);
        nb_cli_print_json(j);
        json_decref(j);
    } else {
        printf("added to %s\n", path);
    }
    return NB_CLI_OK;
}

static int do_keys_ls(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char path[4200], line[16384], esc[600];
    keys_path(cli, path, sizeof path);
    const char *home = getenv("HOME");
    char user[4200] = "";
    if (home && home[0] == '/')
        snprintf(user, sizeof user, "%s/.ssh/authorized_keys", home);
    const char *files[] = {path, user};
    json_t *arr = json_array();
    for (int i = 0; i < 2; i++) {
        FILE *f = files[i][0] ? fopen(files[i], "re") : NULL;
        while (f && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = 0;
            if (!valid_key_line(line))
                continue; /* comments, blank lines, keys with options (not honoured) */
            char *sp = strchr(line, ' '), *c = strchr(sp + 1, ' ');
            *sp = 0;
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "file", files[i], "type", line,
                                                 "comment", c ? c + 1 : ""));
            if (!cli->json) {
                nb_log_escape(esc, sizeof esc, c ? c + 1 : "", c ? strlen(c + 1) : 0);
                printf("%-22s %-30s %s\n", line, esc, files[i]);
            }
        }
        if (f)
            fclose(f);
    }
    if (cli->json) {
        json_t *j = json_pack("{s:o}", "keys", arr);
        nb_cli_print_json(j);
        json_decref(j);
    } else {
        if (!json_array_size(arr))
            printf("no keys: add one with 'nilbox ssh keys add ~/.ssh/id_ed25519.pub'\n");
        json_decref(arr);
    }
    return NB_CLI_OK;
}

static int do_keys(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    if (a->npos == 0 || !strcmp(a->pos[0], "ls")) {
        if (a->npos > 1)
            return nb_cli_fail(cli, NB_CLI_USAGE, "usage", "usage: nilbox ssh keys [ls]");
        return do_keys_ls(cli, v, a);
    }
    if (!strcmp(a->pos[0], "add") && a->npos == 2) {
        return do_keys_add(cli, a->pos[1]);
    }
    return nb_cli_fail(cli, NB_CLI_USAGE, "usage", "usage: nilbox ssh keys [ls | add PUBFILE]");
}

static const nb_cli_verb_t verbs[] = {
    {"status", "the gateway's port, host key fingerprint, sessions and key files", NULL,
     "The SSH gateway listens on 127.0.0.1 (port kept in $NILBOX_HOME/ssh/port; NILBOX_SSH_PORT\n"
     "overrides it, 'off' disables the gateway). The user name is the VM's name:\n\n"
     "  ssh -p PORT VM@127.0.0.1            a shell in VM (a pty)\n"
     "  ssh -p PORT VM@127.0.0.1 make test  a command; its exit code comes back\n"
     "  scp -P PORT file VM@127.0.0.1:/tmp/ sftp, rsync -e 'ssh -p PORT', ssh -L ...",
     0, 0, NULL, do_status, NB_CLI_NEEDS_DAEMON},
    {"config", "print a ~/.ssh/config block (same as 'nilbox ssh-config')", NULL, NULL, 0, 0, NULL,
     do_config, NB_CLI_NEEDS_DAEMON},
    {"keys", "list the accepted public keys, or add one", "[ls | add PUBFILE]",
     "Logins take public keys only: those in $NILBOX_HOME/ssh/authorized_keys (this list) and\n"
     "in ~/.ssh/authorized_keys of the user running nilboxd, read at each login. Lines with\n"
     "options (command=, from=, ...) are skipped. 'add' appends one key line ('-': stdin).",
     0, 2, NULL, do_keys, 0},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_ssh = {"ssh", "the SSH gateway into VMs (ssh, scp, sftp, -L)",
                                       verbs, NULL};

static const nb_cli_verb_t config_self = {
    NULL,
    "print a ~/.ssh/config block for the SSH gateway ('ssh nilbox-VM')",
    NULL,
    "Prints a Host block for ~/.ssh/config: 'ssh nilbox-dev' then reaches VM 'dev' through the\n"
    "gateway, with its host key pinned in $NILBOX_HOME/ssh/known_hosts (written now).\n\n"
    "  nilbox ssh-config >> ~/.ssh/config",
    0,
    0,
    NULL,
    do_config,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_ssh_config = {
    "ssh-config", "print a ~/.ssh/config block for the SSH gateway", NULL, &config_self};
