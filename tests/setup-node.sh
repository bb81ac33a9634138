#!/usr/bin/env bash
# Install the pinned Trubrics JS SDK and OpenTelemetry packages into tests/node, for
# tests/test_js_sdk.py and tests/test_otlp_apps.py.
# Idempotent: a no-op when the pinned version is already installed, so `make test` stays fast.
set -euo pipefail
cd "$(dirname "$0")/node"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  sudo=""
  [[ $EUID -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi

# Every pinned dependency whose installed version differs (or is missing): none, nothing to do.
stale=$(node -e '
const pinned = require("./package.json").dependencies;
const installed = (name) => {
  try { return require(`./node_modules/${name}/package.json`).version; } catch { return null; }
};
console.log(Object.keys(pinned).filter((name) => installed(name) !== pinned[name]).join(" "));
')
[[ -z $stale ]] && exit 0

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
echo "setup-node.sh: installed $stale with node $(node --version)"
