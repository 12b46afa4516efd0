"""MRA-2's selected-block kernels for TPU (Mosaic): forward, dQ, dK/dV.

The same mathematics as kernel.py (the GPU/Triton form; reference.py is
the spec), laid out the way Mosaic wants it, as jax's own TPU flash and
splash attention do:

  * the per-row block lists and counts go through scalar prefetch
    (`PrefetchScalarGridSpec`): the grid is (group, block row, list
    position t), and the K/V index maps read the list, so each step's K/V
    tile is DMA'd to VMEM by the pipeline rather than sliced by hand;
  * t is the innermost, "arbitrary" (sequential) grid axis: an online-max
    accumulator (forward) or a gradient accumulator lives in VMEM scratch,
    is reset at t = 0 and written out at the last t; positions past a row's
    count are skipped with `pl.when`;
  * blocks respect Mosaic's tiling (last two dims multiples of (8, 128) or
    whole): per-row vectors (norm, row max, dnorm) are stored with 128
    lanes (columns equal), and the key mask as [groups, nb·8, block]
    (each block's mask repeated on 8 sublanes).

Limits: the lists are [groups, nb, nb] int32 in SMEM (the transposed lists
of dK/dV can be that long: a key block chosen by every row), so very long
sequences would need splash attention's compressed masks. Checked here by
lowering for TPU on a CPU machine and by running in the interpreter; never
run on a TPU (none lent).
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.mra_attention import reference

LANES = 128
SUBLANES = 8


def lanes(x):
  """[g, n] → [g, n, 128]: a per-row vector in Mosaic's tiling."""
  return jnp.broadcast_to(x[..., None].astype(jnp.float32),
                          x.shape + (LANES,))


def mask_rows(key_mask, block):
  """[g, n] → [g, nb·8, block]: block J's mask on sublanes 8J..8J+7."""
  groups, n = key_mask.shape
  rows = key_mask.astype(jnp.float32).reshape(groups, n // block, 1, block)
  return jnp.broadcast_to(rows, (groups, n // block, SUBLANES, block)).reshape(
      groups, n // block * SUBLANES, block)


def _scores(a, b, scale):
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32) * scale


def _penalty(mask_ref):
  return reference.MASK_PENALTY * (1.0 - mask_ref[0:1, :])  # [1, block]


def forward_kernel(index_ref, count_ref, q_ref, k_ref, v_ref, mask_ref,
                   out_ref, norm_ref, max_ref, acc, norm, row_max, *, scale):
  g, i, t = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  del index_ref  # Read by the index maps.

  @pl.when(t == 0)
  def _():
    acc[...] = jnp.zeros_like(acc)
    norm[...] = jnp.zeros_like(norm)
    row_max[...] = jnp.full_like(row_max, -jnp.inf)

  @pl.when(t < count_ref[g, i])
  def _():
    s = _scores(q_ref[...], k_ref[...], scale)
    old_max = row_max[:, 0:1]  # Scratch rows hold 128 equal lanes.
    new_max = jnp.maximum(old_max, s.max(-1, keepdims=True))
    rescale = jnp.exp(old_max - new_max)
    p = jnp.exp(s - new_max - _penalty(mask_ref))
    acc[...] = acc[...] * rescale + jnp.dot(
        p.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32)
    norm[...] = jnp.broadcast_to(
        norm[:, 0:1] * rescale + p.sum(-1, keepdims=True), norm.shape)
    row_max[...] = jnp.broadcast_to(new_max, row_max.shape)

  @pl.when(t == pl.num_programs(2) - 1)
  def _():
    out_ref[...] = acc[...]
    norm_ref[...] = norm[...]
    max_ref[...] = jnp.where(row_max[...] == -jnp.inf,
                             reference.EMPTY_ROW_MAX, row_max[...])


def dq_kernel(index_ref, count_ref, q_ref, dout_ref, dnorm_ref, max_ref,
              k_ref, v_ref, mask_ref, dq_ref, dq, *, scale):
  g, i, t = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  del index_ref

  @pl.when(t == 0)
  def _():
    dq[...] = jnp.zeros_like(dq)

  @pl.when(t < count_ref[g, i])
  def _():
    k = k_ref[...]
    s = _scores(q_ref[...], k, scale)
    p = jnp.exp(s - max_ref[:, 0:1] - _penalty(mask_ref))
    dp = _scores(dout_ref[...], v_ref[...], 1.0) + dnorm_ref[:, 0:1]
    ds = (p * dp).astype(k.dtype)
    dq[...] += jnp.dot(ds, k, preferred_element_type=jnp.float32) * scale

  @pl.when(t == pl.num_programs(2) - 1)
  def _():
    dq_ref[...] = dq[...]


def dkv_kernel(index_ref, count_ref, k_ref, v_ref, mask_ref, q_ref, dout_ref,
               dnorm_ref, max_ref, dk_ref, dv_ref, dk, dv, *, scale):
  # Program (g, J, t): key block J and the t-th query block that chose it.
  g, j, t = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  del index_ref

  @pl.when(t == 0)
  def _():
    dk[...] = jnp.zeros_like(dk)
    dv[...] = jnp.zeros_like(dv)

  @pl.when(t < count_ref[g, j])
  def _():
    q, dout = q_ref[...], dout_ref[...]
    s = _scores(q, k_ref[...], scale)
    p = jnp.exp(s - max_ref[:, 0:1] - _penalty(mask_ref))
    dp = _scores(dout, v_ref[...], 1.0) + dnorm_ref[:, 0:1]
    ds = (p * dp).astype(q.dtype)
    transpose = (((0,), (0,)), ((), ()))
    dv[...] += jax.lax.dot_general(p.astype(dout.dtype), dout, transpose,
                                   preferred_element_type=jnp.float32)
    dk[...] += jax.lax.dot_general(ds, q, transpose,
                                   preferred_element_type=jnp.float32) * scale

  @pl.when(t == pl.num_programs(2) - 1)
  def _():
    dk_ref[...] = dk[...]
    dv_ref[...] = dv[...]


def call(body, index, count, own, listed, outputs, scratch, *, block,
         interpret):
  """pallas_call over (group, block row, list position).

  `own`: (array, kind) pairs read at the program's own block row;
  `listed`: pairs read at the listed block. kind is "tokens" ([g, n, x]
  arrays, tiles of `block` rows), "lanes" ([g, n, 128]) or "mask"
  ([g, nb·8, block]).
  """
  groups, nb, width = index.shape

  def spec(x, kind, listed_block):
    rows = SUBLANES if kind == "mask" else block
    if listed_block:
      index_map = lambda g, i, t, idx, cnt: (g, idx[g, i, t], 0)
    else:
      index_map = lambda g, i, t, idx, cnt: (g, i, 0)
    return pl.BlockSpec((None, rows, x.shape[-1]), index_map)

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(groups, nb, width),
      in_specs=[spec(x, kind, False) for x, kind in own] +
      [spec(x, kind, True) for x, kind in listed],
      out_specs=[spec(o, "tokens", False) for o in outputs],
      scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch])
  return pl.pallas_call(
      body, grid_spec=grid_spec, out_shape=outputs, interpret=interpret,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")))(
              index, count, *[x for x, _ in own], *[x for x, _ in listed])
