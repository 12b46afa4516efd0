r"""YOSO's LSH backward: bucket tables against the colliding-pair loop.

Times `efficient.attention.yoso.lsh_backward(method=...)` ("tables": the
original's O(m·n·d²) algorithm; "pairs": O(d) per colliding pair) on random
codes whose bucket count sets the average number of keys a query collides
with per hash (n / buckets). The crossover picks `yoso._PAIR_LIMIT`, the
switch point of `method="auto"`. Median of --repeats after a warm-up; JSON,
a table and a PNG.

  python scripts/bench_yoso_backward.py --out docs/bench_yoso_backward_cpu.json \
      --plot docs/bench_yoso_backward_cpu.png
"""
import argparse
import json

import jax
import numpy as np

from efficient.attention import yoso
from bench_attention import machine, median_ms  # scripts/ is on sys.path

METHODS = ("pairs", "tables")


def measure(method, pairs_per_query, *, length, head_dim, hashes, hash_bits,
            repeats):
  rng = np.random.default_rng(0)
  buckets = max(1, round(length / pairs_per_query))
  q, k, v, grad = (rng.normal(size=(1, length, head_dim)).astype(np.float32)
                   for _ in range(4))
  q_codes, k_codes = (rng.integers(0, buckets, (1, hashes, length))
                      for _ in range(2))
  mask = np.ones((1, length), np.float32)
  run = jax.jit(lambda *x: yoso.lsh_backward(*x, hash_bits, method=method))
  args = (q, k, v, grad, q_codes, k_codes, mask, mask)
  time_ms, times = median_ms(run, args, repeats)
  return {"method": method, "pairs_per_query": length / buckets,
          "length": length, "head_dim": head_dim, "hashes": hashes,
          "hash_bits": hash_bits, "time_ms": time_ms,
          "times_ms": times}


def plot(records, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for method in METHODS:
    rows = [r for r in records if r["method"] == method]
    ax.plot([r["pairs_per_query"] for r in rows], [r["time_ms"] for r in rows],
            "o-", label=method)
  head_dim = records[0]["head_dim"]
  ax.axvline(yoso._PAIR_LIMIT * head_dim, color="gray", ls="--",  # pylint: disable=protected-access
             label=f"auto switch ({yoso._PAIR_LIMIT:g}·d)")  # pylint: disable=protected-access
  ax.set(xscale="log", yscale="log", xlabel="colliding keys per query and hash",
         ylabel="dQ, dK, dV (ms, median)")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  ax.set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=4096)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--hashes", type=int, default=4)
  parser.add_argument("--hash_bits", type=int, default=11)
  parser.add_argument("--pairs_per_query", default="2,8,32,64,128")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None, help="JSON output file")
  parser.add_argument("--plot", default=None, help="PNG output file")
  args = parser.parse_args()
  info = machine()
  print(f"machine: {info}", flush=True)
  records = []
  lines = ["| keys per query and hash | pairs ms | tables ms | tables / pairs |",
           "|---|---|---|---|"]
  for pairs in (float(p) for p in args.pairs_per_query.split(",")):
    row = [measure(method, pairs, length=args.length, head_dim=args.head_dim,
                   hashes=args.hashes, hash_bits=args.hash_bits,
                   repeats=args.repeats) for method in METHODS]
    for record in row:
      record.update(info)
    records += row
    lines.append(f"| {row[0]['pairs_per_query']:g} | {row[0]['time_ms']:.1f} | "
                 f"{row[1]['time_ms']:.1f} | "
                 f"{row[1]['time_ms'] / row[0]['time_ms']:.2f} |")
    print(lines[-1], flush=True)
  print("\n".join(lines))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
    print(f"wrote {args.out}")
  if args.plot:
    plot(records, args.plot, f"{info['device']} ({info['cpu']}, "
         f"{info['cpu_cores']} cores), jax {info['jax']}, n={args.length}, "
         f"m={args.hashes}")
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
