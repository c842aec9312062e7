/* The maps the capture filter (capture.bpf.c) shares with the attribution
 * programs (egress.bpf.c): the daemon loads egress.bpf.o, then hands these
 * maps' fds to each capture.bpf.o it loads (bpf_map__reuse_fd), so a socket
 * filter knows who owns the socket of a packet.
 *
 * `flows`: the last sender of each socket address (see egress.bpf.c).
 * `watched`: thread group ids of the processes of MCP trees. The daemon adds
 * what its lineage tracker files in a tree; egress.bpf.c adds each child at
 * fork (before it runs) and removes a process when its group leader exits. */
#pragma once

#define FLOWS_MAX 65536
#define WATCHED_MAX 16384

struct flow_key {
	__u8 proto;
	__u8 pad;
	__u16 lport;            /* host order */
	__u16 rport;            /* host order; 0 for an unconnected UDP socket */
	__u16 pad2;
	__u8 laddr[16];         /* IPv4 as ::ffff:a.b.c.d; unspecified as all zero */
	__u8 raddr[16];
};

/* The owner before the last change of owner: a port reused by another process
 * while the daemon has not yet handled the first owner's packets (it reads
 * them up to seconds later under load) leaves them their record. */
struct flow_prev {
	__u32 tgid;
	__u32 pid;
	__u64 start_ns;
	__u64 first_ns;
	__u64 last_ns;
	__u32 ppid;
	__u32 pad;
	__u64 pstart_ns;
	char comm[16];
};

struct flow_val {
	__u32 tgid;
	__u32 pid;
	__u64 start_ns;         /* group leader's start_boottime */
	__u64 first_ns;         /* bpf_ktime_get_boot_ns() */
	__u64 last_ns;
	__u64 bytes;
	__u32 netns;
	__u32 sends;
	char comm[16];
	__u32 ppid;             /* the parent at send time, so a process the daemon */
	__u32 pad;              /* has not heard of yet is tied through its parent */
	__u64 pstart_ns;
	struct flow_prev prev;  /* zero when the address had no owner before */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOWS_MAX);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WATCHED_MAX);
	__type(key, __u32);             /* tgid */
	__type(value, __u8);            /* 1 */
} watched SEC(".maps");
