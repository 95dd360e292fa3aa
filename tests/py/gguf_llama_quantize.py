"""Quantizes a GGUF with llama.cpp's own llama-quantize (through llama-cpp-python's binding), to
give the reference file our llama exporter's mixes are compared with.

usage: gguf_llama_quantize.py SOURCE OUTPUT MIX      (MIX: a llama-quantize name, e.g. Q4_K_M)

Re-quantizing an already quantized source needs llama-quantize's --allow-requantize; the source
tensors are dequantized to f32 first, exactly as our LlamaGgufSource does.
"""

import ctypes
import sys

import llama_cpp

FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
          "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
          "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "Q2_K_S": 21, "IQ4_NL": 25, "BF16": 32}

src, dst, mix = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = FTYPES[mix]
params.allow_requantize = True
params.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
if rc != 0:
    sys.exit(f"llama_model_quantize returned {rc}")
