r"""Speculative decoding of a target LM with trained drafts: τ, per-position
acceptance, tokens/s and lossless speed-up against our plain decoding (and
plain decoding against Hugging Face `generate`), all in one process.

  python -m experiments.spec_decode --config=configs/spec_decode.py:all \
      --workdir=runs/spec_decode

Writes `<workdir>/results.json`, prints a table and saves
`<workdir>/spec_decode.png`. Per method (batch size 1, one prompt at a time,
after a warm-up that compiles every shape):
  * tokens_per_sec: generated tokens / wall time over all prompts, median of
    `repeats` passes (prefill included: every method pays the same one);
  * speedup: tokens_per_sec / plain decoding's, same prompts, same process;
  * tau: tokens emitted per target forward, bonus/correction token included
    (plain = 1; micro average over rounds), tau_macro (mean over prompts);
  * acceptance_by_position: P(draft i accepted | drafts before it were);
  * greedy_match: the fraction of prompts whose output equals plain greedy
    decoding token for token; a prompt that differs only after a near-tie
    (top-2 target logits within 1e-4 at the first difference: float noise
    between a K+1-token and a 1-token forward) is counted in `greedy_ties`.
Plain decoding also reports the weight bytes read per token over the
measured memory bandwidth (numpy copy, read + write bytes per second): the
fraction of the memory-bound limit it reaches.
"""
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from efficient.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, `path.py:arg`.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def measure_bandwidth(megabytes=256, repeats=5):
  """Memory bandwidth, bytes/s counted as read + write, of a numpy copy."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  a = np.ones(megabytes * 2**20 // 4, np.float32)
  b = np.zeros_like(a)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(b, a)
    best = min(best, time.perf_counter() - start)
  return 2 * a.nbytes / best


def make_drafter(spec, target):
  """A drafter from a config entry {kind, source, num_draft}."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from efficient.decoding import lm, targets
  from efficient.decoding.drafts import ar, eda, pard
  if spec.source == "self" and spec.kind != "eda":
    model, params = target.model, target.params
  elif spec.source == "random" and spec.kind == "eda":
    d = target.model.dim
    model = eda.EDAHead(dim=d, n_heads=2, n_kv_heads=1, hidden_dim=32,
                        private_hidden_dim=16, init_std=0.3)
    params = model.init(jax.random.key(1), jnp.zeros((1, 2, d)),
                        jnp.zeros((1, 2, d)))
  elif spec.source == "random":
    model = lm.Llama.from_config(lm.LlamaConfig(
        vocab_size=target.model.vocab_size, dim=16, n_layers=1, n_heads=2,
        n_kv_heads=1, hidden_dim=32, init_std=0.3))
    params = model.init(jax.random.key(1), jnp.zeros((1, 2), jnp.int32))
  else:
    model, params, _ = targets.load_run(spec.source)
  if spec.kind == "ar":
    return ar.ARDrafter(model), params
  if spec.kind == "pard":
    return pard.PARDDrafter(model, target.mask_id, spec.num_draft), params
  if spec.kind == "eda":  # the head reads the evaluated target's features
    return (eda.EDADrafter(model, target.model, spec.num_draft),
            {"head": params, "target": target.params})
  raise ConfigError(f"draft kind {spec.kind!r} is not 'ar', 'pard' or "
                    "'eda'")


def eval_prompts(config):
  """The first prompt_len tokens of held-out (test split) chunks."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from efficient.data import pipeline
  builder = pipeline.load_builder(config.data)
  source = builder.as_data_source(split="test")
  if len(source) < config.num_prompts:
    raise ConfigError(f"config.num_prompts={config.num_prompts}: the test "
                      f"split has {len(source)} chunks")
  return [np.asarray(source[i]["tokens"][:config.prompt_len], np.int32)
          for i in range(config.num_prompts)]


def run_method(target, prompts, *, max_new, sampling, seed, drafter=None,
               draft_params=None, num_draft=0):
  """Outputs, stats and wall time of one pass over the prompts (B = 1)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from efficient.decoding import lm, speculative
  outputs, rounds, emitted, hist = [], [], [], np.zeros(num_draft + 1)
  total = 0.0
  for i, prompt in enumerate(prompts):
    tokens = jax.numpy.asarray(prompt[None])
    lengths = jax.numpy.asarray([len(prompt)], jax.numpy.int32)
    rng = jax.random.fold_in(jax.random.key(seed), i)
    start = time.perf_counter()
    if drafter is None:
      seq, n, steps = lm.decode(target.model, target.params, tokens, lengths,
                                rng, max_new=max_new, sampling=sampling,
                                eos_id=target.eos_id)
      n = np.asarray(n)
      total += time.perf_counter() - start
      rounds.append(int(steps))
      emitted.append(int(n[0]) - len(prompt))
    else:
      seq, n, stats = speculative.speculative_decode(
          target.model, target.params, drafter, draft_params, tokens,
          lengths, rng, num_draft=num_draft, max_new=max_new,
          sampling=sampling, eos_id=target.eos_id)
      n = np.asarray(n)
      total += time.perf_counter() - start
      rounds.append(int(stats["rounds"][0]))
      emitted.append(int(stats["emitted"][0]))
      hist += np.asarray(stats["accepted_hist"])
    outputs.append(np.asarray(seq[0, len(prompt):n[0]]))
  return {"outputs": outputs, "rounds": rounds, "emitted": emitted,
          "hist": hist, "seconds": total,
          "tokens": int(sum(len(o) for o in outputs))}


def greedy_agreement(target, reference, outputs, prompts):
  """(exact matches, near-tie divergences) of outputs against reference."""
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np
  exact = ties = 0
  for ref, out, prompt in zip(reference, outputs, prompts):
    if len(ref) == len(out) and np.array_equal(ref, out):
      exact += 1
      continue
    common = min(len(ref), len(out))
    diff = int(np.argmax(ref[:common] != out[:common])) if np.any(
        ref[:common] != out[:common]) else common
    seq = np.concatenate([prompt, out[:diff]])[None]
    logits = np.asarray(target.model.apply(target.params,
                                           jnp.asarray(seq))[0][0, -1])
    top2 = np.sort(logits)[-2:]
    ties += int(top2[1] - top2[0] < 1e-4)
  return exact, ties


def hf_generate_tokens_per_sec(target, prompts, max_new):
  """Hugging Face transformers `generate` (greedy, fp32) on the same GGUF
  weights and prompts: tokens/s, or None when transformers is missing."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from efficient.decoding import gguf  # pylint: disable=g-import-not-at-top
  folder, name = os.path.split(gguf.smollm2_path())
  model = AutoModelForCausalLM.from_pretrained(
      folder, gguf_file=name, dtype=torch.float32).eval()
  tokens = seconds = 0
  with torch.no_grad():
    model.generate(torch.tensor(prompts[0][None]), max_new_tokens=4,
                   do_sample=False)  # warm-up
    for prompt in prompts:
      start = time.perf_counter()
      out = model.generate(torch.tensor(prompt[None].astype("int64")),
                           max_new_tokens=max_new, do_sample=False,
                           eos_token_id=target.eos_id,
                           pad_token_id=target.eos_id)
      seconds += time.perf_counter() - start
      tokens += out.shape[1] - len(prompt)
  return tokens / seconds


def evaluate(config, workdir):
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from efficient.decoding import lm, speculative, targets
  try:
    target = targets.load(config.target)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  prompts = eval_prompts(config)
  results = {"target": config.target, "num_prompts": len(prompts),
             "prompt_len": config.prompt_len, "max_new": config.max_new,
             "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
             "jax": jax.__version__,
             "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
             "methods": {}}
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(target.params))
  for temperature in config.temperatures:
    sampling = lm.Sampling(temperature=temperature, top_p=config.top_p)
    methods = [("plain", None, None, 0)]
    for spec in config.drafts:
      drafter, params = make_drafter(spec, target)
      methods.append((spec.name, drafter, params, spec.num_draft))
    passes = {}
    for name, drafter, params, k in methods:
      print(f"[spec_decode] T={temperature} {name}: warm-up", flush=True)
      run_method(target, prompts[:1], max_new=config.max_new,
                 sampling=sampling, seed=config.seed, drafter=drafter,
                 draft_params=params, num_draft=k)
      passes[name] = []
      for r in range(config.repeats):
        passes[name].append(run_method(
            target, prompts, max_new=config.max_new, sampling=sampling,
            seed=config.seed, drafter=drafter, draft_params=params,
            num_draft=k))
        p = passes[name][-1]
        print(f"[spec_decode] T={temperature} {name} pass {r + 1}: "
              f"{p['tokens'] / p['seconds']:.1f} tok/s", flush=True)
    plain_speed = statistics.median(p["tokens"] / p["seconds"]
                                    for p in passes["plain"])
    reference = passes["plain"][0]["outputs"]
    for name, drafter, params, k in methods:
      runs = passes[name]
      speeds = [p["tokens"] / p["seconds"] for p in runs]
      first = runs[0]
      entry = {
          "temperature": temperature, "num_draft": k,
          "tokens_per_sec": statistics.median(speeds),
          "tokens_per_sec_all": speeds,
          "speedup": statistics.median(speeds) / plain_speed,
          "tau": sum(first["emitted"]) / max(sum(first["rounds"]), 1),
          "tau_macro": float(np.mean([e / max(r, 1) for e, r in
                                      zip(first["emitted"],
                                          first["rounds"])])),
          "tokens": first["tokens"],
      }
      if k:
        entry["acceptance_by_position"] = speculative.acceptance_by_position(
            first["hist"])
        own = {n: v for n, v in params.items() if n != "target"}  # EDA
        entry["draft_params"] = int(sum(  # shares the target's weights
            x.size for x in jax.tree.leaves(own)))
      if temperature == 0:
        exact, ties = greedy_agreement(target, reference, first["outputs"],
                                       prompts)
        entry["greedy_match"] = exact / len(prompts)
        entry["greedy_ties"] = ties
      if name == "plain":
        entry["weight_bytes"] = weight_bytes
        if config.measure_bandwidth:
          bandwidth = measure_bandwidth()
          entry["bandwidth_bytes_per_sec"] = bandwidth
          entry["bandwidth_fraction"] = (
              weight_bytes * entry["tokens_per_sec"] / bandwidth)
      results["methods"][f"{name}@T={temperature}"] = entry
  if config.hf_baseline and config.target == "smollm2":
    print("[spec_decode] Hugging Face generate baseline", flush=True)
    hf = hf_generate_tokens_per_sec(target, prompts[:config.hf_prompts],
                                    config.max_new)
    if hf is not None:
      plain = results["methods"].get("plain@T=0.0")
      results["hf_generate"] = {
          "tokens_per_sec": hf, "num_prompts": config.hf_prompts,
          "plain_over_hf": plain["tokens_per_sec"] / hf if plain else None}
  print_table(results)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(workdir, "spec_decode.png"))
  return results


def print_table(results):
  print(f"\n{'method':22s} {'tok/s':>7s} {'speedup':>8s} {'tau':>5s} "
        f"{'greedy=':>8s}  acceptance by position")
  for name, m in results["methods"].items():
    acc = " ".join(f"{a:.2f}" for a in m.get("acceptance_by_position", []))
    match = m.get("greedy_match")
    print(f"{name:22s} {m['tokens_per_sec']:7.1f} {m['speedup']:8.2f} "
          f"{m['tau']:5.2f} {'' if match is None else f'{match:.2f}':>8s}  "
          f"{acc}")
  if "hf_generate" in results:
    hf = results["hf_generate"]
    print(f"HF generate: {hf['tokens_per_sec']:.1f} tok/s; plain / HF = "
          f"{hf['plain_over_hf']:.2f}")
  plain = results["methods"].get("plain@T=0.0", {})
  if "bandwidth_fraction" in plain:
    print(f"plain: {plain['weight_bytes'] / 2**20:.0f} MiB of weights per "
          f"token, {plain['bandwidth_bytes_per_sec'] / 1e9:.1f} GB/s copy "
          f"bandwidth -> {plain['bandwidth_fraction']:.0%} of the limit")


def plot(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(results["methods"])
  ax1.bar(range(len(names)),
          [results["methods"][n]["speedup"] for n in names])
  ax1.axhline(1.0, color="gray", lw=0.8)
  ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax1.set_ylabel("speed-up over plain decoding")
  for n in names:
    acc = results["methods"][n].get("acceptance_by_position")
    if acc:
      ax2.plot(range(1, len(acc) + 1), acc, marker="o", label=n)
  ax2.set_xlabel("draft position")
  ax2.set_ylabel("P(accepted | previous accepted)")
  ax2.set_ylim(0, 1)
  if ax2.lines:
    ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  try:
    evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
