/* Unit tests for src/host/home: path resolution, private folders, the
 * one-daemon lock and atomic private files. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host/home.h"
#include "lib/err.h"
#include "nbtest.h"

static char dir[] = "/tmp/nb-test-home-XXXXXX";

static void clear_env(void)
{
    unsetenv("NILBOX_HOME");
    unsetenv("NILBOX_RUNTIME_DIR");
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("XDG_DATA_HOME");
}

static void test_resolve(void)
{
    nb_home_t h;
    char err[512], p[NB_HOME_PATH_MAX];
    clear_env();
    setenv("HOME", "/home/alice", 1);
    NB_CHECK_EQ_INT(nb_home_resolve(NULL, &h, err, sizeof err), 0);
    NB_CHECK_STR(h.home, "/home/alice/.local/share/nilbox");
    NB_CHECK(h.home_is_default);
    NB_CHECK_STR(h.runtime, "/home/alice/.local/share/nilbox/run");
    NB_CHECK_STR(h.db, "/home/alice/.local/share/nilbox/state.db");

    char xrt[300], want[340];
    snprintf(xrt, sizeof xrt, "%s/xrt", dir);
    mkdir(xrt, 0700);
    setenv("XDG_DATA_HOME", "/data", 1);
    setenv("XDG_RUNTIME_DIR", xrt, 1);
    NB_CHECK_EQ_INT(nb_home_resolve(NULL, &h, err, sizeof err), 0);
    NB_CHECK_STR(h.home, "/data/nilbox");
    snprintf(want, sizeof want, "%s/nilbox", xrt);
    NB_CHECK_STR(h.runtime, want);
    snprintf(want, sizeof want, "%s/nilbox/nilboxd.sock", xrt);
    NB_CHECK_STR(h.sock, want);

    /* Another home gets its own runtime folder, stable across calls. */
    setenv("NILBOX_HOME", "/tmp/demo/", 1);
    NB_CHECK_EQ_INT(nb_home_resolve(NULL, &h, err, sizeof err), 0);
    NB_CHECK_STR(h.home, "/tmp/demo");
    NB_CHECK(!h.home_is_default);
    snprintf(want, sizeof want, "%s/nilbox-", xrt);
    NB_CHECK(strncmp(h.runtime, want, strlen(want)) == 0 && strlen(h.runtime) == strlen(want) + 12);
    memcpy(p, h.runtime, sizeof p);
    NB_CHECK_EQ_INT(nb_home_resolve("/tmp/demo", &h, err, sizeof err), 0);
    NB_CHECK_STR(h.runtime, p);
    NB_CHECK_EQ_INT(nb_home_resolve("/tmp/other", &h, err, sizeof err), 0);
    NB_CHECK(strcmp(h.runtime, p) != 0);

    /* An XDG_RUNTIME_DIR that does not exist (after su) is not used. */
    setenv("XDG_RUNTIME_DIR", "/nonexistent/run/user/1000", 1);
    NB_CHECK_EQ_INT(nb_home_resolve("/tmp/demo", &h, err, sizeof err), 0);
    NB_CHECK_STR(h.runtime, "/tmp/demo/run");
    setenv("XDG_RUNTIME_DIR", xrt, 1);

    /* NILBOX_HOME pointing at the default is the default. */
    setenv("NILBOX_HOME", "/data/nilbox", 1);
    NB_CHECK_EQ_INT(nb_home_resolve(NULL, &h, err, sizeof err), 0);
    NB_CHECK(h.home_is_default);

    setenv("NILBOX_RUNTIME_DIR", "/r", 1);
    NB_CHECK_EQ_INT(nb_home_resolve("/x", &h, err, sizeof err), 0);
    NB_CHECK_STR(h.sock, "/r/nilboxd.sock");

    char longp[200];
    memset(longp, 'a', sizeof longp);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    setenv("NILBOX_RUNTIME_DIR", longp, 1);
    NB_CHECK_EQ_INT(nb_home_resolve("/x", &h, err, sizeof err), NB_ETOOBIG);
    NB_CHECK(strstr(err, "NILBOX_RUNTIME_DIR") != NULL);

    /* No HOME and no NILBOX_HOME: a clear error. */
    clear_env();
    unsetenv("HOME");
    NB_CHECK_EQ_INT(nb_home_resolve(NULL, &h, err, sizeof err), NB_EINVAL);
    NB_CHECK(strstr(err, "NILBOX_HOME") != NULL);
    NB_CHECK_EQ_INT(nb_home_resolve("/ok", &h, err, sizeof err), 0);
    NB_CHECK_STR(err, "");
}

static void test_prepare_and_lock(void)
{
    nb_home_t h;
    char err[512], home[256], rt[256];
    struct stat st;
    clear_env();
    snprintf(home, sizeof home, "%s/a/b/home", dir);
    snprintf(rt, sizeof rt, "%s/rt", dir);
    setenv("NILBOX_RUNTIME_DIR", rt, 1);
    NB_CHECK_EQ_INT(nb_home_resolve(home, &h, err, sizeof err), 0);
    NB_CHECK_EQ_INT(nb_home_prepare(&h, err, sizeof err), 0);
    NB_CHECK(stat(h.home, &st) == 0 && (st.st_mode & 0777) == 0700);
    NB_CHECK(stat(h.logdir, &st) == 0 && (st.st_mode & 0777) == 0700);
    NB_CHECK(stat(h.runtime, &st) == 0 && (st.st_mode & 0777) == 0700);
    /* A too-open existing folder is tightened. */
    chmod(h.home, 0755);
    NB_CHECK_EQ_INT(nb_home_prepare(&h, err, sizeof err), 0);
    NB_CHECK(stat(h.home, &st) == 0 && (st.st_mode & 0777) == 0700);

    int fd1 = -1, fd2 = -1;
    pid_t holder = -1;
    NB_CHECK_EQ_INT(nb_home_lock_holder(&h, &holder), 0);
    NB_CHECK_EQ_INT(holder, 0);
    NB_CHECK_EQ_INT(nb_home_lock(&h, &fd1, &holder, err, sizeof err), 0);
    NB_CHECK(fd1 >= 0);
    /* OFD locks conflict between two opens even in one process. */
    NB_CHECK_EQ_INT(nb_home_lock(&h, &fd2, &holder, err, sizeof err), NB_ELOCKED);
    NB_CHECK_EQ_INT(fd2, -1);
    NB_CHECK_EQ_INT(holder, getpid());
    NB_CHECK(strstr(err, "already running") != NULL);
    NB_CHECK_EQ_INT(nb_home_lock_holder(&h, &holder), 0);
    NB_CHECK_EQ_INT(holder, getpid());
    NB_CHECK_EQ_INT(nb_home_lock_set_pid(fd1, 4242), 0);
    NB_CHECK_EQ_INT(nb_home_lock_holder(&h, &holder), 0);
    NB_CHECK_EQ_INT(holder, 4242);
    close(fd1);
    NB_CHECK_EQ_INT(nb_home_lock_holder(&h, &holder), 0);
    NB_CHECK_EQ_INT(holder, 0);
    NB_CHECK_EQ_INT(nb_home_lock(&h, &fd2, &holder, err, sizeof err), 0);
    close(fd2);
}

static void test_private_files(void)
{
    char p[256], *s = NULL;
    struct stat st;
    snprintf(p, sizeof p, "%s/f.json", dir);
    NB_CHECK_EQ_INT(nb_home_write_private(p, "{\"a\":1}", 7), 0);
    NB_CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600);
    NB_CHECK_EQ_INT(nb_home_read_small(p, 100, &s), 0);
    NB_CHECK_STR(s, "{\"a\":1}");
    free(s);
    NB_CHECK_EQ_INT(nb_home_read_small(p, 3, &s), NB_ETOOBIG);
    NB_CHECK(s == NULL);
    NB_CHECK_EQ_INT(nb_home_write_private(p, "x", 1), 0);
    NB_CHECK_EQ_INT(nb_home_read_small(p, 100, &s), 0);
    NB_CHECK_STR(s, "x");
    free(s);
    unlink(p);
}

int main(void)
{
    char cmd[300];
    if (!mkdtemp(dir))
        return 2;
    NB_RUN(test_resolve);
    NB_RUN(test_prepare_and_lock);
    NB_RUN(test_private_files);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        return 2;
    NB_TEST_MAIN_END();
}
