#!/usr/bin/env bash
# The admin session table with 100,000 live sessions: server time of /admin/sessions for
# the first page, a deep keyset page, searches, filters and sorts, and of /admin.
# Uses (and drops) the database `storefront_bench`.
#   bench/admin.sh                       # BENCH_SESSIONS=100000
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
scripts/idp.sh install
cargo bench --bench admin_sessions
