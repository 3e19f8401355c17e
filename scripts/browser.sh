#!/usr/bin/env bash
# Installs what the real-browser tests need: Debian's Chromium (as root, when missing) and
# playwright-core (npm ci in tests/browser). Prints nothing when all is there.
#   scripts/browser.sh install
set -euo pipefail
cd "$(dirname "$0")/.."

chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "browser.sh: installing Debian's chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
  else
    echo "browser.sh: $chromium is missing; install Debian's chromium (or set CHROMIUM)" >&2
    exit 1
  fi
fi
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
