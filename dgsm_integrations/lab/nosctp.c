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
 *   4666 1.4.7; libosmo-sigtran refuses DATA on stream 0), with association id 1 (newer
 *   libosmo-netif takes id 0 for "no sndrcvinfo"). Waiting for the rest of a message is
 *   bounded (RECV_WAIT_MS).
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
#define MAX_FDS 65536
#define M3UA_PPID 3
#define M3UA_CLASS_TRANSFER 1
#define SCTP_SNDRCV_CMSG 1 /* SCTP_SNDRCV in linux/sctp.h */

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

/* the descriptors that were SCTP sockets before the shim made them TCP (socket(), and what
 * accept() gives for them); plain recvmsg() frames M3UA on these only */
static unsigned char was_sctp[MAX_FDS / 8];

static void mark(int fd, int on)
{
	if (fd < 0 || fd >= MAX_FDS)
		return;
	if (on)
		was_sctp[fd / 8] |= (unsigned char)(1u << (fd % 8));
	else
		was_sctp[fd / 8] &= (unsigned char)~(1u << (fd % 8));
}

static int marked(int fd)
{
	return fd >= 0 && fd < MAX_FDS && (was_sctp[fd / 8] >> (fd % 8)) & 1;
}

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
		int fd = real_socket(domain, SOCK_STREAM | flags, IPPROTO_TCP);
		mark(fd, 1);
		return fd;
	}
	int fd = real_socket(domain, type, protocol);
	mark(fd, 0);
	return fd;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	static int (*real_accept)(int, struct sockaddr *, socklen_t *);
	if (!real_accept)
		real_accept = (int (*)(int, struct sockaddr *, socklen_t *))next("accept");
	int conn = real_accept(fd, addr, len);
	mark(conn, marked(fd));
	return conn;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
	if (!real_accept4)
		real_accept4 = (int (*)(int, struct sockaddr *, socklen_t *, int))next("accept4");
	int conn = real_accept4(fd, addr, len, flags);
	mark(conn, marked(fd));
	return conn;
}

int close(int fd)
{
	static int (*real_close)(int);
	if (!real_close)
		real_close = (int (*)(int))next("close");
	mark(fd, 0);
	return real_close(fd);
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

/* one whole M3UA message from TCP socket fd into buf (at most len bytes), as SCTP would
 * deliver it: its length, the sndrcvinfo (PPID 3, stream, association 1) and MSG_EOR */
static int recv_m3ua(int fd, void *buf, size_t len, struct sockaddr *from, socklen_t *fromlen,
		     struct sndrcv_head *sinfo, int *msg_flags)
{
	uint8_t *head = buf;
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
		memset(sinfo, 0, sizeof(*sinfo));
		sinfo->sinfo_ppid = htonl(M3UA_PPID);
		/* RFC 4666 1.4.7: DATA never travels on stream 0; libosmo-sigtran answers DATA
		 * "received" on stream 0 with ERR Invalid Stream Identifier (measured) */
		sinfo->sinfo_stream = head[2] == M3UA_CLASS_TRANSFER ? 1 : 0;
		/* a TCP connection is one association: id 1. libosmo-netif 1.6 (osmo-stp 2.3,
		 * osmo-msc 1.16) takes a zero sinfo_assoc_id to mean "the kernel filled in no
		 * sndrcvinfo", logs "sctp_recvmsg without SNDRCV cmsg" and drops the message as
		 * PPID 0 (measured) */
		sinfo->sinfo_assoc_id = 1;
	}
	if (msg_flags)
		*msg_flags = MSG_EOR;
	if (from && fromlen)
		getpeername(fd, from, fromlen);
	return (int)total;
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
	return recv_m3ua(fd, msg, len, from, fromlen, (struct sndrcv_head *)sinfo, msg_flags);
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

/* libosmo-netif 1.6's osmo_io reads SCTP with plain recvmsg() and takes the sndrcvinfo from
 * an SCTP_SNDRCV control message (osmo-stp 2.3, osmo-msc 1.16): on a descriptor that was an
 * SCTP socket, one M3UA message into the first buffer, and that control message */
ssize_t recvmsg(int fd, struct msghdr *m, int flags)
{
	static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
	if (!real_recvmsg)
		real_recvmsg = (ssize_t (*)(int, struct msghdr *, int))next("recvmsg");
	if (!marked(fd) || !is_tcp(fd) || !m || m->msg_iovlen < 1)
		return real_recvmsg(fd, m, flags);
	if (flags & MSG_DONTWAIT) {
		/* nothing there yet: say so now, as a non-blocking SCTP socket would */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 0) == 0) {
			errno = EAGAIN;
			return -1;
		}
	}
	struct sndrcv_head sinfo;
	int mflags = 0;
	socklen_t namelen = m->msg_namelen;
	int rc = recv_m3ua(fd, m->msg_iov[0].iov_base, m->msg_iov[0].iov_len,
			   m->msg_name ? (struct sockaddr *)m->msg_name : NULL,
			   m->msg_name ? &namelen : NULL, &sinfo, &mflags);
	if (rc <= 0)
		return rc;
	if (m->msg_name)
		m->msg_namelen = namelen;
	size_t need = CMSG_SPACE(sizeof(sinfo));
	if (m->msg_control && m->msg_controllen >= need) {
		struct cmsghdr *c = (struct cmsghdr *)m->msg_control;
		memset(c, 0, need);
		c->cmsg_level = IPPROTO_SCTP;
		c->cmsg_type = SCTP_SNDRCV_CMSG;
		c->cmsg_len = CMSG_LEN(sizeof(sinfo));
		memcpy(CMSG_DATA(c), &sinfo, sizeof(sinfo));
		m->msg_controllen = need;
	} else {
		m->msg_controllen = 0;
		mflags |= MSG_CTRUNC;
	}
	m->msg_flags = mflags;
	return rc;
}
