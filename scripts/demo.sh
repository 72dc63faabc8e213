#!/usr/bin/env bash
# Set up (if needed) and run the demo: wemixvisor supervising a local anvil chain, events printed,
# and the web console (its URL with the token is printed; open it in a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devtools.demo "$@"
