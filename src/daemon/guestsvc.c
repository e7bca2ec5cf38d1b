/* Guest services, top: the composition of guest networking
 * (guestsvc_net.c) and guest provisioning (guestsvc_prov.c) over the
 * per-VM table (guestsvc_vm.c): watchers, the VM manager's hooks, dropping
 * a stopped VM's state, lifecycle. See guestsvc.h and
 * docs/internals/guestsvc.md. */
#include "daemon/guestsvc_int.h"

/* ------------------------------------------------------------ per VM */

static void vm_drop(nb_guestsvc_t *g, gvm_t *v)
{
    for (gvm_t **pp = &g->vms; *pp; pp = &(*pp)->next) {
        if (*pp == v) {
            *pp = v->next;
            break;
        }
    }
    if (v->listener) {
        char err[200];
        nb_proxy_t *px = g->engine && !g->freed ? g->engine(g->d, err, sizeof err) : NULL;
        nb_proxy_listener_t *l = px ? nb_proxy_listener_find(px, v->listener) : NULL;
        if (l)
            nb_proxy_listener_close(l);
    }
    nb_fakedns_free(v->dns);
    if (v->prov)
        nb_gsv_prov_orphan(v->prov);
    free(v);
}

/* ------------------------------------------------------------ watchers */

static void on_secrets_changed(void *ud, const nb_secretsvc_snap_t *snap)
{
    nb_guestsvc_t *g = ud;
    /* Every VM whose agent is up gets the new placeholders (and the CA,
     * once the store opened); unchanged content is not rewritten. */
    for (gvm_t *v = g->vms; v; v = v->next)
        if (nb_gsv_session_of(g, v->name))
            nb_gsv_prov_start(g, v);
}

static void on_event(const json_t *ev, void *ud)
{
    nb_guestsvc_t *g = ud;
    const char *type = nb_json_str(ev, "type");
    const char *vm = nb_json_str(ev, "vm");
    if (!type || !vm)
        return;
    if (strcmp(type, "vm.stopped") == 0 || strcmp(type, "vm.crashed") == 0 ||
        strcmp(type, "vm.removed") == 0) {
        /* A new boot starts with an empty guest resolver cache. */
        gvm_t *v = nb_gsv_vm_find(g, vm);
        if (v)
            vm_drop(g, v);
    }
}

static int hook_open(void *ud, const char *vm, nb_muxsess_stream_t *st, const char *service,
                     nb_iov_t args)
{
    return nb_guestsvc_on_open(ud, vm, st, service, args);
}

static void hook_up(void *ud, const char *vm)
{
    nb_guestsvc_provision(ud, vm);
}

static json_t *hook_env(void *ud, const char *vm)
{
    return nb_guestsvc_env_json(ud, vm);
}

/* ------------------------------------------------------------ lifecycle */

static int test_settings(nb_guestsvc_t *g, char *err, size_t errsz)
{
    const char *tm = getenv("NILBOX_TEST_MODE");
    const char *ca = getenv("NILBOX_TEST_UPSTREAM_CA");
    const char *rv = getenv("NILBOX_TEST_RESOLVE");
    if (!tm || strcmp(tm, "1") != 0) {
        if ((ca && *ca) || (rv && *rv))
            nb_log(NB_LOG_WARN, "NILBOX_TEST_UPSTREAM_CA / NILBOX_TEST_RESOLVE ignored: they "
                                "need NILBOX_TEST_MODE=1");
        return 0;
    }
    if (ca && *ca) {
        if (access(ca, R_OK) != 0) {
            snprintf(err, errsz, "NILBOX_TEST_UPSTREAM_CA: cannot read '%.200s'", ca);
            return NB_EINVAL;
        }
        if (!(g->test_ca = strdup(ca)))
            return -ENOMEM;
    }
    if (rv && *rv) {
        const char *s = rv;
        while (*s) {
            const char *c = strchr(s, ',');
            size_t n = c ? (size_t)(c - s) : strlen(s);
            char one[NB_HOSTNAME_BUFSZ + 64];
            if (n >= sizeof one || g->nresolve >= NB_PROXY_MAX_RESOLVE) {
                snprintf(err, errsz, "NILBOX_TEST_RESOLVE: too many or too long entries");
                return NB_EINVAL;
            }
            memcpy(one, s, n);
            one[n] = '\0';
            if (n && nb_proxy_resolve_parse(one, &g->resolve[g->nresolve++]) < 0) {
                snprintf(err, errsz, "NILBOX_TEST_RESOLVE: bad entry '%.100s'", one);
                return NB_EINVAL;
            }
            if (!n)
                g->nresolve--;
            s += n;
            if (*s == ',')
                s++;
        }
    }
    if (g->test_ca || g->nresolve)
        nb_log(NB_LOG_WARN,
               "guest egress in TEST MODE: extra upstream CA %s, %zu resolve "
               "overrides",
               g->test_ca ? g->test_ca : "(none)", g->nresolve);
    return 0;
}

int nb_guestsvc_new(nb_daemon_t *d, nb_guestsvc_engine_fn engine, nb_guestsvc_t **out, char *err,
                    size_t errsz)
{
    *out = NULL;
    nb_guestsvc_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->d = d;
    g->loop = d->loop;
    g->engine = engine;
    int r = test_settings(g, err, errsz);
    if (r < 0) {
        free(g->test_ca);
        free(g);
        return r;
    }
    if (d->secrets)
        g->watch = nb_secretsvc_watch(d->secrets, on_secrets_changed, g);
    if (d->events && (r = nb_events_subscribe(d->events, on_event, g, &g->evsub)) < 0)
        g->evsub = 0;
    if (d->vmm)
        nb_vmm_set_guest(d->vmm, &(nb_vmm_guest_t){hook_open, hook_up, g});
    d->guest.env = hook_env;
    d->guest.ud = g;
    d->guestsvc = g;
    *out = g;
    return 0;
}

void nb_guestsvc_free(nb_guestsvc_t *g)
{
    if (!g || g->freed)
        return;
    nb_daemon_t *d = g->d;
    if (d->guest.ud == g) {
        if (d->vmm)
            nb_vmm_set_guest(d->vmm, NULL);
        d->guest.env = NULL;
        d->guest.ud = NULL;
    }
    if (d->guestsvc == g)
        d->guestsvc = NULL;
    if (d->secrets && g->watch)
        nb_secretsvc_unwatch(d->secrets, g->watch);
    if (d->events && g->evsub)
        nb_events_unsubscribe(d->events, g->evsub);
    g->freed = 1;
    while (g->vms)
        vm_drop(g, g->vms);
    g->live++;
    nb_gsv_unref(g); /* frees now unless bridges or jobs are still closing */
}
