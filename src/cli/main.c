/* nilbox: the command-line client of nilboxd. See docs/cli.md. */
#include <signal.h>
#include <sodium.h>
#include <stdio.h>

#include "cli/cmd.h"

int main(int argc, char **argv)
{
    nb_cli_t cli = {.argv0 = argv[0]};
    /* A daemon that goes away mid-request must give an error, not SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) {
        fprintf(stderr, "nilbox: libsodium failed to initialise\n");
        return NB_CLI_ERROR;
    }
    int code = nb_cli_main(&cli, argc - 1, argv + 1);
    fflush(stdout);
    return code;
}
