"""pallas_kernels/mra_attention: kernels = reference (interpreted on CPU).

Forward outputs and gradients through the custom backward against the
dense reference and its autodiff, for random selections, one block per row,
every block, rows with no block, padded keys, fp32 and bf16.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import mra_attention as kernels
from pallas_kernels.mra_attention import reference
from tests.pallas_kernels import LOWERS_TRITON_WITHOUT_GPU
from tests.pallas_kernels import interpret

# Tolerances per dtype (max abs error relative to the reference's max abs):
# fp32 differs only by summation order; bf16 inputs and bf16 P·V products
# against a reference computed in fp32 from the same bf16 inputs.
RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(seed, groups, n, d, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(groups, n, d)), dtype)
             for _ in range(3))
  mask = np.ones((groups, n), np.float32)
  mask[-1, n - n // 5:] = 0  # Padded keys in the last group.
  return q, k, v, jnp.asarray(mask), rng


def _selection(kind, rng, groups, nb):
  if kind == "random":
    sel = rng.random((groups, nb, nb)) < 0.4
    sel[0, 1] = False  # A row with no block.
  elif kind == "one_per_row":
    sel = np.zeros((groups, nb, nb), bool)
    sel[:, np.arange(nb), rng.integers(0, nb, nb)] = True
  elif kind == "all":
    sel = np.ones((groups, nb, nb), bool)
  return jnp.asarray(sel)


def _close(got, want, dtype):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  scale = max(np.abs(want).max(), 1e-6)
  assert np.abs(got - want).max() <= RTOL[dtype] * scale, (
      np.abs(got - want).max(), scale)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["random", "one_per_row", "all"])
@pytest.mark.parametrize("groups,n,d,block", [(2, 64, 16, 16),
                                              (1, 96, 32, 32)])
def test_forward_and_gradients_match_the_reference(groups, n, d, block, kind,
                                                   dtype):
  _check_against_reference(groups, n, d, block, kind, dtype, platform=None)


@pytest.mark.parametrize("kind,dtype", [("random", jnp.float32),
                                        ("all", jnp.float32),
                                        ("one_per_row", jnp.bfloat16)])
def test_tpu_variant_matches_the_reference(kind, dtype):
  """The Mosaic (scalar-prefetch) kernels of tpu.py (interpreted off TPU)."""
  _check_against_reference(2, 64, 16, 16, kind, dtype, platform="tpu")


def _check_against_reference(groups, n, d, block, kind, dtype, platform):
  q, k, v, mask, rng = _inputs(0, groups, n, d, dtype)
  selected = _selection(kind, rng, groups, n // block)
  index, count = kernels.block_lists(selected)
  sizes = kernels.BlockSizes(block=block)

  def run_kernel(q, k, v):
    return kernels.mra_block_sparse(q, k, v, mask, selected,
                                    block_sizes=sizes,
                                    interpret=interpret(platform),
                                    platform=platform)

  def run_reference(q, k, v):
    return reference.mra_block_sparse_reference(q, k, v, mask, index, count,
                                                block)

  got, want = run_kernel(q, k, v), run_reference(q, k, v)
  for a, b in zip(got, want):
    _close(a, b, dtype)
  # A cotangent on out and norm (the row max has no gradient).
  weights = [jnp.asarray(rng.normal(size=x.shape), jnp.float32)
             for x in want[:2]]

  def loss(fn):
    return lambda q, k, v: sum(jnp.sum(o * w)
                               for o, w in zip(fn(q, k, v)[:2], weights))

  got = jax.grad(loss(run_kernel), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(run_reference), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    assert a.dtype == dtype
    _close(a, b, dtype)


def test_all_blocks_give_softmax_attention():
  q, k, v, mask, _ = _inputs(1, 2, 64, 16)
  selected = jnp.ones((2, 4, 4), bool)
  out, norm, _ = kernels.mra_block_sparse(
      q, k, v, mask, selected, block_sizes=kernels.BlockSizes(16),
      interpret=interpret())
  want = jax.nn.dot_product_attention(
      q[:, :, None], k[:, :, None], v[:, :, None],
      mask=mask.astype(bool)[:, None, None, :])[:, :, 0]
  np.testing.assert_allclose(out / norm[..., None], want, atol=1e-5)


def test_rows_without_blocks_output_zero_and_the_empty_max():
  q, k, v, mask, _ = _inputs(2, 1, 32, 8)
  selected = jnp.asarray([[[True, False], [False, False]]])
  out, norm, row_max = kernels.mra_block_sparse(
      q, k, v, mask, selected, block_sizes=kernels.BlockSizes(16),
      interpret=interpret())
  assert float(jnp.abs(out[0, 16:]).max()) == 0.0
  assert float(jnp.abs(norm[0, 16:]).max()) == 0.0
  assert float(row_max[0, 16:].max()) == reference.EMPTY_ROW_MAX
  s = q[0, :16] @ k[0, :16].T / math.sqrt(8)
  np.testing.assert_allclose(row_max[0, :16], s.max(-1), rtol=1e-6)


def test_block_lists_and_refusals():
  selected = jnp.asarray([[[False, True, True], [False] * 3, [True] * 3]])
  index, count = kernels.block_lists(selected)
  assert count.tolist() == [[2, 0, 3]]
  assert index[0, 0, :2].tolist() == [1, 2]
  assert index[0, 2].tolist() == [0, 1, 2]
  q = jnp.ones((1, 40, 8))
  with pytest.raises(ValueError, match="not a multiple of the block"):
    kernels.mra_block_sparse(q, q, q, jnp.ones((1, 40)),
                             jnp.ones((1, 2, 2), bool),
                             block_sizes=kernels.BlockSizes(16),
                             interpret=interpret())
  with pytest.raises(ValueError, match="power of two"):
    kernels.BlockSizes(block=24)


@pytest.mark.parametrize("platform,lowering,custom_call", [
    ("gpu", "cuda", "xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")])
def test_kernels_lower_for_their_platform_on_a_cpu_machine(
    platform, lowering, custom_call):
  """Forward, dQ and dK/dV lower without a device: the GPU form to Triton
  for CUDA, the TPU form to Mosaic (tiling rules included).

  Lowering is not compiling: Triton's and Mosaic's own compilers run only
  on a device.
  """
  if platform == "gpu" and not LOWERS_TRITON_WITHOUT_GPU:
    pytest.skip("jax >= 0.11 lowers Triton only with a GPU's info")
  q = jnp.ones((2, 128, 64), jnp.bfloat16)
  mask = jnp.ones((2, 128), jnp.float32)
  selected = jnp.eye(4, dtype=bool)[None].repeat(2, 0)

  def loss(q, k, v):
    out, norm, _ = kernels.mra_block_sparse(q, k, v, mask, selected,
                                            platform=platform)
    return out.sum() + norm.sum()

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(
      q, q, q).lower(lowering_platforms=(lowering,)).as_text()
  assert lowered.count(custom_call) == 3  # forward, dQ, dK/dV.
