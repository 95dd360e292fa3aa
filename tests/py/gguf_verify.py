"""Reads a GGUF written by burn-quant with gguf-py (a reader nobody here wrote) and checks it.

For every quantized tensor NAME that has companions NAME.dec (our decoder's f32 output) and
NAME.src (the f32 input we encoded):
  * gguf.quants.dequantize(NAME) must equal NAME.dec bit for bit;
  * where gguf-py has an encoder (quantize), gguf.quants.quantize(NAME.src) must equal NAME's
    bytes exactly.
Tensors with a NAME.deq companion (a QuantTensor's own dequantization, written code for code) are
compared with gguf-py's dequantization within `rtol` of the block scale (printed).
Prints one JSON object: metadata (key -> [type name, value]), tensors checked, max differences.
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

path = sys.argv[1]
r = GGUFReader(path)

def field_value(f):
    t = f.types[0]
    if t == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if t == gguf.GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        if sub == gguf.GGUFValueType.ARRAY:
            return {"nested_arrays": len(f.data)}
        return [p.tolist()[0] for p in (f.parts[i] for i in f.data)]
    v = f.parts[f.data[0]].tolist()[0]
    return v

meta = {}
for f in r.fields.values():
    if f.name.startswith("GGUF."):
        continue
    meta[f.name] = [f.types[0].name, field_value(f)]

tensors = {t.name: t for t in r.tensors}
checked, encoded_equal, max_deq = [], [], {}
for name, t in tensors.items():
    if name.endswith((".dec", ".src", ".deq")):
        continue
    ours = tensors.get(name + ".dec")
    if ours is None:
        continue
    ty = T(t.tensor_type)
    raw = np.asarray(t.data)
    theirs = gguf.quants.dequantize(raw, ty).reshape(-1).astype(np.float32)
    mine = np.asarray(ours.data, dtype=np.float32).reshape(-1)
    if theirs.shape != mine.shape:
        sys.exit(f"{name}: shape {theirs.shape} vs ours {mine.shape}")
    if not np.array_equal(theirs.view(np.uint32), mine.view(np.uint32)):
        bad = np.nonzero(theirs.view(np.uint32) != mine.view(np.uint32))[0]
        i = bad[0]
        sys.exit(f"{name} ({ty.name}): {len(bad)} values differ, first at {i}: gguf {theirs[i]!r} ours {mine[i]!r}")
    checked.append(name)
    src = tensors.get(name + ".src")
    if src is not None:
        x = np.asarray(src.data, dtype=np.float32).reshape(raw.shape[0], -1) if raw.ndim > 1 else np.asarray(src.data, dtype=np.float32)
        try:
            enc = gguf.quants.quantize(x, ty)
        except NotImplementedError:
            enc = None
        if enc is not None:
            a = np.asarray(enc).view(np.uint8).reshape(-1)
            b = raw.view(np.uint8).reshape(-1)
            if not np.array_equal(a, b):
                bad = np.nonzero(a != b)[0]
                blk = GGML_QUANT_SIZES[ty][1]
                sys.exit(f"{name} ({ty.name}): encoder bytes differ from gguf-py at {len(bad)} bytes, first {bad[0]} (block {bad[0] // blk})")
            encoded_equal.append(name)
    deq = tensors.get(name + ".deq")
    if deq is not None:
        d = np.asarray(deq.data, dtype=np.float32).reshape(-1)
        max_deq[name] = float(np.max(np.abs(d - theirs)))

print(json.dumps({
    "metadata": meta,
    "checked": sorted(checked),
    "encoder_equal": sorted(encoded_equal),
    "max_abs_diff_vs_quant_tensor": max_deq,
    "n_tensors": len(tensors),
}))
