"""Mesh construction, the logical rules, the schedule and weight-decay mask."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest

from efficient.attention import encoder
from efficient.train import optimizer
from efficient.train import sharding


def test_make_mesh_fills_minus_one_and_rejects_bad_sizes():
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 2), ("model", 1)))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh((("data", 4), ("fsdp", 4), ("model", 1)))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((("data", -1), ("fsdp", -1), ("model", 1)))


def test_params_follow_rules_and_undivisible_dims_replicate():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  model = encoder.EncoderClassifier(vocab_size=15, num_classes=10,
                                    max_length=8)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
  shardings = sharding.state_shardings(abstract, mesh)["params"]
  mlp_in = shardings["block_0"]["mlp_in"]["kernel"].spec
  assert mlp_in == P("fsdp", "model")
  assert shardings["block_0"]["attention"]["query_kernel"].spec == P(
      "fsdp", "model", None)
  # vocab 15 is not divisible by model=2: that dimension is replicated.
  assert shardings["token_embed"]["embedding"].spec == P(None, "fsdp")


def test_activation_rules_do_not_reuse_a_mesh_axis():
  spec = nn.logical_to_mesh_axes(("batch", "length", "embed"),
                                 sharding.LOGICAL_RULES)
  assert spec == P(("data", "fsdp"), None, None)


def _opt_cfg(**kw):
  cfg = dict(name="adamw", lr=1.0, b1=0.9, b2=0.999, eps=1e-8,
             weight_decay=0.1, schedule="linear", warmup_steps=10,
             end_lr_factor=0.0, grad_clip=1.0,
             no_decay=(r".*bias", r".*scale"))
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedule_warms_up_then_decays(kind):
  fn = optimizer.make_schedule(_opt_cfg(schedule=kind, end_lr_factor=0.1),
                               110)
  assert float(fn(0)) == 0.0
  np.testing.assert_allclose(fn(5), 0.5, rtol=1e-6)
  np.testing.assert_allclose(fn(10), 1.0, rtol=1e-6)
  expected_end = {"linear": 0.1, "cosine": 0.1, "constant": 1.0}[kind]
  np.testing.assert_allclose(fn(110), expected_end, rtol=1e-5)
  if kind == "linear":
    np.testing.assert_allclose(fn(60), 0.55, rtol=1e-6)
  if kind == "cosine":
    np.testing.assert_allclose(fn(60), 0.1 + 0.9 * 0.5, rtol=1e-5)


def test_onecycle_matches_pytorch_onecyclelr_formula():
  # torch OneCycleLR(max_lr=1, total_steps=110, pct_start=10/110,
  # anneal_strategy="linear"): phase ends at steps 9 and 109.
  cfg = _opt_cfg(schedule="onecycle")
  lr = optimizer.make_schedule(cfg, 110)
  b1 = optimizer.make_b1_schedule(cfg, 110)
  initial, final = 1 / 25, 1 / 25 / 1e4
  for step, want_lr, want_b1 in [
      (0, initial, 0.95), (9, 1.0, 0.85), (109, final, 0.95),
      (4, initial + (1 - initial) * 4 / 9, 0.95 - 0.1 * 4 / 9),
      (59, 1 + (final - 1) * 50 / 100, 0.85 + 0.1 * 50 / 100)]:
    np.testing.assert_allclose(lr(step), want_lr, rtol=1e-5)
    np.testing.assert_allclose(b1(step), want_b1, rtol=1e-5)


def test_onecycle_optimizer_applies_the_scheduled_beta1():
  cfg = _opt_cfg(schedule="onecycle", grad_clip=0.0, weight_decay=0.0)
  tx, _ = optimizer.make_optimizer(cfg, 110)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  grads = {"w": jnp.array([1.0, -2.0])}
  _, state = tx.update(grads, state, params)
  hyper = state[-1].hyperparams
  np.testing.assert_allclose(hyper["b1"], 0.95, rtol=1e-6)
  np.testing.assert_allclose(hyper["learning_rate"], 1 / 25, rtol=1e-6)


def test_decay_mask_skips_bias_and_scale_even_when_boxed():
  model = encoder.EncoderClassifier(vocab_size=16, num_classes=10,
                                    max_length=8)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))[
      "params"]
  for tree in (params, nn.unbox(params)):
    mask = nn.unbox(optimizer.decay_mask(tree, (r".*bias", r".*scale")))
    assert mask["block_0"]["mlp_in"]["kernel"]
    assert not mask["block_0"]["mlp_in"]["bias"]
    assert not mask["ln_final"]["scale"]


def test_weight_decay_only_moves_masked_params():
  params = {"w": jnp.ones(3), "bias": jnp.ones(3)}
  tx, _ = optimizer.make_optimizer(
      _opt_cfg(warmup_steps=0, schedule="constant", lr=0.1), 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.1 * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], 0.0)
