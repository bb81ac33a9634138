#!/usr/bin/env bash
# Installs the load generator for `make bench`: wrk, from Debian's packages, only if missing.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/setup.sh: wrk is missing and installing it needs root (apt-get install wrk)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
