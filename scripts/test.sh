#!/usr/bin/env bash
# The test command: set up, lint, then run unit and integration tests (real embedded models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check src tests benchmarks cookbooks
exec .venv/bin/python -m pytest -q "$@"
