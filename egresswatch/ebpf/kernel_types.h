/* The few kernel types egress.bpf.c reads, declared by hand for CO-RE.
 *
 * Only the fields used are listed; preserve_access_index makes clang emit
 * BTF relocations by *name*, and libbpf resolves them against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux) at load time, whatever the real
 * layout. Hand-written (instead of a bpftool-generated vmlinux.h) so the
 * object built from this source does not depend on the build machine's
 * kernel and can be rebuilt byte for byte (tests/test_ebpf.py). */
#pragma once

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef int pid_t;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum { BPF_ANY = 0, BPF_NOEXIST = 1 };

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} __attribute__((preserve_access_index)) possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct socket;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_type;
	__u16 sk_protocol;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct net *net_ns;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct task_struct {
	pid_t pid;
	pid_t tgid;
	__u64 start_boottime;
	struct task_struct *group_leader;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	struct nsproxy *nsproxy;
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
	struct file *file;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

/* syscalls:sys_enter_* / sys_exit_* tracepoint records (stable ABI of the
 * tracefs format files; common header is 8 bytes, then syscall nr) */
struct syscall_enter_ctx {
	__u64 common;
	long nr;
	unsigned long args[6];
};
struct syscall_exit_ctx {
	__u64 common;
	long nr;
	long ret;
};

struct sockaddr_storage_min {
	__u16 family;
	__be16 port;
	__be32 v4;            /* sockaddr_in.sin_addr; sockaddr_in6.sin6_flowinfo */
	__u8 v6[16];          /* sockaddr_in6.sin6_addr */
};

struct user_msghdr_min {
	void *msg_name;
	int msg_namelen;
};
