#!/usr/bin/env bash
# Install Debian's Chromium (headless) for the live page's browser tests, when it is missing.
# Playwright for Python (a dev dependency from PyPI) drives this system browser through its
# executable path: no browser is downloaded. Idempotent: returns at once when it is there.
#
#   hack/install-browser-deps.sh          # prints the browser's path on stdout
set -euo pipefail

log() { echo "[browser-deps $(date +%H:%M:%S)] $*" >&2; }

find_chromium() {
  for candidate in /usr/bin/chromium /usr/lib/chromium/chromium; do
    [[ -x $candidate ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

if path=$(find_chromium); then
  echo "$path"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "Debian's chromium is missing and installing it needs root"
  exit 1
fi
log "installing Debian's chromium (about a minute the first time)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
find_chromium
