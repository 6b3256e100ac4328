/* LD_PRELOAD shim for tests: this kernel has no SCTP, and osmo-msc exits when it cannot open
 * its SGs (SCTP) server. Turn SCTP sockets into TCP ones and accept SCTP-level socket options
 * as no-ops, so osmo-msc starts; SGs and the A interface are not used by the tests.
 *
 * libosmocore binds and connects SCTP sockets through libsctp's sctp_bindx()/sctp_connectx(),
 * which are setsockopt() calls at level SOL_SCTP carrying packed socket addresses (measured
 * with osmo-msc 1.9.0 and 1.16.0: as no-ops, SGs listened on 0.0.0.0 at a random port). They
 * become a bind() / connect() to the first address, so SGs listens where it is configured.
 * Built with this host's gcc; the same .so runs in Debian sid's osmo-msc (a newer glibc). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

/* from linux/sctp.h (not needed on the build host otherwise) */
#define SCTP_SOCKOPT_BINDX_ADD 100
#define SCTP_SOCKOPT_CONNECTX_OLD 107
#define SCTP_SOCKOPT_CONNECTX 110

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

/* The length of the first address in a packed sockaddr list of len bytes, or 0. */
static socklen_t first_address(const void *value, socklen_t len)
{
	const struct sockaddr *sa = value;
	socklen_t need;
	if (value == NULL || len < (socklen_t)sizeof(sa->sa_family))
		return 0;
	if (sa->sa_family == AF_INET)
		need = sizeof(struct sockaddr_in);
	else if (sa->sa_family == AF_INET6)
		need = sizeof(struct sockaddr_in6);
	else
		return 0;
	return len >= need ? need : 0;
}

static int already_bound(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return 0;
	if (ss.ss_family == AF_INET)
		return ((struct sockaddr_in *)&ss)->sin_port != 0;
	if (ss.ss_family == AF_INET6)
		return ((struct sockaddr_in6 *)&ss)->sin6_port != 0;
	return 0;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
	static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
	if (!real_setsockopt)
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
	if (level != IPPROTO_SCTP)
		return real_setsockopt(fd, level, name, value, len);
	if (name == SCTP_SOCKOPT_BINDX_ADD) {
		socklen_t alen = first_address(value, len);
		if (alen == 0) {
			errno = EINVAL;
			return -1;
		}
		if (already_bound(fd))  /* more addresses of a multi-homed endpoint: one is enough */
			return 0;
		return bind(fd, value, alen);
	}
	if (name == SCTP_SOCKOPT_CONNECTX || name == SCTP_SOCKOPT_CONNECTX_OLD) {
		socklen_t alen = first_address(value, len);
		if (alen == 0) {
			errno = EINVAL;
			return -1;
		}
		if (connect(fd, value, alen) != 0)
			return -1;  /* errno as connect() set it, EINPROGRESS included */
		return name == SCTP_SOCKOPT_CONNECTX ? 1 : 0;  /* CONNECTX returns an association id */
	}
	return 0;
}
