r"""Pallas kernels against their XLA references and dense softmax attention.

For each length: forward and forward+backward time (median of --repeats
after a warm-up) and XLA's compiled peak temporaries of

  softmax      dense attention, `softmax_attention(implementation="auto")`
               (cuDNN flash attention on GPU for bf16/fp16, XLA otherwise)
  mra_xla      MRA-2 sparse (block 32, --block_per_row), the gather path
  mra_pallas   the same through pallas_kernels/mra_attention
  yoso_xla     sampled YOSO (τ = 10, 32 hashes, the fast hash),
               bucket cumulation by XLA scatter/gather, the LSH backward
  yoso_pallas  the same through pallas_kernels/yoso_lsh (hash, cumulation
               and the table backward as Triton kernels on GPU)
  yoso_pallas_sorted  the same sums by sorted tiles (matmuls, no
               atomics; pallas_kernels/yoso_lsh/sorted_tiles.py)
  yoso_pallas_sorted_atomic  the sorted tiles with the sum over hashes by
               float32 atomic adds (no per-hash [32, n, 64] outputs)
  mra_blocks_xla, mra_blocks_pallas
               the selected-block part alone (no low-resolution part, no
               top-k): a fixed selection of --block_per_row blocks per row
               (the diagonal and random others), by XLA gathers
               (`mra._selected_xla`) and by the Pallas kernel; with
               --mra_tunings, one more Pallas row per (num_warps,
               num_stages) pair

MRA runs with --mra_precision (default "input": bf16 products with
float32 accumulation on accelerators, as cuDNN's; "float32" is the
original's) and --heads_per_step (default all heads in one step, no
rematerialisation: the fast setting; `mra_attention`'s default is 1).

with achieved TFLOP/s and GB/s (model FLOPs and the q, k, v, output bytes)
beside the device's peaks measured in the same run (a large matmul, a large
copy). Batch 1, --heads × --head_dim. On CPU the Pallas kernels only run
interpreted, so their rows are reported "not run" and the CPU figures are
XLA-only. JSON + a printed table.

  python scripts/bench_kernels.py --out docs/bench_kernels_<device>.json
  python scripts/bench_kernels.py --lengths 4096 --dtype float32   # quick
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench_attention import machine, median_ms  # scripts/ is on sys.path
from efficient.attention import mra
from efficient.attention import softmax
from efficient.attention import yoso
from pallas_kernels import mra_attention as mra_kernels

METHODS = ("softmax", "mra_xla", "mra_pallas", "yoso_xla", "yoso_pallas",
           "yoso_pallas_sorted", "yoso_pallas_sorted_atomic", "mra_blocks_xla",
           "mra_blocks_pallas")


def _median_ms(fn, args, repeats):
  return median_ms(fn, args, repeats)[0]


def device_peaks(dtype, repeats):
  """Measured matmul TFLOP/s and copy GB/s of this device."""
  size = 8192 if jax.default_backend() != "cpu" else 1024
  # Random data, never zeros or ones: a matmul on zeros runs faster.
  a = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  tflops = 2 * size**3 / _median_ms(matmul, (a,), repeats) / 1e9
  x = jax.random.normal(jax.random.PRNGKey(2), (64 * 2**20,))  # 256 MiB.
  copy = jax.jit(lambda x: x * 1.0001)
  gbps = 2 * x.nbytes / _median_ms(copy, (x,), repeats) / 1e6
  return {"peak_tflops": tflops, "peak_gbps": gbps}


def fixed_selection(n, groups, block_per_row, block=32, seed=0):
  """[groups, nb, nb] bool: the diagonal and block_per_row − 1 random
  others per row (numpy, so the benchmark's inputs are fixed)."""
  nb = n // block
  rng = np.random.default_rng(seed)
  chosen = np.zeros((groups, nb, nb), bool)
  for g in range(groups):
    others = np.argsort(rng.random((nb, nb)) + 2 * np.eye(nb), -1)
    rows = np.arange(nb)[:, None]
    chosen[g, rows, others[:, :block_per_row - 1]] = True
    chosen[g, np.arange(nb), np.arange(nb)] = True
  return chosen


def blocks_fn(impl, n, heads, block_per_row, block=32, tuning=(4, 2)):
  """(q, k, v) [1, n, heads, d] -> the selected-block part, [heads, n, d],
  products in the inputs' dtype (float32 accumulation); `tuning`:
  the Pallas kernel's (num_warps, num_stages)."""
  chosen = fixed_selection(n, heads, block_per_row, block)
  nb = n // block
  flat = jnp.asarray(np.stack([np.flatnonzero(c) for c in chosen]))
  mask = jnp.ones((heads, n), jnp.float32)

  def fn(q, k, v):
    q, k, v = (jnp.swapaxes(x[0], 0, 1) for x in (q, k, v))  # [h, n, d]
    if impl == "pallas":
      out, norm, _ = mra_kernels.mra_block_sparse(
          q, k, v, mask, jnp.asarray(chosen),
          block_sizes=mra_kernels.BlockSizes(block, *tuning),
          interpret=jax.default_backend() == "cpu")
      return out / norm[..., None]
    per_head = lambda q, k, v, mu, f: mra._selected_xla(  # pylint: disable=protected-access
        q, k, v, mu, f // nb, f % nb, nb, block, False)
    out, norm, _ = jax.vmap(per_head)(q, k, v, mask, flat)
    return (out / norm[..., None]).reshape(heads, n, -1)

  return fn


def attention_fn(method, block_per_row, hash_bits=10, num_hashes=32,
                 mra_precision="input", heads_per_step=None):
  if method == "softmax":
    return softmax.softmax_attention
  impl = method.split("_", 1)[1]
  if method.startswith("yoso"):
    return lambda q, k, v: yoso.yoso_attention(
        q, k, v, hash_bits=hash_bits, num_hashes=num_hashes,
        rng=jax.random.PRNGKey(0), impl=impl)
  return lambda q, k, v: mra.mra_attention(
      q, k, v, block_per_row=block_per_row, approx_mode="sparse", impl=impl,
      precision=mra_precision, heads_per_step=heads_per_step)


def model_flops(method, n, heads, head_dim, block_per_row, hash_bits=10,
                num_hashes=32):
  """Forward FLOPs of the attention itself (QKᵀ and PV; YOSO: the hash
  projections of q and k and the table adds and reads)."""
  if method == "softmax":
    return 4 * n * n * head_dim * heads
  if method.startswith("yoso"):
    dim = yoso.hash_dim(head_dim)
    return heads * (2 * 2 * n * dim * num_hashes * hash_bits +
                    2 * num_hashes * n * head_dim)
  blocks = min(n // 32 * block_per_row, (n // 32)**2)
  return 4 * blocks * 32 * 32 * head_dim * heads  # (mra_blocks_* too)


def measure(method, n, *, heads, head_dim, dtype, block_per_row, repeats,
            max_bytes, mra_precision="input", heads_per_step=None,
            tuning=None):
  record = {"method": method, "length": n, "heads": heads,
            "head_dim": head_dim, "dtype": jnp.dtype(dtype).name,
            "block_per_row": block_per_row}
  if method.startswith("mra"):
    record.update(mra_precision=mra_precision, heads_per_step=heads_per_step)
  if tuning:
    record["tuning"] = "x".join(map(str, tuning))  # num_warps x num_stages
  if "_pallas" in method and jax.default_backend() == "cpu":
    record["note"] = "not run: Pallas kernels run interpreted on CPU"
    return record
  keys = jax.random.split(jax.random.PRNGKey(n), 3)
  q, k, v = (jax.random.normal(key, (1, n, heads, head_dim), dtype)
             for key in keys)
  fn = (blocks_fn(method.split("_")[-1], n, heads, block_per_row,
                  tuning=tuning or (4, 2))
        if method.startswith("mra_blocks") else
        attention_fn(method, block_per_row, mra_precision=mra_precision,
                     heads_per_step=heads_per_step))
  forward = jax.jit(fn)
  backward = jax.jit(jax.grad(
      lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)),
      argnums=(0, 1, 2)))
  flops = model_flops(method, n, heads, head_dim, block_per_row)
  nbytes = 4 * n * heads * head_dim * jnp.dtype(dtype).itemsize
  for name, f, scale in (("fwd", forward, 1.0), ("fwd_bwd", backward, 3.5)):
    compiled = f.lower(q, k, v).compile()
    record[f"{name}_temp_bytes"] = int(
        compiled.memory_analysis().temp_size_in_bytes)
    if record[f"{name}_temp_bytes"] > max_bytes:
      record["note"] = (f"not run: {name} needs "
                        f"{record[f'{name}_temp_bytes'] / 2**30:.1f} GiB of "
                        "temporaries (> --max_gb)")
      return record
    ms = _median_ms(compiled, (q, k, v), repeats)
    record[f"{name}_ms"] = ms
    record[f"{name}_tflops"] = scale * flops / ms / 1e9
    record[f"{name}_gbps"] = scale * nbytes / ms / 1e6
  return record


def table(records):
  lines = ["| method | n | fwd ms | fwd+bwd ms | fwd+bwd vs softmax | "
           "TFLOP/s (fwd+bwd) | temp MiB (fwd+bwd) |",
           "|---|---|---|---|---|---|---|"]
  base = {r["length"]: r for r in records if r["method"] == "softmax"}
  for r in records:
    name = r["method"] + (f" ({r['tuning']})" if "tuning" in r else "")
    if "fwd_bwd_ms" not in r:
      lines.append(f"| {name} | {r['length']} | {r['note']} |||||")
      continue
    ref = base.get(r["length"], {})
    ratio = (f"{ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}×"
             if "fwd_bwd_ms" in ref and r is not ref else "—")
    lines.append(f"| {name} | {r['length']} | {r['fwd_ms']:.2f} | "
                 f"{r['fwd_bwd_ms']:.2f} | {ratio} | "
                 f"{r['fwd_bwd_tflops']:.2f} | "
                 f"{r['fwd_bwd_temp_bytes'] / 2**20:.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--lengths", default="4096,16384,65536")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--block_per_row", type=int, default=16)
  parser.add_argument("--dtype", default=None,
                      help="default: bfloat16 on GPU/TPU, float32 on CPU")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_gb", type=float, default=12.0,
                      help="skip running configs needing more temporaries")
  parser.add_argument("--mra_precision", default="input",
                      choices=mra.PRECISIONS)
  parser.add_argument("--heads_per_step", default="none",
                      help="MRA heads per step: an int, or 'none' (all)")
  parser.add_argument("--mra_tunings", default="",
                      help="extra mra_blocks_pallas rows, e.g. '8x2,4x3' "
                      "(num_warps x num_stages; GPU)")
  parser.add_argument("--out", default=None, help="JSON output file")
  args = parser.parse_args()
  methods = args.methods.split(",")
  if any(m not in METHODS for m in methods):
    parser.error(f"--methods: choose from {METHODS}")
  heads_per_step = (None if args.heads_per_step == "none"
                    else int(args.heads_per_step))
  runs = [(m, None) for m in methods] + [
      ("mra_blocks_pallas", tuple(int(x) for x in t.split("x")))
      for t in args.mra_tunings.split(",") if t]
  dtype = jnp.dtype(args.dtype or (
      "float32" if jax.default_backend() == "cpu" else "bfloat16"))
  info = dict(machine(), **device_peaks(dtype, args.repeats))
  print(f"machine: {info}", flush=True)
  records = []
  for n in (int(x) for x in args.lengths.split(",")):
    for method, tuning in runs:
      try:
        record = measure(method, n, heads=args.heads, head_dim=args.head_dim,
                         dtype=dtype, block_per_row=args.block_per_row,
                         repeats=args.repeats,
                         max_bytes=args.max_gb * 2**30,
                         mra_precision=args.mra_precision,
                         heads_per_step=heads_per_step, tuning=tuning)
      except Exception as e:  # pylint: disable=broad-except
        # Out of memory (dense softmax at 65536) or an unsupported shape:
        # record it and go on with the rest of the sweep.
        record = {"method": method, "length": n,
                  "note": f"failed: {type(e).__name__}: {str(e)[:200]}"}
      record.update(info)
      records.append(record)
      print(f"  {method:>10} n={n:>6}: "
            f"{record.get('fwd_bwd_ms', record.get('note'))}", flush=True)
      if args.out:  # After every record: a sweep cut short keeps its rows.
        with open(args.out, "w") as f:
          json.dump(records, f, indent=1)
  print(table(records))
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
