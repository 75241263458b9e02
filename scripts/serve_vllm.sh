#!/usr/bin/env bash
# Serve the embedded SmolLM2-135M-Instruct with the shipped experts as LoRA models on
# http://127.0.0.1:${PORT:-8000} (OpenAI-compatible; point ServerLLM / --server at it).
# Needs scripts/setup_vllm.sh and the de-quantized model cache (any expertrag run makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EXPERTRAG_VLLM_VENV:-.venv-vllm}
MODEL_DIR=$(.venv/bin/python -c "from expertrag.models.loading import served_model_dir; print(served_model_dir())")
EXPERTS=src/expertrag/data/experts
MODULES=()
for d in "$EXPERTS"/*/; do
  name=$(basename "$d")
  MODULES+=("$name=$(realpath "$d")")
done
# One LoRA slot more than the experts served: vLLM 0.32's CPU LoRA kernels apply the last
# slot's adapter to base (no-LoRA) rows of a mixed batch when every slot holds an adapter.
MAX_LORAS=${EXPERTRAG_VLLM_MAX_LORAS:-$(( ${#MODULES[@]} + 4 ))}
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
  --served-model-name smollm2-135m-instruct --enable-lora --max-lora-rank 16 \
  --max-loras "$MAX_LORAS" --lora-modules "${MODULES[@]}" --max-logprobs 20 \
  --max-model-len 4096 --dtype float32 --host 127.0.0.1 --port "${PORT:-8000}" "$@"
