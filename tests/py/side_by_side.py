"""Side by side: a float ONNX model and quantized versions of it (ours from
`burnq quantize-onnx`, onnxruntime's from `quantize_static`), evaluated with onnxruntime on the
same inputs, in one process, one after the other.

usage: side_by_side.py --kind det|cls --float F.onnx --model NAME=Q.onnx [--model ...]
                       --eval DIR [--eval DIR ...] [--runs N] [--threads T] [--markdown]

Every `.npy` under the --eval directories is one input `[1, ...]`, read in sorted order.
For each model:
  accuracy against the float model's outputs on every input, with onnxruntime's default
  graph optimisations (what a deployment runs: Q/DQ groups fused into integer kernels):
    det  SQNR (dB) of the probability map, IoU of the maps thresholded at 0.3
    cls  label agreement with float, mean and max |probability error|
  latency: median of --runs timed runs per input after one warm-up, batch 1, --threads
  intra-op threads (the same for every model), in ms; and the file size.
Prints a Markdown table (--markdown) or JSON.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def inputs(dirs):
    out = []
    for d in dirs:
        for f in sorted(os.listdir(d)):
            if f.endswith(".npy"):
                out.append((os.path.join(d, f), np.load(os.path.join(d, f)).astype(np.float32)))
    if not out:
        raise SystemExit("no .npy evaluation inputs")
    return out


def run(path, xs, runs, threads):
    s = session(path, threads)
    name = s.get_inputs()[0].name
    ys, times = [], []
    for _, x in xs:
        y = s.run(None, {name: x})[0]  # warm-up, and the output
        ys.append(y)
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            t.append(time.perf_counter() - t0)
        times.append(statistics.median(t))
    return ys, 1000.0 * statistics.median(times)


def sqnr(ref, y):
    noise = float(np.sum((ref.astype(np.float64) - y) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


def iou(ref, y, t=0.3):
    a, b = ref > t, y > t
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=["det", "cls"], required=True)
    p.add_argument("--float", required=True)
    p.add_argument("--model", action="append", default=[], help="NAME=PATH")
    p.add_argument("--eval", action="append", required=True)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    xs = inputs(a.eval)
    ref, ref_ms = run(a.float, xs, a.runs, a.threads)
    rows = [{"model": "float", "ms": ref_ms, "bytes": os.path.getsize(a.float)}]
    for spec in a.model:
        name, path = spec.split("=", 1)
        ys, ms = run(path, xs, a.runs, a.threads)
        row = {"model": name, "ms": ms, "bytes": os.path.getsize(path)}
        if a.kind == "det":
            row["sqnr_db"] = statistics.mean(sqnr(r, y) for r, y in zip(ref, ys))
            row["iou_0.3"] = statistics.mean(iou(r, y) for r, y in zip(ref, ys))
            row["iou_0.3_min"] = min(iou(r, y) for r, y in zip(ref, ys))
        else:
            same = [int(np.argmax(r) == np.argmax(y)) for r, y in zip(ref, ys)]
            err = [float(np.max(np.abs(r - y))) for r, y in zip(ref, ys)]
            row["label_agreement"] = sum(same) / len(same)
            row["prob_err_mean"] = statistics.mean(err)
            row["prob_err_max"] = max(err)
        rows.append(row)
    if not a.markdown:
        print(json.dumps({"kind": a.kind, "inputs": len(xs), "threads": a.threads, "rows": rows}))
        return
    keys = ["sqnr_db", "iou_0.3", "iou_0.3_min"] if a.kind == "det" else [
        "label_agreement", "prob_err_mean", "prob_err_max"]
    print(f"| {a.kind} ({len(xs)} inputs) | " + " | ".join(keys) + " | latency ms (median, "
          f"{a.threads} thread) | file |")
    print("|---|" + "---:|" * (len(keys) + 2))
    for r in rows:
        cells = [f"{r[k]:.4g}" if k in r else "—" for k in keys]
        ratio = f" ({r['ms'] / ref_ms:.2f}×)" if r["model"] != "float" else ""
        print(f"| {r['model']} | " + " | ".join(cells) + f" | {r['ms']:.2f}{ratio} | "
              f"{r['bytes'] / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
