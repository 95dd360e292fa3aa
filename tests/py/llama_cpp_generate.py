"""Loads GGUF files with the real llama.cpp (through llama-cpp-python) and generates greedily.

usage: llama_cpp_generate.py EXPORTED [REFERENCE] [--max-nll-gap X] [--tokens N]

For each model: llama.cpp's loader must accept the file; the chat prompt below is formatted with
the file's own `tokenizer.chat_template` and completed greedily (temperature 0) for N tokens;
and the mean negative log-likelihood per token of a fixed English passage is measured from the
model's logits. With REFERENCE (e.g. the GGUF the export was made from), the script also checks
that both tokenize a probe text to the same ids (tokenizer metadata, pre-tokenizer and merges
are what llama.cpp uses) and that the NLL gap is at most X nats/token (a wrong q/k permutation,
dims order or block layout gives gaps of several nats). Prints one JSON line per model, then a
summary line.
"""

import argparse
import json
import sys

import numpy as np
from llama_cpp import Llama

PROMPT = "What is the capital of France? Answer in one sentence."
PASSAGE = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital and most populous city "
    "of France. It is located on the Seine river, in the north of the country, and has been "
    "one of the major centres of finance, diplomacy, commerce and science for centuries."
)
PROBE = "Hello world! 12345 tokens, spaces  and\nnewlines; naïve café 😀 <|im_start|>"

ap = argparse.ArgumentParser()
ap.add_argument("exported")
ap.add_argument("reference", nargs="?")
ap.add_argument("--max-nll-gap", type=float, default=0.25)
ap.add_argument("--tokens", type=int, default=48)
args = ap.parse_args()


def run(path):
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_batch=256, logits_all=True,
                seed=0, verbose=False)
    probe = llm.tokenize(PROBE.encode("utf-8"), add_bos=False, special=True)
    toks = llm.tokenize(PASSAGE.encode("utf-8"), add_bos=False, special=False)
    llm.reset()
    llm.eval(toks)
    logits = np.asarray(llm.scores[: len(toks)], dtype=np.float64)
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    nll = float(-np.mean([logp[i, toks[i + 1]] for i in range(len(toks) - 1)]))
    llm.reset()
    res = llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=args.tokens, temperature=0.0, top_k=1, seed=0)
    text = res["choices"][0]["message"]["content"]
    return {"model": path, "nll_per_token": nll, "probe_ids": probe, "text": text}


results = [run(args.exported)]
if args.reference:
    results.append(run(args.reference))
for r in results:
    print(json.dumps(r, ensure_ascii=False))

failures = []
if not results[0]["text"].strip():
    failures.append("empty generation")
summary = {"nll_per_token": results[0]["nll_per_token"]}
if args.reference:
    a, b = results
    if a["probe_ids"] != b["probe_ids"]:
        failures.append(f"tokenization differs: {a['probe_ids']} vs {b['probe_ids']}")
    gap = a["nll_per_token"] - b["nll_per_token"]
    summary.update(reference_nll_per_token=b["nll_per_token"], nll_gap=gap,
                   same_text=a["text"] == b["text"])
    if not abs(gap) <= args.max_nll_gap:
        failures.append(f"NLL gap {gap:.4f} nats/token exceeds {args.max_nll_gap}")
print(json.dumps(summary))
if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
