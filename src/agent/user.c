/* Guest accounts for exec and pty: who a command runs as, and the
 * login-like environment it gets.
 *
 * The agent is a static binary, so it cannot use glibc's NSS (getpwnam
 * would need the shared NSS modules at run time); it reads /etc/passwd and
 * /etc/group itself. Both are small, local, and written by root only, but
 * they are still read with a size cap and parsed defensively. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "lib/err.h"

#define DB_MAX (1024 * 1024)

/* Reads a whole small file into a NUL-terminated malloc()ed buffer. */
static int read_db(const char *path, char **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t cap = 4096, len = 0;
    char *p = malloc(cap + 1);
    int r = -ENOMEM;
    while (p) {
        if (len == cap) {
            if (cap >= DB_MAX) {
                r = NB_ETOOBIG;
                break;
            }
            char *q = realloc(p, cap * 2 + 1);
            if (!q)
                break;
            p = q;
            cap *= 2;
        }
        ssize_t n = read(fd, p + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0) {
            p[len] = '\0';
            close(fd);
            *out = p;
            return 0;
        }
        len += (size_t)n;
    }
    free(p);
    close(fd);
    return r;
}

/* Splits one line into at most `max` ':'-separated fields (in place). */
static size_t fields(char *line, char **f, size_t max)
{
    size_t n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == ':') {
            *p = '\0';
            f[n++] = p + 1;
        }
    return n;
}

static int parse_id(const char *s, unsigned long *out)
{
    char *end;
    if (!*s || *s == '-' || *s == '+')
        return NB_EINVAL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > 0x7fffffffUL)
        return NB_EINVAL;
    *out = v;
    return 0;
}

static int copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return NB_ETOOBIG;
    memcpy(dst, src, n + 1);
    return 0;
}

int nb_agent_user_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= NB_AGENT_USER_NAME_MAX)
        return 0;
    if (!((name[0] >= 'a' && name[0] <= 'z') || name[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              (c == '$' && i == n - 1)))
            return 0;
    }
    return 1;
}

/* Supplementary groups of `u` from /etc/group (best effort: a missing or
 * unreadable file leaves only the primary group). */
static void load_groups(nb_agent_user_t *u)
{
    char *db = NULL;
    u->ngroups = 0;
    if (read_db("/etc/group", &db) < 0)
        return;
    char *save = NULL;
    for (char *line = strtok_r(db, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[4];
        unsigned long gid;
        if (fields(line, f, 4) < 4 || parse_id(f[2], &gid) < 0 || gid == u->gid)
            continue;
        char *msave = NULL;
        for (char *m = strtok_r(f[3], ",", &msave); m; m = strtok_r(NULL, ",", &msave))
            if (!strcmp(m, u->name) && u->ngroups < NB_AGENT_USER_GROUPS_MAX) {
                u->groups[u->ngroups++] = (gid_t)gid;
                break;
            }
    }
    free(db);
}

int nb_agent_user_lookup(const char *name, uid_t uid, nb_agent_user_t *u)
{
    memset(u, 0, sizeof *u);
    char *db = NULL;
    int r = read_db("/etc/passwd", &db);
    if (r < 0)
        return r;
    r = -ENOENT;
    char *save = NULL;
    for (char *line = strtok_r(db, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[7];
        unsigned long pu, pg;
        if (fields(line, f, 7) < 7 || parse_id(f[2], &pu) < 0 || parse_id(f[3], &pg) < 0)
            continue;
        if (name ? strcmp(f[0], name) != 0 : (uid_t)pu != uid)
            continue;
        if (copy_field(u->name, sizeof u->name, f[0]) < 0 ||
            copy_field(u->home, sizeof u->home, f[5][0] == '/' ? f[5] : "/") < 0 ||
            copy_field(u->shell, sizeof u->shell, f[6][0] == '/' ? f[6] : "/bin/sh") < 0) {
            r = NB_ETOOBIG;
            break;
        }
        u->uid = (uid_t)pu;
        u->gid = (gid_t)pg;
        load_groups(u);
        r = 0;
        break;
    }
    free(db);
    return r;
}
