r"""LightMotion on a trained static-camera video model: requested camera moves
against the moves the samples realise, frame quality, ablations.

  python -m experiments.lightmotion --workdir=runs/video_static
  python -m experiments.lightmotion --workdir=runs/video_static \
      --num_videos=20 --motions=pan_right,zoom_in

Reads the run's config.json (`config.lightmotion` holds the settings, see
configs/video.py) and its EMA weights, then for the uncontrolled baseline,
every requested motion and every ablation (on `ablation_motions`):

  1. samples `num_videos` videos (class i % 10, the same noise for video i
     in every condition, so conditions differ only by the motion);
  2. estimates the global motion between consecutive frames
     (efficient/diffusion/motion_estimation.py: a robust similarity fit on
     the background) and compares it with the requested frame-to-frame move
     (shift px, scale %, rotation °; mean over videos and frame pairs), and
     reports the mean realised move beside the requested one;
  3. scores frame quality: FID / KID of all frames against the frames of
     `reference_videos` real videos of the run's data (test split), in the
     features of the Fashion-MNIST classifier of the diffusion work
     (efficient/diffusion/fid.py), and the class accuracy of the frames.

The estimator itself is checked first on the `fmnist_video/moving` (or
`moving_bold`, for a `*_bold` model) test split, whose camera moves are
known (`estimator/...` keys); how much those videos move, truly and as
estimated (`moving_data/...`), is the yardstick for the uncontrolled row
of a model trained on moving cameras. Outputs go to
`<workdir>/lightmotion/`: results.json, a printed markdown table,
motion_errors.png, and per condition a strip PNG (4 videos × 8 frames) and
a GIF; sampled videos are cached (`videos/<condition>.npy`), so a rerun
resumes.
"""
import functools
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained video run.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", None,
                                   "Videos per condition (default: config).")
_MOTIONS = flags.DEFINE_list("motions", None,
                             "Motions to run (default: all in the config).")
_ABLATIONS = flags.DEFINE_list("ablations", None,
                               "Ablations (default: the config's).")
flags.mark_flags_as_required(["workdir"])

# Ablation name → overrides of config.lightmotion.
ABLATIONS = {
    "no_resampling": {"fill": "noise"},  # New regions: fresh noise.
    "no_mask": {"fill": "any"},  # Fills may copy the object.
    "no_alignment": {"align": False},  # Fills re-drawn in every frame.
    "no_correction": {"correction": "none"},
    "sdedit_correction": {"correction": "sdedit"},
    "early_update": {"t0": 800, "t1": 600, "t2": 700},
    "late_update": {"t0": 400, "t1": 200, "t2": 300},
    "latest_update": {"t0": 200, "t1": 100, "t2": 160},
}
ESTIMATOR_VIDEOS = 200


def conditions(settings, motions, ablations):
  """[(name, motion name or None, settings)] in run order."""
  out = [("uncontrolled", None, dict(settings))]
  for m in motions:
    out.append((m, m, dict(settings)))
  for a in ablations:
    if a not in ABLATIONS:
      raise ValueError(f"ablation {a!r}: one of {sorted(ABLATIONS)}")
    for m in settings["ablation_motions"]:
      if m in motions:
        out.append((f"{m}/{a}", m, dict(settings, **ABLATIONS[a])))
  return out


def make_generator(task, params, settings):
  """A jit'd `(noise, labels, rng, plan or None) -> videos in [−1, 1]`."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from efficient.diffusion import lightmotion
  from efficient.diffusion import samplers

  def eps_fn(x, step, y):
    return task.epsilon(params, x, step, y)

  guided = samplers.classifier_free_guidance(eps_fn, task.null_class,
                                             settings["guidance"])
  kwargs = dict(sampler=settings["sampler"], num_steps=settings["num_steps"],
                t0=settings["t0"], t1=settings["t1"], t2=settings["t2"],
                fill=settings["fill"], correction=settings["correction"])

  @jax.jit
  def run(noise, labels, rng, plan):
    out = lightmotion.sample(guided, task.schedule, noise, labels, plan, rng,
                             **kwargs)
    return jnp.clip(out, -1.0, 1.0)

  return run


def sample_condition(task, params, settings, motion, *, num_videos,
                     batch_size, seed, cache, generators):
  """Videos [n, F, H, W, 1] (numpy) and labels for one condition.

  `generators` caches one compiled sampler per setting (motions share it:
  the plan is an argument).
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from efficient.diffusion import lightmotion

  frames, size = task.shape[0], task.shape[1]
  labels = np.arange(num_videos, dtype=np.int32) % task.null_class
  if os.path.exists(cache):
    videos = np.load(cache)
    if len(videos) == num_videos:
      return videos, labels
  plan = None
  if motion is not None:
    path = lightmotion.camera_path(lightmotion.Motion(*motion), frames, size,
                                   size)
    plan = lightmotion.plan(path, size, size, settings["align"]).pad(
        frames * size * size)
  key = tuple(settings[k] for k in ("sampler", "num_steps", "guidance", "t0",
                                    "t1", "t2", "fill", "correction"))
  if key not in generators:
    generators[key] = make_generator(task, params, settings)
  run = generators[key]
  videos = []
  for b in range(-(-num_videos // batch_size)):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
    noise_key, motion_key = jax.random.split(key)
    y = np.resize(labels[b * batch_size:(b + 1) * batch_size], batch_size)
    noise = jax.random.normal(noise_key, (batch_size,) + task.shape)
    videos.append(np.asarray(run(noise, y, motion_key, plan)))
  videos = np.concatenate(videos)[:num_videos]
  np.save(cache + ".tmp.npy", videos)
  os.replace(cache + ".tmp.npy", cache)
  return videos, labels


def motion_scores(videos, motion, frames, size):
  """Mean errors against the request, and the mean realised move."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from efficient.diffusion import lightmotion
  from efficient.diffusion import motion_estimation

  estimated = np.asarray(jax.vmap(motion_estimation.consecutive_motions)(
      videos))  # [n, F − 1, 4]
  path = lightmotion.camera_path(lightmotion.Motion(*(motion or (0, 0, 0, 0))),
                                 frames, size, size)
  requested = motion_estimation.requested_steps(path)
  errors = motion_estimation.motion_errors(estimated, requested[None])
  realised = estimated.mean(axis=(0, 1))
  asked = requested.mean(axis=0)
  # The same fit over every pixel, objects included: where a model moves
  # its objects but regenerates a static background, this one sees a part
  # of the move that the background's does not.
  everything = np.asarray(jax.vmap(functools.partial(
      motion_estimation.consecutive_motions, background_only=False))(
          videos)).mean(axis=(0, 1))
  step = lambda m: [float(m[2]), float(m[3]), float(100 * np.expm1(m[0])),
                    float(np.degrees(m[1]))]
  return {
      "shift_error_px": float(errors["shift_px"].mean()),
      "scale_error_pct": float(errors["scale_pct"].mean()),
      "rotation_error_deg": float(errors["rotation_deg"].mean()),
      # Per frame step: (du, dv) px, zoom %, rotation ° (counter-clockwise).
      "realised_step": step(realised),
      "realised_step_all_pixels": step(everything),
      "requested_step": step(asked),
  }


def estimator_check(data_dir, num_videos, smoke=False, downsample=1,
                    data="static"):
  """The estimator's error on real videos with known camera moves (at the
  model's resolution: frames averaged over `downsample`² pixel blocks), from
  the moving-camera counterpart of the run's `data` builder config."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from efficient.data import fmnist_video
  from efficient.data import pipeline
  from efficient.diffusion import lightmotion
  from efficient.diffusion import motion_estimation

  moving = "moving_bold" if data.endswith("_bold") else "moving"
  builder = fmnist_video.FmnistVideo(config="moving_smoke" if smoke else
                                     moving, data_dir=data_dir,
                                     file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  source = builder.as_data_source(split="test")
  errors, seen, true = [], [], []
  for i in range(min(num_videos, len(source))):
    example = source[i]
    video = pipeline.VideoToFloat(downsample).map(example)["video"]
    path = lightmotion.camera_path(
        lightmotion.Motion(*map(float, example["camera"])),
        *video.shape[:3])
    estimated = motion_estimation.consecutive_motions(video)
    requested = motion_estimation.requested_steps(path)
    errors.append(motion_estimation.motion_errors(estimated, requested))
    # How much these videos move: the same statistic as an uncontrolled
    # sample's "errors" (against no move), to compare a moving-camera
    # model's own motion with its data's.
    still = np.zeros_like(requested)
    seen.append(motion_estimation.motion_errors(estimated, still))
    true.append(motion_estimation.motion_errors(requested, still))
  mean = lambda records, k: float(np.mean([r[k] for r in records]))
  return ({f"estimator/{k}": mean(errors, k) for k in errors[0]} |
          {f"moving_data/estimated_{k}": mean(seen, k) for k in seen[0]} |
          {f"moving_data/camera_{k}": mean(true, k) for k in true[0]} |
          {"estimator/num_videos": len(errors)})


def frame_quality(classifier, videos, labels, real_features):
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from efficient.diffusion import fid

  frames = videos.reshape((-1,) + videos.shape[2:])
  logits, features = fid.apply_in_batches(classifier, frames)
  kid, kid_std = fid.kernel_inception_distance(features, real_features)
  frame_labels = np.repeat(labels, videos.shape[1])
  return {"fid": fid.frechet_distance(features, real_features), "kid": kid,
          "kid_std": kid_std,
          "class_accuracy": float((logits.argmax(-1) == frame_labels).mean())}


def save_strip_and_gif(videos, path_png, path_gif, rows=4, scale=3):
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from PIL import Image

  picked = videos[:rows, ..., 0]
  strip = np.concatenate([np.concatenate(list(v), axis=1) for v in picked])
  to_uint8 = lambda x: np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8)
  Image.fromarray(to_uint8(strip)).resize(
      (strip.shape[1] * scale, strip.shape[0] * scale),
      Image.NEAREST).save(path_png)
  tiles = [np.concatenate(list(picked[:, f]), axis=1)
           for f in range(picked.shape[1])]
  gif = [Image.fromarray(to_uint8(t)).resize(
      (t.shape[1] * scale, t.shape[0] * scale), Image.NEAREST) for t in tiles]
  gif[0].save(path_gif, save_all=True, append_images=gif[1:], duration=250,
              loop=0)


def plot_errors(results, path):
  # pylint: disable=g-import-not-at-top
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = [n for n in results["conditions"] if "/" not in n]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key, label in zip(axes, ("shift_error_px", "scale_error_pct",
                                   "rotation_error_deg"),
                            ("shift error (px / frame)", "zoom error (%)",
                             "rotation error (° / frame)")):
    ax.bar(range(len(names)),
           [results["conditions"][n][key] for n in names], color="C0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_title(label, fontsize=9)
    est = results.get(f"estimator/{key.split('_error')[0]}_"
                      f"{key.split('_')[-1]}")
    if est is not None:
      ax.axhline(est, color="C3", ls="--", lw=1, label="estimator error")
      ax.legend(fontsize=7)
  fig.suptitle("LightMotion: realised vs requested camera move per frame")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(results):
  lines = ["| condition | requested (du, dv px, zoom %, rot °) / frame | "
           "realised | realised, all pixels | shift err px | zoom err % | "
           "rot err ° | FID | KID | class acc |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda v: "(" + ", ".join(f"{x:+.2f}" for x in v) + ")"
  for name, r in results["conditions"].items():
    lines.append(
        f"| {name} | {fmt(r['requested_step'])} | {fmt(r['realised_step'])} "
        f"| {fmt(r.get('realised_step_all_pixels', [float('nan')] * 4))} "
        f"| {r['shift_error_px']:.2f} | {r['scale_error_pct']:.2f} | "
        f"{r['rotation_error_deg']:.2f} | {r['fid']:.2f} | {r['kid']:.4f} | "
        f"{r['class_accuracy']:.3f} |")
  return "\n".join(lines)


def run(workdir, num_videos=None, motions=None, ablations=None):
  """The whole evaluation; returns the results dict."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from efficient.data import fashion_mnist
  from efficient.data import pipeline
  from efficient.diffusion import fid
  from efficient.diffusion import training
  from efficient.errors import ConfigError

  workdir = os.path.abspath(workdir)
  config, task, params, builder, _ = training.load_run(workdir)
  if "lightmotion" not in config or task.key != "video":
    raise ConfigError(f"--workdir={workdir}: not a video run with "
                      "config.lightmotion (configs/video.py)")
  settings = config.lightmotion.to_dict()
  settings["ablation_motions"] = settings.get(
      "ablation_motions", ("pan_right", "zoom_out", "roll_ccw"))
  num_videos = num_videos or settings["num_videos"]
  all_motions = settings["motions"]
  motions = motions or list(all_motions)
  unknown = [m for m in motions if m not in all_motions]
  if unknown:
    raise ConfigError(f"--motions: {unknown} not in config.lightmotion."
                      f"motions {sorted(all_motions)}")
  ablations = settings["ablations"] if ablations is None else ablations
  out_dir = os.path.join(workdir, "lightmotion")
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  frames, size = task.shape[0], task.shape[1]
  data_dir = builder.data_dir_root
  smoke = config.data.builder_config == "smoke"

  downsample = task.transform.downsample  # 2 for configs/video.py's size=16.
  results = estimator_check(data_dir, ESTIMATOR_VIDEOS, smoke, downsample,
                            data=config.data.builder_config)
  fmnist = fashion_mnist.FashionMnistDeb(
      config="smoke" if smoke else "full", data_dir=data_dir,
      file_format="array_record")
  if not fmnist.is_prepared():
    fmnist.download_and_prepare()
  classifier, info = fid.load_or_train(
      fmnist, transform=pipeline.ImageToFloat(size, downsample),
      steps=settings.get("classifier_steps", 1500), progress=config.progress)
  real = builder.as_data_source(split=settings["reference_split"])
  count = min(len(real), settings.get("reference_videos", 500))
  real_frames = np.concatenate([task.transform.map(real[i])["video"]
                                for i in range(count)])
  real_logits, real_features = fid.apply_in_batches(classifier, real_frames)
  real_labels = np.repeat([real[i]["label"] for i in range(count)], frames)
  results.update({
      "reference/frames": int(len(real_frames)),
      "reference/class_accuracy": float(
          (real_logits.argmax(-1) == real_labels).mean()),
      "fid_classifier/test_accuracy": info["test_accuracy"],
      "num_videos": num_videos, "settings": settings, "conditions": {}})
  generators = {}
  for name, motion_name, cond in conditions(settings, motions, ablations):
    start = time.time()
    motion = all_motions[motion_name] if motion_name else None
    cache = os.path.join(out_dir, "videos", name.replace("/", "__") + ".npy")
    videos, labels = sample_condition(
        task, params, cond, motion, num_videos=num_videos,
        batch_size=min(settings["batch_size"], num_videos),
        seed=settings["seed"], cache=cache, generators=generators)
    record = {"motion": motion, "settings": {
        k: cond[k] for k in ("fill", "align", "correction", "t0", "t1", "t2")}}
    record.update(motion_scores(videos, motion, frames, size))
    record.update(frame_quality(classifier, videos, labels, real_features))
    record["seconds"] = time.time() - start
    results["conditions"][name] = record
    stem = os.path.join(out_dir, name.replace("/", "__"))
    save_strip_and_gif(videos, stem + ".png", stem + ".gif")
    logging.info("%s: shift err %.2f px, zoom err %.2f %%, rot err %.2f°, "
                 "FID %.2f (%.0f s)", name, record["shift_error_px"],
                 record["scale_error_pct"], record["rotation_error_deg"],
                 record["fid"], record["seconds"])
    if jax.process_index() == 0:  # Partial results survive an interruption.
      with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
  plot_errors(results, os.path.join(out_dir, "motion_errors.png"))
  return results


def main(argv):
  del argv
  from efficient.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    results = run(_WORKDIR.value, _NUM_VIDEOS.value, _MOTIONS.value,
                  _ABLATIONS.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(table(results))
  print(f"estimator on real moving-camera videos: "
        f"{results['estimator/shift_px']:.3f} px, "
        f"{results['estimator/scale_pct']:.3f} %, "
        f"{results['estimator/rotation_deg']:.3f}° per frame step")
  print("their camera moves (true / estimated, the uncontrolled row's "
        "statistic): " + ", ".join(
            f"{results['moving_data/camera_' + k]:.3f} / "
            f"{results['moving_data/estimated_' + k]:.3f} {unit}"
            for k, unit in (("shift_px", "px"), ("scale_pct", "%"),
                            ("rotation_deg", "°"))))


if __name__ == "__main__":
  app.run(main)
