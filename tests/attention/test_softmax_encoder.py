"""Softmax attention against a hand-written reference; the encoder honours padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.attention import encoder
from flax.linen import unbox as nn_unbox
from efficient.attention import get_attention
from efficient.attention import softmax


def _reference(q, k, v, mask):
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask[:, None, None, :], scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def test_softmax_matches_reference_with_padding():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
             for _ in range(3))
  mask = np.ones((2, 7), bool)
  mask[1, 4:] = False
  out = softmax.softmax_attention(q, k, v, mask=jnp.asarray(mask))
  np.testing.assert_allclose(out, _reference(q, k, v, mask), atol=1e-5,
                             rtol=1e-5)
  assert get_attention("softmax") is softmax.softmax_attention


def test_padded_keys_never_change_outputs():
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(1, 6, 2, 4)).astype(np.float32)
             for _ in range(3))
  mask = np.array([[True] * 4 + [False] * 2])
  k2, v2 = k.copy(), v.copy()
  k2[:, 4:] = rng.normal(size=k2[:, 4:].shape) * 100
  v2[:, 4:] = rng.normal(size=v2[:, 4:].shape) * 100
  a = softmax.softmax_attention(q, k, v, mask=mask)
  b = softmax.softmax_attention(q, k2, v2, mask=mask)
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_encoder_logits_do_not_depend_on_padding_length():
  model = encoder.EncoderClassifier(vocab_size=16, num_classes=10,
                                    max_length=32, dropout=0.0)
  tokens = np.array([[3, 7, 9, 15, 2, 8, 15, 4, 15]], np.int32)
  short = np.pad(tokens, ((0, 0), (0, 3)))
  long = np.pad(tokens, ((0, 0), (0, 23)))
  params = model.init(jax.random.PRNGKey(0), long)["params"]
  a = model.apply({"params": params}, short)
  b = model.apply({"params": params}, long)
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert a.shape == (1, 10)


def test_encoder_bf16_compute_keeps_fp32_params():
  model = encoder.EncoderClassifier(vocab_size=16, num_classes=10,
                                    max_length=16, dtype=jnp.bfloat16)
  tokens = jnp.ones((2, 16), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model.apply(params and {"params": params}, tokens)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


def test_unknown_attention_name_raises():
  try:
    get_attention("nope")
  except ValueError as e:
    assert "softmax" in str(e)
  else:
    raise AssertionError("no error for an unknown attention name")


def test_attention_dropout_is_unbiased_and_off_at_eval():
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 5, 1, 4)), jnp.float32)
             for _ in range(3))
  exact = softmax.softmax_attention(q, k, v)
  draws = jnp.stack([
      softmax.softmax_attention(q, k, v, dropout_rate=0.5,
                                dropout_rng=jax.random.PRNGKey(i))
      for i in range(2000)])
  # Inverted dropout: the average over masks is the exact output.
  np.testing.assert_allclose(draws.mean(0), exact, atol=0.06)
  assert float(jnp.abs(draws[0] - exact).max()) > 1e-3
  causal = softmax.softmax_attention(q, k, v, causal=True)
  np.testing.assert_allclose(causal[:, 0], v[:, 0], atol=1e-6)


def test_linear_init_matches_torch_default_bounds():
  model = encoder.EncoderClassifier(vocab_size=16, num_classes=10,
                                    max_length=8)
  params = nn_unbox(model.init(jax.random.PRNGKey(0),
                               jnp.ones((1, 8), jnp.int32))["params"])
  kernel = params["block_0"]["mlp_in"]["kernel"]      # fan_in 64
  out = params["block_0"]["attention"]["out_kernel"]  # fan_in 2 * 32
  for w in (kernel, out, params["block_0"]["mlp_in"]["bias"]):
    assert float(jnp.abs(w).max()) <= 1 / 8 + 1e-6
    assert float(jnp.abs(w).max()) > 0.9 / 8  # Uniform, filling the range.
  mlp_out = params["block_0"]["mlp_out"]["kernel"]    # fan_in 128
  assert float(jnp.abs(mlp_out).max()) <= 1 / 128**0.5 + 1e-6


def test_mean_padded_pooling_reproduces_the_original_scaling():
  kwargs = dict(vocab_size=16, num_classes=10, max_length=16, dropout=0.0,
                attention_dropout=0.0)
  tokens = jnp.asarray(np.pad([[3, 7, 9, 15]], ((0, 0), (0, 12))), jnp.int32)
  ours = encoder.EncoderClassifier(**kwargs)
  original = encoder.EncoderClassifier(pooling="mean_padded", **kwargs)
  params = ours.init(jax.random.PRNGKey(0), tokens)
  pooled = {}
  for name, model in (("ours", ours), ("original", original)):
    _, state = model.apply(params, tokens, capture_intermediates=True,
                           mutable=["intermediates"])
    pooled[name] = state["intermediates"]["head_hidden"]["__call__"][0]
  # head_hidden is affine in the pooled vector: compare through its kernel.
  kernel = nn_unbox(params["params"])["head_hidden"]["kernel"]
  bias = nn_unbox(params["params"])["head_hidden"]["bias"]
  solve = lambda h: np.linalg.lstsq(np.asarray(kernel).T,
                                    np.asarray(h - bias)[0], rcond=None)[0]
  np.testing.assert_allclose(solve(pooled["original"]),
                             solve(pooled["ours"]) * 4 / 16, atol=1e-4)


@pytest.mark.parametrize("platform,dtype,head_dim,length,masked,dropout,want", [
    ("gpu", jnp.bfloat16, 64, 1000, False, False, "cudnn"),
    ("gpu", jnp.float16, 128, 1000, False, False, "cudnn"),
    ("gpu", jnp.float32, 64, 1000, False, False, "xla"),  # No fp32 cuDNN.
    ("gpu", jnp.bfloat16, 64, 1000, True, False, "xla"),
    ("gpu", jnp.bfloat16, 256, 1000, False, False, "xla"),
    ("gpu", jnp.bfloat16, 60, 1000, False, False, "xla"),
    ("gpu", jnp.bfloat16, 64, 1000, False, True, "xla"),
    ("tpu", jnp.float32, 64, 1024, True, False, "pallas_tpu"),
    ("tpu", jnp.float32, 64, 1000, False, False, "xla"),
    ("tpu", jnp.float32, 64, 1024, False, True, "xla"),
    ("cpu", jnp.bfloat16, 64, 1024, False, False, "xla"),
])
def test_softmax_dispatch_rules(platform, dtype, head_dim, length, masked,
                                dropout, want):
  assert softmax.choose_implementation(
      platform, dtype, head_dim=head_dim, q_length=length, kv_length=length,
      masked=masked, dropout=dropout) == want


def test_softmax_auto_on_cpu_is_xla():
  rng = np.random.default_rng(5)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 24, 2, 8)), jnp.float32)
             for _ in range(3))
  mask = jnp.asarray(rng.random((2, 24)) > 0.2)
  np.testing.assert_array_equal(
      softmax.softmax_attention(q, k, v, mask=mask),
      softmax.softmax_attention(q, k, v, mask=mask, implementation="xla"))
  with pytest.raises(ValueError, match="implementation="):
    softmax.softmax_attention(q, k, v, implementation="flash")
