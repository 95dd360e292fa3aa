"""Independent reference for tests/support/bert.rs: token ids from Hugging Face `tokenizers`
(the model's own tokenizer.json) and sentence embeddings from a plain numpy BERT forward
(float64) over the safetensors weights, one sentence at a time with no padding.

usage: bert_reference.py MODEL_DIR SENTENCES_JSON
  SENTENCES_JSON: a JSON list of strings.
prints JSON: {"ids": [[int]], "embeddings": [[float]]}
"""

import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

LAYERS = 6
HEADS = 12
EPS = 1e-12


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


def gelu(x):
    # Exact (erf) GELU, BERT's "gelu".
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def linear(x, t, name):
    # PyTorch layout: weight [out, in].
    return x @ t[name + ".weight"].T + t[name + ".bias"]


def embed(t, ids):
    s = len(ids)
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.token_type_embeddings.weight"][np.zeros(s, dtype=np.int64)]
        + t["embeddings.position_embeddings.weight"][np.arange(s)]
    )
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    d = x.shape[-1]
    dh = d // HEADS
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        q = linear(x, t, p + ".attention.self.query").reshape(s, HEADS, dh).transpose(1, 0, 2)
        k = linear(x, t, p + ".attention.self.key").reshape(s, HEADS, dh).transpose(1, 0, 2)
        v = linear(x, t, p + ".attention.self.value").reshape(s, HEADS, dh).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        scores = scores - scores.max(-1, keepdims=True)
        w = np.exp(scores)
        w = w / w.sum(-1, keepdims=True)
        ctx = (w @ v).transpose(1, 0, 2).reshape(s, d)
        a = linear(ctx, t, p + ".attention.output.dense")
        x = layer_norm(
            x + a,
            t[p + ".attention.output.LayerNorm.weight"],
            t[p + ".attention.output.LayerNorm.bias"],
        )
        h = gelu(linear(x, t, p + ".intermediate.dense"))
        o = linear(h, t, p + ".output.dense")
        x = layer_norm(x + o, t[p + ".output.LayerNorm.weight"], t[p + ".output.LayerNorm.bias"])
    mean = x.mean(0)
    return mean / max(np.linalg.norm(mean), 1e-12)


def main():
    model_dir, sentences_path = sys.argv[1], sys.argv[2]
    with open(sentences_path, encoding="utf-8") as f:
        sentences = json.load(f)
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.no_truncation()
    tensors = {k: v.astype(np.float64) for k, v in load_file(f"{model_dir}/model.safetensors").items()
               if v.dtype == np.float32}
    ids, embeddings = [], []
    for s in sentences:
        enc = tok.encode(s)
        ids.append(enc.ids)
        embeddings.append(embed(tensors, np.array(enc.ids, dtype=np.int64)).tolist())
    json.dump({"ids": ids, "embeddings": embeddings}, sys.stdout)


if __name__ == "__main__":
    main()
