r"""Our attention layer against the Hugging Face PyTorch Nystromformer and YOSO
self-attention layers on CPU (forward + backward, projections included).

For each length: batch 1, hidden 256 = 4 heads × 64, fp32, the median wall
time of `repeats` forward+backward passes after a warm-up, of

  * ours: `efficient.attention.encoder.SelfAttention` (Q/K/V projections,
    attention, value conv where the method has one, output projection),
    jit-compiled `jax.value_and_grad` of sum(out · w) w.r.t. the parameters
    and the input x;
  * HF: `NystromformerSelfAttention` / `YosoSelfAttention` of `transformers`
    followed by a `torch.nn.Linear(256, 256)` standing for the output dense of
    their `*SelfOutput` (the HF self-attention layer stops before it; its
    LayerNorm and residual are left out on both sides), eval mode (no
    dropout) under `torch.enable_grad()`, backward of sum(out · w) to the
    parameters and the input, `torch.set_num_threads(os.cpu_count())`.
    OMP_WAIT_POLICY defaults to PASSIVE (set it to override; it is
    recorded): with torch's default busy-waiting OpenMP threads, any other
    load on the cores makes torch many times slower (35× on 2 loaded
    cores), while passive waiting costs little on an idle machine.

Methods (hyperparameters are the defaults of the HF configs, read from them
at run time, and the same on both sides):

  nystrom       m = 64 landmarks, depthwise value conv of HF's
                `conv_kernel_size` (65); HF's `segment_means_seq_len` is set
                to n so it takes its Nyström path (it needs m | n).
  yoso-e        YOSO-E, the O(n²) expectation form, τ = HF's
                `hash_code_len` (9), no conv (HF `conv_window=None`). This is
                the only form HF runs on CPU: its LSH path needs CUDA kernels.
  yoso-sampled  ours only: LSH-sampled YOSO, τ as above, m = HF's `num_hash`
                (64) hashes. Its table row compares it with HF's YOSO-E, the
                form a CPU user of HF gets.

  python scripts/bench_peers.py --out docs/bench_peers_cpu.json \
      --plot docs/bench_peers_cpu.png
  python scripts/bench_peers.py --methods nystrom --lengths 1024,4096

Needs the `bench` extra (torch, transformers): `bash scripts/install.sh bench`.
A configuration whose memory would exceed --max_gb is not run (time: null,
note says why): ours by XLA's compiled temporaries, HF's YOSO-E by an
estimate of 12 live fp32 [heads, n, n] buffers, HF Nyström by 12 [heads, n, m].
"""
import argparse
import json
import os
import statistics
import sys
import time

# Before torch loads its OpenMP runtime (see the docstring).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

METHODS = ("nystrom", "yoso-e", "yoso-sampled")
# The HF method a row of the table is compared with.
HF_PEER = {"nystrom": "nystrom", "yoso-e": "yoso-e", "yoso-sampled": "yoso-e"}
HF_YOSO_E_BUFFERS = 12  # Live fp32 [batch·heads, n, n] buffers (estimate).
HF_NYSTROM_BUFFERS = 12  # Live fp32 [batch·heads, n, max(m, d)] buffers.


def _import_peers():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from transformers.models.nystromformer import modeling_nystromformer  # pylint: disable=g-import-not-at-top
    from transformers.models.yoso import modeling_yoso  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    sys.exit(f"bench_peers.py needs torch and transformers ({e}); install "
             "them with: bash scripts/install.sh bench")
  return torch, transformers, modeling_nystromformer, modeling_yoso


def hf_defaults():
  """The HF config defaults both sides use."""
  from transformers import NystromformerConfig, YosoConfig  # pylint: disable=g-import-not-at-top
  nystrom, yoso = NystromformerConfig(), YosoConfig()
  return {"num_landmarks": nystrom.num_landmarks,
          "conv_kernel_size": nystrom.conv_kernel_size,
          "hash_code_len": yoso.hash_code_len, "num_hash": yoso.num_hash}


def method_settings(method, defaults):
  """(our SelfAttention settings, HF config overrides or None) of a method."""
  if method == "nystrom":
    ours = {"attention": "nystrom",
            "attention_kwargs": {"num_landmarks": defaults["num_landmarks"]},
            "value_conv_size": defaults["conv_kernel_size"]}
    hf = {"num_landmarks": defaults["num_landmarks"],
          "conv_kernel_size": defaults["conv_kernel_size"]}
  elif method == "yoso-e":
    ours = {"attention": "yoso", "value_conv_size": 0,
            "attention_kwargs": {"sampled": False,
                                 "hash_bits": defaults["hash_code_len"]}}
    hf = {"use_expectation": True, "hash_code_len": defaults["hash_code_len"],
          "conv_window": None}
  elif method == "yoso-sampled":
    ours = {"attention": "yoso", "value_conv_size": 0,
            "attention_kwargs": {"hash_bits": defaults["hash_code_len"],
                                 "num_hashes": defaults["num_hash"]}}
    hf = None  # HF's LSH path needs CUDA kernels.
  else:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  return ours, hf


def machine(torch, transformers):
  """bench_attention.py's machine fields plus the peers' versions."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "bench_attention", os.path.join(os.path.dirname(os.path.abspath(
          __file__)), "bench_attention.py"))
  bench_attention = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_attention)
  info = bench_attention.machine()
  info.update(torch=torch.__version__, transformers=transformers.__version__,
              torch_threads=torch.get_num_threads(),
              omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
  return info


def _timed(fn, repeats):
  fn()  # Warm-up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return times


def measure_ours(method, length, *, batch, heads, head_dim, repeats,
                 max_bytes, defaults):
  """Record of our layer: compile, check memory, warm up, time."""
  import flax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from efficient.attention import encoder  # pylint: disable=g-import-not-at-top
  settings, _ = method_settings(method, defaults)
  width = heads * head_dim
  model = encoder.SelfAttention(
      num_heads=heads, head_dim=head_dim, attention=settings["attention"],
      attention_kwargs=flax.core.FrozenDict(settings["attention_kwargs"]),
      value_conv_size=settings["value_conv_size"])
  key_x, key_init, key_hash = jax.random.split(jax.random.PRNGKey(length), 3)
  x = jax.random.normal(key_x, (batch, length, width), jnp.float32)
  mask = jnp.ones((batch, length), bool)
  rngs = {"hash": key_hash}  # Used by the sampled YOSO only.
  params = nn.meta.unbox(model.init(dict(rngs, params=key_init), x,
                                    mask)["params"])
  weights = jnp.cos(jnp.arange(width, dtype=jnp.float32))  # Fixed cotangent.

  def loss(params, x):
    out = model.apply({"params": params}, x, mask, rngs=rngs)
    return jnp.sum(out * weights)

  record = {"impl": "ours", "method": method, "length": length,
            "batch": batch, "heads": heads, "head_dim": head_dim,
            "dtype": "float32", "repeats": repeats,
            "hparams": {"attention": settings["attention"],
                        "value_conv_size": settings["value_conv_size"],
                        **settings["attention_kwargs"]}}
  start = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(
      params, x).compile()
  record["compile_s"] = time.perf_counter() - start
  record["temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
  if record["temp_bytes"] > max_bytes:
    record.update(time_ms=None, times_ms=[],
                  note=f"not run: needs {record['temp_bytes'] / 2**30:.1f} "
                  "GiB of XLA temporaries (> --max_gb)")
    return record
  times = _timed(lambda: jax.block_until_ready(compiled(params, x)), repeats)
  record.update(time_ms=statistics.median(times), times_ms=times)
  return record


def hf_layer(method, length, *, heads, head_dim, defaults, peers):
  """(HF self-attention layer, output Linear) for `method`, in eval mode."""
  torch, _, modeling_nystromformer, modeling_yoso = peers
  _, overrides = method_settings(method, defaults)
  common = dict(hidden_size=heads * head_dim, num_attention_heads=heads,
                attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
  if method == "nystrom":
    config = modeling_nystromformer.NystromformerConfig(
        segment_means_seq_len=length, **common, **overrides)
    layer = modeling_nystromformer.NystromformerSelfAttention(config)
  else:
    config = modeling_yoso.YosoConfig(**common, **overrides)
    layer = modeling_yoso.YosoSelfAttention(config)
  out = torch.nn.Linear(heads * head_dim, heads * head_dim)
  return layer.eval(), out.eval()


def hf_mask(method, batch, length, torch):
  """The all-ones (no padding) mask in the form each HF layer expects."""
  if method == "nystrom":
    return None  # Added to the scores: None is its no-padding path.
  # YosoModel passes the raw 0/1 mask (YosoSelfAttention multiplies by it).
  return torch.ones(batch, length)


def hf_estimate_bytes(method, length, *, batch, heads, head_dim, defaults):
  if method == "nystrom":
    return (HF_NYSTROM_BUFFERS * batch * heads * length *
            max(defaults["num_landmarks"], head_dim) * 4)
  return HF_YOSO_E_BUFFERS * batch * heads * length**2 * 4


def measure_hf(method, length, *, batch, heads, head_dim, repeats, max_bytes,
               defaults, peers):
  """Record of the HF layer + output Linear: forward+backward, eval mode."""
  torch = peers[0]
  _, overrides = method_settings(method, defaults)
  width = heads * head_dim
  record = {"impl": "hf", "method": method, "length": length, "batch": batch,
            "heads": heads, "head_dim": head_dim, "dtype": "float32",
            "repeats": repeats, "hparams": dict(overrides)}
  record["est_bytes"] = hf_estimate_bytes(method, length, batch=batch,
                                          heads=heads, head_dim=head_dim,
                                          defaults=defaults)
  if method == "nystrom":
    record["hparams"]["segment_means_seq_len"] = length
    m = defaults["num_landmarks"]
    if length < m or length % m:
      record.update(time_ms=None, times_ms=[],
                    note=f"not run: HF Nystromformer needs n a multiple of "
                    f"num_landmarks={m} (n = m takes its exact softmax path)")
      return record
  if record["est_bytes"] > max_bytes:
    record.update(time_ms=None, times_ms=[],
                  note=f"not run: needs ~{record['est_bytes'] / 2**30:.1f} "
                  "GiB (estimate, > --max_gb)")
    return record
  torch.manual_seed(length)
  layer, out_proj = hf_layer(method, length, heads=heads, head_dim=head_dim,
                             defaults=defaults, peers=peers)
  params = list(layer.parameters()) + list(out_proj.parameters())
  x = torch.randn(batch, length, width, requires_grad=True)
  mask = hf_mask(method, batch, length, torch)
  weights = torch.cos(torch.arange(width, dtype=torch.float32))

  def step():
    for tensor in params + [x]:
      tensor.grad = None
    with torch.enable_grad():
      out = out_proj(layer(x, mask)[0])
      (out * weights).sum().backward()

  times = _timed(step, repeats)
  record.update(time_ms=statistics.median(times), times_ms=times)
  return record


def table(records):
  """Markdown table: our time, the HF peer's, and HF/ours (our speed-up)."""
  hf = {(r["method"], r["length"]): r for r in records if r["impl"] == "hf"}
  lines = ["| method | n | ours ms | HF ms | HF/ours (speed-up) |",
           "|---|---|---|---|---|"]
  for r in (r for r in records if r["impl"] == "ours"):
    peer = hf.get((HF_PEER[r["method"]], r["length"]))
    label = r["method"]
    if peer and HF_PEER[r["method"]] != r["method"]:
      label += f" (HF: {HF_PEER[r['method']]})"
    ours_ms = "—" if r["time_ms"] is None else f"{r['time_ms']:.1f}"
    hf_ms = ("—" if peer is None or peer["time_ms"] is None else
             f"{peer['time_ms']:.1f}")
    speed = (f"{peer['time_ms'] / r['time_ms']:.2f}×"
             if peer and peer["time_ms"] and r["time_ms"] else "—")
    lines.append(f"| {label} | {r['length']} | {ours_ms} | {hf_ms} | "
                 f"{speed} |")
  return "\n".join(lines)


def plot(records, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4.5))
  colors = {m: f"C{i}" for i, m in enumerate(METHODS)}  # One per method.
  for impl, method in dict.fromkeys((r["impl"], r["method"]) for r in records):
    timed = [r for r in records if (r["impl"], r["method"]) == (impl, method)
             and r["time_ms"] is not None]
    if timed:  # Ours solid, HF dashed.
      ax.plot([r["length"] for r in timed], [r["time_ms"] for r in timed],
              "o-" if impl == "ours" else "s--", color=colors[method],
              label=f"{impl} {method}")
  ax.set(xscale="log", yscale="log", xlabel="sequence length",
         ylabel="forward+backward (ms, median)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_gb", type=float, default=12.0,
                      help="skip running configs needing more memory")
  parser.add_argument("--out", default=None, help="JSON output file")
  parser.add_argument("--plot", default=None, help="PNG output file")
  args = parser.parse_args()
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    parser.error(f"unknown methods {unknown}; known: {list(METHODS)}")
  peers = _import_peers()
  torch, transformers = peers[:2]
  torch.set_num_threads(os.cpu_count())
  defaults = hf_defaults()
  info = machine(torch, transformers)
  print(f"machine: {info}", flush=True)
  print(f"HF config defaults used on both sides: {defaults}", flush=True)
  sizes = dict(batch=args.batch, heads=args.heads, head_dim=args.head_dim,
               repeats=args.repeats, max_bytes=args.max_gb * 2**30,
               defaults=defaults)
  records = []
  for length in (int(n) for n in args.lengths.split(",")):
    for method in methods:
      runs = [("ours", lambda: measure_ours(method, length, **sizes))]
      if method_settings(method, defaults)[1] is not None:
        runs.append(("hf", lambda: measure_hf(method, length, peers=peers,
                                              **sizes)))
      for impl, run in runs:
        record = run()
        record.update(info)
        records.append(record)
        shown = ("not run" if record["time_ms"] is None else
                 f"{record['time_ms']:.1f} ms")
        memory = (f"XLA temporaries {record['temp_bytes'] / 2**20:.1f} MiB"
                  if impl == "ours" else
                  f"estimate {record['est_bytes'] / 2**20:.1f} MiB")
        print(f"  {impl:>4} {method:>12} n={length:>6}: {shown}, {memory}",
              flush=True)
  records.sort(key=lambda r: (r["impl"] != "ours", methods.index(r["method"]),
                              r["length"]))
  print(table(records))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
    print(f"wrote {args.out}")
  if args.plot:
    plot(records, args.plot, f"ours (jax {info['jax']}) vs Hugging Face "
         f"(torch {info['torch']}, transformers {info['transformers']})\n"
         f"{info['cpu']}, {info['cpu_cores']} cores; batch {args.batch}, "
         f"{args.heads}×{args.head_dim}, fp32, fwd+bwd with projections")
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
