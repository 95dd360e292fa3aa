#!/usr/bin/env bash
# llama.cpp end-to-end check of a llama GGUF export: loads EXPORTED (and, if given, REFERENCE,
# e.g. the GGUF it was made from) with the real llama.cpp through llama-cpp-python, generates
# greedily from a fixed chat prompt, and compares tokenization and per-token NLL with REFERENCE.
#
#   scripts/llama-cpp-check.sh EXPORTED.gguf [REFERENCE.gguf] [--max-nll-gap X] [--tokens N]
#
# Needs the llama.cpp venv that scripts/llama-cpp-venv.sh builds once per machine into its cache
# (about 5 min on 2 cores); exits 3 with a notice when it is not built. The root test
# tests/gguf_llama.rs builds the venv on first use and runs this on the SmolLM2 exports.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
python="$(bash "$root/scripts/llama-cpp-venv.sh" --path)" || exit 3
exec "$python" "$root/tests/py/llama_cpp_generate.py" "$@"
