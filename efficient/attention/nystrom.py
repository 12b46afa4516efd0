"""Nyströmformer attention (Xiong et al., AAAI 2021, arXiv 2102.03902).

Softmax attention S = softmax(Q Kᵀ / √d) is approximated from m landmarks
(Eq. 14 of the paper):

  Ŝ V = softmax(Q K̃ᵀ) · A⁺ · softmax(Q̃ Kᵀ) V,    A = softmax(Q̃ K̃ᵀ),

with Q̃, K̃ the means of m contiguous segments of Q and K (Sec. 3.3, "segment
means") and A⁺ the Moore–Penrose pseudo-inverse computed by the iterative
scheme of Razavi et al. (2014) (Eq. 15, Lemma 1):

  Z_{j+1} = ¼ Z_j (13I − A Z_j (15I − A Z_j (7I − A Z_j))),  6 iterations.

The product is evaluated right to left, so time and memory are O(n·m).
Details follow the original code (mlpen/Nystromformer `LRA/code/
attention_nystrom.py`):

  * Q and K are scaled by d^(-1/4) each and zeroed at padded positions; the
    zeros enter the segment means; only softmax(Q̃ Kᵀ) masks padded keys.
  * The 6-step iteration is used, never an exact pseudo-inverse: A has rank
    ≤ d < m, and the truncated iteration acts as a regulariser (an exact
    `pinv` makes the approximation much worse; reference/attention.md §1.5).
    It runs in float32 whatever the input dtype.
  * `m ≥ n` takes the exact softmax path, as the original does for m = n.
  * Lengths that m does not divide use the original's T2T-ViT scheme: the
    first (segs+1)·m − n landmarks average segs = n // m tokens, the others
    segs + 1 (`token_nystromformer.py`). (The original LRA code, and the
    Hugging Face port, instead require n = m·segment length, and the port
    crashes or silently mixes examples otherwise.)

Pseudo-inverse initialisation `pinv_init`:
  * "per_matrix" (our default; the repo's later "exact" option, its README's
    recommendation): Z₀ = Aᵀ / ‖A‖₁ for each (example, head) matrix.
  * "original": the max column sum is taken over the whole batch and all
    heads (mlpen/Nystromformer#3), so one example's output depends on the
    other examples in its batch — a bug for evaluation and for data-parallel
    sharding (it needs a cross-device max). Kept to reproduce the paper.

The depthwise convolution on V (kernel 35 for LRA) has parameters, so it
lives in the Flax layer (`efficient.attention.encoder.SelfAttention`,
`value_conv_size`).

Causal masking: not supported. Segment-mean landmarks pool over future
tokens, so there is no faithful causal form (mlpen/Nystromformer#7); asking
for it raises.
"""
import jax
import jax.numpy as jnp
import numpy as np

_MASK_VALUE = -1e9  # The original's additive key mask.


def segment_means_matrix(length, num_landmarks):
  """[m, n] averaging matrix of the (possibly uneven) contiguous segments."""
  segs = length // num_landmarks
  num_short = (segs + 1) * num_landmarks - length  # Landmarks of segs tokens.
  sizes = [segs] * num_short + [segs + 1] * (num_landmarks - num_short)
  matrix = np.zeros((num_landmarks, length), np.float32)
  start = 0
  for i, size in enumerate(sizes):
    matrix[i, start:start + size] = 1.0 / size
    start += size
  return matrix


def segment_means(x, num_landmarks):
  """Means of contiguous segments along axis -2 of `[..., n, d]`, in O(n·d).

  The same segments as `segment_means_matrix` (short ones first), computed
  with reshapes instead of an [m, n] matmul.
  """
  length = x.shape[-2]
  segs = length // num_landmarks
  num_short = (segs + 1) * num_landmarks - length
  split = num_short * segs
  parts = []
  if num_short:
    parts.append(x[..., :split, :].reshape(
        *x.shape[:-2], num_short, segs, x.shape[-1]).mean(-2))
  if num_landmarks - num_short:
    parts.append(x[..., split:, :].reshape(
        *x.shape[:-2], num_landmarks - num_short, segs + 1,
        x.shape[-1]).mean(-2))
  return jnp.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]


def iterative_pinv(a, iterations=6, init="per_matrix"):
  """Razavi et al.'s iteration for A⁺ over the last two axes (Eq. 15).

  Args:
    a: `[..., m, m]` row-stochastic matrices (softmax outputs).
    iterations: number of steps (6 in the paper).
    init: "per_matrix" (Z₀ = Aᵀ/‖A‖₁ per matrix) or "original" (one scalar
      over the whole array, as in the original code).
  """
  identity = jnp.eye(a.shape[-1], dtype=a.dtype)
  col_sums = a.sum(-2)
  if init == "per_matrix":
    scale = col_sums.max(-1)[..., None, None]
  elif init == "original":
    scale = col_sums.max()
  else:
    raise ValueError(f"pinv_init={init!r}: 'per_matrix' or 'original'")
  z = jnp.swapaxes(a, -1, -2) / scale
  for _ in range(iterations):
    az = a @ z
    z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity
                                                                - az)))
  return z


def nystrom_attention(q, k, v, *, mask=None, num_landmarks=64,
                      pinv_iterations=6, pinv_init="per_matrix",
                      causal=False):
  """Nyström approximation of softmax attention.

  Args:
    q: queries `[batch, length, heads, head_dim]`.
    k: keys, same shape.
    v: values, same shape.
    mask: optional `[batch, length]` bool, True for real tokens.
    num_landmarks: m; `m >= length` computes exact softmax attention.
    pinv_iterations: steps of the pseudo-inverse iteration (6).
    pinv_init: "per_matrix" (default) or "original"; see the module docstring.
    causal: must be False (no faithful causal form exists).

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of `v`.
  """
  if causal:
    raise ValueError("nystrom_attention has no causal form: segment-mean "
                     "landmarks average over future tokens")
  if q.shape[1] != k.shape[1]:
    raise ValueError("nystrom_attention is self-attention: q and k lengths "
                     f"differ ({q.shape[1]} vs {k.shape[1]})")
  batch, length, _, head_dim = q.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)
  keep = mask[:, :, None, None].astype(jnp.float32)
  # [batch, heads, length, head_dim], float32 (the original runs in fp32).
  q, k = (jnp.swapaxes(x.astype(jnp.float32) * keep, 1, 2) / head_dim**0.25
          for x in (q, k))
  values = jnp.swapaxes(v.astype(jnp.float32), 1, 2)
  key_bias = jnp.where(mask, 0.0, _MASK_VALUE)[:, None, None, :]

  if num_landmarks >= length:
    weights = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) + key_bias, axis=-1)
    out = weights @ values
  else:
    out = landmark_attention(q, k, values, key_bias, num_landmarks,
                             pinv_iterations, pinv_init)
  return jnp.swapaxes(out, 1, 2).astype(v.dtype)


def landmark_attention(q, k, v, key_bias, landmarks, pinv_iterations=6,
                       pinv_init="per_matrix"):
  """Eq. 14 on `[batch, heads, length, dim]` inputs, given the landmark map.

  Args:
    q: scaled, masked queries `[batch, heads, n, d]` (float32).
    k: scaled, masked keys, same shape.
    v: values, same shape.
    key_bias: `[batch, 1, 1, n]` additive mask (0 or -1e9).
    landmarks: m, the number of segment means; or an `[m, n]` averaging
      matrix (the identity gives one token per landmark, where the
      approximation is exact up to the pinv error).
    pinv_iterations: steps of `iterative_pinv`.
    pinv_init: its initialisation.
  """
  if isinstance(landmarks, int):
    q_land, k_land = segment_means(q, landmarks), segment_means(k, landmarks)
  else:
    q_land = jnp.einsum("mn,bhnd->bhmd", landmarks, q)
    k_land = jnp.einsum("mn,bhnd->bhmd", landmarks, k)
  kernel_1 = jax.nn.softmax(q @ jnp.swapaxes(k_land, -1, -2), axis=-1)
  kernel_2 = jax.nn.softmax(q_land @ jnp.swapaxes(k_land, -1, -2), axis=-1)
  kernel_3 = jax.nn.softmax(q_land @ jnp.swapaxes(k, -1, -2) + key_bias,
                            axis=-1)
  pinv = iterative_pinv(kernel_2, pinv_iterations, pinv_init)
  # Right to left: [n, m] @ ([m, m] @ ([m, n] @ [n, d])).
  return kernel_1 @ (pinv @ (kernel_3 @ v))
