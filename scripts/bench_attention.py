r"""Attention speed and memory against sequence length (forward + backward).

For each method and length: the median wall time of `repeats` jit-compiled
forward+backward passes after a warm-up, and XLA's compiled peak temporary
memory (`compiled.memory_analysis().temp_size_in_bytes`), at batch 1, 4 heads
× 64, fp32 (the setting of issue #3 and of the papers' efficiency tables,
attention alone, no projections). Prints a table with ratios against softmax
measured in the same run, writes one JSON record per (method, length) and a
log-log PNG.

  python scripts/bench_attention.py --out docs/bench_attention_cpu.json \
      --plot docs/bench_attention_cpu.png
  python scripts/bench_attention.py --methods softmax,nystrom --lengths 1024,4096

A configuration whose compiled temporary memory exceeds --max_gb is compiled
and reported but not run (time: null, note says why).
"""
import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from efficient import attention as attention_lib

# Per-method hyperparameters: the LRA defaults of each paper.
HPARAMS = {
    "softmax": {},
    "nystrom": {"num_landmarks": 64},
    "yoso": {"hash_bits": 11, "num_hashes": 32},  # LRA ListOps (sampled).
    # The same with the original's table backward forced (linear in n).
    "yoso-tables": {"hash_bits": 11, "num_hashes": 32,
                    "backward": "lsh_tables"},
    "mra": {"block_per_row": 8},
    # Causal masking (YOSO's prefix-sum form; softmax's mask), not in the
    # default sweep: --methods softmax,softmax-causal,yoso,yoso-causal
    "softmax-causal": {"causal": True},
    "yoso-causal": {"hash_bits": 11, "num_hashes": 32, "causal": True},
}
DEFAULT_METHODS = [m for m in HPARAMS if not m.endswith("-causal")]


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine():
  device = jax.devices()[0]
  return {"platform": device.platform, "device": device.device_kind,
          "device_count": jax.device_count(), "cpu": _cpu_name(),
          "cpu_cores": os.cpu_count(), "jax": jax.__version__}


def median_ms(fn, args, repeats):
  """Median wall time of `repeats` calls after one warm-up call, in ms."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), times


def fwd_bwd(method, hparams):
  """jit'd function (q, k, v) -> (loss, grads) for one attention method."""
  fn = attention_lib.get_attention(method.split("-")[0])  # "<method>-<variant>"

  if method.startswith("yoso") and hparams.get("sampled", True):
    hparams = dict(hparams, rng=jax.random.PRNGKey(0))  # Hash functions.

  def loss(q, k, v):
    out = fn(q, k, v, **hparams)
    # A fixed, non-trivial cotangent so no part of the graph is dead.
    return jnp.sum(out * jnp.cos(jnp.arange(out.shape[-1], dtype=out.dtype)))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def measure(method, length, *, batch, heads, head_dim, repeats, max_bytes):
  """One record: compile, check memory, warm up, time `repeats` runs."""
  shape = (batch, length, heads, head_dim)
  keys = jax.random.split(jax.random.PRNGKey(length), 3)
  q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys)
  record = {"method": method, "length": length, "batch": batch,
            "heads": heads, "head_dim": head_dim, "dtype": "float32",
            "hparams": HPARAMS[method], "repeats": repeats}
  start = time.perf_counter()
  compiled = fwd_bwd(method, HPARAMS[method]).lower(q, k, v).compile()
  record["compile_s"] = time.perf_counter() - start
  memory = compiled.memory_analysis()
  record["temp_bytes"] = int(memory.temp_size_in_bytes)
  record["argument_bytes"] = int(memory.argument_size_in_bytes)
  record["output_bytes"] = int(memory.output_size_in_bytes)
  if record["temp_bytes"] > max_bytes:
    record.update(time_ms=None, times_ms=[],
                  note=f"not run: needs {record['temp_bytes'] / 2**30:.1f} "
                  f"GiB of temporaries (> --max_gb)")
    return record
  time_ms, times = median_ms(compiled, (q, k, v), repeats)
  record.update(time_ms=time_ms, times_ms=times)
  return record


def table(records):
  """Markdown table with time and memory ratios against softmax."""
  base = {r["length"]: r for r in records if r["method"] == "softmax"}
  lines = ["| method | n | fwd+bwd ms (median) | temp MiB | time vs softmax "
           "| memory vs softmax |", "|---|---|---|---|---|---|"]
  for r in records:
    ref = base.get(r["length"])
    time_ms = "—" if r["time_ms"] is None else f"{r['time_ms']:.1f}"
    speed = (f"{ref['time_ms'] / r['time_ms']:.1f}× faster"
             if ref and ref["time_ms"] and r["time_ms"] and r is not ref
             else "—")
    memory = (f"{ref['temp_bytes'] / r['temp_bytes']:.1f}× less"
              if ref and r is not ref and r["temp_bytes"] else "—")
    lines.append(f"| {r['method']} | {r['length']} | {time_ms} | "
                 f"{r['temp_bytes'] / 2**20:.1f} | {speed} | {memory} |")
  return "\n".join(lines)


def plot(records, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
  for method in dict.fromkeys(r["method"] for r in records):
    rows = [r for r in records if r["method"] == method]
    timed = [r for r in rows if r["time_ms"] is not None]
    ax_time.plot([r["length"] for r in timed], [r["time_ms"] for r in timed],
                 "o-", label=method)
    ax_mem.plot([r["length"] for r in rows],
                [r["temp_bytes"] / 2**20 for r in rows], "o-", label=method)
  ax_time.set(xscale="log", yscale="log", xlabel="sequence length",
              ylabel="forward+backward (ms, median)", title="time")
  ax_mem.set(xscale="log", yscale="log", xlabel="sequence length",
             ylabel="XLA peak temporaries (MiB)", title="memory")
  for ax in (ax_time, ax_mem):
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_gb", type=float, default=12.0,
                      help="skip running configs needing more temporaries")
  parser.add_argument("--out", default=None, help="JSON output file")
  parser.add_argument("--plot", default=None, help="PNG output file")
  args = parser.parse_args()
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in HPARAMS]
  if unknown:
    parser.error(f"unknown methods {unknown}; known: {sorted(HPARAMS)}")
  info = machine()
  print(f"machine: {info}", flush=True)
  records = []
  for length in (int(n) for n in args.lengths.split(",")):
    for method in methods:
      record = measure(method, length, batch=args.batch, heads=args.heads,
                       head_dim=args.head_dim, repeats=args.repeats,
                       max_bytes=args.max_gb * 2**30)
      record.update(info)
      records.append(record)
      shown = ("not run" if record["time_ms"] is None else
               f"{record['time_ms']:.1f} ms")
      print(f"  {method:>8} n={length:>6}: {shown}, temporaries "
            f"{record['temp_bytes'] / 2**20:.1f} MiB", flush=True)
  records.sort(key=lambda r: (methods.index(r["method"]), r["length"]))
  print(table(records))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
    print(f"wrote {args.out}")
  if args.plot:
    plot(records, args.plot, f"{info['device']} ({info['cpu']}, "
         f"{info['cpu_cores']} cores), jax {info['jax']}")
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
