"""Quantize an ONNX model with onnxruntime's own quantizers, as the reference our QDQ import
and export are compared with.

Static QDQ (onnxruntime.quantization.quantize_static, QuantFormat.QDQ):
    python ort_quantize.py IN.onnx OUT.onnx --calib DIR [--per-channel]
        [--activation-type int8|uint8] [--weight-type int8|uint8]
        [--calibrate-method minmax|entropy|percentile] [--op-types Conv MatMul ...]
  DIR holds calibration inputs as .npy files, read in sorted file-name order, each one a
  complete input of the model's single input (with its batch axis, e.g. [1, 3, H, W]).

Blocked int4 weights for MatMul (onnxruntime MatMulNBitsQuantizer, QDQ format):
    python ort_quantize.py IN.onnx OUT.onnx --matmul-int4 BLOCK [--symmetric]
  Every MatMul with a constant 2-D weight gets DequantizeLinear(int4 or uint4 weight,
  scales [K/BLOCK, N], zero points when asymmetric, axis 0, block_size BLOCK) at opset 21.

Prints a JSON summary on stdout: options, nodes quantized, Q/DQ node counts, file sizes.
The functions `quantize_qdq` and `quantize_matmul_int4` are imported by
make_qdq_fixtures.py.
"""
import argparse
import contextlib
import json
import logging
import os
import sys

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
CALIBRATE_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class NpyDirReader(CalibrationDataReader):
    """Feeds every .npy file of a directory, in sorted file-name order, as the model's single
    (non-initializer) input."""

    def __init__(self, model_path, calib_dir):
        model = onnx.load(model_path, load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        inputs = [i.name for i in model.graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise SystemExit(f"{model_path}: expected one graph input, found {inputs}")
        self.input_name = inputs[0]
        self.files = sorted(f for f in os.listdir(calib_dir) if f.endswith(".npy"))
        if not self.files:
            raise SystemExit(f"{calib_dir}: no .npy calibration files")
        self.calib_dir = calib_dir
        self.rewind()

    def get_next(self):
        if self.pos >= len(self.files):
            return None
        x = np.load(os.path.join(self.calib_dir, self.files[self.pos]))
        self.pos += 1
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self):
        self.pos = 0


def summarize(in_path, out_path, options):
    """Counts Q/DQ nodes and the quantized nodes: those with a dequantized constant input
    (weights), and those wrapped in QDQ on every side (all inputs from DequantizeLinear, every
    output into QuantizeLinear, as onnxruntime wraps Relu between quantized convolutions)."""
    model = onnx.load(out_path)
    nodes = list(model.graph.node)
    inits = {i.name for i in model.graph.initializer}
    constants = inits | {o for n in nodes if n.op_type == "Constant" for o in n.output}
    dq = [n for n in nodes if n.op_type == "DequantizeLinear"]
    dq_outputs = {n.output[0] for n in dq}
    dq_weights = {n.output[0] for n in dq if n.input[0] in constants}
    consumers = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    quantized = {}
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        inputs = [i for i in n.input if i]
        weighted = any(i in dq_weights for i in inputs)
        wrapped = (
            bool(inputs)
            and all(i in dq_outputs for i in inputs)
            and all(consumers.get(o) and set(consumers[o]) == {"QuantizeLinear"} for o in n.output)
        )
        if weighted or wrapped:
            quantized[n.op_type] = quantized.get(n.op_type, 0) + 1
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "input": in_path,
        "output": out_path,
        "options": options,
        "nodes_quantized": quantized,
        "nodes_quantized_total": sum(quantized.values()),
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in nodes),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in nodes),
        "nodes": len(nodes),
        "opset": opset,
        "bytes_in": os.path.getsize(in_path),
        "bytes_out": os.path.getsize(out_path),
    }


def quantize_qdq(
    in_path,
    out_path,
    calib_dir,
    per_channel=False,
    activation_type="uint8",
    weight_type="int8",
    calibrate_method="minmax",
    op_types=None,
):
    """Static QDQ quantization calibrated on the .npy files of `calib_dir`; returns the
    summary dict."""
    reader = NpyDirReader(in_path, calib_dir)
    quantize_static(
        in_path,
        out_path,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types or None,
        per_channel=per_channel,
        activation_type=QUANT_TYPES[activation_type],
        weight_type=QUANT_TYPES[weight_type],
        calibrate_method=CALIBRATE_METHODS[calibrate_method],
    )
    return summarize(
        in_path,
        out_path,
        {
            "mode": "qdq",
            "calib_dir": calib_dir,
            "calib_files": len(reader.files),
            "per_channel": per_channel,
            "activation_type": activation_type,
            "weight_type": weight_type,
            "calibrate_method": calibrate_method,
            "op_types": op_types or "default",
        },
    )


def quantize_matmul_int4(in_path, out_path, block_size, symmetric=False):
    """Blocked int4 (symmetric: INT4) or uint4 with zero points (asymmetric) MatMul weights as
    DequantizeLinear at opset 21; returns the summary dict."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(in_path),
        bits=4,
        block_size=block_size,
        is_symmetric=symmetric,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(out_path, use_external_data_format=False)
    return summarize(
        in_path,
        out_path,
        {"mode": "matmul_int4", "block_size": block_size, "symmetric": symmetric},
    )


def run(a):
    """Runs the quantizer the command line asks for; returns its summary."""
    if a.matmul_int4 is not None:
        if a.matmul_int4 < 16 or a.matmul_int4 & (a.matmul_int4 - 1):
            raise SystemExit("--matmul-int4 BLOCK must be a power of two >= 16")
        return quantize_matmul_int4(a.input, a.output, a.matmul_int4, a.symmetric)
    if not a.calib:
        raise SystemExit("--calib DIR is required for static QDQ quantization")
    source = a.input
    if a.preprocess:
        # onnxruntime's recommended flow: its pre-processing (shape inference, graph
        # optimisation), and opset 13 when per-channel scales need it (quantize_static keeps
        # an older opset and writes a DequantizeLinear `axis` it does not have).
        from onnxruntime.quantization.shape_inference import quant_pre_process

        model = onnx.load(a.input)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        if a.per_channel and opset < 13:
            model = onnx.version_converter.convert_version(model, 13)
        source = os.path.abspath(a.output + ".pre.onnx")
        converted = os.path.abspath(a.output + ".opset.onnx")
        onnx.save(model, converted)
        # Symbolic shape inference gives up on the dynamic detector; ONNX shape inference and
        # the optimisation pass still run. It writes temporary files into the working
        # directory: run it in a scratch one.
        import tempfile

        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)
            try:
                quant_pre_process(converted, source, skip_symbolic_shape=True)
            finally:
                os.chdir(cwd)
        os.remove(converted)
    summary = quantize_qdq(
        source,
        a.output,
        a.calib,
        per_channel=a.per_channel,
        activation_type=a.activation_type,
        weight_type=a.weight_type,
        calibrate_method=a.calibrate_method,
        op_types=a.op_types,
    )
    if source != a.input:
        os.remove(source)
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--calib", help="directory of .npy calibration inputs (static QDQ)")
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--activation-type", choices=sorted(QUANT_TYPES), default="uint8")
    p.add_argument("--weight-type", choices=sorted(QUANT_TYPES), default="int8")
    p.add_argument("--calibrate-method", choices=sorted(CALIBRATE_METHODS), default="minmax")
    p.add_argument("--op-types", nargs="+", help="op types to quantize (default: all onnxruntime knows)")
    p.add_argument("--matmul-int4", type=int, metavar="BLOCK", help="blocked int4 MatMul weights instead")
    p.add_argument("--symmetric", action="store_true", help="with --matmul-int4: INT4 without zero points")
    p.add_argument("--preprocess", action="store_true",
                   help="quant_pre_process first (and opset 13 for --per-channel on older models)")
    a = p.parse_args()
    # onnxruntime's quantizers log at INFO to stderr; keep stdout for the JSON summary.
    logging.getLogger().setLevel(logging.WARNING)
    # ...and the entropy/percentile calibrators print progress on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        summary = run(a)
    onnx.checker.check_model(onnx.load(a.output), full_check=True)
    json.dump(summary, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
