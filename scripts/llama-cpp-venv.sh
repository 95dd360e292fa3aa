#!/usr/bin/env bash
# Optional, slow (~30 min on 2 cores): builds llama.cpp through PyPI's llama-cpp-python (it vendors
# llama.cpp) into target/llama-cpp-venv, for the llama.cpp end-to-end check of GGUF exports
# (tests skip it when this venv is absent). Not part of the README test command.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/llama-cpp-venv
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python already in $venv"; exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}" \
  "$venv/bin/pip" install "llama-cpp-python==0.3.36" numpy
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
