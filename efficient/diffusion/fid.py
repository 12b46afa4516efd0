"""FID and KID in the feature space of a small Fashion-MNIST classifier.

Inception features (the usual FID) need downloaded ImageNet weights and say
little about 32×32 gray clothing; following the common practice for small
datasets (and reference/diffusion.md §4.2) the features here are the
penultimate layer (128-d, after ReLU) of a small CNN trained on the real
training split, one per image transform (32×32 padded, or 16×16
downsampled). Its checkpoint is cached in the dataset's directory
(`<tfds data_dir>/fashion_mnist_deb/<config>/<version>/fid_classifier.msgpack`,
`fid_classifier_16px.msgpack` for 16×16) by `scripts/train_fid_classifier.py`,
or on first use, with its test accuracy beside it (`.json`). Numbers are
comparable only between runs that use the same classifier file.

  * FID (Heusel et al., 2017): ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}).
    Biased upwards at small n; compare only at equal sample counts.
  * KID (Bińkowski et al., 2018): the unbiased MMD² with the cubic
    polynomial kernel k(x, y) = (xᵀy/d + 1)³, averaged over random subsets
    (100 subsets of ≤ 1000, torch-fidelity's defaults); mean and std.
  * Class accuracy of conditional samples: how often the classifier assigns
    a sample to the class it was generated for.
  * High-frequency spectral error (a distortion proxy, reference/
    diffusion.md §4.2): the mean |log₁₀ P_gen(r) − log₁₀ P_real(r)| of the
    radially averaged power spectra over the upper half of the radii up to
    Nyquist — blur lowers P at high r, patch artefacts and noise raise it.
"""
import json
import os
import time

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
import tqdm

from efficient.data import pipeline

FEATURE_DIM = 128
CHECKPOINT = "fid_classifier.msgpack"


class FeatureNet(nn.Module):
  """Two conv-conv-pool stages and a 128-d hidden layer: [b, s, s, 1] in
  [−1, 1] (s = 32 or 16) → (logits [b, 10], features [b, 128])."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for width in (32, 64):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = nn.relu(nn.Dense(FEATURE_DIM)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(features), features


def load_images(source, transform, limit=None):
  """(images, labels) of the first `limit` examples of a split, transformed."""
  n = len(source) if limit is None else min(limit, len(source))
  examples = [transform.map(source[i]) for i in range(n)]
  return (np.stack([e["image"] for e in examples]),
          np.array([e["label"] for e in examples], np.int32))


def train_feature_net(builder, *, steps=1500, batch_size=128, seed=0,
                      transform=None, progress=True):
  """Trains `FeatureNet` on the train split; returns (params, test accuracy).

  Adam 1e-3 with cosine decay, light augmentation (random 2-pixel shifts)
  so the features do not key on exact pixel positions (1 pixel at 16×16).
  """
  transform = transform or pipeline.ImageToFloat(32)
  shift = max(1, transform.size // 16)
  images, labels = load_images(builder.as_data_source(split="train"), transform)
  model = FeatureNet()
  params = model.init(jax.random.PRNGKey(seed), images[:1])["params"]
  tx = optax.adam(optax.cosine_decay_schedule(1e-3, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  for _ in tqdm.trange(steps, desc="fid classifier", disable=not progress,
                       mininterval=2.0):
    idx = rng.integers(0, len(images), batch_size)
    dy, dx = rng.integers(-shift, shift + 1, 2)
    x = np.roll(images[idx], (dy, dx), axis=(1, 2))
    params, opt_state, _ = step(params, opt_state, x, labels[idx])
  test_images, test_labels = load_images(builder.as_data_source(split="test"),
                                     transform)
  logits, _ = apply_in_batches(params, test_images)
  accuracy = float((logits.argmax(-1) == test_labels).mean())
  return params, accuracy


def apply_in_batches(params, images, batch_size=500):
  """(logits, features) as numpy for images [n, s, s, 1] in [−1, 1]."""
  logits, features = [], []
  for start in range(0, len(images), batch_size):
    chunk = np.asarray(images[start:start + batch_size], np.float32)
    pad = batch_size - len(chunk)  # One compiled shape.
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                            np.float32)])
    out_logits, out_features = _apply(params, chunk)
    logits.append(np.asarray(out_logits)[:batch_size - pad])
    features.append(np.asarray(out_features)[:batch_size - pad])
  return np.concatenate(logits), np.concatenate(features)


_apply = jax.jit(lambda p, x: FeatureNet().apply({"params": p}, x))


def checkpoint_name(transform):
  """The classifier file for images made by `transform` (an ImageToFloat)."""
  if (transform.size, transform.downsample) == (32, 1):
    return CHECKPOINT  # The original name, kept for cached files.
  return (f"fid_classifier_{transform.size}px"
          f"{'' if transform.downsample == 1 else f'_ds{transform.downsample}'}"
          ".msgpack")


def load_or_train(builder, *, transform=None, steps=1500, progress=True):
  """The cached classifier's params for this builder's data as `transform`
  (default: 32×32 padded) makes it (trained and saved on first use); logs
  its test accuracy."""
  transform = transform or pipeline.ImageToFloat(32)
  path = os.path.join(builder.data_dir, checkpoint_name(transform))
  info_path = path.replace(".msgpack", ".json")
  size = transform.size
  template = FeatureNet().init(jax.random.PRNGKey(0),
                               jnp.zeros((1, size, size, 1)))["params"]
  if os.path.exists(path):
    with open(path, "rb") as f:
      params = flax.serialization.from_bytes(template, f.read())
    with open(info_path) as f:
      info = json.load(f)
    return params, info
  logging.info("Training the FID classifier (%d steps); cached in %s.", steps,
               path)
  start = time.time()
  params, accuracy = train_feature_net(builder, steps=steps,
                                       transform=transform, progress=progress)
  info = {"test_accuracy": accuracy, "steps": steps, "image_size": size,
          "downsample": transform.downsample,
          "train_time_sec": time.time() - start}
  if jax.process_index() == 0:
    with open(path + ".tmp", "wb") as f:
      f.write(flax.serialization.to_bytes(params))
    os.replace(path + ".tmp", path)
    with open(info_path, "w") as f:
      json.dump(info, f, indent=2)
  logging.info("FID classifier test accuracy %.4f.", accuracy)
  return params, info


def frechet_distance(features_a, features_b):
  """FID between two feature sets [n, d] (float64 statistics)."""
  a, b = (np.asarray(f, np.float64) for f in (features_a, features_b))
  return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False),
                                     b.mean(0), np.cov(b, rowvar=False))


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b):
  """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})."""
  covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
  if not np.isfinite(covmean).all():  # Singular product: regularise.
    eye = np.eye(len(cov_a)) * 1e-6
    covmean = scipy.linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
  covmean = np.real(covmean)
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) -
               2 * np.trace(covmean))


def _mmd2_unbiased(x, y):
  d = x.shape[1]
  kxx = (x @ x.T / d + 1)**3
  kyy = (y @ y.T / d + 1)**3
  kxy = (x @ y.T / d + 1)**3
  m, n = len(x), len(y)
  return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) +
          (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_inception_distance(features_a, features_b, *, num_subsets=100,
                              subset_size=1000, seed=0):
  """(mean, std) of the unbiased cubic-kernel MMD² over random subsets."""
  a, b = (np.asarray(f, np.float64) for f in (features_a, features_b))
  size = min(subset_size, len(a), len(b))
  rng = np.random.default_rng(seed)
  values = [_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)],
                           b[rng.choice(len(b), size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))


def radial_power_spectrum(images):
  """Mean power |FFT|² of [n, h, w(, 1)] images (each minus its mean) by
  integer radius r = 0..min(h, w)//2; returns [min(h, w)//2 + 1]."""
  x = np.asarray(images, np.float64)
  if x.ndim == 4:
    x = x[..., 0]
  x = x - x.mean(axis=(1, 2), keepdims=True)
  power = (np.abs(np.fft.fft2(x))**2).mean(0)
  h, w = power.shape
  fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w,
                       indexing="ij")
  radius = np.round(np.sqrt(fy**2 + fx**2)).astype(int)
  top = min(h, w) // 2
  return np.array([power[radius == r].mean() for r in range(top + 1)])


def high_frequency_log_ratio(images_a, images_b):
  """log₁₀(power_a / power_b) at radii top/2 + 1 .. top (top = Nyquist):
  > 0 where `images_a` have more fine detail (or grain) than `images_b`."""
  pa, pb = radial_power_spectrum(images_a), radial_power_spectrum(images_b)
  top = len(pa) - 1
  band = slice(top // 2 + 1, top + 1)
  return np.log10(pa[band]) - np.log10(pb[band])


def high_frequency_spectral_error(images_a, images_b):
  """Mean |Δ log₁₀ power| over radii top/2 + 1 .. top (top = Nyquist)."""
  return float(np.mean(np.abs(high_frequency_log_ratio(images_a, images_b))))


def _neighbourhood(images, pad_value=None):
  """[8 or 9, n, h, w]: each pixel's 3×3 neighbours (the centre included
  when `pad_value` is None, where the border repeats the edge)."""
  x = np.asarray(images, np.float64)
  x = x[..., 0] if x.ndim == 4 else x
  _, h, w = x.shape
  if pad_value is None:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  else:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=pad_value)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if (dy, dx) != (0, 0)]
  return x, np.stack([p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                      for dy, dx in offsets])


def isolated_bright_pixels(images, bright=0.0, dark=-0.5):
  """[n, h, w] bool: pixels (in [−1, 1]) above `bright` whose 8 neighbours
  are all below `dark` (outside the image counts as black) — one-pixel
  speckle on a dark background, which Fashion-MNIST itself almost never
  has (0.1% of its 16×16 test images)."""
  x, neighbours = _neighbourhood(images, pad_value=-1.0)
  return (x > bright) & (neighbours.max(0) < dark)


def highpass_energy(images, foreground=-0.8):
  """(foreground, background) mean of (x − its 3×3 box mean)² over pixels
  above / below `foreground`: where a sample's grain sits."""
  x, neighbours = _neighbourhood(images)
  energy = (x - neighbours.mean(0))**2
  fg = x > foreground
  return float(energy[fg].mean()), float(energy[~fg].mean())

