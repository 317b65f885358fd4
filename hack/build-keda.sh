#!/usr/bin/env bash
# Build KEDA (its operator, its metrics server and its admission webhooks) from its Go module,
# for one pinned 2.x release, and cache the binaries and KEDA's deployment manifests (config/)
# by version outside the repo.
#
#   hack/build-keda.sh                 build what is missing, print the KEDA directory
#   hack/build-keda.sh --print-dir     only print where KEDA lives
#
# The KEDA directory holds bin/keda (cmd/operator), bin/keda-adapter (cmd/adapter),
# bin/keda-admission-webhooks (cmd/webhooks) and config/ (KEDA's kustomize tree: CRDs, RBAC, the
# three Deployments, the external.metrics.k8s.io APIService), as KEDA's release manifest is made
# from it.
#
# Environment:
#   WSGAUGE_CACHE   cache root (default ~/.cache/wsgauge)
#   KEDA_VERSION    github.com/kedacore/keda/v2 version (default below)
#
# The module is built as its own main module (a copy of its source from the Go module proxy), so
# its go.mod, go.sum and replace directives apply. The first run downloads the modules (1.7 GB:
# KEDA links every scaler's SDK) and compiles (about 30 min of CPU; README has the measured
# time); later runs find the binaries and return at once.
set -euo pipefail

KEDA_VERSION="${KEDA_VERSION:-v2.21.0}"
CACHE="${WSGAUGE_CACHE:-$HOME/.cache/wsgauge}"
KEDA_DIR="$CACHE/keda/keda-${KEDA_VERSION}"
BUILD_DIR="$CACHE/build/keda-${KEDA_VERSION}"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$KEDA_DIR"
  exit 0
fi

BINARIES=(keda keda-adapter keda-admission-webhooks)
complete=1
for b in "${BINARIES[@]}"; do [[ -x "$KEDA_DIR/bin/$b" ]] || complete=0; done
if [[ $complete == 1 && -f "$KEDA_DIR/config/.complete" ]]; then
  echo "$KEDA_DIR"
  exit 0
fi

log() { echo "[build-keda $(date +%H:%M:%S)] $*" >&2; }
command -v go >/dev/null || { log "go is not installed; it is needed to build KEDA"; exit 1; }
mkdir -p "$KEDA_DIR/bin" "$(dirname "$BUILD_DIR")"
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
started=$SECONDS
log "building KEDA $KEDA_VERSION into $KEDA_DIR"

# ---- the module's source, writable -------------------------------------------------------
if [[ ! -f "$BUILD_DIR/go.sum" ]]; then
  log "downloading github.com/kedacore/keda/v2@$KEDA_VERSION from the Go module proxy"
  source_dir="$(cd "$(dirname "$BUILD_DIR")" && GOFLAGS=-mod=mod go mod download -json \
    "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  [[ -f "$source_dir/go.mod" ]] || { log "no module source for KEDA $KEDA_VERSION"; exit 1; }
  rm -rf "$BUILD_DIR.tmp"
  cp -r "$source_dir" "$BUILD_DIR.tmp"
  chmod -R u+w "$BUILD_DIR.tmp"
  mv "$BUILD_DIR.tmp" "$BUILD_DIR"
fi
commit="$(cd "$BUILD_DIR" && GOFLAGS=-mod=mod go mod download -json \
  "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/.*"Hash": "\(.*\)".*/\1/p')"

# ---- the modules it needs (progress: modules downloaded so far) ---------------------------
if [[ ! -f "$BUILD_DIR/.modules-downloaded" ]]; then
  total="$(cd "$BUILD_DIR" && awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&NF{n++} END{print n}' go.mod)"
  log "downloading the modules of KEDA's go.mod ($total requirements; about 1 GB the first time)"
  modcache="$(go env GOMODCACHE)"
  ( while sleep 30; do
      log "  ... downloading ($(find "$modcache/cache/download" -name '*.zip' 2>/dev/null | wc -l) module zips in $modcache)"
    done ) &
  ticker=$!
  # only the packages the two commands import (go mod download would fetch every test module)
  if ! (cd "$BUILD_DIR" && go list -deps ./cmd/operator ./cmd/adapter ./cmd/webhooks >/dev/null); then
    kill "$ticker" 2>/dev/null || true
    log "FAILED to download KEDA's modules"
    exit 1
  fi
  kill "$ticker" 2>/dev/null || true
  touch "$BUILD_DIR/.modules-downloaded"
  log "modules downloaded after $((SECONDS - started))s"
fi

ldflags="-s -w -X=github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
ldflags+=" -X=github.com/kedacore/keda/v2/version.GitCommit=$commit"

build_one() {  # name package
  local name="$1" pkg="$2"
  if [[ -x "$KEDA_DIR/bin/$name" ]]; then return 0; fi
  log "compiling $name ($pkg) ..."
  local start=$SECONDS
  # a heartbeat while the compiler works, so the long first build shows progress
  ( while sleep 60; do log "  ... still compiling $name ($((SECONDS - start))s)"; done ) &
  local ticker=$!
  if ! (cd "$BUILD_DIR" && go build -trimpath -ldflags "$ldflags" -o "$KEDA_DIR/bin/$name.tmp" "$pkg" >&2); then
    kill "$ticker" 2>/dev/null || true
    log "FAILED to compile $name"
    return 1
  fi
  kill "$ticker" 2>/dev/null || true
  mv "$KEDA_DIR/bin/$name.tmp" "$KEDA_DIR/bin/$name"
  log "built $name in $((SECONDS - start))s"
}

build_one keda ./cmd/operator
build_one keda-adapter ./cmd/adapter
build_one keda-admission-webhooks ./cmd/webhooks

# ---- KEDA's own deployment manifests (kustomize tree) ---------------------------------------
rm -rf "$KEDA_DIR/config"
cp -r "$BUILD_DIR/config" "$KEDA_DIR/config"
touch "$KEDA_DIR/config/.complete"

log "KEDA $KEDA_VERSION ready in $KEDA_DIR (this run: $((SECONDS - started))s)"
echo "$KEDA_DIR"
