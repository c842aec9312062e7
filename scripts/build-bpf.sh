#!/usr/bin/env bash
# Rebuilds egresswatch/ebpf/egress.bpf.o from egress.bpf.c (clang, libbpf-dev,
# llvm). The object is committed, so running the daemon needs neither; the
# flags make the build reproducible (tests/test_ebpf.py rebuilds and compares).
# Usage: scripts/build-bpf.sh [OUTPUT]   (default: the committed object)
set -euo pipefail
cd "$(dirname "$0")/../egresswatch/ebpf"
out=${1:-egress.bpf.o}
clang -O2 -g -target bpf -fdebug-compilation-dir=. -Wall -Werror -c egress.bpf.c -o "$out"
llvm-strip -g "$out"   # drop DWARF; BTF and its CO-RE relocations stay
