/* nilbox shell VM: an interactive shell in a VM through the agent's `pty`
 * service. The local terminal goes raw while the session lasts (and is
 * restored on every exit path), window size changes follow (SIGWINCH), and
 * several shells may run at once. Exit status: the shell's. */
#include <stdio.h>

#include <jansson.h>

#include "cli/cmd.h"
#include "cli/vmio.h"

static int do_shell(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    const char *user = nb_cli_opt(v, a, "user");
    json_t *req = user ? json_pack("{s:s}", "user", user) : NULL;
    int code = nb_cli_vm_session(cli, a->pos[0], 1, req, 1);
    json_decref(req);
    return code;
}

static const nb_cli_opt_t shell_opts[] = {
    {"user", 'u', "NAME", "log in as this account (default: the VM's default user)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t shell_self = {
    NULL,
    "open a shell in a VM",
    "VM",
    "Open an interactive shell in a running VM (a login shell on a terminal in the guest).\n"
    "The terminal follows your window's size. Leave with 'exit' or Ctrl-D.",
    1,
    1,
    shell_opts,
    do_shell,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_shell = {"shell", "open a shell in a VM", NULL, &shell_self};
