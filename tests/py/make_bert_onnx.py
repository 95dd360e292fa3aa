"""A BERT encoder as an ONNX file laid out the way `torch.onnx.export` (the TorchScript exporter,
`dynamo=False`, `do_constant_folding=True`) writes a Hugging Face `BertModel` with eager
attention, built with `onnx.helper` because torch is not in the test venv. It gives an ONNX
importer "the attention pattern of a BERT export" to read, over real weights (a BERT
safetensors checkpoint such as all-MiniLM-L6-v2), and the batch it was checked on.

usage: make_bert_onnx.py MODEL_DIR OUT.onnx [--opset 14] [--no-check] [--write-io]
                         [--fusion-check]

The graph: `BertModel(input_ids, attention_mask, token_type_ids) -> last_hidden_state`, inputs
int64 `[batch, sequence]`, output float32 `[batch, sequence, hidden]`, both axes dynamic. It
follows the exporter's symbolic functions op for op:

* extended attention mask, `attention_mask[:, None, None, :]`, `.to(float32)`,
  `(1.0 - m) * torch.finfo(float32).min`: Unsqueeze(axes [1]), Unsqueeze(axes [2]), Cast,
  Sub(1.0, ·), Mul(·, min); axes are inputs (Constant nodes) from opset 13;
* embeddings: `position_ids[:, 0 : seq_len + 0]` as Shape(input_ids) -> Gather(1) ->
  Add(0) -> Unsqueeze -> Slice(embeddings.position_ids [1, 512]); Gather on the word, token
  type and position tables; word + token_type, then + position;
* `nn.Linear` on 3-D input: MatMul by the transposed weight (folded into an `onnx::MatMul_N`
  initializer `[in, out]`), then Add(bias, ·) -- the bias is the first input, as in the
  exporter's `linear` symbolic;
* `transpose_for_scores`: `x.size()[:-1] + (heads, head_dim)` is Shape -> Gather(0),
  Shape -> Gather(1), Unsqueeze each, Concat with the folded constants `[heads]`,
  `[head_dim]` (`onnx::Concat_N` initializers, deduplicated by value as the exporter does),
  Reshape, Transpose(0, 2, 1, 3); K's permute and `.transpose(-1, -2)` are fused by the
  exporter's peephole pass into one Transpose(0, 2, 3, 1);
* MatMul(Q, Kᵀ), Div(·, sqrt(head_dim)), Add(·, mask), Softmax(axis -1), MatMul(·, V),
  Transpose(0, 2, 1, 3), Reshape to `size()[:-2] + (hidden,)` built the same dynamic way;
* LayerNorm below opset 17 decomposed as `native_layer_norm`'s symbolic writes it:
  ReduceMean(axes [-1]), Sub, Pow(2), ReduceMean, Add(eps), Sqrt, Div, Mul(gamma),
  Add(beta); from opset 17 one LayerNormalization;
* exact GELU as `gelu`'s symbolic writes it: Div(√2), Erf, Add(1), Mul(x, ·), Mul(·, 0.5);
* dropout is absent (eval mode), the pooler is pruned (only last_hidden_state is an output).

Node names and their outputs follow torch 2.x's scoped naming (`/encoder/layer.0/attention/
self/query/MatMul`, output `..._output_0`), parameters keep their state-dict names.

--check (default on): tokenizes a few sentences of different lengths and one sentence pair
(token type 1) with the model's tokenizer.json, pads them into one batch, runs onnxruntime on
CPU with graph optimizations disabled (so the unfused pattern is what runs) and compares each
row's unpadded tokens with a float64 numpy forward built from bert_reference.py's functions;
exits non-zero when the max abs difference exceeds 1e-4.
--write-io: writes that batch (input_ids.npy, attention_mask.npy, token_type_ids.npy, int64)
and onnxruntime's output (last_hidden_state.npy, float32) next to OUT.onnx.
--fusion-check: also runs onnxruntime's BERT fusion optimizer (onnxruntime.transformers, whose
patterns are written against real torch exports) on the model, prints the fused op histogram and
fails unless every layer's attention and the embedding block were recognised. (It warns that the
producer is not "pytorch"; the file does not claim to be.)
"""

import argparse
import json
import math
import os
import sys
import time
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert_reference as ref  # noqa: E402  (the numpy BERT's math: one source of truth)

TOLERANCE = 1e-4
F32_MIN = float(np.finfo(np.float32).min)  # torch.finfo(torch.float32).min
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

SENTENCES = [
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    ("Where does the river begin?", "High in the mountains, from melting snow."),
]


class Exporter:
    """Collects nodes and initializers, naming them as torch.onnx.export does."""

    def __init__(self):
        self.nodes = []
        self.initializers = {}
        self.counts = Counter()
        # Folded constants (transposed weights, Concat's int constants): placeholder names
        # now, numbered `onnx::<Consumer>_<N>` once the graph is complete (torch numbers them
        # after every value of the traced graph).
        self.folded = []
        self.folded_by_value = {}

    def node(self, scope, op, inputs, **attrs):
        k = self.counts[(scope, op)]
        self.counts[(scope, op)] += 1
        name = f"{scope}/{op}" + (f"_{k}" if k else "")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def constant(self, scope, value, dtype):
        tensor = numpy_helper.from_array(np.array(value, dtype=dtype))
        return self.node(scope, "Constant", [], value=tensor)

    def param(self, name, array):
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def fold(self, consumer, array, dedup=False):
        array = np.ascontiguousarray(array)
        key = (consumer, array.dtype.str, array.shape, array.tobytes()) if dedup else None
        if key is not None and key in self.folded_by_value:
            return self.folded_by_value[key]
        name = f"@fold{len(self.folded)}"
        self.folded.append((name, consumer))
        self.initializers[name] = numpy_helper.from_array(array, name)
        if key is not None:
            self.folded_by_value[key] = name
        return name

    def number_folded(self):
        values = sum(len(n.output) for n in self.nodes) + 3 + len(self.initializers)
        rename = {
            p: f"onnx::{consumer}_{values + 1 + i}" for i, (p, consumer) in enumerate(self.folded)
        }
        for n in self.nodes:
            n.input[:] = [rename.get(i, i) for i in n.input]
        inits = {}
        for name, t in self.initializers.items():
            t.name = rename.get(name, name)
            inits[t.name] = t
        self.initializers = inits


def build(t, cfg, opset):
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = cfg["layer_norm_eps"]
    g = Exporter()
    i64, f32 = np.int64, np.float32

    def unsqueeze(scope, x, axis):
        if opset >= 13:
            return g.node(scope, "Unsqueeze", [x, g.constant(scope, [axis], i64)])
        return g.node(scope, "Unsqueeze", [x], axes=[axis])

    def linear(scope, x, prefix):
        w = g.fold("MatMul", t[prefix + ".weight"].T)  # t(weight), constant-folded
        y = g.node(scope, "MatMul", [x, w])
        return g.node(scope, "Add", [g.param(prefix + ".bias", t[prefix + ".bias"]), y])

    def layer_norm(scope, x, prefix):
        gamma = g.param(prefix + ".weight", t[prefix + ".weight"])
        beta = g.param(prefix + ".bias", t[prefix + ".bias"])
        if opset >= 17:
            return g.node(scope, "LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)
        two = g.constant(scope, 2.0, f32)
        eps_c = g.constant(scope, eps, f32)
        mean = g.node(scope, "ReduceMean", [x], axes=[-1])
        num = g.node(scope, "Sub", [x, mean])
        var = g.node(scope, "ReduceMean", [g.node(scope, "Pow", [num, two])], axes=[-1])
        den = g.node(scope, "Sqrt", [g.node(scope, "Add", [var, eps_c])])
        y = g.node(scope, "Div", [num, den])
        return g.node(scope, "Add", [g.node(scope, "Mul", [y, gamma]), beta])

    def gelu(scope, x):
        div = g.node(scope, "Div", [x, g.constant(scope, math.sqrt(2.0), f32)])
        erf = g.node(scope, "Erf", [div])
        plus_one = g.node(scope, "Add", [erf, g.constant(scope, 1.0, f32)])
        y = g.node(scope, "Mul", [x, plus_one])
        return g.node(scope, "Mul", [y, g.constant(scope, 0.5, f32)])

    def size(scope, x, dim):
        shape = g.node(scope, "Shape", [x])
        return g.node(scope, "Gather", [shape, g.constant(scope, dim, i64)], axis=0)

    def reshape_keep_2(scope, x, tail):
        """`x.view(x.size()[:2] + tail)` with the leading sizes read at run time."""
        d0, d1 = size(scope, x, 0), size(scope, x, 1)
        parts = [unsqueeze(scope, d0, 0), unsqueeze(scope, d1, 0)]
        parts += [g.fold("Concat", np.array([v], i64), dedup=True) for v in tail]
        return g.node(scope, "Reshape", [x, g.node(scope, "Concat", parts, axis=0)])

    # BertModel.forward: get_extended_attention_mask comes first.
    m = unsqueeze("", unsqueeze("", "attention_mask", 1), 2)
    m = g.node("", "Cast", [m], to=TensorProto.FLOAT)
    m = g.node("", "Sub", [g.constant("", 1.0, f32), m])
    mask = g.node("", "Mul", [m, g.constant("", F32_MIN, f32)])

    # BertEmbeddings.forward.
    e = "/embeddings"
    seq = size(e, "input_ids", 1)
    end = g.node(e, "Add", [seq, g.constant(e, 0, i64)])  # seq_length + past_key_values_length
    end = unsqueeze(e, end, 0)
    if "embeddings.position_ids" in t:
        position_ids = t["embeddings.position_ids"].astype(i64)
    else:
        position_ids = np.arange(cfg["max_position_embeddings"], dtype=i64)[None, :]
    pos_ids = g.node(e, "Slice", [
        g.param("embeddings.position_ids", position_ids),
        g.constant(e, [0], i64), end, g.constant(e, [1], i64), g.constant(e, [1], i64),
    ])

    def table(name):
        return g.param(f"embeddings.{name}.weight", t[f"embeddings.{name}.weight"])

    x = g.node(e + "/word_embeddings", "Gather", [table("word_embeddings"), "input_ids"])
    tt = g.node(
        e + "/token_type_embeddings", "Gather", [table("token_type_embeddings"), "token_type_ids"]
    )
    x = g.node(e, "Add", [x, tt])
    pos = g.node(e + "/position_embeddings", "Gather", [table("position_embeddings"), pos_ids])
    x = g.node(e, "Add", [x, pos])
    x = layer_norm(e + "/LayerNorm", x, "embeddings.LayerNorm")

    for i in range(cfg["num_hidden_layers"]):
        p, s = f"encoder.layer.{i}", f"/encoder/layer.{i}"
        sa, sp = s + "/attention/self", p + ".attention.self"
        q = linear(sa + "/query", x, sp + ".query")
        k = linear(sa + "/key", x, sp + ".key")
        k = g.node(sa, "Transpose", [reshape_keep_2(sa, k, (heads, head_dim))], perm=[0, 2, 3, 1])
        v = linear(sa + "/value", x, sp + ".value")
        v = g.node(sa, "Transpose", [reshape_keep_2(sa, v, (heads, head_dim))], perm=[0, 2, 1, 3])
        q = g.node(sa, "Transpose", [reshape_keep_2(sa, q, (heads, head_dim))], perm=[0, 2, 1, 3])
        scores = g.node(sa, "MatMul", [q, k])
        scores = g.node(sa, "Div", [scores, g.constant(sa, math.sqrt(head_dim), f32)])
        scores = g.node(sa, "Add", [scores, mask])
        probs = g.node(sa, "Softmax", [scores], axis=-1)
        ctx = g.node(sa, "MatMul", [probs, v])
        ctx = g.node(sa, "Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = reshape_keep_2(sa, ctx, (hidden,))

        so = s + "/attention/output"
        a = linear(so + "/dense", ctx, p + ".attention.output.dense")
        a = g.node(so, "Add", [a, x])
        x = layer_norm(so + "/LayerNorm", a, p + ".attention.output.LayerNorm")

        h = linear(s + "/intermediate/dense", x, p + ".intermediate.dense")
        h = gelu(s + "/intermediate/intermediate_act_fn", h)
        o = linear(s + "/output/dense", h, p + ".output.dense")
        o = g.node(s + "/output", "Add", [o, x])
        x = layer_norm(s + "/output/LayerNorm", o, p + ".output.LayerNorm")

    # output_names=["last_hidden_state"] renames the last value.
    for n in g.nodes:
        n.output[:] = ["last_hidden_state" if o == x else o for o in n.output]
    g.number_folded()

    def io(name, elem, dims):
        return helper.make_tensor_value_info(name, elem, dims)

    graph = helper.make_graph(
        g.nodes,
        "main_graph",
        [io(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUTS],
        [io("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        initializer=list(g.initializers.values()),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="burn-quant tests/py/make_bert_onnx.py",
        doc_string="HF BertModel as torch.onnx.export (TorchScript, eager attention) lays it out",
    )
    model.ir_version = 8  # what torch 2.x writes
    return model


def token_states(t, ids, type_ids):
    """Float64 last_hidden_state of one unpadded sequence: bert_reference.embed's forward up to
    the last LayerNorm (before its pooling), with token type ids, over its own functions."""
    s = len(ids)
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.token_type_embeddings.weight"][type_ids]
        + t["embeddings.position_embeddings.weight"][np.arange(s)]
    )
    x = ref.layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    d = x.shape[-1]
    dh = d // ref.HEADS
    for i in range(ref.LAYERS):
        p = f"encoder.layer.{i}"

        def heads(name):
            return ref.linear(x, t, p + name).reshape(s, ref.HEADS, dh).transpose(1, 0, 2)

        q = heads(".attention.self.query")
        k = heads(".attention.self.key")
        v = heads(".attention.self.value")
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        ctx = (w @ v).transpose(1, 0, 2).reshape(s, d)
        a = ref.linear(ctx, t, p + ".attention.output.dense")
        ln = p + ".attention.output.LayerNorm"
        x = ref.layer_norm(x + a, t[ln + ".weight"], t[ln + ".bias"])
        h = ref.gelu(ref.linear(x, t, p + ".intermediate.dense"))
        o = ref.linear(h, t, p + ".output.dense")
        ln = p + ".output.LayerNorm"
        x = ref.layer_norm(x + o, t[ln + ".weight"], t[ln + ".bias"])
    return x


def make_batch(model_dir):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(*s) if isinstance(s, tuple) else tok.encode(s) for s in SENTENCES]
    pad = tok.token_to_id("[PAD]") or 0
    seq = max(len(e.ids) for e in encs)
    n = len(encs)
    ids = np.full((n, seq), pad, np.int64)
    mask = np.zeros((n, seq), np.int64)
    types = np.zeros((n, seq), np.int64)
    for r, e in enumerate(encs):
        ids[r, : len(e.ids)] = e.ids
        mask[r, : len(e.ids)] = e.attention_mask
        types[r, : len(e.ids)] = e.type_ids
    return ids, mask, types, [len(e.ids) for e in encs]


def check(model_path, model_dir, tensors, write_io):
    import onnxruntime as ort

    ids, mask, types, lengths = make_batch(model_dir)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    feeds = dict(zip(INPUTS, (ids, mask, types)))
    (out,) = sess.run(["last_hidden_state"], feeds)
    hidden = tensors["embeddings.LayerNorm.weight"].shape[0]
    assert out.dtype == np.float32 and out.shape == (*ids.shape, hidden), out.shape
    assert np.isfinite(out).all(), "non-finite values in onnxruntime's output (padding included)"

    t64 = {k: v.astype(np.float64) for k, v in tensors.items() if v.dtype == np.float32}
    worst = 0.0
    for r, n in enumerate(lengths):
        want = token_states(t64, ids[r, :n], types[r, :n])
        if not types[r, :n].any():
            # The per-token forward is bert_reference.embed's: its pooled output must agree.
            mean = want.mean(0)
            pooled = mean / max(np.linalg.norm(mean), 1e-12)
            drift = float(np.abs(pooled - ref.embed(t64, ids[r, :n])).max())
            assert drift < 1e-12, f"row {r}: token_states vs bert_reference.embed: {drift}"
        diff = float(np.abs(out[r, :n].astype(np.float64) - want).max())
        worst = max(worst, diff)
        kinds = sorted(set(types[r, :n].tolist()))
        print(f"row {r}: {n:2d} tokens (token types {kinds}), max |Δ| {diff:.3e}")
    print(f"onnxruntime (optimizations disabled) vs numpy f64: max |Δ| {worst:.3e} "
          f"over batch {list(ids.shape)}")
    if write_io:
        d = os.path.dirname(os.path.abspath(model_path))
        names = [*INPUTS, "last_hidden_state"]
        for name, a in zip(names, (ids, mask, types, out)):
            np.save(os.path.join(d, name + ".npy"), a)
        print(f"wrote {', '.join(n + '.npy' for n in names)} to {d}")
    return worst


def fusion_check(model_path, cfg):
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        model_path,
        model_type="bert",
        num_heads=cfg["num_attention_heads"],
        hidden_size=cfg["hidden_size"],
        opt_level=0,
        use_gpu=False,
    )
    fused = Counter(n.op_type for n in opt.model.graph.node)
    print("onnxruntime BERT fusion:", json.dumps(dict(sorted(fused.items()))))
    layers = cfg["num_hidden_layers"]
    assert fused["Attention"] == layers and fused["EmbedLayerNormalization"] == 1, fused


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--opset", type=int, default=14)
    ap.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--write-io", action="store_true")
    ap.add_argument("--fusion-check", action="store_true")
    args = ap.parse_args()
    if not 13 <= args.opset <= 17:
        sys.exit(f"--opset {args.opset}: supported are 13..17 "
                 "(18 moves ReduceMean's axes to an input, 20 adds Gelu)")
    started = time.perf_counter()

    with open(os.path.join(args.model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    # bert_reference.py hard-codes its model's shape; the two must describe the same BERT.
    shape = (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["layer_norm_eps"])
    assert shape == (ref.LAYERS, ref.HEADS, ref.EPS), cfg
    assert cfg.get("hidden_act", "gelu") == "gelu", cfg
    assert cfg.get("position_embedding_type", "absolute") == "absolute", cfg
    tensors = load_file(os.path.join(args.model_dir, "model.safetensors"))

    model = build(tensors, cfg, args.opset)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    out_type = model.graph.output[0].type.tensor_type
    dims = [d.dim_param or d.dim_value for d in out_type.shape.dim]
    assert dims == ["batch", "sequence", cfg["hidden_size"]], dims
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    onnx.save(model, args.out)

    hist = Counter(n.op_type for n in model.graph.node)
    mib = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out}: opset {args.opset}, {len(model.graph.node)} nodes, "
          f"{len(model.graph.initializer)} initializers, {mib:.1f} MiB")
    print("ops:", json.dumps(dict(sorted(hist.items()))))

    # --write-io needs onnxruntime's output, so it runs the check as well.
    worst = None
    if args.check or args.write_io:
        worst = check(args.out, args.model_dir, tensors, args.write_io)
    if args.fusion_check:
        fusion_check(args.out, cfg)
    print(f"done in {time.perf_counter() - started:.1f} s")
    if worst is not None and not worst <= TOLERANCE:
        sys.exit(f"max |Δ| {worst:.3e} exceeds {TOLERANCE:.0e}")


if __name__ == "__main__":
    main()
