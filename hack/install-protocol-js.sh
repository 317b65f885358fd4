#!/usr/bin/env bash
# Install the npm packages of the protocol integration tests (real client and server
# libraries: graphql-ws, mqtt + aedes, @stomp/stompjs, pusher-js, ws) from
# tests/integration/protocols/js/package-lock.json with `npm ci`, when the lock file
# changed since the last install. Installs Debian's nodejs and npm first when node is missing.
#   hack/install-protocol-js.sh
set -euo pipefail
log() { echo "[protocol-js $(date +%H:%M:%S)] $*" >&2; }
cd "$(dirname "$0")/../tests/integration/protocols/js"

if ! command -v npm >/dev/null 2>&1; then
  log "node/npm missing: installing Debian's nodejs and npm"
  apt-get install -y --no-install-recommends nodejs npm >/tmp/wsgauge-apt-node.log 2>&1 || {
    apt-get update >>/tmp/wsgauge-apt-node.log 2>&1
    apt-get install -y --no-install-recommends nodejs npm >>/tmp/wsgauge-apt-node.log 2>&1
  } || { log "apt-get install failed; see /tmp/wsgauge-apt-node.log"; exit 1; }
fi

stamp=node_modules/.wsgauge-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
log "npm ci in $(pwd) (node $(node --version))"
npm ci --no-audit --no-fund --loglevel=warn
echo "$want" >"$stamp"
log "done: $(ls node_modules | wc -l) packages"
