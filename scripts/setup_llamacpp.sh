#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` once, for LlamaCppLLM (the llama.cpp backend), from the
# llama.cpp tree vendored in a pinned llama-cpp-python source package on PyPI (no git, no
# GitHub). CPU-native flags; cached outside the repository, in
# ${EXPERTRAG_LLAMACPP_HOME:-~/.cache/expertrag/llamacpp}/<version>. Idempotent: prints the
# server's path and exits at once when it is already built.
# Also keeps the tree's convert_lora_to_gguf.py (and its gguf-py), which turns the experts'
# PEFT adapters into GGUF LoRA files, and llama-export-lora + llama-quantize, which merge an
# expert into the base weights for LlamaCppLLM's merged mode.
set -euo pipefail
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
HOME_DIR=${EXPERTRAG_LLAMACPP_HOME:-$HOME/.cache/expertrag/llamacpp}
DEST="$HOME_DIR/$VERSION"
if [ -x "$DEST/bin/llama-server" ] && [ -x "$DEST/bin/llama-export-lora" ] \
  && [ -x "$DEST/bin/llama-quantize" ] && [ -f "$DEST/convert_lora_to_gguf.py" ]; then
  echo "$DEST/bin/llama-server"
  exit 0
fi
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llamacpp-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "downloading llama-cpp-python==$VERSION (source) from PyPI" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
  "llama-cpp-python==$VERSION" -d "$WORK" 2>/dev/null \
  || "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
ARCHIVE="$WORK/llama_cpp_python-$VERSION.tar.gz"
echo "$SHA256  $ARCHIVE" | sha256sum -c --quiet -
tar xzf "$ARCHIVE" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
JOBS=${EXPERTRAG_BUILD_JOBS:-$(nproc)}
echo "building llama-server ($JOBS jobs; a few minutes on 2 cores)" >&2
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >/dev/null
cmake --build "$WORK/build" --config Release -j "$JOBS" --target llama-server llama-bench \
  llama-export-lora llama-quantize \
  >/dev/null
# publish atomically: a half-built tree is never taken for a finished one
STAGE="$HOME_DIR/.stage-$$"
rm -rf "$STAGE" && mkdir -p "$STAGE/bin"
for tool in llama-server llama-bench llama-export-lora llama-quantize; do
  cp "$WORK/build/bin/$tool" "$STAGE/bin/"
done
cp "$SRC/convert_lora_to_gguf.py" "$SRC/convert_hf_to_gguf.py" "$STAGE/"
[ -d "$SRC/conversion" ] && cp -r "$SRC/conversion" "$STAGE/"
cp -r "$SRC/gguf-py" "$STAGE/gguf-py"
cp "$SRC/LICENSE" "$STAGE/LICENSE"
rm -rf "$DEST" && mv "$STAGE" "$DEST"
echo "$DEST/bin/llama-server"
