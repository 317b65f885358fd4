#!/usr/bin/env bash
# Build kind and the Go programs a kind node image carries besides Kubernetes (crictl,
# CoreDNS) from their Go modules, one pinned version each, cached by version outside the repo.
#
#   hack/build-kind.sh                  build what is missing, print the bin directory
#   hack/build-kind.sh --print-bin-dir  only print where the binaries live
#
# Environment:
#   WSGAUGE_CACHE     cache root (default ~/.cache/wsgauge)
#   KIND_VERSION      sigs.k8s.io/kind version (default below)
#   CRICTL_VERSION    sigs.k8s.io/cri-tools version (default below)
#   COREDNS_VERSION   github.com/coredns/coredns version (default: the one kubeadm of our
#                     Kubernetes build deploys)
#
# The Kubernetes binaries themselves (kubelet, kubeadm, ...) come from hack/build-k8s.sh.
# First run: a few minutes for kind and crictl, CoreDNS about ten on 2 cores; later runs
# find the binaries and return at once.
set -euo pipefail

KIND_VERSION="${KIND_VERSION:-v0.33.0}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.6}"
CACHE="${WSGAUGE_CACHE:-$HOME/.cache/wsgauge}"
BIN_DIR="$CACHE/bin/kind-${KIND_VERSION}-crictl-${CRICTL_VERSION}-coredns-${COREDNS_VERSION}"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

BINARIES=(kind crictl coredns)
missing=()
for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN_DIR"
  exit 0
fi

log() { echo "[build-kind $(date +%H:%M:%S)] $*" >&2; }
command -v go >/dev/null || { log "go is not installed; it is needed to build kind"; exit 1; }
mkdir -p "$BIN_DIR"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
log "building ${missing[*]} into $BIN_DIR"

# build_one NAME MODULE VERSION PACKAGE LDFLAGS: a throwaway module requiring MODULE@VERSION
# (under $CACHE/build/NAME-VERSION), then go build of PACKAGE.
build_one() {
  local name="$1" module="$2" version="$3" pkg="$4" ldflags="$5"
  [[ -x "$BIN_DIR/$name" ]] && return 0
  local dir="$CACHE/build/$name-$version"
  mkdir -p "$dir"
  if [[ ! -s "$dir/go.sum" ]]; then
    printf 'module wsgauge.local/%sbuild\n\ngo 1.26\n\nrequire %s %s\n' "$name" "$module" "$version" \
      > "$dir/go.mod"
    printf '//go:build tools\n\npackage %sbuild\n\nimport _ "%s"\n' "$name" "$pkg" > "$dir/tools.go"
    log "resolving $module@$version (go mod tidy; downloads its modules the first time)"
    (cd "$dir" && go mod tidy -e >&2)
  fi
  log "compiling $name ($pkg) ..."
  local start=$SECONDS
  ( while sleep 60; do log "  ... still compiling $name ($((SECONDS - start))s)"; done ) &
  local ticker=$!
  if ! (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN_DIR/$name.tmp" "$pkg" >&2); then
    kill "$ticker" 2>/dev/null || true
    log "FAILED to compile $name"
    return 1
  fi
  kill "$ticker" 2>/dev/null || true
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
  log "built $name in $((SECONDS - start))s"
}

build_one kind sigs.k8s.io/kind "$KIND_VERSION" sigs.k8s.io/kind ""
build_one crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl \
  "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
build_one coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns \
  "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"

log "all binaries present in $BIN_DIR"
echo "$BIN_DIR"
