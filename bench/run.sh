#!/usr/bin/env bash
# The shop over HTTP against a baseline, in one run: the release binary, Postgres, the local
# provider, N users logged in, wrk driving load from its own process. Prints req/s, p50/p99,
# the ratio to the baseline, Postgres round trips per request, the login's own cost, the
# server's peak RSS with every synthetic session in its cache, and the same users on the Node
# stack (Express, express-session in Redis, openid-client) side by side.
# Uses (and drops) the database `storefront_bench`.
#   bench/run.sh
#   BENCH_SESSIONS=1000000 BENCH_CONNECTIONS=64 BENCH_SECONDS=10 BENCH_USERS=64 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
scripts/idp.sh install
bench/ensure-wrk.sh
# The Node stack compared side by side: Redis from Debian, the Express app's npm packages.
if ! command -v redis-server >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
  else
    echo "run.sh: install redis-server for the Express comparison" >&2
  fi
fi
(cd bench/express && npm ci --no-audit --no-fund --loglevel=error) >&2
cargo bench --bench http
