"""Dropout masks: threefry is flax's nn.Dropout; the hash keeps 1 − rate of
the entries, independently of neighbours and of other keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.attention import dropout
from efficient.attention import encoder
from efficient.attention import softmax


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.13])
def test_hash_keeps_the_right_fraction_independently(keep):
  shape = (8, 250, 500)  # 10^6 entries: the keep rate's std is ≤ 5e-4.
  a = np.asarray(dropout.keep_mask(jax.random.PRNGKey(0), keep, shape, "hash"))
  b = np.asarray(dropout.keep_mask(jax.random.PRNGKey(1), keep, shape, "hash"))
  tol = 5 * np.sqrt(keep * (1 - keep) / a.size)
  assert abs(a.mean() - keep) < tol
  # Neighbours along the last axis and across rows, and two keys' masks:
  # P(both kept) = keep² when independent.
  for x, y in ((a[..., 1:], a[..., :-1]), (a[:, 1:], a[:, :-1]), (a, b)):
    assert abs((x & y).mean() - keep**2) < 2 * tol
  # A different key gives a different mask (not a shifted copy).
  assert (a != b).mean() > 0.5 * 2 * keep * (1 - keep)


def test_threefry_is_flax_dropouts_formula_and_the_hash_is_scaled():
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 33, 7))
  rng = jax.random.PRNGKey(3)
  keep = jax.random.bernoulli(rng, 0.9, x.shape)  # What nn.Dropout draws.
  np.testing.assert_array_equal(dropout.dropout(x, 0.1, rng),
                                jax.lax.select(keep, x / 0.9, 0 * x))
  out = np.asarray(dropout.dropout(x, 0.25, rng, "hash"))
  kept = out != 0
  np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.6 < kept.mean() < 0.9
  assert dropout.dropout(x, 0.0, rng, "hash") is x
  assert np.asarray(dropout.keep_mask(rng, 1.0, (5, 5), "hash")).all()
  with pytest.raises(ValueError, match="generator"):
    dropout.keep_mask(rng, 0.5, (3,), "philox")


def test_softmax_attention_drops_weights_with_the_chosen_generator():
  q, k, v = (jax.random.normal(key, (2, 9, 2, 4))
             for key in jax.random.split(jax.random.PRNGKey(4), 3))
  rng = jax.random.PRNGKey(5)
  weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, -1)
  keep = dropout.keep_mask(rng, 0.8, weights.shape, "hash")
  want = jnp.einsum("bhqk,bkhd->bqhd", jnp.where(keep, weights / 0.8, 0), v)
  got = softmax.softmax_attention(q, k, v, dropout_rate=0.2, dropout_rng=rng,
                                  dropout_generator="hash")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_encoder_hash_dropout_changes_training_only():
  tokens = jax.random.randint(jax.random.PRNGKey(6), (2, 40), 1, 16)
  models = {g: encoder.EncoderClassifier(16, 10, 40, dropout_generator=g)
            for g in ("threefry", "hash")}
  params = models["threefry"].init(jax.random.PRNGKey(7), tokens)
  rngs = {"dropout": jax.random.PRNGKey(8)}
  train, evaluate = ({g: np.asarray(m.apply(params, tokens, train=t,
                                            rngs=rngs))
                      for g, m in models.items()} for t in (True, False))
  np.testing.assert_array_equal(evaluate["threefry"], evaluate["hash"])
  assert not np.allclose(train["threefry"], train["hash"])
  with pytest.raises(ValueError, match="dropout_generator"):
    encoder.EncoderClassifier(16, 10, 40, dropout_generator="x").apply(
        params, tokens, train=True, rngs=rngs)
