#!/usr/bin/env bash
# The shop over HTTP against a baseline, in one run: the release binary, Postgres, the local
# provider, N users logged in, wrk driving load from its own process. Prints req/s, p50/p99,
# the ratio to the baseline, Postgres round trips per request, the login's own cost and the
# server's peak RSS. Uses (and drops) the database `storefront_bench`.
#   bench/run.sh
#   BENCH_SESSIONS=1000000 BENCH_CONNECTIONS=64 BENCH_SECONDS=10 BENCH_USERS=64 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
scripts/idp.sh install
bench/ensure-wrk.sh
cargo bench --bench http
