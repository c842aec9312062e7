/* Bytes sent per flow, for flow_summary events and the upload detector
 * (docs/attribution.md, "Bytes sent per flow"). Included by egress.bpf.c.
 *
 * `volume` counts what each flow was handed by its senders (the sendmsg
 * return values: payload bytes, before TCP/IP headers and retransmissions),
 * whoever sends: a socket shared by a parent and its child keeps one count.
 * The key is the flow's: for an unconnected UDP socket the destination of each
 * datagram (sendto/sendmsg address, or the message's own address inside a
 * sendmmsg(2)), so bytes are per (local end, destination). A TCP flow that
 * stops sending (FIN sent or reset: it leaves ESTABLISHED / CLOSE_WAIT) gets
 * its end time, so the daemon emits its final summary. */
#pragma once

#define TCP_ESTABLISHED 1
#define TCP_CLOSE_WAIT 8
#define MMSGHDR_SIZE 64 /* struct mmsghdr on 64-bit: user_msghdr (56) + msg_len, padded */

struct vol_val {
	__u64 bytes;
	__u64 first_ns;         /* bpf_ktime_get_boot_ns() */
	__u64 last_ns;
	__u64 end_ns;           /* the TCP flow stopped sending; 0 while it may send */
	__u32 sends;
	__u32 pad;
};

struct mmsg_ctx {
	__u64 vec;              /* struct mmsghdr * of a sendmmsg(2) in progress */
	__u32 vlen;
	__u32 idx;              /* the message the next send is */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct vol_val);
} volume SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);             /* tid inside sendmmsg(2) */
	__type(value, struct mmsg_ctx);
} send_mmsg SEC(".maps");

static __always_inline void count_volume(struct flow_key *k, __s64 sent)
{
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 add = sent > 0 ? sent : 0;
	struct vol_val *v = bpf_map_lookup_elem(&volume, k);

	if (v && !v->end_ns) {
		__sync_fetch_and_add(&v->bytes, add);
		__sync_fetch_and_add(&v->sends, 1);
		v->last_ns = now;
		return;
	}
	/* a new flow, or a new connection on the 5-tuple of one that ended */
	struct vol_val nv = {};
	nv.bytes = add;
	nv.first_ns = now;
	nv.last_ns = now;
	nv.sends = 1;
	if (bpf_map_update_elem(&volume, k, &nv, v ? BPF_ANY : BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&volume, k); /* another CPU made it first */
	if (v) {
		__sync_fetch_and_add(&v->bytes, add);
		__sync_fetch_and_add(&v->sends, 1);
	}
}

static __always_inline bool read_dest(void *uaddr, struct dest *d)
{
	struct sockaddr_storage_min sa = {};

	if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa), uaddr) != 0)
		return false;
	if (sa.family == AF_INET)
		v4_mapped(d->addr, sa.v4);
	else if (sa.family == AF_INET6)
		__builtin_memcpy(d->addr, sa.v6, 16);
	else
		return false;
	d->port = __builtin_bswap16(sa.port);
	d->valid = 1;
	return true;
}

/* The destination of the message a sendmmsg(2) in progress sends now: each
 * message goes through sock_send_length in order, so the count says which. */
static __always_inline bool mmsg_dest(__u32 tid, struct dest *d)
{
	struct mmsg_ctx *m = bpf_map_lookup_elem(&send_mmsg, &tid);
	struct user_msghdr_min h = {};

	if (!m)
		return false;
	__u32 i = m->idx;
	m->idx = i + 1;
	if (i >= m->vlen || bpf_probe_read_user(&h, sizeof(h), (void *)(m->vec + (__u64)i * MMSGHDR_SIZE)) != 0)
		return false;
	return read_dest(h.msg_name, d);
}

SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int on_sendmmsg(struct syscall_enter_ctx *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct mmsg_ctx m = {};

	mark_sending((__u32)ctx->args[0]);
	m.vec = ctx->args[1];
	m.vlen = ctx->args[2];
	bpf_map_update_elem(&send_mmsg, &tid, &m, BPF_ANY);
	bpf_map_delete_elem(&send_dest, &tid); /* no stale sendto address applies to it */
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int on_sendmmsg_exit(struct syscall_exit_ctx *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&send_mmsg, &tid);
	unmark_sending();
	return 0;
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_flow_end(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int oldstate = (int)ctx->args[1];
	int newstate = (int)ctx->args[2];
	struct flow_key k;

	if (oldstate != TCP_ESTABLISHED && oldstate != TCP_CLOSE_WAIT)
		return 0;
	if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE_WAIT)
		return 0;
	/* at CLOSE the port is already released (skc_num 0): inet_sport stays */
	__u16 sport = __builtin_bswap16(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	if (!sock_key_port(sk, &k, sport))
		return 0;
	struct vol_val *v = bpf_map_lookup_elem(&volume, &k);
	if (v && !v->end_ns)
		v->end_ns = bpf_ktime_get_boot_ns();
	return 0;
}
