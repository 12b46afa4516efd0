"""Speculative decoding: greedy output equals target greedy decoding token
for token; sampling reproduces the target's (processed) distribution
(chi-square on a small model, with a negative control that must fail);
unit cases of the acceptance rule."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from efficient.decoding import lm, speculative
from efficient.decoding.drafts import ar


def _llama(seed, vocab, dim, layers, std):
  config = lm.LlamaConfig(vocab_size=vocab, dim=dim, n_layers=layers,
                          n_heads=2, n_kv_heads=1, hidden_dim=2 * dim,
                          init_std=std)
  model = lm.Llama.from_config(config)
  return model, model.init(jax.random.key(seed), jnp.zeros((1, 2), jnp.int32))


@pytest.fixture(scope="module")
def pair():
  target = _llama(0, 40, 32, 2, 0.3)
  draft = _llama(1, 40, 16, 1, 0.3)
  return target, draft


@pytest.mark.parametrize("num_draft", [1, 3])
def test_greedy_equals_target_greedy(pair, num_draft):
  (tm, tp), (dm, dp) = pair
  prompt, lengths = lm.pad_prompts([[1, 2, 3, 4, 5, 6], [7, 8], [9, 3, 5]], 6)
  want, want_n, _ = lm.decode(tm, tp, prompt, lengths, jax.random.key(0),
                              max_new=12)
  for drafter, params in [(ar.ARDrafter(dm), dp), (ar.ARDrafter(tm), tp)]:
    seq, n, st = speculative.speculative_decode(
        tm, tp, drafter, params, prompt, lengths, jax.random.key(0),
        num_draft=num_draft, max_new=12)
    np.testing.assert_array_equal(n, want_n)
    for row in range(3):
      np.testing.assert_array_equal(seq[row, :n[row]], want[row, :n[row]])
    assert int(st["accepted_hist"].sum()) == int(st["rounds"].sum())
    assert int(st["rounds"].max()) <= 12
  # The target drafting for itself is always accepted: K+1 tokens a round.
  assert np.asarray(st["accepted_hist"])[:-1].sum() == 0


def test_greedy_respects_eos(pair):
  (tm, tp), (dm, dp) = pair
  prompt, lengths = lm.pad_prompts([[1, 2, 3]], 3)
  free, _, _ = lm.decode(tm, tp, prompt, lengths, jax.random.key(0),
                         max_new=10)
  eos = int(free[0, 6])
  want, want_n, _ = lm.decode(tm, tp, prompt, lengths, jax.random.key(0),
                              max_new=10, eos_id=eos)
  seq, n, _ = speculative.speculative_decode(
      tm, tp, ar.ARDrafter(dm), dp, prompt, lengths, jax.random.key(0),
      num_draft=3, max_new=10, eos_id=eos)
  assert int(n[0]) == int(want_n[0]) < 13
  np.testing.assert_array_equal(seq[0, :n[0]], want[0, :n[0]])


# ---------------------------------------------------------------- sampling

VOCAB, NEW, SAMPLES = 6, 3, 20000
PROMPT = [1, 2]


def _exact_distribution(model, params, sampling):
  """P(x1, x2, x3 | prompt) under the processed target, all V^3 cells."""
  prefixes = np.array(list(itertools.product(range(VOCAB), repeat=NEW - 1)))
  tokens = np.concatenate([np.tile(PROMPT, (len(prefixes), 1)), prefixes], 1)
  logits, _, _ = model.apply(params, jnp.asarray(tokens))
  logp = np.asarray(jax.vmap(sampling.log_probs)(logits), np.float64)
  p = np.exp(logp)
  start = len(PROMPT) - 1
  joint = {}
  for row, (a, b) in enumerate(prefixes):
    for c in range(VOCAB):
      joint[(a, b, c)] = (p[row, start, a] * p[row, start + 1, b]
                          * p[row, start + 2, c])
  cells = list(itertools.product(range(VOCAB), repeat=NEW))
  return cells, np.array([joint[c] for c in cells])


def _chi_square(model, params, drafter, draft_params, sampling, verify=None):
  prompt = jnp.tile(jnp.array(PROMPT, jnp.int32), (SAMPLES, 1))
  lengths = jnp.full((SAMPLES,), len(PROMPT), jnp.int32)
  seq, n, _ = speculative.speculative_decode(
      model, params, drafter, draft_params, prompt, lengths,
      jax.random.key(7), num_draft=2, max_new=NEW, sampling=sampling,
      verify=verify)
  assert np.all(np.asarray(n) == len(PROMPT) + NEW)
  out = np.asarray(seq[:, len(PROMPT):len(PROMPT) + NEW])
  cells, expected = _exact_distribution(model, params, sampling)
  index = {c: i for i, c in enumerate(cells)}
  observed = np.bincount([index[tuple(r)] for r in out.tolist()],
                         minlength=len(cells)).astype(np.float64)
  expected = expected / expected.sum() * SAMPLES
  small = expected < 5  # pool sparse cells (chi-square validity)
  obs = np.append(observed[~small], observed[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  assert observed[expected == 0].sum() == 0  # never outside the support
  return stats.chisquare(obs, exp).pvalue


def _bad_verify(rng, log_p, log_q, drafts):
  """Negative control: the correction token drawn from p_j instead of the
  residual max(0, p_j - q_j) -- biased towards what the draft proposes."""
  k = drafts.shape[1]
  n_acc, tokens = speculative.verify_sampling(rng, log_p, log_q, drafts)
  y = jax.random.categorical(jax.random.fold_in(rng, 1),
                             log_p[jnp.arange(drafts.shape[0]),
                                   jnp.minimum(n_acc, k)])
  return n_acc, tokens.at[jnp.arange(drafts.shape[0]), n_acc].set(
      y.astype(jnp.int32))


@pytest.fixture(scope="module")
def small_pair():
  target = _llama(3, VOCAB, 16, 1, 0.5)
  draft = _llama(4, VOCAB, 8, 1, 0.5)
  return target, draft


@pytest.mark.parametrize("sampling", [
    lm.Sampling(temperature=1.0),
    lm.Sampling(temperature=0.7, top_k=4, top_p=0.9)])
def test_sampling_matches_target_distribution(small_pair, sampling):
  (tm, tp), (dm, dp) = small_pair
  pvalue = _chi_square(tm, tp, ar.ARDrafter(dm), dp, sampling)
  assert pvalue > 1e-3, pvalue
  bad = _chi_square(tm, tp, ar.ARDrafter(dm), dp, sampling, _bad_verify)
  assert bad < 1e-6, bad


def test_point_mass_drafts_are_lossless(small_pair):
  """Deterministic (argmax) drafts under sampling verification: q is
  one-hot, acceptance prob p(d), correction from p with d removed."""

  @dataclasses.dataclass(frozen=True)
  class ArgmaxDrafter(ar.ARDrafter):
    def propose(self, params, cache, context, rng, num_draft, sampling):
      return super().propose(params, cache, context, rng, num_draft,
                             lm.Sampling())  # greedy q: one-hot

  (tm, tp), (dm, dp) = small_pair
  pvalue = _chi_square(tm, tp, ArgmaxDrafter(dm), dp, lm.Sampling(1.0))
  assert pvalue > 1e-3, pvalue


# ------------------------------------------------------------ unit cases

def _random_log_probs(key, shape):
  return jax.nn.log_softmax(2 * jax.random.normal(key, shape))


def test_equal_p_and_q_accepts_everything():
  log_p = _random_log_probs(jax.random.key(0), (64, 4, 10))
  drafts = jax.random.categorical(jax.random.key(1), log_p[:, :3])
  n_acc, tokens = speculative.verify_sampling(
      jax.random.key(2), log_p, log_p[:, :3], drafts)
  assert np.all(np.asarray(n_acc) == 3)
  np.testing.assert_array_equal(tokens[:, :3], drafts)


def test_draft_outside_target_support_is_rejected():
  log_q = jnp.log(jnp.array([[[0.0, 1.0, 0.0]]]))  # q puts all mass on 1
  log_p = jnp.log(jnp.array([[[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]]]))
  for seed in range(20):
    n_acc, tokens = speculative.verify_sampling(
        jax.random.key(seed), log_p, log_q, jnp.array([[1]]))
    assert int(n_acc[0]) == 0 and int(tokens[0, 0]) in (0, 2)


def test_one_hot_draft_accepted_with_probability_p():
  p = jnp.array([0.6, 0.3, 0.1])
  rows = 40000
  log_p = jnp.broadcast_to(jnp.log(p), (rows, 2, 3))
  log_q = jnp.log(jax.nn.one_hot(jnp.zeros((rows, 1), int), 3))
  n_acc, tokens = speculative.verify_sampling(
      jax.random.key(0), log_p, log_q, jnp.zeros((rows, 1), jnp.int32))
  rate = float(jnp.mean(n_acc))
  assert abs(rate - 0.6) < 4 * np.sqrt(0.24 / rows)
  # On rejection the correction follows p without token 0: 0.75 / 0.25.
  corr = np.asarray(tokens[:, 0])[np.asarray(n_acc) == 0]
  assert np.all(corr != 0)
  assert abs(np.mean(corr == 1) - 0.75) < 4 * np.sqrt(0.1875 / len(corr))


def test_acceptance_by_position_and_tau():
  hist = [2, 1, 0, 7]  # rounds accepting 0, 1, 2, 3 drafts
  rates = speculative.acceptance_by_position(hist)
  np.testing.assert_allclose(rates, [8 / 10, 7 / 8, 7 / 7])
  tau = speculative.tau({"emitted": jnp.array([2 + 2 + 0 + 28]),
                         "rounds": jnp.array([10])})
  assert tau == pytest.approx(3.2)
