/* Who is at the other end of a loopback TCP connection, and does this
 * process itself listen on a port: the two questions port mappings and
 * host-service grants ask the kernel (THREATS.md A26, A14).
 *
 * Blocking but quick (one netlink round trip; one pass over /proc/self/fd):
 * fine on the loop thread for one accepted connection. */
#ifndef NB_SOCKDIAG_H
#define NB_SOCKDIAG_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* The owner uid of the socket whose local address is `peer` and whose
 * remote address is `local`: the client end of a TCP connection this host
 * accepted on `local` from `peer` (both AF_INET or both AF_INET6). Asks
 * the kernel through NETLINK_SOCK_DIAG. 0 with *uid set; NB_ENOTFOUND
 * when no such socket exists here (the client is on another host or in
 * another network namespace); another negative code on failure. */
int nb_sockdiag_peer_uid(const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                         uid_t *uid);

/* 1 when this process holds a listening TCP socket on `port` (any local
 * address, IPv4 or IPv6), else 0. Reads /proc/self/fd. */
int nb_sockdiag_self_listens(uint16_t port);

#endif
