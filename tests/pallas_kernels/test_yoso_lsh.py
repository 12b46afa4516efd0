"""pallas_kernels/yoso_lsh: kernels = reference (interpreted on CPU).

Hash codes, the bucket cumulation (= the dense collision matrix times V)
and the LSH backward, on random inputs with ragged lengths, padded tokens,
a value width that is not a power of two, fp32 and bf16 values, and the
extreme collision patterns; plus lowering to Triton for CUDA on the CPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.attention import yoso
from pallas_kernels import yoso_lsh
from pallas_kernels.yoso_lsh import reference
from pallas_kernels.yoso_lsh import sorted_tiles
from pallas_kernels.yoso_lsh import tpu
from tests.pallas_kernels import LOWERS_TRITON_WITHOUT_GPU
from tests.pallas_kernels import interpret

SIZES = yoso_lsh.BlockSizes(block=16)
ALGORITHMS = ["tables", "sorted", "sorted_atomic", "sorted_tpu"]


def _cumulation(algorithm):
  """The Pallas cumulation with the LSH backward, by tables, sorted tiles
  (GPU form: hashes summed by un-sorting or by atomics) or sorted tiles
  (TPU form, interpreted off TPU); 16-token blocks / tiles, so 37 tokens
  make ragged tiles."""
  if algorithm == "tables":
    return lambda *args, **kw: yoso_lsh.yoso_lsh_cumulation(
        *args, block_sizes=SIZES, interpret=interpret(), **kw)
  platform = "tpu" if algorithm == "sorted_tpu" else None
  hash_sum = "atomic" if algorithm == "sorted_atomic" else "unsort"
  return lambda *args, **kw: sorted_tiles.sorted_lsh_cumulation(
      *args, tile=16, hash_sum=hash_sum, interpret=interpret(platform),
      platform=platform, **kw)


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True),
                     jnp.float32)


def _inputs(seed, groups=2, n=37, d=16, e=24, hash_bits=5, num_hashes=4,
            dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k = _unit(rng, (groups, n, d)), _unit(rng, (groups, n, d))
  v = jnp.asarray(rng.normal(size=(groups, n, e)), dtype)
  mask = np.ones((groups, n), np.float32)
  mask[-1, n - n // 4:] = 0  # Padded tokens in the last group.
  rotation = yoso.hash_rotation(jax.random.PRNGKey(seed), (groups,), d,
                                num_hashes=num_hashes, hash_bits=hash_bits)
  return q, k, v, jnp.asarray(mask), rotation, rng


@pytest.mark.parametrize("hashing", ["hadamard", "gaussian"])
def test_hash_codes_match_the_reference_and_the_xla_path(hashing):
  q, _, _, _, _, _ = _inputs(0)
  rotation = yoso.hash_rotation(jax.random.PRNGKey(1), (2,), 16,
                                num_hashes=4, hash_bits=5, hashing=hashing)
  codes = yoso_lsh.hash_codes(q, rotation, hash_bits=5, num_hashes=4,
                              block_sizes=SIZES, interpret=interpret())
  assert codes.shape == (2, 4, 37)
  padded = jnp.pad(q, ((0, 0), (0, 0), (0, rotation.shape[1] - 16)))
  np.testing.assert_array_equal(codes, reference.hash_codes(padded, rotation,
                                                            5, 4))
  np.testing.assert_array_equal(codes, yoso.pack_codes(
      q, rotation, num_hashes=4, hash_bits=5))
  assert int(codes.max()) < 32 and int(codes.min()) >= 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5),
                                       (jnp.bfloat16, 1e-5)])
def test_cumulation_and_backward_match_the_reference(dtype, tol, algorithm):
  q, k, v, mask, rotation, rng = _inputs(2, dtype=dtype)
  q_codes, k_codes = (reference.hash_codes(
      jnp.pad(x, ((0, 0), (0, 0), (0, rotation.shape[1] - 16))), rotation, 5,
      4) for x in (q, k))
  run = lambda q, k, v: _cumulation(algorithm)(
      q, k, v, q_codes, k_codes, mask, mask, hash_bits=5)
  out = run(q, k, v)
  want = reference.cumulation(q_codes, k_codes, mask, mask, v, 5)
  dense = reference.collision_matrix(q_codes, k_codes, mask, mask) @ v.astype(
      jnp.float32)
  scale = float(jnp.abs(want).max())
  assert float(jnp.abs(out - want).max()) <= tol * scale  # bf16 in, f32 sums.
  assert float(jnp.abs(want - dense).max()) <= 1e-5 * scale
  np.testing.assert_array_equal(out[-1, -9:], 0.0)  # Padded queries.
  weights = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  grads = jax.grad(lambda *a: (run(*a) * weights).sum(), argnums=(0, 1, 2))(
      q, k, v)
  wants = reference.lsh_backward(q, k, v.astype(jnp.float32), weights,
                                 q_codes, k_codes, mask, mask, 5)
  for got, ref in zip(grads, wants):
    assert got.dtype == (dtype if got.shape[-1] == 24 else jnp.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref,
                               atol=2e-2 * float(jnp.abs(ref).max()) if
                               dtype == jnp.bfloat16 else 1e-5)
  # The XLA path's table backward gives the same sums.
  xla = yoso.lsh_backward(q, k, v.astype(jnp.float32), weights, q_codes,
                          k_codes, mask, mask, 5, method="tables")
  for got, ref in zip(wants, xla):
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("pattern", ["all_collide", "none_collide",
                                     "two_buckets"])
def test_extreme_collision_patterns(pattern, algorithm):
  q, k, v, mask, _, rng = _inputs(3)
  shape = (2, 4, 37)
  q_codes = jnp.zeros(shape, jnp.int32) + 7
  k_codes = q_codes if pattern == "all_collide" else q_codes + 1
  if pattern == "two_buckets":  # Buckets of ~18 tokens: ranges span tiles.
    q_codes, k_codes = (jnp.asarray(rng.integers(0, 2, shape), jnp.int32)
                        for _ in range(2))
  out = _cumulation(algorithm)(q, k, v, q_codes, k_codes, mask, mask,
                               hash_bits=5)
  if pattern == "none_collide":
    np.testing.assert_array_equal(out, 0.0)
  elif pattern == "all_collide":  # Every query reads the sum of real values.
    want = (v * mask[..., None]).sum(1, keepdims=True) * mask[..., None]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  else:
    want = reference.cumulation(q_codes, k_codes, mask, mask, v, 5)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(want).max()) > 1.0


def test_yoso_attention_pallas_impl_equals_xla_impl():
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 20, 2, 8)), jnp.float32)
             for _ in range(3))
  mask = jnp.arange(20)[None] < 17
  key = jax.random.PRNGKey(5)
  kwargs = dict(mask=mask, hash_bits=4, num_hashes=4, rng=key,
                backward="lsh_tables")
  f = lambda impl: lambda q, k, v: yoso.yoso_attention(q, k, v, impl=impl,
                                                       **kwargs)
  loss = lambda fn: lambda *a: (fn(*a) * jnp.arange(8.0)).sum()
  for impl in ("pallas", "pallas_sorted", "pallas_sorted_atomic"):
    np.testing.assert_allclose(f(impl)(q, k, v), f("xla")(q, k, v),
                               atol=1e-6)
    for got, want in zip(jax.grad(loss(f(impl)), (0, 1, 2))(q, k, v),
                         jax.grad(loss(f("xla")), (0, 1, 2))(q, k, v)):
      np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match="impl='pallas'"):
    yoso.yoso_attention(q, k, v, impl="pallas", sampled=False)


def test_kernels_lower_to_triton_for_cuda_on_a_cpu_machine():
  if not LOWERS_TRITON_WITHOUT_GPU:
    pytest.skip("jax >= 0.11 lowers Triton only with a GPU's info")
  q, k, v, mask, rotation, _ = _inputs(6, n=64, d=32, e=64)
  codes = jnp.zeros((2, 4, 64), jnp.int32)

  def loss(q, k, v):
    return yoso_lsh.yoso_lsh_cumulation(q, k, v, codes, codes, mask, mask,
                                        hash_bits=5, platform="gpu").sum()

  lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(
      q, k, v).lower(lowering_platforms=("cuda",)).as_text()
  # Scatter + gather for the forward, dV, and the dQ and dK passes.
  assert lowered.count("xla.gpu.triton") == 8
  hashed = jax.jit(lambda x: yoso_lsh.hash_codes(
      x, rotation, hash_bits=5, num_hashes=4, platform="gpu")).trace(q).lower(
          lowering_platforms=("cuda",)).as_text()
  assert hashed.count("xla.gpu.triton") == 1
  with pytest.raises(NotImplementedError, match="tpu"):
    yoso_lsh.hash_codes(q, rotation, hash_bits=5, num_hashes=4,
                        platform="tpu")
  # Sorted tiles: one kernel each for the forward, dV, dQ and dK.
  sorted_loss = lambda q, k, v: sorted_tiles.sorted_lsh_cumulation(
      q, k, v, codes, codes, mask, mask, hash_bits=5, platform="gpu").sum()
  lowered = jax.jit(jax.value_and_grad(sorted_loss, argnums=(0, 1, 2))).trace(
      q, k, v).lower(lowering_platforms=("cuda",)).as_text()
  assert lowered.count("xla.gpu.triton") == 4
  atomic_loss = lambda q, k, v: sorted_tiles.sorted_lsh_cumulation(
      q, k, v, codes, codes, mask, mask, hash_bits=5, hash_sum="atomic",
      platform="gpu").sum()
  lowered = jax.jit(jax.value_and_grad(atomic_loss, argnums=(0, 1, 2))).trace(
      q, k, v).lower(lowering_platforms=("cuda",)).as_text()
  assert lowered.count("xla.gpu.triton") == 4
  with pytest.raises(ValueError, match="Mosaic"):
    sorted_tiles.sorted_lsh_cumulation(q, k, v, codes, codes, mask, mask,
                                       hash_bits=5, hash_sum="atomic",
                                       platform="tpu")


def test_tpu_sorted_tiles_lower_to_mosaic_and_overflow_takes_the_tables():
  """The TPU form lowers for TPU on a CPU machine (one Mosaic kernel per
  pass, inside the capacity check's lax.cond), and more staircase pairs
  than its capacity give the exact table result, not a truncated one."""
  q, k, v, mask, _, rng = _inputs(7, n=300, d=32, e=64)
  codes = jnp.asarray(rng.integers(0, 8, (2, 4, 300)), jnp.int32)
  loss = lambda q, k, v: sorted_tiles.sorted_lsh_cumulation(
      q, k, v, codes, codes, mask, mask, hash_bits=3, tile=128,
      platform="tpu").sum()
  lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(
      q, k, v).lower(lowering_platforms=("tpu",)).as_text()
  assert lowered.count("tpu_custom_call") == 4  # Forward, dV, dQ, dK.
  # 8 buckets of ~38 tokens over 16-token tiles: about 4 column tiles per
  # row tile. Capacity 8 (< 19 row tiles) overflows: the table path;
  # capacity 100 fits: the kernel.
  rows, cols = sorted_tiles._plan(codes, codes, 16)[:2]
  needed = int(tpu.pairs_needed(rows, cols, 300, 16).max())
  assert 8 < needed <= 100
  values = v * mask[..., None]
  for capacity in (8, 100):
    out = tpu.sorted_cumulation(rows, cols, values, hash_bits=3, tile=16,
                                capacity=capacity, interpret=True)
    want = 4 * reference.cumulation(codes, codes, jnp.ones_like(mask),
                                    jnp.ones_like(mask), values, 3)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
  # The interpreted cases above (37 tokens, 16-token tiles) fit the default
  # capacity, so they ran the kernel, not the table fallback.
  for seed in (2, 3):
    q, k, _, _, rotation, rng = _inputs(seed)
    patterns = [reference.hash_codes(jnp.pad(
        x, ((0, 0), (0, 0), (0, rotation.shape[1] - 16))), rotation, 5, 4)
                for x in (q, k)]
    patterns += [jnp.zeros((2, 4, 37), jnp.int32),
                 jnp.asarray(rng.integers(0, 2, (2, 4, 37)), jnp.int32)]
    for a in patterns:
      for b in patterns:
        rows, cols = sorted_tiles._plan(a, b, 16)[:2]
        assert int(tpu.pairs_needed(rows, cols, 37, 16).max()) <= (
            tpu.default_capacity(rows[1].shape[-1], 16))
