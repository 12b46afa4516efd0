"""EDA: Efficient Draft Adaptation (Lin et al., "Efficiently Aligning Draft
Models via Parameter- and Data-Efficient Adaptation", arXiv 2603.09527;
Lyn-Lucy/Efficient-Draft-Adaptation, `eda/model/cnets_eda.py`).

An EAGLE-1-style feature-level draft whose FFN is split into a *shared*
expert (what general text needs) and a *private* one (what a particular
target needs). Per position t it reads the target's final hidden state f_t
(post final norm, i.e. the LM head's input) and the embedding of the next
token e(x_{t+1}) and predicts f_{t+1}; the target's frozen LM head turns a
predicted feature into draft logits. Architecture (reference/draft.md §4.2):

  h = fc([e(x_{t+1}); f_t])                  Linear(2d → d, bias)
  h = h + Attn(h)                            no input norm (EAGLE layer 0)
  f̂ = h + Shared(N(h)) + Private(N(h))       N: post-attention RMSNorm;
                                             SwiGLU experts, 1 + 1, top-1
                                             (routing weight 1: a sum)
  logits = head_target(f̂)

Training (EAGLE-1's loss, the EDA code's weights): v = SmoothL1(f̂_{t+1},
f_{t+1}) averaged over the feature dims, p = soft cross-entropy of
softmax(head(f_{t+1})) against log_softmax(head(f̂_{t+1})), loss = v + 0.1 p
over supervised positions; uniform noise (U − 0.5)·0.2·512/L on the input
features. The embedding and head stay the target's (frozen).

Adaptation to a fine-tuned target (EDA stage 2): keep attention, norms and
the shared expert from stage 1, re-initialise the private expert and train
only it and fc (`TRAINABLE_STAGE2`), on data the fine-tuned target
regenerated, with its features and its LM head. Sample selection is not in
the released code; ours is a Mahalanobis-distance reconstruction
(`mahalanobis_scores`, `select_samples`), labelled as such: fit μ, Σ on
the base target's features of stage-1 text, score each regenerated row by
the mean distance of the fine-tuned target's features over its response
tokens, keep the top fraction (`config.draft.select`).

Inference (`EDADrafter`): chain drafting (EDA/EAGLE use a dynamic tree; the
tree is left out here, the chain keeps verification exact). Each round the
draft re-reads the last K+1 (feature, next token) pairs of the committed
text -- features of accepted tokens come from the target's verify forward --
then drafts K tokens feeding its own predicted features.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficient.decoding import lm
from efficient.decoding.drafts import ar

TRAINABLE_STAGE2 = ("fc", "private")


class SwiGLU(nn.Module):
  hidden_dim: int
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, use_bias=False, name=name,
        kernel_init=nn.initializers.normal(self.init_std))
    gate, up = jnp.split(dense(2 * self.hidden_dim, "gate_up")(x), 2, -1)
    return dense(x.shape[-1], "down")(nn.silu(gate) * up)


class EDAHead(nn.Module):
  """The draft layer: (features, next-token embeddings) → predicted
  features. `cache` as in lm.Llama (one layer); without it, causal."""
  dim: int
  n_heads: int
  n_kv_heads: int
  hidden_dim: int
  private_hidden_dim: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02

  @nn.compact
  def __call__(self, features, embeds, cache=None):
    config = lm.LlamaConfig(
        vocab_size=1, dim=self.dim, n_layers=1, n_heads=self.n_heads,
        n_kv_heads=self.n_kv_heads, hidden_dim=self.hidden_dim,
        rope_theta=self.rope_theta, norm_eps=self.norm_eps,
        init_std=self.init_std)
    h = nn.Dense(self.dim, name="fc",
                 kernel_init=nn.initializers.normal(self.init_std))(
                     jnp.concatenate([embeds, features], -1))
    b, t = h.shape[:2]
    dh = config.dim_per_head
    qkv = nn.DenseGeneral((self.n_heads + 2 * self.n_kv_heads, dh),
                          use_bias=False, name="qkv",
                          kernel_init=nn.initializers.normal(self.init_std))(h)
    q, k, v = jnp.split(qkv, [self.n_heads, self.n_heads + self.n_kv_heads],
                        axis=2)
    if cache is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
      mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    else:
      positions = cache.lengths[:, None] + jnp.arange(t)
      mask = jnp.arange(cache.max_len)[None, None] <= positions[:, :, None]
    q = lm.rope(q, positions, self.rope_theta)
    k = lm.rope(k, positions, self.rope_theta)
    if cache is not None:
      k = lm._write(cache.k[0], k, cache.lengths)  # pylint: disable=protected-access
      v = lm._write(cache.v[0], v, cache.lengths)  # pylint: disable=protected-access
      cache = lm.KVCache((k,), (v,), cache.lengths + t)
    attn = lm.attend(q, k, v, mask)
    h = h + nn.DenseGeneral(self.dim, axis=(-2, -1), use_bias=False,
                            name="o",
                            kernel_init=nn.initializers.normal(
                                self.init_std))(attn)
    normed = lm.RMSNorm(self.norm_eps, name="post_norm")(h)
    h = (h + SwiGLU(self.hidden_dim, self.init_std, name="shared")(normed)
         + SwiGLU(self.private_hidden_dim, self.init_std,
                  name="private")(normed))
    return h, cache

  def init_cache(self, batch, max_len):
    shape = (batch, max_len, self.n_kv_heads, self.dim // self.n_heads)
    return lm.KVCache((jnp.zeros(shape),), (jnp.zeros(shape),),
                      jnp.zeros((batch,), jnp.int32))


def target_embed(target, target_params, tokens):
  return target.apply(target_params, tokens, method=lm.Llama.embed_tokens)


def target_head(target, target_params, features):
  return target.apply(target_params, features, method=lm.Llama.head)


def feature_noise(rng, features, seq_len):
  """EAGLE/EDA training noise: (U(0,1) − 0.5) · 0.2 · 512 / seq_len."""
  scale = 0.2 * 512 / seq_len
  return features + (jax.random.uniform(rng, features.shape) - 0.5) * scale


def loss(head, head_params, target, target_params, tokens, features,
         weights, rng=None, p_weight=0.1):
  """EAGLE-1 loss on one batch: tokens [B, L], the target's features of
  them [B, L, d] (post final norm), weights [B, L] (1 = real token).
  Position t reads (f_t, e(x_{t+1})) and is scored against f_{t+1}.
  Returns (loss, metrics)."""
  inputs = features[:, :-2]
  if rng is not None:
    inputs = feature_noise(rng, inputs, tokens.shape[1])
  embeds = target_embed(target, target_params, tokens[:, 1:-1])
  predicted, _ = head.apply(head_params, inputs, embeds)
  wanted = features[:, 1:-1]
  diff = jnp.abs(predicted - wanted)
  smooth_l1 = jnp.where(diff < 1.0, 0.5 * diff**2, diff - 0.5).mean(-1)
  logits = target_head(target, target_params, predicted)
  target_logits = target_head(target, target_params, wanted)
  soft = -jnp.sum(jax.nn.softmax(target_logits) *
                  jax.nn.log_softmax(logits), -1)
  w = weights[:, 2:]  # the token the predicted feature's head scores
  total = jnp.maximum(w.sum(), 1.0)
  v = (smooth_l1 * w).sum() / total
  p = (soft * w).sum() / total
  top1 = ((jnp.argmax(logits, -1) == jnp.argmax(target_logits, -1)) *
          w).sum() / total
  return v + p_weight * p, {"vloss": v, "ploss": p, "top1_agreement": top1}


def freeze(head_params, trainable=TRAINABLE_STAGE2):
  """head_params with stop_gradient on every top-level module not in
  `trainable` (EDA stage 2: only the private expert and fc learn). With
  weight decay 0 (EAGLE/EDA use none) frozen weights then stay exactly put
  under AdamW: zero gradient, zero moments, zero update."""
  inner = head_params["params"]
  return {"params": {k: v if k in trainable else
                     jax.tree.map(jax.lax.stop_gradient, v)
                     for k, v in inner.items()}}


def mahalanobis_scores(reference, candidates, weights=None, ridge=1e-3):
  """Our reconstruction of EDA's sample selection (not in the released
  code; reference/draft.md §4.3): distance of candidate features from the
  reference (stage-1 / base-target) feature distribution,
  sqrt((z − μ)ᵀ (Σ + λI)⁻¹ (z − μ)) with λ = ridge · mean(diag Σ). Larger
  = more shifted = more worth training the private expert on.

  reference [M, d]; candidates [N, d] (one distance each), or [N, L, d]
  with `weights` [N, L]: a row's score is then the weighted mean of its
  tokens' distances (fitting Σ on tokens needs far fewer rows than on row
  means, which would be rank-deficient at d = 576)."""
  reference = np.asarray(reference, np.float64)
  mu = reference.mean(0)
  cov = np.cov(reference, rowvar=False)
  cov += ridge * np.mean(np.diag(cov)) * np.eye(cov.shape[0])
  z = np.asarray(candidates, np.float64) - mu
  dist = np.sqrt(np.einsum("...d,...d->...", z @ np.linalg.inv(cov), z))
  if weights is None:
    return dist
  weights = np.asarray(weights, np.float64)
  return (dist * weights).sum(-1) / np.maximum(weights.sum(-1), 1e-9)


def response_features(model, params, tokens, weights, prompt_len,
                      batch_size=8):
  """The target's final features [N, L, d] of `tokens` [N, L] (batches of
  `batch_size`, jit'd) and the response mask [N, L]: weight > 0 at
  positions ≥ prompt_len (the regenerated continuation)."""
  apply = jax.jit(lambda p, t: model.apply(p, t)[1])
  params = jax.device_get(params)  # host copies: fine under any mesh
  tokens = np.asarray(tokens)
  feats = []
  for start in range(0, len(tokens), batch_size):
    block = tokens[start:start + batch_size]
    pad = batch_size - len(block)
    block = np.concatenate([block, np.repeat(block[-1:], pad, 0)])
    feats.append(np.asarray(apply(params, block))[:batch_size - pad])
  mask = (np.asarray(weights) > 0) & (np.arange(tokens.shape[1])
                                       >= prompt_len)
  return np.concatenate(feats), mask.astype(np.float32)


def select_samples(scores, fraction, method="mahalanobis", seed=0):
  """Indices (sorted) of the rows to train on: the top `fraction` by score
  ("mahalanobis": the most shifted from stage 1's data), or a random
  subset of the same size ("random", the equal-budget ablation)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"selection fraction {fraction} is not in (0, 1]")
  if method not in ("mahalanobis", "random"):
    raise ValueError(f"selection method {method!r} is not 'mahalanobis' or "
                     "'random'")
  keep = max(1, int(round(fraction * len(scores))))
  if method == "random":
    order = np.random.default_rng(seed).permutation(len(scores))
  else:
    order = np.argsort(-np.asarray(scores), kind="stable")
  return np.sort(order[:keep])


@dataclasses.dataclass(frozen=True)
class EDADrafter:
  """Chain drafting with an EDAHead. Draft params: {"head": ..., "target":
  the target's params (embedding and LM head, frozen)}."""
  head: EDAHead
  target: lm.Llama
  num_draft: int
  uses_features: bool = True

  @property
  def window(self):
    return self.num_draft + 1

  def _pairs(self, context, end, count):
    """(features f_t, tokens x_{t+1}) for t = end-count .. end-1."""
    idx = end[:, None] - count + jnp.arange(count)
    idx = jnp.maximum(idx, 0)
    feats = jnp.take_along_axis(context["features"], idx[..., None], 1)
    tokens = jnp.take_along_axis(context["seq"], idx + 1, 1)
    return feats, tokens

  def init(self, params, prompt, lengths, max_len, features):
    cache = self.head.init_cache(prompt.shape[0], max_len)
    context = {"seq": lm.sequence_buffer(prompt, max_len - prompt.shape[1]),
               "features": features}
    # Pairs t = 0 .. n-2 of the prompt (prompt width - 1 of them).
    width = prompt.shape[1] - 1
    feats, tokens = self._pairs(context, jnp.full_like(lengths, width), width)
    embeds = target_embed(self.target, params["target"], tokens)
    _, cache = self.head.apply(params["head"], feats, embeds, cache)
    return cache.rollback(lengths - 1 - self.window)

  def propose(self, params, cache, context, rng, num_draft, sampling):
    if num_draft != self.num_draft:
      raise ValueError(f"EDADrafter built for K={self.num_draft}, asked for "
                       f"{num_draft}")
    n = context["n"]
    feats, tokens = self._pairs(context, n - 1, self.window)
    embeds = target_embed(self.target, params["target"], tokens)
    predicted, cache = self.head.apply(params["head"], feats, embeds, cache)
    keys = jax.random.split(rng, num_draft)

    def draw(key, feature):
      logits = target_head(self.target, params["target"], feature)
      log_q = ar.draft_log_probs(logits, sampling)
      return ar.sample_draft(key, log_q, sampling), log_q

    first, first_log_q = draw(keys[0], predicted[:, -1])

    def step(carry, key):
      token, feature, cache = carry
      embeds = target_embed(self.target, params["target"], token[:, None])
      predicted, cache = self.head.apply(params["head"], feature[:, None],
                                         embeds, cache)
      token, log_q = draw(key, predicted[:, -1])
      return (token, predicted[:, -1], cache), (token, log_q)

    (_, _, cache), (rest, rest_log_q) = jax.lax.scan(
        step, (first, predicted[:, -1], cache), keys[1:])
    tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
    log_q = jnp.concatenate(
        [first_log_q[:, None], jnp.swapaxes(rest_log_q, 0, 1)], axis=1)
    return tokens, log_q, cache

  def commit(self, cache, n):
    return cache.rollback(n - 1 - self.window)
