/* LD_PRELOAD shim for tests: this kernel has no SCTP, and osmo-msc exits when it cannot open
 * its SGs (SCTP) server. Turn SCTP sockets into TCP ones and accept SCTP-level socket options
 * as no-ops, so osmo-msc starts; SGs and the A interface are not used by the tests. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
	static int (*real_socket)(int, int, int);
	if (!real_socket)
		real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	if (protocol == IPPROTO_SCTP) {
		int flags = type & (SOCK_NONBLOCK | SOCK_CLOEXEC);
		return real_socket(domain, SOCK_STREAM | flags, IPPROTO_TCP);
	}
	return real_socket(domain, type, protocol);
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
	static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
	if (!real_setsockopt)
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
	if (level == IPPROTO_SCTP)
		return 0;
	return real_setsockopt(fd, level, name, value, len);
}
