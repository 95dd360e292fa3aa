#!/usr/bin/env bash
# llama.cpp end-to-end check of a llama GGUF export: loads EXPORTED (and, if given, REFERENCE,
# e.g. the GGUF it was made from) with the real llama.cpp through llama-cpp-python, generates
# greedily from a fixed chat prompt, and compares tokenization and per-token NLL with REFERENCE.
#
#   scripts/llama-cpp-check.sh EXPORTED.gguf [REFERENCE.gguf] [--max-nll-gap X] [--tokens N]
#
# Needs target/llama-cpp-venv (made by scripts/llama-cpp-venv.sh, ~30 min on 2 cores); exits 3
# with a notice when it is absent, so callers can skip. The root test tests/gguf_llama.rs runs
# this on the SmolLM2 exports.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$root/target/llama-cpp-venv/bin/python"
if [ $# -lt 1 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
if ! [ -x "$python" ] || ! "$python" -c "import llama_cpp" 2>/dev/null; then
  echo "notice: $root/target/llama-cpp-venv with llama_cpp is absent (run scripts/llama-cpp-venv.sh)" >&2
  exit 3
fi
exec "$python" "$root/tests/py/llama_cpp_generate.py" "$@"
