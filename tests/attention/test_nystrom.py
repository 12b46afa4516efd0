"""Nyströmformer: independent reference, exact limits, padding, shapes, grads."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from efficient.attention import encoder
from efficient.attention import nystrom
from efficient.attention import softmax


def _inputs(seed, batch=2, length=24, heads=2, dim=8, scale=1.0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(batch, length, heads, dim)) *
                           scale, jnp.float32) for _ in range(3))


def _softmax_np(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _reference(q, k, v, mask, m, iters=6, init="per_matrix"):
  """The original's forward pass re-derived in numpy (float64), per head."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, n, h, d = q.shape
  out = np.zeros_like(v)
  segs = n // m  # Short segments first (T2T-ViT's layout).
  short = (segs + 1) * m - n
  sizes = np.array([segs] * short + [segs + 1] * (m - short))
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  heads = {}
  for bi in range(b):
    for hi in range(h):
      mu = mask[bi].astype(np.float64)
      qq = q[bi, :, hi] * mu[:, None] / d**0.25
      kk = k[bi, :, hi] * mu[:, None] / d**0.25
      ql = np.stack([qq[bounds[i]:bounds[i + 1]].mean(0) for i in range(m)])
      kl = np.stack([kk[bounds[i]:bounds[i + 1]].mean(0) for i in range(m)])
      heads[bi, hi] = (mu, qq, kk, ql, kl, _softmax_np(ql @ kl.T))
  # The original init divides by one scalar over all examples and heads.
  scale_all = max(a.sum(0).max() for *_, a in heads.values())
  for (bi, hi), (mu, qq, kk, ql, kl, a) in heads.items():
    f = _softmax_np(qq @ kl.T)
    bb = _softmax_np(ql @ kk.T - 1e9 * (1 - mu)[None])
    z = a.T / (a.sum(0).max() if init == "per_matrix" else scale_all)
    eye = np.eye(m)
    for _ in range(iters):
      az = a @ z
      z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    out[bi, :, hi] = f @ z @ bb @ v[bi, :, hi]
  return out


@pytest.mark.parametrize("length,m", [(24, 6), (26, 6), (31, 4)])
@pytest.mark.parametrize("init", ["per_matrix", "original"])
def test_matches_independent_reference(length, m, init):
  q, k, v = _inputs(0, length=length)
  mask = np.ones((2, length), bool)
  mask[1, length - 5:] = False
  out = nystrom.nystrom_attention(q, k, v, mask=jnp.asarray(mask),
                                  num_landmarks=m, pinv_init=init)
  np.testing.assert_allclose(out, _reference(q, k, v, mask, m, init=init),
                             rtol=2e-4, atol=2e-5)


def test_segment_means_cover_every_token_once():
  rng = np.random.default_rng(11)
  for n, m in [(24, 6), (26, 6), (100, 64), (2048, 64), (65, 64)]:
    means = nystrom.segment_means_matrix(n, m)
    x = rng.normal(size=(2, n, 3)).astype(np.float32)
    np.testing.assert_allclose(nystrom.segment_means(jnp.asarray(x), m),
                               np.einsum("mn,bnd->bmd", means, x), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(means.sum(1), 1.0, rtol=1e-6)
    covered = (means > 0).sum(0)
    assert (covered == 1).all()
    sizes = (means > 0).sum(1)
    assert sizes.max() - sizes.min() <= (0 if n % m == 0 else 1)


def test_one_token_per_landmark_is_exact_up_to_the_pinv_error():
  # With m = n the landmarks are the tokens: F = A = B and the output is
  # A Z A V; its error against A V is bounded by ||AZA - A||_2 ||V||_F.
  q, _, v = _inputs(1, batch=1, length=16, heads=1, dim=8)
  k = q  # Symmetric scores: A is well conditioned, so the iteration converges.
  scaled = [jnp.swapaxes(x, 1, 2) / 8**0.25 for x in (q, k)]
  values = jnp.swapaxes(v, 1, 2)
  bias = jnp.zeros((1, 1, 1, 16))
  exact = jnp.swapaxes(softmax.softmax_attention(q, k, v), 1, 2)
  a = jax.nn.softmax(scaled[0] @ jnp.swapaxes(scaled[1], -1, -2), -1)[0, 0]
  errors = []
  for iters in (6, 30):
    out = nystrom.landmark_attention(*scaled, values, bias, jnp.eye(16),
                                     pinv_iterations=iters)
    z = nystrom.iterative_pinv(a, iters)
    residual = np.linalg.norm(np.asarray(a @ z @ a - a), 2)
    error = float(jnp.linalg.norm(out - exact))
    assert error <= residual * float(jnp.linalg.norm(values)) + 1e-5
    errors.append(error)
  assert errors[1] < 1e-4 < errors[0]  # More iterations -> exact softmax.


def test_full_landmarks_take_the_exact_softmax_path():
  q, k, v = _inputs(2, length=12)
  mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]))
  out = nystrom.nystrom_attention(q, k, v, mask=mask, num_landmarks=12)
  want = softmax.softmax_attention(q, k, v, mask=mask)
  # Real query positions only (padded queries are zeroed by Nyström).
  np.testing.assert_allclose(out[0], want[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[1, :7], want[1, :7], rtol=1e-5, atol=1e-6)


def test_padded_tokens_never_change_real_outputs():
  q, k, v = _inputs(3, length=30)
  mask = np.arange(30)[None] < np.array([[30], [19]])
  rng = np.random.default_rng(9)
  noisy = []
  for x in (q, k, v):
    x = np.array(x)
    x[1, 19:] = rng.normal(size=x[1, 19:].shape) * 50
    noisy.append(jnp.asarray(x))
  kw = dict(mask=jnp.asarray(mask), num_landmarks=8)
  a = nystrom.nystrom_attention(q, k, v, **kw)
  b = nystrom.nystrom_attention(*noisy, **kw)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[1, :19], b[1, :19], rtol=1e-6, atol=1e-7)


def test_original_init_couples_examples_per_matrix_does_not():
  q, k, v = _inputs(4)
  q2 = q.at[1].multiply(4.0)  # Change only example 1.
  for init, coupled in (("per_matrix", False), ("original", True)):
    a = nystrom.nystrom_attention(q, k, v, num_landmarks=6, pinv_init=init)
    b = nystrom.nystrom_attention(q2, k, v, num_landmarks=6, pinv_init=init)
    changed = not np.allclose(a[0], b[0], rtol=0, atol=1e-7)
    assert changed == coupled, init


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    q, k, v = (x.astype(jnp.float64) for x in _inputs(5, batch=1, length=10,
                                                        heads=1, dim=4))
    mask = jnp.asarray(np.arange(10)[None] < 8)

    def loss(q, k, v):
      out = nystrom.nystrom_attention(q, k, v, mask=mask, num_landmarks=3)
      return jnp.sum(out.astype(jnp.float64) * jnp.cos(jnp.arange(4.0)))

    # The module computes in float32; compare against central differences of
    # the same function with a step suited to float32.
    jax.test_util.check_grads(loss, (q, k, v), order=1, modes=["rev"],
                              eps=1e-2, atol=2e-2, rtol=2e-2)


def test_jit_vmap_and_sharded_agree():
  q, k, v = _inputs(6, batch=8, length=20)
  mask = jnp.asarray(np.arange(20)[None] < np.arange(13, 21)[:, None])
  fn = lambda q, k, v, mask: nystrom.nystrom_attention(q, k, v, mask=mask,
                                                        num_landmarks=6)
  eager = fn(q, k, v, mask)
  np.testing.assert_allclose(jax.jit(fn)(q, k, v, mask), eager, rtol=1e-5,
                             atol=1e-6)
  per_example = jax.vmap(lambda q, k, v, m: fn(q[None], k[None], v[None],
                                                m[None])[0])(q, k, v, mask)
  np.testing.assert_allclose(per_example, eager, rtol=1e-5, atol=1e-6)
  mesh = jax.make_mesh((8,), ("data",))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  sharded = jax.jit(fn)(put(q), put(k), put(v), put(mask))
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, eager, rtol=1e-5, atol=1e-6)


def test_causal_is_refused():
  q, k, v = _inputs(7)
  with pytest.raises(ValueError, match="causal"):
    nystrom.nystrom_attention(q, k, v, causal=True)


def test_value_conv_is_the_originals_depthwise_conv():
  conv = encoder.ValueConv(5)
  rng = np.random.default_rng(8)
  v = jnp.asarray(rng.normal(size=(1, 9, 2, 4)), jnp.float32)
  mask = jnp.asarray(np.arange(9)[None] < 7)
  params = conv.init(jax.random.PRNGKey(0), v, mask)
  got = conv.apply(params, v, mask)
  kernel = np.asarray(nn.unbox(params["params"]["kernel"]))  # [5, heads]
  vm = np.asarray(v) * np.asarray(mask)[:, :, None, None]
  padded = np.pad(vm, ((0, 0), (2, 2), (0, 0), (0, 0)))
  want = np.zeros_like(vm)
  for t in range(9):  # Cross-correlation, as torch's Conv2d.
    want[:, t] = np.einsum("bwhd,wh->bhd", padded[:, t:t + 5], kernel)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert 0.3 < np.abs(kernel).max() <= 1 / 5**0.5


def test_encoder_with_nystrom_and_conv_ignores_padding_length():
  model = encoder.EncoderClassifier(
      vocab_size=16, num_classes=10, max_length=64, dropout=0.0,
      attention_dropout=0.0, attention="nystrom",
      attention_kwargs={"num_landmarks": 64}, value_conv_size=5)
  tokens = np.array([[3, 7, 9, 15, 2, 8, 15, 4, 15]], np.int32)
  params = model.init(jax.random.PRNGKey(0), np.pad(tokens, ((0, 0), (0, 55))))
  # m >= n: exact path, so the padding length must not matter at all.
  a = model.apply(params, np.pad(tokens, ((0, 0), (0, 3))))
  b = model.apply(params, np.pad(tokens, ((0, 0), (0, 40))))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length,size", [(9, 5), (70, 35), (64, 65), (5, 3),
                                         (33, 1)])
def test_depthwise_conv_matches_xla_grouped_conv_and_its_gradient(length,
                                                                  size):
  rng = np.random.default_rng(size)
  v = jnp.asarray(rng.normal(size=(2, length, 3, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, 3)), jnp.float32)

  def reference(v, kernel):  # Heads as the channels of a grouped conv.
    x = jnp.moveaxis(v, 3, 1).reshape(8, length, 3)
    y = jax.lax.conv_general_dilated(
        x, kernel[:, None, :], (1,), [(size // 2, size // 2)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=3)
    return jnp.moveaxis(y.reshape(2, 4, length, 3), 1, 3)

  weights = jnp.cos(jnp.arange(4.0))
  np.testing.assert_allclose(encoder.depthwise_conv(v, kernel),
                             reference(v, kernel), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda v, k: jnp.sum(f(v, k) * weights),
                    argnums=(0, 1))(v, kernel)
           for f in (encoder.depthwise_conv, reference)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
