/* nilbox doctor: environment checks, from the daemon when it runs (it
 * knows its own state best), computed locally otherwise. */
#include <stdio.h>
#include <string.h>

#include "cli/client.h"
#include "cli/cmd.h"
#include "host/doctor.h"
#include "lib/json.h"
#include "lib/log.h"

static void print_report(const json_t *rep)
{
    size_t i;
    json_t *c;
    char msg[1024], hint[1024];
    json_array_foreach (json_object_get(rep, "checks"), i, c) {
        const char *m = nb_json_str(c, "message"), *h = nb_json_str(c, "hint");
        m = m ? m : "";
        /* Paths in messages may contain anything; keep the terminal safe. */
        nb_log_escape(msg, sizeof msg, m, strlen(m));
        printf("%-5s %-9s %s\n", nb_json_str(c, "status"), nb_json_str(c, "name"), msg);
        if (h && h[0]) {
            nb_log_escape(hint, sizeof hint, h, strlen(h));
            printf("      %-9s fix: %s\n", "", hint);
        }
    }
}

static int do_doctor(nb_cli_t *cli, const nb_cli_verb_t *v, nb_cli_args_t *a)
{
    nb_client_resp_t resp;
    json_t *rep = NULL;
    int r = nb_client_request(cli->home.sock, "GET", "/v1/doctor", 30000, &resp);
    if (r == 0 && resp.status == 200 && json_is_object(resp.json)) {
        rep = json_incref(resp.json);
    } else {
        rep = nb_doctor_run(&cli->home);
        if (!rep) {
            if (r == 0)
                nb_client_resp_free(&resp);
            return nb_cli_fail(cli, NB_CLI_ERROR, "internal", "out of memory");
        }
        nb_doctor_result_t res = {.status = NB_DOCTOR_WARN};
        snprintf(res.message, sizeof res.message, "nilboxd is not running for %s", cli->home.home);
        snprintf(res.hint, sizeof res.hint,
                 "nothing to do: commands start it on demand ('nilbox daemon start' starts it "
                 "now)");
        nb_doctor_add(rep, "daemon", &res);
    }
    if (r == 0)
        nb_client_resp_free(&resp);
    if (cli->json)
        nb_cli_print_json(rep);
    else
        print_report(rep);
    int ok = nb_json_bool(rep, "ok", 0);
    json_decref(rep);
    return ok ? NB_CLI_OK : NB_CLI_ERROR;
}

static const nb_cli_verb_t self = {
    NULL,
    "check QEMU, KVM, keyring, disk and folders, and say what to fix",
    NULL,
    "Check what nilbox needs on this machine: QEMU, KVM (or the slower TCG fallback), the\n"
    "keyring provider for the master key, free disk in NILBOX_HOME, and the state and runtime\n"
    "folders. Each check says ok, warn or fail and what to do. Exit 1 when a check fails.",
    0,
    0,
    NULL,
    do_doctor,
    0,
};

const nb_cli_noun_t nb_cli_noun_doctor = {
    "doctor", "check this machine for what nilbox needs and say what to fix", NULL, &self};
