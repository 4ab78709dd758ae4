#!/usr/bin/env bash
# Installs the PostgreSQL server binaries that the keyindex tests use to start
# their own throwaway cluster (initdb + postgres on a free port, in a temporary
# directory). Run as root on Debian 12; does nothing if they are already there.
#
# The Debian package creates and starts a cluster "main" on port 5432. The
# tests never use it (nor any port they did not pick), so it does not matter;
# when this script installed the package it stops that cluster again so that
# it uses no memory during the test run.
set -euo pipefail

find_initdb() {
  if command -v initdb >/dev/null 2>&1; then
    command -v initdb
    return
  fi
  ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true
}

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

initdb_path=$(find_initdb)
if [ -z "$initdb_path" ]; then
  echo "== installing PostgreSQL (apt)"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
  initdb_path=$(find_initdb)
  if [ -z "$initdb_path" ]; then
    echo "install-postgres.sh: postgresql installed but no initdb found" >&2
    exit 1
  fi
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
      if [ "$status" = "online" ]; then
        $sudo pg_ctlcluster "$ver" "$name" stop || true
      fi
    done || true
  fi
fi

bindir=$(dirname "$(readlink -f "$initdb_path")")
echo "PostgreSQL binaries: $bindir"
"$bindir/initdb" --version
"$bindir/postgres" --version
