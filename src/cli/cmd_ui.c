/* nilbox ui: the web UI's address with this daemon's token (in the URL
 * fragment, which browsers never send), or --open to show it in the
 * browser. The token never goes on a command line (other users can read
 * argv): --open writes a small redirect page into the 0700 runtime folder
 * and opens that file instead. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "cli/cmd.h"
#include "lib/json.h"

extern char **environ;

/* The URL with the token from api.json into out; an exit code. */
static int ui_url(nb_cli_t *cli, char *out, size_t outsz)
{
    char *text = NULL;
    json_t *j = NULL;
    char why[128];
    int r = nb_home_read_small(cli->home.api_json, 4096, &text);
    if (r < 0)
        return nb_cli_fail(cli, NB_CLI_UNREACHABLE, "unreachable",
                           "cannot read %s (is nilboxd running with its TCP port?)",
                           cli->home.api_json);
    r = nb_json_parse((nb_iov_t){(const uint8_t *)text, strlen(text)}, &j, why, sizeof why);
    sodium_memzero(text, strlen(text));
    free(text);
    const char *url = r == 0 ? nb_json_str(j, "url") : NULL;
    const char *tok = r == 0 ? nb_json_str(j, "token") : NULL;
    if (!url || !url[0] || !tok) {
        json_decref(j);
        return nb_cli_fail(cli, NB_CLI_ERROR, "no-ui",
                           "the daemon has no web UI listener (started with --api-port -1?)");
    }
    int n = snprintf(out, outsz, "%s#token=%s", url, tok);
    json_decref(j);
    return n > 0 && (size_t)n < outsz ? NB_CLI_OK : NB_CLI_ERROR;
}

static int open_in_browser(nb_cli_t *cli, const char *url)
{
    char page[1024], path[sizeof cli->home.runtime + 32];
    snprintf(path, sizeof path, "%s/ui-open.html", cli->home.runtime);
    int n = snprintf(page, sizeof page,
                     "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" "
                     "content=\"0;url=%s\"><title>nilbox</title>\n",
                     url);
    int r = n > 0 && (size_t)n < sizeof page ? nb_home_write_private(path, page, (size_t)n) : -1;
    sodium_memzero(page, sizeof page);
    if (r < 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "cannot write %s", path);
    char *argv[] = {"xdg-open", path, NULL};
    pid_t pid;
    int e = posix_spawnp(&pid, "xdg-open", NULL, NULL, argv, environ);
    if (e != 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "no-browser",
                           "cannot run xdg-open (%s): open %s in a browser yourself", strerror(e),
                           path);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return nb_cli_fail(cli, NB_CLI_ERROR, "no-browser",
                           "xdg-open failed: open %s in a browser yourself", path);
    fprintf(stderr, "nilbox: opened the web UI in your browser\n");
    return NB_CLI_OK;
}

static int do_ui(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    char url[256];
    int code = ui_url(cli, url, sizeof url);
    if (code != NB_CLI_OK)
        return code;
    if (nb_cli_flag(v, a, "open"))
        code = open_in_browser(cli, url);
    else if (cli->json) {
        json_t *j = json_pack("{s:s}", "url", url);
        nb_cli_print_json(j);
        json_decref(j);
    } else
        printf("%s\n", url);
    sodium_memzero(url, sizeof url);
    return code;
}

static const nb_cli_opt_t ui_opts[] = {
    {"open", 'o', NULL, "open it in the default browser (the token stays off command lines)"},
    {NULL, 0, NULL, NULL},
};

static const nb_cli_verb_t ui_self = {
    NULL,
    "print the web UI's address (with its token) or open it",
    NULL,
    "Print the address of the web UI served by nilboxd, with this start's token in the URL\n"
    "fragment (#token=...; browsers never send the fragment to a server). The token changes at\n"
    "every daemon start. --open shows it in the default browser.",
    0,
    0,
    ui_opts,
    do_ui,
    NB_CLI_NEEDS_DAEMON,
};

const nb_cli_noun_t nb_cli_noun_ui = {"ui", "the web UI: its address, or open it", NULL, &ui_self};
