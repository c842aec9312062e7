// SPDX-License-Identifier: GPL-2.0
/* Send-time socket ownership for egresswatch (see docs/attribution.md).
 *
 * Every socket that sends (TCP connect/sendmsg, UDP sendmsg/sendto, connected
 * or not, IPv4 and IPv6) is recorded in the LRU map `flows`, keyed by its
 * local and remote address as the kernel assigned them, with the sending
 * thread group, thread, the group leader's start time (boot-time ns, as
 * /proc/PID/stat counts it), network namespace and bytes sent. Entries outlive
 * the socket (LRU eviction only), so the daemon finds the owner of a packet
 * whose socket lived a millisecond. The first datagram of each (process,
 * destination) UDP, UDP-Lite or ICMP echo ("ping" socket) flow is also pushed
 * to the ring buffer `udp_events`.
 * At exec, the file name and the first ARGS_MAX bytes of argv are kept in
 * `execs`, read from the new mm before the program runs a single instruction,
 * so a later rewrite of argv/comm cannot hide what was launched. A child of a
 * process in `watched` (an MCP tree, for the capture filter's watched lane)
 * is added to it at fork, before it runs. */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMP 1
#define IPPROTO_ICMPV6 58
#define IPPROTO_UDPLITE 136
#define IPPROTO_MPTCP 262

/* Datagram sockets: UDP, UDP-Lite (any account may open one; its packets are
 * IP protocol 136, which the capture filter does not pass), and ICMP echo
 * ("ping") sockets, which any account may open where net.ipv4.ping_group_range
 * allows it (systemd's default: every group); their local port is the echo
 * identifier. */
static __always_inline bool datagram(__u16 proto)
{
	return proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE || proto == IPPROTO_ICMP ||
	       proto == IPPROTO_ICMPV6;
}
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define ARGS_MAX 512
#define FILENAME_MAX 256

char LICENSE[] SEC("license") = "GPL";

#define S_IFMT 00170000
#define S_IFSOCK 0140000

#include "flowmap.bpf.h"

struct udp_event {
	struct flow_key key;    /* raddr/rport: the datagram's destination */
	struct flow_val val;
};

struct owner {
	__u32 tgid;
	__u32 pid;
	__u64 start_ns;
	char comm[16];
	__u32 ppid;
	__u32 pad;
	__u64 pstart_ns;
};

struct dest {
	__u16 port;
	__u16 valid;
	__u8 addr[16];
};

struct seen_key {
	__u32 tgid;
	__u8 proto;
	__u8 pad;
	__u16 rport;
	__u64 start_ns;
	__u8 raddr[16];
};

struct exec_val {
	__u64 start_ns;         /* group leader's start_boottime */
	__u32 pid;
	__u32 args_len;
	char comm[16];
	char filename[FILENAME_MAX];
	char args[ARGS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);             /* struct sock * of a connect in progress */
	__type(value, struct owner);
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);             /* tid inside connect(2) */
	__type(value, __u64);           /* its struct sock * */
} connect_tid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);             /* tid inside sendto/sendmsg with an address */
	__type(value, struct dest);
} send_dest SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);             /* thread id inside connect(2)/bind(2) */
	__type(value, __u32);           /* the fd */
} udp_fd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);             /* thread id inside sendto/sendmsg/sendmmsg */
	__type(value, __u64);           /* the socket (struct sock *) */
} sending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct seen_key);
	__type(value, __u8);
} udp_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} udp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);             /* tgid */
	__type(value, struct exec_val);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_val);
} exec_blank SEC(".maps");         /* all zero, never written: a new record's start */

static __always_inline void current_owner(struct owner *o)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();

	o->tgid = id >> 32;
	o->pid = (__u32)id;
	o->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	o->ppid = BPF_CORE_READ(task, group_leader, real_parent, tgid);
	o->pstart_ns = BPF_CORE_READ(task, group_leader, real_parent, group_leader, start_boottime);
}

static __always_inline void v4_mapped(__u8 out[16], __be32 v4)
{
	__builtin_memset(out, 0, 16);
	if (v4) {
		out[10] = 0xff;
		out[11] = 0xff;
		__builtin_memcpy(out + 12, &v4, 4);
	}
}

static __always_inline bool is_unspec_mapped(const __u8 a[16])
{
	/* ::ffff:0.0.0.0, what a dual-stack socket may hold before connect */
	for (int i = 0; i < 16; i++) {
		if (i == 10 || i == 11) {
			if (a[i] != 0xff)
				return false;
		} else if (a[i]) {
			return false;
		}
	}
	return true;
}

/* Fills the key from the socket, with local port ``lport``; false when it is
 * not TCP/UDP over IP or the port is 0. */
static __always_inline bool sock_key_port(struct sock *sk, struct flow_key *k, __u16 lport)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);

	if (proto == IPPROTO_MPTCP)
		proto = IPPROTO_TCP;    /* an MPTCP socket's sends: filed and counted under its first subflow */
	if (proto != IPPROTO_TCP && !datagram(proto))
		return false;
	__builtin_memset(k, 0, sizeof(*k));
	k->proto = proto;
	k->lport = lport;
	if (k->lport == 0)
		return false; /* released (a connect that failed) or not bound yet */
	k->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		v4_mapped(k->laddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		v4_mapped(k->raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (family == AF_INET6) {
		bpf_core_read(k->laddr, sizeof(k->laddr), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(k->raddr, sizeof(k->raddr), &sk->__sk_common.skc_v6_daddr);
		if (is_unspec_mapped(k->laddr))
			__builtin_memset(k->laddr, 0, 16);
		if (is_unspec_mapped(k->raddr))
			__builtin_memset(k->raddr, 0, 16);
	} else {
		return false;
	}
	return true;
}

/* Fills the key from the socket; false when it is not TCP/UDP over IP. */
static __always_inline bool sock_key(struct sock *sk, struct flow_key *k)
{
	return sock_key_port(sk, k, BPF_CORE_READ(sk, __sk_common.skc_num));
}

static __always_inline void record(struct sock *sk, struct flow_key *k, struct owner *o, __s64 sent)
{
	__u64 now = bpf_ktime_get_boot_ns();
	struct flow_val *v = bpf_map_lookup_elem(&flows, k);

	if (v && v->tgid == o->tgid && v->start_ns == o->start_ns) {
		v->last_ns = now;
		v->pid = o->pid;
		if (sent > 0)
			__sync_fetch_and_add(&v->bytes, sent);
		if (sent >= 0)
			__sync_fetch_and_add(&v->sends, 1);
		return;
	}
	struct flow_val nv = {};
	if (v) {
		nv.prev.tgid = v->tgid;
		nv.prev.pid = v->pid;
		nv.prev.start_ns = v->start_ns;
		nv.prev.first_ns = v->first_ns;
		nv.prev.last_ns = v->last_ns;
		nv.prev.ppid = v->ppid;
		nv.prev.pstart_ns = v->pstart_ns;
		__builtin_memcpy(nv.prev.comm, v->comm, sizeof(nv.prev.comm));
	}
	nv.tgid = o->tgid;
	nv.pid = o->pid;
	nv.start_ns = o->start_ns;
	nv.first_ns = now;
	nv.last_ns = now;
	nv.bytes = sent > 0 ? sent : 0;
	nv.sends = sent >= 0 ? 1 : 0;
	nv.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	__builtin_memcpy(nv.comm, o->comm, sizeof(nv.comm));
	nv.ppid = o->ppid;
	nv.pstart_ns = o->pstart_ns;
	bpf_map_update_elem(&flows, k, &nv, BPF_ANY);
}

static __always_inline void udp_first(struct flow_key *fk, struct flow_key *k, struct owner *o, __s64 sent)
{
	struct seen_key s = {};
	__u8 one = 1;

	s.tgid = o->tgid;
	s.proto = k->proto;
	s.rport = k->rport;
	s.start_ns = o->start_ns;
	__builtin_memcpy(s.raddr, k->raddr, 16);
	if (bpf_map_update_elem(&udp_seen, &s, &one, BPF_NOEXIST) != 0)
		return; /* this process already sent to this destination */
	struct udp_event *e = bpf_ringbuf_reserve(&udp_events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memcpy(&e->key, k, sizeof(*k));
	struct flow_val *v = bpf_map_lookup_elem(&flows, fk);
	if (v) {
		__builtin_memcpy(&e->val, v, sizeof(*v));
	} else {
		__builtin_memset(&e->val, 0, sizeof(e->val));
		e->val.tgid = o->tgid;
		e->val.pid = o->pid;
		e->val.start_ns = o->start_ns;
	}
	e->val.bytes = sent > 0 ? sent : 0;
	bpf_ringbuf_submit(e, 0);
}

/* The socket behind the calling task's file descriptor, or 0. */
static __always_inline struct sock *fd_sock(__u32 fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	struct file **fds;
	struct file *f = 0;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	return so ? BPF_CORE_READ(so, sk) : 0;
}

/* The calling thread is inside sendto/sendmsg/sendmmsg on this socket: a
 * packet of the socket entering a device queue in this thread is the
 * caller's (a packet that waited for ARP is sent later, from softirq, in
 * whatever task was running: not this one's to file). */
static __always_inline void mark_sending(__u32 fd)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 skp = (__u64)fd_sock(fd);

	if (skp)
		bpf_map_update_elem(&sending, &tid, &skp, BPF_ANY);
}

static __always_inline void unmark_sending(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&sending, &tid);
}

#include "volume.bpf.h"

SEC("raw_tracepoint/sock_send_length")
int on_send(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	__s64 ret = (__s32)ctx->args[1];
	struct flow_key k;
	struct owner o;

	if (ret < 0 || !sock_key(sk, &k))
		return 0;
	current_owner(&o);
	if (datagram(k.proto) && k.rport == 0) {
		/* unconnected: the destination came with sendto/sendmsg; the owner
		 * is filed under the local end alone, the event names the peer */
		__u32 tid = o.pid;
		struct dest *d = bpf_map_lookup_elem(&send_dest, &tid);

		struct flow_key peer;

		record(sk, &k, &o, ret);
		__builtin_memcpy(&peer, &k, sizeof(k));
		struct dest md = {};
		if (d && d->valid) {
			peer.rport = d->port;
			__builtin_memcpy(peer.raddr, d->addr, 16);
			bpf_map_delete_elem(&send_dest, &tid);
		} else if (mmsg_dest(tid, &md)) {
			peer.rport = md.port;
			__builtin_memcpy(peer.raddr, md.addr, 16);
		}
		udp_first(&k, &peer, &o, ret);
		count_volume(&peer, ret);
		return 0;
	}
	record(sk, &k, &o, ret);
	count_volume(&k, ret);
	if (datagram(k.proto))
		udp_first(&k, &k, &o, ret);
	return 0;
}

SEC("raw_tracepoint/net_dev_queue")
int on_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	/* A packet of a local socket entering the device queue, before the
	 * capture taps see it. A UDP datagram gets here from sendmsg(2), in the
	 * sender's task (sock_send_length comes only after the packet left, and
	 * a sender preempted in between would leave its packet to the record of
	 * an earlier socket on the port); a SYN gets here inside connect(2),
	 * whose caller was saved at SYN_SENT. File both before the packet. */
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
	struct sock *sk = BPF_CORE_READ(skb, sk);
	__u64 skp = (__u64)sk;
	struct flow_key k;
	struct owner o, *saved;

	if (!sk || !BPF_CORE_READ(sk, sk_socket, file))
		return 0;       /* none, or a kernel socket (a tunnel's: its task is any) */
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (datagram(proto)) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		__u64 *sending_sk = bpf_map_lookup_elem(&sending, &tid);

		if (!sending_sk || *sending_sk != skp || !sock_key(sk, &k))
			return 0;       /* not sent by this task's send call: on_send files it */
		current_owner(&o);
		record(sk, &k, &o, -1);
	} else if (proto == IPPROTO_TCP && BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_SYN_SENT) {
		saved = bpf_map_lookup_elem(&connecting, &skp);
		if (saved && sock_key(sk, &k))
			record(sk, &k, saved, -1);
	}
	return 0;
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int oldstate = (int)ctx->args[1];
	int newstate = (int)ctx->args[2];
	__u64 skp = (__u64)sk;
	struct flow_key k;

	if (newstate == TCP_SYN_SENT) {
		/* inside connect(2): the caller is the owner; its port is not assigned yet */
		struct owner o;
		__u32 tid;

		current_owner(&o);
		tid = o.pid;
		bpf_map_update_elem(&connecting, &skp, &o, BPF_ANY);
		bpf_map_update_elem(&connect_tid, &tid, &skp, BPF_ANY);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;
	/* SYN_SENT -> ESTABLISHED / CLOSE, in softirq: the owner saved at SYN_SENT */
	struct owner *o = bpf_map_lookup_elem(&connecting, &skp);
	if (o && sock_key(sk, &k))
		record(sk, &k, o, 0);
	bpf_map_delete_elem(&connecting, &skp);
	return 0;
}

SEC("raw_tracepoint/tcp_receive_reset")
int on_reset(struct bpf_raw_tracepoint_args *ctx)
{
	/* a connect refused by a local peer is reset inside connect(2), before
	 * it returns, and the port is released with the CLOSE that follows:
	 * file the socket while its port is still set */
	struct sock *sk = (struct sock *)ctx->args[0];
	__u64 skp = (__u64)sk;
	struct owner *o = bpf_map_lookup_elem(&connecting, &skp);
	struct flow_key k;

	if (o && sock_key(sk, &k))
		record(sk, &k, o, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int on_connect_enter(struct syscall_enter_ctx *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 fd = (__u32)ctx->args[0];

	bpf_map_update_elem(&udp_fd, &tid, &fd, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bind")
int on_bind_enter(struct syscall_enter_ctx *ctx)
{
	return on_connect_enter(ctx);
}

/* A UDP socket connected or bound: file it under its new address before its
 * first datagram. A datagram's record is otherwise written as its send
 * returns, after the packet left: a sender preempted in between (a loaded
 * machine) would leave the packet to the record of an earlier socket of
 * another process on the same port. */
static __always_inline void udp_file(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 *fd = bpf_map_lookup_elem(&udp_fd, &tid);
	struct sock *sk;
	struct flow_key k;
	struct owner o;

	if (!fd)
		return;
	sk = ret == 0 ? fd_sock(*fd) : 0;
	bpf_map_delete_elem(&udp_fd, &tid);
	if (!sk || !datagram(BPF_CORE_READ(sk, sk_protocol)) || !sock_key(sk, &k))
		return;
	current_owner(&o);
	record(sk, &k, &o, -1);
}

SEC("tracepoint/syscalls/sys_exit_bind")
int on_bind_exit(struct syscall_exit_ctx *ctx)
{
	udp_file(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int on_connect_exit(struct syscall_exit_ctx *ctx)
{
	/* the SYN is out and the local port assigned: file the socket now, so
	 * the daemon finds the owner of the SYN itself */
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *skp = bpf_map_lookup_elem(&connect_tid, &tid);

	udp_file(ctx->ret);
	if (!skp)
		return 0;
	struct sock *sk = (struct sock *)*skp;
	struct owner *o = bpf_map_lookup_elem(&connecting, skp);
	struct flow_key k;

	if (o && sock_key(sk, &k))
		record(sk, &k, o, 0);
	bpf_map_delete_elem(&connect_tid, &tid);
	return 0;
}

static __always_inline int save_dest(void *uaddr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sockaddr_storage_min sa = {};
	struct dest d = {};

	if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa), uaddr) != 0) {
		bpf_map_delete_elem(&send_dest, &tid);
		return 0;
	}
	if (sa.family == AF_INET) {
		v4_mapped(d.addr, sa.v4);
	} else if (sa.family == AF_INET6) {
		__builtin_memcpy(d.addr, sa.v6, 16);
	} else {
		bpf_map_delete_elem(&send_dest, &tid);
		return 0;
	}
	d.port = __builtin_bswap16(sa.port);
	d.valid = 1;
	bpf_map_update_elem(&send_dest, &tid, &d, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int on_sendto(struct syscall_enter_ctx *ctx)
{
	mark_sending((__u32)ctx->args[0]);
	return save_dest((void *)ctx->args[4]);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int on_sendto_exit(struct syscall_exit_ctx *ctx)
{
	unmark_sending();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int on_sendmsg_exit(struct syscall_exit_ctx *ctx)
{
	unmark_sending();
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int on_sendmsg(struct syscall_enter_ctx *ctx)
{
	struct user_msghdr_min m = {};

	mark_sending((__u32)ctx->args[0]);
	if (bpf_probe_read_user(&m, sizeof(m), (void *)ctx->args[1]) != 0)
		m.msg_name = 0;
	return save_dest(m.msg_name);
}

SEC("raw_tracepoint/sched_process_exec")
int on_exec(struct bpf_raw_tracepoint_args *ctx)
{
	/* Filled in place in the map's own slot for this tgid: a per-CPU scratch
	 * buffer is shared with any task that preempts this one on the CPU
	 * (PREEMPT kernels) and once carried another exec's argv. The start
	 * time goes in last: until then the record matches no process. */
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 zero = 0;
	struct exec_val *blank = bpf_map_lookup_elem(&exec_blank, &zero);
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct exec_val *v;

	if (!blank || bpf_map_update_elem(&execs, &tgid, blank, BPF_ANY))
		return 0;
	v = bpf_map_lookup_elem(&execs, &tgid);
	if (!v)
		return 0;
	v->pid = (__u32)id;
	bpf_get_current_comm(v->comm, sizeof(v->comm));
	const char *fn = BPF_CORE_READ(bprm, filename);
	if (bpf_probe_read_kernel_str(v->filename, sizeof(v->filename), fn) < 0)
		v->filename[0] = 0;
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	if (len > ARGS_MAX)
		len = ARGS_MAX;
	v->args_len = len;
	if (bpf_probe_read_user(v->args, len, (void *)start) != 0)
		v->args_len = 0;
	v->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	return 0;
}

SEC("raw_tracepoint/sched_process_fork")
int on_proc_fork(struct bpf_raw_tracepoint_args *ctx)
{
	/* a child of an MCP tree's process is in the tree before its first instruction */
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u8 one = 1;

	if (BPF_CORE_READ(child, pid) != ctgid || !bpf_map_lookup_elem(&watched, &ptgid))
		return 0;       /* a thread, or not a tree's */
	bpf_map_update_elem(&watched, &ctgid, &one, BPF_ANY);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int on_proc_exit(struct bpf_raw_tracepoint_args *ctx)
{
	/* its thread group id may be reused by any process from now on */
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (BPF_CORE_READ(task, pid) == tgid)
		bpf_map_delete_elem(&watched, &tgid);
	return 0;
}
