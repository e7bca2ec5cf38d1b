/* Environment checks behind `nilbox doctor` and `GET /v1/doctor`: QEMU,
 * KVM (or the TCG fallback), the keyring provider, free disk, and the
 * state/runtime folders. Shared by nilboxd and the CLI so both report the
 * same thing; the CLI uses the daemon's answer when it runs, and runs the
 * checks itself otherwise.
 *
 * To add a check: write `static void check_x(const nb_home_t *, nb_doctor_result_t *)`
 * in doctor.c and append it to the `checks` table there. */
#ifndef NB_DOCTOR_H
#define NB_DOCTOR_H

#include <jansson.h>

#include "host/home.h"

typedef enum {
    NB_DOCTOR_OK = 0,
    NB_DOCTOR_WARN = 1,
    NB_DOCTOR_FAIL = 2,
} nb_doctor_status_t;

typedef struct {
    nb_doctor_status_t status;
    char message[512]; /* what we found */
    char hint[512];    /* what to do about it ("" when nothing) */
} nb_doctor_result_t;

/* Runs every check and returns a new JSON object (caller decrefs):
 *   {"ok": bool, "checks": [{"name","status":"ok|warn|fail","message","hint"}]}
 * "ok" is false when any check failed (warnings keep it true). Blocking
 * (stat, statvfs, a D-Bus call with a 2 s timeout): in the daemon, call it
 * from a pool thread. NULL only on out-of-memory. */
json_t *nb_doctor_run(const nb_home_t *h);

/* Appends one check result to a report built by nb_doctor_run() (used by
 * the CLI for its own "daemon" check). Updates "ok". */
void nb_doctor_add(json_t *report, const char *name, const nb_doctor_result_t *res);

/* Looks `name` up in $PATH (else /usr/local/bin:/usr/bin:/bin), as the VM
 * manager will when it runs it: 1 with the executable's path in out, or 0
 * with out empty. */
int nb_doctor_find_in_path(const char *name, char *out, size_t outsz);

#endif
