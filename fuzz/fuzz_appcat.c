/* libFuzzer target for the app store catalogue (src/daemon/appcat.c).
 *
 * The input is a catalogue document. It goes through nb_appcat_parse (what
 * runs once a signature verified) and must come out consistent: every
 * kept entry is findable by its id and valid again when re-validated from
 * its own serialisation, every refused entry has a reason, and nothing is
 * both. The input is also checked as a signature (hex and raw) against a
 * fixed key: it must never verify. */
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/appcat.h"
#include "lib/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t pk[1][32], sk[64];
    static int init;
    nb_appcat_t cat, again;
    char err[300];
    json_t *e;
    size_t i;
    if (!init) {
        if (sodium_init() < 0)
            abort();
        crypto_sign_keypair(pk[0], sk);
        init = 1;
    }
    if (nb_appcat_verify((const uint8_t *)"doc", 3, data, size, (const uint8_t(*)[32])pk, 1) == 0)
        abort();
    if (nb_appcat_parse(data, size, &cat, err, sizeof err) < 0) {
        if (cat.apps || cat.refused || !err[0])
            abort();
        return 0;
    }
    json_array_foreach (cat.refused, i, e)
        if (!nb_json_str(e, "reason") || !nb_json_str(e, "id"))
            abort();
    json_t *doc =
        json_pack("{s:i, s:s, s:O}", "format", 1, "version", cat.version, "apps", cat.apps);
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!s || nb_appcat_parse((const uint8_t *)s, strlen(s), &again, err, sizeof err) < 0 ||
        json_array_size(again.apps) != json_array_size(cat.apps) ||
        json_array_size(again.refused) != 0)
        abort();
    json_array_foreach (cat.apps, i, e)
        if (nb_appcat_find(&cat, nb_json_str(e, "id")) != e)
            abort();
    free(s);
    nb_appcat_clear(&again);
    nb_appcat_clear(&cat);
    return 0;
}
