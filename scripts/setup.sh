#!/usr/bin/env bash
# Prepare a fresh machine: Python virtualenv with every dependency, and the anvil nodes used by
# tests, the demo and the benchmarks (fetched from the npm registry into .cache/, verified).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm (needed to fetch anvil)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "setup: npm is required to fetch anvil; install Node.js and npm" >&2
    exit 1
  fi
fi
# zsh: the tests load `wemixvisor completion zsh` into a real zsh (optional: skipped without).
if ! command -v zsh >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing zsh (completion tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zsh >/dev/null
fi

# The browser tests drive Debian's chromium through its chromedriver (no browser download).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver (for the web console's browser tests)"
    if ! apt-cache show chromium-driver >/dev/null 2>&1; then
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium and chromium-driver are missing; the browser tests will be skipped" >&2
  fi
fi

# systemd-analyze and promtool check the systemd units and the Prometheus rules in configs/.
deploy_debs=()
command -v systemd-analyze >/dev/null 2>&1 || deploy_debs+=(systemd)
command -v promtool >/dev/null 2>&1 || deploy_debs+=(prometheus)
if [ ${#deploy_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${deploy_debs[*]} (systemd-analyze, promtool)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${deploy_debs[@]}" >/dev/null
  else
    echo "setup: ${deploy_debs[*]} missing; the tests that need them will be skipped" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Re-run pip only when pyproject.toml changed since the last successful install.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev,bench]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/python -m devtools.anvil >/dev/null
