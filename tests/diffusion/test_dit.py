"""DiT: published sizes and compute, adaLN-Zero identity at init, the TD-LN
variant, the analytic MAC count against XLA's cost analysis."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.diffusion import dit


def _param_count(model, size=32, channels=4):
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  n = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, n, n)
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def test_dit_xl2_has_the_published_size_and_compute():
  model = dit.dit_preset("XL/2", learn_sigma=True)
  params = _param_count(model)
  assert abs(params / 675e6 - 1) < 0.01, params
  macs = dit.forward_macs(model)
  assert abs(macs / 118.6e9 - 1) < 0.02, macs


def _tiny(**kw):
  return dit.DiT(input_size=8, in_channels=3, patch_size=2, depth=2,
                 hidden=32, heads=4, num_classes=5, **kw)


def test_adaln_zero_blocks_are_the_identity_and_the_output_zero_at_init():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)
  t = jnp.zeros((2,))
  block = dit.DiTBlock(heads=4)
  params = block.init(jax.random.PRNGKey(0), x, c, t)
  np.testing.assert_array_equal(block.apply(params, x, c, t), x)
  model = _tiny()
  images = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  step, label = jnp.asarray([10, 900]), jnp.asarray([1, 5])
  apply = jax.jit(model.apply)
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images, step, label)
  out = apply(variables, images, step, label)
  assert out.shape == images.shape
  assert float(jnp.abs(out).max()) == 0.0
  # With the zero inits perturbed the model depends on x, step and label.
  noisy = jax.tree.map(lambda a: a + 0.05 * jnp.asarray(
      rng.normal(size=a.shape), a.dtype), variables)
  base = apply(noisy, images, step, label)
  for args in ((images * 0.5, step, label), (images, step + 100, label),
               (images, step, jnp.asarray([0, 5]))):
    assert float(jnp.abs(apply(noisy, *args) - base).max()) > 1e-4


def test_tdln_variant_uses_a_class_token_and_no_modulation():
  model = _tiny(norm="tdln")
  images = jnp.ones((2, 8, 8, 3))
  step, label = jnp.asarray([1, 1000]), jnp.asarray([0, 3])
  variables = model.init(jax.random.PRNGKey(0), images, step, label)
  names = str(jax.tree_util.tree_structure(variables["params"]))
  assert "adaLN_modulation" not in names and "t_embedder" not in names
  assert "nodecay_weight" in names
  assert model.apply(variables, images, step, label).shape == images.shape
  with pytest.raises(ValueError, match="norm="):
    _tiny(norm="rms").init(jax.random.PRNGKey(0), images, step, label)


@pytest.mark.parametrize("norm", ["adaln_zero", "tdln"])
def test_forward_macs_match_xla_cost_analysis(norm):
  model = dit.DiT(input_size=16, in_channels=4, patch_size=2, depth=2,
                  hidden=64, heads=4, num_classes=10, norm=norm)
  x = jnp.ones((1, 16, 16, 4))
  n = jnp.ones((1,), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), x, n, n)
  cost = jax.jit(model.apply).lower(variables, x, n, n).cost_analysis()
  flops = cost["flops"] if isinstance(cost, dict) else cost[0]["flops"]
  # XLA also counts elementwise flops: the dot/conv MACs are most of it.
  ratio = dit.forward_macs(model) * 2 / flops
  assert 0.8 < ratio <= 1.0, ratio
