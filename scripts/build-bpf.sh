#!/usr/bin/env bash
# Rebuilds the committed eBPF objects from their C source (clang, libbpf-dev,
# llvm): egresswatch/ebpf/egress.bpf.o (send-time attribution) and
# capture.bpf.o (the capture socket filter). The objects are committed, so
# running the daemon needs neither; the flags make the build reproducible
# (tests/test_ebpf.py and tests/test_capture_ebpf.py rebuild and compare).
# Usage: scripts/build-bpf.sh [OUTPUT [SOURCE]]
#   no argument: rebuild every committed object in place;
#   OUTPUT: build SOURCE (default egress.bpf.c) into OUTPUT.
set -euo pipefail
cd "$(dirname "$0")/../egresswatch/ebpf"
build() {
  clang -O2 -g -target bpf -fdebug-compilation-dir=. -Wall -Werror -c "$1" -o "$2"
  llvm-strip -g "$2"   # drop DWARF; BTF and its CO-RE relocations stay
}
if [ $# -eq 0 ]; then
  for src in egress.bpf.c capture.bpf.c; do build "$src" "${src%.c}.o"; done
else
  build "${2:-egress.bpf.c}" "$1"
fi
