"""The factorised space–time video DiT."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.diffusion import video_dit


def _model():
  return video_dit.VideoDiT(num_frames=4, input_size=16, patch_size=4,
                            depth=2, hidden=32, heads=2, num_classes=3)


def _inputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 16, 16, 1))
  return x, jnp.array([10, 900]), jnp.array([0, 3])


def test_adaln_zero_output_is_zero_at_init():
  model = _model()
  x, step, label = _inputs()
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, step, label)
  out = jax.jit(model.apply)(params, x, step, label)
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)


def _randomised(params):
  """Every zero-initialised leaf replaced by small random values."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(tree, [
      leaf + 0.1 * jax.random.normal(k, leaf.shape)
      for leaf, k in zip(leaves, keys)])


def test_frames_mix_only_through_time_attention():
  model = _model()
  x, step, label = _inputs()
  params = _randomised(jax.jit(model.init)(jax.random.PRNGKey(1), x, step,
                                           label))
  apply = jax.jit(model.apply)
  bumped = x.at[:, 0].add(1.0)
  out = apply(params, x, step, label)
  changed = jnp.abs(apply(params, bumped, step, label) - out)
  assert changed[:, 3].max() > 1e-3  # Frame 0 reaches frame 3 ...
  no_time = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "time_attn" in jax.tree_util.keystr(
          path) and "proj" in jax.tree_util.keystr(path) else v, params)
  out = apply(no_time, x, step, label)
  changed = jnp.abs(apply(no_time, bumped, step, label) - out)
  np.testing.assert_allclose(changed[:, 1:], 0.0, atol=1e-6)  # ... only so.
  # Examples never mix.
  np.testing.assert_allclose(apply(params, x[:1], step[:1], label[:1]),
                             apply(params, x, step, label)[:1], atol=1e-5)


def test_wrong_video_shape_is_an_error():
  model = _model()
  x, step, label = _inputs()
  params = jax.eval_shape(model.init, jax.random.PRNGKey(1), x, step, label)
  with pytest.raises(ValueError, match="videos got"):
    model.apply(params, x[:, :3], step, label)


def test_forward_macs_counts_the_dense_work():
  model = video_dit.VideoDiT()  # 8 × 32² × 1, patch 4, d 96 × 4.
  # Matches XLA's own flop count of the forward within 5% (2 flops / MAC).
  x = jnp.zeros((1, 8, 32, 32, 1))
  ones = jnp.ones((1,), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, ones,
                                             ones))
  cost = jax.jit(lambda p: model.apply(p, x, ones, ones)).lower(
      params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert video_dit.forward_macs(model) == pytest.approx(cost["flops"] / 2,
                                                        rel=0.05)
