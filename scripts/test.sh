#!/usr/bin/env bash
# The test command: set up, lint, then run unit and integration tests (real embedded models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# llama.cpp's llama-server for the llama.cpp backend's integration tests: built once (a few
# minutes) into ~/.cache/expertrag/llamacpp; skipped for a unit-only run
case " $* " in
  *"not integration"*) ;;
  *) bash scripts/setup_llamacpp.sh >/dev/null ;;
esac
.venv/bin/ruff check src tests benchmarks cookbooks
exec .venv/bin/python -m pytest -q "$@"
