#!/usr/bin/env bash
# Install the Debian packages a real local node needs, when they are missing:
# the Docker engine (image builds), containerd and runc (the kubelet's runtime),
# the CNI plugins, iptables/conntrack (kube-proxy), debootstrap (the Python base
# image), iproute2, and gcc with libc6-dev (the static pause program). Idempotent: returns at once when everything is there.
#
#   hack/install-node-deps.sh          the real node's packages
#   hack/install-node-deps.sh --kind   and podman, netavark, aardvark-dns (kind's nodes: privileged
#                                      containers, which Debian's Docker cannot run here; docs/kind.md)
set -euo pipefail

log() { echo "[node-deps $(date +%H:%M:%S)] $*" >&2; }

# command -> Debian package
declare -A NEED=(
  [dockerd]=docker.io
  [containerd]=containerd
  [runc]=runc
  [debootstrap]=debootstrap
  [iptables]=iptables
  [conntrack]=conntrack
  [ip]=iproute2
  [ethtool]=ethtool
  [socat]=socat
  [gcc]=gcc
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || missing+=("${NEED[$cmd]}")
done
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
if [[ "${1:-}" == "--kind" ]]; then
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  [[ -x /usr/lib/podman/netavark ]] || missing+=(netavark)
  [[ -x /usr/lib/podman/aardvark-dns ]] || missing+=(aardvark-dns)
fi
# the pause image is a static C program of ours
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "these Debian packages are missing and installing them needs root: ${missing[*]}"
  exit 1
fi
log "installing Debian packages: ${missing[*]} (about a minute the first time)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/wsgauge-apt.log 2>&1; then
  log "apt-get install failed; updating the package lists and trying again"
  apt-get update >>/tmp/wsgauge-apt.log 2>&1
  apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/wsgauge-apt.log 2>&1 || {
    log "apt-get install failed; see /tmp/wsgauge-apt.log"; tail -20 /tmp/wsgauge-apt.log >&2; exit 1; }
fi
# Debian's packages start nothing here (no systemd); the devcluster starts what it needs.
log "installed: ${missing[*]}"
