"""Kernel-side socket ownership: an eBPF object (egress.bpf.c, built with
clang, committed as egress.bpf.o) loaded through libbpf, and the readers of
its maps. See docs/attribution.md ("Send-time ownership")."""
