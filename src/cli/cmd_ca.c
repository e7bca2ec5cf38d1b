/* nilbox ca export [FILE] */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cmd.h"
#include "lib/json.h"

static int do_export(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    json_t *res = NULL;
    const char *file = a->npos ? a->pos[0] : "-";
    int code = nb_cli_call(cli, "GET", "/v1/ca", NULL, &res);
    if (code != NB_CLI_OK)
        return code;
    const char *pem = nb_json_str(res, "pem");
    if (!pem || strncmp(pem, "-----BEGIN CERTIFICATE-----", 27) != 0) {
        json_decref(res);
        return nb_cli_fail(cli, NB_CLI_ERROR, "bad_answer", "the daemon sent no certificate");
    }
    if (!strcmp(file, "-")) {
        if (cli->json)
            nb_cli_print_json(res);
        else
            fputs(pem, stdout);
        json_decref(res);
        return NB_CLI_OK;
    }
    /* A certificate is public: 0644, so other tools (and users) may read it. */
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    size_t len = strlen(pem), off = 0;
    while (fd >= 0 && off < len) {
        ssize_t n = write(fd, pem + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        off += (size_t)n;
    }
    if (fd < 0 || off < len || close(fd) < 0) {
        code = nb_cli_fail(cli, NB_CLI_ERROR, "write_failed", "cannot write %s: %s", file,
                           strerror(errno));
        json_decref(res);
        return code;
    }
    if (cli->json) {
        json_t *j = json_pack("{s:s, s:s, s:s}", "file", file, "sha256", nb_json_str(res, "sha256"),
                              "subject", nb_json_str(res, "subject"));
        nb_cli_print_json(j);
        json_decref(j);
    } else {
        printf("wrote the interception CA certificate to %s\nSHA-256 %s\n", file,
               nb_json_str(res, "sha256"));
    }
    json_decref(res);
    return NB_CLI_OK;
}

static const nb_cli_verb_t verbs[] = {
    {"export", "write the interception CA certificate (PEM) to FILE or stdout", "[FILE]",
     "Write the certificate of this install's interception CA (PEM, never its key) to FILE,\n"
     "or to stdout without FILE or with '-'. Host programs that go through 'nilbox proxy'\n"
     "need it in their trust store (e.g. curl --cacert FILE, REQUESTS_CA_BUNDLE).",
     0, 1, NULL, do_export, NB_CLI_NEEDS_DAEMON},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, 0},
};

const nb_cli_noun_t nb_cli_noun_ca = {"ca", "the interception CA certificate", verbs, NULL};
