"""PARD: PARallel Draft (An et al., "PARD: Accelerating LLM Inference with
Low-Cost PARallel Draft Model Adaptation", arXiv 2504.18583, ICLR 2026;
AMD-AIG-AIMA/PARD). An autoregressive draft is adapted to predict K tokens
in ONE forward pass: after the committed tokens it reads K−1 copies of a
mask token, and the logits at the last real token and at the k-th mask are
its guesses for tokens t+1 and t+k+1.

Training example (PARD's `warp_data_collator`, reference/draft.md §3.3),
for a sequence x_0..x_{L−1} and K segments:
  * inputs: segment 0 is x itself, segments 1..K−1 are L mask tokens; row
    (k, j) has position id j;
  * attention: row (k, j) sees real tokens x_0..x_{j−k}, the mask rows
    (s, j−k+s) for s = 1..k (one per earlier segment, itself included) --
    exactly what the k-th mask appended after x_{j−k} sees at inference;
    segment 0 is causal. We build it from (segment, position) pairs instead
    of the original's index arithmetic (`attention_mask`);
  * target of row (k, j) is x_{j+1}, supervised when j + 1 < L and j ≥ k − 1
    (the original sets the first k labels of segment k to −100; row (1, 0),
    a mask with no real prefix predicting x_1, is kept);
  * COD, conditional drop-token (`cod_keep`): segment 0 is kept whole; in
    segment k ≥ 1 keep n_k = int(L · max(r^k, r_min)) rows (r = 0.7,
    r_min = 0.2), drawn uniformly among the rows whose predecessor
    (k−1, j−1) was kept (the original's `(selected + 1) % L`), so every kept
    row's chain of mask predecessors is kept ("integrity of prefix KV").
    Dropped rows leave inputs, positions, labels and both mask axes. For
    K = 8 this trains on 3.37·L rows instead of 8·L.
    The original's roll/gather loses the label of the last kept row of each
    sequence under COD; we keep it (that row is well defined).
  * loss: cross-entropy averaged over all supervised rows of all segments.

Inference (`PARDDrafter`, PARD's `PardInfer.generate`): each round the draft
reads the last K+1 committed tokens (enough to cover a full acceptance:
K drafts plus the bonus token) followed by K−1 mask tokens, with plain
causal attention and sequential positions; one forward gives K drafts. The
mask entries are then dropped from the draft cache (roll back to the
committed prefix). PARD's own loop is greedy only; under sampling our drafts
are drawn independently per position from the processed q, which keeps the
verification lossless (q is what they were drawn from).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from efficient.decoding import lm
from efficient.decoding.drafts import ar

# SmolLM2's `<empty_output>` (id 16): a control token never seen in plain
# text, used as PARD's mask token (PARD uses a reserved/unused id).
SMOLLM2_MASK_ID = 16


def layout(length, num_segments):
  """(segment, position) ids of the K·L training rows."""
  segment = np.repeat(np.arange(num_segments), length)
  position = np.tile(np.arange(length), num_segments)
  return segment, position


def attention_mask(segment, position):
  """[N, N] bool: row a=(k, j) may attend to row b=(k', j')."""
  k, j = segment[:, None], position[:, None]
  kb, jb = segment[None, :], position[None, :]
  real = (kb == 0) & (jb <= j - k)
  chain = (kb >= 1) & (kb <= k) & (jb == j - k + kb)
  return real | chain


def targets(tokens, segment, position):
  """(labels, valid): row (k, j) predicts x_{j+1}, supervised when
  j + 1 < L and j ≥ k − 1. tokens [..., L]."""
  length = tokens.shape[-1]
  nxt = np.minimum(position + 1, length - 1)
  labels = np.take(tokens, nxt, axis=-1)
  valid = (position + 1 < length) & (position >= segment - 1)
  return labels, valid


def cod_keep(rng, length, num_segments, ratio=0.7, ratio_min=0.2):
  """Rows kept by conditional drop-token, as indices into `layout`'s rows.

  rng: numpy Generator. Segment 0 whole; segment k keeps
  int(L·max(ratio^k, ratio_min)) positions among those whose predecessor
  (k−1, j−1 mod L) was kept.
  """
  kept = [np.arange(length)]
  for k in range(1, num_segments):
    candidates = (kept[-1] + 1) % length
    n_k = int(length * max(ratio ** k, ratio_min))
    chosen = rng.choice(candidates, size=min(n_k, len(candidates)),
                        replace=False)
    kept.append(np.sort(chosen))
  return np.concatenate([k * length + rows for k, rows in enumerate(kept)])


def training_example(tokens, num_segments, mask_id, rng=None, ratio=0.7,
                     ratio_min=0.2):
  """One PARD training example from tokens [L] (numpy): dict of inputs,
  positions, mask [N, N], labels, weights (1 on supervised rows). With
  rng=None, no COD (all K·L rows)."""
  length = tokens.shape[0]
  segment, position = layout(length, num_segments)
  rows = (np.arange(len(segment)) if rng is None else
          cod_keep(rng, length, num_segments, ratio, ratio_min))
  segment, position = segment[rows], position[rows]
  inputs = np.where(segment == 0, tokens[position], mask_id)
  labels, valid = targets(tokens, segment, position)
  return {"inputs": inputs.astype(np.int32),
          "positions": position.astype(np.int32),
          "mask": attention_mask(segment, position),
          "labels": labels.astype(np.int32),
          "weights": valid.astype(np.float32)}


def padded_length(length, num_segments, ratio=0.7, ratio_min=0.2,
                  cod=True):
  """Rows per example (static, so batches stack)."""
  if not cod:
    return length * num_segments
  return length + sum(int(length * max(ratio ** k, ratio_min))
                      for k in range(1, num_segments))


@dataclasses.dataclass(frozen=True)
class PARDDrafter:
  model: lm.Llama
  mask_id: int
  num_draft: int  # K: the window must cover K drafts + the bonus token
  uses_features: bool = False

  @property
  def window(self):
    return self.num_draft + 1

  def init(self, params, prompt, lengths, max_len, features=None):
    cache, _ = lm.prefill(self.model, params, prompt, lengths, max_len)
    return cache.rollback(lengths - self.window)

  def propose(self, params, cache, context, rng, num_draft, sampling):
    if num_draft != self.num_draft:
      raise ValueError(f"PARDDrafter built for K={self.num_draft}, "
                       f"asked for {num_draft}")
    real = lm.gather_last(context["seq"], context["n"], self.window)
    masks = jnp.full((real.shape[0], num_draft - 1), self.mask_id, jnp.int32)
    logits, _, cache = self.model.apply(
        params, jnp.concatenate([real, masks], axis=1), cache)
    logits = logits[:, -num_draft:]
    log_q = ar.draft_log_probs(logits, sampling)
    tokens = ar.sample_draft(rng, log_q, sampling)
    return tokens, log_q, cache

  def commit(self, cache, n):
    return cache.rollback(n - self.window)
