"""Exact softmax attention (Vaswani et al., 2017, Eq. 1), the baseline.

  Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d)) V

Which implementation runs (`implementation="auto"`, `choose_implementation`):

  * GPU: cuDNN's fused flash attention (`jax.nn.dot_product_attention(
    implementation="cudnn")`) for fp16/bf16 inputs, head_dim a multiple of 8
    up to 128, no key-padding mask and no dropout — what cuDNN accepts;
    XLA otherwise (cuDNN has no fp32 flash path).
  * TPU: jax's own Pallas flash attention
    (`jax.experimental.pallas.ops.tpu.flash_attention`) when the lengths
    are multiples of 128 and there is no dropout; a key-padding mask goes in
    as segment ids (real tokens 1, padding 0). XLA otherwise.
  * CPU and anything else: XLA (`jax.nn.dot_product_attention`, which XLA
    fuses).

We do not hand-write a flash attention: jax and cuDNN ship tuned ones. The
GPU and TPU branches are chosen by the rules above but have not been run on
such hardware yet (no device lent to this work so far); pass
`implementation="xla"` to rule them out. With `dropout_rate > 0` (the LRA
harness drops 10% of the attention probabilities during training) the
weights are formed explicitly, since the fused ops have no dropout. Padded
keys get zero weight; queries at padded positions still produce outputs
(callers ignore them).
"""
import math

import jax
import jax.numpy as jnp

from efficient.attention import dropout as dropout_lib

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_tpu")


def choose_implementation(platform, dtype, *, head_dim, q_length, kv_length,
                          masked, dropout):
  """The implementation "auto" resolves to (see the module docstring)."""
  if dropout:
    return "xla"
  if platform == "gpu":
    cudnn_ok = (jnp.dtype(dtype) in (jnp.dtype(jnp.float16),
                                     jnp.dtype(jnp.bfloat16))
                and head_dim % 8 == 0 and head_dim <= 128 and not masked)
    return "cudnn" if cudnn_ok else "xla"
  if platform == "tpu" and q_length % 128 == 0 and kv_length % 128 == 0:
    return "pallas_tpu"
  return "xla"


def _pallas_tpu(q, k, v, mask, causal):
  from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [b, h, n, d]
  segment_ids = None
  if mask is not None:
    segment_ids = flash_attention.SegmentIds(
        q=jnp.ones(q.shape[:2], jnp.int32), kv=mask.astype(jnp.int32))
  out = flash_attention.flash_attention(
      heads_first(q), heads_first(k), heads_first(v),
      segment_ids=segment_ids, causal=causal,
      sm_scale=1 / math.sqrt(q.shape[-1]))
  return heads_first(out)


def softmax_attention(q, k, v, *, mask=None, causal=False,
                      implementation="auto", dropout_rate=0.0,
                      dropout_rng=None, dropout_generator="threefry"):
  """Softmax attention over `[batch, length, heads, head_dim]` inputs.

  Args:
    q: queries `[batch, q_length, heads, head_dim]`.
    k: keys `[batch, kv_length, heads, head_dim]`.
    v: values `[batch, kv_length, heads, head_dim]`.
    mask: optional `[batch, kv_length]` bool, True for real keys.
    causal: mask out keys after each query (autoregressive decoding).
    implementation: "auto" (by device and shapes, module docstring),
      "xla", "cudnn" (GPU) or "pallas_tpu" (TPU).
    dropout_rate: probability of zeroing an attention weight (training only);
      needs `dropout_rng`.
    dropout_rng: PRNG key for the dropout mask.
    dropout_generator: "threefry" (jax.random) or "hash" (fast on CPU;
      efficient/attention/dropout.py).

  Returns:
    `[batch, q_length, heads, head_dim]`, in the dtype of `q`.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}: one of "
                     f"{IMPLEMENTATIONS}")
  if implementation == "auto":
    implementation = choose_implementation(
        jax.default_backend(), q.dtype, head_dim=q.shape[-1],
        q_length=q.shape[1], kv_length=k.shape[1], masked=mask is not None,
        dropout=dropout_rate > 0)
  if implementation == "pallas_tpu" and dropout_rate == 0.0:
    return _pallas_tpu(q, k, v, mask, causal)
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
  weights = dropout_lib.dropout(weights, dropout_rate, dropout_rng,
                                dropout_generator)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
