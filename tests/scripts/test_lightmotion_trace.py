"""scripts/lightmotion_trace.py: the traced sampler is LightMotion's own
(no correction), and x̂₀ after the update is x̂₀ before it, moved."""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from efficient.diffusion import lightmotion as lm
from efficient.diffusion import samplers
from efficient.diffusion import schedules
from tests import conftest

sys.path.insert(0, str(conftest.REPO / "scripts"))
import lightmotion_trace  # noqa: E402  pylint: disable=wrong-import-position


def _toy_eps(x, step, labels):
  del labels  # A fixed linear "denoiser" (as in test_lightmotion.py).
  return 0.5 * x + 0.01 * step[:, None, None, None, None].astype(x.dtype)


def test_trace_ends_where_lightmotion_sample_ends():
  schedule = schedules.Schedule.create("linear", 1000)
  noise = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8, 1))
  labels = jnp.zeros((2,), jnp.int32)
  moving = lm.plan(lm.camera_path(lm.Motion(x=0.25, z=0.2), 4, 8, 8), 8, 8)
  rng = jax.random.PRNGKey(1)
  grid = samplers.step_grid(schedule, 10)
  for fill in ("background", "noise"):
    final, estimates = lightmotion_trace.trace(
        _toy_eps, schedule, noise, labels, moving, jax.random.split(rng)[0],
        grid, t0=600, fill=fill)
    expected = lm.sample(_toy_eps, schedule, noise, labels, moving, rng,
                         num_steps=10, t0=600, fill=fill, correction="none")
    np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-5)
    # Before and after the update at T0 = 600, then steps 500 ... 100.
    assert [s for s, _ in estimates] == [600, 600, 500, 400, 300, 200, 100]


def test_x0_after_the_update_is_x0_before_it_moved():
  """With ε̂ = 0, x̂₀ = x / sqrt(ᾱ): the update's permutation shows in x̂₀
  token for token (a 1 px per frame pan; exposed columns aside)."""
  schedule = schedules.Schedule.create("linear", 1000)
  frames, size = 4, 8
  noise = jax.random.normal(jax.random.PRNGKey(0), (2, frames, size, size, 1))
  zero_eps = lambda x, step, labels: jnp.zeros_like(x)
  pan = lm.plan(lm.camera_path(lm.Motion(x=3 / size), frames, size, size),
                size, size)
  _, estimates = lightmotion_trace.trace(
      zero_eps, schedule, noise, jnp.zeros((2,), jnp.int32), pan,
      jax.random.PRNGKey(1), samplers.step_grid(schedule, 10), t0=600,
      fill="noise")
  (_, before), (_, after) = estimates[:2]
  before, after = np.asarray(before), np.asarray(after)
  assert not np.allclose(before[:, 1:], after[:, 1:])
  for f in range(frames):
    np.testing.assert_allclose(after[:, f, :, :size - f],
                               before[:, f, :, f:], rtol=1e-6)


def test_fraction_of_request():
  requested = np.array([-0.5, 0.0, 0.0, 0.0])
  assert lightmotion_trace.fraction_of_request([-0.25, 0.1, 0, 0],
                                               requested) == 0.5
  np.testing.assert_allclose(
      lightmotion_trace.to_units([np.log(1.03), np.radians(2.0), 0.5, -1.0]),
      [0.5, -1.0, 3.0, 2.0])


def test_uniform_control_moves_every_frame_alike():
  """ε̂ = 0 again: x̂₀ after the control is x̂₀ before it, every frame
  shifted by the clip's whole move (3 px)."""
  schedule = schedules.Schedule.create("linear", 1000)
  frames, size = 4, 8
  noise = jax.random.normal(jax.random.PRNGKey(0), (2, frames, size, size, 1))
  zero_eps = lambda x, step, labels: jnp.zeros_like(x)
  path = lm.camera_path(lm.Motion(x=3 / size), frames, size, size)
  before, after = lightmotion_trace.uniform_control(
      zero_eps, schedule, noise, jnp.zeros((2,), jnp.int32), path,
      jax.random.PRNGKey(1), samplers.step_grid(schedule, 10), t0=600)
  before, after = np.asarray(before), np.asarray(after)
  np.testing.assert_allclose(after[..., :size - 3, :], before[..., 3:, :],
                             rtol=1e-6)
  assert not np.allclose(after[..., size - 3:, :], before[..., :3, :])
