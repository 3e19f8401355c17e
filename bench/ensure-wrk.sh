#!/usr/bin/env bash
# Makes sure Debian's wrk is installed (as root; otherwise says what to install).
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
else
  echo "install wrk (Debian package \`wrk\`)" >&2; exit 1
fi
