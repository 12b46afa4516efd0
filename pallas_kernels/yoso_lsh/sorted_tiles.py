"""YOSO's bucket cumulation by sorted tiles: matmuls instead of atomics.

The same sums as the table kernels (`reference.cumulation`, Eq. 6 of Zeng
et al., ICML 2021) and the same LSH backward (`reference.lsh_backward`,
Sec. 3.3), computed another way. Per (group, hash), queries and keys are
sorted by their codes (a stable argsort, XLA); in that order the collision
matrix [c(q_i) = c(k_j)] is block-diagonal (one block per bucket), so the
keys that collide with a tile of T sorted queries are one contiguous range
of the sorted keys, found by `searchsorted` on the tile's first and last
codes. One program per (group, hash, query tile) walks that range in tiles
of T keys:

  M = [c(q_I) = c(k_J)]                       (T × T, from the codes)
  Y_I += M V_J                                (forward; dV likewise with
                                               the roles of q and k swapped)
  Y_I += (M ⊙ (A_I B_Jᵀ)) V_J                 (weighted: dQ with A = dO,
                                               B = V, V_J = (τ/2) K_J; dK
                                               swapped)

with rows gathered by the sort permutation inside the kernel. Each hash
writes its own [n, e] output in sorted order; XLA un-sorts and sums over
hashes (no atomics anywhere) — or, with `hash_sum="atomic"` (GPU), each
tile adds its rows at their token positions into one [n, e] output.
Work per hash: about 2n/T tiles when buckets are small (n/2^τ ≤ T) — 2·n·T·e multiply-adds for the forward, three times
that for a weighted pass — against one atomic add per (token, value
dimension, weight dimension) for the table backward. The v1 original has
no such path; its v2 backward (yoso_v2, `count_sort`) also sorts keys by
bucket, there to list each query's colliding keys.

Worst case: every token in one bucket makes each query tile walk all n
keys (O(n²), still exact). Backends: GPU (Triton: index-array row loads;
compiled, tested and timed on an H200, docs/kernels.md), TPU (tpu.py: rows
permuted into code order by XLA beforehand, since row gathers by index
array are not Mosaic's model, and the staircase's tile pairs as a
scalar-prefetched list; lowers for TPU, never run on one) and the
interpreter (both forms).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

import pallas_kernels
from pallas_kernels.yoso_lsh import tpu


def _kernel(tiles_ref, rows_ref, row_codes_ref, cols_ref, col_codes_ref,
            *refs, tile, weighted, atomic=None):
  """One (group, hash, row tile): Σ over its column range, sorted order.

  `atomic` (None, "vector" or "rows"): instead of writing the tile's rows
  to its own (hash, sorted position) block, add them into the [n, e]
  output at the rows' token positions (the sum over hashes, un-sorted):
  "vector" is one Triton atomic add with an index array, "rows" one `pl.ds`
  atomic per row (the interpreter has no array-indexed atomics).
  """
  if atomic:
    refs = refs[:-2] + refs[-1:]  # Drop the aliased input (zeros).
  if weighted:
    row_weight_ref, col_weight_ref, values_ref, out_ref = refs
    row_weight = row_weight_ref[rows_ref[...], :]
  else:
    values_ref, out_ref = refs
  row_codes = row_codes_ref[...]
  start, count = tiles_ref[0], tiles_ref[1]

  def body(t, acc):
    span = pl.ds(start + t * tile, tile)
    cols = cols_ref[span]
    same = row_codes[:, None] == col_codes_ref[span][None, :]
    values = values_ref[cols, :]
    weights = same.astype(jnp.float32)
    if weighted:
      weights = weights * jax.lax.dot_general(
          row_weight, col_weight_ref[cols, :], (((1,), (1,)), ((), ())),
          preferred_element_type=jnp.float32)
    return acc + jnp.dot(weights.astype(values.dtype), values,
                         preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, count, body, jnp.zeros((tile, out_ref.shape[-1]),
                                                   jnp.float32))
  if not atomic:
    out_ref[...] = acc
    return
  # Rows past n (the sort's padding, order 0) add zeros to token 0.
  position = pl.program_id(2) * tile + jnp.arange(tile)
  acc = jnp.where((position < out_ref.shape[0])[:, None], acc, 0.0)
  rows = rows_ref[...]
  if atomic == "vector":
    pl_triton.atomic_add(out_ref, (rows, slice(None)), acc)
    return

  def add_row(r, carry):
    pl_triton.atomic_add(out_ref, (pl.ds(rows_ref[r], 1), slice(None)),
                         jax.lax.dynamic_slice_in_dim(acc, r, 1))
    return carry

  jax.lax.fori_loop(0, tile, add_row, 0)


def sort_codes(codes, tile):
  """Per (group, hash) sort of [g, m, n] codes, padded for the kernels.

  Returns (order [g, m, n'], sorted codes [g, m, n'] with the padding at
  code 2^31 − 1 (after every real code; never equal to one), n' = n
  rounded up to `tile` plus one more tile, so a column walk that starts
  anywhere in the real range may read a whole tile).
  """
  n = codes.shape[-1]
  order = jnp.argsort(codes, axis=-1, stable=True).astype(jnp.int32)
  ordered = jnp.take_along_axis(codes, order, axis=-1)
  pad = [(0, 0), (0, 0), (0, -n % tile + tile)]
  return (jnp.pad(order, pad),
          jnp.pad(ordered, pad, constant_values=jnp.iinfo(jnp.int32).max))


def column_ranges(row_sorted, col_sorted, n, tile):
  """[g, m, tiles, 2] int32: per row tile, (first column, number of column
  tiles) of the sorted columns whose codes lie in the tile's code range."""
  start, end = tpu.code_ranges(row_sorted, col_sorted, n, tile)
  count = -(-(end - start) // tile)
  return jnp.stack([start, count], -1).astype(jnp.int32)


def sorted_cumulation(rows, cols, values, *, row_weight=None, col_weight=None,
                      tile=64, hash_bits=None, hash_sum="unsort",
                      interpret=False, platform=None):
  """Σ_h Y_h[i] = Σ_h Σ_{j: c_h(col j) = c_h(row i)} w_ij values_j, [g, n, e]
  float32, with w_ij = 1 or row_weight_i · col_weight_j.

  rows, cols: from `_plan`: (order, sorted codes, column ranges, inverse
  order) of the row tokens, (order, sorted codes) of the columns. values
  [g, n, e] (masked columns already zeroed), weights [g, n, f]. No sums
  over hashes are divided by m here and no row mask is applied. On TPU
  (`platform="tpu"`) this is tpu.py's Mosaic form (`hash_bits` sizes its
  table fallback).

  hash_sum: how the per-hash results become one: "unsort" (each hash
  writes its own [n', e] block in sorted order; XLA un-sorts them and sums
  over hashes: [g, m, n', e] float32 of temporaries) or "atomic" (each
  tile adds its rows into one [g, n, e] output at their token positions
  with float32 atomics: no per-hash temporaries, a summation order that
  varies from run to run; GPU form only).
  """
  if hash_sum not in ("unsort", "atomic"):
    raise ValueError(f"hash_sum={hash_sum!r}: 'unsort' or 'atomic'")
  if pallas_kernels.resolve_platform(platform) == "tpu":
    if hash_sum != "unsort":
      raise ValueError("hash_sum='atomic' needs atomics, which Mosaic (TPU) "
                       "does not have; use 'unsort'")
    return tpu.sorted_cumulation(rows, cols, values, row_weight=row_weight,
                                 col_weight=col_weight, hash_bits=hash_bits,
                                 tile=tile, interpret=interpret)
  row_order, row_sorted, ranges, inverse = rows
  col_order, col_sorted = cols
  g, m, padded = row_order.shape
  n, e = values.shape[1:]
  tiles = ranges.shape[2]
  weighted = row_weight is not None
  whole = lambda x: pl.BlockSpec((None,) + x.shape[1:],
                                 lambda a, h, i: (a,) + (0,) * (x.ndim - 1))
  per_hash = lambda x: pl.BlockSpec((None, None, x.shape[-1]),
                                    lambda a, h, i: (a, h, 0))
  per_tile = pl.BlockSpec((None, None, tile), lambda a, h, i: (a, h, i))
  operands = [ranges, row_order, row_sorted, col_order, col_sorted]
  in_specs = [pl.BlockSpec((None, None, None, 2), lambda a, h, i: (a, h, i, 0)),
              per_tile, per_tile, per_hash(col_order), per_hash(col_sorted)]
  extra = ([row_weight, col_weight] if weighted else []) + [values]
  operands += extra
  in_specs += [whole(x) for x in extra]
  params = None if interpret else pallas_kernels.triton_params(platform)
  if hash_sum == "atomic":
    zeros = jnp.zeros((g, n, e), jnp.float32)
    group_block = pl.BlockSpec((None, n, e), lambda a, h, i: (a, 0, 0))
    return pl.pallas_call(
        functools.partial(_kernel, tile=tile, weighted=weighted,
                          atomic="rows" if interpret else "vector"),
        grid=(g, m, tiles), in_specs=in_specs + [group_block],
        out_specs=group_block, out_shape=zeros,
        input_output_aliases={len(operands): 0},
        interpret=interpret, compiler_params=params)(*operands, zeros)
  out = pl.pallas_call(
      functools.partial(_kernel, tile=tile, weighted=weighted),
      grid=(g, m, tiles), in_specs=in_specs,
      out_specs=pl.BlockSpec((None, None, tile, e),
                             lambda a, h, i: (a, h, i, 0)),
      out_shape=jax.ShapeDtypeStruct((g, m, tiles * tile, e), jnp.float32),
      interpret=interpret, compiler_params=params)(*operands)
  # Un-sort: row order[r] received out[r]; rows past n are padding.
  return jnp.take_along_axis(out, inverse[..., None], axis=2).sum(1)


def _pad_last(x, width):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def pow2(x, minimum=16):
  """The smallest power of two ≥ max(x, minimum) (Triton block widths)."""
  return max(minimum, 1 << (int(x) - 1).bit_length())


def _plan(q_codes, k_codes, tile, unsort=True):
  """Sort orders, sorted codes and column ranges for both directions (and
  the inverse orders that un-sort the per-hash outputs, if `unsort`)."""
  n = q_codes.shape[-1]
  q_order, q_sorted = sort_codes(q_codes, tile)
  k_order, k_sorted = sort_codes(k_codes, tile)
  inverse = lambda order: jnp.argsort(order[..., :n], axis=-1).astype(
      jnp.int32) if unsort else None  # Per direction, for its two passes.
  q_rows = (q_order, q_sorted, column_ranges(q_sorted, k_sorted, n, tile),
            inverse(q_order))
  k_rows = (k_order, k_sorted, column_ranges(k_sorted, q_sorted, n, tile),
            inverse(k_order))
  return q_rows, (k_order, k_sorted), k_rows, (q_order, q_sorted)


def _cumulate(rows, cols, values, row_mask, col_mask, num_hashes, *,
              row_weight=None, col_weight=None, **kwargs):
  """(1/m) μ_i Σ_h Σ_j coll μ_j w_ij values_j (the masks and the 1/m of
  `reference.cumulation`), with the widths padded to powers of two."""
  e = values.shape[-1]
  values = _pad_last(values * col_mask[..., None], pow2(e))
  if row_weight is not None:
    f = pow2(row_weight.shape[-1])
    row_weight, col_weight = (_pad_last(w, f) for w in (row_weight,
                                                        col_weight))
  out = sorted_cumulation(rows, cols, values, row_weight=row_weight,
                          col_weight=col_weight, **kwargs)
  return out[..., :e] * row_mask[..., None] / num_hashes


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _sorted_lsh_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask,
                           hash_bits, tile, hash_sum, interpret, platform):
  return _fwd(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits, tile,
              hash_sum, interpret, platform)[0]


def _fwd(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits, tile,
         hash_sum, interpret, platform):
  plan = _plan(q_codes, k_codes, tile, unsort=hash_sum == "unsort")
  out = _cumulate(plan[0], plan[1], v.astype(jnp.float32), q_mask, k_mask,
                  q_codes.shape[1], tile=tile, hash_bits=hash_bits,
                  hash_sum=hash_sum, interpret=interpret, platform=platform)
  return out, (q, k, v, q_mask, k_mask, plan, q_codes.shape[1])


def _bwd(hash_bits, tile, hash_sum, interpret, platform, residuals, grad):
  q, k, v, q_mask, k_mask, plan, num_hashes = residuals
  q_rows, k_cols, k_rows, q_cols = plan
  kwargs = dict(tile=tile, hash_bits=hash_bits, hash_sum=hash_sum,
                interpret=interpret, platform=platform)
  f32 = lambda x: x.astype(jnp.float32)
  grad, half_tau = f32(grad), hash_bits / 2
  dv = _cumulate(k_rows, q_cols, grad, k_mask, q_mask, num_hashes, **kwargs)
  dq = _cumulate(q_rows, k_cols, half_tau * f32(k), q_mask, k_mask,
                 num_hashes, row_weight=grad, col_weight=f32(v), **kwargs)
  dk = _cumulate(k_rows, q_cols, half_tau * f32(q), k_mask, q_mask,
                 num_hashes, row_weight=f32(v), col_weight=grad, **kwargs)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None,
          None, None, None)


_sorted_lsh_cumulation.defvjp(_fwd, _bwd)


def sorted_lsh_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask, *,
                          hash_bits, tile=64, hash_sum="unsort",
                          interpret=False, platform=None):
  """`yoso_lsh_cumulation` (same arguments and result) by sorted tiles.

  Args:
    q, k: `[groups, n, d]` unit rows (only the backward reads them).
    v: `[groups, n, e]`.
    q_codes, k_codes: `[groups, m, n]` int32 codes in [0, 2^τ).
    q_mask, k_mask: `[groups, n]` float, 1 for real tokens.
    hash_bits: τ (the backward's τ/2).
    tile: T, sorted tokens per tile (a power of two ≥ 16).
    hash_sum: "unsort" or "atomic" (`sorted_cumulation`; GPU and the
      interpreter only).
    interpret: run in the Pallas interpreter (any backend).
    platform: backend to compile for (default `jax.default_backend()`).

  Returns:
    `[groups, n, e]` float32: `reference.cumulation`, with the original's
    LSH backward (`reference.lsh_backward`) as its gradient.
  """
  if tile < 16 or tile & (tile - 1):
    raise ValueError(f"tile={tile}: a power of two >= 16")
  return _sorted_lsh_cumulation(q, k, v, q_codes, k_codes,
                                q_mask.astype(jnp.float32),
                                k_mask.astype(jnp.float32), hash_bits, tile,
                                hash_sum, interpret, platform)
