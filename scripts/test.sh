#!/usr/bin/env bash
# Runs every test: formatting, lints, and the test suite against a real Postgres, the real
# local OpenID provider (installed by npm ci), Debian's headless Chromium, and the production
# topology of deploy/ (HAProxy, PgBouncer, Patroni from Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
export DATABASE_URL
scripts/idp.sh install
scripts/browser.sh install
# HAProxy, PgBouncer and Patroni for the deployment test (deploy/cluster.sh).
deploy/install.sh

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
