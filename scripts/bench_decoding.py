r"""Cost of one cached forward of the target and of each draft, relative to
one target decoding step: the c of speculative decoding's speed-up
τ / (verify + drafting cost) (reference/draft.md §2).

  python scripts/bench_decoding.py --out runs/bench_decoding.json \
      --plot runs/bench_decoding.png [--target smollm2] [--k 4]

Measured (batch 1, float32, a 256-entry cache half full, each forward
repeated inside one jit'd fori_loop, best of 5): the target on 1 token and
on K+1 tokens (verification; also 2, 3 and 8 tokens), the AR draft of configs/draft.py on 1 token,
PARD's one forward over (K+1) real + (K−1) mask tokens, and an EDA head
step (head + the target's LM head). Prints a table, writes JSON (and a PNG).
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import draft as draft_config  # noqa: E402
from efficient.decoding import lm, targets  # noqa: E402
from efficient.decoding.drafts import eda  # noqa: E402


def time_forward(apply, params, tokens, cache, repeats=20, trials=5):
  """Seconds per call of apply(params, tokens, cache) (cache rolled back
  after each call so every call sees the same state)."""
  start_len = cache.lengths

  @jax.jit
  def loop(params, cache):
    def body(_, carry):
      acc, cache = carry
      out, cache = apply(params, tokens, cache)
      return acc + out.ravel()[0], cache.rollback(start_len)
    return jax.lax.fori_loop(0, repeats, body, (0.0, cache))[0]

  loop(params, cache).block_until_ready()
  best = float("inf")
  for _ in range(trials):
    t0 = time.perf_counter()
    loop(params, cache).block_until_ready()
    best = min(best, (time.perf_counter() - t0) / repeats)
  return best


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--target", default="smollm2")
  parser.add_argument("--k", type=int, default=4)
  parser.add_argument("--out", default=None)
  parser.add_argument("--plot", default=None)
  args = parser.parse_args(argv)
  k = args.k
  target = targets.load(args.target)
  max_len, filled = 256, 128

  def cache_for(model):
    c = lm.init_cache(model.config, 1, max_len)
    return c.rollback(jnp.array([filled]))

  def llama_apply(model):
    def apply(params, tokens, cache):
      logits, _, cache = model.apply(params, tokens, cache)
      return logits, cache
    return apply

  tokens = lambda n: jnp.ones((1, n), jnp.int32)  # noqa: E731
  rows = []
  tm = target.model
  rows.append(("target, 1 token", time_forward(
      llama_apply(tm), target.params, tokens(1), cache_for(tm))))
  rows.append((f"target verify, {k + 1} tokens", time_forward(
      llama_apply(tm), target.params, tokens(k + 1), cache_for(tm))))
  verify_rows = [(f"target verify, {t} tokens", time_forward(
      llama_apply(tm), target.params, tokens(t), cache_for(tm)))
                 for t in (2, 3, 8) if t != k + 1]
  smoke = args.target == "tiny"
  cfg = dict(draft_config.SMOKE_DRAFT if smoke else draft_config.DRAFT)
  draft = lm.Llama(**cfg)
  dp = draft.init(jax.random.key(0), tokens(2))
  rows.append(("AR draft, 1 token", time_forward(
      llama_apply(draft), dp, tokens(1), cache_for(draft))))
  rows.append((f"PARD draft, {2 * k} tokens", time_forward(
      llama_apply(draft), dp, tokens(2 * k), cache_for(draft))))
  head_cfg = dict(draft_config.SMOKE_EDA_HEAD if smoke else
                  draft_config.EDA_HEAD)
  head_cfg.pop("name")
  head = eda.EDAHead(**head_cfg)
  d = head.dim
  hp = head.init(jax.random.key(0), jnp.zeros((1, 2, d)), jnp.zeros((1, 2, d)))

  def eda_step(params, tokens, cache):
    embeds = eda.target_embed(tm, params["target"], tokens)
    feats, cache = head.apply(params["head"], jnp.zeros(embeds.shape), embeds,
                              cache)
    return eda.target_head(tm, params["target"], feats), cache

  eda_cache = head.init_cache(1, max_len).rollback(jnp.array([filled]))
  rows.append(("EDA head step, 1 token", time_forward(
      eda_step, {"head": hp, "target": target.params}, tokens(1),
      eda_cache)))
  rows += verify_rows
  base = rows[0][1]
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  records = [{"forward": name, "ms": sec * 1e3, "relative_cost": sec / base,
              "device": device, "target": args.target, "k": k}
             for name, sec in rows]
  print(f"{'forward':32s} {'ms':>8s} {'c (÷ target step)':>18s}")
  for r in records:
    print(f"{r['forward']:32s} {r['ms']:8.2f} {r['relative_cost']:18.3f}")
  c_ar = records[2]["relative_cost"]
  c_pard = records[3]["relative_cost"]
  verify = records[1]["relative_cost"]
  print(f"\nbreak-even τ for 2× (τ / (verify + drafting) = 2): AR K={k}: "
        f"{2 * (verify + k * c_ar):.2f}, PARD: {2 * (verify + c_pard):.2f}, "
        f"EDA K={k}: {2 * (verify + k * records[4]['relative_cost']):.2f}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
  if args.plot:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["forward"] for r in records],
            [r["relative_cost"] for r in records])
    ax.set_xlabel("cost ÷ one target decoding step")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
  return records


if __name__ == "__main__":
  main()
