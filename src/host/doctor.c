#include "host/doctor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "host/accel.h"

#ifdef NB_HAVE_GIO
#include <gio/gio.h>
#endif

typedef void (*check_fn)(const nb_home_t *h, nb_doctor_result_t *res);

static void set(nb_doctor_result_t *res, nb_doctor_status_t st, const char *hint, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));

static void set(nb_doctor_result_t *res, nb_doctor_status_t st, const char *hint, const char *fmt,
                ...)
{
    va_list ap;
    res->status = st;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
    snprintf(res->hint, sizeof res->hint, "%s", hint ? hint : "");
}

int nb_doctor_find_in_path(const char *name, char *out, size_t outsz)
{
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path ? path : "/usr/local/bin:/usr/bin:/bin");
    for (char *p = buf, *next; p; p = next) {
        next = strchr(p, ':');
        if (next)
            *next++ = '\0';
        if (!*p)
            continue;
        int n = snprintf(out, outsz, "%s/%s", p, name);
        if (n > 0 && (size_t)n < outsz && access(out, X_OK) == 0)
            return 1;
    }
    out[0] = '\0';
    return 0;
}

static void check_qemu(const nb_home_t *h, nb_doctor_result_t *res)
{
    char sys[1024], img[1024];
    const char *q = getenv("NILBOX_QEMU");
    int have_sys = q && q[0] ? snprintf(sys, sizeof sys, "%s", q) > 0 && access(sys, X_OK) == 0
                             : nb_doctor_find_in_path("qemu-system-x86_64", sys, sizeof sys);
    int have_img = nb_doctor_find_in_path("qemu-img", img, sizeof img);
    if (have_sys && have_img)
        set(res, NB_DOCTOR_OK, NULL, "QEMU found: %s and %s", sys, img);
    else
        set(res, NB_DOCTOR_FAIL,
            "install QEMU: sudo apt-get install qemu-system-x86 qemu-utils "
            "(or run ./scripts/install-deps.sh)",
            "%s not found in PATH; VMs cannot start",
            !have_sys ? "qemu-system-x86_64" : "qemu-img");
}

/* Whether VMs get KVM: the same answer the VM manager uses for `auto`
 * (accel.h): the device must open, and the probe (cached per host key) must
 * boot the tiny kernel under KVM. Messages start with "kvm ok", "kvm present
 * but unusable: <QEMU's line>" or "no kvm" (scripts match on them). */
static void check_kvm(const nb_home_t *h, nb_doctor_result_t *res)
{
    const char *tcg = "VMs will run under TCG software emulation (works, but several times slower)";
    char qemu[1024];
    const char *q = getenv("NILBOX_QEMU");
    if (!(q && q[0]) && nb_doctor_find_in_path("qemu-system-x86_64", qemu, sizeof qemu))
        q = qemu;
    nb_kvm_probe_opts_t o = {.home = h->home, .qemu = q && q[0] ? q : NULL};
    nb_kvm_status_t st;
    if (nb_kvm_status(&o, &st) < 0) {
        set(res, NB_DOCTOR_WARN, NULL, "kvm not checked: out of memory");
        return;
    }
    switch (st.state) {
    case NB_KVM_OK:
        set(res, NB_DOCTOR_OK, NULL, "kvm ok: %s%s: VMs use hardware acceleration", st.detail,
            st.cached ? " (cached result)" : "");
        break;
    case NB_KVM_BROKEN:
        set(res, NB_DOCTOR_WARN,
            "nothing to do: VMs use TCG (the probe runs again when the kernel, QEMU or CPU "
            "changes)",
            "kvm present but unusable: %s: %s", st.detail, tcg);
        break;
    case NB_KVM_UNPROBED:
        set(res, NB_DOCTOR_WARN, "build the tiny image ('nilbox image build tiny') to probe it",
            "kvm present (%s opens), not probed: %s", nb_kvm_device(), st.detail);
        break;
    default:
        if (strstr(st.detail, strerror(EACCES)) || strstr(st.detail, strerror(EPERM)))
            set(res, NB_DOCTOR_WARN,
                "add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again",
                "no kvm: %s: %s", st.detail, tcg);
        else
            set(res, NB_DOCTOR_WARN,
                "enable virtualization (VT-x/AMD-V) in the firmware and load the kvm module "
                "(sudo modprobe kvm_intel or kvm_amd); inside a VM, enable nested virtualization",
                "no kvm: %s: %s", st.detail, tcg);
        break;
    }
}

/* The session bus address, without ever auto-launching a bus (GLib would
 * try dbus-launch on X11). Returns 0 when there is none. */
static int session_bus_address(char *out, size_t outsz)
{
    const char *a = getenv("DBUS_SESSION_BUS_ADDRESS");
    if (a && a[0]) {
        snprintf(out, outsz, "%s", a);
        return 1;
    }
    const char *xrt = getenv("XDG_RUNTIME_DIR");
    char p[1024];
    struct stat st;
    if (xrt && xrt[0] == '/' && snprintf(p, sizeof p, "%s/bus", xrt) < (int)sizeof p &&
        stat(p, &st) == 0 && S_ISSOCK(st.st_mode)) {
        int n = snprintf(out, outsz, "unix:path=%s", p);
        return n > 0 && (size_t)n < outsz;
    }
    return 0;
}

static void check_keyring(const nb_home_t *h, nb_doctor_result_t *res)
{
    const char *fallback = "the master key will be protected by a passphrase (Argon2id) instead, "
                           "or by a 0600 key file if you choose one explicitly";
    char addr[1024];
    if (!session_bus_address(addr, sizeof addr)) {
        set(res, NB_DOCTOR_WARN,
            "to use the OS keyring, run nilbox inside a desktop session (gnome-keyring or "
            "KeePassXC provide the Secret Service)",
            "no D-Bus session bus: %s", fallback);
        return;
    }
#ifdef NB_HAVE_GIO
    GError *e = NULL;
    GDBusConnection *c =
        g_dbus_connection_new_for_address_sync(addr,
                                               G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                                   G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                               NULL, NULL, &e);
    if (!c) {
        set(res, NB_DOCTOR_WARN, "check DBUS_SESSION_BUS_ADDRESS",
            "the D-Bus session bus is not reachable (%s): %s", e ? e->message : "?", fallback);
        g_clear_error(&e);
        return;
    }
    int found = 0;
    GVariant *v = g_dbus_connection_call_sync(
        c, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner",
        g_variant_new("(s)", "org.freedesktop.secrets"), G_VARIANT_TYPE("(b)"),
        G_DBUS_CALL_FLAGS_NONE, 2000, NULL, &e);
    if (v) {
        gboolean owned = FALSE;
        g_variant_get(v, "(b)", &owned);
        found = owned ? 1 : 0;
        g_variant_unref(v);
    }
    g_clear_error(&e);
    if (!found) {
        v = g_dbus_connection_call_sync(c, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "ListActivatableNames", NULL,
                                        G_VARIANT_TYPE("(as)"), G_DBUS_CALL_FLAGS_NONE, 2000, NULL,
                                        &e);
        if (v) {
            GVariantIter *it = NULL;
            const char *name;
            g_variant_get(v, "(as)", &it);
            while (g_variant_iter_loop(it, "&s", &name))
                if (strcmp(name, "org.freedesktop.secrets") == 0)
                    found = 2;
            g_variant_iter_free(it);
            g_variant_unref(v);
        }
        g_clear_error(&e);
    }
    g_dbus_connection_close_sync(c, NULL, NULL);
    g_object_unref(c);
    if (found)
        set(res, NB_DOCTOR_OK, NULL,
            "Secret Service %s on the session bus: the master key "
            "goes to the OS keyring",
            found == 1 ? "is running" : "can be started");
    else
        set(res, NB_DOCTOR_WARN, "install and unlock gnome-keyring (or another Secret Service)",
            "no Secret Service on the session bus: %s", fallback);
#else
    set(res, NB_DOCTOR_WARN, "rebuild with libsecret-1-dev installed",
        "this build has no keyring support: %s", fallback);
#endif
}

/* statvfs on the first existing folder on the way up to `/`. */
static void check_disk(const nb_home_t *h, nb_doctor_result_t *res)
{
    char p[NB_HOME_PATH_MAX];
    struct statvfs sv;
    snprintf(p, sizeof p, "%s", h->home);
    while (statvfs(p, &sv) < 0) {
        char *slash = strrchr(p, '/');
        if (!slash || slash == p) {
            snprintf(p, sizeof p, "/");
            if (statvfs(p, &sv) < 0) {
                set(res, NB_DOCTOR_FAIL, NULL, "cannot read free space: %s", strerror(errno));
                return;
            }
            break;
        }
        *slash = '\0';
    }
    double gib = (double)sv.f_bavail * (double)sv.f_frsize / (1024.0 * 1024 * 1024);
    const char *hint = "free some space, or point NILBOX_HOME at a larger disk";
    if (gib < 0.5)
        set(res, NB_DOCTOR_FAIL, hint,
            "only %.2f GiB free under %s: images and VM disks will not fit", gib, p);
    else if (gib < 4)
        set(res, NB_DOCTOR_WARN, hint,
            "%.1f GiB free under %s: enough for the tiny image, tight for the debian image", gib,
            p);
    else
        set(res, NB_DOCTOR_OK, NULL, "%.1f GiB free under %s", gib, p);
}

/* A folder that exists must be ours, private and writable; one that does
 * not exist yet must be creatable (its nearest existing parent writable). */
static void check_folder(const char *what, const char *dir, nb_doctor_result_t *res)
{
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            set(res, NB_DOCTOR_FAIL, "remove it or choose another path", "%s %s is not a folder",
                what, dir);
        else if (access(dir, W_OK | X_OK) != 0)
            set(res, NB_DOCTOR_FAIL, "fix its owner/permissions (it must be yours, mode 0700)",
                "%s %s is not writable: %s", what, dir, strerror(errno));
        else if (st.st_mode & 077)
            set(res, NB_DOCTOR_WARN, "chmod 700 it (nilboxd tightens it at start)",
                "%s %s is accessible to other users (mode %03o)", what, dir,
                (unsigned)(st.st_mode & 0777));
        else
            set(res, NB_DOCTOR_OK, NULL, "%s %s is private and writable", what, dir);
        return;
    }
    char p[NB_HOME_PATH_MAX];
    snprintf(p, sizeof p, "%s", dir);
    for (;;) {
        char *slash = strrchr(p, '/');
        if (!slash)
            break;
        if (slash == p)
            slash[1] = '\0';
        else
            *slash = '\0';
        if (stat(p, &st) == 0)
            break;
        if (slash == p)
            break;
    }
    if (access(p, W_OK | X_OK) == 0)
        set(res, NB_DOCTOR_OK, NULL, "%s %s will be created at start", what, dir);
    else
        set(res, NB_DOCTOR_FAIL, "set NILBOX_HOME / NILBOX_RUNTIME_DIR to a writable place",
            "%s %s cannot be created: %s is not writable", what, dir, p);
}

static void check_home(const nb_home_t *h, nb_doctor_result_t *res)
{
    check_folder("state folder", h->home, res);
}

static void check_runtime(const nb_home_t *h, nb_doctor_result_t *res)
{
    check_folder("runtime folder", h->runtime, res);
    if (res->status == NB_DOCTOR_FAIL)
        return;
    /* A stale socket file (daemon killed with SIGKILL) is harmless: the next
     * nilboxd replaces it. Say so rather than leaving the user guessing. */
    struct stat st;
    if (lstat(h->sock, &st) == 0 && !S_ISSOCK(st.st_mode))
        set(res, NB_DOCTOR_FAIL, "remove that file", "%s exists but is not a socket", h->sock);
}

/* The table. Append new checks here; names are stable identifiers that
 * scripts may match on. */
static const struct {
    const char *name;
    check_fn fn;
} checks[] = {
    {"qemu", check_qemu}, {"kvm", check_kvm},   {"keyring", check_keyring},
    {"disk", check_disk}, {"home", check_home}, {"runtime", check_runtime},
};

static const char *status_name(nb_doctor_status_t s)
{
    return s == NB_DOCTOR_OK ? "ok" : s == NB_DOCTOR_WARN ? "warn" : "fail";
}

void nb_doctor_add(json_t *report, const char *name, const nb_doctor_result_t *res)
{
    json_t *arr = json_object_get(report, "checks");
    json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s}", "name", name, "status",
                                         status_name(res->status), "message", res->message, "hint",
                                         res->hint));
    if (res->status == NB_DOCTOR_FAIL)
        json_object_set_new(report, "ok", json_false());
}

json_t *nb_doctor_run(const nb_home_t *h)
{
    json_t *report = json_pack("{s:b, s:[]}", "ok", 1, "checks");
    if (!report)
        return NULL;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        nb_doctor_result_t res;
        memset(&res, 0, sizeof res);
        checks[i].fn(h, &res);
        nb_doctor_add(report, checks[i].name, &res);
    }
    return report;
}
