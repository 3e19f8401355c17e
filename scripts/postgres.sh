#!/usr/bin/env bash
# Makes sure a Postgres server answers and prints a DATABASE_URL for it.
#
#   eval "$(scripts/postgres.sh)"     # exports DATABASE_URL
#
# Order of preference: $DATABASE_URL if it answers; the machine's cluster on 127.0.0.1:5432
# (started if stopped, installed from Debian's packages if missing and we are root); else a
# private cluster under .local/pg of this project (port 5433).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "postgres.sh: $*" >&2; }
answers() { psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

if [[ -n "${DATABASE_URL:-}" ]] && answers "$DATABASE_URL"; then
  echo "export DATABASE_URL='$DATABASE_URL'"; exit 0
fi

SYSTEM_URL=postgres://postgres@127.0.0.1:5432/postgres
PASSWORD_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
for url in "$SYSTEM_URL" "$PASSWORD_URL"; do
  if answers "$url"; then echo "export DATABASE_URL='$url'"; exit 0; fi
done

if [[ $(id -u) -eq 0 ]]; then
  if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
    log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >&2
  fi
  log "starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
  if answers "$SYSTEM_URL"; then echo "export DATABASE_URL='$SYSTEM_URL'"; exit 0; fi
  # A fresh Debian cluster asks for a password over TCP: give postgres a local one.
  su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
  if answers "$PASSWORD_URL"; then echo "export DATABASE_URL='$PASSWORD_URL'"; exit 0; fi
  log "the system cluster does not accept connections on 127.0.0.1:5432"; exit 1
fi

# Not root: a private cluster owned by this user, under the project.
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -n "$bindir" ]] || { log "no PostgreSQL binaries; install the postgresql package"; exit 1; }
data=.local/pg/data
if [[ ! -d $data ]]; then
  mkdir -p .local/pg
  "$bindir/initdb" -D "$data" -U postgres --auth=trust >&2
fi
"$bindir/pg_ctl" -D "$data" -l .local/pg/log -o "-p 5433 -k $PWD/.local/pg -c listen_addresses=127.0.0.1" status >/dev/null 2>&1 \
  || "$bindir/pg_ctl" -D "$data" -l .local/pg/log -o "-p 5433 -k $PWD/.local/pg -c listen_addresses=127.0.0.1" -w start >&2
echo "export DATABASE_URL='postgres://postgres@127.0.0.1:5433/postgres'"
