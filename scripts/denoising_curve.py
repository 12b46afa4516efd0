r"""Held-out denoising loss against the diffusion step, for diffusion runs
(image or video).

  python scripts/denoising_curve.py runs/diffusion_fmnist_dit runs/diffusion_fmnist_dimr \
      [--num_images=2000] [--num_t=20] [--label_shift=1] \
      --out docs/denoising_curve.json --plot docs/denoising_curve.png

Every run is scored on the same grid: the first `num_images` validation
images × `num_t` steps evenly spaced over 1..T × one fixed noise draw per
(image, step) (seed 0), with each run's EMA weights and its own training
loss (ε MSE, v MSE for v-prediction, or DiMR's multi-scale sum; `high_res_mse`
is the plain ε MSE (v converted to ε) of
the full-resolution output for every model, the comparable number). Low
variance by construction (reference/diffusion.md §4.2's primary signal).
Prints a table, writes JSON (one record per run and step) and a PNG.
"""
import argparse
import json
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


matplotlib.use("Agg")


def curve(workdir, num_images, num_t, batch_size=250, label_shift=0):
  """[(step, loss, high_res_mse, x0_mse)] of the run in `workdir` on the
  grid; x0_mse is the error of x̂₀ = (x_n − sqrt(1 − ᾱ) ε̂) / sqrt(ᾱ), the
  prediction a sampler acts on (ε̂'s error times sqrt((1 − ᾱ)/ᾱ)).

  `label_shift` k > 0 scores every image as class (y + k) mod C: the gap
  to k = 0 is how much the model uses its class label.
  """
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import training
  _, task, params, builder, _ = training.load_run(os.path.abspath(workdir))
  source = builder.as_data_source(split="validation")
  count = min(num_images, len(source))
  examples = [task.transform.map(source[i]) for i in range(count)]
  images = np.stack([e[task.key] for e in examples])  # images or videos
  labels = np.array([e["label"] for e in examples], np.int32)
  labels = (labels + label_shift) % task.null_class
  steps = np.round(np.linspace(1, task.schedule.num_steps, num_t)).astype(
      np.int32)

  @jax.jit
  def losses(params, x0, y, step, noise):
    total = task.losses(params, x0, y, step, noise)
    x_n = task.schedule.add_noise(x0, noise, step)
    eps = task.epsilon(params, x_n, step, y)
    per_example = lambda e: jnp.mean(e**2, axis=tuple(range(1, noise.ndim)))
    alpha, sigma = task.schedule.alpha_sigma(step)
    x0_hat = (x_n - sigma[0] * eps) / alpha[0]
    return (total.sum(), per_example(eps - noise).sum(),
            per_example(x0_hat - x0).sum())

  rows = []
  pad_spec = lambda pad: ((0, pad),) + ((0, 0),) * (images.ndim - 1)
  for t_index, step in enumerate(steps):
    total = high = x0_mse = 0.0
    for start in range(0, len(images), batch_size):
      x0 = images[start:start + batch_size]
      key = jax.random.fold_in(jax.random.PRNGKey(t_index), start)
      noise = jax.random.normal(key, x0.shape)
      pad = batch_size - len(x0)  # One compiled shape; padding not counted.
      a, b, c = losses(params, np.pad(x0, pad_spec(pad)),
                       np.pad(labels[start:start + batch_size], (0, pad)),
                       jnp.full((batch_size,), step, jnp.int32),
                       jnp.pad(noise, pad_spec(pad)))
      total, high, x0_mse = total + float(a), high + float(b), x0_mse + float(c)
    rows.append((int(step), total / len(images), high / len(images),
                 x0_mse / len(images)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--num_images", type=int, default=2000)
  parser.add_argument("--num_t", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=250,
                      help="examples per compiled call (lower for videos)")
  parser.add_argument("--label_shift", type=int, default=0,
                      help="score with class (y + k) mod C (a wrong label)")
  parser.add_argument("--out", default=None, help="JSON path")
  parser.add_argument("--plot", default=None, help="PNG path")
  args = parser.parse_args()
  records = []
  for workdir in args.workdirs:
    for step, loss, high, x0_mse in curve(workdir, args.num_images,
                                          args.num_t,
                                          batch_size=args.batch_size,
                                          label_shift=args.label_shift):
      records.append({"run": os.path.basename(os.path.normpath(workdir)),
                      "step": step, "loss": loss, "high_res_mse": high,
                      "x0_mse": x0_mse,
                      "num_images": args.num_images,
                      "label_shift": args.label_shift,
                      "device": jax.devices()[0].device_kind})
  runs = list(dict.fromkeys(r["run"] for r in records))
  print("| step | " + " | ".join(f"{r} ε MSE | {r} x̂₀ MSE" for r in runs)
        + " |")
  print("|---|" + "---|---|" * len(runs))
  for step in sorted({r["step"] for r in records}):
    cells = [f"{r['high_res_mse']:.4f} | {r['x0_mse']:.4f}" for run in runs
             for r in records if r["run"] == run and r["step"] == step]
    print(f"| {step} | " + " | ".join(cells) + " |")
  means = {run: np.mean([r["high_res_mse"] for r in records
                         if r["run"] == run]) for run in runs}
  print("| mean | " + " | ".join(f"{means[r]:.4f} | " for r in runs) + " |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
  if args.plot:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
      points = [(r["step"], r["high_res_mse"]) for r in records
                if r["run"] == run]
      ax.plot(*zip(*points), marker="o", ms=3, label=run)
    ax.set_xlabel("diffusion step n (1 = clean, 1000 = noise)")
    ax.set_ylabel("ε MSE (full resolution, EMA weights)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
  main()
