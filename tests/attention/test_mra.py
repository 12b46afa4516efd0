"""MRA-2: independent reference, exact limits, selection, padding, grads."""
import functools

import jax
import jax.extend
import jax.numpy as jnp
import jax.test_util
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from efficient.attention import mra
from efficient.attention import softmax


def _inputs(seed, batch=2, length=64, heads=2, dim=8, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(batch, length, heads, dim)), dtype)
               for _ in range(3))


def _lengths_mask(length, lengths):
  return np.arange(length)[None] < np.asarray(lengths)[:, None]


def _reference_head(q, k, v, mu, bs, bpr, mode, first_n, diag_n):
  """The original's `mra2_attention` for one head, dense, numpy float64.

  `mu` None takes the original's unmasked path. Returns the output, the
  selection scores S = L − r + priors and the flat top-k indices.
  """
  n, d = q.shape
  nb = n // bs
  num = min(nb * bpr, nb * nb)
  masked = mu is not None
  if masked:
    q, k, v = q * mu[:, None], k * mu[:, None], v * mu[:, None]
    cnt = mu.reshape(nb, bs).sum(1)
    den = cnt + 1e-6
  else:
    cnt = np.full(nb, float(bs))
    den = cnt
  sums = lambda x: np.stack([x[i * bs:(i + 1) * bs].sum(0) for i in range(nb)])
  qh, kh, vh = (sums(x) / den[:, None] for x in (q, k, v))
  low = qh @ kh.T / np.sqrt(d)
  r = low.max(1)  # Before the fully-padded-pair penalty, as the original.
  if masked:
    low = low - 1e4 * (np.outer(cnt, cnt) < 0.5)
  scores = low - r[:, None]
  for i in range(nb):
    for j in range(nb):
      if diag_n > 0 and abs(i - j) <= diag_n // 2:
        scores[i, j] += 5e3
      if i < first_n:
        scores[i, j] += 5e3
      if j < first_n:
        scores[i, j] += 5e3
  order = np.argsort(-scores.ravel(), kind="stable")[:num]
  sel = np.zeros(nb * nb, bool)
  sel[order] = True
  sel = sel.reshape(nb, nb)
  hi_mask = scores >= scores.ravel()[order].min()

  dense = q @ k.T / np.sqrt(d)
  tok_sel = np.kron(sel, np.ones((bs, bs))).astype(bool)
  m = np.array([dense[i, tok_sel[i]].max() if tok_sel[i].any() else -1e5
                for i in range(n)])
  key_mu = mu if masked else np.ones(n)
  p = np.exp(np.where(tok_sel, dense - m[:, None] - 1e4 * (1 - key_mu)[None],
                      -np.inf))
  o_hi, n_hi = p @ v, p.sum(1)
  if mode == "sparse":
    y = o_hi / (n_hi[:, None] + 1e-6)
  else:
    p_lo = np.exp(low - r[:, None] - 1e4 * hi_mask) * cnt[None]
    o_lo = np.repeat(p_lo @ vh, bs, axis=0)
    n_lo = np.repeat(p_lo.sum(1), bs)
    c = np.repeat(r, bs) - m
    if masked:
      c = c * mu
    c_lo, c_hi = np.exp(np.minimum(c, 0)), np.exp(-np.maximum(c, 0))
    y = (o_hi * c_hi[:, None] + o_lo * c_lo[:, None]) / (
        n_hi * c_hi + n_lo * c_lo + 1e-6)[:, None]
  if masked:
    y = y * mu[:, None]
  return y, scores, order


def _reference(q, k, v, mask, bs, bpr, mode, first_n=0, diag_n=0):
  """`_reference_head` over [batch, n, heads, d]; also returns S and top-k."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, _, h, _ = q.shape
  out = np.zeros_like(v)
  scores, orders = {}, {}
  for bi in range(b):
    mu = None if mask is None else np.asarray(mask[bi], np.float64)
    for hi in range(h):
      out[bi, :, hi], scores[bi, hi], orders[bi, hi] = _reference_head(
          q[bi, :, hi], k[bi, :, hi], v[bi, :, hi], mu, bs, bpr, mode,
          first_n, diag_n)
  return out, scores, orders


def _selection_margin(scores, order):
  """Smallest |S_a − S_b|, a chosen, b not, over pairs that are not tied.

  Exact ties are structural (every row's arg-max block scores exactly 0;
  fully padded pairs share −1e4 − r_I) and stay tied under small input
  changes, where lower flat indices win; any other near-tie could flip.
  """
  flat = scores.ravel()
  chosen = np.zeros(flat.size, bool)
  chosen[order] = True
  diff = np.abs(flat[chosen][:, None] - flat[~chosen][None, :])
  return diff[diff > 0].min()


_CONFIGS = [  # length, block, block_per_row, first_n, diag_n
    (128, 32, 2, 1, 0),  # The LRA default priors, bpr small.
    (64, 8, 2, 0, 3),  # Diagonal band, no first-n prior.
    (96, 16, 3, 1, 1),
]


@pytest.mark.parametrize("length,bs,bpr,first_n,diag_n", _CONFIGS)
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_matches_independent_reference(length, bs, bpr, first_n, diag_n,
                                       mode):
  q, k, v = _inputs(0, length=length)
  mask = _lengths_mask(length, [length, length - bs - 5])
  kw = dict(block_size=bs, block_per_row=bpr, approx_mode=mode,
            initial_prior_first_n_blocks=first_n,
            initial_prior_diagonal_n_blocks=diag_n)
  for m in (mask, None):
    out = mra.mra_attention(q, k, v, mask=None if m is None else
                            jnp.asarray(m), **kw)
    want = _reference(q, k, v, m, bs, bpr, mode, first_n, diag_n)[0]
    np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-5)
    # Partial selection: the approximation is far from exact softmax here,
    # so agreement above is not the softmax limit in disguise.
    exact = softmax.softmax_attention(q, k, v, mask=None if m is None else
                                      jnp.asarray(m))
    assert np.abs(np.asarray(out) - np.asarray(exact))[0].max() > 1e-2


@pytest.mark.parametrize("mode", ["full", "sparse"])
@pytest.mark.parametrize("padded", [False, True])
def test_all_blocks_selected_is_softmax(mode, padded):
  q, k, v = _inputs(1, length=64)
  mask = jnp.asarray(_lengths_mask(64, [64, 37] if padded else [64, 64]))
  for bpr in (4, 9):  # nb = 4; more than nb is capped at nb².
    out = mra.mra_attention(q, k, v, mask=mask if padded else None,
                            block_size=16, block_per_row=bpr,
                            approx_mode=mode)
    want = softmax.softmax_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1, :37], want[1, :37], rtol=1e-5,
                               atol=1e-5)
    if padded:
      np.testing.assert_array_equal(out[1, 37:], 0.0)  # Y ·= μ.


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_padded_values_never_change_real_outputs(mode):
  q, k, v = _inputs(2, length=96)
  mask = _lengths_mask(96, [96, 50])
  rng = np.random.default_rng(9)
  noisy = []
  for x in (q, k, v):
    x = np.array(x)
    x[1, 50:] = rng.normal(size=x[1, 50:].shape) * 50
    noisy.append(jnp.asarray(x))
  kw = dict(mask=jnp.asarray(mask), block_size=16, block_per_row=2,
            approx_mode=mode)
  a = mra.mra_attention(q, k, v, **kw)
  b = mra.mra_attention(*noisy, **kw)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[1, :50], b[1, :50], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_extending_the_padded_tail_keeps_real_outputs(mode):
  # 40 real tokens in 16-blocks: 3 real block rows, 9 real block pairs. With
  # block_per_row = 3 every real pair is selected at 48 and at 96 tokens
  # (real pairs outrank padded ones by ~1e4), so the tail cannot matter.
  # (With fewer blocks it can, in the original too: k = nb·bpr grows with
  # the padding; see the module docstring.)
  q, k, v = _inputs(3, batch=1, length=96)
  kw = dict(block_size=16, block_per_row=3, approx_mode=mode)
  long = mra.mra_attention(q, k, v, mask=jnp.asarray(_lengths_mask(96, [40])),
                           **kw)
  short = mra.mra_attention(q[:, :48], k[:, :48], v[:, :48],
                            mask=jnp.asarray(_lengths_mask(48, [40])), **kw)
  ragged = mra.mra_attention(q[:, :40], k[:, :40], v[:, :40], **kw)
  np.testing.assert_allclose(long[:, :40], short[:, :40], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(ragged, short[:, :40], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length,bs", [(100, 32), (45, 16)])
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_ragged_length_is_padded_internally(length, bs, mode):
  q, k, v = _inputs(4, length=length)
  padded = -(-length // bs) * bs
  pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0)))
  kw = dict(block_size=bs, block_per_row=2, approx_mode=mode)
  for lengths in ([length, length], [length, length - 20]):
    user = _lengths_mask(length, lengths)
    explicit = _lengths_mask(padded, lengths)
    # mask=None still needs the internal mask for the ragged tail.
    out = mra.mra_attention(q, k, v, mask=None if lengths[1] == length else
                            jnp.asarray(user), **kw)
    assert out.shape == q.shape
    want = _reference(pad(q), pad(k), pad(v), explicit, bs, 2, mode,
                      first_n=1)[0][:, :length]
    np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-5)
    same = mra.mra_attention(pad(q), pad(k), pad(v),
                             mask=jnp.asarray(explicit), **kw)[:, :length]
    np.testing.assert_allclose(out, same, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "bpr,first_n,diag_n",
    [(1, 0, 0), (2, 0, 0), (1, 1, 0), (2, 0, 3), (1, 2, 1)])
def test_selection_is_the_global_top_k_of_normalised_low_res_logits(
    bpr, first_n, diag_n):
  q, k, v = _inputs(5, batch=2, length=128)
  mask = _lengths_mask(128, [128, 100])
  kw = dict(block_size=16, block_per_row=bpr,
            initial_prior_first_n_blocks=first_n,
            initial_prior_diagonal_n_blocks=diag_n)
  got = mra.selected_blocks(q, k, mask=jnp.asarray(mask), **kw)
  _, scores, orders = _reference(q, k, v, mask, 16, bpr, "full", first_n,
                                 diag_n)
  assert got.shape == (2, 2, 8 * bpr)
  for (bi, hi), order in orders.items():
    np.testing.assert_array_equal(got[bi, hi], np.sort(order))
    assert _selection_margin(scores[bi, hi], order) > 1e-4  # Well posed.
  if bpr == 2 and first_n == diag_n == 0:
    # One top-k over all block pairs, not the top 2 of each block row.
    per_row = np.sort((np.argsort(-scores[0, 0], 1, kind="stable")[:, :2] +
                       8 * np.arange(8)[:, None]).ravel())
    assert not np.array_equal(got[0, 0], per_row)
  if bpr == 1 and first_n == 1:
    # The priors fill k: some block rows get no high-resolution block, and
    # the original's sparse mode outputs 0 there (full mode does not).
    rows = np.bincount(np.asarray(got[0, 0]) // 8, minlength=8)
    empty = np.flatnonzero(rows == 0)
    assert empty.size
    sparse = mra.mra_attention(q, k, v, mask=jnp.asarray(mask),
                               approx_mode="sparse", **kw)
    full = mra.mra_attention(q, k, v, mask=jnp.asarray(mask),
                             approx_mode="full", **kw)
    for blk in empty:
      np.testing.assert_array_equal(sparse[0, blk * 16:(blk + 1) * 16, 0], 0)
      assert np.abs(full[0, blk * 16:(blk + 1) * 16, 0]).min() > 0


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_gradients_match_finite_differences(mode):
  with jax.enable_x64(True):
    q, k, v = _inputs(6, batch=1, length=32, heads=2, dim=4,
                      dtype=jnp.float64)
    mask = jnp.asarray(_lengths_mask(32, [27]))
    kw = dict(block_size=8, block_per_row=2, approx_mode=mode)
    # Selection is piecewise constant: make sure no top-k tie is within
    # reach of the finite-difference steps.
    _, scores, orders = _reference(q, k, v, np.asarray(mask), 8, 2, mode, 1)
    for key, order in orders.items():
      assert _selection_margin(scores[key], order) > 1e-2
    fn = lambda q, k, v: mra.mra_attention(q, k, v, mask=mask, **kw)
    assert fn(q, k, v).dtype == jnp.float64  # float64 inputs stay float64.
    jax.test_util.check_grads(fn, (q, k, v), order=1, modes=["rev"],
                              eps=1e-5, atol=1e-6, rtol=1e-5)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), (0, 1, 2))(q, k, v)
    for g in grads:
      assert np.abs(g[0, :27]).max() > 1e-3
      np.testing.assert_array_equal(g[0, 27:], 0.0)  # Padded tokens.


def test_jit_vmap_and_sharded_agree():
  q, k, v = _inputs(7, batch=8, length=40, heads=2, dim=8)
  mask = jnp.asarray(_lengths_mask(40, np.arange(26, 42, 2).clip(max=40)))
  fn = lambda q, k, v, mask: mra.mra_attention(q, k, v, mask=mask,
                                                block_size=16,
                                                block_per_row=2)
  eager = fn(q, k, v, mask)
  np.testing.assert_allclose(jax.jit(fn)(q, k, v, mask), eager, rtol=1e-5,
                             atol=1e-6)
  # vmap over an extra leading axis, batch inside.
  split = lambda x: x.reshape(2, 4, *x.shape[1:])
  mapped = jax.vmap(fn)(split(q), split(k), split(v), split(mask))
  np.testing.assert_allclose(mapped.reshape(eager.shape), eager, rtol=1e-5,
                             atol=1e-6)
  mesh = jax.make_mesh((8,), ("data",))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  sharded = jax.jit(fn)(put(q), put(k), put(v), put(mask))
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, eager, rtol=1e-5, atol=1e-6)


def test_low_precision_inputs_compute_in_float32():
  q, k, v = _inputs(8, length=32)
  kw = dict(block_size=8, block_per_row=2)
  low = mra.mra_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), **kw)
  assert low.dtype == jnp.bfloat16
  want = mra.mra_attention(*(x.astype(jnp.bfloat16).astype(jnp.float32)
                             for x in (q, k, v)), **kw)
  np.testing.assert_allclose(low.astype(jnp.float32), want, rtol=1e-2,
                             atol=1e-2)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_input_precision_keeps_bf16_products_and_matches_float32(impl):
  """precision="input": bf16 blocks with float32 accumulation. Equal to the
  default for float32 inputs; for bf16 inputs within bf16's rounding of the
  float32 computation, in values and gradients (padding + full mode)."""
  q, k, v = _inputs(12, length=40)
  mask = jnp.asarray(_lengths_mask(40, [40, 29]))
  kw = dict(block_size=8, block_per_row=2, mask=mask, impl=impl)
  np.testing.assert_array_equal(
      mra.mra_attention(q, k, v, precision="input", **kw),
      mra.mra_attention(q, k, v, **kw))
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  exact = [x.astype(jnp.float32) for x in low]

  def loss(precision, *args):
    out = mra.mra_attention(*args, precision=precision, **kw)
    return jnp.sum(jnp.sin(out.astype(jnp.float32)))

  got = mra.mra_attention(*low, precision="input", **kw)
  assert got.dtype == jnp.bfloat16
  want = mra.mra_attention(*exact, **kw)
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got.astype(jnp.float32), want,
                             atol=2e-2 * scale)
  grads = jax.grad(functools.partial(loss, "input"), argnums=(0, 1, 2))(*low)
  wants = jax.grad(functools.partial(loss, "float32"),
                   argnums=(0, 1, 2))(*exact)
  for a, b in zip(grads, wants):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), b,
                               atol=3e-2 * float(jnp.abs(b).max()))
  # The products really run in bf16 (and not at all with "float32").
  for precision, want_bf16 in (("input", True), ("float32", False)):
    jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, precision),
                                    argnums=(0, 1, 2)))(*low)
    pairs = _dot_operand_dtypes(jaxpr.jaxpr)
    assert (("bfloat16", "bfloat16") in pairs) == want_bf16, pairs
  with pytest.raises(ValueError, match="precision="):
    mra.mra_attention(q, k, v, precision="bfloat16")


def _dot_operand_dtypes(jaxpr):
  """{(lhs dtype, rhs dtype)} of every dot_general in a jaxpr, including
  those inside sub-jaxprs (jit, custom_vjp, loops, Pallas kernels)."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.add(tuple(str(x.aval.dtype) for x in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found |= _dot_operand_dtypes(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found |= _dot_operand_dtypes(sub)
  return found


def test_unsupported_settings_raise():
  q, k, v = _inputs(9, length=32)
  with pytest.raises(ValueError, match="causal"):
    mra.mra_attention(q, k, v, causal=True)
  with pytest.raises(ValueError, match="approx_mode"):
    mra.mra_attention(q, k, v, approx_mode="dense")
  with pytest.raises(ValueError, match="block_per_row"):
    mra.mra_attention(q, k, v, block_per_row=0)
  with pytest.raises(ValueError, match="lengths differ"):
    mra.mra_attention(q, k[:, :16], v[:, :16])


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_heads_per_step_changes_memory_not_results(mode):
  q, k, v = _inputs(41, batch=3, length=96, heads=2, dim=8)
  mask = np.ones((3, 96), bool)
  mask[2, 70:] = False
  weights = jnp.cos(jnp.arange(8.0))

  def value_and_grads(heads_per_step):
    fn = lambda q, k, v: jnp.sum(mra.mra_attention(
        q, k, v, mask=jnp.asarray(mask), block_size=16, block_per_row=2,
        approx_mode=mode, heads_per_step=heads_per_step) * weights)
    return jax.value_and_grad(fn, argnums=(0, 1, 2))(q, k, v)

  want = value_and_grads(None)
  for heads_per_step in (1, 4):  # 4 does not divide 3·2 pairs.
    got = value_and_grads(heads_per_step)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approx_mode,length,masked", [
    ("full", 100, True), ("sparse", 64, False), ("full", 96, False)])
def test_pallas_impl_equals_xla_impl(approx_mode, length, masked):
  """impl="pallas" (kernels interpreted on CPU) = the gather path, values
  and gradients, for ragged lengths, padding and both modes."""
  rng = np.random.default_rng(21)
  q, k, v = (jnp.asarray(rng.normal(size=(2, length, 2, 8)), jnp.float32)
             for _ in range(3))
  mask = None
  if masked:
    mask = np.ones((2, length), bool)
    mask[1, 70:] = False
    mask = jnp.asarray(mask)
  kwargs = dict(mask=mask, block_size=16, block_per_row=2,
                approx_mode=approx_mode)

  def loss(impl):
    return lambda q, k, v: jnp.sum(jnp.sin(mra.mra_attention(
        q, k, v, impl=impl, **kwargs)))

  np.testing.assert_allclose(
      mra.mra_attention(q, k, v, impl="pallas", **kwargs),
      mra.mra_attention(q, k, v, **kwargs), atol=1e-6)
  got = jax.grad(loss("pallas"), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    assert float(jnp.abs(b).max()) > 1e-3
    np.testing.assert_allclose(a, b, atol=2e-6)
  with pytest.raises(ValueError, match="impl="):
    mra.mra_attention(q, k, v, impl="cuda")
