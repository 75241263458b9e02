#!/usr/bin/env bash
# The main job: set up, then answer the sample questions over the sample corpus, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/expertrag demo "$@"
