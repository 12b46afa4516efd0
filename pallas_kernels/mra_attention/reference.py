"""Plain-jnp oracle for the selected-block part of MRA-2 (the kernel's spec).

Given the selected (query block, key block) pairs of MRA-2 (Zeng et al.,
"Multi Resolution Analysis (MRA) for Approximate Self-Attention", ICML 2022,
Sec. 4; mlpen/mra-attention `mra2_kernel/attention.py`), the high-resolution
part is, for each query i in block I:

  m_i    = max over selected blocks J of I, over keys j in J, of s_ij
  p_ij   = exp(s_ij − m_i − 1e4·(1 − μ_j)),   s_ij = q_i·k_j / sqrt(d)
  out_i  = Σ_{J selected, j ∈ J} p_ij v_j,     norm_i = Σ p_ij

with m_i = −1e5 for rows without a selected block (the original's
`index_max`) and m treated as a constant in the backward (as the original's
`stop_gradient`-free kernels do implicitly: `index_max` has no gradient).
Computed densely here, O(n²): it is the oracle, not a fast path.
"""
import math

import jax
import jax.numpy as jnp

MASK_PENALTY = 1e4  # The original's additive penalty for masked keys.
EMPTY_ROW_MAX = -1e5  # `index_max`'s value for rows with no selected block.


def selection_matrix(block_index, block_count, num_blocks):
  """Dense [g, nb, nb] bool from per-row lists (entries past count unused)."""
  width = block_index.shape[-1]
  used = jnp.arange(width) < block_count[..., None]  # [g, nb, L]
  hot = jax.nn.one_hot(block_index, num_blocks, dtype=jnp.int32)
  return (hot * used[..., None]).sum(-2) > 0


def mra_block_sparse_reference(q, k, v, key_mask, block_index, block_count,
                               block_size):
  """(out [g, n, d], norm [g, n], row_max [g, n]) in float32.

  Args:
    q, k, v: `[groups, n, d]`, n a multiple of `block_size`.
    key_mask: `[groups, n]` float, 1 for real keys, 0 for padding.
    block_index: `[groups, n // block_size, L]` int32: row I's selected key
      blocks in its first `block_count[g, I]` entries.
    block_count: `[groups, n // block_size]` int32.
    block_size: tokens per block.
  """
  groups, n, d = q.shape
  nb = n // block_size
  chosen = selection_matrix(block_index, block_count, nb)
  chosen = jnp.repeat(jnp.repeat(chosen, block_size, 1), block_size, 2)
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  s = jnp.einsum("gid,gjd->gij", q, k) / math.sqrt(d)
  row_max = jnp.max(jnp.where(chosen, s, -jnp.inf), axis=-1)
  row_max = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(row_max), row_max, EMPTY_ROW_MAX))
  penalty = MASK_PENALTY * (1.0 - key_mask.astype(jnp.float32))[:, None, :]
  # Unselected entries are masked before exp: exp(s + 1e5) overflows in
  # rows with no selection, and where() would pass 0·inf = nan to the grad.
  p = jnp.exp(jnp.where(chosen, s - row_max[..., None] - penalty, -jnp.inf))
  return jnp.einsum("gij,gjd->gid", p, v), p.sum(-1), row_max
