"""Checks a QONNX model with onnx.checker and executes it with qonnx's reference executor.

usage: qonnx_exec.py MODEL INPUT.npy OUT_DIR [--fetch NAME]...

`qonnx.core.onnx_exec.execute_onnx` runs the custom ops (Quant, BipolarQuant, FloatQuant, Trunc)
with qonnx's own numpy implementations and the standard ops through onnxruntime, node by node.
The graph outputs and then the values named by --fetch are written to OUT_DIR/out_<i>.npy.
Prints one JSON line: opset imports, IR version, op types.
"""
import argparse
import json
import os

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("out_dir")
    ap.add_argument("--fetch", action="append", default=[])
    args = ap.parse_args()

    model = onnx.load(args.model)
    # The checker knows no schema for the custom domain and skips those nodes; it still checks
    # the graph structure, the standard nodes, types and initializers.
    onnx.checker.check_model(model, full_check=True)
    wrapper = ModelWrapper(model)
    x = np.load(args.input)
    context = execute_onnx(
        wrapper, {model.graph.input[0].name: x}, return_full_exec_context=True
    )
    names = [o.name for o in model.graph.output] + args.fetch
    for i, name in enumerate(names):
        np.save(
            os.path.join(args.out_dir, f"out_{i}.npy"),
            np.asarray(context[name], dtype=np.float32),
        )
    print(
        json.dumps(
            {
                "ir_version": model.ir_version,
                "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                "ops": sorted({n.op_type for n in model.graph.node}),
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
