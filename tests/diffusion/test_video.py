"""Video diffusion: the data builder, the task on videos, and the train →
LightMotion CLI on small fake Fashion-MNIST files."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import video as video_configs
from efficient import models
from efficient.data import fmnist_video
from efficient.diffusion import lightmotion
from efficient.diffusion import training
from tests import conftest


def test_render_static_and_moving_videos():
  rng = np.random.default_rng(0)
  item = np.zeros((28, 28), np.uint8)
  item[4:24, 8:20] = 255
  video, mask, camera = fmnist_video.render(item, rng, moving_camera=False)
  assert video.shape == (8, 32, 32, 1) and video.dtype == np.uint8
  np.testing.assert_array_equal(camera, 0.0)
  # The object is bright and masked; the background outside it is still.
  assert video[..., 0][mask.astype(bool)].mean() > 200
  still = ~mask.any(axis=0)
  np.testing.assert_array_equal(video[0, ..., 0][still],
                                video[-1, ..., 0][still])
  video, mask, camera = fmnist_video.render(item, np.random.default_rng(3),
                                            moving_camera=True)
  assert np.abs(camera).sum() > 0
  assert (video[0] != video[-1]).mean() > 0.3


def test_bold_backgrounds_have_the_configured_contrast_and_scale():
  configs = {c.name: c for c in fmnist_video.FmnistVideo.BUILDER_CONFIGS}
  item = np.zeros((28, 28), np.uint8)  # No object: background only.
  stats = {}
  for name in ("static", "static_bold"):
    c = configs[name]
    videos = [fmnist_video.render(item, np.random.default_rng(i), False,
                                  c.background_blur, c.background_contrast)[0]
              for i in range(8)]
    frames = np.stack([v[0, ..., 0] for v in videos]).astype(np.float64) / 255
    # Contrast: pixel std per frame; scale: neighbour correlation.
    stats[name] = (frames.std(axis=(1, 2)).mean(),
                   np.mean([np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1]
                            for f in frames]))
  assert 0.05 < stats["static"][0] < 0.15 < 0.2 < stats["static_bold"][0] < 0.42
  assert stats["static_bold"][1] > stats["static"][1]


def test_video_task_loss_is_the_v_error_over_all_frames():
  """The video config's v-prediction (ε-prediction's loss is tested on
  images in test_training.py; one compile of the video model is enough)."""
  config = video_configs.get_config("static,smoke")
  assert config.diffusion.prediction == "v"
  kwargs = config.model.to_dict()
  model = models.get_model(kwargs.pop("name"), **kwargs)
  task = training.DiffusionTask(config, model)
  assert task.key == "video" and task.shape == (8, 32, 32, 1)
  params = task.init_params(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.01, params)  # Non-zero outputs.
  rng = np.random.default_rng(0)
  batch = {"video": jnp.asarray(rng.uniform(-1, 1, (2, 8, 32, 32, 1)),
                                jnp.float32),
           "label": jnp.array([1, 2]), "weight": jnp.ones((2,))}
  key = jax.random.PRNGKey(3)
  loss, _ = jax.jit(task.loss)(params, batch, key)
  drop_rng, step_rng, noise_rng = jax.random.split(key, 3)
  labels = jnp.where(jax.random.bernoulli(drop_rng, 0.1, (2,)), 10,
                     batch["label"])
  step = jax.random.randint(step_rng, (2,), 1, 1001)
  noise = jax.random.normal(noise_rng, batch["video"].shape)
  x_n = task.schedule.add_noise(batch["video"], noise, step)
  out = jax.jit(model.apply)({"params": params}, x_n, step, labels)
  abar = task.schedule.alphas_cumprod[step][:, None, None, None, None]
  v = jnp.sqrt(abar) * noise - jnp.sqrt(1 - abar) * batch["video"]
  np.testing.assert_allclose(loss, jnp.mean((out - v)**2), rtol=1e-5)
  # What the samplers get: ε̂ = sqrt(ᾱ) v̂ + sqrt(1 − ᾱ) x_n.
  eps = task.epsilon(params, x_n, step, labels)
  np.testing.assert_allclose(
      eps, jnp.sqrt(abar) * out + jnp.sqrt(1 - abar) * x_n, rtol=1e-5,
      atol=1e-6)


def test_size_16_keeps_the_token_grid_and_downsamples_the_data():
  config = video_configs.get_config("static,size=16")
  assert (config.model.input_size, config.model.patch_size,
          config.data.downsample) == (16, 2, 2)
  base = video_configs.get_config("static")
  assert (base.model.input_size, base.model.patch_size,
          base.data.downsample) == (32, 4, 1)
  kwargs = config.model.to_dict()
  task = training.DiffusionTask(config, models.get_model(kwargs.pop("name"),
                                                         **kwargs))
  assert task.shape == (8, 16, 16, 1) and task.transform.downsample == 2
  with pytest.raises(ValueError, match="size"):
    video_configs.get_config("static,size=24")


def test_train_then_lightmotion_cli_runs_every_motion(tmp_path):
  """At size=16 (2×2-averaged frames, patch 2), which also runs the
  downsampling in training, the scripts and the evaluation."""
  idx = tmp_path / "idx"
  idx.mkdir()
  conftest.write_fake_fashion(idx, num_test=40)
  env = dict(FASHION_MNIST_DIR=idx, TFDS_DATA_DIR=tmp_path / "tfds",
             JAX_DISABLE_MOST_OPTIMIZATIONS=1)
  workdir = tmp_path / "run"
  result = conftest.run_module(
      "experiments.train", "--config=configs/video.py:static,smoke,size=16",
      f"--workdir={workdir}", devices=1, timeout=600, **env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "samples.png").exists()
  curve = subprocess.run(  # The denoising curve reads video runs too.
      [sys.executable, "scripts/denoising_curve.py", str(workdir),
       "--num_images=2", "--num_t=2", "--batch_size=2"], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1, **env), capture_output=True,
      text=True, timeout=300, check=False)
  assert curve.returncode == 0, curve.stderr[-2000:]
  assert "| 1000 |" in curve.stdout
  check = subprocess.run(  # ... and so does the SDEdit check.
      [sys.executable, "scripts/sdedit_check.py", str(workdir),
       f"--out={tmp_path / 'sdedit.png'}", "--starts=300,1000",
       "--num_examples=2", "--num_steps=3", "--ddpm_steps=3"],
      cwd=conftest.REPO, env=conftest.subprocess_env(devices=1, **env),
      capture_output=True, text=True, timeout=300, check=False)
  assert check.returncode == 0, check.stderr[-2000:]
  assert "DDIM from n = 300: MSE" in check.stdout
  picture = np.asarray(Image.open(tmp_path / "sdedit.png"))
  assert picture.shape[:2] == (4 * 16 * 4, 2 * 16 * 4)  # 4 rows, 2 columns.
  trace = subprocess.run(  # ... and the trace of x̂₀'s motion.
      [sys.executable, "scripts/lightmotion_trace.py", str(workdir),
       f"--out={tmp_path / 'trace.png'}", "--t0s=600,300", "--num_videos=2",
       f"--json={tmp_path / 'trace.json'}"],
      cwd=conftest.REPO, env=conftest.subprocess_env(devices=1, **env),
      capture_output=True, text=True, timeout=300, check=False)
  assert trace.returncode == 0, trace.stderr[-2000:]
  traced = json.loads((tmp_path / "trace.json").read_text())
  curves = traced["curves"]
  assert np.isfinite(traced["uniform_control"]["300"]["fraction"])
  assert [r["step"] for r in curves["600"]][:2] == [600, 600]
  assert all(np.isfinite(r["background"]) for r in curves["300"])
  assert (tmp_path / "trace.png").exists() and (
      tmp_path / "trace_x0.png").exists()
  result = conftest.run_module(
      "experiments.lightmotion", f"--workdir={workdir}",
      "--ablations=no_mask", devices=1, timeout=600, **env)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads((workdir / "lightmotion" / "results.json").read_text())
  motions = list(video_configs.MOTIONS)
  assert sorted(out["conditions"]) == sorted(
      ["uncontrolled", *motions, "pan_right/no_mask", "zoom_out/no_mask",
       "roll_ccw/no_mask"])
  for name, record in out["conditions"].items():
    for key in ("shift_error_px", "scale_error_pct", "rotation_error_deg",
                "fid", "kid", "class_accuracy"):
      assert np.isfinite(record[key]), (name, key)
    assert np.isfinite(record["realised_step_all_pixels"]).all(), name
    assert (workdir / "lightmotion" /
            (name.replace("/", "__") + ".gif")).exists()
  # The requested step is the configured motion's, in screen units.
  path = lightmotion.camera_path(lightmotion.Motion(*video_configs.MOTIONS[
      "pan_right"]), 8, 16, 16)
  np.testing.assert_allclose(out["conditions"]["pan_right"]["requested_step"]
                             [0], path[1, 0, 2], rtol=1e-6)
  assert out["estimator/num_videos"] == 8
  assert out["estimator/shift_px"] < 0.5
  # The moving data's own camera moves, true and as the estimator sees them.
  assert out["moving_data/camera_shift_px"] > 0
  assert abs(out["moving_data/estimated_shift_px"] -
             out["moving_data/camera_shift_px"]) <= out["estimator/shift_px"]
  assert (workdir / "lightmotion" / "motion_errors.png").exists()
  assert "| pan_zoom_roll |" in result.stdout


def test_count_params_counts_the_video_model_it_would_train():
  config = video_configs.get_config("static,size=16,smoke")
  result = subprocess.run(
      [sys.executable, "scripts/count_params.py",
       "--config=configs/video.py:static,size=16,smoke"], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout)
  kwargs = dict(config.model)
  model = models.get_model(kwargs.pop("name"), **kwargs)
  video = jnp.zeros((1, config.model.num_frames, 16, 16, 1))
  step = jnp.zeros((1,), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), video, step, step)
  assert out["params"] == sum(p.size for p in jax.tree.leaves(params))
  assert out["gmacs"] == pytest.approx(training.forward_macs(model) / 1e9)
