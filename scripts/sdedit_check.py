r"""Can a diffusion run denoise its own data? DDIM from noised real examples.

  python scripts/sdedit_check.py runs/video_v --out sdedit_check.png \
      [--starts=200,400,600,1000] [--num_examples=4] [--num_steps=50]

Takes the first `num_examples` validation examples (images, or videos'
first frames in the picture), noises each to step n for every n in
`--starts` (n = T: all but pure noise, like a sampler's start), runs DDIM (η = 0,
`num_steps` steps, no guidance, the true labels) from there to 0, and adds a
DDPM row from pure noise (`--ddpm_steps`, default every step). Prints the MSE to the source per
start and writes a picture: row 1 the sources, then one row per start, then
DDPM. A model that cannot bring back its own data from small n (SDEdit,
Meng et al., 2022) has a low-noise problem, whatever its samples from pure
noise look like.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def check(workdir, starts, num_examples, num_steps, ddpm_steps=None, seed=0):
  """(rows [1 + len(starts) + 1, examples, H, W] in [−1, 1], {start: mse})."""
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import samplers
  from efficient.diffusion import training
  _, task, params, builder, _ = training.load_run(workdir)
  source = builder.as_data_source(split="validation")
  examples = [task.transform.map(source[i]) for i in range(num_examples)]
  x0 = jnp.asarray(np.stack([e[task.key] for e in examples]))
  labels = jnp.asarray(np.array([e["label"] for e in examples], np.int32))
  eps_fn = lambda x, step, y: task.epsilon(params, x, step, y)
  schedule = task.schedule
  noise = jax.random.normal(jax.random.PRNGKey(seed), x0.shape)
  first = lambda x: np.clip(np.asarray(x[:, 0] if x.ndim == 5 else x), -1, 1)
  rows, errors = [first(x0)], {}
  for start in starts:
    grid = np.round(np.linspace(start, 0, num_steps + 1)).astype(np.int32)
    x_n = schedule.add_noise(x0, noise, jnp.full((num_examples,), start))
    out = jax.jit(lambda x, grid=grid: samplers.ddim_sample(
        eps_fn, schedule, x, labels=labels, grid=grid))(x_n)
    errors[start] = float(jnp.mean((out - x0)**2))
    rows.append(first(out))
  out = jax.jit(lambda x: samplers.ddpm_sample(
      eps_fn, schedule, x, jax.random.PRNGKey(seed + 1),
      ddpm_steps or schedule.num_steps, labels))(noise)
  rows.append(first(out))
  return np.stack(rows)[..., 0], errors


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--out", required=True, help="PNG path")
  parser.add_argument("--starts", default="200,400,600,1000")
  parser.add_argument("--num_examples", type=int, default=4)
  parser.add_argument("--num_steps", type=int, default=50)
  parser.add_argument("--ddpm_steps", type=int, default=None)
  args = parser.parse_args()
  starts = [int(s) for s in args.starts.split(",")]
  rows, errors = check(args.workdir, starts, args.num_examples,
                       args.num_steps, args.ddpm_steps)
  for start, mse in errors.items():
    print(f"DDIM from n = {start}: MSE to the source {mse:.4f}")
  picture = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
  picture = ((picture + 1) * 127.5).round().astype(np.uint8)
  Image.fromarray(picture).resize(
      (picture.shape[1] * 4, picture.shape[0] * 4), Image.NEAREST).save(
          args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
