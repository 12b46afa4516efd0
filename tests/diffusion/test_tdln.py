"""TD-LN (DiMR): the formula, its LayerNorm limit, the RMS variant, gates'
gradients and weight-decay exemption."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.diffusion import tdln
from efficient.train import optimizer


def _np_time_dependent(p0, p1, w, b, t):
  gate = 1 / (1 + np.exp(-((1 + w) * t[:, None] + b)))
  return p1 + gate * (p0 - p1)


def _np_layer_norm(x, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps)


def _randomise(params, rng):
  """Every parameter random (p₀ ≠ p₁, non-zero gates): not the init."""
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def test_diffusion_time_spans_minus_one_to_one():
  t = tdln.diffusion_time(jnp.array([1, 500, 1000]), 1000)
  np.testing.assert_allclose(t, [-0.998, 0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("scalar_gate", [False, True])
def test_time_dependent_parameter_is_the_formula(scalar_gate):
  rng = np.random.default_rng(0)
  module = tdln.TimeDependentParameter(6, scalar_gate=scalar_gate)
  t = jnp.asarray(rng.uniform(-1, 1, 4), jnp.float32)
  params = _randomise(module.init(jax.random.PRNGKey(0), t)["params"], rng)
  assert params["nodecay_weight"].shape == (() if scalar_gate else (6,))
  got = module.apply({"params": params}, t)
  want = _np_time_dependent(*(np.asarray(params[k]) for k in (
      "param0", "param1", "nodecay_weight", "nodecay_bias")), np.asarray(t))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tdln_is_the_formula_and_reduces_to_layer_norm_when_p0_equals_p1():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 5, 8)) * 3 + 1, jnp.float32)
  t = jnp.asarray([-0.9, 0.1, 1.0], jnp.float32)
  module = tdln.TDLayerNorm()
  params = _randomise(module.init(jax.random.PRNGKey(0), x, t)["params"], rng)
  got = module.apply({"params": params}, x, t)
  tp = lambda p: _np_time_dependent(*(np.asarray(p[k]) for k in (
      "param0", "param1", "nodecay_weight", "nodecay_bias")), np.asarray(t))
  want = (tp(params["scale"])[:, None] * _np_layer_norm(np.asarray(x), 1e-5)
          + tp(params["shift"])[:, None])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # p₀ = p₁: the gates no longer matter; a plain affine LayerNorm.
  for name in ("scale", "shift"):
    params[name]["param1"] = params[name]["param0"]
  got = module.apply({"params": params}, x, t)
  want = (np.asarray(params["scale"]["param0"]) *
          _np_layer_norm(np.asarray(x), 1e-5) +
          np.asarray(params["shift"]["param0"]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_td_rms_norm_is_the_formula():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
  t = jnp.asarray([0.3, -0.5], jnp.float32)
  module = tdln.TDRMSNorm()
  params = _randomise(module.init(jax.random.PRNGKey(0), x, t)["params"], rng)
  got = module.apply({"params": params}, x, t)
  p = params["scale"]
  scale = _np_time_dependent(*(np.asarray(p[k]) for k in (
      "param0", "param1", "nodecay_weight", "nodecay_bias")), np.asarray(t))
  xn = np.asarray(x)
  rms = np.sqrt((xn**2).mean(-1, keepdims=True))
  np.testing.assert_allclose(got, scale[:, None] * xn / (rms + 1e-8),
                             rtol=1e-5)


def test_gates_get_no_gradient_at_init_and_the_right_one_after():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  t = jnp.asarray([0.5, -0.25], jnp.float32)
  module = tdln.TDLayerNorm()
  params = module.init(jax.random.PRNGKey(0), x, t)["params"]
  loss = lambda p: jnp.sum(jnp.sin(module.apply({"params": p}, x, t)))
  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["scale"]["nodecay_weight"]).max()) == 0.0
  assert float(jnp.abs(grads["shift"]["nodecay_bias"]).max()) == 0.0
  params = _randomise(params, rng)
  grads = jax.grad(loss)(params)
  # Central differences on one gate weight.
  eps, index = 1e-3, 2
  def shifted(delta):
    p = jax.tree.map(lambda a: a, params)
    p["scale"]["nodecay_weight"] = p["scale"]["nodecay_weight"].at[index].add(
        delta)
    return float(loss(p))
  numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
  np.testing.assert_allclose(grads["scale"]["nodecay_weight"][index], numeric,
                             rtol=1e-2, atol=1e-4)
  assert abs(numeric) > 1e-4


def test_gates_are_exempt_from_weight_decay():
  x, t = jnp.ones((1, 2, 4)), jnp.zeros((1,))
  params = tdln.TDLayerNorm().init(jax.random.PRNGKey(0), x, t)["params"]
  mask = optimizer.decay_mask(params, (tdln.NO_DECAY,))
  for name in ("scale", "shift"):
    assert mask[name]["param0"] and mask[name]["param1"]
    assert not mask[name]["nodecay_weight"]
    assert not mask[name]["nodecay_bias"]
