"""Exact softmax attention (Vaswani et al., 2017, Eq. 1), the baseline.

  Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d)) V

Computed by `jax.nn.dot_product_attention`, which lets XLA (or cuDNN, when
asked for) fuse it. With `dropout_rate > 0` (the LRA harness drops 10% of the
attention probabilities during training) the weights are formed explicitly,
since the fused op has no dropout. Padded keys get zero weight; queries at
padded positions still produce outputs (callers ignore them).
"""
import jax
import jax.numpy as jnp


def softmax_attention(q, k, v, *, mask=None, causal=False,
                      implementation=None, dropout_rate=0.0,
                      dropout_rng=None):
  """Softmax attention over `[batch, length, heads, head_dim]` inputs.

  Args:
    q: queries `[batch, q_length, heads, head_dim]`.
    k: keys `[batch, kv_length, heads, head_dim]`.
    v: values `[batch, kv_length, heads, head_dim]`.
    mask: optional `[batch, kv_length]` bool, True for real keys.
    causal: mask out keys after each query (autoregressive decoding).
    implementation: passed to `jax.nn.dot_product_attention` (None lets jax
      choose; "cudnn" on GPU; "xla").
    dropout_rate: probability of zeroing an attention weight (training only);
      needs `dropout_rng`.
    dropout_rng: PRNG key for the dropout mask.

  Returns:
    `[batch, q_length, heads, head_dim]`, in the dtype of `q`.
  """
  if mask is not None:
    mask = mask[:, None, None, :]  # -> [batch, heads, q, kv] by broadcasting.
  if causal:
    q_len, kv_len = q.shape[1], k.shape[1]
    lower = jnp.tril(jnp.ones((q_len, kv_len), bool), kv_len - q_len)
    mask = lower if mask is None else mask & lower
  if dropout_rate == 0.0:
    return jax.nn.dot_product_attention(q, k, v, mask=mask,
                                        implementation=implementation)
  if dropout_rng is None:
    raise ValueError("softmax_attention: dropout_rate > 0 needs dropout_rng")
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(
      jnp.asarray(q.shape[-1], q.dtype))
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
  weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
