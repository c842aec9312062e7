// SPDX-License-Identifier: GPL-2.0
/* The capture filter with flow state (see docs/capture.md), attached with
 * SO_ATTACH_BPF to the daemon's packet socket.
 *
 * It decides every frame exactly as the classic filter of
 * egresswatch/capture/bpf.py (same link types, VLAN tags, fragments, rules 1-5)
 * but for rule 4, the ClientHello continuations: the classic filter is
 * stateless and passes every short PSH segment this host sends, so a bulk
 * upload hands userspace thousands of segments a second. Here the first
 * segment of a ClientHello record that announces more bytes than it carries
 * puts its flow in `hellos` (LRU) with the bytes still missing; a segment of
 * the continuation shape passes only while its flow has bytes missing (and
 * for at most HELLO_TTL_NS), which is what the userspace HelloGate did after
 * the classic filter. With `settings[0]` = 0 the continuation shape passes as
 * in the classic filter (tests compare the two programs frame by frame).
 *
 * The interface's hardware type (the classic SKF_AD_HATYPE load) is read from
 * skb->dev->type with CO-RE: the context of a socket filter is the sk_buff. */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define MAP_ARRAY 2
#define ACCEPT 0x40000          /* bytes kept per packet: a whole TSO/GRO super-packet */
#define CONT_MAX 1200           /* largest continuation segment passed */
#define QUIC_MIN_UDP_LEN (8 + 1200)
#define V6_EXT_MAX 4            /* IPv6 extension headers walked (capture/bpf.py V6_EXT_MAX) */
#define PACKET_OUTGOING 4
#define ARPHRD_ETHER 1
#define ARPHRD_PPP 512
#define ARPHRD_RAWIP 519
#define ARPHRD_TUNNEL 768
#define ARPHRD_TUNNEL6 769
#define ARPHRD_SIT 776
#define ARPHRD_LOOPBACK 772
#define ARPHRD_NONE 0xFFFE
#define HELLO_TTL_NS 5000000000ULL
#define HELLO_FLOWS 4096
#define MAX_RECORD 18432        /* the largest TLS record (2^14 + 2048) */
#define RECORDS_PER_SEGMENT 4   /* handshake records followed through one segment */

/* the stable (uapi) head of struct __sk_buff: the fields read here */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
};

struct net_device___cap {
	unsigned short type;
} __attribute__((preserve_access_index));

struct sk_buff___cap {
	struct net_device___cap *dev;
} __attribute__((preserve_access_index));

char LICENSE[] SEC("license") = "GPL";

#include "flowmap.bpf.h"   /* flows, watched: the daemon hands over egress.bpf.o's */

/* settings[1]: which frames this socket takes (the daemon's two capture lanes) */
#define LANE_ALL 0              /* every frame the rules pass */
#define LANE_MAIN 1             /* ... but those of MCP trees' processes */
#define LANE_WATCHED 2          /* only those of MCP trees' processes */

struct hello_key {
	__u8 src[16];           /* IPv4: the first 4 bytes, the rest zero */
	__u8 dst[16];
	__u16 sport;            /* network order, as in the segment */
	__u16 dport;
	__u32 v6;
};

struct hello_val {
	__u64 expires_ns;       /* bpf_ktime_get_ns() */
	__s64 missing;          /* bytes of the hello record still to come */
};

/* stats indexes */
#define ST_HELLOS 0             /* hello starts that announced more bytes */
#define ST_CONT_PASSED 1        /* segments passed for bytes a flow's records owed */
#define ST_CONT_DROPPED 2       /* segments sent that no record owed (bulk data, dropped) */
#define ST_NO_DEV 3             /* frames whose interface could not be read */
#define ST_WATCHED 4            /* frames of MCP trees' processes (passed or left to the other lane) */
#define ST_BY_CURRENT 5         /* ... of which known by the sending task (no socket record yet) */
#define ST_N 6

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HELLO_FLOWS);
	__type(key, struct hello_key);
	__type(value, struct hello_val);
} hellos SEC(".maps");

struct {
	__uint(type, MAP_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);   /* [0] 1: gate continuations on `hellos`, 0: pass by shape; [1] the lane */
} settings SEC(".maps");

struct {
	__uint(type, MAP_ARRAY);
	__uint(max_entries, ST_N);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &what);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline int ld8(struct __sk_buff *skb, __u32 off, __u32 *out)
{
	__u8 b = 0;
	if (bpf_skb_load_bytes(skb, off, &b, 1))
		return -1;
	*out = b;
	return 0;
}

static __always_inline int ld16(struct __sk_buff *skb, __u32 off, __u32 *out)
{
	__u8 b[2] = {};
	if (bpf_skb_load_bytes(skb, off, b, 2))
		return -1;
	*out = ((__u32)b[0] << 8) | b[1];
	return 0;
}

static __always_inline __u32 hatype(struct __sk_buff *ctx)
{
	struct sk_buff___cap *skb = (void *)ctx;
	struct net_device___cap *dev = 0;
	unsigned short type = 0;

	if (bpf_core_read(&dev, sizeof(dev), &skb->dev) || !dev)
		return 0;
	if (bpf_core_read(&type, sizeof(type), &dev->type))
		return 0;
	return type;
}

static __always_inline int flow_key(struct __sk_buff *skb, __u32 o, __u32 l4, bool v6,
				    struct hello_key *k)
{
	if (v6) {
		if (bpf_skb_load_bytes(skb, o + 8, k->src, 16) ||
		    bpf_skb_load_bytes(skb, o + 24, k->dst, 16))
			return -1;
		k->v6 = 1;
	} else {
		if (bpf_skb_load_bytes(skb, o + 12, k->src, 4) ||
		    bpf_skb_load_bytes(skb, o + 16, k->dst, 4))
			return -1;
	}
	if (bpf_skb_load_bytes(skb, l4, &k->sport, 2) || bpf_skb_load_bytes(skb, l4 + 2, &k->dport, 2))
		return -1;
	return 0;
}

/* A TLS handshake record starts `at` (`left` bytes of the segment from there). */
static __always_inline bool record_at(struct __sk_buff *skb, __u32 at, __u32 left)
{
	__u32 b = 0;

	if (ld8(skb, at, &b) || b != 0x16)
		return false;
	return left == 1 || (!ld8(skb, at + 1, &b) && b == 3);
}

/* Bytes of the record starting `at`, header included; the largest a record may
 * be when the segment cuts its header (the next segments complete it). */
static __always_inline __s64 record_len(struct __sk_buff *skb, __u32 at, __u32 left)
{
	__u32 reclen;

	if (left < 5 || ld16(skb, at + 3, &reclen))
		return 5 + MAX_RECORD;
	return 5 + (__s64)reclen;
}

/* Follows the handshake records through a segment of `plen` payload bytes
 * when `m` bytes of the current record were still to come (0: the flow is
 * between two records). Returns the bytes the last record still owes after
 * this segment, 0 when the segment ends on a record boundary, -1 when the
 * records end here (the rest is not a handshake record). */
static __always_inline __s64 follow(struct __sk_buff *skb, __u32 pay, __u32 plen, __s64 m)
{
	__u32 pos = 0;

	for (int i = 0; i < RECORDS_PER_SEGMENT; i++) {
		if (m > (__s64)(plen - pos))
			return m - (__s64)(plen - pos);
		pos += (__u32)m;
		if (pos >= plen)
			return 0;
		if (!record_at(skb, pay + pos, plen - pos))
			return -1;
		m = record_len(skb, pay + pos, plen - pos);
	}
	return -1;
}

static __always_inline void hello_put(struct hello_key *k, struct hello_val *v, __s64 m)
{
	v->expires_ns = bpf_ktime_get_ns() + HELLO_TTL_NS;
	v->missing = m;
	bpf_map_update_elem(&hellos, k, v, BPF_ANY);
}

/* 3. A record starts this segment. A ClientHello (or a record whose header the
 * segment cuts) that the segment does not finish puts its flow in `hellos`;
 * so does one that ends with the segment, its hello maybe continuing in the
 * next record. */
static __always_inline void hello_start(struct __sk_buff *skb, __u32 o, __u32 l4, bool v6,
					__u32 pay, __u32 plen)
{
	struct hello_key k = {};
	struct hello_val v = {};
	__u32 type;
	__s64 m;

	if (plen >= 6 && (ld8(skb, pay + 5, &type) || type != 1))
		return;
	m = follow(skb, pay, plen, 0);
	if (m < 0 || flow_key(skb, o, l4, v6, &k))
		return;
	hello_put(&k, &v, m);
	if (m > 0)
		count(ST_HELLOS);
}

/* 4. A segment of a flow in `hellos`: 1 when it carries bytes the flow's
 * records owe, whatever its shape or size (the state follows the records);
 * 0 when the flow has no state, or its records ended before this segment. */
static __always_inline int continuation(struct __sk_buff *skb, __u32 o, __u32 l4, bool v6,
					__u32 pay, __u32 plen)
{
	struct hello_key k = {};
	struct hello_val *v;
	__s64 m;

	if (flow_key(skb, o, l4, v6, &k))
		return 0;
	v = bpf_map_lookup_elem(&hellos, &k);
	if (!v)
		return 0;
	if (v->expires_ns < bpf_ktime_get_ns() || (v->missing == 0 && !record_at(skb, pay, plen))) {
		bpf_map_delete_elem(&hellos, &k);
		return 0;
	}
	m = follow(skb, pay, plen, v->missing);
	if (m < 0) {
		bpf_map_delete_elem(&hellos, &k);
	} else {
		v->missing = m;         /* each segment gives the flow HELLO_TTL_NS more */
		v->expires_ns = bpf_ktime_get_ns() + HELLO_TTL_NS;
	}
	count(ST_CONT_PASSED);
	return 1;
}

/* Is a record of `flows` for this socket address owned by a watched process?
 * 1: yes; 0: a record, not watched; -1: no record. Tries the addresses the
 * daemon's attribution tries: connected, unconnected (no remote), wildcard
 * bind, both; any watched owner counts (the watched lane only adds copies). */
static __always_inline int owner_watched(__u8 proto, const __u8 *la, __u16 lport,
					 const __u8 *ra, __u16 rport)
{
	struct flow_key k = {};
	struct flow_val *v;
	int found = -1;

	k.proto = proto;
	k.lport = lport;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (i & 2)
			__builtin_memset(k.laddr, 0, 16);
		else
			__builtin_memcpy(k.laddr, la, 16);
		if (i & 1) {
			__builtin_memset(k.raddr, 0, 16);
			k.rport = 0;
		} else {
			__builtin_memcpy(k.raddr, ra, 16);
			k.rport = rport;
		}
		v = bpf_map_lookup_elem(&flows, &k);
		if (!v)
			continue;
		if (bpf_map_lookup_elem(&watched, &v->tgid) ||
		    (v->prev.tgid && bpf_map_lookup_elem(&watched, &v->prev.tgid)))
			return 1;       /* (the previous owner: its answers after a reuse) */
		found = 0;
	}
	return found;
}

/* Is this packet sent or received by a process of an MCP tree? The local end
 * is the source of what this host sends (and of loopback), the destination of
 * what it receives (and of loopback). A first datagram's or a SYN's record is
 * written after the packet passes the taps: then, with `cur`, the task
 * sending it (bpf_get_current_pid_tgid, socket filters from Linux 6.10) decides. */
static __always_inline bool watched_packet(struct __sk_buff *skb, __u32 o, bool v6, __u8 proto,
					   __u16 sp, __u16 dp, bool sent, bool recvd, bool cur)
{
	__u8 src[16] = {}, dst[16] = {};
	__u32 tgid, what = ST_WATCHED;
	int a = -1;

	if (v6) {
		if (bpf_skb_load_bytes(skb, o + 8, src, 16) || bpf_skb_load_bytes(skb, o + 24, dst, 16))
			return false;
	} else {
		src[10] = src[11] = dst[10] = dst[11] = 0xff;
		if (bpf_skb_load_bytes(skb, o + 12, src + 12, 4) ||
		    bpf_skb_load_bytes(skb, o + 16, dst + 12, 4))
			return false;
	}
	if (sent) {
		a = owner_watched(proto, src, sp, dst, dp);
		if (a > 0)
			goto yes;
	}
	if (recvd && owner_watched(proto, dst, dp, src, sp) > 0)
		goto yes;
	if (!cur || !sent || a >= 0)
		return false;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (!tgid || !bpf_map_lookup_elem(&watched, &tgid))
		return false;
	count(ST_BY_CURRENT);
yes:
	count(what);
	return true;
}

/* The lane's verdict on a frame the rules pass. */
static __always_inline int lane_pass(struct __sk_buff *skb, __u32 o, bool v6, __u8 proto,
				     __u16 sp, __u16 dp, bool sent, bool recvd, bool cur)
{
	__u32 one = 1, *lane = bpf_map_lookup_elem(&settings, &one);

	if (!lane || *lane != LANE_WATCHED)
		return ACCEPT;
	return watched_packet(skb, o, v6, proto, sp, dp, sent, recvd, cur) ? ACCEPT : 0;
}

static __always_inline bool lane_watched_only(void)
{
	__u32 one = 1, *lane = bpf_map_lookup_elem(&settings, &one);

	return lane && *lane == LANE_WATCHED;
}

static __always_inline int filter(struct __sk_buff *skb, bool cur)
{
	__u32 zero = 0, *gate_on;
	__u32 ht, o, et, v, proto, x, l3len, l4, sp, dp, flags, pay, plen, b0, b1 = 0;
	bool v6, sent, recvd, gated;

	ht = hatype(skb);
	if (ht == ARPHRD_LOOPBACK && skb->pkt_type == PACKET_OUTGOING)
		return 0;               /* loopback: keep the host copy only */
	if (ht == ARPHRD_ETHER || ht == ARPHRD_LOOPBACK) {
		o = 14;
		if (ld16(skb, 12, &et))
			return 0;
		if (et == 0x8100 || et == 0x88a8) {
			o = 18;
			if (ld16(skb, 16, &et))
				return 0;
			if (et == 0x8100) {
				o = 22;
				if (ld16(skb, 20, &et))
					return 0;
			}
		}
		if (et == 0x0800)
			v6 = false;
		else if (et == 0x86DD)
			v6 = true;
		else
			return 0;
	} else if (ht == ARPHRD_NONE || ht == ARPHRD_PPP || ht == ARPHRD_RAWIP ||
		   ht == ARPHRD_TUNNEL || ht == ARPHRD_TUNNEL6 || ht == ARPHRD_SIT) {
		o = 0;
		if (ld8(skb, 0, &v))
			return 0;
		if ((v & 0xF0) == 0x40)
			v6 = false;
		else if ((v & 0xF0) == 0x60)
			v6 = true;
		else
			return 0;
	} else {
		if (ht == 0)
			count(ST_NO_DEV);
		return 0;
	}

	if (!v6) {
		if (ld16(skb, o + 6, &v))
			return 0;
		if (v & 0x1FFF) {       /* non-first fragment: keep UDP (DNS answer tails) */
			if (ld8(skb, o + 9, &proto) || lane_watched_only())
				return 0;       /* no ports: the main lane's */
			return proto == 17 ? ACCEPT : 0;
		}
		if (ld8(skb, o + 9, &proto) || (proto != 17 && proto != 6))
			return 0;
		if (ld8(skb, o, &v) || ld16(skb, o + 2, &l3len))
			return 0;
		x = (v & 0xF) * 4;
	} else {
		if (ld8(skb, o + 6, &proto))
			return 0;
		x = 40;
		/* hop-by-hop, routing and destination-options headers: an unprivileged
		 * socket may add a routing header (IPV6_RTHDR, segment routing) to every
		 * packet it sends, as the classic filter walks them too */
#pragma unroll
		for (int i = 0; i < V6_EXT_MAX; i++) {
			if (proto != 0 && proto != 43 && proto != 60)
				break;
			if (ld8(skb, o + x, &proto) || ld8(skb, o + x + 1, &v))
				return 0;
			x += (v + 1) * 8;
		}
		if (proto == 44) {      /* fragment header: keep UDP */
			if (ld8(skb, o + x, &v) || lane_watched_only())
				return 0;
			return v == 17 ? ACCEPT : 0;
		}
		if (proto != 17 && proto != 6)
			return 0;
		if (ld16(skb, o + 4, &l3len))
			return 0;
		l3len += 40;
	}
	l4 = o + x;

	sent = skb->pkt_type == PACKET_OUTGOING || ht == ARPHRD_LOOPBACK;
	recvd = skb->pkt_type != PACKET_OUTGOING;
#define PASS lane_pass(skb, o, v6, proto, sp, dp, sent, recvd, cur)

	/* 1. DNS, UDP or TCP */
	if (ld16(skb, l4, &sp))
		return 0;
	if (ld16(skb, l4 + 2, &dp))     /* as the classic rule: source port 53 is enough */
		return sp == 53 && !lane_watched_only() ? ACCEPT : 0;
	if (sp == 53 || dp == 53)
		return PASS;

	if (proto == 17) {      /* 5. QUIC long header in a padded datagram */
		if (ld8(skb, l4 + 8, &v) || (v & 0xC0) != 0xC0)
			return 0;
		if (ld16(skb, l4 + 4, &v))
			return 0;
		return v >= QUIC_MIN_UDP_LEN ? PASS : 0;
	}

	if (ld8(skb, l4 + 13, &flags))
		return 0;
	gate_on = bpf_map_lookup_elem(&settings, &zero);
	gated = gate_on && *gate_on;
	if (ld8(skb, l4 + 12, &v))
		return (flags & 0x12) == 0x02 ? PASS : 0;
	x += (v >> 2) & 0x3C;   /* payload offset from o */
	plen = l3len - x;       /* wraps huge when malformed, as in the classic filter */
	pay = o + x;
	if ((flags & 0x12) == 0x02) {   /* 2. SYN without ACK */
		/* TCP Fast Open: a hello in the SYN, its continuations after it */
		if (gated && sent && plen > 0 && plen < ACCEPT && record_at(skb, pay, plen))
			hello_start(skb, o, l4, v6, pay, plen);
		return PASS;
	}
	if (plen == 0)
		return 0;
	if (ld8(skb, pay, &b0))
		return 0;
	/* 4. (gated) the bytes a flow's handshake records still owe, whatever the segment's shape */
	if (gated && sent && continuation(skb, o, l4, v6, pay, plen))
		return PASS;
	/* 3. a TLS handshake record starts here (or its first byte alone) */
	if (b0 == 0x16) {
		if (plen == 1)
			b1 = 3;
		else if (ld8(skb, pay + 1, &b1))
			return 0;
		if (b1 == 3) {
			if (gated && sent)
				hello_start(skb, o, l4, v6, pay, plen);
			return PASS;
		}
	}
	if (gated) {
		if (sent)
			count(ST_CONT_DROPPED);
		return 0;
	}
	/* 4. (not gated) continuation shape: PSH, sent by this host, short, not another TLS record, not SSH */
	if (!(flags & 0x08) || !sent || plen > CONT_MAX)
		return 0;
	if (plen > 1) {
		if (ld8(skb, pay + 1, &b1))
			return 0;
		if (b1 == 3 && (b0 == 0x14 || b0 == 0x15 || b0 == 0x17))
			return 0;
	}
	if (sp == 22 || dp == 22)
		return 0;
	return PASS;
#undef PASS
}

SEC("socket")
int capture_filter(struct __sk_buff *skb)
{
	return filter(skb, false);
}

/* The same, knowing the sending task: the watched lane's choice where the kernel allows it */
SEC("socket")
int capture_filter_cur(struct __sk_buff *skb)
{
	return filter(skb, true);
}
