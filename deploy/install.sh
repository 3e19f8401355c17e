#!/usr/bin/env bash
# Installs what deploy/cluster.sh runs, from Debian's packages: HAProxy, PgBouncer, Patroni
# with its built-in Raft (python3-pysyncobj), socat for HAProxy's admin socket, and the curl,
# openssl and psql the script itself calls. PostgreSQL's server comes from scripts/postgres.sh.
set -euo pipefail
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
command -v patroni >/dev/null || missing+=(patroni)
/usr/bin/python3 -c 'import pysyncobj' 2>/dev/null || missing+=(python3-pysyncobj)
command -v socat >/dev/null || missing+=(socat)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v psql >/dev/null || missing+=(postgresql-client)
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || { echo "install.sh: as root, or: apt-get install ${missing[*]}" >&2; exit 1; }
  echo "install.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
fi
