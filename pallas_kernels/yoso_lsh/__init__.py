"""YOSO's LSH hashing and bucket cumulation as Pallas kernels (forward and
backward; Zeng et al., ICML 2021, Sec. 3.2–3.3).

  codes = hash_codes(x, rotation, hash_bits=τ, num_hashes=m)
  y = yoso_lsh_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask,
                          hash_bits=τ)

compute `reference.hash_codes` and `reference.cumulation` (Eq. 6);
`yoso_lsh_cumulation`'s `jax.custom_vjp` gives the original's LSH backward
(`reference.lsh_backward`): dV by the same cumulation with queries and keys
swapped, dQ and dK as cumulations of weighted values, one weight dimension
at a time (the original `lsh_weighted_cumulation` ver1), all through the
same two kernels. Wired into `efficient.attention.yoso` as `impl="pallas"`.

`sorted_lsh_cumulation` (sorted_tiles.py) computes the same forward and backward
by sorting tokens by code and multiplying tiles (no atomics):
`impl="pallas_sorted"`; with `hash_sum="atomic"` (GPU) the tiles add their
rows into one output, summing over hashes in the kernel:
`impl="pallas_sorted_atomic"`.

Layout: `[groups, n, d]` (groups = batch·heads), codes `[groups, m, n]`,
masks `[groups, n]` float. n is padded to the token block internally; the
value width is padded to a power of two (Triton's block shapes).

Backends:
  * GPU: Pallas's Triton backend (`pallas_kernels.triton_params`), atomic
    adds into [groups, m, 2^τ, e] float32 tables in global memory (the CUDA
    original's design). Compiled and tested on an H200 (jax 0.11.2,
    2026-11-26: every test in tests/pallas_kernels/test_yoso_lsh.py
    passes); forward at par with cuDNN dense attention at n = 16384, the
    table backward ~25× slower than it (docs/kernels.md).
  * TPU: the table kernels are not written (Mosaic has no scatter or
    atomics, and tables as one-hot matmuls on the MXU cost 2^τ·n·e
    multiply-adds per hash, the order of dense attention at τ = 11). The
    sorted tiles have a Mosaic form (tpu.py): `sorted_lsh_cumulation` and
    `impl="pallas_sorted"` take it on TPU (hashing by XLA there). It
    lowers for TPU and matches the reference in the interpreter; never
    run on a TPU (none lent).
  * interpret=True: anywhere (the CPU tests).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

import pallas_kernels
from pallas_kernels.yoso_lsh import kernel
from pallas_kernels.yoso_lsh import reference
from pallas_kernels.yoso_lsh.sorted_tiles import pow2
from pallas_kernels.yoso_lsh.sorted_tiles import sorted_lsh_cumulation


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  """Tokens per program (a power of two ≥ 16: Triton's block shapes)."""
  block: int = 128

  def __post_init__(self):
    if self.block < 16 or self.block & (self.block - 1):
      raise ValueError(f"BlockSizes.block={self.block}: a power of two ≥ 16")


def _params(interpret, platform):
  if interpret:
    return None
  params = pallas_kernels.triton_params(platform)
  if params is None:
    raise NotImplementedError(
        "pallas_kernels.yoso_lsh runs on GPU (Triton) or interpreted; not "
        f"on {pallas_kernels.resolve_platform(platform)} (see the module "
        "docstring)")
  return params


def _pad_tokens(x, block, axis):
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, -n % block)
  return jnp.pad(x, pad)


def hash_codes(x, rotation, *, hash_bits, num_hashes, block_sizes=None,
               interpret=False, platform=None):
  """[g, m, n] int32 codes of x [g, n, d] (`reference.hash_codes`)."""
  block = (block_sizes or BlockSizes()).block
  groups, n, d = x.shape
  columns = num_hashes * hash_bits
  width, hashes = pow2(columns), pow2(num_hashes)
  rows = rotation.shape[1]  # ≥ d: the hash may work in a padded dimension.
  dim = pow2(rows)
  rotation = jnp.pad(rotation[..., :columns].astype(jnp.float32),
                     ((0, 0), (0, dim - rows), (0, width - columns)))
  pack = np.zeros((width, hashes), np.float32)
  for h in range(num_hashes):
    pack[h * hash_bits:(h + 1) * hash_bits, h] = 2.0**np.arange(hash_bits)
  x = _pad_tokens(jnp.pad(x, ((0, 0), (0, 0), (0, dim - d))), block, 1)
  codes = pl.pallas_call(
      kernel.hash_kernel, grid=(groups, x.shape[1] // block),
      in_specs=[pl.BlockSpec((None, block, dim), lambda g, i: (g, i, 0)),
                pl.BlockSpec((None, dim, width), lambda g, i: (g, 0, 0)),
                pl.BlockSpec((width, hashes), lambda g, i: (0, 0))],
      out_specs=pl.BlockSpec((None, block, hashes), lambda g, i: (g, i, 0)),
      out_shape=jax.ShapeDtypeStruct((groups, x.shape[1], hashes), jnp.int32),
      interpret=interpret, compiler_params=_params(interpret, platform))(
          x, rotation, jnp.asarray(pack))
  return jnp.swapaxes(codes[:, :n, :num_hashes], 1, 2)


def cumulation(q_codes, k_codes, q_mask, k_mask, values, *, hash_bits,
               block_sizes=None, interpret=False, platform=None):
  """Y [g, n, e] float32 of Eq. 6 (`reference.cumulation`), no gradient."""
  block = (block_sizes or BlockSizes()).block
  groups, num_hashes, n = q_codes.shape
  e = values.shape[-1]
  width = pow2(e)
  buckets = 2**hash_bits
  params = _params(interpret, platform)
  values = values.astype(jnp.float32) * k_mask[..., None]
  values = _pad_tokens(jnp.pad(values, ((0, 0), (0, 0), (0, width - e))),
                       block, 1)
  k_codes = _pad_tokens(k_codes, block, 2)  # Padded keys add zero rows.
  q_codes = _pad_tokens(q_codes, block, 2)
  padded = values.shape[1]
  tables = pl.pallas_call(
      functools.partial(kernel.scatter_kernel, vectorized=not interpret),
      grid=(groups, num_hashes, padded // block),
      in_specs=[
          pl.BlockSpec((None, None, block), lambda g, h, i: (g, h, i)),
          pl.BlockSpec((None, block, width), lambda g, h, i: (g, i, 0)),
          pl.BlockSpec((None, None, buckets, width),
                       lambda g, h, i: (g, h, 0, 0))],
      out_specs=pl.BlockSpec((None, None, buckets, width),
                             lambda g, h, i: (g, h, 0, 0)),
      out_shape=jax.ShapeDtypeStruct((groups, num_hashes, buckets, width),
                                     jnp.float32),
      input_output_aliases={2: 0}, interpret=interpret,
      compiler_params=params)(
          k_codes, values,
          jnp.zeros((groups, num_hashes, buckets, width), jnp.float32))
  out = pl.pallas_call(
      kernel.gather_kernel, grid=(groups, padded // block),
      in_specs=[
          pl.BlockSpec((None, num_hashes, block), lambda g, i: (g, 0, i)),
          pl.BlockSpec((None, num_hashes, buckets, width),
                       lambda g, i: (g, 0, 0, 0))],
      out_specs=pl.BlockSpec((None, block, width), lambda g, i: (g, i, 0)),
      out_shape=jax.ShapeDtypeStruct((groups, padded, width), jnp.float32),
      interpret=interpret, compiler_params=params)(q_codes, tables)
  return out[:, :n, :e] * q_mask[..., None] / num_hashes


def _weighted(q_codes, k_codes, q_mask, k_mask, q_weight, k_weight, values,
              **kwargs):
  """Σ_t q_weight[t] · cumulation(k_weight[t] · values), one t per pass."""
  def one_dim(acc, weights):
    q_w, k_w = weights
    part = cumulation(q_codes, k_codes, q_mask, k_mask,
                      k_w[..., None] * values, **kwargs)
    return acc + q_w[..., None] * part, None

  init = jnp.zeros(q_weight.shape[:2] + values.shape[-1:], jnp.float32)
  out, _ = jax.lax.scan(one_dim, init, (jnp.moveaxis(q_weight, -1, 0),
                                        jnp.moveaxis(k_weight, -1, 0)))
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _yoso_lsh_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask,
                         hash_bits, block_sizes, interpret, platform):
  del q, k
  return cumulation(q_codes, k_codes, q_mask, k_mask, v, hash_bits=hash_bits,
                    block_sizes=block_sizes, interpret=interpret,
                    platform=platform)


def _fwd(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits, block_sizes,
         interpret, platform):
  out = _yoso_lsh_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask,
                             hash_bits, block_sizes, interpret, platform)
  return out, (q, k, v, q_codes, k_codes, q_mask, k_mask)


def _bwd(hash_bits, block_sizes, interpret, platform, residuals, grad):
  q, k, v, q_codes, k_codes, q_mask, k_mask = residuals
  kwargs = dict(hash_bits=hash_bits, block_sizes=block_sizes,
                interpret=interpret, platform=platform)
  half_tau = hash_bits / 2
  grad = grad.astype(jnp.float32)
  dv = cumulation(k_codes, q_codes, k_mask, q_mask, grad, **kwargs)
  dq = _weighted(q_codes, k_codes, q_mask, k_mask, grad, v.astype(
      jnp.float32), half_tau * k.astype(jnp.float32), **kwargs)
  dk = _weighted(k_codes, q_codes, k_mask, q_mask, v.astype(jnp.float32),
                 grad, half_tau * q.astype(jnp.float32), **kwargs)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None,
          None, None, None)


_yoso_lsh_cumulation.defvjp(_fwd, _bwd)


def yoso_lsh_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask, *,
                        hash_bits, block_sizes=None, interpret=False,
                        platform=None):
  """Sampled YOSO's B V with the original LSH backward (Pallas).

  Args:
    q, k: `[groups, n, d]` unit rows (only the backward reads them).
    v: `[groups, n, e]`.
    q_codes, k_codes: `[groups, m, n]` int32 codes in [0, 2^τ).
    q_mask, k_mask: `[groups, n]` float, 1 for real tokens.
    hash_bits: τ.
    block_sizes: `BlockSizes` (default 128 tokens per program).
    interpret: run in the Pallas interpreter (any backend).
    platform: backend to compile for (default `jax.default_backend()`);
      "gpu" lets a CPU machine lower for CUDA.

  Returns:
    `[groups, n, e]` float32, `reference.cumulation`.
  """
  return _yoso_lsh_cumulation(q, k, v, q_codes, k_codes,
                              q_mask.astype(jnp.float32),
                              k_mask.astype(jnp.float32), hash_bits,
                              block_sizes or BlockSizes(), interpret,
                              platform)


__all__ = ["BlockSizes", "cumulation", "hash_codes", "reference",
           "sorted_lsh_cumulation", "yoso_lsh_cumulation"]
