"""Pallas kernels for MRA-2's selected blocks: forward, dQ, dK/dV.

One program per (group, block row); each kernel takes the row's list and
count, then its own block of the per-block arrays, then whole arrays. The forward walks its row's list of
selected key blocks with an online max (flash-attention style), so only the
selected b × b score tiles ever exist; it returns the unnormalised output,
the normaliser and the row max that `reference.py` defines. The backward
treats the row max as a constant (reference.py), so

  p = exp(s − m − 1e4(1 − μ)),  dP = dO Vᵀ + dN,  dS = p ⊙ dP,
  dQ = dS K / √d,  dK = dSᵀ Q / √d,  dV = pᵀ dO,

dQ walking the rows' lists, dK/dV the transposed lists (for key block J,
the query blocks that selected it), so no atomics are needed.

K, V (and Q, dO in the dK/dV kernel) are passed whole per group and sliced
with `pl.ds` at the listed blocks, the pattern of jax's GPU flash attention;
on TPU the lists would go through scalar prefetch instead (not written yet).
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.mra_attention import reference


def _penalty(mask_ref, start, block):
  mu = mask_ref[pl.ds(start, block)].astype(jnp.float32)
  return reference.MASK_PENALTY * (1.0 - mu)[None, :]


def _scores(a, b, scale):
  """a bᵀ · scale in float32: [block, block]."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32) * scale


def forward_kernel(index_ref, count_ref, q_ref, k_ref, v_ref, mask_ref,
                   out_ref, norm_ref, max_ref, *, block, scale):
  q = q_ref[...]

  def body(t, carry):
    acc, norm, row_max = carry
    start = index_ref[t] * block
    s = _scores(q, k_ref[pl.ds(start, block), :], scale)
    new_max = jnp.maximum(row_max, s.max(-1))
    rescale = jnp.exp(row_max - new_max)
    p = jnp.exp(s - new_max[:, None] - _penalty(mask_ref, start, block))
    v = v_ref[pl.ds(start, block), :]
    acc = acc * rescale[:, None] + jnp.dot(
        p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc, norm * rescale + p.sum(-1), new_max

  init = (jnp.zeros(out_ref.shape, jnp.float32),
          jnp.zeros(norm_ref.shape, jnp.float32),
          jnp.full(max_ref.shape, -jnp.inf, jnp.float32))
  acc, norm, row_max = jax.lax.fori_loop(0, count_ref[0], body, init)
  out_ref[...] = acc
  norm_ref[...] = norm
  max_ref[...] = jnp.where(row_max == -jnp.inf, reference.EMPTY_ROW_MAX,
                           row_max)


def dq_kernel(index_ref, count_ref, q_ref, dout_ref, dnorm_ref, max_ref,
              k_ref, v_ref, mask_ref, dq_ref, *, block, scale):
  q, dout = q_ref[...], dout_ref[...]
  row_max, dnorm = max_ref[...], dnorm_ref[...]

  def body(t, dq):
    start = index_ref[t] * block
    k = k_ref[pl.ds(start, block), :]
    s = _scores(q, k, scale)
    p = jnp.exp(s - row_max[:, None] - _penalty(mask_ref, start, block))
    dp = _scores(dout, v_ref[pl.ds(start, block), :], 1.0) + dnorm[:, None]
    ds = (p * dp).astype(k.dtype)
    return dq + jnp.dot(ds, k, preferred_element_type=jnp.float32) * scale

  dq_ref[...] = jax.lax.fori_loop(
      0, count_ref[0], body, jnp.zeros(dq_ref.shape, jnp.float32))


def dkv_kernel(index_ref, count_ref, k_ref, v_ref, mask_ref, q_ref, dout_ref,
               dnorm_ref, max_ref, dk_ref, dv_ref, *, block, scale):
  # This program owns key block J; its list holds the query blocks I that
  # selected J.
  k, v = k_ref[...], v_ref[...]
  mu = mask_ref[...].astype(jnp.float32)
  penalty = reference.MASK_PENALTY * (1.0 - mu)[None, :]

  def body(t, carry):
    dk, dv = carry
    rows = pl.ds(index_ref[t] * block, block)
    q, dout = q_ref[rows, :], dout_ref[rows, :]
    s = _scores(q, k, scale)
    p = jnp.exp(s - max_ref[rows][:, None] - penalty)
    dp = _scores(dout, v, 1.0) + dnorm_ref[rows][:, None]
    ds = (p * dp).astype(q.dtype)
    transpose = (((0,), (0,)), ((), ()))
    dv = dv + jax.lax.dot_general(p.astype(dout.dtype), dout, transpose,
                                  preferred_element_type=jnp.float32)
    dk = dk + jax.lax.dot_general(ds, q, transpose,
                                  preferred_element_type=jnp.float32) * scale
    return dk, dv

  dk, dv = jax.lax.fori_loop(0, count_ref[0], body,
                             (jnp.zeros(dk_ref.shape, jnp.float32),
                              jnp.zeros(dv_ref.shape, jnp.float32)))
  dk_ref[...] = dk
  dv_ref[...] = dv
