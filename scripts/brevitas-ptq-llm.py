"""brevitas_ptq_llm (Brevitas 0.13.4) on burnq's protocol, for the side-by-side PTQ times of the
book's performance chapter ("PTQ wall time").

Setup, outside the repository: a venv with `pip install "brevitas[llm]==0.13.4" torch
transformers gguf` (PyPI), and the FP32 model from
`python ../shared/data/smollm2-135m-instruct/derive/export_smollm2_fp32.py
../shared/data/smollm2-135m-instruct smollm2-fp32`. Then `python scripts/brevitas-ptq-llm.py
[--skip-float] <brevitas_ptq_llm flags>`; `--skip-float` skips the float model's evaluation.

The run: calibration windows of 512 tokens drawn (seeded) from
emma.txt, evaluation on the first 16 non-overlapping 512-token windows of
pride_prejudice_eval_slice.txt (tokens 256..511 scored: Brevitas's compute_perplexity with
context_length = seqlen // 2). Times the phases (wall and process CPU)."""
import os, random, sys, time
import numpy as np
import torch
import brevitas_examples.llm.main as M

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "austen-text") + os.sep
CALIB, EVAL = DATA + "emma.txt", DATA + "pride_prejudice_eval_slice.txt"
N_EVAL = 16
FLAGS = [a for a in sys.argv[1:] if a == "--skip-float"]

def dataset(dataset_name, tokenizer, nsamples=128, seqlen=2048, seed=0, split="train", **kw):
    text = open(CALIB if split == "train" else EVAL).read()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if split == "train":
        rng = random.Random(seed)
        starts = [rng.randrange(0, len(ids) - seqlen) for _ in range(nsamples)]
    else:
        starts = [i * seqlen for i in range(min(N_EVAL, len(ids) // seqlen))]
    return [{"input_ids": np.array(ids[s:s + seqlen], dtype=np.int64)} for s in starts]

M.get_dataset_for_model = dataset
# Block-wise GPxQ (--gpxq-block-name) moves each cached block input to 'cuda'; on a CPU-only
# machine keep it where it is (the only change to Brevitas's algorithm code path).
import brevitas_examples.llm.llm_quant.gpxq as GX
_send = GX.send_to_device
GX.send_to_device = lambda x, device: _send(x, "cpu" if device == "cuda" else device)
T = {}
def timed(name, f):
    def g(*a, **k):
        w, c = time.perf_counter(), time.process_time()
        r = f(*a, **k)
        T[name] = T.get(name, (0, 0))
        T[name] = (T[name][0] + time.perf_counter() - w, T[name][1] + time.process_time() - c)
        return r
    return g
M.apply_qronos = timed("apply_qronos", M.apply_qronos)
M.apply_gptq = timed("apply_gptq", M.apply_gptq)
_ppl = M.compute_perplexity
_calls = [0]
def ppl(*a, **k):
    # The float model's perplexity (first call) is skipped: 20.115 on this protocol, measured
    # once by this script (Brevitas prints "Float perplexity: 20.115"), as burnq's FP32.
    _calls[0] += 1
    if _calls[0] == 1 and "--skip-float" in FLAGS:
        return float("nan")
    return _ppl(*a, **k)
M.compute_perplexity = timed("compute_perplexity", ppl)
print("torch", torch.__version__, "threads", torch.get_num_threads())
w0, c0 = time.perf_counter(), time.process_time()
sys.argv = ["brevitas_ptq_llm"] + [a for a in sys.argv[1:] if a not in FLAGS]
M.main()
print(f"TOTAL wall {time.perf_counter() - w0:.1f} s, process CPU {time.process_time() - c0:.1f} s")
for k, (w, c) in T.items():
    print(f"PHASE {k}: wall {w:.1f} s, process CPU {c:.1f} s")
