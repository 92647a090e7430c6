#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for ilanet: system packages, bpffs, then the
# Rust build. Safe to run again; it only installs what is missing.
set -euo pipefail

PACKAGES=(clang-19 llvm-19 libbpf-dev linux-libc-dev gcc-multilib bpftool iperf3 iproute2 iputils-ping protobuf-compiler libprotobuf-dev etcd-server etcd-client iptables util-linux podman runc busybox-static prometheus bird2 frr gobgpd exabgp python3-networking-bagpipe tshark chromium chromium-driver nodejs)

if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# eBPF objects are pinned under bpffs so that programs outlive the process that loaded them.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
	$SUDO mount -t bpf bpf /sys/fs/bpf
fi

# podman's runtime (runc) needs the cgroup filesystem; a minimal root or chroot may lack it.
if ! mountpoint -q /sys/fs/cgroup; then
	$SUDO mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The dashboard's front end (ui/): npm packages from the committed lockfile, bundled into
# ui/dist, which the ilanet binary embeds (its build fails without it). playwright-core from the
# same install drives Debian's chromium in the browser tests. Nothing is fetched at run time.
command -v npm >/dev/null || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm; }
ui_dir="$(cd "$(dirname "$0")/.." && pwd)/ui"
if [ ! -f "$ui_dir/node_modules/.package-lock.json" ] || [ "$ui_dir/package-lock.json" -nt "$ui_dir/node_modules/.package-lock.json" ]; then
	echo "setup: installing the dashboard's npm packages (npm ci)"
	(cd "$ui_dir" && npm ci --no-audit --no-fund)
fi
if [ ! -f "$ui_dir/dist/index.html" ] || [ -n "$(find "$ui_dir/src" "$ui_dir/build.mjs" "$ui_dir/package-lock.json" -newer "$ui_dir/dist/index.html" | head -1)" ]; then
	echo "setup: building the dashboard (npm run build)"
	(cd "$ui_dir" && npm run build)
fi
