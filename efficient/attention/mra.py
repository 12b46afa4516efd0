"""MRA-2 attention (Zeng et al., ICML 2022, arXiv 2207.10284).

"Multi Resolution Analysis (MRA) for Approximate Self-Attention" approximates
the softmax attention matrix A = exp(Q Kᵀ/√d) (row-normalised) at several
resolutions: coarse blocks everywhere, refined blocks where the coarse
coefficients are large (the greedy refinement of the paper's MRA scheme,
its Fig. 3 shows R = {16, 4, 1}). MRA-2 is the two-resolution variant the
paper benchmarks, R = {block_size, 1}: exact 32×32 blocks where selected,
one block-average coefficient elsewhere, with the coarse coefficient taken as
the exponential of the average score ("exp of average", not "average of
exp"). MRA-2-s ("sparse") drops the coarse part. (Section and equation
numbers of the paper could not be checked here; the steps below follow the
original code, `mra2_kernel/attention.py::mra2_attention` of
mlpen/mra-attention, identical in its LRA, RoBERTa and ImageNet copies; Hugging
Face's `modeling_mra.py` is a port of it.)

Per (example, head), with b = block_size, nb = n / b blocks, μ the key/query
padding mask (1 = real token):

  1. Q, K, V ← Q·μ, K·μ, V·μ.
  2. Low resolution: block means over real tokens,
       Q̂_I = Σ_{i∈I} Q_i / (c_I + 1e-6),  c_I = Σ_{i∈I} μ_i  (same for K̂, V̂),
       L = Q̂ K̂ᵀ / √d,  r_I = max_J L_IJ  (r is taken *before* masking),
       L_IJ −= 1e4 where c_I·c_J < 0.5 (fully padded block pairs).
  3. Selection (no gradient): S = L − r, plus 5e3 on the band |I − J| ≤
     diag_n // 2 (if diag_n > 0) and on the first `first_n` block rows and
     block columns; the top k = min(nb·block_per_row, nb²) entries of the
     flattened nb×nb matrix S (one global top-k per example and head, so a
     block row may get several blocks or none).
  4. High resolution on each selected pair (I, J):
       s = Q_I K_Jᵀ/√d  [b×b],  m_i = max over the selected blocks of row
       block I(i) of s_i· (no gradient; padded keys' zero scores included),
       P = exp(s − m_i − 1e4·(1 − μ_j)),
       O_hi,i = Σ_J P_iJ V_J,   N_hi,i = Σ_J Σ_j P_ij.
  5. "sparse": Y = O_hi / (N_hi + 1e-6).
     "full": the unselected blocks enter at low resolution,
       P̂_IJ = exp(L_IJ − r_I − 1e4·[S_IJ ≥ min top-k value])·c_J,
       O_lo,i = (P̂ V̂)_{I(i)},  N_lo,i = Σ_J P̂_{I(i)J},
     the two partial softmaxes are put on a common maximum with
       γ_i = (r_{I(i)} − m_i)·μ_i:  O_lo, N_lo ·= exp(min(γ, 0)),
                                    O_hi, N_hi ·= exp(−max(γ, 0)),
       Y = (O_hi + O_lo) / (N_hi + N_lo + 1e-6).
  6. Y ·= μ (padded query positions output 0).

Gradients, as in the original: the selection (S, the top-k, the full-mode
threshold mask) and the row maxima m never carry gradient; the high-resolution
scores and values always do; in "full" mode L, r, Q̂, K̂, V̂ do (in "sparse"
mode the low-resolution pass only feeds the selection and runs under
stop_gradient, as under the original's `torch.no_grad()`).

Memory: the gathered blocks are [k, b, b] and [k, b, d] per head, i.e.
O(n·block_per_row·b); only the low-resolution nb×nb matrix is quadratic (in
nb = n/b). No n×n matrix is formed.

Defaults (LRA ListOps, `old_code/LRA/models/mra2/8/config.json`):
  * block_size=32: `mra2_attention(block_size=32)`; the CUDA kernels are
    hard-wired to 32 (other sizes take the original's torch fallback).
  * block_per_row=8: `"block_per_row": 8` (the "8" in the config name;
    `8-s` is the same with approx_mode "sparse"). The original turns it into
    `num_block = (max_seq_len // 32)·block_per_row`, capped at nb², from the
    configured maximum length (ListOps 2000, rounded up to 2048 by
    `run_tasks.py`); here nb is that of the (padded) input, which is the same
    when inputs are padded to the maximum length, as the LRA pipeline does.
  * initial_prior_first_n_blocks=1, initial_prior_diagonal_n_blocks=0:
    ListOps/Image/Pathfinder (Text and Retrieval use 1 and 1; the RoBERTa
    configs 0, 0 at 512 tokens and 1, 5 at 4096; the original's function
    defaults are 0, 0).
  * approx_mode="full".
(Hugging Face's `MraConfig` defaults differ: block_per_row 4, priors 0, 0.)

Differences from the original:
  * Row maximum m: exact (a segment max). The CUDA `index_max` kernel
    quantises it to 1e-3 via `atomicMax` on int(1000·x) (and sets −1e5 for
    rows with no selected block, which we reproduce). m cancels between the
    numerator and the denominator, so only the 1e-6 terms see the change.
  * Ragged lengths: the original asserts n % 32 == 0. Here q, k, v are padded
    to a multiple of block_size with masked tokens and the output is sliced
    back; the last block's low-resolution mean is then over its real tokens.
  * Precision: float32 (as the original's `.float()`), or float64 when the
    inputs are float64 (used by the gradient tests); output in v's dtype.
    `precision="input"` (ours, for accelerators) keeps bfloat16/float16
    inputs in their dtype for the selected blocks' two matmuls (float32
    accumulation, softmax statistics in float32) and does the
    low-resolution part in float32 as before; the default "float32" is the
    original's.
  * mask=None takes the original's unmasked path (block means divide by b,
    no −1e4 terms). The original also takes it at run time when a given mask
    is all ones; we decide statically from `mask is None` (an all-True mask
    differs only by the 1e-6 in the mean's denominator).
  * Ties in the top-k are broken by lower flat index (lax.top_k); torch.topk
    (CUDA, sorted=False) leaves their order unspecified. Ties are common:
    every block row's arg-max block has S = L − r = 0 exactly (so with
    block_per_row = 1 and no priors the selection is one arg-max block per
    row), and the priors often fill k up to part of those zeros. We keep the
    zeros exact (see `_block_scores`) so the choice is deterministic.
    In "full" mode the original's threshold mask `S ≥ min top-k value` also
    covers tied blocks that the top-k did not pick; those get neither
    resolution. This quirk is kept.
  * The 2-D image re-ordering of the original (`attention_input_shape`, 4×8
    patches per block) is a token permutation done by the caller, not here.
  * No silent fallback: Hugging Face's port returns `zeros_like(query)` (a
    logger warning only) when its CUDA extension fails to load; this is pure
    JAX and always computes.

Padding caveat (original behaviour, kept): with partial selection the output
at real positions can depend on how much padding follows, because the number
of blocks k = nb·block_per_row grows with nb and r_I includes the zero
logits of fully padded key blocks. When every real block pair is selected the
output equals masked softmax attention and padding has no effect.

Causal masking: not supported (raises). The selection is a global top-k over
block pairs and the coarse means pool whole blocks, so both the choice of
blocks and the "full" low-resolution term mix in future tokens; the original
has no causal form either.
"""
import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels import mra_attention as mra_kernels

APPROX_MODES = ("full", "sparse")
IMPLS = ("xla", "pallas")
PRECISIONS = ("float32", "input")
_MASK_PENALTY = 1e4  # The original's additive penalty for masked entries.
_PRIOR_BONUS = 5e3  # The original's score bonus for prior blocks.
_EMPTY_ROW_MAX = -1e5  # index_max's value for rows with no selected block.


def _check_args(q, k, v, block_size, block_per_row, approx_mode, first_n,
                diag_n, causal):
  if causal:
    raise ValueError(
        "mra_attention has no causal form: blocks are chosen by a global "
        "top-k over all block pairs and the low-resolution block means pool "
        "whole blocks, so future tokens leak into every query")
  if approx_mode not in APPROX_MODES:
    raise ValueError(f"approx_mode={approx_mode!r}: one of {APPROX_MODES}")
  if not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"block_size={block_size!r}: a positive int")
  if not isinstance(block_per_row, int) or block_per_row < 1:
    raise ValueError(f"block_per_row={block_per_row!r}: a positive int")
  if first_n < 0 or diag_n < 0:
    raise ValueError("initial_prior_first_n_blocks and "
                     "initial_prior_diagonal_n_blocks must be >= 0")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("q, k, v must be [batch, length, heads, head_dim]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if q.shape[1] != k.shape[1]:
    raise ValueError("mra_attention is self-attention: q and k lengths "
                     f"differ ({q.shape[1]} vs {k.shape[1]})")
  if q.shape != k.shape or v.shape[:3] != k.shape[:3]:
    raise ValueError("q and k must have equal shapes and v the same batch, "
                     f"length and heads; got {q.shape}, {k.shape}, {v.shape}")


def _low_resolution(q, k, v, mu, block_size, masked):
  """Step 2 for one head: (L, r, counts, V̂), L already masked."""
  n, d = q.shape
  nb = n // block_size
  block_sum = lambda x: x.reshape(nb, block_size, -1).sum(1)
  if masked:
    counts = mu.reshape(nb, block_size).sum(1)
    denom = (counts + 1e-6)[:, None]
  else:
    counts = jnp.full((nb,), float(block_size), q.dtype)
    denom = float(block_size)
  q_hat, k_hat, v_hat = (block_sum(x) / denom for x in (q, k, v))
  logits = q_hat @ k_hat.T / math.sqrt(d)
  row_max = logits.max(-1, keepdims=True)
  if masked:
    empty = (counts[None, :] * counts[:, None]) < 0.5
    logits = logits - _MASK_PENALTY * empty.astype(logits.dtype)
  return logits, row_max, counts, v_hat


def _block_scores(logits, row_max, first_n, diag_n):
  """Step 3's S = L − r plus the priors, [nb, nb] (no gradient)."""
  # A row's arg-max block scores exactly 0, as in torch, and these zeros tie
  # at the top-k boundary. Without the `where`, XLA may fuse the 1/√d scaling
  # into `L − r` as an FMA (CPU) and leave ±1e-10 there, which breaks ties.
  scores = jax.lax.stop_gradient(
      jnp.where(logits == row_max, 0.0, logits - row_max))
  nb = scores.shape[0]
  rows = jnp.arange(nb)[:, None]
  cols = jnp.arange(nb)[None, :]
  if diag_n > 0:
    band = jnp.abs(rows - cols) <= diag_n // 2
    scores = scores + _PRIOR_BONUS * band.astype(scores.dtype)
  if first_n > 0:
    scores = scores + _PRIOR_BONUS * (rows < first_n).astype(scores.dtype)
    scores = scores + _PRIOR_BONUS * (cols < first_n).astype(scores.dtype)
  return scores


def _select(scores, num_blocks):
  """Global top-k of the flattened scores: (flat indices, threshold)."""
  values, flat = jax.lax.top_k(scores.reshape(-1), num_blocks)
  return flat, values.min()


def _selected_xla(q, k, v, mu, row_blk, col_blk, nb, block_size, masked):
  """(out_hi [nb, b, d], norm_hi [nb, b], row_max_hi [nb, b]) by gathers.

  Products in q's dtype with `mu.dtype` (float32 or float64) accumulation,
  the softmax statistics in `mu.dtype`."""
  d = q.shape[-1]
  acc = mu.dtype
  blocks = lambda x: x.reshape(nb, block_size, -1)
  q_sel = blocks(q)[row_blk]  # [k, b, d]
  k_sel = blocks(k)[col_blk]
  v_sel = blocks(v)[col_blk]
  s = jnp.einsum("kid,kjd->kij", q_sel, k_sel,
                 preferred_element_type=acc) / math.sqrt(d)  # [k, b, b]
  row_max_hi = jax.ops.segment_max(s.max(-1), row_blk, num_segments=nb)
  row_max_hi = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(row_max_hi), row_max_hi, _EMPTY_ROW_MAX))
  s = s - row_max_hi[row_blk][:, :, None]
  if masked:
    key_mu = mu.reshape(nb, block_size)[col_blk]  # [k, b]
    s = s - _MASK_PENALTY * (1.0 - key_mu[:, None, :])
  p = jnp.exp(s)
  pv = jnp.einsum("kij,kjd->kid", p.astype(v.dtype), v_sel,
                  preferred_element_type=acc)
  out_hi = jax.ops.segment_sum(pv, row_blk, num_segments=nb)  # [nb, b, d]
  norm_hi = jax.ops.segment_sum(p.sum(-1), row_blk, num_segments=nb)
  return out_hi, norm_hi, row_max_hi


def _selected_pallas(q, k, v, mu, flat, nb, block_size):
  """The same triple from pallas_kernels/mra_attention (interpreted on CPU)."""
  chosen = jnp.zeros(nb * nb, bool).at[flat].set(True).reshape(nb, nb)
  out_hi, norm_hi, row_max_hi = mra_kernels.mra_block_sparse(
      q[None], k[None], v[None], mu[None], chosen[None],
      block_sizes=mra_kernels.BlockSizes(block_size),
      interpret=jax.default_backend() == "cpu")
  blocks = lambda x: x.reshape((nb, block_size) + x.shape[2:]).astype(
      mu.dtype)
  return blocks(out_hi), blocks(norm_hi), blocks(row_max_hi)


def _head(q, k, v, mu, *, block_size, num_blocks, approx_mode, first_n,
          diag_n, masked, impl):
  """MRA-2 for one (example, head): q, k, v `[n, d]`, mu `[n]`.

  mu is in the compute dtype (float32/64), q, k, v in that dtype or, with
  `precision="input"`, in their own (only the selected blocks use them so).
  """
  n, d = q.shape
  nb = n // block_size
  if masked:
    q, k, v = (x * mu[:, None].astype(x.dtype) for x in (q, k, v))

  logits, row_max, counts, v_hat = _low_resolution(
      *(x.astype(mu.dtype) for x in (q, k, v)), mu, block_size, masked)
  if approx_mode == "sparse":  # Selection only (the original's no_grad).
    logits, row_max = jax.lax.stop_gradient((logits, row_max))
  scores = _block_scores(logits, row_max, first_n, diag_n)
  flat, threshold = _select(scores, num_blocks)
  row_blk, col_blk = flat // nb, flat % nb

  # High resolution on the k selected block pairs.
  if impl == "pallas":
    out_hi, norm_hi, row_max_hi = _selected_pallas(q, k, v, mu, flat, nb,
                                                   block_size)
  else:
    out_hi, norm_hi, row_max_hi = _selected_xla(q, k, v, mu, row_blk,
                                                col_blk, nb, block_size,
                                                masked)

  if approx_mode == "sparse":
    out = out_hi / (norm_hi[..., None] + 1e-6)
  else:
    # The original's `S >= threshold` (ties with the k-th score included);
    # the union keeps the chosen blocks in even if XLA recomputes S in
    # another fusion and rounds differently.
    chosen = jnp.zeros(nb * nb, bool).at[flat].set(True).reshape(nb, nb)
    selected = jax.lax.stop_gradient(chosen | (scores >= threshold))
    p_lo = jnp.exp(logits - row_max - _MASK_PENALTY *
                   selected.astype(logits.dtype)) * counts[None, :]
    out_lo = (p_lo @ v_hat)[:, None, :]  # [nb, 1, d]: one row per block.
    norm_lo = p_lo.sum(-1)[:, None]  # [nb, 1]
    gap = row_max - row_max_hi  # [nb, b]: r_I − m_i.
    if masked:
      gap = gap * mu.reshape(nb, block_size)
    corr_lo = jnp.exp(jnp.where(gap <= 0, gap, 0.0))
    corr_hi = jnp.exp(-jnp.where(gap > 0, gap, 0.0))
    out = (out_hi * corr_hi[..., None] + out_lo * corr_lo[..., None]) / (
        norm_hi * corr_hi + norm_lo * corr_lo + 1e-6)[..., None]
  out = out.reshape(n, -1)
  if masked:
    out = out * mu[:, None]
  return out


def _num_blocks(num_block_rows, block_per_row):
  return min(num_block_rows * block_per_row, num_block_rows**2)


def _prepare(q, k, v, mask, block_size, precision="float32"):
  """[B, n, H, d] -> padded [B, H, n', d] and μ in the compute dtype (q, k,
  v in their common input dtype with `precision="input"`)."""
  batch, length = q.shape[:2]
  dtype = jnp.promote_types(jnp.result_type(q, k, v), jnp.float32)
  qkv_dtype = jnp.result_type(q, k, v) if precision == "input" else dtype
  padded = -(-length // block_size) * block_size
  masked = mask is not None or padded != length
  if mask is None:
    mask = jnp.ones((batch, length), bool)
  pad = padded - length
  mu = jnp.pad(mask.astype(dtype), ((0, 0), (0, pad)))
  q, k, v = (jnp.pad(jnp.swapaxes(x.astype(qkv_dtype), 1, 2),
                     ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
  return q, k, v, mu, masked


@functools.partial(jax.jit, static_argnames=(
    "block_size", "num_blocks", "approx_mode", "first_n", "diag_n", "masked",
    "heads_per_step", "impl"))
def _mra(q, k, v, mu, heads_per_step=None, **static):
  per_head = functools.partial(_head, **static)
  if heads_per_step is None:
    return jax.vmap(jax.vmap(per_head, (0, 0, 0, None)))(q, k, v, mu)
  # A loop over heads (all examples at once: the batch axis may be
  # sharded), each step rematerialised in the backward pass, so peak memory
  # is that of `heads_per_step` heads.
  step = jax.checkpoint(lambda q, k, v: jax.vmap(per_head)(q, k, v, mu))
  by_head = lambda x: jnp.moveaxis(x, 1, 0)  # [heads, batch, n, d]
  out = jax.lax.map(lambda args: step(*args),
                    (by_head(q), by_head(k), by_head(v)),
                    batch_size=heads_per_step)
  return jnp.moveaxis(out, 0, 1)


def mra_attention(q, k, v, *, mask=None, block_size=32, block_per_row=8,
                  approx_mode="full", initial_prior_first_n_blocks=1,
                  initial_prior_diagonal_n_blocks=0, heads_per_step=1,
                  impl="xla", precision="float32", causal=False):
  """MRA-2 approximate self-attention (see the module docstring).

  Args:
    q: queries `[batch, length, heads, head_dim]`.
    k: keys, same shape.
    v: values `[batch, length, heads, value_dim]`.
    mask: optional `[batch, length]` bool, True for real tokens. Padded query
      positions output 0.
    block_size: b, tokens per block (32 in the original's kernels). Lengths
      that b does not divide are padded internally (masked) and sliced back.
    block_per_row: selected high-resolution blocks per block row on average;
      k = min(nb·block_per_row, nb²) blocks are chosen globally per example
      and head (nb = ceil(length / b)). block_per_row >= nb is exact softmax.
    approx_mode: "full" (MRA-2: unselected blocks at low resolution) or
      "sparse" (MRA-2-s: selected blocks only; a row block with none outputs
      0, as in the original).
    initial_prior_first_n_blocks: the first n block rows and columns get a
      +5e3 selection bonus (global tokens).
    initial_prior_diagonal_n_blocks: blocks with |I − J| <= n // 2 get a
      +5e3 selection bonus (local band); 0 disables it.
    heads_per_step: heads computed at once (for all examples). Each step
      is rematerialised in the backward pass, so peak memory is that of
      this many heads (at n = 4096, 4 heads × 64: 72 MiB of temporaries for
      forward+backward with 1, 209 MiB with None). None computes all heads
      at once (one vmap; no loop, no recomputation). The results are the
      same either way.
    impl: "xla" (gathers of the selected blocks, the default) or "pallas"
      (pallas_kernels/mra_attention: the selected-block part as Pallas
      kernels, forward and backward; run by the Pallas interpreter on CPU,
      so only a correctness path there; block_size a power of two).
    precision: "float32" (the original's: everything in float32, float64
      for float64 inputs) or "input": the selected blocks' QKᵀ and PV
      products take q, k, v in their own dtype (e.g. bfloat16 on an
      accelerator's tensor cores) with float32 accumulation; the softmax
      statistics, the low-resolution part and the output combination stay
      float32. Identical to "float32" for float32 inputs.
    causal: must be False (no causal form exists; raises ValueError).

  Returns:
    `[batch, length, heads, value_dim]` in the dtype of `v`.
  """
  _check_args(q, k, v, block_size, block_per_row, approx_mode,
              initial_prior_first_n_blocks, initial_prior_diagonal_n_blocks,
              causal)
  if heads_per_step is not None and (not isinstance(heads_per_step, int) or
                                     heads_per_step < 1):
    raise ValueError(f"heads_per_step={heads_per_step!r}: a positive int or "
                     "None")
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: one of {IMPLS}")
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r}: one of {PRECISIONS}")
  length = q.shape[1]
  qp, kp, vp, mu, masked = _prepare(q, k, v, mask, block_size, precision)
  nb = qp.shape[2] // block_size
  out = _mra(qp, kp, vp, mu, block_size=block_size,
             num_blocks=_num_blocks(nb, block_per_row),
             approx_mode=approx_mode,
             first_n=initial_prior_first_n_blocks,
             diag_n=initial_prior_diagonal_n_blocks, masked=masked,
             heads_per_step=heads_per_step, impl=impl)
  return jnp.swapaxes(out, 1, 2)[:, :length].astype(v.dtype)


def selected_blocks(q, k, *, mask=None, block_size=32, block_per_row=8,
                    initial_prior_first_n_blocks=1,
                    initial_prior_diagonal_n_blocks=0):
  """The block pairs `mra_attention` computes at high resolution.

  Same arguments as `mra_attention`. Returns `[batch, heads, k]` int32 flat
  indices I·nb + J (query block I, key block J) in ascending order.
  """
  _check_args(q, k, k, block_size, block_per_row, "full",
              initial_prior_first_n_blocks, initial_prior_diagonal_n_blocks,
              False)
  qp, kp, _, mu, masked = _prepare(q, k, k, mask, block_size)
  nb = qp.shape[2] // block_size
  num_blocks = _num_blocks(nb, block_per_row)

  def per_head(q, k, mu):
    if masked:
      q, k = q * mu[:, None], k * mu[:, None]
    logits, row_max, _, _ = _low_resolution(q, k, k, mu, block_size, masked)
    scores = _block_scores(logits, row_max, initial_prior_first_n_blocks,
                           initial_prior_diagonal_n_blocks)
    return jnp.sort(_select(scores, num_blocks)[0])

  return jax.vmap(jax.vmap(per_head, (0, 0, None)))(qp, kp, mu)
