"""Autoregressive draft: a small Llama sharing the target's tokenizer,
drafting K tokens with K sequential forwards (vanilla speculative decoding,
Leviathan et al. 2023; PARD's "VSD" baseline, `para=False` in PARD's
`pard_infer.py`).

Each round the draft re-reads the last two committed tokens (`window = 2`):
after a round where all K drafts pass, neither d_K nor the bonus token has
its KV in the draft cache; re-writing one already-valid entry otherwise costs
nothing extra (the forward is memory-bound).
"""
import dataclasses

import jax
import jax.numpy as jnp

from efficient.decoding import lm


@dataclasses.dataclass(frozen=True)
class ARDrafter:
  model: lm.Llama
  window: int = 2
  uses_features: bool = False

  def init(self, params, prompt, lengths, max_len, features=None):
    cache, _ = lm.prefill(self.model, params, prompt, lengths, max_len)
    return cache.rollback(lengths - self.window)

  def propose(self, params, cache, context, rng, num_draft, sampling):
    tokens = lm.gather_last(context["seq"], context["n"], self.window)
    logits, _, cache = self.model.apply(params, tokens, cache)
    keys = jax.random.split(rng, num_draft)
    log_q = draft_log_probs(logits[:, -1], sampling)
    first = sample_draft(keys[0], log_q, sampling)

    def step(carry, key):  # feed d_i, draw d_{i+1}
      token, cache = carry
      logits, _, cache = self.model.apply(params, token[:, None], cache)
      log_q = draft_log_probs(logits[:, -1], sampling)
      token = sample_draft(key, log_q, sampling)
      return (token, cache), (token, log_q)

    (_, cache), (rest, rest_log_q) = jax.lax.scan(
        step, (first, cache), keys[1:])
    tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
    log_q = jnp.concatenate(
        [log_q[:, None], jnp.swapaxes(rest_log_q, 0, 1)], axis=1)
    return tokens, log_q, cache

  def commit(self, cache, n):
    return cache.rollback(n - self.window)


def draft_log_probs(logits, sampling):
  """q: the processed distribution (greedy: one-hot at the argmax)."""
  if sampling.greedy:
    return jnp.log(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]))
  return sampling.log_probs(logits)


def sample_draft(key, log_q, sampling):
  if sampling.greedy:
    return jnp.argmax(log_q, -1).astype(jnp.int32)
  return lm.sample_categorical(key, jnp.exp(log_q))
