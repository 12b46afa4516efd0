"""Plain-jnp oracle for YOSO's LSH hashing and bucket cumulation.

YOSO (Zeng et al., ICML 2021, arXiv 2111.09714, Sec. 3.2, Alg. 1) hashes
unit queries and keys with m τ-bit codes and replaces softmax attention by

  Y_i = (1/m) Σ_h Σ_{j: c_h(k_j) = c_h(q_i)} μ_i μ_j V_j         (Eq. 6)

computed by bucket cumulation: per hash h, V is added into a table of 2^τ
buckets at the keys' codes, and each query reads its own bucket.

Hashing: codes come from the signs of x·R for one [d, m·τ] matrix R per
group (the original's fast Hadamard hash and its Gaussian alternative both
have this form; `efficient.attention.yoso.hash_rotation` builds R), packed
little-endian, τ bits per hash: c_h(x) = Σ_t [x·R_{:, hτ+t} > 0] 2^t.

Backward (Sec. 3.3, the original's LSH backward): with B the collision
matrix above, dV = Bᵀ dO, dQ_i = Σ_j B_ij (dO_i·V_j)(τ/2) K_j and
dK_j = Σ_i B_ij (dO_i·V_j)(τ/2) Q_i, as bucket cumulations of weighted
values (`weighted_cumulation`), one weight dimension at a time.
"""
import jax.numpy as jnp


def hash_codes(x, rotation, hash_bits, num_hashes):
  """[g, m, n] int32 codes of x [g, n, d] under rotation [g, d, ≥ m·τ]."""
  bits = jnp.einsum("gnd,gdc->gnc", x.astype(jnp.float32),
                    rotation[..., :num_hashes * hash_bits].astype(
                        jnp.float32)) > 0
  bits = bits.reshape(*bits.shape[:2], num_hashes, hash_bits)
  codes = (bits * (1 << jnp.arange(hash_bits))).sum(-1)
  return jnp.swapaxes(codes, 1, 2).astype(jnp.int32)


def cumulation(q_codes, k_codes, q_mask, k_mask, values, hash_bits):
  """Y [g, n, e] of Eq. 6 by bucket tables (float32)."""
  groups, num_hashes = q_codes.shape[:2]
  rows = jnp.arange(groups)[:, None]
  values = values.astype(jnp.float32) * k_mask[..., None]
  out = jnp.zeros(q_codes.shape[:1] + q_codes.shape[2:] + values.shape[-1:],
                  jnp.float32)
  for h in range(num_hashes):
    table = jnp.zeros((groups, 2**hash_bits, values.shape[-1]), jnp.float32)
    table = table.at[rows, k_codes[:, h]].add(values)
    out = out + table[rows, q_codes[:, h]]
  return out * q_mask[..., None] / num_hashes


def weighted_cumulation(q_codes, k_codes, q_mask, k_mask, q_weight,
                        k_weight, values, hash_bits):
  """Y_i = (1/m) Σ_h Σ_{j collides} μ_i μ_j (q_weight_i·k_weight_j) v_j."""
  out = 0.0
  for t in range(q_weight.shape[-1]):
    out = out + q_weight[..., t, None] * cumulation(
        q_codes, k_codes, q_mask, k_mask, k_weight[..., t, None] * values,
        hash_bits)
  return out


def lsh_backward(q, k, v, grad, q_codes, k_codes, q_mask, k_mask, hash_bits):
  """(dQ, dK, dV) of the original LSH backward (module docstring)."""
  half_tau = hash_bits / 2
  dv = cumulation(k_codes, q_codes, k_mask, q_mask, grad, hash_bits)
  dq = weighted_cumulation(q_codes, k_codes, q_mask, k_mask, grad, v,
                           half_tau * k, hash_bits)
  dk = weighted_cumulation(k_codes, q_codes, k_mask, q_mask, v, grad,
                           half_tau * q, hash_bits)
  return dq, dk, dv


def collision_matrix(q_codes, k_codes, q_mask, k_mask):
  """Dense B [g, n, n] = (1/m) Σ_h [c_h(q_i) = c_h(k_j)] μ_i μ_j (tests)."""
  same = q_codes[:, :, :, None] == k_codes[:, :, None, :]
  return (same.mean(1) * q_mask[:, :, None] * k_mask[:, None, :]).astype(
      jnp.float32)

