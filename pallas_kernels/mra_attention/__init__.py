"""MRA-2's selected-block attention as Pallas kernels (forward and backward).

  out, norm, row_max = mra_block_sparse(q, k, v, key_mask, selected)

computes `reference.mra_block_sparse_reference` (the high-resolution part
of MRA-2, Zeng et al., ICML 2022, Sec. 4) for a dense [groups, nb, nb]
boolean block selection, touching only the selected b × b tiles. The
selection becomes per-row lists of key blocks (and, for dK/dV, per-column
lists of query blocks) by a stable argsort, so rows may select any number of
blocks, from none to all. `jax.custom_vjp` pairs the forward kernel with the
dQ and dK/dV kernels (kernel.py); the row max gets no gradient.

Backends: `interpret=True` runs anywhere (the CPU tests). On GPU the
kernels of kernel.py go through Pallas's Triton backend
(`pallas_kernels.triton_params`; Mosaic GPU, Pallas's GPU default, refuses
their `pl.ds` row loads); on TPU
`platform="tpu"` (the default there) selects tpu.py, the same mathematics
with the lists in scalar prefetch and Mosaic's tiling. Both lower on a
CPU-only machine (tests/pallas_kernels/test_mra_attention.py: CUDA → Triton,
TPU → Mosaic, forward and backward) and both agree with reference.py in
the interpreter. The GPU kernels were compiled and tested on an H200 (jax
0.11.2, 2026-11-26: every case passes) and measured there slower than the
XLA gather path (8.9 against 3.3 ms forward+backward at n = 16384,
docs/kernels.md), so `efficient.attention.mra` defaults to `impl="xla"`;
the TPU variant has not run on a TPU (none lent).
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_kernels
from pallas_kernels.mra_attention import kernel
from pallas_kernels.mra_attention import reference
from pallas_kernels.mra_attention import tpu


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  """Tile sizes. `block` is MRA's block (tokens per block, 32 in MRA-2).

  `num_warps`, `num_stages`: the GPU (Triton) kernels' launch parameters,
  for tuning (`scripts/bench_kernels.py --mra_tunings`); ignored elsewhere.
  """
  block: int = 32
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    if self.block < 1 or self.block & (self.block - 1):
      raise ValueError(f"BlockSizes.block={self.block}: a power of two")
    if self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
      raise ValueError(f"BlockSizes.num_warps={self.num_warps}: a power of "
                       "two")
    if self.num_stages < 1:
      raise ValueError(f"BlockSizes.num_stages={self.num_stages}: >= 1")


def block_lists(selected):
  """Per-row lists from a [g, nb, nb] bool selection: (index, count).

  index[g, I, :count[g, I]] are row I's selected columns, ascending; the
  rest of the row is padding (never read).
  """
  count = selected.sum(-1, dtype=jnp.int32)
  index = jnp.argsort(~selected, axis=-1, stable=True).astype(jnp.int32)
  return index, count


def _call(body, index, count, blocked, whole, outputs, *, block_sizes,
          interpret, platform=None):
  """pallas_call over (group, block row), the layout all three kernels share.

  The kernel gets the row's list and count, its own `block` rows of each
  `blocked` array, each `whole` array entire (for `pl.ds` slicing), then
  one block of each output.
  """
  groups, nb, width = index.shape
  block = block_sizes.block

  def spec(x, per_block):
    tail = x.shape[2:]
    if per_block:
      return pl.BlockSpec((None, block) + tail,
                          lambda g, i: (g, i) + (0,) * len(tail))
    return pl.BlockSpec((None,) + x.shape[1:],
                        lambda g, i: (g,) + (0,) * (len(x.shape) - 1))

  in_specs = [pl.BlockSpec((None, None, width), lambda g, i: (g, i, 0)),
              pl.BlockSpec((None, 1), lambda g, i: (g, i))]
  in_specs += [spec(x, True) for x in blocked]
  in_specs += [spec(x, False) for x in whole]
  params = None if interpret else pallas_kernels.triton_params(
      platform, block_sizes.num_warps, block_sizes.num_stages)
  return pl.pallas_call(
      body, grid=(groups, nb), in_specs=in_specs,
      out_specs=[spec(o, True) for o in outputs], out_shape=outputs,
      interpret=interpret, compiler_params=params)(index, count, *blocked,
                                                   *whole)


def _is_tpu(platform):
  return pallas_kernels.resolve_platform(platform) == "tpu"


def _forward(q, k, v, key_mask, selected, block_sizes, interpret, platform):
  groups, n, d = q.shape
  block = block_sizes.block
  if n % block:
    raise ValueError(f"sequence length {n} is not a multiple of the block "
                     f"{block}; pad first (efficient.attention.mra does)")
  if selected.shape != (groups, n // block, n // block):
    raise ValueError(f"selected has shape {selected.shape}, expected "
                     f"{(groups, n // block, n // block)}")
  index, count = block_lists(selected)
  f32 = lambda *shape: jax.ShapeDtypeStruct((groups, n) + shape, jnp.float32)
  if _is_tpu(platform):
    dv = v.shape[-1]
    out, norm, row_max = tpu.call(
        functools.partial(tpu.forward_kernel, scale=1 / math.sqrt(d)),
        index, count, [(q, "tokens")],
        [(k, "tokens"), (v, "tokens"),
         (tpu.mask_rows(key_mask, block), "mask")],
        [f32(dv), f32(tpu.LANES), f32(tpu.LANES)],
        [(block, dv), (block, tpu.LANES), (block, tpu.LANES)], block=block,
        interpret=interpret)
    return out, norm[..., 0], row_max[..., 0]
  body = functools.partial(kernel.forward_kernel, block=block,
                           scale=1 / math.sqrt(d))
  return _call(body, index, count, [q], [k, v, key_mask],
               [f32(v.shape[-1]), f32(), f32()], block_sizes=block_sizes,
               interpret=interpret, platform=platform)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _mra_block_sparse(q, k, v, key_mask, selected, block_sizes, interpret,
                      platform):
  out, norm, row_max = _forward(q, k, v, key_mask, selected, block_sizes,
                                interpret, platform)
  return out, norm, row_max


def _fwd(q, k, v, key_mask, selected, block_sizes, interpret, platform):
  out, norm, row_max = _forward(q, k, v, key_mask, selected, block_sizes,
                                interpret, platform)
  return (out, norm, row_max), (q, k, v, key_mask, selected, row_max)


def _bwd(block_sizes, interpret, platform, residuals, cotangents):
  q, k, v, key_mask, selected, row_max = residuals
  dout, dnorm, _ = cotangents  # The row max is a constant (reference.py).
  d = q.shape[-1]
  block = block_sizes.block
  scale = 1 / math.sqrt(d)
  dout, dnorm = dout.astype(q.dtype), dnorm.astype(jnp.float32)
  index, count = block_lists(selected)
  t_index, t_count = block_lists(jnp.swapaxes(selected, 1, 2))
  if _is_tpu(platform):
    f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
    rows = [(tpu.lanes(dnorm), "lanes"), (tpu.lanes(row_max), "lanes")]
    mask_rows = (tpu.mask_rows(key_mask, block), "mask")
    (dq,) = tpu.call(
        functools.partial(tpu.dq_kernel, scale=scale), index, count,
        [(q, "tokens"), (dout, "tokens")] + rows,
        [(k, "tokens"), (v, "tokens"), mask_rows], [f32(q)],
        [(block, d)], block=block, interpret=interpret)
    dk, dv = tpu.call(
        functools.partial(tpu.dkv_kernel, scale=scale), t_index, t_count,
        [(k, "tokens"), (v, "tokens"), mask_rows],
        [(q, "tokens"), (dout, "tokens")] + rows, [f32(k), f32(v)],
        [(block, d), (block, v.shape[-1])], block=block, interpret=interpret)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            None, None)
  (dq,) = _call(
      functools.partial(kernel.dq_kernel, block=block, scale=scale),
      index, count, [q, dout, dnorm, row_max], [k, v, key_mask],
      [jax.ShapeDtypeStruct(q.shape, jnp.float32)], block_sizes=block_sizes,
      interpret=interpret, platform=platform)
  # dK/dV: one program per key block J, over the query blocks that chose J.
  dk, dv = _call(
      functools.partial(kernel.dkv_kernel, block=block, scale=scale),
      t_index, t_count, [k, v, key_mask], [q, dout, dnorm, row_max],
      [jax.ShapeDtypeStruct(k.shape, jnp.float32),
       jax.ShapeDtypeStruct(v.shape, jnp.float32)],
      block_sizes=block_sizes, interpret=interpret, platform=platform)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None,
          None)


_mra_block_sparse.defvjp(_fwd, _bwd)


def mra_block_sparse(q, k, v, key_mask, selected, *, block_sizes=None,
                     interpret=False, platform=None):
  """MRA-2's high-resolution part on the selected blocks (Pallas).

  Args:
    q, k: `[groups, n, d]`, n a multiple of `block_sizes.block`.
    v: `[groups, n, dv]`.
    key_mask: `[groups, n]` float, 1 for real keys.
    selected: `[groups, n/block, n/block]` bool block selection.
    block_sizes: `BlockSizes` (default: block 32).
    interpret: run the kernels in the Pallas interpreter (any backend).
    platform: the backend to compile for ("gpu", "tpu", ...; default
      `jax.default_backend()`): picks the compiler parameters, so a CPU-only
      machine can lower the kernels for another platform
      (`jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))`).

  Returns:
    (out `[groups, n, dv]`, norm `[groups, n]`, row_max `[groups, n]`), all
    float32, as `reference.mra_block_sparse_reference`.
  """
  block_sizes = block_sizes or BlockSizes()
  return _mra_block_sparse(q, k, v, key_mask.astype(jnp.float32),
                           selected, block_sizes, interpret, platform)
