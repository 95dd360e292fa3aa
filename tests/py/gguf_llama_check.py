"""Checks a llama GGUF exported by burn-quant with gguf-py (a reader nobody here wrote).

usage: gguf_llama_check.py EXPORTED SOURCE TOKENIZER_JSON MIX

SOURCE is the llama GGUF the export was made from (written by llama.cpp's own converter and
quantizer), TOKENIZER_JSON the Hugging Face tokenizer.json of the same model, MIX "Q8_0" or
"Q4_K_M". Checks, each against something independent of our Rust code:

* GGUFReader parses the file; every key llama.cpp requires is present with the type its loader
  reads (u32 counts, f32 floats, string/array types), and the llama.* values equal the source's;
* tokens and merges equal tokenizer.json's (vocab + added tokens by id; merges as "a b"), token
  types are control exactly for the special added tokens, and tokens/types/merges/special ids
  equal what llama.cpp's converter wrote into the source;
* tensor names and dims equal the source's; each tensor's type is what llama-quantize's rules
  give for MIX (re-derived here in Python from llama-quant.cpp);
* each tensor, dequantized by gguf.quants.dequantize, is close to the source tensor: F32 exactly,
  quantized ones within a relative RMS error bound per type. Both files are in llama.cpp's row
  order, so this also checks that our un-permute (reading) and permute (writing) of attn_q/attn_k
  compose to the identity on real weights.

Prints one JSON line of measurements.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, quants
from gguf.constants import GGMLQuantizationType as Q

exported_path, source_path, tokenizer_json, mix = sys.argv[1:5]
out = GGUFReader(exported_path)
src = GGUFReader(source_path)
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None, None
    return f.types, f.contents()


# --- metadata -------------------------------------------------------------------------------
U32, F32, STR, ARR, I32, BOOL = (GGUFValueType.UINT32, GGUFValueType.FLOAT32,
                                 GGUFValueType.STRING, GGUFValueType.ARRAY,
                                 GGUFValueType.INT32, GGUFValueType.BOOL)
required = {
    "general.architecture": [STR],
    "general.name": [STR],
    "general.alignment": [U32],
    "general.file_type": [U32],
    "general.quantization_version": [U32],
    "llama.context_length": [U32],
    "llama.embedding_length": [U32],
    "llama.block_count": [U32],
    "llama.feed_forward_length": [U32],
    "llama.attention.head_count": [U32],
    "llama.attention.head_count_kv": [U32],
    "llama.rope.dimension_count": [U32],
    "llama.vocab_size": [U32],
    "llama.rope.freq_base": [F32],
    "llama.attention.layer_norm_rms_epsilon": [F32],
    "tokenizer.ggml.model": [STR],
    "tokenizer.ggml.pre": [STR],
    "tokenizer.ggml.tokens": [ARR, STR],
    "tokenizer.ggml.token_type": [ARR, I32],
    "tokenizer.ggml.merges": [ARR, STR],
    "tokenizer.ggml.bos_token_id": [U32],
    "tokenizer.ggml.eos_token_id": [U32],
    "tokenizer.ggml.unknown_token_id": [U32],
    "tokenizer.ggml.padding_token_id": [U32],
    "tokenizer.ggml.add_bos_token": [BOOL],
    "tokenizer.chat_template": [STR],
}
for key, types in required.items():
    t, _ = field(out, key)
    check(t == types, f"{key}: types {t}, expected {types}")

check(field(out, "general.architecture")[1] == "llama", "architecture is not llama")
check(field(out, "general.quantization_version")[1] == 2, "quantization_version != 2")
check(field(out, "general.alignment")[1] == 32, "alignment != 32")
FILE_TYPES = {"Q8_0": 7, "Q4_K_M": 15}
check(field(out, "general.file_type")[1] == FILE_TYPES[mix], "file_type")
check(out.alignment == 32, "reader alignment")

# llama.* and special-token values must equal what llama.cpp's converter wrote.
for key in [k for k in required if k.startswith("llama.")] + [
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template"]:
    a, b = field(out, key)[1], field(src, key)[1]
    check(a == b, f"{key}: exported {a!r} != source {b!r}")

# --- tokenizer vs tokenizer.json and vs the source ------------------------------------------
with open(tokenizer_json, encoding="utf-8") as f:
    tj = json.load(f)
by_id = {i: t for t, i in tj["model"]["vocab"].items()}
special_ids = set()
for a in tj.get("added_tokens", []):
    by_id[a["id"]] = a["content"]
    if a.get("special"):
        special_ids.add(a["id"])
tokens = field(out, "tokenizer.ggml.tokens")[1]
check(tokens == [by_id[i] for i in range(len(by_id))], "tokens differ from tokenizer.json")
token_type = field(out, "tokenizer.ggml.token_type")[1]
check(token_type == [3 if i in special_ids else 1 for i in range(len(tokens))], "token types")
merges = field(out, "tokenizer.ggml.merges")[1]
tj_merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in tj["model"]["merges"]]
check(merges == tj_merges, "merges differ from tokenizer.json")
for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
    check(field(out, key)[1] == field(src, key)[1], f"{key} differs from the source GGUF")

# --- tensors --------------------------------------------------------------------------------
n_layer = field(out, "llama.block_count")[1]


def more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


BLOCK = {Q.Q4_K: 256, Q.Q6_K: 256, Q.Q5_0: 32, Q.Q8_0: 32}
FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}


def expected_type(name, shape):
    """llama-quantize's choice (llama-quant.cpp) for a tied llama model."""
    if len(shape) < 2:
        return Q.F32
    ne0 = int(shape[0])
    if mix == "Q8_0":
        return Q.Q8_0
    t = Q.Q4_K
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if name == "token_embd.weight":  # tied: quantized like output.weight
        t = Q.Q8_0 if ne0 % 256 else Q.Q6_K
    elif name.endswith("attn_v.weight") and more_bits(layer, n_layer):
        t = Q.Q6_K
    elif name.endswith("ffn_down.weight") and more_bits(layer, n_layer):
        t = Q.Q6_K
    if ne0 % BLOCK.get(t, 1):
        t = FALLBACK[t]
    return t


# Relative RMS error bounds per type against the source (itself Q4_1/Q8_0 values).
BOUND = {Q.F32: 0.0, Q.Q8_0: 0.01, Q.Q6_K: 0.03, Q.Q5_0: 0.06, Q.Q4_K: 0.12}
src_tensors = {t.name: t for t in src.tensors}
check(sorted(src_tensors) == sorted(t.name for t in out.tensors), "tensor names differ")
stats = {}
for t in out.tensors:
    s = src_tensors.get(t.name)
    if s is None:
        continue
    check(list(t.shape) == list(s.shape), f"{t.name}: dims {list(t.shape)} != {list(s.shape)}")
    want = expected_type(t.name, list(t.shape))
    check(t.tensor_type == want, f"{t.name}: type {t.tensor_type.name}, expected {want.name}")
    a = quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    b = quants.dequantize(s.data, s.tensor_type).astype(np.float64).reshape(-1)
    rel = float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b ** 2)), 1e-30))
    st = stats.setdefault(t.tensor_type.name, {"tensors": 0, "max_rel_rms": 0.0})
    st["tensors"] += 1
    st["max_rel_rms"] = max(st["max_rel_rms"], rel)
    bound = BOUND.get(t.tensor_type)
    check(bound is not None and rel <= bound,
          f"{t.name} ({t.tensor_type.name}): relative RMS error {rel:.4g} > {bound}")

print(json.dumps({"mix": mix, "tensors": len(out.tensors), "tokens": len(tokens),
                  "merges": len(merges), "per_type": stats}))
if failures:
    print("\n".join(failures[:40]), file=sys.stderr)
    sys.exit(1)
