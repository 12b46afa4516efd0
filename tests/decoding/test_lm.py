"""Llama LM: cached decoding equals the uncached forward; rollback; logits
processing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.decoding import lm

CONFIG = lm.LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4,
                        n_kv_heads=2, hidden_dim=48, init_std=0.3)


@pytest.fixture(scope="module")
def model():
  m = lm.Llama.from_config(CONFIG)
  return m, m.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def _apply(m):
  return jax.jit(m.apply)


def test_cached_forward_equals_full_forward(model):
  m, params = model
  apply = _apply(m)
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 40)
  full, _, _ = apply(params, tokens)
  cache = lm.init_cache(CONFIG, 2, 16)
  pieces = []
  for a, b in [(0, 4), (4, 5), (5, 9)]:  # prefill, 1 token, 4 tokens
    logits, _, cache = apply(params, tokens[:, a:b], cache)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
  assert cache.lengths.tolist() == [9, 9]


def test_rollback_then_rewrite_equals_fresh_cache(model):
  """Write junk past a row's pointer, roll back, write real tokens: the
  logits and the cache prefix equal a cache that never saw the junk."""
  m, params = model
  apply = _apply(m)
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 40)
  junk = jax.random.randint(jax.random.key(3), (2, 5), 0, 40)
  cache = lm.init_cache(CONFIG, 2, 16)
  _, _, cache = apply(params, tokens[:, :4], cache)
  _, _, cache = apply(params, junk, cache)
  cache = cache.rollback(jnp.array([4, 4]))
  got, _, cache = apply(params, tokens[:, 4:], cache)
  fresh = lm.init_cache(CONFIG, 2, 16)
  _, _, fresh = apply(params, tokens[:, :4], fresh)
  want, _, fresh = apply(params, tokens[:, 4:], fresh)
  np.testing.assert_allclose(got, want, atol=1e-6)
  for a, b in zip(cache.k + cache.v, fresh.k + fresh.v):
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)


def test_rows_advance_independently(model):
  """Per-row lengths: a row's output does not depend on the other row's
  position in the cache."""
  m, params = model
  a = jax.random.randint(jax.random.key(4), (1, 7), 0, 40)
  b = jax.random.randint(jax.random.key(5), (1, 3), 0, 40)
  prompt, lengths = lm.pad_prompts([a[0].tolist(), b[0].tolist()], 7)
  seq, n, _ = lm.decode(m, params, prompt, lengths, jax.random.key(0),
                        max_new=6)
  for row, p in enumerate([a, b]):
    alone, n1, _ = lm.decode(m, params, p, jnp.array([p.shape[1]]),
                             jax.random.key(0), max_new=6)
    np.testing.assert_array_equal(seq[row, :n[row]], alone[0, :n1[0]])


def test_greedy_decode_is_argmax_of_full_forward(model):
  m, params = model
  prompt, lengths = lm.pad_prompts([[1, 2, 3, 4, 5], [7, 8]], 5)
  seq, n, steps = lm.decode(m, params, prompt, lengths, jax.random.key(1),
                            max_new=8)
  assert n.tolist() == [13, 10] and int(steps) == 8
  for row in range(2):
    s = seq[row, :n[row]]
    logits, _, _ = m.apply(params, s[None])
    start = int(lengths[row])
    np.testing.assert_array_equal(jnp.argmax(logits[0, start - 1:-1], -1),
                                  s[start:])


def test_eos_stops_a_row(model):
  m, params = model
  prompt, lengths = lm.pad_prompts([[1, 2, 3]], 3)
  seq, n, _ = lm.decode(m, params, prompt, lengths, jax.random.key(1),
                        max_new=8)
  eos = int(seq[0, 5])  # the third generated token
  first = int(np.argmax(np.asarray(seq[0, 3:]) == eos)) + 3
  _, n_eos, _ = lm.decode(m, params, prompt, lengths, jax.random.key(1),
                          max_new=8, eos_id=eos)
  assert int(n_eos[0]) == first + 1


def test_process_logits_top_k_top_p():
  logits = jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1]))
  p = jnp.exp(lm.process_logits(logits, top_k=2))
  np.testing.assert_allclose(p, [4 / 7, 3 / 7, 0, 0], atol=1e-6)
  p = jnp.exp(lm.process_logits(logits, top_p=0.75))  # 0.4 + 0.3 < 0.75
  np.testing.assert_allclose(p, [4 / 9, 3 / 9, 2 / 9, 0], atol=1e-6)
  p = jnp.exp(lm.process_logits(logits, top_p=0.1))  # keeps the top token
  np.testing.assert_allclose(p, [1, 0, 0, 0], atol=1e-6)
  p = jnp.exp(lm.process_logits(logits, temperature=0.5))
  np.testing.assert_allclose(p, np.array([16, 9, 4, 1]) / 30, atol=1e-6)


def test_nucleus_equals_the_sorted_definition():
  """Keep token i iff the mass of tokens strictly more probable than i is
  below top_p (sorting, the textbook construction)."""
  for seed in range(5):
    logits = 3 * jax.random.normal(jax.random.key(seed), (4, 300))
    probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    for top_p in (0.3, 0.9, 0.99):
      above = np.array([[probs[r][probs[r] > x].sum() for x in probs[r]]
                        for r in range(4)])
      want = above < top_p
      got = np.asarray(lm.nucleus(jnp.asarray(probs, jnp.float32), top_p))
      np.testing.assert_array_equal(got, want)
