#!/usr/bin/env bash
# The refresher at scale: 1,000,000 sessions in the table, 1,000 real logins through the
# local provider made due, the claim statement's plan and timing, and the time to refresh
# them all. Uses (and drops) the database `storefront_bench`.
#   bench/refresher.sh                       # BENCH_SESSIONS=1000000 BENCH_LOGINS=1000
#   BENCH_SESSIONS=10000 bench/refresher.sh  # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
scripts/idp.sh install
cargo bench --bench refresher
