"""Pallas kernels for YOSO's hashing and bucket cumulation.

  hash_kernel      one program per (group, token block): bits = x R > 0 on
                   the matrix unit, then codes = bits · P, P[hτ + t, h] = 2^t
                   (a second matmul packs the bits; exact in float32).
  scatter_kernel   one program per (group, hash, key block): adds the
                   block's (masked) value rows into the [2^τ, e] table of
                   that hash at the keys' codes with atomic adds (GPU:
                   Triton atomics; one vector atomic per block).
  gather_kernel    one program per (group, query block): for each hash,
                   gathers the query rows' buckets from the table and sums.

The interpreter has no array-indexed atomics, so `interpret=True` adds the
rows one at a time (`pl.ds` atomics): the same sums in another order.
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton


def hash_kernel(x_ref, rotation_ref, pack_ref, code_ref):
  x = x_ref[...].astype(jnp.float32)
  projected = jnp.dot(x, rotation_ref[...].astype(jnp.float32),
                      preferred_element_type=jnp.float32)
  bits = (projected > 0).astype(jnp.float32)
  codes = jnp.dot(bits, pack_ref[...], preferred_element_type=jnp.float32)
  code_ref[...] = (codes + 0.5).astype(jnp.int32)


def scatter_kernel(codes_ref, values_ref, table_in_ref, table_ref, *,
                   vectorized):
  del table_in_ref  # Aliased to table_ref (zeros on entry).
  if vectorized:
    pl_triton.atomic_add(table_ref, (codes_ref[...], slice(None)),
                         values_ref[...])
    return

  def add_row(j, carry):
    pl_triton.atomic_add(table_ref, (pl.ds(codes_ref[j], 1), slice(None)),
                         values_ref[pl.ds(j, 1), :])
    return carry

  jax.lax.fori_loop(0, codes_ref.shape[0], add_row, 0)


def gather_kernel(codes_ref, table_ref, out_ref):
  acc = jnp.zeros(out_ref.shape, jnp.float32)
  for h in range(codes_ref.shape[0]):  # m is small (LRA: 32): unrolled.
    acc += table_ref[h, codes_ref[h, :], :]
  out_ref[...] = acc
