/* See sockdiag.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host/sockdiag.h"
#include "lib/err.h"

static int fill_id(struct inet_diag_sockid *id, const struct sockaddr_storage *src,
                   const struct sockaddr_storage *dst)
{
    if (src->ss_family != dst->ss_family)
        return NB_EINVAL;
    if (src->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)src, *d = (const void *)dst;
        id->idiag_sport = s->sin_port;
        id->idiag_dport = d->sin_port;
        memcpy(id->idiag_src, &s->sin_addr, 4);
        memcpy(id->idiag_dst, &d->sin_addr, 4);
    } else if (src->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
        id->idiag_sport = s->sin6_port;
        id->idiag_dport = d->sin6_port;
        memcpy(id->idiag_src, &s->sin6_addr, 16);
        memcpy(id->idiag_dst, &d->sin6_addr, 16);
    } else {
        return NB_EINVAL;
    }
    id->idiag_if = 0;
    id->idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    id->idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    return 0;
}

int nb_sockdiag_peer_uid(const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                         uid_t *uid)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 req;
    } q;
    memset(&q, 0, sizeof q);
    q.nlh.nlmsg_len = sizeof q;
    q.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    q.nlh.nlmsg_flags = NLM_F_REQUEST;
    q.nlh.nlmsg_seq = 1;
    q.req.sdiag_family = (uint8_t)peer->ss_family;
    q.req.sdiag_protocol = IPPROTO_TCP;
    q.req.idiag_states = ~0u;
    /* The client's socket: its source is the peer, its destination us. */
    int r = fill_id(&q.req.id, peer, local);
    if (r < 0)
        return r;
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return -errno;
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    if (sendto(fd, &q, sizeof q, 0, (struct sockaddr *)&nl, sizeof nl) != (ssize_t)sizeof q) {
        r = -errno;
        close(fd);
        return r;
    }
    /* One answer: the socket, or an error (ENOENT: not on this host). */
    union {
        struct nlmsghdr h;
        uint8_t b[8192];
    } buf;
    ssize_t n = recv(fd, buf.b, sizeof buf.b, 0);
    r = n < 0 ? -errno : NB_EPROTO;
    close(fd);
    if (n < (ssize_t)sizeof(struct nlmsghdr))
        return r;
    struct nlmsghdr *h = &buf.h;
    if (!NLMSG_OK(h, (size_t)n))
        return NB_EPROTO;
    if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof *e))
            return NB_EPROTO;
        return e->error == -ENOENT ? NB_ENOTFOUND : (e->error ? e->error : NB_EPROTO);
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
        h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
        return NB_EPROTO;
    const struct inet_diag_msg *m = NLMSG_DATA(h);
    /* The kernel matched the 4-tuple; check it answered about that one. */
    if (m->id.idiag_sport != q.req.id.idiag_sport || m->id.idiag_dport != q.req.id.idiag_dport)
        return NB_EPROTO;
    *uid = (uid_t)m->idiag_uid;
    return 0;
}

int nb_sockdiag_self_listens(uint16_t port)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return 0;
    int found = 0;
    struct dirent *de;
    while (!found && (de = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(de->d_name, &end, 10);
        if (*end || fd < 0 || fd == dirfd(dir))
            continue;
        struct stat sb;
        if (fstat((int)fd, &sb) < 0 || !S_ISSOCK(sb.st_mode))
            continue;
        int v = 0, type = 0;
        socklen_t l = sizeof v;
        if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) < 0 || !v)
            continue;
        l = sizeof type;
        if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0 || type != SOCK_STREAM)
            continue;
        struct sockaddr_storage ss;
        l = sizeof ss;
        if (getsockname((int)fd, (struct sockaddr *)&ss, &l) < 0)
            continue;
        if (ss.ss_family == AF_INET)
            found = ntohs(((struct sockaddr_in *)&ss)->sin_port) == port;
        else if (ss.ss_family == AF_INET6)
            found = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) == port;
    }
    closedir(dir);
    return found;
}
