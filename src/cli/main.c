/* nilbox: the command-line client of nilboxd. See docs/cli.md. */
#include <signal.h>
#include <sodium.h>
#include <stdio.h>

#include "cli/cmd.h"
#include "lib/json.h"

int main(int argc, char **argv)
{
    nb_cli_t cli = {.argv0 = argv[0]};
    /* A daemon that goes away mid-request must give an error, not SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) {
        fprintf(stderr, "nilbox: libsodium failed to initialise\n");
        return NB_CLI_ERROR;
    }
    /* Secret values and passphrases pass through JSON (set, unlock, the
     * unlock offer of `daemon start`): every freed JSON string is wiped. */
    nb_json_wipe_on_free();
    int code = nb_cli_main(&cli, argc - 1, argv + 1);
    fflush(stdout);
    return code;
}
