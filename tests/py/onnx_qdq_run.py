"""Checks an ONNX model with onnx.checker (full check) and runs it with onnxruntime.

usage: onnx_qdq_run.py MODEL INPUT.npy OUT_DIR [--fetch NAME]... [--optimized]

With graph optimisations off (ORT_DISABLE_ALL: every Q/DQ node runs as written) the graph
outputs and then the values named by --fetch (made extra graph outputs) are written to
OUT_DIR/out_<i>.npy. With --optimized, the unmodified model also runs with onnxruntime's default
optimisations and session.qdq_matmulnbits_accuracy_level = 0 (formats.md 2.4: the int4 MatMul
fusion otherwise quantizes activations to int8); its outputs go to OUT_DIR/opt_<i>.npy.
Prints one JSON line: opset imports, IR version, op types (and those of the optimised graph).
"""
import argparse
import copy
import json
import os

import numpy as np
import onnx
import onnxruntime as ort


def session(model, optimized, dump=None):
    so = ort.SessionOptions()
    if optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        so.optimized_model_filepath = dump
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("out_dir")
    ap.add_argument("--fetch", action="append", default=[])
    ap.add_argument("--optimized", action="store_true")
    args = ap.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    x = np.load(args.input)
    feed = {model.graph.input[0].name: x}

    plain = copy.deepcopy(model)
    value_info = {v.name: v for v in plain.graph.value_info}
    for name in args.fetch:
        if name not in value_info:
            raise SystemExit(f"--fetch {name}: no value_info of that name in the model")
        plain.graph.output.append(value_info[name])
    outs = session(plain, False).run(None, feed)
    for i, y in enumerate(outs):
        np.save(os.path.join(args.out_dir, f"out_{i}.npy"), np.asarray(y, dtype=np.float32))

    optimized_ops = []
    if args.optimized:
        dump = os.path.join(args.out_dir, "optimized.onnx")
        for i, y in enumerate(session(model, True, dump).run(None, feed)):
            np.save(os.path.join(args.out_dir, f"opt_{i}.npy"), np.asarray(y, dtype=np.float32))
        optimized_ops = sorted({n.op_type for n in onnx.load(dump).graph.node})

    print(
        json.dumps(
            {
                "ir_version": model.ir_version,
                "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                "ops": sorted({n.op_type for n in model.graph.node}),
                "optimized_ops": optimized_ops,
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
