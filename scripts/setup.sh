#!/usr/bin/env bash
# Installs everything egresswatch needs on Debian/Ubuntu: system packages and a
# virtualenv in .venv with the package (editable) and its dev tools.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# `setup.sh` installs what the daemon needs; `setup.sh --test` adds what the
# tests need (an oracle, servers, a desktop session, a container engine).
APT_PACKAGES=(
  libpcap0.8        # scapy compiles BPF filters through libpcap
  iproute2          # ip, for the daemon's interface view and live tests
  build-essential python3-dev  # compile dbus-python
  libdbus-1-dev libglib2.0-dev pkg-config  # build dbus-python for apprise's dbus:// scheme
  python3-venv
  libbpf1           # loads egresswatch/ebpf/egress.bpf.o (send-time attribution) and capture.bpf.o (capture filter); without it: fallback
)
if [ "${1:-}" = "--test" ]; then
  APT_PACKAGES+=(
    tshark            # the independent oracle in conformance tests and benchmarks
    openssl           # TLS server and clients in live tests
    ethtool           # offload switches in the daemon benchmark
    systemd           # systemd-analyze verify of the unit files
    debootstrap systemd-container  # the units under a real systemd: a Debian container booted by systemd-nspawn
    dbus dunst xvfb libnotify-bin  # desktop-notification tests
    docker.io busybox-static  # container attribution tests: a real dockerd, a scratch image
    chromium chromium-driver  # browser tests of `egresswatch ui` (playwright drives Debian's chromium)
    clang llvm libbpf-dev  # rebuild egresswatch/ebpf/*.bpf.o from source (tests/test_ebpf.py, tests/test_capture_ebpf.py)
  )
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]} (run with sudo)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev,desktop,ui]'
  touch "$stamp"
fi
