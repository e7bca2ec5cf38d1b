/* Guest services, bottom: the per-VM table and the service's reference
 * count, used by guest networking (guestsvc_net.c), guest provisioning
 * (guestsvc_prov.c) and their composition (guestsvc.c); calls neither. */
#include "daemon/guestsvc_int.h"

/* ------------------------------------------------------------ per VM */

gvm_t *nb_gsv_vm_find(nb_guestsvc_t *g, const char *name)
{
    for (gvm_t *v = g->vms; v; v = v->next)
        if (strcmp(v->name, name) == 0)
            return v;
    return NULL;
}

gvm_t *nb_gsv_vm_get(nb_guestsvc_t *g, const char *name)
{
    gvm_t *v = nb_gsv_vm_find(g, name);
    if (v)
        return v;
    if (strlen(name) >= sizeof v->name || !nb_rules_vm_valid(name))
        return NULL;
    if (!(v = calloc(1, sizeof *v)))
        return NULL;
    snprintf(v->name, sizeof v->name, "%s", name);
    if (nb_fakedns_new(NULL, &v->dns) < 0) {
        free(v);
        return NULL;
    }
    v->next = g->vms;
    g->vms = v;
    return v;
}

/* ------------------------------------------------------------ references */

void nb_gsv_unref(nb_guestsvc_t *g)
{
    g->live--;
    if (g->freed && g->live == 0) {
        free(g->test_ca);
        free(g);
    }
}
