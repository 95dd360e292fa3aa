"""Checks the optional projection biases of a llama GGUF exported by burn-quant with gguf-py
(a reader nobody here wrote).

usage: gguf_bias_check.py EXPORTED EXPECTED_JSON

EXPECTED_JSON maps Hugging Face bias names (`model.layers.N.self_attn.q_proj.bias`, ...) to
their values in Hugging Face row order. Checks, against gguf-py:

* llama.cpp's converter name map (`gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n)`) turns each
  Hugging Face name into a tensor the file holds;
* that tensor is F32 with one dim of the bias's length;
* its values equal the expected ones exactly (attn_q / attn_k: as a multiset, since llama.cpp's
  RoPE layout permutes their rows within each head).

Prints one JSON line of measurements.
"""

import json
import sys

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as Q

exported_path, expected_path = sys.argv[1:3]
reader = GGUFReader(exported_path)
expected = json.load(open(expected_path))
blocks = int(reader.fields["llama.block_count"].parts[-1][0])
names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
tensors = {t.name: t for t in reader.tensors}
failures = []
checked = 0
for hf, values in expected.items():
    name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
    if name is None or name not in tensors:
        failures.append(f"{hf}: mapped to {name}, not in the file")
        continue
    t = tensors[name]
    if t.tensor_type != Q.F32:
        failures.append(f"{name}: type {t.tensor_type.name}, expected F32")
    if [int(d) for d in t.shape] != [len(values)]:
        failures.append(f"{name}: shape {list(t.shape)}, expected [{len(values)}]")
    got = np.asarray(t.data, dtype=np.float32).reshape(-1)
    want = np.asarray(values, dtype=np.float32)
    if ".attn_q." in name or ".attn_k." in name:
        got, want = np.sort(got), np.sort(want)
    if got.shape != want.shape or not np.array_equal(got, want):
        failures.append(f"{name}: values differ")
    checked += 1
print(json.dumps({"checked": checked, "tensors": len(tensors), "failures": failures}))
sys.exit(1 if failures else 0)
