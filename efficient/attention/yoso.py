"""YOSO attention (Zeng et al., "You Only Sample (Almost) Once", ICML 2021,
arXiv 2111.09714).

For unit vectors q, k and τ-bit hyperplane LSH (SimHash), the collision
probability is (Sec. 3, Eq. 4)

  P[h(q) = h(k)] = (1 − arccos(q·k)/π)^τ.

YOSO replaces softmax(QKᵀ)V by this Bernoulli kernel, un-normalised:

  * YOSO-E (expectation, O(n²)):  Y = E V,  E_ij = (1 − arccos(q̂_i·k̂_j)/π)^τ
    μ_i μ_j  (Eq. 5; μ the padding mask, q̂, k̂ L2-normalised).
  * YOSO (sampled, O(n·m·d)): m independent τ-bit hashes h_1..h_m,
    Y_i = (1/m) Σ_h Σ_{j: h(q_i) = h(k_j)} μ_i μ_j V_j  (Eq. 6), an unbiased
    estimate of YOSO-E. It is computed by bucket cumulation: per hash, V is
    added into a table of 2^τ buckets at the keys' codes, and each query
    reads the bucket of its own code (Sec. 3.2, Alg. 1).

There is no softmax denominator: the output row is L2-normalised (the
original `X = normalize(X)`); Nyströmformer-style conv residuals are not part
of the LRA YOSO configs and live in the Flax layer anyway.

Hashing follows the original fast hash (`yoso_v1/cuda/
fast_lsh_cumulation_cuda.cu::fast_hash_ver1_cuda_kernel`): for each example
and head, each "part" rotates x by H D₃ H D₂ H D₁ (H the unnormalised
Walsh–Hadamard matrix, Dᵢ random ±1 diagonals) and cuts the rotated vector
into blocks of τ coordinates; block h gives code Σ_t [x_{hτ+t} > 0]·2^t.
d // τ hashes come from each part, ceil(m / (d // τ)) parts are drawn. The
dimension is zero-padded to a power of two ≥ 32 (the original pads head_dim
< 32 to 32 and needs a power of two). `hashing="gaussian"` is the original's
non-fast alternative (a Gaussian projection with the same bit packing).
The fast hash is only approximately SimHash: three random-sign Hadamard
rounds are not a uniformly random rotation, so averaging many draws leaves
a small bias against YOSO-E (about 6% relative error on a 16-dimensional
toy, tests/attention/test_yoso.py), where the Gaussian hash converges like
1/sqrt(draws).

Backward (Sec. 3.3): both forms use the original approximate gradient,
implemented with `jax.custom_vjp` on the normalised q̂, k̂ (autodiff then
carries it through the normalisation, as PyTorch autograd does there):

  dV = Bᵀ dO,  dQ_i = Σ_j B_ij (dO_i·V_j)(τ/2) K_j,
  dK_j = Σ_i B_ij (dO_i·V_j)(τ/2) Q_i,

with B = E for YOSO-E and B the sampled collision matrix for YOSO; i.e.
∂E/∂(q·k) is replaced by (τ/2)·E. In the sampled form these are computed by
bucket cumulation as well (the original `lsh_weighted_cumulation`: per hash,
tables of V_j ⊗ K_j read back with dO_i), so the backward has no n² term
either; its cost is O(m·n·d²). `backward="expectation"` is the original's
`n2_backward` (the O(n²) expectation form of the same formulas).

Differences from the original code, each deliberate:
  * q̂·k̂ is clipped to [−1, 1] before arccos (rounding can exceed 1 and give
    NaN in the original's YOSO-E).
  * Q and K are always normalised; the original skips it for the sampled
    form at eval time, which changes nothing because hash codes are
    scale-invariant.
  * Hash tables cover the whole value dimension at once (the CUDA kernels
    loop over 32-wide slices and require n to be a multiple of 8; any n
    works here).

Padding: padded keys never enter a bucket and padded queries output zeros,
so changing padded tokens never changes real outputs (the Hugging Face port
ignores the padding mask in this path; reference/attention.md §2.4).

Causal masking: not supported. The sampled form sums whole buckets, which
mix past and future keys; a causal YOSO would need a prefix-sum per bucket
that the paper does not define (Hugging Face removed its decoder variant,
PR #15091). Asking for it raises.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

BACKWARDS = ("lsh", "expectation")


def _normalize(x, eps=1e-12):
  """Rows of x / max(‖x‖, eps): `torch.nn.functional.normalize`."""
  # Through the squared norm: the norm's own gradient is NaN at zero rows.
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))


# Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 − x)·Σ a_i x^i on [0, 1],
# |error| ≤ 2e-8.
_ACOS_COEFFS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
                0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)


def fast_arccos(x):
  """arccos on [−1, 1] by A&S 4.4.46 (|error| ≤ 2e-8 + rounding).

  Plain multiply-adds and one sqrt, which XLA vectorises; `jnp.arccos` on
  CPU costs about 4x the matmul producing its input, and YOSO-E evaluates
  it n² times per head.
  """
  a = jnp.abs(x)
  poly = _ACOS_COEFFS[-1]
  for c in _ACOS_COEFFS[-2::-1]:
    poly = poly * a + c
  angle = jnp.sqrt(1.0 - a) * poly
  return jnp.where(x < 0, math.pi - angle, angle)


def collision_probability(q, k, hash_bits):
  """E = (1 − arccos(q·k)/π)^τ for unit rows, `[..., n, d]` -> `[..., n, n]`."""
  cosine = jnp.clip(q @ jnp.swapaxes(k, -1, -2), -1.0, 1.0)
  return (1.0 - fast_arccos(cosine) / math.pi) ** hash_bits


def hadamard_matrix(dim):
  """The unnormalised Walsh–Hadamard matrix H_ij = (−1)^popcount(i & j)."""
  if dim & (dim - 1):
    raise ValueError(f"Hadamard transform needs a power of two, got {dim}")
  idx = np.arange(dim)
  bits = np.bitwise_and(idx[:, None], idx[None, :])
  parity = np.vectorize(lambda x: bin(x).count("1") % 2)(bits)
  return jnp.asarray(1 - 2 * parity, jnp.float32)


def hash_dim(head_dim):
  """Dimension the hash works in: next power of two, at least 32."""
  return max(32, 1 << (head_dim - 1).bit_length())


def hash_codes(rng, q, k, *, num_hashes, hash_bits, hashing="hadamard"):
  """τ-bit codes of q and k under m random hashes shared by both.

  Args:
    rng: PRNG key; one independent hash family per leading index.
    q: `[..., n, d]` queries (any scale: codes are scale-invariant).
    k: `[..., n, d]` keys.
    num_hashes: m.
    hash_bits: τ (codes lie in [0, 2^τ)).
    hashing: "hadamard" (the original fast hash) or "gaussian".

  Returns:
    (q_codes, k_codes), int32 `[..., m, n]`.
  """
  lead, dim = q.shape[:-2], hash_dim(q.shape[-1])
  pad = [(0, 0)] * (q.ndim - 1) + [(0, dim - q.shape[-1])]
  q, k = jnp.pad(q, pad), jnp.pad(k, pad)
  if hashing == "hadamard":
    if hash_bits > dim:
      raise ValueError(f"hash_bits={hash_bits} exceeds the hash dimension "
                       f"{dim}")
    per_part = dim // hash_bits
    parts = -(-num_hashes // per_part)
    signs = jax.random.rademacher(rng, (*lead, 3, parts, dim), jnp.float32)
    h = hadamard_matrix(dim)

    # Row vectors: x D1 H D2 H D3 H = x R, one [d, d] matrix per part, of
    # which only the per_part·τ columns that become bits are kept.
    rotation = signs[..., 0, :, :, None] * h
    for r in (1, 2):
      rotation = (rotation * signs[..., r, :, None, :]) @ h
    rotation = rotation[..., :per_part * hash_bits]  # [..., parts, d, pτ]

    def codes(x):
      bits = x[..., None, :, :] @ rotation > 0  # [..., parts, n, pτ]
      bits = bits.reshape(*bits.shape[:-1], per_part, hash_bits)
      code = (bits * (1 << jnp.arange(hash_bits))).sum(-1)  # [.., P, n, pp]
      code = jnp.moveaxis(code, -1, -2)  # [..., parts, per_part, n]
      code = code.reshape(*code.shape[:-3], parts * per_part, code.shape[-1])
      return code[..., :num_hashes, :].astype(jnp.int32)
  elif hashing == "gaussian":
    proj = jax.random.normal(rng, (*lead, dim, num_hashes * hash_bits))

    def codes(x):
      bits = (x @ proj > 0).reshape(*x.shape[:-1], num_hashes, hash_bits)
      code = (bits * (1 << jnp.arange(hash_bits))).sum(-1)
      return jnp.swapaxes(code, -1, -2).astype(jnp.int32)
  else:
    raise ValueError(f"hashing={hashing!r}: 'hadamard' or 'gaussian'")
  return codes(q), codes(k)


# ----------------------------------------------------------------- Kernels
# All on `[batch·heads, ...]`: values [g, n, e], codes [g, m, n], masks
# [g, n] float. Loops over hashes with lax.scan keep memory at one table.


def lsh_cumulation(q_codes, k_codes, q_mask, k_mask, values, num_buckets):
  """Y_i = (1/m) Σ_h Σ_{j: h(q_i)=h(k_j)} μ_i μ_j values_j (bucket tables)."""
  groups, num_hashes = q_codes.shape[:2]
  rows = jnp.arange(groups)[:, None]
  values = values * k_mask[..., None]

  def one_hash(acc, codes):
    qc, kc = codes
    table = jnp.zeros((groups, num_buckets, values.shape[-1]), values.dtype)
    table = table.at[rows, kc].add(values)
    return acc + table[rows, qc], None

  init = jnp.zeros(q_codes.shape[:1] + (q_codes.shape[-1], values.shape[-1]),
                   values.dtype)
  out, _ = jax.lax.scan(one_hash, init, (jnp.swapaxes(q_codes, 0, 1),
                                         jnp.swapaxes(k_codes, 0, 1)))
  return out * q_mask[..., None] / num_hashes


def lsh_weighted_cumulation(q_codes, k_codes, q_mask, k_mask, q_weight,
                            k_weight, values, num_buckets):
  """Y_i = (1/m) Σ_h Σ_{j: h(q_i)=h(k_j)} μ_i μ_j (q_weight_i·k_weight_j) v_j.

  The original's `lsh_weighted_cumulation`: per hash, a table of
  k_weight_j ⊗ v_j per bucket, contracted with q_weight_i at the query's
  bucket. Memory: one [groups, 2^τ, e, d] table at a time.
  """
  groups, num_hashes = q_codes.shape[:2]
  rows = jnp.arange(groups)[:, None]
  outer = (k_weight * k_mask[..., None])[..., :, None] * values[..., None, :]

  def one_hash(acc, codes):
    qc, kc = codes
    table = jnp.zeros((groups, num_buckets) + outer.shape[-2:], outer.dtype)
    table = table.at[rows, kc].add(outer)
    return acc + jnp.einsum("gne,gned->gnd", q_weight, table[rows, qc]), None

  init = jnp.zeros(q_weight.shape[:2] + values.shape[-1:], values.dtype)
  out, _ = jax.lax.scan(one_hash, init, (jnp.swapaxes(q_codes, 0, 1),
                                         jnp.swapaxes(k_codes, 0, 1)))
  return out * q_mask[..., None] / num_hashes


def _expectation_weights(q, k, q_mask, k_mask, hash_bits):
  weights = collision_probability(q, k, hash_bits)
  return weights * q_mask[..., :, None] * k_mask[..., None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def expectation_cumulation(q, k, v, q_mask, k_mask, hash_bits):
  """YOSO-E: (E ⊙ μμᵀ) V with the original approximate backward."""
  return _expectation_weights(q, k, q_mask, k_mask, hash_bits) @ v


def _expectation_fwd(q, k, v, q_mask, k_mask, hash_bits):
  # E is kept for the backward (as the original's ctx does): recomputing
  # it costs n² arccos evaluations, the most expensive part on CPU.
  weights = _expectation_weights(q, k, q_mask, k_mask, hash_bits)
  return weights @ v, (q, k, v, weights)


def _expectation_backward(q, k, v, weights, hash_bits, grad):
  weighted = (grad @ jnp.swapaxes(v, -1, -2)) * weights * (hash_bits / 2)
  return (weighted @ k, jnp.swapaxes(weighted, -1, -2) @ q,
          jnp.swapaxes(weights, -1, -2) @ grad)


def _expectation_bwd(hash_bits, residuals, grad):
  dq, dk, dv = _expectation_backward(*residuals, hash_bits, grad)
  return dq, dk, dv, None, None


expectation_cumulation.defvjp(_expectation_fwd, _expectation_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def sampled_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits,
                       backward="lsh"):
  """Sampled YOSO: B V with B the collision matrix of the given codes."""
  del q, k, backward
  return lsh_cumulation(q_codes, k_codes, q_mask, k_mask, v, 2**hash_bits)


def _sampled_fwd(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits,
                 backward):
  out = sampled_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask,
                           hash_bits, backward)
  return out, (q, k, v, q_codes, k_codes, q_mask, k_mask)


def _sampled_bwd(hash_bits, backward, residuals, grad):
  q, k, v, q_codes, k_codes, q_mask, k_mask = residuals
  if backward == "expectation":  # The original's n2_backward.
    weights = _expectation_weights(q, k, q_mask, k_mask, hash_bits)
    dq, dk, dv = _expectation_backward(q, k, v, weights, hash_bits, grad)
  else:
    buckets, half_tau = 2**hash_bits, hash_bits / 2
    dv = lsh_cumulation(k_codes, q_codes, k_mask, q_mask, grad, buckets)
    dq = lsh_weighted_cumulation(q_codes, k_codes, q_mask, k_mask, grad, v,
                                 half_tau * k, buckets)
    dk = lsh_weighted_cumulation(k_codes, q_codes, k_mask, q_mask, v, grad,
                                 half_tau * q, buckets)
  return dq, dk, dv, None, None, None, None


sampled_cumulation.defvjp(_sampled_fwd, _sampled_bwd)


def yoso_attention(q, k, v, *, mask=None, hash_bits=11, num_hashes=32,
                   sampled=True, rng=None, hashing="hadamard",
                   backward="lsh", causal=False):
  """YOSO attention, sampled (default) or its expectation YOSO-E.

  Args:
    q: queries `[batch, length, heads, head_dim]`.
    k: keys, same shape.
    v: values, same shape.
    mask: optional `[batch, length]` bool, True for real tokens.
    hash_bits: τ, bits per hash code (LRA: ListOps 11, image 10, text 12).
    num_hashes: m, independent hashes averaged (LRA: 32).
    sampled: True for LSH-sampled YOSO, False for YOSO-E (O(n²)).
    rng: PRNG key for the hash functions; required when `sampled`.
    hashing: "hadamard" (the original's fast hash) or "gaussian".
    backward: "lsh" (bucket cumulation, the LRA default) or "expectation"
      (the original's O(n²) `n2_backward`); sampled form only.
    causal: must be False (see the module docstring).

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of `v`: L2-normalised
    rows, zeros at padded positions.
  """
  if causal:
    raise ValueError("yoso_attention has no causal form: LSH buckets sum "
                     "past and future keys alike")
  if q.shape[1] != k.shape[1]:
    raise ValueError("yoso_attention is self-attention: q and k lengths "
                     f"differ ({q.shape[1]} vs {k.shape[1]})")
  if backward not in BACKWARDS:
    raise ValueError(f"backward={backward!r}: one of {BACKWARDS}")
  if sampled and rng is None:
    raise ValueError("sampled yoso_attention needs rng= (a PRNG key for the "
                     "hash functions); sampled=False is deterministic")
  batch, length, heads, head_dim = q.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)

  def groups(x):  # [b, n, h, d] -> [b·h, n, d], float32.
    return jnp.swapaxes(x.astype(jnp.float32), 1, 2).reshape(
        batch * heads, length, x.shape[-1])

  qn, kn, values = _normalize(groups(q)), _normalize(groups(k)), groups(v)
  mu = jnp.repeat(mask.astype(jnp.float32), heads, axis=0)
  if sampled:
    q_codes, k_codes = hash_codes(
        rng, jax.lax.stop_gradient(qn), jax.lax.stop_gradient(kn),
        num_hashes=num_hashes, hash_bits=hash_bits, hashing=hashing)
    out = sampled_cumulation(qn, kn, values, q_codes, k_codes, mu, mu,
                             hash_bits, backward)
  else:
    out = expectation_cumulation(qn, kn, values, mu, mu, hash_bits)
  out = _normalize(out).reshape(batch, heads, length, -1)
  return jnp.swapaxes(out, 1, 2).astype(v.dtype)
