"""DiMR: published sizes and compute per branch, shapes, pixel shuffle,
multi-scale targets and loss, gradients into the low-resolution branch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.diffusion import dimr


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,params,branches,gmacs", [
    ("XL/2R", 505.05e6, (396.25e6, 108.79e6), 160.2e9),
    ("G/2R", 1056.35e6, (833.24e6, 223.12e6), 331.1e9)])
def test_presets_have_the_published_sizes(name, params, branches, gmacs):
  model = dimr.dimr_preset(name)
  x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
  n = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, n, n)
  assert abs(_count(shapes) / params - 1) < 0.01
  for i, want in enumerate(branches):
    assert abs(_count(shapes["params"][f"stage_{i}"]) / want - 1) < 0.001
  assert abs(dimr.forward_macs(model) / gmacs - 1) < 0.02


TINY = (dimr.StageConfig("transformer", 32, 64, 4, 3, 2),
        dimr.StageConfig("convnext", 16, 32, 4, 2, 1))


def _tiny(norm="tdln"):
  return dimr.DiMR(stages=TINY, input_size=16, in_channels=3, num_classes=5,
                   norm=norm)


@pytest.mark.parametrize("norm", dimr.NORMS)
def test_forward_shapes_and_macs_against_xla_cost_analysis(norm):
  model = _tiny(norm)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)),
                  jnp.float32)
  step, label = jnp.asarray([3, 700]), jnp.asarray([1, 5])
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, step, label)
  low, high = jax.jit(model.apply)(variables, x, step, label)
  assert low.shape == (2, 8, 8, 3) and high.shape == (2, 16, 16, 3)
  cost = jax.jit(model.apply).lower(variables, x[:1], step[:1],
                                    label[:1]).cost_analysis()
  flops = cost["flops"] if isinstance(cost, dict) else cost[0]["flops"]
  ratio = dimr.forward_macs(model) * 2 / flops
  assert 0.7 < ratio <= 1.0, ratio


def test_pixel_shuffle_puts_offsets_inside_each_pixel():
  rng = np.random.default_rng(1)
  r, d = 2, 3
  x = rng.normal(size=(1, 2, 3, r * r * d))
  out = np.asarray(dimr.pixel_shuffle(jnp.asarray(x), r))
  for h in range(2):
    for w in range(3):
      for i in range(r):
        for j in range(r):
          np.testing.assert_allclose(out[0, h * r + i, w * r + j],
                                     x[0, h, w, (i * r + j) * d:
                                       (i * r + j + 1) * d], rtol=1e-6)


def test_multiscale_targets_stay_standard_normal_and_the_loss_weights():
  noise = jax.random.normal(jax.random.PRNGKey(2), (64, 32, 32, 4))
  outputs = [jnp.zeros((64, 16, 16, 4)), jnp.zeros((64, 32, 32, 4))]
  low, high = dimr.multiscale_targets(noise, outputs)
  np.testing.assert_array_equal(high, noise)
  want = (noise[:, ::2, ::2] + noise[:, 1::2, ::2] + noise[:, ::2, 1::2] +
          noise[:, 1::2, 1::2]) / 2
  np.testing.assert_allclose(low, want, atol=1e-6)
  assert abs(float(low.std()) - 1) < 0.01
  # Zero predictions: loss = 1/4·E[low²] + E[high²] ≈ 1.25.
  loss = dimr.multiscale_loss(outputs, noise)
  assert abs(float(loss.mean()) - 1.25) < 0.02
  with pytest.raises(ValueError, match="loss weights"):
    dimr.multiscale_loss(outputs, noise, weights=(1.0,))


def test_high_resolution_loss_trains_the_low_resolution_branch():
  model = _tiny()
  x = jnp.ones((1, 16, 16, 3))
  step, label = jnp.asarray([500]), jnp.asarray([2])
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, step,
                               label)["params"]
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({"params": p}, x, step, label)[1]**2)))(params)
  stage0 = grads["stage_0"]["block_0"]["qkv"]["kernel"]
  assert float(jnp.abs(stage0).max()) > 0
  # The class reaches the ConvNeXt branch only through the upsampled path.
  assert "class_embed" not in grads["stage_1"]
  assert float(jnp.abs(grads["stage_0"]["class_embed"]["embedding"][2]).max(
  )) > 0


@pytest.mark.parametrize("block", [
    dimr.TransformerBlock(64, 4, "adaln_zero"),
    dimr.ConvNeXtBlock(32, "adaln_zero")])
def test_adaln_zero_blocks_residuals_start_closed(block):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 16) if isinstance(
      block, dimr.TransformerBlock) else (2, 4, 4, 16)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(2, 24)), jnp.float32)
  params = block.init(jax.random.PRNGKey(0), x, c)
  expected = x
  if isinstance(block, dimr.ConvNeXtBlock):  # Its dwconv has no norm/gate.
    expected = x + dimr.DepthwiseConv().apply(
        {"params": params["params"]["dwconv"]}, x)
  np.testing.assert_allclose(block.apply(params, x, c), expected, atol=1e-6)
  # Not a dead block: perturbing the gate's weights changes the output.
  moved = jax.tree.map(lambda p: p + 0.1, params)
  assert float(jnp.abs(block.apply(moved, x, c) - x).max()) > 1e-3


def test_adaln_zero_variant_conditions_on_time_and_class_without_a_token():
  model = _tiny("adaln_zero")
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, 3)),
                  jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x,
                                  jnp.asarray([1, 1]), jnp.asarray([0, 0]))
  assert "class_embed" not in variables["params"]["stage_0"]
  assert "y_embedder" in variables["params"]
  # Nudge every modulation off zero so time and class reach the output.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.05 if "adaLN_modulation" in str(path) else p,
      variables)
  apply = jax.jit(model.apply)
  base = apply(variables, x, jnp.asarray([5, 5]), jnp.asarray([0, 0]))
  other_t = apply(variables, x, jnp.asarray([900, 900]), jnp.asarray([0, 0]))
  other_y = apply(variables, x, jnp.asarray([5, 5]), jnp.asarray([3, 3]))
  assert float(jnp.abs(base[-1] - other_t[-1]).max()) > 1e-4
  assert float(jnp.abs(base[-1] - other_y[-1]).max()) > 1e-4
  tdln_count = _count(jax.eval_shape(_tiny().init, jax.random.PRNGKey(0), x,
                                     jnp.asarray([1, 1]), jnp.asarray([0, 0])))
  assert _count(variables) > tdln_count  # The modulation Linears.


def test_depthwise_conv_equals_the_grouped_convolution():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 6)), jnp.float32)
  layer = dimr.DepthwiseConv()
  params = layer.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + jnp.asarray(
      rng.normal(size=p.shape), jnp.float32), params)
  reference = nn.Conv(6, (7, 7), padding=3, feature_group_count=6)
  np.testing.assert_allclose(layer.apply(params, x),
                             reference.apply(params, x), atol=1e-5)
  grad = jax.grad(lambda p: (layer.apply(p, x)**2).sum())(params)
  want = jax.grad(lambda p: (reference.apply(p, x)**2).sum())(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-4), grad, want)
