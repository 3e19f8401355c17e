#!/usr/bin/env bash
# Installs (npm ci) and starts the local OpenID provider in idp/, in the background.
#   scripts/idp.sh start   # env: IDP_PORT, IDP_CLIENT_SECRET, IDP_REDIRECT_URIS, ...
#   scripts/idp.sh install
set -euo pipefail
cd "$(dirname "$0")/.."

install() {
  if [[ ! -d idp/node_modules/oidc-provider ]]; then
    (cd idp && npm ci --no-audit --no-fund --loglevel=error) >&2
  fi
}

case "${1:-start}" in
  install) install ;;
  start)
    install
    mkdir -p .local
    port=${IDP_PORT:-4000}
    if curl -fsS "http://127.0.0.1:$port/.well-known/openid-configuration" >/dev/null 2>&1; then
      echo "idp.sh: a provider already answers on port $port" >&2; exit 0
    fi
    IDP_KEY_FILE=${IDP_KEY_FILE:-$PWD/.local/idp-key.json} IDP_LOG_REQUESTS=0 \
      nohup node idp/server.js >.local/idp.log 2>&1 &
    echo $! >.local/idp.pid
    for _ in $(seq 1 50); do
      curl -fsS "http://127.0.0.1:$port/.well-known/openid-configuration" >/dev/null 2>&1 && exit 0
      sleep 0.2
    done
    echo "idp.sh: the provider did not start; see .local/idp.log" >&2; exit 1 ;;
  stop)
    [[ -f .local/idp.pid ]] && kill "$(cat .local/idp.pid)" 2>/dev/null || true
    rm -f .local/idp.pid ;;
esac
