"""A Llama-style decoder with a static KV cache, and plain decoding in one
jit-compiled `lax.while_loop`.

The architecture is Llama's (Touvron et al., arXiv 2302.13971, Sec. 2.2;
Llama 2's grouped-query attention, arXiv 2307.09288): pre-norm blocks with
RMSNorm, rotary positions (RoPE, Su et al. arXiv 2104.09864) on q and k in
the "rotate half" layout of Hugging Face's Llama (GGUF files store q/k rows
permuted for llama.cpp's interleaved layout; `gguf.py` undoes it),
grouped-query attention, a SwiGLU MLP (Shazeer, arXiv 2002.05202), no biases,
optionally tied input/output embeddings. SmolLM2-135M is `LlamaConfig(
vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
hidden_dim=1536, rope_theta=1e5, tie_embeddings=True)`.

The static cache (`KVCache`): per layer k, v `[batch, max_len, kv_heads,
head_dim]` and one `lengths [batch]` vector, the number of valid entries per
row. A forward over `T` new tokens writes them at `lengths[b] + 0..T-1`,
attends causally over everything up to each query's position, and returns the
cache with `lengths += T`. Rolling back is setting `lengths` smaller: entries
past it are never read and are overwritten by the next write. Rows advance
independently (speculative decoding accepts a different number of tokens per
row).

Decoding convention (shared with `speculative.py`): the committed sequence of
a row is `seq[b, :n[b]]`; the cache holds its first `n - 1` tokens and the
last committed token is the next forward's first input, so one forward over
`[x_{n-1}, d_1..d_K]` both appends x_{n-1} and scores K drafts.
"""
import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import numpy as np
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  dim: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  hidden_dim: int
  head_dim: int | None = None  # default dim // n_heads
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  init_std: float = 0.02

  @property
  def dim_per_head(self):
    return self.head_dim or self.dim // self.n_heads


SMOLLM2_135M = LlamaConfig(vocab_size=49152, dim=576, n_layers=30, n_heads=9,
                           n_kv_heads=3, hidden_dim=1536, rope_theta=1e5,
                           norm_eps=1e-5, tie_embeddings=True)


class KVCache(NamedTuple):
  k: tuple  # n_layers × [batch, max_len, kv_heads, head_dim]
  v: tuple
  lengths: jax.Array  # [batch] int32

  @property
  def max_len(self):
    return self.k[0].shape[1]

  def rollback(self, lengths):
    """The cache truncated to `lengths` valid entries per row (no copy)."""
    return self._replace(lengths=jnp.asarray(lengths, jnp.int32))


def init_cache(config, batch, max_len, dtype=jnp.float32):
  shape = (batch, max_len, config.n_kv_heads, config.dim_per_head)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
  return KVCache(zeros, zeros, jnp.zeros((batch,), jnp.int32))


def rope(x, positions, theta):
  """Rotary embedding, rotate-half layout. x [B, T, H, D], positions [B, T]."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs  # [B, T, half]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class RMSNorm(nn.Module):
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True)
                                 + self.eps)
    return (normed * scale).astype(x.dtype)


def _write(buffer, new, start):
  """buffer [B, S, ...] with new [B, T, ...] written at start[b] per row."""
  def one(b, n, s):
    return jax.lax.dynamic_update_slice_in_dim(b, n, s, axis=0)
  return jax.vmap(one)(buffer, new, start)


def attend(q, k, v, mask):
  """Grouped-query attention. q [B,T,H,D], k/v [B,S,Hkv,D], mask [B,T,S]."""
  b, t, h, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, t, hkv, h // hkv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k) / jnp.sqrt(d).astype(q.dtype)
  scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32),
                     -1e30)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", weights, v)
  return out.reshape(b, t, h, d)


class Block(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, start=None):
    """`kv`: this layer's (k, v) cache, written at `start`; returns the new
    (k, v) (or the fresh k, v of x when there is no cache)."""
    c = self.config
    dh = c.dim_per_head
    dense = functools.partial(
        nn.DenseGeneral, use_bias=False,
        kernel_init=nn.initializers.normal(c.init_std))
    h = RMSNorm(c.norm_eps, name="attn_norm")(x)
    # q, k, v (and gate, up below) as one matmul each: decoding is bound by
    # reading weights, and fewer, larger matmuls read them faster on CPU.
    qkv = dense((c.n_heads + 2 * c.n_kv_heads, dh), name="qkv")(h)
    q, k, v = jnp.split(qkv, [c.n_heads, c.n_heads + c.n_kv_heads], axis=2)
    q = rope(q, positions, c.rope_theta)
    k = rope(k, positions, c.rope_theta)
    if kv is not None:
      k = _write(kv[0], k, start)
      v = _write(kv[1], v, start)
    attn = attend(q, k, v, mask)
    x = x + dense(c.dim, axis=(-2, -1), name="o")(attn)
    h = RMSNorm(c.norm_eps, name="mlp_norm")(x)
    gate, up = jnp.split(dense(2 * c.hidden_dim, name="gate_up")(h), 2, -1)
    x = x + dense(c.dim, name="down")(nn.silu(gate) * up)
    return x, (k, v)


class Llama(nn.Module):
  """Decoder-only LM (fields as in `LlamaConfig`; `Llama.from_config`).

  Two modes:

  * with `cache`: tokens [B, T] are appended at `cache.lengths`, attention is
    causal over the cache; returns (logits [B, T, V], hidden, new cache).
  * without: a plain forward for training; `positions` [B, T] (default
    0..T-1) and a boolean `mask` [B, T, T] (default causal) may be given
    (PARD's training rows need both); returns (logits, hidden, None).

  `hidden` is the final-normed feature, the LM head's input (EAGLE/EDA
  drafts read it).
  """
  vocab_size: int
  dim: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  hidden_dim: int
  head_dim: int | None = None
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  init_std: float = 0.02

  @classmethod
  def from_config(cls, config):
    return cls(**dataclasses.asdict(config))

  @property
  def config(self):
    return LlamaConfig(**{f.name: getattr(self, f.name)
                          for f in dataclasses.fields(LlamaConfig)})

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.vocab_size, c.dim,
                          embedding_init=nn.initializers.normal(c.init_std))
    self.blocks = [Block(c, name=f"block_{i}") for i in range(c.n_layers)]
    self.final_norm = RMSNorm(c.norm_eps)
    if not c.tie_embeddings:
      self.lm_head = nn.Dense(c.vocab_size, use_bias=False,
                              kernel_init=nn.initializers.normal(c.init_std))

  def __call__(self, tokens, cache=None, positions=None, mask=None):
    x = self.embed(tokens)
    hidden, new_cache = self.trunk(x, cache, positions, mask)
    return self.head(hidden), hidden, new_cache

  def trunk(self, x, cache=None, positions=None, mask=None):
    """The blocks and final norm over input embeddings x [B, T, dim]."""
    b, t = x.shape[:2]
    if cache is None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
      if mask is None:
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
      for block in self.blocks:
        x, _ = block(x, positions, mask)
      return self.final_norm(x), None
    start = cache.lengths
    positions = start[:, None] + jnp.arange(t)
    keys = jnp.arange(cache.max_len)
    mask = keys[None, None, :] <= positions[:, :, None]
    ks, vs = [], []
    for block, k, v in zip(self.blocks, cache.k, cache.v):
      x, (k, v) = block(x, positions, mask, (k, v), start)
      ks.append(k)
      vs.append(v)
    return self.final_norm(x), KVCache(tuple(ks), tuple(vs), start + t)

  def head(self, hidden):
    if self.config.tie_embeddings:
      return self.embed.attend(hidden)
    return self.lm_head(hidden)

  def embed_tokens(self, tokens):
    return self.embed(tokens)


# ----------------------------------------------------------------------------
# Logits processing and plain decoding.

def process_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Log-probabilities after temperature, top-k and top-p (nucleus), the
  distribution sampling draws from. The same function processes target and
  draft logits in speculative decoding, so p and q are treated alike."""
  logits = logits.astype(jnp.float32) / temperature
  neg = jnp.finfo(jnp.float32).min
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    logits = jnp.where(nucleus(jax.nn.softmax(logits, -1), top_p), logits,
                       neg)
  return jax.nn.log_softmax(logits, axis=-1)


def nucleus(probs, top_p, iterations=40):
  """Mask of the top-p nucleus (Holtzman et al. 2020): the most probable
  tokens whose mass first reaches top_p (ties at the boundary kept).

  Instead of sorting the vocabulary (≈0.6 s for 32 × 49k on a 2-core CPU)
  this bisects the probability threshold τ* = max{τ : Σ_{p ≥ τ} p ≥ top_p}
  and keeps p ≥ τ*; 40 halvings of [0, max p] resolve τ* far below any gap
  between distinct float32 probabilities that matters.
  """
  lo = jnp.zeros(probs.shape[:-1] + (1,), probs.dtype)
  hi = jnp.max(probs, -1, keepdims=True)

  def halve(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) / 2
    enough = jnp.sum(jnp.where(probs >= mid, probs, 0), -1,
                     keepdims=True) >= top_p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
  # hi may be the max itself when the top token alone reaches top_p.
  mass_hi = jnp.sum(jnp.where(probs >= hi, probs, 0), -1, keepdims=True)
  threshold = jnp.where(mass_hi >= top_p, hi, lo)
  return probs >= threshold


def sample_categorical(rng, probs):
  """One draw per row from (unnormalised, non-negative) probs [..., V] by
  inverting the CDF with a single uniform per row. Exact like
  `jax.random.categorical` up to float rounding of the cumulative sum, and
  much cheaper on CPU for a 49k vocabulary (one random number per row
  instead of V Gumbel draws)."""
  cdf = jnp.cumsum(probs.astype(jnp.float32), axis=-1)
  u = jax.random.uniform(rng, cdf.shape[:-1] + (1,)) * cdf[..., -1:]
  index = jnp.sum(cdf <= u, axis=-1)
  # Guard the top end (u == total) and zero-probability tails.
  last = probs.shape[-1] - 1 - jnp.argmax((probs > 0)[..., ::-1], axis=-1)
  return jnp.minimum(index, last).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 means greedy."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  @property
  def greedy(self):
    return self.temperature == 0

  def log_probs(self, logits):
    return process_logits(logits, self.temperature, self.top_k, self.top_p)

  def sample(self, rng, logits):
    if self.greedy:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    return sample_categorical(rng, jnp.exp(self.log_probs(logits)))


def pad_prompts(prompts, max_len, pad_id=0):
  """List of token lists -> (prompt [B, max_len] int32, lengths [B])."""
  seq = np.full((len(prompts), max_len), pad_id, np.int32)
  for i, p in enumerate(prompts):
    if not 1 <= len(p) <= max_len:
      raise ValueError(f"prompt {i} has {len(p)} tokens; need 1..{max_len}")
    seq[i, :len(p)] = p
  return jnp.asarray(seq), jnp.asarray([len(p) for p in prompts], jnp.int32)


def prefill(model, params, prompt, lengths, max_len):
  """Cache (size max_len) holding each row's prompt but its last token.

  One forward over the padded prompt block [B, P]: padding past a row's
  length is written to the cache but lies beyond `lengths - 1`, so it is
  never read and is overwritten later. Returns (cache, hidden [B, P, dim]).
  """
  cache = init_cache(model.config, prompt.shape[0], max_len)
  _, hidden, cache = model.apply(params, prompt, cache)
  return cache.rollback(lengths - 1), hidden


def sequence_buffer(prompt, room):
  """[B, P + room] int32 with the prompt block in front."""
  return jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, room)))


def gather_last(seq, n, count):
  """The last `count` committed tokens of each row: seq[b, n-count : n]."""
  idx = n[:, None] - count + jnp.arange(count)
  return jnp.take_along_axis(seq, jnp.maximum(idx, 0), axis=1)


def write_tokens(seq, n, tokens, count):
  """Write tokens[b, :count[b]] at seq[b, n[b]:]; the rest is left as is."""
  width = tokens.shape[1]
  idx = n[:, None] + jnp.arange(width)
  keep = jnp.arange(width)[None] < count[:, None]
  idx = jnp.where(keep, idx, seq.shape[1])  # out of range: dropped
  rows = jnp.broadcast_to(jnp.arange(seq.shape[0])[:, None], idx.shape)
  return seq.at[rows, idx].set(tokens, mode="drop")


def finished(seq, start, n, max_new, eos_id):
  """Rows that reached max_new tokens or emitted eos after `start`."""
  done = n - start >= max_new
  if eos_id is not None:
    pos = jnp.arange(seq.shape[1])[None]
    gen = (pos >= start[:, None]) & (pos < n[:, None])
    done |= jnp.any(gen & (seq == eos_id), axis=1)
  return done


@functools.partial(jax.jit, static_argnames=("model", "max_new", "sampling",
                                             "eos_id"))
def decode(model, params, prompt, lengths, rng, *, max_new,
           sampling=Sampling(), eos_id=None):
  """Plain autoregressive decoding, one target forward per token.

  prompt [B, P] (right-padded, see `pad_prompts`), lengths [B]. Returns
  (seq [B, P + max_new] with each row's prompt followed by its generated
  tokens, n [B] the final lengths, number of forwards). Rows stop at eos_id
  or after max_new tokens; the loop stops when all have.
  """
  seq = sequence_buffer(prompt, max_new)
  cache, _ = prefill(model, params, prompt, lengths, seq.shape[1])

  def cond(state):
    seq, n, cache, rng, steps = state
    return ~jnp.all(finished(seq, lengths, n, max_new, eos_id))

  def body(state):
    seq, n, cache, rng, steps = state
    done = finished(seq, lengths, n, max_new, eos_id)
    logits, _, cache = model.apply(params, gather_last(seq, n, 1), cache)
    rng, key = jax.random.split(rng)
    token = sampling.sample(key, logits[:, -1])
    count = jnp.where(done, 0, 1)
    seq = write_tokens(seq, n, token[:, None], count)
    n = n + count
    return seq, n, cache.rollback(n - 1), rng, steps + 1

  seq, n, _, _, steps = jax.lax.while_loop(
      cond, body, (seq, lengths, cache, rng, jnp.int32(0)))
  return seq, n, steps
