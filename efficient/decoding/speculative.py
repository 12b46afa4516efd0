"""Lossless speculative decoding (Leviathan, Kalman & Matias, ICML 2023,
arXiv 2211.17192, Algorithm 1; Chen et al., arXiv 2302.01318), chain drafts,
batch ≥ 1, all inside one jit-compiled `lax.while_loop`.

One round per row, committed tokens x_0..x_{n-1}:
  1. the drafter proposes d_1..d_K and the distributions q_1..q_K it drew
     them from (one-hot q for deterministic drafts, e.g. PARD's argmax);
  2. the target scores [x_{n-1}, d_1..d_K] in ONE forward → p_1..p_{K+1};
  3. d_i is accepted while u_i·q_i(d_i) ≤ p_i(d_i) (i.e. u_i ≤ min(1, p/q)),
     left to right; at the first rejection j the correction token is drawn
     from norm(max(0, p_j − q_j)) (Leviathan et al., Sec. 2.3; the fallback
     to p_j when the residual is all zero only triggers on float noise); if
     all K pass the bonus token is drawn from p_{K+1};
  4. n_acc + 1 tokens are emitted; target and draft caches roll back to the
     committed prefix by moving their length pointers (lm.KVCache).
p and q both pass through `lm.Sampling.log_probs` (temperature, top-k,
top-p), so the output follows the *processed* target distribution exactly
(mixing a raw q with a tempered p is the classic bug, reference/draft.md
§1.1). Greedy (temperature 0): accept while d_i == argmax p_i, emit
argmax p_{n_acc+1}; the output equals target greedy decoding.

Metrics: τ = tokens emitted per target forward, bonus/correction token
included (plain decoding has τ = 1; Spec-Bench's "mean accepted tokens"),
and the histogram of n_acc per round, from which `acceptance_by_position`
gives P(d_i accepted | d_1..d_{i-1} accepted).

A drafter is a hashable object (a frozen dataclass) with
  window: int — how many of the last committed tokens each round re-reads
      (2 for an autoregressive draft: after a full acceptance neither d_K
      nor the bonus token is in the draft cache yet);
  uses_features: bool — whether `propose` reads the target's final hidden
      states of committed tokens (EAGLE/EDA-style drafts);
  init(params, prompt, lengths, max_len, features) -> state;
  propose(params, state, context, rng, num_draft, sampling)
      -> (tokens [B, K], log_q [B, K, V], state), where context holds
      seq [B, S], n [B] and (when used) features [B, S, dim];
  commit(state, n) -> state (roll back to the new committed length n).
"""
import functools

import jax
import jax.numpy as jnp

from efficient.decoding import lm


def verify_sampling(rng, log_p, log_q, drafts):
  """Chain speculative sampling (Leviathan et al., Algorithm 1).

  log_p [B, K+1, V] processed target log-probs, log_q [B, K, V] the
  distributions the drafts were drawn from, drafts [B, K]. Returns
  (n_acc [B], tokens [B, K+1]: the drafts with the correction/bonus token at
  index n_acc; entries past it are meaningless).
  """
  k = drafts.shape[1]
  key_u, key_c = jax.random.split(rng)
  p = jnp.exp(log_p)
  q = jnp.exp(log_q)
  pd = jnp.take_along_axis(p[:, :k], drafts[..., None], -1)[..., 0]
  qd = jnp.take_along_axis(q, drafts[..., None], -1)[..., 0]
  u = jax.random.uniform(key_u, pd.shape)
  accept = u * qd <= pd
  n_acc = jnp.sum(jnp.cumprod(accept, axis=1), axis=1)
  rows = jnp.arange(drafts.shape[0])
  j = jnp.minimum(n_acc, k - 1)
  residual = jnp.maximum(p[rows, j] - q[rows, j], 0.0)
  mass = residual.sum(-1, keepdims=True)
  residual = jnp.where(mass > 0, residual, p[rows, j])
  nxt = jnp.where((n_acc == k)[:, None], p[:, k], residual)
  y = lm.sample_categorical(key_c, nxt)
  return n_acc, _place(drafts, n_acc, y)


def verify_greedy(rng, log_p, log_q, drafts):
  """Greedy verification: accept while d_i == argmax p_i (reference/draft.md
  §1.2). log_p may be raw logits (only its argmax is read); rng and log_q
  are unused (same signature as verify_sampling)."""
  del rng, log_q
  target = jnp.argmax(log_p, -1).astype(jnp.int32)  # [B, K+1]
  k = drafts.shape[1]
  n_acc = jnp.sum(jnp.cumprod(drafts == target[:, :k], axis=1), axis=1)
  y = jnp.take_along_axis(target, n_acc[:, None], 1)[:, 0]
  return n_acc, _place(drafts, n_acc, y)


def _place(drafts, n_acc, y):
  tokens = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], 1)
  return tokens.at[jnp.arange(drafts.shape[0]), n_acc].set(y)


def trim(seq, start, n, max_new, eos_id):
  """Final lengths: at most max_new new tokens, cut after the first eos."""
  n = jnp.minimum(n, start + max_new)
  if eos_id is not None:
    pos = jnp.arange(seq.shape[1])[None]
    is_eos = (seq == eos_id) & (pos >= start[:, None]) & (pos < n[:, None])
    first = jnp.min(jnp.where(is_eos, pos, seq.shape[1]), axis=1)
    n = jnp.minimum(n, first + 1)
  return n


@functools.partial(jax.jit, static_argnames=(
    "target", "drafter", "num_draft", "max_new", "sampling", "eos_id",
    "verify"))
def speculative_decode(target, target_params, drafter, draft_params, prompt,
                       lengths, rng, *, num_draft, max_new,
                       sampling=lm.Sampling(), eos_id=None, verify=None):
  """Speculative decoding of `target` with `drafter` proposing `num_draft`
  tokens per round.

  prompt [B, P] right-padded, lengths [B] (each ≥ drafter.window + 1, or
  the first rounds' drafts read a clamped window: still lossless, only
  less often accepted). `verify`
  overrides the acceptance rule (default: verify_greedy when
  sampling.greedy, else verify_sampling; tests pass a deliberately wrong one
  as a negative control). Returns (seq [B, W], n [B] trimmed lengths, stats)
  with stats = {"rounds" [B]: target forwards per row (prefill excluded),
  "accepted_hist" [K+1]: rounds by number of accepted drafts,
  "emitted" [B]: tokens emitted before trimming}.
  """
  k = num_draft
  if verify is None:
    verify = verify_greedy if sampling.greedy else verify_sampling
  seq = lm.sequence_buffer(prompt, max_new + 2 * k + 2)
  width = seq.shape[1]
  cache, hidden = lm.prefill(target, target_params, prompt, lengths, width)
  features = None
  if drafter.uses_features:
    features = jnp.zeros((seq.shape[0], width, hidden.shape[-1]),
                         hidden.dtype)
    features = features.at[:, :hidden.shape[1]].set(hidden)
  draft_state = drafter.init(draft_params, prompt, lengths, width, features)

  def cond(state):
    seq, n = state[0], state[1]
    return ~jnp.all(lm.finished(seq, lengths, n, max_new, eos_id))

  def body(state):
    seq, n, cache, features, draft_state, rng, rounds, hist = state
    done = lm.finished(seq, lengths, n, max_new, eos_id)
    rng, key_d, key_v = jax.random.split(rng, 3)
    context = {"seq": seq, "n": n, "features": features}
    drafts, log_q, draft_state = drafter.propose(
        draft_params, draft_state, context, key_d, k, sampling)
    block = jnp.concatenate([lm.gather_last(seq, n, 1), drafts], axis=1)
    logits, hidden, cache = target.apply(target_params, block, cache)
    # Greedy verification only needs the argmax: skip the softmax.
    log_p = logits if sampling.greedy else sampling.log_probs(logits)
    n_acc, tokens = verify(key_v, log_p, log_q, drafts)
    count = jnp.where(done, 0, n_acc + 1)
    seq = lm.write_tokens(seq, n, tokens, count)
    if features is not None:  # features of x_{n-1}, d_1..d_K at n-1..
      features = jax.vmap(lambda f, h, s: jax.lax.dynamic_update_slice_in_dim(
          f, h, s, 0))(features, hidden.astype(features.dtype), n - 1)
    n = n + count
    rounds = rounds + jnp.where(done, 0, 1)
    hist = hist + jnp.zeros_like(hist).at[n_acc].add(jnp.where(done, 0, 1))
    return (seq, n, cache.rollback(n - 1), features,
            drafter.commit(draft_state, n), rng, rounds, hist)

  state = (seq, lengths, cache, features, draft_state, rng,
           jnp.zeros_like(lengths), jnp.zeros((k + 1,), jnp.int32))
  seq, n, *_, rounds, hist = jax.lax.while_loop(cond, body, state)
  stats = {"rounds": rounds, "accepted_hist": hist, "emitted": n - lengths}
  return seq, trim(seq, lengths, n, max_new, eos_id), stats


def acceptance_by_position(accepted_hist):
  """P(draft i accepted | drafts before it accepted), i = 1..K, from the
  histogram of accepted drafts per round (numpy in, list out)."""
  import numpy as np
  hist = np.asarray(accepted_hist, np.float64)
  k = len(hist) - 1
  reached = [hist[i:].sum() for i in range(k + 1)]  # rounds with ≥ i accepted
  return [reached[i + 1] / reached[i] if reached[i] else float("nan")
          for i in range(k)]


def tau(stats):
  """Tokens per target forward (micro average over rounds), bonus included."""
  return float(jnp.sum(stats["emitted"]) / jnp.maximum(
      jnp.sum(stats["rounds"]), 1))
