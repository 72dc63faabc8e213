#!/usr/bin/env bash
# Set up (if needed) and run the demo: wemixvisor supervising a local anvil chain, events printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devtools.demo "$@"
