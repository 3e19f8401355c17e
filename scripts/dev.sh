#!/usr/bin/env bash
# Runs the shop locally with everything it needs: Postgres, the local OpenID provider,
# migrations and the demo catalogue. Open http://127.0.0.1:8080 and log in as
# alice / alice-password (admin) or bob / bob-password.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/postgres.sh)"
base=${DATABASE_URL%/*}
psql "$DATABASE_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'storefront'" | grep -q 1 \
  || psql "$DATABASE_URL" -qc 'CREATE DATABASE storefront'
export DATABASE_URL="$base/storefront"

# Throwaway local secrets, generated once and never committed.
mkdir -p .local
if [[ ! -f .local/secrets.env ]]; then
  umask 077
  cat >.local/secrets.env <<SECRETS
export STOREFRONT__SESSION__SECRET_KEY='$(openssl rand -base64 64 | tr -d '\n')'
export STOREFRONT__TOKENS__ENCRYPTION_KEY='$(openssl rand -base64 32)'
export STOREFRONT__OIDC__CLIENT_SECRET='$(openssl rand -hex 24)'
SECRETS
fi
source .local/secrets.env

export IDP_CLIENT_ID=storefront IDP_CLIENT_SECRET="$STOREFRONT__OIDC__CLIENT_SECRET"
export IDP_REDIRECT_URIS=http://127.0.0.1:8080/callback
export IDP_POST_LOGOUT_REDIRECT_URIS=http://127.0.0.1:8080/
export IDP_BACKCHANNEL_LOGOUT_URI=http://127.0.0.1:8080/backchannel-logout
scripts/idp.sh start
trap 'scripts/idp.sh stop' EXIT

export STOREFRONT_ENV=local
cargo build --quiet
./target/debug/storefront migrate
./target/debug/storefront demo-data
echo "storefront: http://127.0.0.1:8080  (provider: http://127.0.0.1:4000)"
./target/debug/storefront serve
