#!/usr/bin/env bash
# The whole deployment (HAProxy → 3 instances → PgBouncer → Patroni primary with a synchronous
# standby) against one instance straight on the primary, under the same wrk load, in one run;
# with the seed's 50,000 daily users turned into a request rate and the headroom over it.
#   bench/topology.sh
#   BENCH_CONNECTIONS=64 BENCH_SECONDS=10 BENCH_USERS=64 bench/topology.sh
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
scripts/idp.sh install
deploy/install.sh
bench/ensure-wrk.sh
cargo bench --bench topology
