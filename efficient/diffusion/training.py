"""The diffusion task of the trainer, and sample-based evaluation.

`DiffusionTask` plugs class-conditional DDPM training into
`efficient.train.trainer.train_and_evaluate` (`config.task = "diffusion"`):

  * batch: images `[b, size, size, c]` in [−1, 1] and labels;
  * loss: L_simple (DDPM Eq. 14), labels dropped to the null class with
    probability `config.diffusion.label_dropout` (classifier-free guidance
    training); a multi-branch model (DiMR) gets the multi-scale loss with
    `config.diffusion.loss_weights` (DiMR §3.2: ε sum-pooled per branch);
  * validation: the same loss of the EMA weights on a fixed grid — the b
    examples of a batch get steps evenly spaced over 1..T and fixed noise —
    so the number is deterministic and comparable across runs;
  * final results: `evaluate_samples` with `config.sample`, i.e. FID / KID /
    class accuracy of conditional samples in the features of the cached
    Fashion-MNIST classifier and the high-frequency spectral error
    (`efficient.diffusion.fid`), a sample-grid PNG, plus forward GMACs and
    training compute.

`experiments/sample.py` calls `evaluate_samples` on a finished run with any
sampler (e.g. DDPM 250 steps against DPM-Solver++ 20).
"""
import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import tqdm

from efficient.data import pipeline
from efficient.diffusion import dimr
from efficient.diffusion import dit
from efficient.diffusion import fid
from efficient.diffusion import samplers
from efficient.diffusion import schedules
from efficient.diffusion import video_dit
from efficient.errors import ConfigError
from efficient.train import sharding

matplotlib.use("Agg")
SAMPLERS = ("dpm_solver_pp", "ddim", "ddpm")
# What the network outputs: ε (DDPM, DiT, DiMR) or v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x₀
# (Salimans & Ho, 2022), config.diffusion.prediction.
PREDICTIONS = ("epsilon", "v")


def last_branch(outputs):
  """DiMR returns one prediction per branch (low → high); DiT one array."""
  return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


def forward_macs(model):
  if isinstance(model, dimr.DiMR):
    return dimr.forward_macs(model)
  if isinstance(model, video_dit.VideoDiT):
    return video_dit.forward_macs(model)
  return dit.forward_macs(model)


def denoising_losses(outputs, noise, weights):
  """Per-example loss [b]: mean squared ε error, or DiMR's multi-scale sum."""
  if isinstance(outputs, (list, tuple)):
    return dimr.multiscale_loss(outputs, noise, weights)
  return jnp.mean((outputs - noise)**2, axis=tuple(range(1, noise.ndim)))


class DiffusionTask:
  """Class-conditional ε-prediction on images or, when `config.model` has
  `num_frames`, on videos `[F, H, W, C]` (batch key "video"; the trainer's
  task API)."""

  def __init__(self, config, model):
    self.model = model
    d = config.diffusion
    self.schedule = schedules.Schedule.create(d.betas, d.num_steps)
    self.size = config.model.input_size
    self.channels = config.model.in_channels
    self.null_class = config.model.num_classes
    self.label_dropout = d.label_dropout
    self.loss_weights = tuple(d.get("loss_weights", (1.0,)))
    self.prediction = d.get("prediction", "epsilon")
    if self.prediction not in PREDICTIONS:
      raise ConfigError(f"config.diffusion.prediction={self.prediction!r}: "
                        f"one of {PREDICTIONS}")
    self.seed = config.seed
    frames = config.model.get("num_frames")
    self.key = "video" if frames else "image"
    self.shape = ((frames,) if frames else ()) + (self.size, self.size,
                                                  self.channels)
    downsample = config.data.get("downsample", 1)
    self.transform = (pipeline.VideoToFloat(downsample) if frames else
                      pipeline.ImageToFloat(self.size, downsample))
    if config.data.name == "fashion_mnist" and self.channels != 1:
      raise ConfigError(
          f"config.model.in_channels={self.channels}, but config.data "
          "(fashion_mnist) has 1 channel; the ImageNet-latent presets have "
          "no offline data (scripts/count_params.py reads them)")

  def batch_spec(self, batch_size):
    return {self.key: ((batch_size,) + self.shape, jnp.float32),
            "label": ((batch_size,), jnp.int32)}

  def init_params(self, rng):
    x = jnp.zeros((1,) + self.shape)
    ones = jnp.ones((1,), jnp.int32)
    return self.model.init(rng, x, ones, ones)["params"]

  def losses(self, params, x0, labels, step, noise):
    """Per-example training loss [b] at the given steps and noise."""
    x_n = self.schedule.add_noise(x0, noise, step)
    outputs = self.model.apply({"params": params}, x_n, step, labels)
    if self.prediction == "epsilon":
      return denoising_losses(outputs, noise, self.loss_weights)
    if isinstance(outputs, (list, tuple)):
      raise ConfigError("config.diffusion.prediction='v' needs a one-output "
                        "model (DiMR's multi-scale loss is defined on ε)")
    return denoising_losses(outputs, self.schedule.velocity(x0, noise, step),
                            self.loss_weights)

  def epsilon(self, params, x_n, step, labels):
    """ε̂(x_n, n, y) of the model, whatever it predicts (the last branch of
    a multi-output model): what the samplers and LightMotion call."""
    out = last_branch(self.model.apply({"params": params}, x_n, step, labels))
    if self.prediction == "v":
      return self.schedule.epsilon_from_velocity(out, x_n, step)
    return out

  def loss(self, params, batch, rng):
    drop_rng, step_rng, noise_rng = jax.random.split(rng, 3)
    x0 = batch[self.key]
    labels = schedules.drop_labels(drop_rng, batch["label"], self.null_class,
                                   self.label_dropout)
    step = jax.random.randint(step_rng, x0.shape[:1], 1,
                              self.schedule.num_steps + 1)
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    return self.losses(params, x0, labels, step, noise).mean(), {}

  def sums(self, params, batch):
    x0, weight = batch[self.key], batch["weight"]
    b = x0.shape[0]
    step = jnp.round(jnp.linspace(1, self.schedule.num_steps, b)).astype(
        jnp.int32)
    noise = jax.random.normal(jax.random.PRNGKey(self.seed), x0.shape)
    losses = self.losses(params, x0, batch["label"], step, noise)
    return {"loss": (losses * weight).sum(), "count": weight.sum()}

  def final_results(self, params, *, builder, mesh, workdir, config,
                    **unused):
    del unused
    out = {"model/gmacs_forward": forward_macs(self.model) / 1e9}
    # Forward + backward ≈ 3 forwards per training image.
    out["train/compute_tmacs"] = (3 * forward_macs(self.model) *
                                  config.batch_size * config.total_steps /
                                  1e12)
    if config.sample.num_samples and self.key == "video":
      videos, labels = generate(self, params, mesh=mesh,
                                progress=config.get("progress", True),
                                **config.sample)
      if workdir is not None and jax.process_index() == 0:
        save_video_strip(videos, labels, os.path.join(workdir,
                                                      "samples.png"))
    elif config.sample.num_samples:
      out.update(evaluate_samples(self, params, builder, mesh=mesh,
                                  workdir=workdir, **config.sample))
    return out


def load_run(workdir):
  """(config, task, params, builder, mesh) of the diffusion run in workdir.

  params are the latest checkpoint's EMA weights (raw weights if the run
  had no EMA), placed with the run's shardings on its mesh.
  """
  # pylint: disable=g-import-not-at-top
  import flax.linen as nn
  import ml_collections
  from efficient import models
  from efficient.train import checkpoint as checkpoint_lib

  workdir = os.path.abspath(workdir)  # (orbax wants absolute paths)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ConfigError(f"--workdir={workdir}: no config.json (not a run)")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.get("task") != "diffusion":
    raise ConfigError(f"--workdir={workdir} is not a diffusion run")
  mesh = sharding.make_mesh(tuple(map(tuple, config.mesh)))
  builder = pipeline.load_builder(config.data)
  kwargs = dict(config.model.to_dict())
  model = models.get_model(kwargs.pop("name"), **kwargs)
  task = DiffusionTask(config, model)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    boxed = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        sharding.unbox(boxed), sharding.state_shardings(boxed, mesh))
  key = "ema_params" if config.ema_decay > 0 else "params"
  try:
    params = checkpoint_lib.load_weights(workdir, {key: abstract})[key]
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  return config, task, params, builder, mesh


def make_sampler(task, *, sampler, num_steps, guidance, guidance_power=0.0):
  """A jit-able `(params, noise, labels, rng) -> x₀` for `task.model`.

  `guidance` is the classifier-free guidance weight w (1: none); with
  `guidance_power` p > 0 it is DiMR's power-cosine ramp up to w.
  """
  if sampler not in SAMPLERS:
    raise ConfigError(f"config.sample.sampler={sampler!r}: one of {SAMPLERS}")
  scale = (samplers.power_cosine_scale(guidance, guidance_power,
                                       task.schedule.num_steps)
           if guidance_power > 0 else guidance)

  def run(params, noise, labels, rng):
    def eps_fn(x, step, y):
      return task.epsilon(params, x, step, y)

    guided = samplers.classifier_free_guidance(eps_fn, task.null_class, scale)
    if sampler == "dpm_solver_pp":
      return samplers.dpm_solver_pp_2m(guided, task.schedule, noise,
                                       num_steps, labels)
    if sampler == "ddim":
      return samplers.ddim_sample(guided, task.schedule, noise, num_steps,
                                  labels)
    return samplers.ddpm_sample(guided, task.schedule, noise, rng, num_steps,
                                labels)

  return run


def _fingerprint(params):
  """A number that changes when the weights do (guards the sample cache)."""
  return repr(float(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(params))))


def generate(task, params, *, num_samples, batch_size, seed=0, mesh=None,
             progress=True, cache_dir=None, **sampler_kwargs):
  """`num_samples` images in [−1, 1] (numpy) and their labels; class i % C.

  Batches run through one compiled sampler (the last batch padded), their
  noise drawn from `fold_in(PRNGKey(seed), batch index)`. With `cache_dir`,
  each finished batch is saved there (`batch_<i>.npy` + `meta.json`), and a
  later call with the same weights and settings starts after the last saved
  batch: a sampling job cut short resumes instead of starting over.
  """
  labels = np.arange(num_samples, dtype=np.int32) % task.null_class
  if mesh is not None:  # Every batch splits evenly over the batch shards.
    shards = sharding.num_batch_shards(mesh)
    batch_size = -(-batch_size // shards) * shards
  run = make_sampler(task, **sampler_kwargs)
  compiled = jax.jit(lambda *args: jnp.clip(run(*args), -1.0, 1.0))
  shape = (batch_size,) + task.shape
  meta = dict(sampler_kwargs, num_samples=num_samples, batch_size=batch_size,
              seed=seed, weights=_fingerprint(params))
  if cache_dir is not None:
    os.makedirs(cache_dir, exist_ok=True)
    meta_path = os.path.join(cache_dir, "meta.json")
    stale = True
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        stale = json.load(f) != json.loads(json.dumps(meta))
    if stale and jax.process_index() == 0:
      for name in os.listdir(cache_dir):
        os.remove(os.path.join(cache_dir, name))
      with open(meta_path, "w") as f:
        json.dump(meta, f)
  images = []
  num_batches = -(-num_samples // batch_size)
  for b in tqdm.trange(num_batches, desc="sample", disable=not progress,
                       mininterval=2.0):
    cached = cache_dir and os.path.join(cache_dir, f"batch_{b:05d}.npy")
    if cached and os.path.exists(cached):
      images.append(np.load(cached))
      continue
    key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
    noise_key, step_key = jax.random.split(key)
    y = np.resize(labels[b * batch_size:(b + 1) * batch_size], batch_size)
    noise = np.asarray(jax.random.normal(noise_key, shape))
    if mesh is not None:  # The same global arrays on every process.
      noise, y = jax.device_put((noise, y), sharding.batch_sharding(mesh))
    images.append(np.asarray(compiled(params, noise, y, step_key)))
    if cached and jax.process_index() == 0:
      np.save(cached + ".tmp.npy", images[-1])
      os.replace(cached + ".tmp.npy", cached)
  return np.concatenate(images)[:num_samples], labels


def save_grid(images, labels, path, per_class=10):
  """One row per class, `per_class` samples each, as a gray PNG (images
  under 32 px are enlarged by pixel repetition to 32 px, to stay legible)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  classes = np.unique(labels)
  rows = []
  for c in classes:
    picked = images[labels == c][:per_class]
    if len(picked) < per_class:
      picked = np.concatenate([picked, np.full(
          (per_class - len(picked),) + picked.shape[1:], -1.0)])
    rows.append(np.concatenate(list(picked[..., 0]), axis=1))
  grid = np.concatenate(rows, axis=0)
  scale = max(1, 32 // images.shape[1])
  grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  plt.imsave(path, (grid + 1) / 2, cmap="gray", vmin=0.0, vmax=1.0)


def save_video_strip(videos, labels, path, rows=None):
  """One video per row (frames left to right), labelled by class, as PNG."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = rows or len(videos)
  strip = np.concatenate([np.concatenate(list(v[..., 0]), axis=1)
                          for v in videos[:rows]], axis=0)
  height = videos.shape[2]
  fig, ax = plt.subplots(figsize=(strip.shape[1] / 24, strip.shape[0] / 24))
  ax.imshow((strip + 1) / 2, cmap="gray", vmin=0.0, vmax=1.0)
  ax.set_yticks([height * (i + 0.5) for i in range(rows)])
  ax.set_yticklabels([str(int(y)) for y in labels[:rows]], fontsize=6)
  ax.set_xticks([])
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def evaluate_samples(task, params, builder, *, num_samples, batch_size,
                     sampler, num_steps, guidance, guidance_power=0.0,
                     seed=0, mesh=None, workdir=None, split="test",
                     classifier_steps=1500, progress=True, prefix=None):
  """FID / KID / class accuracy of `num_samples` samples against `split`.

  Keys are prefixed `<prefix>/`, by default `<sampler>_<num_steps>`, so
  results of several samplers can share one results.json; a
  `<prefix>_samples.png` grid goes to workdir, and the samples themselves
  to `<workdir>/samples/<prefix>/` (which also lets an interrupted
  evaluation resume).
  """
  prefix = prefix or f"{sampler}_{num_steps}"
  classifier, info = fid.load_or_train(builder, transform=task.transform,
                                       steps=classifier_steps,
                                       progress=progress)
  start = time.time()
  cache_dir = workdir and os.path.join(workdir, "samples", prefix)
  images, labels = generate(task, params, num_samples=num_samples,
                            batch_size=batch_size, seed=seed, mesh=mesh,
                            progress=progress, cache_dir=cache_dir,
                            sampler=sampler,
                            num_steps=num_steps, guidance=guidance,
                            guidance_power=guidance_power)
  sample_time = time.time() - start
  real, _ = fid.load_images(builder.as_data_source(split=split),
                            task.transform)
  logits, features = fid.apply_in_batches(classifier, images)
  _, real_features = fid.apply_in_batches(classifier, real)
  kid, kid_std = fid.kernel_inception_distance(features, real_features)
  out = {f"{prefix}/fid": fid.frechet_distance(features, real_features),
         f"{prefix}/kid": kid, f"{prefix}/kid_std": kid_std,
         f"{prefix}/class_accuracy": float((logits.argmax(-1) ==
                                            labels).mean()),
         f"{prefix}/hf_spectral_error": fid.high_frequency_spectral_error(
             images, real),
         f"{prefix}/num_samples": int(num_samples),
         f"{prefix}/guidance": float(guidance),
         f"{prefix}/sample_time_sec": sample_time,
         f"{prefix}/reference": f"{split} ({len(real)} images)",
         "fid_classifier/test_accuracy": info["test_accuracy"]}
  if workdir is not None and jax.process_index() == 0:
    path = os.path.join(workdir, f"{prefix}_samples.png")
    save_grid(images, labels, path)
    logging.info("Sample grid: %s", path)
  return out
