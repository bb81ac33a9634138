#!/usr/bin/env bash
# Install the real engines that tests/support/engines.py starts as throwaway servers: PostgreSQL 15,
# ClickHouse (Debian's 18.16 server and client) and ZooKeeper 3.8.
#
# Idempotent and quick when nothing is missing (one dpkg-query), so `make test` can run it
# every time. The tests start their own servers on free loopback ports with data in temp
# dirs; a packaged service left running would only hold ports and memory, so any engine
# process that appears during the install is stopped again (Debian's maintainer scripts
# start services on machines whose policy-rc.d allows it).
set -euo pipefail
source "$(dirname "$0")/apt.sh"

PACKAGES=(postgresql-15 clickhouse-server clickhouse-client zookeeper)
# Command lines of the packaged services (system config/data paths), never the tests' own.
SERVICE_PATTERN='/var/lib/postgresql/|/etc/postgresql/|/etc/clickhouse-server/|/etc/zookeeper/'
say() { echo "install-engines.sh: $*"; }

service_pids() { pgrep -f -- "$SERVICE_PATTERN" | sort || true; }

mapfile -t missing < <(missing_of "${PACKAGES[@]}")
if ((${#missing[@]} == 0)); then
  say "already installed: ${PACKAGES[*]}"
  exit 0
fi

started=$SECONDS
before=$(service_pids)
apt_install "${missing[@]}"
say "installed ${missing[*]} in $((SECONDS - started)) s"

# Stop whatever the maintainer scripts started: through systemd if it runs the services (it
# would restart a killed one), then by pid, waiting for each to exit.
new_pids=$(comm -13 <(echo "$before") <(service_pids) | tr '\n' ' ')
if [[ -n ${new_pids// /} ]]; then
  say "stopping services started by the packages: pids $new_pids"
  if [[ -d /run/systemd/system ]]; then
    $sudo systemctl stop postgresql clickhouse-server zookeeper 2>/dev/null || true
  fi
  for pid in $new_pids; do
    $sudo kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $new_pids; do
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid ignored SIGTERM for 30 s: SIGKILL"
      $sudo kill -KILL "$pid" 2>/dev/null || true
    fi
  done
else
  say "no service was started by the packages"
fi
