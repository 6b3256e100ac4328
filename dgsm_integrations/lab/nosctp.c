/* LD_PRELOAD shim for the lab and tests: this kernel has no SCTP. It makes osmo-msc and
 * osmo-stp run with TCP where they ask for SCTP, and keeps M3UA's message boundaries.
 *
 * - socket(..., IPPROTO_SCTP) gives a TCP socket; SCTP socket options are accepted as no-ops,
 *   and read back as zeros.
 * - libosmocore binds and connects SCTP sockets with libsctp's sctp_bindx()/sctp_connectx()
 *   (socket options underneath, which TCP lacks): on a TCP socket they become bind()/connect()
 *   to the first address given (TCP has one address per end).
 * - libosmo-sigtran and libosmo-netif read SCTP with sctp_recvmsg() and expect one whole
 *   message per call, its payload protocol in sinfo_ppid. TCP is a byte stream, so on a TCP
 *   socket sctp_recvmsg() reads exactly one M3UA message (RFC 4666 3.1: the length in the
 *   common header) and reports PPID 3 (M3UA). A header that is not M3UA version 1, or a
 *   length that does not fit the caller's buffer, fails the read with EBADMSG (the caller
 *   drops the connection). DATA is reported on stream 1, everything else on stream 0 (RFC
 *   4666 1.4.7; libosmo-sigtran refuses DATA on stream 0). Waiting for the rest of a message is bounded (RECV_WAIT_MS).
 * - sctp_send() on a TCP socket writes the whole message (bounded wait when the socket is full).
 * SCTP sockets proper (a kernel with SCTP) go to the real libsctp functions. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define RECV_WAIT_MS 2000
#define M3UA_PPID 3
#define M3UA_CLASS_TRANSFER 1

struct sctp_sndrcvinfo; /* opaque here: only sinfo_stream/sinfo_ppid are written, below */

/* the start of struct sctp_sndrcvinfo (linux/sctp.h): stream, ssn, flags, ppid, ... */
struct sndrcv_head {
	uint16_t sinfo_stream;
	uint16_t sinfo_ssn;
	uint16_t sinfo_flags;
	uint32_t sinfo_ppid;
	uint32_t sinfo_context;
	uint32_t sinfo_timetolive;
	uint32_t sinfo_tsn;
	uint32_t sinfo_cumtsn;
	int32_t sinfo_assoc_id;
};

static int is_tcp(int fd)
{
	int proto = 0;
	socklen_t len = sizeof(proto);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0)
		return 0;
	return proto == IPPROTO_TCP;
}

static socklen_t addr_len(const struct sockaddr *sa)
{
	return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

int socket(int domain, int type, int protocol)
{
	static int (*real_socket)(int, int, int);
	if (!real_socket)
		real_socket = (int (*)(int, int, int))next("socket");
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
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))next("setsockopt");
	if (level == IPPROTO_SCTP)
		return 0;
	return real_setsockopt(fd, level, name, value, len);
}

/* SCTP-level options read back (libosmo-netif probes the size of SCTP_EVENTS on a fresh
 * socket and drops accepted connections when that fails): all zero, at most 14 bytes (the
 * size of struct sctp_event_subscribe in Linux's first SCTP releases, which libosmo-netif
 * accepts) */
int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
	static int (*real_getsockopt)(int, int, int, void *, socklen_t *);
	if (!real_getsockopt)
		real_getsockopt = (int (*)(int, int, int, void *, socklen_t *))next("getsockopt");
	if (level == IPPROTO_SCTP && is_tcp(fd)) {
		if (!value || !len) {
			errno = EFAULT;
			return -1;
		}
		if (*len > 14)
			*len = 14;
		memset(value, 0, *len);
		return 0;
	}
	return real_getsockopt(fd, level, name, value, len);
}

int sctp_bindx(int fd, struct sockaddr *addrs, int count, int flags)
{
	if (!is_tcp(fd)) {
		int (*real)(int, struct sockaddr *, int, int) =
			(int (*)(int, struct sockaddr *, int, int))next("sctp_bindx");
		if (!real) {
			errno = ENOSYS;
			return -1;
		}
		return real(fd, addrs, count, flags);
	}
	if (count < 1) {
		errno = EINVAL;
		return -1;
	}
	return bind(fd, addrs, addr_len(addrs));
}

int sctp_connectx(int fd, struct sockaddr *addrs, int count, int *id)
{
	if (!is_tcp(fd)) {
		int (*real)(int, struct sockaddr *, int, int *) =
			(int (*)(int, struct sockaddr *, int, int *))next("sctp_connectx");
		if (!real) {
			errno = ENOSYS;
			return -1;
		}
		return real(fd, addrs, count, id);
	}
	if (count < 1) {
		errno = EINVAL;
		return -1;
	}
	if (id)
		*id = 0;
	return connect(fd, addrs, addr_len(addrs));
}

/* wait until fd is readable (or writable), at most RECV_WAIT_MS; 0 when it is */
static int wait_fd(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };
	int rc;
	do {
		rc = poll(&p, 1, RECV_WAIT_MS);
	} while (rc < 0 && errno == EINTR);
	if (rc == 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	return rc < 0 ? -1 : 0;
}

/* read exactly len bytes; the bytes read, 0 at EOF before any, -1 (errno) otherwise */
static ssize_t read_exact(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t rc = recv(fd, buf + got, len - got, MSG_DONTWAIT);
		if (rc == 0)
			return got == 0 ? 0 : (errno = ECONNRESET, -1);
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -1;
			if (wait_fd(fd, POLLIN) < 0)
				return -1;
			continue;
		}
		got += (size_t)rc;
	}
	return (ssize_t)got;
}

int sctp_recvmsg(int fd, void *msg, size_t len, struct sockaddr *from, socklen_t *fromlen,
		 struct sctp_sndrcvinfo *sinfo, int *msg_flags)
{
	if (!is_tcp(fd)) {
		int (*real)(int, void *, size_t, struct sockaddr *, socklen_t *,
			    struct sctp_sndrcvinfo *, int *) =
			(int (*)(int, void *, size_t, struct sockaddr *, socklen_t *,
				 struct sctp_sndrcvinfo *, int *))next("sctp_recvmsg");
		if (!real) {
			errno = ENOSYS;
			return -1;
		}
		return real(fd, msg, len, from, fromlen, sinfo, msg_flags);
	}
	uint8_t *head = msg;
	if (len < 8) {
		errno = EMSGSIZE;
		return -1;
	}
	ssize_t rc = read_exact(fd, head, 8);
	if (rc <= 0)
		return (int)rc;
	uint32_t total = (uint32_t)head[4] << 24 | (uint32_t)head[5] << 16 |
			 (uint32_t)head[6] << 8 | head[7];
	if (head[0] != 1 || total < 8 || total > len || total > INT32_MAX) {
		errno = EBADMSG;
		return -1;
	}
	rc = read_exact(fd, head + 8, total - 8);
	if (rc < 0 || (rc == 0 && total > 8))
		return rc == 0 ? (errno = ECONNRESET, -1) : (int)rc;
	if (sinfo) {
		struct sndrcv_head *s = (struct sndrcv_head *)sinfo;
		memset(s, 0, sizeof(*s));
		s->sinfo_ppid = htonl(M3UA_PPID);
		/* RFC 4666 1.4.7: DATA never travels on stream 0; libosmo-sigtran answers DATA
		 * "received" on stream 0 with ERR Invalid Stream Identifier (measured) */
		s->sinfo_stream = head[2] == M3UA_CLASS_TRANSFER ? 1 : 0;
	}
	if (msg_flags)
		*msg_flags = MSG_EOR;
	if (from && fromlen)
		getpeername(fd, from, fromlen);
	return (int)total;
}

int sctp_send(int fd, const void *msg, size_t len, const struct sctp_sndrcvinfo *sinfo, int flags)
{
	if (!is_tcp(fd)) {
		int (*real)(int, const void *, size_t, const struct sctp_sndrcvinfo *, int) =
			(int (*)(int, const void *, size_t, const struct sctp_sndrcvinfo *, int))
				next("sctp_send");
		if (!real) {
			errno = ENOSYS;
			return -1;
		}
		return real(fd, msg, len, sinfo, flags);
	}
	size_t sent = 0;
	while (sent < len) {
		ssize_t rc = send(fd, (const uint8_t *)msg + sent, len - sent,
				  MSG_DONTWAIT | MSG_NOSIGNAL);
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -1;
			if (wait_fd(fd, POLLOUT) < 0)
				return -1;
			continue;
		}
		sent += (size_t)rc;
	}
	return (int)len;
}
