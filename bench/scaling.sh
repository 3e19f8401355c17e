#!/usr/bin/env bash
# How database-side costs grow with the session count (10k, 100k, 1M): session load, the
# refresher's claim, cleanup. Uses (and drops) the database `storefront_bench`.
#   bench/scaling.sh
#   BENCH_SCALES=10000,50000 bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
cargo bench --bench scaling
