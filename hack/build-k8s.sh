#!/usr/bin/env bash
# Build the real Kubernetes control-plane binaries (and the node's kubelet,
# kube-proxy, kubeadm, and etcd, helm) from Go
# modules, for one pinned release, and cache them by version outside the repo.
#
#   hack/build-k8s.sh            build what is missing, print the bin directory
#   hack/build-k8s.sh --print-bin-dir   only print where the binaries live
#
# Environment:
#   WSGAUGE_CACHE        cache root (default ~/.cache/wsgauge)
#   K8S_VERSION          k8s.io/kubernetes version (default below)
#   HELM_VERSION         helm.sh/helm/v3 version (default below)
#
# The first run on a machine downloads the modules and compiles (tens of
# minutes on 2 cores); later runs find the binaries and return at once.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${WSGAUGE_CACHE:-$HOME/.cache/wsgauge}"
BIN_DIR="$CACHE/bin/k8s-${K8S_VERSION}-helm-${HELM_VERSION}"
BUILD_DIR="$CACHE/build/k8s-${K8S_VERSION}"
HELM_BUILD_DIR="$CACHE/build/helm-${HELM_VERSION}"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kubeadm etcd helm)
missing=()
for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN_DIR"
  exit 0
fi

log() { echo "[build-k8s $(date +%H:%M:%S)] $*" >&2; }
command -v go >/dev/null || { log "go is not installed; it is needed to build Kubernetes"; exit 1; }
mkdir -p "$BIN_DIR" "$BUILD_DIR" "$HELM_BUILD_DIR"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
log "building ${missing[*]} for Kubernetes $K8S_VERSION into $BIN_DIR"

# ---- the throwaway module for kubernetes + etcd -------------------------
staging_version="v0.${K8S_VERSION#v1.}"
if [[ ! -f "$BUILD_DIR/go.sum" ]]; then
  log "downloading k8s.io/kubernetes@$K8S_VERSION module metadata"
  gomod_path="$(cd "$BUILD_DIR" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  etcd_version="$(sed -n 's#^\s*go.etcd.io/etcd/client/v3 \(v[0-9.]*\).*#\1#p' "$gomod_path" | head -1)"
  go_line="$(sed -n 's/^go \(.*\)$/\1/p' "$gomod_path" | head -1)"
  {
    echo "module wsgauge.local/k8sbuild"
    echo
    echo "go $go_line"
    echo
    echo "require ("
    echo "  k8s.io/kubernetes $K8S_VERSION"
    echo "  go.etcd.io/etcd/server/v3 $etcd_version"
    echo ")"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#  \1 => \1 '"$staging_version"'#p' "$gomod_path"
    echo ")"
  } > "$BUILD_DIR/go.mod"
  echo "$etcd_version" > "$BUILD_DIR/etcd-version"
fi
etcd_version="$(cat "$BUILD_DIR/etcd-version")"

# The packages to build; a build directory made for an older list is tidied again.
tools_go='//go:build tools

package k8sbuild

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)'
if [[ "$(cat "$BUILD_DIR/tools.go" 2>/dev/null)" != "$tools_go" || ! -s "$BUILD_DIR/go.sum" ]]; then
  printf '%s\n' "$tools_go" > "$BUILD_DIR/tools.go"
  log "resolving module graph (go mod tidy; downloads a few hundred MB the first time)"
  (cd "$BUILD_DIR" && go mod tidy -e >&2)
fi

git_commit="0000000000000000000000000000000000000000"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitCommit=$git_commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

build_one() {  # name package ldflags
  local name="$1" pkg="$2" ldflags="$3"
  if [[ -x "$BIN_DIR/$name" ]]; then return 0; fi
  log "compiling $name ($pkg) ..."
  local start=$SECONDS
  # print a heartbeat while the compiler works so long builds show progress
  ( while sleep 60; do log "  ... still compiling $name ($((SECONDS - start))s)"; done ) &
  local ticker=$!
  if ! (cd "$BUILD_DIR" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN_DIR/$name.tmp" "$pkg" >&2); then
    kill "$ticker" 2>/dev/null || true
    log "FAILED to compile $name"
    return 1
  fi
  kill "$ticker" 2>/dev/null || true
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
  log "built $name in $((SECONDS - start))s"
}

build_one etcd go.etcd.io/etcd/server/v3 "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"
build_one kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build_one kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build_one kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
build_one kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
build_one kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
build_one kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$k8s_ldflags"
# kind's nodes run kubeadm (hack/build-kind.sh, the kind node image)
build_one kubeadm k8s.io/kubernetes/cmd/kubeadm "$k8s_ldflags"

# ---- helm in its own module ---------------------------------------------
if [[ ! -x "$BIN_DIR/helm" ]]; then
  if [[ ! -f "$HELM_BUILD_DIR/go.mod" ]]; then
    cat > "$HELM_BUILD_DIR/go.mod" <<GOMOD
module wsgauge.local/helmbuild

go 1.26

require helm.sh/helm/v3 $HELM_VERSION
GOMOD
    cat > "$HELM_BUILD_DIR/tools.go" <<'GO'
//go:build tools

package helmbuild

import _ "helm.sh/helm/v3/cmd/helm"
GO
    log "resolving helm $HELM_VERSION module graph"
    (cd "$HELM_BUILD_DIR" && go mod tidy -e >&2)
  fi
  BUILD_DIR="$HELM_BUILD_DIR" build_one helm helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
fi

log "all binaries present in $BIN_DIR"
echo "$BIN_DIR"
