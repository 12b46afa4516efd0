"""Exact softmax attention (Vaswani et al., 2017, Eq. 1), the baseline.

  Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d)) V

Computed by `jax.nn.dot_product_attention`, which lets XLA (or cuDNN, when
asked for) fuse it. Padded keys get zero weight; queries at padded positions
still produce outputs (callers ignore them).
"""
import jax


def softmax_attention(q, k, v, *, mask=None, causal=False,
                      implementation=None):
  """Softmax attention over `[batch, length, heads, head_dim]` inputs.

  Args:
    q: queries `[batch, q_length, heads, head_dim]`.
    k: keys `[batch, kv_length, heads, head_dim]`.
    v: values `[batch, kv_length, heads, head_dim]`.
    mask: optional `[batch, kv_length]` bool, True for real keys.
    causal: mask out keys after each query (autoregressive decoding).
    implementation: passed to `jax.nn.dot_product_attention` (None lets jax
      choose; "cudnn" on GPU; "xla").

  Returns:
    `[batch, q_length, heads, head_dim]`, in the dtype of `q`.
  """
  if mask is not None:
    mask = mask[:, None, None, :]  # -> [batch, heads, q, kv] by broadcasting.
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation=implementation)
