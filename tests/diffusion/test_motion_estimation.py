"""The global-motion estimator on warps whose motion is known."""
import numpy as np
import pytest

from efficient.data import fmnist_video
from efficient.diffusion import lightmotion as lm
from efficient.diffusion import motion_estimation as me


def _smooth_scene(seed, size=64):
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  scene = scipy.ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.5,
                                        mode="wrap")
  return scene / scene.std()


@pytest.mark.parametrize("motion", [
    lm.Motion(x=0.2, y=-0.1), lm.Motion(z=0.2), lm.Motion(z=-0.15),
    lm.Motion(theta=-15.0), lm.Motion(x=0.1, y=0.1, z=0.1, theta=8.0)])
def test_recovers_known_camera_moves(motion):
  scene = _smooth_scene(0)
  path = lm.camera_path(motion, 4, 32, 32)
  video = np.stack([fmnist_video._view(scene, m) for m in path])  # pylint: disable=protected-access
  estimated = np.asarray(me.consecutive_motions(video.astype(np.float32),
                                                background_only=False))
  errors = me.motion_errors(estimated, me.requested_steps(path))
  assert errors["shift_px"].max() < 0.1
  assert errors["scale_pct"].max() < 0.5
  assert errors["rotation_deg"].max() < 0.2


def test_a_moving_object_does_not_pull_the_fit():
  # A bright textured object (20×20 of 32×32) moving 1 px per frame over a
  # still background: the background-only fit reads no camera motion;
  # fitting all pixels follows the object, whose texture dominates.
  rng = np.random.default_rng(1)
  video = np.repeat(0.3 * _smooth_scene(1)[16:48, 16:48][None], 4,
                    axis=0).astype(np.float32)
  texture = 3.0 + 0.3 * rng.normal(size=(20, 20))
  for f in range(4):
    video[f, 4:24, 4 + f:24 + f] = texture
  background = np.asarray(me.consecutive_motions(video))
  np.testing.assert_allclose(background, 0.0, atol=1e-4)
  everything = np.asarray(me.consecutive_motions(video,
                                                 background_only=False))
  np.testing.assert_allclose(everything[:, 2], 1.0, atol=0.05)


def test_phase_correlation_finds_integer_shifts():
  scene = _smooth_scene(2)[:32, :32].astype(np.float32)
  moved = np.roll(scene, (3, -5), axis=(0, 1))
  np.testing.assert_array_equal(me.phase_correlation(scene, moved), [-5, 3])
