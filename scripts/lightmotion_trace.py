r"""Where does a requested camera move go during sampling? The motion of
x̂₀, step by step, after the LightMotion update.

  python scripts/lightmotion_trace.py runs/video16_bold --out trace.png \
      [--motion=pan_right] [--t0s=800,600,400,200] [--num_videos=16] \
      [--json=trace.json]

For each T0 in `--t0s`: samples `num_videos` videos (class i % 10, the same
noise for every T0) with the run's `config.lightmotion` settings (DDIM grid,
guidance, fill, alignment) and the update at T0, but no correction (T0 → 0
straight, so every later step is the same sampler: `lightmotion.sample(...,
correction="none")`, which the trace reproduces exactly, tested). Just before
and just after the update, and at every later DDIM step, it fits the camera
motion between consecutive frames of the model's clean estimate x̂₀
(`motion_estimation.consecutive_motions`: the background-only fit, and the
fit over all pixels) and prints the fraction of the requested move that x̂₀
carries: the mean realised frame step projected on the requested one,
Σ_k r_k e_k / Σ_k r_k² over (du px, dv px, zoom %, roll °).

A control at each T0 moves every frame of the latent alike by the clip's
whole move (no motion between frames) and fits x̂₀ after against x̂₀ before,
frame by frame: the fraction of a move that all frames agree on which the
model's estimate follows.

Reading it: ≈ 0 before the update; right after it, how much of the move the
permutation planted in x̂₀ (the model's estimate from the moved latent);
after that, what the denoiser keeps of it. Writes the curves (`--out`) and,
for the config's own T0, x̂₀ of the first video at a few steps
(`<out>_x0.png`: rows = steps, columns = frames).
"""
import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np


def _sample_to(eps_fn, schedule, noise, labels, grid, i0):
  """Plain DDIM from `noise` at grid[0] to grid[i0] (T0)."""
  from efficient.diffusion import samplers  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda z: samplers.ddim_sample(
      eps_fn, schedule, z, labels=labels, grid=grid[:i0 + 1]))(noise)


def trace(eps_fn, schedule, noise, labels, motion_plan, rng, grid, t0,
          fill="background"):
  """DDIM (η = 0) on `grid` with the update at T0 and no correction.

  Returns (final sample, [(step, x̂₀ [B, F, H, W, C])...]): x̂₀ just before
  the update at T0, just after it (both at step T0), then at every later
  grid step where the model is evaluated.
  """
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import lightmotion
  i0 = lightmotion.snap(grid, t0)
  if not 0 < i0 < len(grid) - 1:
    raise ValueError(f"t0={t0} snaps to step {grid[i0]}: needs T > T0 > 0")
  step0 = int(grid[i0])
  x = _sample_to(eps_fn, schedule, noise, labels, grid, i0)
  x0_at = jax.jit(lambda z, step: lightmotion.predicted_x0(
      eps_fn, schedule, z, step, labels))
  before = x0_at(x, step0)
  x = lightmotion.update_batch(eps_fn, schedule, x, step0, labels,
                               motion_plan, rng, fill)

  @jax.jit
  def ddim_step(x, step, prev):  # samplers.ddim_sample's step, η = 0.
    abar = schedule.alphas_cumprod[step]
    abar_prev = schedule.alphas_cumprod[prev]
    eps = eps_fn(x, jnp.full(x.shape[:1], step, jnp.int32), labels)
    x0 = (x - jnp.sqrt(1 - abar) * eps) / jnp.sqrt(abar)
    return (jnp.sqrt(abar_prev) * x0 +
            jnp.sqrt(jnp.maximum(1 - abar_prev, 0.0)) * eps), x0

  estimates = [(step0, before)]
  for step, prev in zip(grid[i0:-1], grid[i0 + 1:]):
    x, x0 = ddim_step(x, jnp.int32(step), jnp.int32(prev))
    estimates.append((int(step), x0))
  return x, estimates


def uniform_control(eps_fn, schedule, noise, labels, path, rng, grid, t0):
  """x̂₀ at T0 before and after moving *every* frame of the latent by the
  clip's whole move `path[-1]` (no motion between frames; exposed tokens
  fresh noise): does the model's estimate follow a move that all frames
  agree on? Returns (before, after), each [B, F, H, W, C]."""
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import lightmotion
  i0 = lightmotion.snap(grid, t0)
  step0 = int(grid[i0])
  frames, height, width = noise.shape[1:4]
  same_move = lightmotion.plan(np.repeat(path[-1:], frames, 0), height,
                               width)
  x = _sample_to(eps_fn, schedule, noise, labels, grid, i0)
  moved = lightmotion.update_batch(eps_fn, schedule, x, step0, labels,
                                   same_move, rng, fill="noise")
  x0_at = jax.jit(lambda z: lightmotion.predicted_x0(eps_fn, schedule, z,
                                                     step0, labels))
  return x0_at(x), x0_at(moved)


def fraction_of_request(realised, requested):
  """Σ r e / Σ r² over (du, dv, zoom %, roll °) frame steps."""
  realised, requested = np.asarray(realised), np.asarray(requested)
  return float(realised @ requested / (requested @ requested))


def to_units(step):
  """(log s, φ, du, dv) → (du px, dv px, zoom %, roll °)."""
  return np.array([step[2], step[3], 100 * np.expm1(step[0]),
                   np.degrees(step[1])])


def run(workdir, motion_name, t0s, num_videos, seed=0):
  """{T0: [{step, after_update, background, all_pixels}...]}, requested
  step, and x̂₀ of video 0 per step for the config's T0."""
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import lightmotion
  from efficient.diffusion import motion_estimation
  from efficient.diffusion import samplers
  from efficient.diffusion import training
  from efficient.errors import ConfigError
  config, task, params, _, _ = training.load_run(workdir)
  if "lightmotion" not in config:
    raise ConfigError(f"{workdir}: not a video run with config.lightmotion")
  settings = config.lightmotion.to_dict()
  if motion_name not in settings["motions"]:
    raise ConfigError(f"--motion={motion_name}: one of "
                      f"{sorted(settings['motions'])}")
  frames, size = task.shape[0], task.shape[1]
  path = lightmotion.camera_path(
      lightmotion.Motion(*settings["motions"][motion_name]), frames, size,
      size)
  motion_plan = lightmotion.plan(path, size, size, settings["align"])
  requested = to_units(motion_estimation.requested_steps(path).mean(0))
  eps_fn = samplers.classifier_free_guidance(
      lambda x, step, y: task.epsilon(params, x, step, y), task.null_class,
      settings["guidance"])
  grid = samplers.step_grid(task.schedule, settings["num_steps"])
  labels = jnp.arange(num_videos, dtype=jnp.int32) % task.null_class
  noise_key, update_key = jax.random.split(jax.random.PRNGKey(seed))
  noise = jax.random.normal(noise_key, (num_videos,) + task.shape)
  fits = {
      kind: jax.jit(jax.vmap(lambda v, b=(kind == "background"):
                             motion_estimation.consecutive_motions(
                                 jnp.clip(v, -1, 1), background_only=b)))
      for kind in ("background", "all_pixels")}
  curves, controls, pictures = {}, {}, []
  for t0 in t0s:
    _, estimates = trace(eps_fn, task.schedule, noise, labels, motion_plan,
                         update_key, grid, t0, settings["fill"])
    curve = []
    for i, (step, x0) in enumerate(estimates):
      record = {"step": step, "after_update": i > 0}
      for kind, fit in fits.items():
        realised = to_units(np.asarray(fit(x0)).mean(axis=(0, 1)))
        record[kind] = fraction_of_request(realised, requested)
        record[kind + "_step"] = realised.tolist()
      curve.append(record)
      if t0 == settings["t0"]:
        pictures.append((step, i > 0, np.asarray(x0[0, ..., 0])))
    curves[t0] = curve
    before, after = uniform_control(eps_fn, task.schedule, noise, labels,
                                    path, update_key, grid, t0)
    whole = to_units(np.array(motion_estimation.requested_steps(
        path[[0, -1]])[0]))
    pairs = lambda v: v.reshape((-1,) + v.shape[2:4])  # [B·F, H, W]
    fitted = to_units(np.asarray(jax.jit(jax.vmap(
        motion_estimation.fit_similarity))(
            pairs(jnp.clip(before, -1, 1)), pairs(jnp.clip(after, -1, 1))
        )).mean(0))
    controls[t0] = {"requested": whole.tolist(), "realised": fitted.tolist(),
                    "fraction": fraction_of_request(fitted, whole)}
    print(f"T0 = {t0}: fraction of the requested move in x̂₀ "
          "(background fit / all pixels)")
    for r in curve:
      tag = "after update" if r["after_update"] else "before update"
      if r["after_update"] and r["step"] != curve[0]["step"]:
        tag = ""
      print(f"  step {r['step']:4d} {tag:>13}: {r['background']:+.2f} / "
            f"{r['all_pixels']:+.2f}")
    print(f"  control, every frame moved alike by the clip's whole move: "
          f"x̂₀ follows {controls[t0]['fraction']:+.2f} of it (all pixels)")
  return {"motion": motion_name, "requested_step": requested.tolist(),
          "num_videos": num_videos, "curves": curves,
          "uniform_control": controls}, pictures


def plot(results, path):
  """Fraction of the request against the step, one colour per T0."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for t0, curve in results["curves"].items():
    after = [r for r in curve if r["after_update"]]
    line, = ax.plot([r["step"] for r in after],
                    [r["background"] for r in after], "-o", ms=3,
                    label=f"T0 = {t0}, background fit")
    ax.plot([r["step"] for r in after], [r["all_pixels"] for r in after],
            "--", color=line.get_color(), label=f"T0 = {t0}, all pixels")
    ax.plot([curve[0]["step"]], [curve[0]["background"]], "x",
            color=line.get_color())
  ax.axhline(1.0, color="grey", lw=0.8)
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.invert_xaxis()
  ax.set_xlabel("diffusion step of x̂₀ (sampling runs right)")
  ax.set_ylabel("fraction of the requested move")
  ax.set_title(f"{results['motion']}: the move x̂₀ carries "
               f"({results['num_videos']} videos; × = before the update)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def save_pictures(pictures, path, rows=6, scale=4):
  """x̂₀ of one video at `rows` steps from the update to the end."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  picks = np.unique(np.round(np.linspace(0, len(pictures) - 1, rows)))
  grid = np.concatenate([np.concatenate(list(pictures[int(i)][2]), 1)
                         for i in picks], 0)
  grid = ((np.clip(grid, -1, 1) + 1) * 127.5).round().astype(np.uint8)
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                               Image.NEAREST).save(path)
  return [(pictures[int(i)][0], pictures[int(i)][1]) for i in picks]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--out", required=True, help="PNG path of the curves")
  parser.add_argument("--motion", default="pan_right")
  parser.add_argument("--t0s", default="800,600,400,200")
  parser.add_argument("--num_videos", type=int, default=16)
  parser.add_argument("--json", default=None, help="also write the numbers")
  args = parser.parse_args()
  results, pictures = run(args.workdir, args.motion,
                          [int(t) for t in args.t0s.split(",")],
                          args.num_videos)
  plot(results, args.out)
  print(f"wrote {args.out}")
  if pictures:
    stem, _ = os.path.splitext(args.out)
    rows = save_pictures(pictures, stem + "_x0.png")
    print(f"wrote {stem}_x0.png: rows = x̂₀ at steps "
          + ", ".join(f"{s}{'' if after else ' (before update)'}"
                      for s, after in rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
