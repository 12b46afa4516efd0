"""The diffusion task (loss, validation grid, sampling, FID/KID) and the
train → sample CLI on small fake Fashion-MNIST files."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from configs import diffusion as diffusion_configs
from efficient import models
from efficient.data import fashion_mnist
from efficient.data import pipeline
from efficient.diffusion import dimr
from efficient.diffusion import fid
from efficient.diffusion import training
from efficient.errors import ConfigError
from efficient.train import sharding
from tests import conftest


def _task(variant="fmnist_dimr"):
  config = diffusion_configs.get_config(f"{variant},smoke")
  kwargs = config.model.to_dict()
  model = models.get_model(kwargs.pop("name"), **kwargs)
  return config, training.DiffusionTask(config, model)


def _batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (n, 32, 32, 1)),
                               jnp.float32),
          "label": jnp.arange(n, dtype=jnp.int32) % 10,
          "weight": jnp.ones((n,), jnp.float32)}


def test_loss_is_the_multiscale_epsilon_error_with_dropped_labels():
  config, task = _task("fmnist_dimr")
  params = task.init_params(jax.random.PRNGKey(0))
  batch, rng = _batch(), jax.random.PRNGKey(5)
  loss, _ = jax.jit(task.loss)(params, batch, rng)
  # The same draws by hand: labels → null w.p. 0.1, n ~ U{1..T}, ε ~ N(0, I).
  drop_rng, step_rng, noise_rng = jax.random.split(rng, 3)
  drop = jax.random.bernoulli(drop_rng, 0.1, (4,))
  labels = jnp.where(drop, 10, batch["label"])
  step = jax.random.randint(step_rng, (4,), 1, 1001)
  noise = jax.random.normal(noise_rng, batch["image"].shape)
  abar = task.schedule.alphas_cumprod[step][:, None, None, None]
  x_n = jnp.sqrt(abar) * batch["image"] + jnp.sqrt(1 - abar) * noise
  low, high = jax.jit(task.model.apply)({"params": params}, x_n, step,
                                        labels)
  k = 32 // low.shape[1]
  pooled = noise.reshape(4, 32 // k, k, 32 // k, k, 1).sum((2, 4)) / k
  want = (0.25 * ((low - pooled)**2).mean((1, 2, 3)) +
          ((high - noise)**2).mean((1, 2, 3))).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert config.diffusion.loss_weights == (0.25, 1.0)


def test_validation_sums_are_deterministic_and_skip_padding():
  _, task = _task("fmnist_dit")
  params = task.init_params(jax.random.PRNGKey(0))
  batch = _batch(8)
  sums = jax.jit(task.sums)
  first = sums(params, batch)
  np.testing.assert_array_equal(first["loss"], sums(params, batch)["loss"])
  assert float(first["count"]) == 8
  padded = dict(batch, weight=batch["weight"].at[4:].set(0.0))
  changed = dict(padded, image=padded["image"].at[4:].set(0.0))
  np.testing.assert_allclose(sums(params, padded)["loss"],
                             sums(params, changed)["loss"], rtol=1e-6)


def test_imagenet_presets_refuse_fashion_mnist_with_a_named_key():
  config = diffusion_configs.get_config("dit_xl2,smoke")
  kwargs = config.model.to_dict()
  model = models.get_model(kwargs.pop("name"), **kwargs)
  with pytest.raises(ConfigError, match="in_channels=4"):
    training.DiffusionTask(config, model)


def test_prediction_setting_is_checked():
  config, _ = _task("fmnist_dit")
  kwargs = config.model.to_dict()
  model = models.get_model(kwargs.pop("name"), **kwargs)
  config.diffusion.prediction = "x0"
  with pytest.raises(ConfigError, match="prediction='x0'"):
    training.DiffusionTask(config, model)
  config, task = _task("fmnist_dimr")  # Multi-scale outputs: ε only.
  task.prediction = "v"
  params = task.init_params(jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="one-output"):
    task.loss(params, _batch(), jax.random.PRNGKey(1))


@pytest.mark.parametrize("prefix,size,dit_steps", [("fmnist", 32, 2000),
                                                  ("fmnist16", 16, 5000)])
def test_compute_budget_sets_matched_training_steps(prefix, size, dit_steps):
  steps = {}
  for variant in ("dit", "dit_tdln", "dimr", "dimr_adaln"):
    config = diffusion_configs.get_config(f"{prefix}_{variant}")
    kwargs = config.model.to_dict()
    assert kwargs["input_size"] == size
    macs = training.forward_macs(models.get_model(kwargs.pop("name"),
                                                  **kwargs))
    steps[variant] = config.total_steps
    compute = 3 * macs * config.batch_size * config.total_steps / 1e12
    assert abs(compute / diffusion_configs.DEFAULT_BUDGET_TMACS[size] - 1
               ) < 1e-3
  assert abs(steps["dit"] - dit_steps) <= 2
  assert steps["dimr"] != steps["dit"]
  _, task = _task(f"{prefix}_dimr")  # Smoke-sized.
  assert isinstance(task.model, dimr.DiMR)
  assert task.transform.downsample == (2 if size == 16 else 1)


def test_generate_is_deterministic_balanced_and_the_same_on_a_mesh():
  _, task = _task("fmnist_dit")
  params = task.init_params(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.01, params)  # Off adaLN-Zero's init.
  kwargs = dict(num_samples=6, batch_size=4, sampler="ddim", num_steps=3,
                guidance=2.0, progress=False)
  images, labels = training.generate(task, params, **kwargs)
  assert images.shape == (6, 32, 32, 1) and np.abs(images).max() <= 1.0
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 5])
  again, _ = training.generate(task, params, **kwargs)
  np.testing.assert_array_equal(images, again)
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 1), ("model", 1)),
                            devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    sharded, _ = training.generate(task, params, mesh=mesh, **kwargs)
  np.testing.assert_allclose(sharded, images, atol=1e-5)
  other, _ = training.generate(task, params, **dict(kwargs, seed=1))
  assert np.abs(other - images).max() > 1e-3
  with pytest.raises(ConfigError, match="sampler"):
    training.make_sampler(task, sampler="euler", num_steps=3, guidance=1.0)


def test_generate_resumes_from_its_cache_and_drops_a_stale_one(tmp_path):
  _, task = _task("fmnist_dit")
  params = jax.tree.map(lambda p: p + 0.01,
                        task.init_params(jax.random.PRNGKey(0)))
  kwargs = dict(num_samples=6, batch_size=4, sampler="ddim", num_steps=2,
                guidance=1.0, progress=False, cache_dir=str(tmp_path))
  images, _ = training.generate(task, params, **kwargs)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "batch_00000.npy", "batch_00001.npy", "meta.json"]
  # A marked batch comes back as saved: the cache is read, not recomputed.
  np.save(tmp_path / "batch_00001.npy", np.full((4, 32, 32, 1), 0.25))
  again, _ = training.generate(task, params, **kwargs)
  np.testing.assert_array_equal(again[:4], images[:4])
  assert (again[4:] == 0.25).all()
  # Other weights: the cache is stale and everything is sampled afresh.
  moved = jax.tree.map(lambda p: p + 0.01, params)
  fresh, _ = training.generate(task, moved, **kwargs)
  assert not (fresh[4:] == 0.25).all()
  assert np.abs(fresh - images).max() > 1e-4


def test_save_grid_puts_one_class_per_row(tmp_path):
  images = np.stack([np.full((32, 32, 1), c / 5 - 1) for c in range(30)])
  labels = np.arange(30) % 3
  path = tmp_path / "grid.png"
  training.save_grid(images, labels, str(path), per_class=10)
  grid = matplotlib.image.imread(path)[..., 0]
  assert grid.shape == (3 * 32, 10 * 32)
  for row in range(3):  # Row r holds images r, r + 3, ... (value c/5 − 1).
    tile = grid[row * 32:(row + 1) * 32, 32:64]
    np.testing.assert_allclose(tile, ((row + 3) / 5) / 2, atol=1 / 255)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(0)
  mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
  var_a, var_b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
  want = ((mu_a - mu_b)**2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b))**2
                                     ).sum()
  got = fid.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b,
                                        np.diag(var_b))
  np.testing.assert_allclose(got, want, rtol=1e-8)
  # A full (rotated) covariance: FID is rotation-invariant.
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  rotated = fid.frechet_distance_from_stats(
      q @ mu_a, q @ np.diag(var_a) @ q.T, q @ mu_b, q @ np.diag(var_b) @ q.T)
  np.testing.assert_allclose(rotated, want, rtol=1e-6)
  same = rng.normal(size=(500, 4))
  assert abs(fid.frechet_distance(same, same)) < 1e-6


def test_kid_is_the_unbiased_cubic_mmd_and_centres_on_zero():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 0.5
  k = lambda x, y: (x @ y.T / 4 + 1)**3
  brute = 0.0
  for i in range(30):
    for j in range(30):
      if i != j:
        brute += (k(a[i:i + 1], a[j:j + 1]) + k(b[i:i + 1], b[j:j + 1])
                  )[0, 0] / (30 * 29)
  brute -= 2 * k(a, b).mean()
  mean, std = fid.kernel_inception_distance(a, b, num_subsets=3,
                                            subset_size=30)
  np.testing.assert_allclose(mean, brute, rtol=1e-10)
  assert std < 1e-12  # Every subset is the whole set.
  x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
  null_mean, null_std = fid.kernel_inception_distance(x, y, num_subsets=20,
                                                      subset_size=500)
  assert abs(null_mean) < 3 * null_std + 1e-3
  shifted, _ = fid.kernel_inception_distance(x, y + 0.3, num_subsets=20,
                                             subset_size=500)
  assert shifted > 10 * max(null_std, 1e-4)


@pytest.fixture(scope="module")
def fashion_dirs(tmp_path_factory):
  """Fake idx files (one bright bar per class) and an empty TFDS dir."""
  idx = conftest.write_fake_fashion(tmp_path_factory.mktemp("fashion_idx"))
  return str(idx), str(tmp_path_factory.mktemp("tfds"))


def test_train_then_sample_cli_writes_scores_and_grids(fashion_dirs, tmp_path):
  idx, tfds_dir = fashion_dirs
  env = dict(FASHION_MNIST_DIR=idx, TFDS_DATA_DIR=tfds_dir,
             JAX_DISABLE_MOST_OPTIMIZATIONS=1)
  # The classifier script first: the training run must reuse its cache.
  script = subprocess.run(
      [sys.executable, "scripts/train_fid_classifier.py", "--config=smoke",
       "--steps=3", "--image_size=16", "--downsample=2",
       f"--data_dir={tfds_dir}"], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1, **env), capture_output=True,
      text=True, timeout=300, check=False)
  assert script.returncode == 0, script.stderr[-2000:]
  info = json.loads(script.stdout[script.stdout.index("{"):])
  assert info["steps"] == 3 and 0.0 <= info["test_accuracy"] <= 1.0
  assert info["checkpoint"].endswith("fid_classifier_16px_ds2.msgpack")
  assert os.path.exists(info["checkpoint"])
  params, cached = fid.load_or_train(
      fashion_mnist.FashionMnistDeb(config="smoke", data_dir=tfds_dir),
      transform=pipeline.ImageToFloat(16, downsample=2))
  assert cached == {k: info[k] for k in cached}
  assert cached["image_size"] == 16
  logits, features = fid.apply_in_batches(params, np.zeros((3, 16, 16, 1)))
  assert logits.shape == (3, 10) and features.shape == (3, fid.FEATURE_DIM)

  workdir = tmp_path / "run"
  result = conftest.run_module(
      "experiments.train",
      "--config=configs/diffusion.py:fmnist16_dit_tdln,smoke",
      f"--workdir={workdir}", "--config.mesh=(('data',2),('fsdp',1),('model',1))",
      devices=2, timeout=600, **env)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  for key in ("validation/loss", "model/gmacs_forward", "train/compute_tmacs",
              "train/examples_per_sec", "fid_classifier/test_accuracy",
              *(f"dpm_solver_pp_2/{k}" for k in (
                  "fid", "kid", "class_accuracy", "hf_spectral_error"))):
    assert np.isfinite(results[key]), key
  assert results["dpm_solver_pp_2/num_samples"] == 16
  grid = matplotlib.image.imread(workdir / "dpm_solver_pp_2_samples.png")
  assert grid.shape[:2] == (10 * 32, 10 * 32)  # 16 px shown at 2×.
  assert results["fid_classifier/test_accuracy"] == info["test_accuracy"]
  assert "Training the FID classifier" not in result.stderr  # Cached.
  metrics = [json.loads(l) for l in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2]

  sampled = conftest.run_module(
      "experiments.sample", f"--workdir={workdir}", "--sampler=ddpm",
      "--num_steps=3", "--num_samples=8", "--batch_size=4", devices=2,
      timeout=600, **env)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert "Training the FID classifier" not in sampled.stderr
  merged = json.loads((workdir / "results.json").read_text())
  assert merged["ddpm_3_n8/num_samples"] == 8
  assert np.isfinite(merged["ddpm_3_n8/fid"])
  assert merged["dpm_solver_pp_2/fid"] == results["dpm_solver_pp_2/fid"]
  assert (workdir / "ddpm_3_n8_samples.png").exists()
  out = tmp_path / "curve.json"
  curve = subprocess.run(
      [sys.executable, "scripts/denoising_curve.py", str(workdir),
       "--num_images=6", "--num_t=3", f"--out={out}",
       f"--plot={tmp_path / 'curve.png'}"], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=2, **env), capture_output=True,
      text=True, timeout=300, check=False)
  assert curve.returncode == 0, curve.stderr[-2000:]
  records = json.loads(out.read_text())
  assert [r["step"] for r in records] == [1, 500, 1000]
  assert all(np.isfinite(r["high_res_mse"]) and np.isfinite(r["x0_mse"])
             for r in records)
  assert (tmp_path / "curve.png").exists()
  texture = subprocess.run(
      [sys.executable, "scripts/sample_texture.py", str(workdir),
       "--prefix=dpm_solver_pp_2", f"--out={tmp_path / 'texture.json'}"],
      cwd=conftest.REPO, env=conftest.subprocess_env(devices=2, **env),
      capture_output=True, text=True, timeout=300, check=False)
  assert texture.returncode == 0, texture.stderr[-2000:]
  rows = json.loads((tmp_path / "texture.json").read_text())
  assert rows["test set"]["hf_error"] == 0.0
  assert rows[str(workdir)]["num_images"] == 16
  assert rows[str(workdir)]["hf_error"] == pytest.approx(  # Same samples.
      results["dpm_solver_pp_2/hf_spectral_error"], rel=1e-9)
  missing = conftest.run_module("experiments.sample",
                                f"--workdir={tmp_path / 'nothing'}",
                                devices=1, **env)
  assert missing.returncode == 2 and "config.json" in missing.stderr


def test_high_frequency_spectral_error_sees_blur_and_noise_not_copies():
  rng = np.random.default_rng(4)
  real = np.clip(rng.normal(size=(64, 32, 32, 1)) * 0.5, -1, 1)
  real[:, 8:24, 8:24] += 0.8  # Edges: broadband power.
  assert fid.high_frequency_spectral_error(real, real.copy()) == 0.0
  blurred = (real + np.roll(real, 1, 1) + np.roll(real, 1, 2) +
             np.roll(real, (1, 1), (1, 2))) / 4
  noisy = real + 0.5 * rng.normal(size=real.shape)
  other = np.clip(rng.normal(size=real.shape) * 0.5, -1, 1)
  other[:, 8:24, 8:24] += 0.8
  same_kind = fid.high_frequency_spectral_error(real, other)
  assert same_kind < 0.05
  assert fid.high_frequency_spectral_error(blurred, real) > 10 * same_kind
  assert fid.high_frequency_spectral_error(noisy, real) > 3 * same_kind
  # A pure cosine at radius r puts its power at r.
  yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  wave = np.cos(2 * np.pi * 5 * xx / 32)[None]
  assert np.argmax(fid.radial_power_spectrum(wave)) == 5


def test_isolated_bright_pixels_and_highpass_energy_find_planted_speckle():
  rng = np.random.default_rng(5)
  real = np.full((20, 16, 16, 1), -1.0)
  real[:, 4:12, 5:11] = rng.uniform(0.2, 0.8, size=(20, 8, 6, 1))  # Garments.
  assert not fid.isolated_bright_pixels(real).any()  # Bright, not isolated.
  speckled = real.copy()
  where = [(0, 1, 1), (3, 14, 2), (3, 0, 15), (7, 14, 14)]  # Corners too.
  for i, y, x in where:
    speckled[i, y, x] = 0.6
  found = fid.isolated_bright_pixels(speckled)
  assert sorted(zip(*np.nonzero(found))) == sorted(where)
  speckled[7, 13, 13] = -0.4  # A neighbour above `dark`: no longer isolated.
  assert fid.isolated_bright_pixels(speckled).sum() == 3
  fg, bg = fid.highpass_energy(real)
  assert fg > 0.0 and bg > 0.0  # Edges: black pixels beside garments.
  grainy = real + 0.05 * rng.normal(size=real.shape) * (real > -0.8)
  assert fid.highpass_energy(grainy)[0] > fg
  assert fid.highpass_energy(speckled)[1] > bg
