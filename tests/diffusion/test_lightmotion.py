"""LightMotion's latent operations: permutation, resampling, correction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from efficient.diffusion import lightmotion as lm
from efficient.diffusion import samplers
from efficient.diffusion import schedules


def _unique_latent(frames, height, width):
  """Token value = frame·H·W + position: every token names its source."""
  values = np.arange(frames * height * width, dtype=np.float32)
  return jnp.asarray(values.reshape(frames, height, width, 1))


def _moved(motion, frames=5, height=12, width=16, fill="any", align=True,
           foreground=None, seed=0):
  path = lm.camera_path(motion, frames, height, width)
  the_plan = lm.plan(path, height, width, align)
  latent = _unique_latent(frames, height, width)
  out = lm.update(latent, the_plan, jax.random.PRNGKey(seed), fill=fill,
                  foreground=foreground)
  return np.asarray(out[..., 0]).astype(np.int64), the_plan


def test_pan_moves_content_by_exactly_the_request():
  frames, height, width = 5, 12, 16
  # The camera pans right by 4 px over 4 frame steps: content moves 1 px
  # left per frame; the camera moves down 8 px: content 2 px up per frame.
  out, the_plan = _moved(lm.Motion(x=4 / width, y=8 / height), frames,
                         height, width)
  latent = np.asarray(_unique_latent(frames, height, width)[..., 0])
  for f in range(frames):
    inside = out[f][:height - 2 * f, :width - f]
    np.testing.assert_array_equal(inside, latent[f][2 * f:, f:])
    expected_exposed = np.zeros((height, width), bool)
    expected_exposed[height - 2 * f:] = True
    expected_exposed[:, width - f:] = True
    np.testing.assert_array_equal(the_plan.exposed[f], expected_exposed)


def test_rotation_and_zoom_signs():
  # Two frames, so the last frame carries the whole move.
  latent = np.asarray(_unique_latent(2, 8, 8)[..., 0])
  out, the_plan = _moved(lm.Motion(theta=90.0), 2, 8, 8)
  assert not the_plan.exposed.any()  # A square turned by 90° fills itself.
  np.testing.assert_array_equal(out[0], latent[0])
  # Camera rolls counter-clockwise: the content turns clockwise on screen.
  np.testing.assert_array_equal(out[1], np.rot90(latent[1], k=-1))
  out, the_plan = _moved(lm.Motion(z=1.0), 2, 8, 8)  # Zoom in ×2.
  assert not the_plan.exposed.any()
  # Each of the 4×4 central source tokens fills a 2×2 block.
  np.testing.assert_array_equal(
      out[1], np.repeat(np.repeat(latent[1][2:6, 2:6], 2, 0), 2, 1))
  out, the_plan = _moved(lm.Motion(z=-0.5), 2, 8, 8)  # Zoom out ×1/2.
  assert the_plan.exposed[1].sum() == 64 - 16
  # Target 2 reads round(3.5 + 2·(2 − 3.5)) = 1, then every other token.
  np.testing.assert_array_equal(out[1][2:6, 2:6], latent[1][1::2, 1::2])


def test_inverse_motions_compose_to_identity():
  frames, height, width = 6, 16, 16
  motion = lm.Motion(x=0.2, y=-0.1, z=0.3, theta=25.0)
  path = lm.camera_path(motion, frames, height, width)
  both = lm.compose(path, lm.inverse(path))
  np.testing.assert_allclose(both, np.broadcast_to(np.eye(3), both.shape),
                             atol=1e-12)
  identity = lm.plan(both, height, width)
  assert identity.num_cells == 0
  np.testing.assert_array_equal(
      identity.source, np.broadcast_to(np.arange(height * width).reshape(
          height, width), identity.source.shape))
  # A pan and its inverse applied one after the other: the identity on the
  # interior (the tokens that stayed inside the frame in between).
  pan = lm.camera_path(lm.Motion(x=5 / width, y=-5 / height), frames, height,
                       width)
  there, back = lm.plan(pan, height, width), lm.plan(lm.inverse(pan), height,
                                                     width)
  latent = _unique_latent(frames, height, width)
  key = jax.random.PRNGKey(0)
  moved = lm.update(latent, there, key, fill="any")
  returned = np.asarray(lm.update(moved, back, key, fill="any"))
  kept = ~np.asarray(lm.update(jnp.asarray(there.exposed[..., None],
                                           jnp.float32), back, key,
                               fill="edge")[..., 0]).astype(bool)
  kept &= ~back.exposed
  assert kept.sum() > frames * height * width // 2
  np.testing.assert_array_equal(returned[kept], np.asarray(latent)[kept])
  # Composition of paths is the product, frame by frame.
  zoom = lm.camera_path(lm.Motion(z=0.5), frames, height, width)
  np.testing.assert_allclose(lm.compose(pan, zoom)[3], zoom[3] @ pan[3])


def test_decompose_inverts_similarity():
  m = lm.similarity(1.3, np.radians(-17.0), (2.5, -1.0))
  scale, angle, shift = lm.decompose(m)
  np.testing.assert_allclose([scale, angle, *shift], [1.3, -17.0, 2.5, -1.0])


def _sources(out, height, width):
  return out // (height * width), out % (height * width)


def test_resampling_writes_only_exposed_positions_from_background():
  frames, height, width = 6, 12, 16
  foreground = np.zeros((frames, height, width), bool)
  foreground[:, 3:9, 4:10] = True  # An "object" that must not be copied.
  motion = lm.Motion(x=0.3, y=-0.25, theta=10.0)
  plain, the_plan = _moved(motion, frames, height, width, fill="edge")
  out, _ = _moved(motion, frames, height, width, fill="background",
                  foreground=jnp.asarray(foreground))
  exposed = the_plan.exposed
  assert exposed.sum() > 50
  np.testing.assert_array_equal(out[~exposed], plain[~exposed])
  frame, position = _sources(out[exposed], height, width)
  # Each frame gathers from itself, and only background positions.
  np.testing.assert_array_equal(frame, np.nonzero(exposed)[0])
  assert not foreground.reshape(frames, -1)[frame, position].any()
  # Without the mask ("any") some fills do come from the object.
  out_any, _ = _moved(motion, frames, height, width, fill="any")
  frame, position = _sources(out_any[exposed], height, width)
  assert foreground.reshape(frames, -1)[frame, position].any()


def test_cross_frame_alignment_reuses_fills():
  frames, height, width = 6, 10, 10
  motion = lm.Motion(x=5 / width)  # Content 1 px left per frame.
  out, the_plan = _moved(motion, frames, height, width, fill="any")
  _, position = _sources(out, height, width)
  exposed = the_plan.exposed
  for f in range(1, frames - 1):
    # A fill in column u of frame f sits in column u − 1 of frame f + 1.
    cols = [u for u in range(1, width) if exposed[f, 0, u]]
    assert cols
    for u in cols:
      np.testing.assert_array_equal(position[f + 1, :, u - 1],
                                    position[f, :, u])
  # One cell per never-seen scene position: 5 new columns of 10 rows.
  assert the_plan.num_cells == 5 * height
  unaligned = lm.plan(lm.camera_path(motion, frames, height, width), height,
                      width, align=False)
  assert unaligned.num_cells == exposed.sum()


def test_permuted_gaussian_stays_iid_gaussian():
  frames, height, width = 8, 32, 32
  latent = jax.random.normal(jax.random.PRNGKey(1), (frames, height, width, 1))
  the_plan = lm.plan(lm.camera_path(lm.Motion(x=0.25, y=0.125), frames,
                                    height, width), height, width)
  out = np.asarray(lm.update(latent, the_plan, jax.random.PRNGKey(2),
                             fill="noise"))[..., 0]
  assert scipy.stats.kstest(out.reshape(-1), "norm").pvalue > 1e-3
  n = out.size
  for lagged in (out[:, 1:] * out[:, :-1], out[:, :, 1:] * out[:, :, :-1],
                 out[1:] * out[:-1]):
    assert abs(lagged.mean()) < 4 / np.sqrt(n)
  assert abs(out.std() - 1.0) < 4 / np.sqrt(2 * n)


def _pair_correlation(values, rng):
  """Mean product of random distinct pairs (of unit-variance values)."""
  i = rng.integers(0, len(values), 20_000)
  j = rng.integers(0, len(values), 20_000)
  keep = i != j
  return float(np.mean(values[i[keep]] * values[j[keep]]))


def test_duplicated_fills_correlate_and_correction_decorrelates():
  frames, height, width = 8, 32, 32
  latent = jax.random.normal(jax.random.PRNGKey(3), (frames, height, width, 1))
  foreground = np.ones((frames, height, width), bool)
  foreground[:, :2, :2] = False  # A background of 4 tokens per frame.
  the_plan = lm.plan(lm.camera_path(lm.Motion(x=0.5), frames, height, width),
                     height, width)
  out = lm.update(latent, the_plan, jax.random.PRNGKey(4), fill="background",
                  foreground=jnp.asarray(foreground))
  rng = np.random.default_rng(0)
  exposed = the_plan.exposed
  fills = np.asarray(out)[..., 0][exposed]
  before = _pair_correlation(fills, rng)
  assert before > 0.15  # ≈ 1/4: two fills share a source 1 time in 4.
  schedule = schedules.Schedule.create("linear", 1000)
  step1, step2 = 400, 700
  corrected = lm.renoise(out, schedule, step1, step2, jax.random.PRNGKey(5))
  ratio = float(schedule.alphas_cumprod[step2] / schedule.alphas_cumprod[
      step1])
  after = _pair_correlation(np.asarray(corrected)[..., 0][exposed], rng)
  assert after < 0.5 * before
  assert after == pytest.approx(ratio * before, abs=0.03)
  # The untouched positions of an i.i.d. latent were uncorrelated before.
  assert abs(_pair_correlation(np.asarray(out)[..., 0][~exposed], rng)) < 0.05


def test_foreground_mask_finds_the_object():
  rng = np.random.default_rng(0)
  frames = np.clip(0.2 * rng.normal(size=(3, 16, 16, 1)), -0.5, 0.5) - 0.3
  frames[:, 5:10, 6:11] = 0.9
  mask = np.asarray(lm.foreground_mask(jnp.asarray(frames, jnp.float32)))
  assert mask[:, 5:10, 6:11].all()
  assert mask[:, 4:11, 5:12].sum() == mask.sum()  # Object + 1-px dilation.
  undilated = np.asarray(lm.foreground_mask(jnp.asarray(frames, jnp.float32),
                                            dilate=0))
  np.testing.assert_array_equal(np.nonzero(undilated)[1:],
                                np.nonzero(frames[..., 0] > 0.8)[1:])


def _toy_eps(x, step, labels):
  del labels  # A fixed linear "denoiser": enough to drive the plumbing.
  return 0.5 * x + 0.01 * step[:, None, None, None, None].astype(x.dtype)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp"])
def test_sample_segments_and_identity_motion(sampler):
  schedule = schedules.Schedule.create("linear", 1000)
  noise = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8, 1))
  labels = jnp.zeros((2,), jnp.int32)
  plain = lm.sample(_toy_eps, schedule, noise, labels, None,
                    jax.random.PRNGKey(1), sampler=sampler, num_steps=10)
  if sampler == "ddim":  # DDIM is Markov: segments change nothing.
    np.testing.assert_allclose(
        plain, samplers.ddim_sample(_toy_eps, schedule, noise, 10, labels),
        rtol=1e-6)
    still = lm.plan(lm.camera_path(lm.Motion(), 4, 8, 8), 8, 8)
    np.testing.assert_allclose(
        lm.sample(_toy_eps, schedule, noise, labels, still,
                  jax.random.PRNGKey(1), sampler=sampler, num_steps=10,
                  correction="none", fill="noise"), plain, rtol=1e-5)
  path = lm.camera_path(lm.Motion(x=0.25, z=0.2), 4, 8, 8)
  moving = lm.plan(path, 8, 8)
  run = jax.jit(lambda n, p, c: lm.sample(
      _toy_eps, schedule, n, labels, p, jax.random.PRNGKey(1),
      sampler=sampler, num_steps=10, correction=c), static_argnums=2)
  for correction in lm.CORRECTIONS:
    out = run(noise, moving, correction)
    assert out.shape == noise.shape and np.isfinite(out).all()
  # A padded plan is the same plan: one compilation serves every motion.
  np.testing.assert_allclose(run(noise, moving.pad(4 * 8 * 8), "forward"),
                             run(noise, moving, "forward"), rtol=1e-6)
  with pytest.raises(ValueError, match="T2 > T1"):
    lm.sample(_toy_eps, schedule, noise, labels, moving,
              jax.random.PRNGKey(1), num_steps=10, t1=600, t2=500)
  with pytest.raises(ValueError, match="fill"):
    lm.update(noise[0], lm.plan(path, 8, 8), jax.random.PRNGKey(0),
              fill="inpaint")
