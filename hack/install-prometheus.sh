#!/usr/bin/env bash
# Install Debian's `prometheus` package (it brings `prometheus` and `promtool`) when missing.
# The Prometheus tests start their own Prometheus process; the package's service is not started
# (no init system here; with one, apt's policy-rc.d decides) and its recommended
# node exporter is not installed. Idempotent: returns at once when both commands are there.
#
#   hack/install-prometheus.sh
set -euo pipefail

log() { echo "[install-prometheus $(date +%H:%M:%S)] $*" >&2; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "Debian's prometheus package is missing and installing it needs root"
  exit 1
fi
log "installing Debian's prometheus package (prometheus, promtool)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends prometheus >/tmp/wsgauge-apt-prometheus.log 2>&1; then
  log "apt-get install failed; updating the package lists and trying again"
  apt-get update >>/tmp/wsgauge-apt-prometheus.log 2>&1
  apt-get install -y --no-install-recommends prometheus >>/tmp/wsgauge-apt-prometheus.log 2>&1 || {
    log "apt-get install failed; see /tmp/wsgauge-apt-prometheus.log"
    tail -20 /tmp/wsgauge-apt-prometheus.log >&2
    exit 1
  }
fi
log "installed: $(prometheus --version 2>&1 | head -1)"
