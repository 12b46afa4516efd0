"""YOSO's sorted-tile cumulation for TPU (Mosaic): no scatter, no atomics.

The same sums as sorted_tiles.py (the GPU form; `reference.cumulation` and
`reference.weighted_cumulation` are the spec), laid out as Mosaic wants
them, the way jax's splash attention and tpu.py of mra_attention do:

  * XLA permutes each hash's columns (values and weights) and rows (row
    weights) into code order beforehand, so every tile the kernel reads is
    a contiguous block that the pipeline DMAs to VMEM — the GPU form's
    in-kernel row gathers by index array are not Mosaic's model;
  * the (row tile, column tile) pairs of the collision staircase are one
    flattened list per (group, hash), row tiles in order, each present at
    least once, padded to a static `capacity`; it goes through scalar
    prefetch (`PrefetchScalarGridSpec`) and the index maps read it. Column
    tiles are aligned (the code-equality mask drops the extra rows);
  * the list position is the innermost, "arbitrary" grid axis: a row
    tile's accumulator lives in VMEM scratch, is reset at its first entry
    and written out at its last (consecutive entries share the output
    block, so it stays resident).

When some (group, hash) needs more than `capacity` pairs (buckets larger
than a tile, e.g. attention concentrated in few buckets), the whole call
takes the exact XLA table path instead (`lax.cond`): never a silent
truncation. Per hash the kernel costs about 2·n·T·e multiply-adds for
the forward (3× for a weighted pass) at T = 128 on the MXU.

Checked here by lowering for TPU on a CPU machine and by running in the
interpreter; never run on a TPU (none lent).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.yoso_lsh import reference

LANES = 128


def code_ranges(row_sorted, col_sorted, n, tile):
  """Per row tile of sorted rows, [g, m, tiles] (start, end): the span of
  sorted columns whose codes lie in the tile's code range. Shared with the
  GPU form (sorted_tiles.column_ranges)."""
  tiles = row_sorted.shape[-1] // tile - 1  # The last tile: padding only.
  firsts = row_sorted[..., 0:tiles * tile:tile]
  lasts = row_sorted[..., jnp.minimum(jnp.arange(tiles) * tile + tile - 1,
                                      n - 1)]
  search = jax.vmap(jax.vmap(jnp.searchsorted, (0, 0, None)), (0, 0, None))
  cols = col_sorted[..., :n]
  return search(cols, firsts, "left"), search(cols, lasts, "right")


def aligned_ranges(row_sorted, col_sorted, n, tile):
  """Per row tile of sorted rows: (first aligned column tile, tile count)
  covering the sorted columns whose codes lie in the tile's code range."""
  start, end = code_ranges(row_sorted, col_sorted, n, tile)
  first = start // tile
  count = jnp.where(end > start, -(-end // tile) - first, 0)
  return first.astype(jnp.int32), count.astype(jnp.int32)


def pairs_needed(rows, cols, n, tile):
  """[g, m] list length each (group, hash) needs (compare with capacity)."""
  _, count = aligned_ranges(rows[1], cols[1], n, tile)
  return jnp.maximum(count, 1).sum(-1)


def default_capacity(padded, tile):
  """2·(row tiles + column tiles): twice what random codes need when
  buckets are smaller than a tile."""
  tiles = padded // tile
  return 2 * (2 * tiles - 1)


def pair_list(first, count, capacity, num_col_tiles):
  """[g, m, capacity] (row tile, column tile, valid) and [g, m] list length.

  Row tiles in order, each with its `count` column tiles (once, invalid,
  if it has none, so its output block is written); positions past the
  length repeat the last row tile, invalid.
  """
  visits = jnp.maximum(count, 1)
  ends = jnp.cumsum(visits, -1)
  t = jnp.arange(capacity)
  search = jax.vmap(jax.vmap(lambda e: jnp.searchsorted(e, t, "right")))
  row = jnp.minimum(search(ends), count.shape[-1] - 1)
  take = lambda x: jnp.take_along_axis(x, row, -1)
  offset = t - take(ends - visits)
  valid = (t < ends[..., -1:]) & (offset < take(count))
  col = jnp.clip(take(first) + jnp.where(valid, offset, 0), 0,
                 num_col_tiles - 1)
  return (row.astype(jnp.int32), col.astype(jnp.int32),
          valid.astype(jnp.int32), ends[..., -1])


def _kernel(rows_ref, cols_ref, valid_ref, row_codes_ref, col_codes_ref,
            *refs, weighted):
  if weighted:
    row_weight_ref, col_weight_ref, values_ref, out_ref, acc = refs
  else:
    values_ref, out_ref, acc = refs
  del cols_ref  # Read by the index maps.
  g, h, t = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  last = pl.num_programs(2) - 1
  row = rows_ref[g, h, t]

  @pl.when((t == 0) | (rows_ref[g, h, jnp.maximum(t - 1, 0)] != row))
  def _():
    acc[...] = jnp.zeros_like(acc)

  @pl.when(valid_ref[g, h, t] == 1)
  def _():
    # [T, 1] == [1, T]: the code-equality mask of this tile pair.
    weights = (row_codes_ref[...] == col_codes_ref[...]).astype(jnp.float32)
    if weighted:
      weights = weights * jax.lax.dot_general(
          row_weight_ref[...], col_weight_ref[...], (((1,), (1,)), ((), ())),
          preferred_element_type=jnp.float32)
    values = values_ref[...]
    acc[...] += jnp.dot(weights.astype(values.dtype), values,
                        preferred_element_type=jnp.float32)

  @pl.when((t == last) | (rows_ref[g, h, jnp.minimum(t + 1, last)] != row))
  def _():
    out_ref[...] = acc[...]


def _permute(x, order):
  """[g, n, f] rows in each hash's order [g, m, n'] → [g, m, n', f]."""
  return jnp.take_along_axis(x[:, None], order[..., None], axis=2)


def _tiles(row_sorted, col_sorted, lists, values, row_weight, col_weight,
           *, tile, interpret):
  """The kernel: per-hash sums in sorted row order, [g, m, n', e] float32."""
  rows, cols, valid, _ = lists
  g, m, padded = row_sorted.shape
  e = values.shape[-1]
  weighted = row_weight is not None
  at_row = lambda x: pl.BlockSpec(
      (None, None, tile, x.shape[-1]),
      lambda a, h, t, r, c, v: (a, h, r[a, h, t], 0))
  at_col = lambda x: pl.BlockSpec(
      (None, None, tile, x.shape[-1]),
      lambda a, h, t, r, c, v: (a, h, c[a, h, t], 0))
  col_codes = pl.BlockSpec((None, None, 1, tile),
                           lambda a, h, t, r, c, v: (a, h, 0, c[a, h, t]))
  operands = [row_sorted[..., None], col_sorted[:, :, None, :]]
  in_specs = [at_row(operands[0]), col_codes]
  if weighted:
    operands += [row_weight, col_weight]
    in_specs += [at_row(row_weight), at_col(col_weight)]
  operands.append(values)
  in_specs.append(at_col(values))
  out = jax.ShapeDtypeStruct((g, m, padded, e), jnp.float32)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3, grid=(g, m, rows.shape[-1]), in_specs=in_specs,
      out_specs=at_row(out), scratch_shapes=[pltpu.VMEM((tile, e),
                                                         jnp.float32)])
  return pl.pallas_call(
      functools.partial(_kernel, weighted=weighted), grid_spec=grid_spec,
      out_shape=out, interpret=interpret,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")))(
              rows, cols, valid, *operands)


def sorted_cumulation(rows, cols, values, *, row_weight=None,
                      col_weight=None, hash_bits, tile, capacity=None,
                      interpret=False):
  """`sorted_tiles.sorted_cumulation` (same arguments and result) on TPU.

  `capacity`: list entries per (group, hash), default `default_capacity`;
  more pairs than that anywhere (`pairs_needed`) sends the call to the XLA
  table path. Each entry is one grid step (TPU: ~0.35 µs of overhead each,
  valid or not), so the capacity and the tile trade fallback risk against
  steps; neither has been tuned on a TPU.
  """
  row_order, row_sorted, _, inverse = rows
  col_order, col_sorted = cols
  n = values.shape[1]
  num_rows = row_sorted.shape[-1] // tile
  capacity = capacity or default_capacity(row_sorted.shape[-1], tile)
  first, count = aligned_ranges(row_sorted, col_sorted, n, tile)
  lists = pair_list(first, count, capacity, num_rows)
  weighted = row_weight is not None

  def kernel_path():
    out = _tiles(row_sorted, col_sorted, lists, _permute(values, col_order),
                 _permute(row_weight, row_order) if weighted else None,
                 _permute(col_weight, col_order) if weighted else None,
                 tile=tile, interpret=interpret)
    return jnp.take_along_axis(out, inverse[..., None], axis=2).sum(1)

  def table_path():  # Exact, slower: the codes back in token order.
    row_codes = jnp.take_along_axis(row_sorted, inverse, -1)
    col_codes = jnp.take_along_axis(
        col_sorted, jnp.argsort(col_order[..., :n], axis=-1), -1)
    ones = jnp.ones(values.shape[:2], jnp.float32)
    m = row_codes.shape[1]
    if weighted:
      return m * reference.weighted_cumulation(
          row_codes, col_codes, ones, ones, row_weight, col_weight, values,
          hash_bits)
    return m * reference.cumulation(row_codes, col_codes, ones, ones, values,
                                    hash_bits)

  return jax.lax.cond(jnp.max(lists[3]) <= capacity, kernel_path, table_path)
