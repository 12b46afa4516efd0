"""YOSO attention (Zeng et al., "You Only Sample (Almost) Once", ICML 2021,
arXiv 2111.09714).

For unit vectors q, k and τ-bit hyperplane LSH (SimHash), the collision
probability is (Sec. 3, Eq. 4)

  P[h(q) = h(k)] = (1 − arccos(q·k)/π)^τ.

YOSO replaces softmax(QKᵀ)V by this Bernoulli kernel, un-normalised:

  * YOSO-E (expectation, O(n²)):  Y = E V,  E_ij = (1 − arccos(q̂_i·k̂_j)/π)^τ
    μ_i μ_j  (Eq. 5; μ the padding mask, q̂, k̂ L2-normalised).
  * YOSO (sampled, O(n·m·d)): m independent τ-bit hashes h_1..h_m,
    Y_i = (1/m) Σ_h Σ_{j: h(q_i) = h(k_j)} μ_i μ_j V_j  (Eq. 6), an unbiased
    estimate of YOSO-E. It is computed by bucket cumulation: per hash, V is
    added into a table of 2^τ buckets at the keys' codes, and each query
    reads the bucket of its own code (Sec. 3.2, Alg. 1).

There is no softmax denominator: the output row is L2-normalised (the
original `X = normalize(X)`); Nyströmformer-style conv residuals are not part
of the LRA YOSO configs and live in the Flax layer anyway.

Hashing follows the original fast hash (`yoso_v1/cuda/
fast_lsh_cumulation_cuda.cu::fast_hash_ver1_cuda_kernel`): for each example
and head, each "part" rotates x by H D₃ H D₂ H D₁ (H the unnormalised
Walsh–Hadamard matrix, Dᵢ random ±1 diagonals) and cuts the rotated vector
into blocks of τ coordinates; block h gives code Σ_t [x_{hτ+t} > 0]·2^t.
d // τ hashes come from each part, ceil(m / (d // τ)) parts are drawn. The
dimension is zero-padded to a power of two ≥ 32 (the original pads head_dim
< 32 to 32 and needs a power of two). `hashing="gaussian"` is the original's
non-fast alternative (a Gaussian projection with the same bit packing).
The fast hash is only approximately SimHash: three random-sign Hadamard
rounds are not a uniformly random rotation, so averaging many draws leaves
a small bias against YOSO-E (about 6% relative error on a 16-dimensional
toy, tests/attention/test_yoso.py), where the Gaussian hash converges like
1/sqrt(draws).

Backward (Sec. 3.3): both forms use the original approximate gradient,
implemented with `jax.custom_vjp` on the normalised q̂, k̂ (autodiff then
carries it through the normalisation, as PyTorch autograd does there):

  dV = Bᵀ dO,  dQ_i = Σ_j B_ij (dO_i·V_j)(τ/2) K_j,
  dK_j = Σ_i B_ij (dO_i·V_j)(τ/2) Q_i,

with B = E for YOSO-E and B the sampled collision matrix for YOSO; i.e.
∂E/∂(q·k) is replaced by (τ/2)·E. In the sampled form the original computes
these by bucket cumulation (`lsh_weighted_cumulation`: per hash and weight
dimension, tables of V_j[t]·K_j read back with dO_i[t]), O(m·n·d²); we
compute the same sums either that way or over the colliding pairs only
(`lsh_backward`: keys sorted by bucket, O(d) per pair, like the v2 kernels'
sorted pass but with no cap on pairs), taking at run time whichever is
cheaper for the actual codes. Pairs win for unrelated q, k (≈ n / 2^τ
collisions per query and hash): on a 2-core CPU at n = 4096, τ = 11 the
backward is ~10× faster than the tables (docs/attention.md). Tables keep
the cost linear in n at fixed τ; pairs grow like n²/2^τ, so long sequences
switch back to tables. `backward="expectation"` is the original's
`n2_backward` (the O(n²) expectation form of the same formulas).

Differences from the original code, each deliberate:
  * q̂·k̂ is clipped to [−1, 1] before arccos (rounding can exceed 1 and give
    NaN in the original's YOSO-E).
  * Q and K are always normalised; the original skips it for the sampled
    form at eval time, which changes nothing because hash codes are
    scale-invariant.
  * Hash tables cover the whole value dimension at once (the CUDA kernels
    loop over 32-wide slices and require n to be a multiple of 8; any n
    works here).

Padding: padded keys never enter a bucket and padded queries output zeros,
so changing padded tokens never changes real outputs (the Hugging Face port
ignores the padding mask in this path; reference/attention.md §2.4).

Causal masking (`causal=True`; not in the paper or the original code, and
Hugging Face removed its decoder variant, PR #15091): B_ij is restricted to
j ≤ i in both forms. YOSO-E masks E to its lower triangle; the sampled form
sums, per hash, only the keys of a query's bucket at or before its position.
Each pair keeps its collision indicator, so the sampled causal form is still
an unbiased estimate of causal YOSO-E, and the approximate backward above
holds with B restricted the same way: dQ_i sums over keys j ≤ i, dK_j and
dV_j over queries i ≥ j. The bucket sums become prefix sums: per
hash, keys are sorted by (code, position), V is summed along that order
with a reset at each bucket (a segmented scan), and query i reads its
bucket's sum up to position i (a binary search): O(n log n) per hash
instead of the scatter's O(n), still linear in memory. The pair backward
needs no change but the pair counts: a bucket's keys are already in
position order, so a query's causal pairs are a prefix of them. Supported
with impl="xla" only (the Pallas kernels refuse it).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import yoso_lsh

# "lsh": the original's LSH backward, pairs or tables picked at run time;
# "lsh_pairs" / "lsh_tables" force one algorithm (same sums; `lsh_backward`).
BACKWARDS = ("lsh", "lsh_pairs", "lsh_tables", "expectation")
IMPLS = ("xla", "pallas", "pallas_sorted", "pallas_sorted_atomic")


def _normalize(x, eps=1e-12):
  """Rows of x / max(‖x‖, eps): `torch.nn.functional.normalize`."""
  # Through the squared norm: the norm's own gradient is NaN at zero rows.
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))


# Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 − x)·Σ a_i x^i on [0, 1],
# |error| ≤ 2e-8.
_ACOS_COEFFS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
                0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)


def fast_arccos(x):
  """arccos on [−1, 1] by A&S 4.4.46 (|error| ≤ 2e-8 + rounding).

  Plain multiply-adds and one sqrt, which XLA vectorises; `jnp.arccos` on
  CPU costs about 4x the matmul producing its input, and YOSO-E evaluates
  it n² times per head.
  """
  a = jnp.abs(x)
  poly = _ACOS_COEFFS[-1]
  for c in _ACOS_COEFFS[-2::-1]:
    poly = poly * a + c
  angle = jnp.sqrt(1.0 - a) * poly
  return jnp.where(x < 0, math.pi - angle, angle)


def collision_probability(q, k, hash_bits):
  """E = (1 − arccos(q·k)/π)^τ for unit rows, `[..., n, d]` -> `[..., n, n]`."""
  cosine = jnp.clip(q @ jnp.swapaxes(k, -1, -2), -1.0, 1.0)
  return (1.0 - fast_arccos(cosine) / math.pi) ** hash_bits


def hadamard_matrix(dim):
  """The unnormalised Walsh–Hadamard matrix H_ij = (−1)^popcount(i & j)."""
  if dim & (dim - 1):
    raise ValueError(f"Hadamard transform needs a power of two, got {dim}")
  idx = np.arange(dim)
  bits = np.bitwise_and(idx[:, None], idx[None, :])
  parity = np.vectorize(lambda x: bin(x).count("1") % 2)(bits)
  return jnp.asarray(1 - 2 * parity, jnp.float32)


def hash_dim(head_dim):
  """Dimension the hash works in: next power of two, at least 32."""
  return max(32, 1 << (head_dim - 1).bit_length())


def hash_rotation(rng, lead, head_dim, *, num_hashes, hash_bits,
                  hashing="hadamard"):
  """R `[*lead, hash_dim(d), ≥ m·τ]`: code h of x is the τ signs of
  x·R[:, hτ:(h+1)τ], packed little-endian (`pack_codes`).

  "hadamard" (the original fast hash): per part, R's columns are those of
  D1 H D2 H D3 H (x as a row vector), the first per_part·τ of them kept,
  parts side by side; "gaussian": a Gaussian [d, m·τ] projection.
  """
  dim = hash_dim(head_dim)
  if hashing == "hadamard":
    if hash_bits > dim:
      raise ValueError(f"hash_bits={hash_bits} exceeds the hash dimension "
                       f"{dim}")
    per_part = dim // hash_bits
    parts = -(-num_hashes // per_part)
    signs = jax.random.rademacher(rng, (*lead, 3, parts, dim), jnp.float32)
    h = hadamard_matrix(dim)
    # Row vectors: x D1 H D2 H D3 H = x R, one [d, d] matrix per part, of
    # which only the per_part·τ columns that become bits are kept.
    rotation = signs[..., 0, :, :, None] * h
    for r in (1, 2):
      rotation = (rotation * signs[..., r, :, None, :]) @ h
    rotation = rotation[..., :per_part * hash_bits]  # [..., parts, d, pτ]
    rotation = jnp.swapaxes(rotation, -3, -2)
    return rotation.reshape(*lead, dim, parts * per_part * hash_bits)
  if hashing == "gaussian":
    return jax.random.normal(rng, (*lead, dim, num_hashes * hash_bits))
  raise ValueError(f"hashing={hashing!r}: 'hadamard' or 'gaussian'")


def pack_codes(x, rotation, *, num_hashes, hash_bits):
  """[..., m, n] int32 codes of x `[..., n, d]` under `hash_rotation`'s R."""
  dim = rotation.shape[-2]
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])])
  bits = x @ rotation[..., :num_hashes * hash_bits] > 0
  bits = bits.reshape(*bits.shape[:-1], num_hashes, hash_bits)
  code = (bits * (1 << jnp.arange(hash_bits))).sum(-1)
  return jnp.swapaxes(code, -1, -2).astype(jnp.int32)


def hash_codes(rng, q, k, *, num_hashes, hash_bits, hashing="hadamard"):
  """τ-bit codes of q and k under m random hashes shared by both.

  Args:
    rng: PRNG key; one independent hash family per leading index.
    q: `[..., n, d]` queries (any scale: codes are scale-invariant).
    k: `[..., n, d]` keys.
    num_hashes: m.
    hash_bits: τ (codes lie in [0, 2^τ)).
    hashing: "hadamard" (the original fast hash) or "gaussian".

  Returns:
    (q_codes, k_codes), int32 `[..., m, n]`.
  """
  rotation = hash_rotation(rng, q.shape[:-2], q.shape[-1],
                           num_hashes=num_hashes, hash_bits=hash_bits,
                           hashing=hashing)
  pack = functools.partial(pack_codes, rotation=rotation,
                           num_hashes=num_hashes, hash_bits=hash_bits)
  return pack(q), pack(k)


# ----------------------------------------------------------------- Kernels
# All on `[batch·heads, ...]`: values [g, n, e], codes [g, m, n], masks
# [g, n] float. Loops over hashes with lax.scan keep memory at one table.


def lsh_cumulation(q_codes, k_codes, q_mask, k_mask, values, num_buckets,
                   order=None):
  """Y_i = (1/m) Σ_h Σ_{j: h(q_i)=h(k_j)} μ_i μ_j values_j (bucket tables).

  `order="past"` keeps only keys j ≤ i, "future" only j ≥ i (causal YOSO
  and its backward; queries and keys share positions): `prefix_cumulation`.
  """
  if order is not None:
    return _ordered_cumulator(q_codes, k_codes, q_mask, k_mask, num_buckets,
                              order)(values)
  groups, num_hashes = q_codes.shape[:2]
  rows = jnp.arange(groups)[:, None]
  values = values * k_mask[..., None]

  def one_hash(acc, codes):
    qc, kc = codes
    table = jnp.zeros((groups, num_buckets, values.shape[-1]), values.dtype)
    table = table.at[rows, kc].add(values)
    return acc + table[rows, qc], None

  init = jnp.zeros(q_codes.shape[:1] + (q_codes.shape[-1], values.shape[-1]),
                   values.dtype)
  out, _ = jax.lax.scan(one_hash, init, (jnp.swapaxes(q_codes, 0, 1),
                                         jnp.swapaxes(k_codes, 0, 1)))
  return out * q_mask[..., None] / num_hashes


def check_packable(num_buckets, length):
  """Sorting by bucket packs (code, position) into one int32, code·n + i
  with codes up to 2^τ (the masked keys' sentinel): raises where it would
  overflow (2^τ·n ≥ 2^31, e.g. τ = 16 at n = 32768)."""
  if (num_buckets + 1) * length >= 2**31:
    raise ValueError(
        f"2^hash_bits = {num_buckets} buckets × length {length} overflows "
        "the int32 (code, position) sort key of the pair backward and the "
        "causal form; use fewer hash bits or backward='lsh_tables' "
        "(non-causal)")


def _bucket_order(codes, mask, num_buckets):
  """Per (group, hash): keys sorted by (code, position), masked keys last.

  Returns the sorted packed keys code·n + position [g, m, n] (masked keys
  carry code `num_buckets`) and the positions in that order.
  """
  length = codes.shape[-1]
  check_packable(num_buckets, length)
  packed = jnp.where(mask[:, None] > 0, codes, num_buckets) * length
  packed = jnp.sort(packed + jnp.arange(length), axis=-1)
  return packed, packed % length


def _searchsorted(sorted_keys, queries, side):
  """jnp.searchsorted over the last axis of [g, m, n] arrays."""
  search = functools.partial(jnp.searchsorted, side=side)
  return jax.vmap(jax.vmap(search))(sorted_keys, queries)


def _causal_reads(packed, q_codes, q_mask):
  """Per query [g, m, n]: (index in the sorted `packed` keys of its bucket's
  first key, how many of its bucket's real keys sit at or before it)."""
  length = q_codes.shape[-1]
  first = _searchsorted(packed, q_codes * length, "left")
  through = _searchsorted(packed, q_codes * length + jnp.arange(length),
                          "right")
  return (through - first) * (q_mask[:, None] > 0), first


def causal_counts(q_codes, k_codes, q_mask, k_mask, num_buckets):
  """`collision_counts` for causal pairs (keys j ≤ i only): [g, m, n]
  (count, index of the bucket's first key in (code, position) order)."""
  packed, _ = _bucket_order(k_codes, k_mask, num_buckets)
  return _causal_reads(packed, q_codes, q_mask)


def prefix_plan(q_codes, k_codes, q_mask, k_mask, num_buckets):
  """What causal cumulation needs of the codes, [m, g, n] per hash: the keys'
  positions in (code, position) order, where each bucket starts in that
  order, and the index each query reads (its bucket's last key at or before
  it; −1: none). Independent of the values, so computed once per codes."""
  length = q_codes.shape[-1]
  packed, position = _bucket_order(k_codes, k_mask, num_buckets)
  code = packed // length
  starts = jnp.concatenate([jnp.ones(code.shape[:-1] + (1,), bool),
                            code[..., 1:] != code[..., :-1]], axis=-1)
  count, first = _causal_reads(packed, q_codes, q_mask)
  read = jnp.where(count > 0, first + count - 1, -1)
  return tuple(jnp.swapaxes(x, 0, 1) for x in (position, starts, read))


def prefix_cumulation(plan, q_mask, k_mask, values):
  """Causal bucket cumulation: Y_i = (1/m) Σ_h Σ_{j ≤ i: h(q_i)=h(k_j)}
  μ_i μ_j values_j, with queries and keys at the same positions (`plan`:
  `prefix_plan` of the codes).

  Per hash, values are summed along the keys' (code, position) order with a
  reset at each bucket's first key (a segmented scan: no cancellation
  between buckets), and query i reads the running sum at its bucket's last
  key at or before position i. O(n log n) per hash.
  """
  num_hashes, groups = plan[0].shape[:2]
  values = values * k_mask[..., None]
  rows = jnp.arange(groups)[:, None]

  def combine(a, b):
    (a_sum, a_start), (b_sum, b_start) = a, b
    return (jnp.where(b_start[..., None], b_sum, a_sum + b_sum),
            a_start | b_start)

  def one_hash(acc, hash_plan):
    position, starts, read = hash_plan  # [g, n] each
    running, _ = jax.lax.associative_scan(
        combine, (values[rows, position], starts), axis=1)
    got = running[rows, jnp.maximum(read, 0)]
    return acc + jnp.where(read[..., None] >= 0, got, 0.0), None

  init = jnp.zeros(values.shape, values.dtype)
  out, _ = jax.lax.scan(one_hash, init, plan)
  return out * q_mask[..., None] / num_hashes


def _ordered_cumulator(q_codes, k_codes, q_mask, k_mask, num_buckets, order):
  """values -> `lsh_cumulation(..., order)`, the codes' plan made once."""
  if order not in ("past", "future"):
    raise ValueError(f"order={order!r}: None, 'past' or 'future'")
  # j ≥ i ("future") is j' ≤ i' on reversed positions.
  flip = ((lambda x, axis: jnp.flip(x, axis)) if order == "future" else
          (lambda x, axis: x))
  q_mask, k_mask = flip(q_mask, -1), flip(k_mask, -1)
  plan = prefix_plan(flip(q_codes, -1), flip(k_codes, -1), q_mask, k_mask,
                     num_buckets)
  return lambda values: flip(
      prefix_cumulation(plan, q_mask, k_mask, flip(values, 1)), 1)


def lsh_weighted_cumulation(q_codes, k_codes, q_mask, k_mask, q_weight,
                            k_weight, values, num_buckets, order=None):
  """Y_i = (1/m) Σ_h Σ_{j: h(q_i)=h(k_j)} μ_i μ_j (q_weight_i·k_weight_j) v_j.

  The original's `lsh_weighted_cumulation` (ver1): one weight dimension t
  at a time, tables of k_weight_j[t]·v_j read back and scaled by
  q_weight_i[t]; i.e. `lsh_cumulation` (with its `order`) once per t.
  O(m·n·e·d) time, one [groups, 2^τ, d] table of memory (the e × d
  outer-product tables all at once took 28× the memory and 1.6× the time on
  CPU). With an `order`, the codes are sorted once for all t.
  """
  if order is None:
    cumulate = functools.partial(lsh_cumulation, q_codes, k_codes, q_mask,
                                 k_mask, num_buckets=num_buckets)
  else:  # The codes' sort is made once, not once per t.
    cumulate = _ordered_cumulator(q_codes, k_codes, q_mask, k_mask,
                                  num_buckets, order)

  def one_weight_dim(acc, weights):
    q_w, k_w = weights
    return acc + q_w[..., None] * cumulate(k_w[..., None] * values), None

  init = jnp.zeros(q_weight.shape[:2] + values.shape[-1:], values.dtype)
  out, _ = jax.lax.scan(one_weight_dim, init,
                        (jnp.moveaxis(q_weight, -1, 0),
                         jnp.moveaxis(k_weight, -1, 0)))
  return out


# Pair enumeration: the LSH backward computed over the colliding pairs only.
# Each pair costs O(d) instead of the tables' O(d²) per query, so this path
# wins while buckets are small (≈ n / 2^τ keys per bucket for unrelated
# vectors: ~2 at n = 4096, τ = 11). Past `_PAIR_LIMIT` pairs per query and
# hash the tables are cheaper and are used instead; both give the same sums.
_PAIR_CHUNK = 4096  # pairs per step of the loop: a few MiB of gathered rows
_PAIR_LIMIT = 0.4  # × head_dim pairs per query and hash before tables win
# (crossover measured on a 2-core CPU: ≈ 0.4·d; scripts/bench_yoso_backward.py)


def collision_counts(q_codes, k_codes, q_mask, k_mask, num_buckets):
  """Per query and hash: how many real keys share its bucket. [g, m, n]."""
  groups, num_hashes, length = k_codes.shape
  index = (jnp.arange(groups)[:, None, None], jnp.arange(num_hashes)[None, :, None])
  counts = jnp.zeros((groups, num_hashes, num_buckets), jnp.int32)
  counts = counts.at[index + (k_codes,)].add((k_mask > 0).astype(jnp.int32)[:, None])
  starts = jnp.cumsum(counts, axis=-1) - counts
  per_query = counts[index + (q_codes,)] * (q_mask > 0).astype(jnp.int32)[:, None]
  return per_query, starts[index + (q_codes,)]


def lsh_pair_gradients(q_codes, k_codes, q_mask, k_mask, q, k, v, grad,
                       num_buckets, counts=None):
  """Σ over colliding pairs (i, j), all hashes, of the LSH backward terms.

  With w_ij = Σ_h [h(q_i) = h(k_j)] μ_i μ_j (dO_i·V_j), returns
    (Σ_j w_ij K_j,  Σ_i w_ij Q_i,  Σ_h Σ_i [h(q_i)=h(k_j)] μ_i μ_j dO_i)
  — the same sums as `lsh_weighted_cumulation` (twice) and `lsh_cumulation`
  with roles swapped, before the 1/m and τ/2 factors. The pairs of every
  (group, hash, query) are laid out query-major in one implicit list (keys
  of a bucket sit contiguously once sorted by code) and processed in chunks
  of `_PAIR_CHUNK` by a while loop, so time and memory follow the number of
  collisions, not n². Like the original v2 kernels' sorted-bucket pass
  (`count_sort` + per-query gathers), without their 1024-slot workspace
  cap: every pair is counted.
  """
  groups, num_hashes, length = q_codes.shape
  # `counts`: `collision_counts` of these codes, when the caller has them
  # (`causal_counts` for causal pairs: a prefix of each bucket's keys).
  counts, key_starts = counts or collision_counts(q_codes, k_codes, q_mask,
                                                  k_mask, num_buckets)
  # Keys sorted by bucket per (group, hash); padded keys sort last (code =
  # num_buckets) and no query reads them. One int32 sort of code·n + index.
  _, key_order = _bucket_order(k_codes, k_mask, num_buckets)
  key_order = key_order.reshape(-1)  # [g·m·n]
  counts, key_starts = counts.reshape(-1), key_starts.reshape(-1)
  ends = jnp.cumsum(counts)
  total = ends[-1]
  rows = lambda x: x.reshape(groups * length, x.shape[-1])
  q, k, v, grad = rows(q), rows(k), rows(v), rows(grad)

  def step(carry):
    chunk, dq, dk, dv = carry
    pair = chunk * _PAIR_CHUNK + jnp.arange(_PAIR_CHUNK)
    valid = pair < total
    slot = jnp.minimum(jnp.searchsorted(ends, pair, side="right"),
                       counts.shape[0] - 1)  # (group, hash, query) flat
    query = (slot // (num_hashes * length)) * length + slot % length
    sorted_key = key_starts[slot] + pair - (ends[slot] - counts[slot])
    base = (slot // length) * length  # (group, hash) row of key_order
    key = (slot // (num_hashes * length)) * length + key_order[
        base + jnp.clip(sorted_key, 0, length - 1)]
    g_rows = grad[query]
    weight = jnp.where(valid, jnp.sum(g_rows * v[key], axis=-1), 0.)
    dq = dq.at[query].add(weight[:, None] * k[key], indices_are_sorted=True)
    dk = dk.at[key].add(weight[:, None] * q[query])
    dv = dv.at[key].add(jnp.where(valid[:, None], g_rows, 0.))
    return chunk + 1, dq, dk, dv

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  _, dq, dk, dv = jax.lax.while_loop(
      lambda carry: carry[0] * _PAIR_CHUNK < total, step,
      (0, zeros(q), zeros(k), zeros(v)))
  unrows = lambda x: x.reshape(groups, length, x.shape[-1])
  return unrows(dq), unrows(dk), unrows(dv)


def _expectation_weights(q, k, q_mask, k_mask, hash_bits, causal=False):
  weights = collision_probability(q, k, hash_bits)
  weights = weights * q_mask[..., :, None] * k_mask[..., None, :]
  if causal:
    weights = jnp.tril(weights)
  return weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def expectation_cumulation(q, k, v, q_mask, k_mask, hash_bits, causal=False):
  """YOSO-E: (E ⊙ μμᵀ) V with the original approximate backward (E's lower
  triangle when `causal`)."""
  return _expectation_weights(q, k, q_mask, k_mask, hash_bits, causal) @ v


def _expectation_fwd(q, k, v, q_mask, k_mask, hash_bits, causal):
  # E is kept for the backward (as the original's ctx does): recomputing
  # it costs n² arccos evaluations, the most expensive part on CPU.
  weights = _expectation_weights(q, k, q_mask, k_mask, hash_bits, causal)
  return weights @ v, (q, k, v, weights)


def _expectation_backward(q, k, v, weights, hash_bits, grad):
  weighted = (grad @ jnp.swapaxes(v, -1, -2)) * weights * (hash_bits / 2)
  return (weighted @ k, jnp.swapaxes(weighted, -1, -2) @ q,
          jnp.swapaxes(weights, -1, -2) @ grad)


def _expectation_bwd(hash_bits, causal, residuals, grad):
  del causal  # Already in the kept weights.
  dq, dk, dv = _expectation_backward(*residuals, hash_bits, grad)
  return dq, dk, dv, None, None


expectation_cumulation.defvjp(_expectation_fwd, _expectation_bwd)


def lsh_backward(q, k, v, grad, q_codes, k_codes, q_mask, k_mask, hash_bits,
                 method="auto", causal=False):
  """The original v1 LSH backward of sampled YOSO: (dQ, dK, dV).

  dV = Bᵀ dO,  dQ_i = Σ_j B_ij (dO_i·V_j)(τ/2) K_j,
  dK_j = Σ_i B_ij (dO_i·V_j)(τ/2) Q_i,  B = (1/m) Σ_h [h(q_i) = h(k_j)] μ_i μ_j.

  `method="tables"` is the original's algorithm (bucket tables per weight
  dimension, O(m·n·d²)); "pairs" sums over the colliding pairs
  (O(m·n·d·pairs per query)); "auto" takes pairs while they average at most
  `_PAIR_LIMIT`·d per query and hash, tables beyond (decided at run time on
  the actual codes, both compiled). On accelerators "auto" means tables: the
  pair loop is a sequence of small steps (`_PAIR_CHUNK` pairs each), which a
  GPU runs latency-bound — measured on an H200 (docs/kernels.md): 3.9 s
  forward+backward at n = 16384 through pairs, against 63 ms for the Pallas
  table backward. `causal`: B restricted to j ≤ i (tables by prefix sums,
  pairs by their causal counts).
  """
  groups, num_hashes, length = q_codes.shape
  buckets, half_tau = 2**hash_bits, hash_bits / 2

  past, future = ("past", "future") if causal else (None, None)

  def by_tables():
    dv = lsh_cumulation(k_codes, q_codes, k_mask, q_mask, grad, buckets,
                        future)
    dq = lsh_weighted_cumulation(q_codes, k_codes, q_mask, k_mask, grad, v,
                                 half_tau * k, buckets, past)
    dk = lsh_weighted_cumulation(k_codes, q_codes, k_mask, q_mask, v, grad,
                                 half_tau * q, buckets, future)
    return dq, dk, dv

  count_fn = causal_counts if causal else collision_counts

  def by_pairs(counts=None):
    if causal and counts is None:
      counts = count_fn(q_codes, k_codes, q_mask, k_mask, buckets)
    dq, dk, dv = lsh_pair_gradients(q_codes, k_codes, q_mask, k_mask, q, k,
                                    v, grad, buckets, counts)
    return dq * (half_tau / num_hashes), dk * (half_tau / num_hashes), (
        dv / num_hashes)

  if method not in ("auto", "pairs", "tables"):
    raise ValueError(f"method={method!r}: 'auto', 'pairs' or 'tables'")
  if method == "tables" or (method == "auto" and (
      jax.default_backend() != "cpu" or
      _PAIR_LIMIT * q.shape[-1] * groups * num_hashes * length >= 2**31 or
      (buckets + 1) * length >= 2**31)):
    return by_tables()  # (the pair list and its sort keys are int32)
  if method == "pairs":
    return by_pairs()
  counts = count_fn(q_codes, k_codes, q_mask, k_mask, buckets)
  return jax.lax.cond(prefers_pairs(counts[0], q.shape[-1]), by_pairs,
                      lambda counts: by_tables(), counts)


def prefers_pairs(counts, head_dim):
  """Whether the pair loop is cheaper than tables for these collision counts.

  A pair costs O(d), the tables O(d²) per query: pairs win while they
  average at most `_PAIR_LIMIT`·d per query and hash (counts: [g, m, n] from
  `collision_counts`). Measured crossover on CPU: see docs/attention.md.
  """
  return counts.sum(dtype=jnp.float32) <= _PAIR_LIMIT * head_dim * counts.size


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def sampled_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits,
                       backward="lsh", causal=False):
  """Sampled YOSO: B V with B the collision matrix of the given codes
  (restricted to j ≤ i when `causal`)."""
  del q, k, backward
  return lsh_cumulation(q_codes, k_codes, q_mask, k_mask, v, 2**hash_bits,
                        "past" if causal else None)


def _sampled_fwd(q, k, v, q_codes, k_codes, q_mask, k_mask, hash_bits,
                 backward, causal):
  out = sampled_cumulation(q, k, v, q_codes, k_codes, q_mask, k_mask,
                           hash_bits, backward, causal)
  return out, (q, k, v, q_codes, k_codes, q_mask, k_mask)


def _sampled_bwd(hash_bits, backward, causal, residuals, grad):
  q, k, v, q_codes, k_codes, q_mask, k_mask = residuals
  if backward == "expectation":  # The original's n2_backward.
    weights = _expectation_weights(q, k, q_mask, k_mask, hash_bits, causal)
    dq, dk, dv = _expectation_backward(q, k, v, weights, hash_bits, grad)
  else:
    method = {"lsh": "auto", "lsh_pairs": "pairs",
              "lsh_tables": "tables"}[backward]
    dq, dk, dv = lsh_backward(q, k, v, grad, q_codes, k_codes, q_mask,
                              k_mask, hash_bits, method, causal)
  return dq, dk, dv, None, None, None, None


sampled_cumulation.defvjp(_sampled_fwd, _sampled_bwd)


def yoso_attention(q, k, v, *, mask=None, hash_bits=11, num_hashes=32,
                   sampled=True, rng=None, hashing="hadamard",
                   backward="lsh", causal=False, impl="xla"):
  """YOSO attention, sampled (default) or its expectation YOSO-E.

  Args:
    q: queries `[batch, length, heads, head_dim]`.
    k: keys, same shape.
    v: values, same shape.
    mask: optional `[batch, length]` bool, True for real tokens.
    hash_bits: τ, bits per hash code (LRA: ListOps 11, image 10, text 12).
    num_hashes: m, independent hashes averaged (LRA: 32).
    sampled: True for LSH-sampled YOSO, False for YOSO-E (O(n²)).
    rng: PRNG key for the hash functions; required when `sampled`.
    hashing: "hadamard" (the original's fast hash) or "gaussian".
    backward: "lsh" (the original's LSH backward, the LRA default; summed
      over colliding pairs or by bucket tables, whichever is cheaper for
      the codes at hand), "lsh_pairs" / "lsh_tables" (force one of the two;
      "lsh_tables" is the original's algorithm and linear in n) or
      "expectation" (the original's O(n²) `n2_backward`); sampled form only.
    causal: restrict every query to keys at or before its position (see the
      module docstring; impl="xla" only).
    impl: "xla" (the default) or "pallas": the sampled form's hashing and
      bucket cumulation, forward and the LSH backward (always by tables,
      the original's algorithm), through pallas_kernels/yoso_lsh (GPU via
      Triton; interpreted on CPU); "pallas_sorted": the same sums by
      sorted tiles (pallas_kernels/yoso_lsh/sorted_tiles.py: matmuls, no
      atomics; GPU via Triton, TPU via Mosaic with XLA hashing there);
      "pallas_sorted_atomic": the sorted tiles with the sum over hashes
      done by float32 atomic adds into one output instead of per-hash
      outputs un-sorted by XLA (GPU only; no [hashes, n, e] temporaries,
      run-to-run summation order).

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of `v`: L2-normalised
    rows, zeros at padded positions.
  """
  if q.shape[1] != k.shape[1]:
    raise ValueError("yoso_attention is self-attention: q and k lengths "
                     f"differ ({q.shape[1]} vs {k.shape[1]})")
  if backward not in BACKWARDS:
    raise ValueError(f"backward={backward!r}: one of {BACKWARDS}")
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: one of {IMPLS}")
  if causal and impl != "xla":
    raise ValueError(f"causal=True: impl={impl!r} has no causal kernel; use "
                     "impl='xla'")
  if impl != "xla" and (not sampled or backward not in ("lsh",
                                                       "lsh_tables")):
    raise ValueError(f"impl={impl!r} is the sampled form with the "
                     "original's LSH backward (sampled=True, backward='lsh' "
                     "or 'lsh_tables')")
  if sampled and rng is None:
    raise ValueError("sampled yoso_attention needs rng= (a PRNG key for the "
                     "hash functions); sampled=False is deterministic")
  batch, length, heads, head_dim = q.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)

  def groups(x):  # [b, n, h, d] -> [b·h, n, d], float32.
    return jnp.swapaxes(x.astype(jnp.float32), 1, 2).reshape(
        batch * heads, length, x.shape[-1])

  qn, kn, values = _normalize(groups(q)), _normalize(groups(k)), groups(v)
  mu = jnp.repeat(mask.astype(jnp.float32), heads, axis=0)
  if sampled and impl != "xla":
    interpret = jax.default_backend() == "cpu"
    rotation = hash_rotation(rng, (batch * heads,), head_dim,
                             num_hashes=num_hashes, hash_bits=hash_bits,
                             hashing=hashing)
    if jax.default_backend() == "tpu":  # The Pallas hash is Triton-only.
      hash_fn = functools.partial(pack_codes, rotation=rotation)
    else:
      hash_fn = functools.partial(yoso_lsh.hash_codes, rotation=rotation,
                                  interpret=interpret)
    q_codes, k_codes = (hash_fn(jax.lax.stop_gradient(x),
                                hash_bits=hash_bits, num_hashes=num_hashes)
                        for x in (qn, kn))
    if impl == "pallas":
      cumulation = yoso_lsh.yoso_lsh_cumulation
    else:
      cumulation = functools.partial(
          yoso_lsh.sorted_lsh_cumulation,
          hash_sum="atomic" if impl == "pallas_sorted_atomic" else "unsort")
    out = cumulation(qn, kn, values, q_codes, k_codes, mu, mu,
                     hash_bits=hash_bits, interpret=interpret)
  elif sampled:
    q_codes, k_codes = hash_codes(
        rng, jax.lax.stop_gradient(qn), jax.lax.stop_gradient(kn),
        num_hashes=num_hashes, hash_bits=hash_bits, hashing=hashing)
    out = sampled_cumulation(qn, kn, values, q_codes, k_codes, mu, mu,
                             hash_bits, backward, causal)
  else:
    out = expectation_cumulation(qn, kn, values, mu, mu, hash_bits, causal)
  out = _normalize(out).reshape(batch, heads, length, -1)
  return jnp.swapaxes(out, 1, 2).astype(v.dtype)
