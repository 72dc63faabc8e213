#!/usr/bin/env bash
# Set up (if needed) and run the demo: wemixvisor supervising a local anvil chain, events printed,
# and the web console (its URL with the token is printed; open it in a browser).
# `--validators 4`: four validators on the WBFT network double upgrade in a rolling window.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devtools.demo "$@"
