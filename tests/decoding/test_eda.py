"""EDA draft: drafter alignment (first proposal equals an uncached
recomputation), lossless greedy decoding, the EAGLE loss learns, stage-2
freezing, the Mahalanobis score."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.spatial import distance

from efficient.decoding import lm, speculative
from efficient.decoding.drafts import eda


@pytest.fixture(scope="module")
def models():
  config = lm.LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=2,
                          n_kv_heads=1, hidden_dim=64, init_std=0.3)
  target = lm.Llama.from_config(config)
  tp = target.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  head = eda.EDAHead(dim=32, n_heads=2, n_kv_heads=1, hidden_dim=48,
                     private_hidden_dim=24, init_std=0.3)
  hp = head.init(jax.random.key(1), jnp.zeros((1, 2, 32)),
                 jnp.zeros((1, 2, 32)))
  return target, tp, head, hp


def test_first_proposal_matches_uncached_recomputation(models):
  target, tp, head, hp = models
  k = 3
  tokens = jnp.array([[5, 9, 2, 7, 1, 3, 8]])
  _, features, _ = target.apply(tp, tokens)
  drafter = eda.EDADrafter(head, target, k)
  params = {"head": hp, "target": tp}
  lengths = jnp.array([7])
  width = 7 + 2 * k + 2
  buffer = jnp.zeros((1, width, 32)).at[:, :7].set(features)

  @jax.jit
  def first_round(params):
    cache = drafter.init(params, tokens, lengths, width, buffer)
    context = {"seq": lm.sequence_buffer(tokens, width - 7), "n": lengths,
               "features": buffer}
    return drafter.propose(params, cache, context, jax.random.key(0), k,
                           lm.Sampling())[0]

  drafts = first_round(params)
  # Uncached: pairs (f_t, x_{t+1}) for t = 0..5 → f̂_6 → d_1; then feed d_1.
  apply = jax.jit(head.apply)
  embeds = eda.target_embed(target, tp, tokens[:, 1:])
  predicted, _ = apply(hp, features[:, :-1], embeds)
  d1 = jnp.argmax(eda.target_head(target, tp, predicted[:, -1]), -1)
  assert int(drafts[0, 0]) == int(d1[0])
  feats = jnp.concatenate([features[:, :-1], predicted[:, -1:]], 1)
  embeds = jnp.concatenate([embeds, eda.target_embed(target, tp, d1[:, None])],
                           1)
  predicted, _ = apply(hp, feats, embeds)
  d2 = jnp.argmax(eda.target_head(target, tp, predicted[:, -1]), -1)
  assert int(drafts[0, 1]) == int(d2[0])


def test_greedy_equals_target_greedy(models):
  target, tp, head, hp = models
  prompt, lengths = lm.pad_prompts([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5]],
                                   7)
  want, want_n, _ = lm.decode(target, tp, prompt, lengths, jax.random.key(0),
                              max_new=10)
  seq, n, _ = speculative.speculative_decode(
      target, tp, eda.EDADrafter(head, target, 3), {"head": hp, "target": tp},
      prompt, lengths, jax.random.key(0), num_draft=3, max_new=10)
  np.testing.assert_array_equal(n, want_n)
  for row in range(2):
    np.testing.assert_array_equal(seq[row, :n[row]], want[row, :n[row]])


def test_loss_learns_and_stage2_freezes(models):
  target, tp, head, hp = models
  tokens = jax.random.randint(jax.random.key(3), (4, 12), 0, 40)
  _, features, _ = target.apply(tp, tokens)
  weights = jnp.ones(tokens.shape)

  @jax.jit
  def loss(p):
    return eda.loss(head, p, target, tp, tokens, features, weights)

  grads = jax.jit(jax.grad(lambda p: loss(eda.freeze(p))[0]))(hp)["params"]
  for name, g in grads.items():
    norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g))
    assert (norm > 0) == (name in eda.TRAINABLE_STAGE2), name

  tx = optax.adam(2e-2)
  opt = tx.init(hp)
  step = jax.jit(lambda p, o: _update(tx, jax.grad(lambda q: loss(q)[0])(p),
                                      p, o))
  first = loss(hp)
  for _ in range(100):
    hp, opt = step(hp, opt)
  last = loss(hp)
  assert float(last[0]) < 0.3 * float(first[0])
  assert float(last[1]["top1_agreement"]) > 0.9


def _update(tx, grads, params, opt):
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), opt


def test_mahalanobis_scores_match_scipy():
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
  candidates = rng.normal(size=(7, 5)) * 3
  got = eda.mahalanobis_scores(reference, candidates, ridge=0.0)
  inv = np.linalg.inv(np.cov(reference, rowvar=False))
  want = [distance.mahalanobis(c, reference.mean(0), inv) for c in candidates]
  np.testing.assert_allclose(got, want, rtol=1e-8)


def test_mahalanobis_token_scores_are_weighted_means_of_distances():
  rng = np.random.default_rng(1)
  reference = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
  candidates = rng.normal(size=(3, 5, 4)) * 2
  weights = rng.integers(0, 2, size=(3, 5)).astype(float)
  weights[:, 0] = 1.0
  got = eda.mahalanobis_scores(reference, candidates, weights, ridge=0.0)
  inv = np.linalg.inv(np.cov(reference, rowvar=False))
  mu = reference.mean(0)
  for row, w, score in zip(candidates, weights, got):
    dists = [distance.mahalanobis(t, mu, inv) for t in row]
    np.testing.assert_allclose(score, np.dot(dists, w) / w.sum(), rtol=1e-8)


def test_selection_keeps_the_shifted_rows():
  rng = np.random.default_rng(2)
  reference = rng.normal(size=(2000, 6))
  candidates = rng.normal(size=(10, 8, 6))
  shifted = np.array([1, 4, 5, 7, 8])
  candidates[shifted] += 2.0  # these rows' features moved
  weights = np.ones((10, 8))
  scores = eda.mahalanobis_scores(reference, candidates, weights)
  np.testing.assert_array_equal(eda.select_samples(scores, 0.5), shifted)
  rand = eda.select_samples(scores, 0.5, "random", seed=3)
  assert len(set(rand.tolist())) == 5 and not np.array_equal(rand, shifted)
  np.testing.assert_array_equal(
      rand, eda.select_samples(scores, 0.5, "random", seed=3))
  with pytest.raises(ValueError, match="fraction"):
    eda.select_samples(scores, 0.0)
  with pytest.raises(ValueError, match="method"):
    eda.select_samples(scores, 0.5, "largest")
