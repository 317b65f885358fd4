#!/bin/sh
# Installs what the protocol integration tests run: Node.js and npm from Debian's packages
# (when `node` is missing) and the npm packages pinned by
# tests/integration/protocols/js/package-lock.json (again whenever that file changes).
#
#   hack/install-protocol-clients.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
js="$here/tests/integration/protocols/js"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo ">>> installing nodejs and npm (Debian packages)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
stamp="$js/node_modules/.wsgauge-lock"
if [ -f "$stamp" ] && cmp -s "$stamp" "$js/package-lock.json"; then
  exit 0
fi
echo ">>> npm ci in $js"
(cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
cp "$js/package-lock.json" "$stamp"
