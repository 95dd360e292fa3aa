"""Fixtures for "QDQ import equals onnxruntime" tests: small float models built with
onnx.helper, quantized by onnxruntime's own quantizers (ort_quantize.py), with inputs and
onnxruntime's outputs. Deterministic for a seed.

Usage: python make_qdq_fixtures.py OUT_DIR [--seed S]

Models (every one passes onnx.checker.check_model(full_check=True), or the script fails):
  cnn_f32                 x [N,3,16,16] -> Conv(3->8, 3x3, pad 1) -> Relu -> Conv(8->16, 3x3,
                          stride 2, pad 1) -> GlobalAveragePool -> Flatten -> Gemm(16->10,
                          transB) -> y [N,10]; opset 13, IR 7, batch dimension symbolic "N"
  mlp_f32                 x [N,48] -> MatMul(48x64) -> Add -> Relu -> MatMul(64x16) -> Add
                          -> y [N,16]; opset 21, IR 10
  {cnn,mlp}_qdq_u8s8_tensor   quantize_static, QDQ, MinMax: uint8 activations, int8 weights,
                              per tensor
  {cnn,mlp}_qdq_s8s8_channel  the same with int8 activations and per-channel int8 weights
  mlp_int4_b32_sym        MatMulNBitsQuantizer, QDQ: MatMul weights as blocked INT4
                          DequantizeLinear (axis 0, block_size 32, no zero point), opset 21;
                          K=48 leaves a partial last block
  mlp_uint4_b32_asym      the same, UINT4 with zero points

Files:
  OUT_DIR/<model>.onnx
  OUT_DIR/calib/{cnn,mlp}/calib_NN.npy   16 calibration inputs, [1, ...] float32
  OUT_DIR/inputs/{cnn,mlp}_I.npy         3 evaluation inputs, batch 2 (the batch is dynamic)
  OUT_DIR/outputs/<model>_I.npy          onnxruntime CPU outputs, graph optimizations
                                         disabled: the graph as written (DequantizeLinear
                                         then the float op) — what an importer reproduces
  OUT_DIR/outputs/<model>_opt_I.npy      the same with default optimizations (onnxruntime
                                         fuses QDQ groups into integer kernels: may differ
                                         by a quantization step)
  OUT_DIR/manifest.json                  every model's file, input/output names, options,
                                         ort_quantize summary, and the max |diff| between
                                         the output sets and against the float model
"""
import argparse
import contextlib
import json
import logging
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# ort_quantize.py sits beside this script; no __pycache__ in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ort_quantize  # noqa: E402

N_CALIB = 16
N_EVAL = 3
EVAL_BATCH = 2


def tensor(rng, name, shape, fan_in):
    """He-initialized float32 initializer."""
    a = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
    return numpy_helper.from_array(a, name)


def bias(rng, name, n):
    return numpy_helper.from_array(rng.normal(0.0, 0.1, size=(n,)).astype(np.float32), name)


def make_cnn(rng):
    inits = [
        tensor(rng, "conv1.weight", (8, 3, 3, 3), 27),
        bias(rng, "conv1.bias", 8),
        tensor(rng, "conv2.weight", (16, 8, 3, 3), 72),
        bias(rng, "conv2.bias", 16),
        tensor(rng, "fc.weight", (10, 16), 16),
        bias(rng, "fc.bias", 10),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="burn-quant make_qdq_fixtures")
    model.ir_version = 7
    return model


def make_mlp(rng):
    inits = [
        tensor(rng, "fc1.weight", (48, 64), 48),
        bias(rng, "fc1.bias", 64),
        tensor(rng, "fc2.weight", (64, 16), 64),
        bias(rng, "fc2.bias", 16),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["m1"], name="fc1.matmul"),
        helper.make_node("Add", ["m1", "fc1.bias"], ["a1"], name="fc1.add"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "fc2.weight"], ["m2"], name="fc2.matmul"),
        helper.make_node("Add", ["m2", "fc2.bias"], ["y"], name="fc2.add"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                              producer_name="burn-quant make_qdq_fixtures")
    model.ir_version = 10
    return model


def check(path):
    """onnx's full check (strict shape inference included); any failure aborts the script."""
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - report which file, then fail
        raise SystemExit(f"onnx.checker.check_model(full_check=True) failed for {path}: {e}")


def run(path, x, optimize):
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads = 1  # deterministic reductions
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    out = a.out_dir
    for d in ("calib/cnn", "calib/mlp", "inputs", "outputs"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    rng = np.random.default_rng(a.seed)

    floats = {"cnn": make_cnn(rng), "mlp": make_mlp(rng)}
    shapes = {"cnn": (3, 16, 16), "mlp": (48,)}
    data = {
        # Image-like inputs in [-1, 1] (the PP-OCR normalization) for the CNN, N(0, 1) for the MLP.
        "cnn": lambda n: rng.uniform(-1.0, 1.0, size=(n, *shapes["cnn"])).astype(np.float32),
        "mlp": lambda n: rng.normal(0.0, 1.0, size=(n, *shapes["mlp"])).astype(np.float32),
    }
    manifest = {"seed": a.seed, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "models": {}, "inputs": {}}
    for family, model in floats.items():
        path = os.path.join(out, f"{family}_f32.onnx")
        onnx.save(model, path)
        check(path)
        for i in range(N_CALIB):
            np.save(os.path.join(out, "calib", family, f"calib_{i:02d}.npy"), data[family](1))
        manifest["inputs"][family] = []
        for i in range(N_EVAL):
            rel = os.path.join("inputs", f"{family}_{i}.npy")
            np.save(os.path.join(out, rel), data[family](EVAL_BATCH))
            manifest["inputs"][family].append(rel)
        manifest["models"][f"{family}_f32"] = {"file": f"{family}_f32.onnx", "family": family, "float": True}

    jobs = []
    for family in ("cnn", "mlp"):
        calib = os.path.join(out, "calib", family)
        jobs.append((f"{family}_qdq_u8s8_tensor", family, lambda i, o, c=calib: ort_quantize.quantize_qdq(
            i, o, c, per_channel=False, activation_type="uint8", weight_type="int8")))
        jobs.append((f"{family}_qdq_s8s8_channel", family, lambda i, o, c=calib: ort_quantize.quantize_qdq(
            i, o, c, per_channel=True, activation_type="int8", weight_type="int8")))
    jobs.append(("mlp_int4_b32_sym", "mlp", lambda i, o: ort_quantize.quantize_matmul_int4(i, o, 32, symmetric=True)))
    jobs.append(("mlp_uint4_b32_asym", "mlp", lambda i, o: ort_quantize.quantize_matmul_int4(i, o, 32, symmetric=False)))
    for name, family, quantize in jobs:
        path = os.path.join(out, f"{name}.onnx")
        # onnxruntime's calibrators may print progress: keep stdout for the JSON report.
        with contextlib.redirect_stdout(sys.stderr):
            summary = quantize(os.path.join(out, f"{family}_f32.onnx"), path)
        check(path)
        if summary["nodes_quantized_total"] == 0:
            raise SystemExit(f"{name}: onnxruntime quantized no node")
        summary["input"] = f"{family}_f32.onnx"
        summary["output"] = f"{name}.onnx"
        summary["options"].pop("calib_dir", None)
        manifest["models"][name] = {"file": f"{name}.onnx", "family": family, "float": False, "quantization": summary}

    for name, entry in manifest["models"].items():
        path = os.path.join(out, entry["file"])
        model = onnx.load(path)
        entry["input_name"] = model.graph.input[0].name
        entry["output_name"] = model.graph.output[0].name
        entry["opset"] = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        entry["outputs"], entry["outputs_optimized"] = [], []
        diff_opt, diff_float = 0.0, 0.0
        for i, rel in enumerate(manifest["inputs"][entry["family"]]):
            x = np.load(os.path.join(out, rel))
            y = run(path, x, optimize=False)
            y_opt = run(path, x, optimize=True)
            y_float = run(os.path.join(out, f"{entry['family']}_f32.onnx"), x, optimize=False)
            for key, arr, suffix in (("outputs", y, ""), ("outputs_optimized", y_opt, "_opt")):
                rel_out = os.path.join("outputs", f"{name}{suffix}_{i}.npy")
                np.save(os.path.join(out, rel_out), arr)
                entry[key].append(rel_out)
            diff_opt = max(diff_opt, float(np.abs(y - y_opt).max()))
            diff_float = max(diff_float, float(np.abs(y - y_float).max()))
        entry["max_abs_diff_optimized_vs_disabled"] = diff_opt
        entry["max_abs_diff_vs_float"] = diff_float

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    report = {
        name: {
            "nodes_quantized": e.get("quantization", {}).get("nodes_quantized", {}),
            "bytes": os.path.getsize(os.path.join(out, e["file"])),
            "max_abs_diff_vs_float": e["max_abs_diff_vs_float"],
            "max_abs_diff_optimized_vs_disabled": e["max_abs_diff_optimized_vs_disabled"],
        }
        for name, e in manifest["models"].items()
    }
    json.dump({"out_dir": out, "models": report}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
