"""DiT: Diffusion Transformer with adaLN-Zero (Peebles & Xie, "Scalable
Diffusion Models with Transformers", ICCV 2023, arXiv 2212.09748), as
facebookresearch/DiT `models.py` builds it:

  * patchify (a p×p stride-p conv) + fixed 2-D sin-cos positions;
  * condition c = TimestepEmbedder(n) + LabelEmbedder(y), the label table
    holding one extra row, the null class used for classifier-free guidance;
  * blocks (Sec. 3.2, "adaLN-Zero"): (shift, scale, gate)×2 = Linear(SiLU(c)),
    x += gate₁·Attn(LN(x)(1 + scale₁) + shift₁),
    x += gate₂·MLP(LN(x)(1 + scale₂) + shift₂), LN without affine (eps 1e-6),
    MLP 4× with tanh-GELU, qkv with bias;
  * the modulation Linears and the final Linear start at zero, so every
    block is the identity at initialisation; other Linears xavier-uniform,
    embeddings N(0, 0.02).
  * `learn_sigma` doubles the output channels (DiT's learned variance; the
    published sizes count it). Our ε-loss reads the first C channels.

`norm="tdln"` replaces adaLN-Zero by DiMR's time-dependent LayerNorm
(efficient/diffusion/tdln.py): no modulation Linears and no timestep MLP;
TD-LN only carries time, so the class enters as a prepended token (U-ViT
style), dropped before the output layer.

Sizes (`PRESETS`): S 12/384/6, B 12/768/12, L 24/1024/16, XL 28/1152/16
(depth/width/heads), patch 2, 4, 8.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficient.diffusion import tdln

PRESETS = {  # name: (depth, hidden, heads)
    "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
NORMS = ("adaln_zero", "tdln")

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def timestep_embedding(step, dim=256, max_period=10000.0):
  """DiT's sinusoidal embedding: [cos(n f_k), sin(n f_k)], f_k = P^(−k/half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
  args = jnp.asarray(step, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_2d(dim, grid):
  """Fixed 2-D sin-cos position table [grid², dim] (MAE/DiT)."""
  def one_d(d, pos):
    omega = 1.0 / 10000**(np.arange(d // 2) / (d / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64),
                           np.arange(grid, dtype=np.float64), indexing="ij")
  return np.concatenate([one_d(dim // 2, rows), one_d(dim // 2, cols)],
                        axis=1).astype(np.float32)


def _modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(x):
  """DiT's LayerNorm: no affine (adaLN supplies it), eps 1e-6."""
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False)(x)


class Attention(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x):
    batch, length, width = x.shape
    qkv = nn.Dense(3 * width, kernel_init=_xavier, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.heads, -1), 3,
                        axis=2)
    out = jax.nn.dot_product_attention(q, k, v)
    return nn.Dense(width, kernel_init=_xavier, name="proj")(
        out.reshape(batch, length, width))


class Mlp(nn.Module):
  ratio: float = 4.0

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(int(width * self.ratio), kernel_init=_xavier, name="fc1")(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(width, kernel_init=_xavier, name="fc2")(x)


class DiTBlock(nn.Module):
  heads: int
  norm: str = "adaln_zero"

  @nn.compact
  def __call__(self, x, c, t):
    if self.norm == "tdln":
      x = x + Attention(self.heads)(tdln.TDLayerNorm(1e-6, name="norm1")(x, t))
      return x + Mlp()(tdln.TDLayerNorm(1e-6, name="norm2")(x, t))
    mod = nn.Dense(6 * x.shape[-1], kernel_init=_zeros, bias_init=_zeros,
                   name="adaLN_modulation")(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    x = x + gate1[:, None] * Attention(self.heads)(
        _modulate(layer_norm(x), shift1, scale1))
    return x + gate2[:, None] * Mlp()(
        _modulate(layer_norm(x), shift2, scale2))


class DiT(nn.Module):
  """ε-prediction DiT: (x [b, H, W, C], step [b], label [b]) → [b, H, W, C']."""
  input_size: int = 32
  in_channels: int = 4
  patch_size: int = 2
  depth: int = 28
  hidden: int = 1152
  heads: int = 16
  num_classes: int = 1000
  learn_sigma: bool = False
  norm: str = "adaln_zero"

  @nn.compact
  def __call__(self, x, step, label):
    if self.norm not in NORMS:
      raise ValueError(f"norm={self.norm!r}: one of {NORMS}")
    p, batch = self.patch_size, x.shape[0]
    grid = self.input_size // p
    tokens = nn.Conv(self.hidden, (p, p), strides=(p, p), padding="VALID",
                     kernel_init=_xavier, name="x_embedder")(x)
    tokens = tokens.reshape(batch, grid * grid, self.hidden) + sincos_2d(
        self.hidden, grid)[None]
    # One extra table row: the null class of classifier-free guidance.
    y = nn.Embed(self.num_classes + 1, self.hidden,
                 embedding_init=nn.initializers.normal(0.02),
                 name="y_embedder")(label)
    t = tdln.diffusion_time(step)
    if self.norm == "tdln":
      c = None
      tokens = jnp.concatenate([y[:, None], tokens], axis=1)
    else:
      temb = timestep_embedding(step)
      temb = nn.Dense(self.hidden, kernel_init=nn.initializers.normal(0.02),
                      name="t_embedder_0")(temb)
      temb = nn.Dense(self.hidden, kernel_init=nn.initializers.normal(0.02),
                      name="t_embedder_2")(nn.silu(temb))
      c = temb + y
    for i in range(self.depth):
      tokens = DiTBlock(self.heads, self.norm, name=f"block_{i}")(tokens, c, t)
    out_channels = self.in_channels * (2 if self.learn_sigma else 1)
    if self.norm == "tdln":
      tokens = tdln.TDLayerNorm(1e-6, name="final_norm")(tokens[:, 1:], t)
    else:
      shift, scale = jnp.split(
          nn.Dense(2 * self.hidden, kernel_init=_zeros, bias_init=_zeros,
                   name="final_adaLN_modulation")(nn.silu(c)), 2, axis=-1)
      tokens = _modulate(layer_norm(tokens), shift, scale)
    tokens = nn.Dense(p * p * out_channels, kernel_init=_zeros,
                      bias_init=_zeros, name="final_linear")(tokens)
    # Unpatchify: [b, g·g, p·p·C] → [b, g·p, g·p, C].
    tokens = tokens.reshape(batch, grid, grid, p, p, out_channels)
    return tokens.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, grid * p, grid * p, out_channels)


def dit_preset(name, **overrides):
  """DiT-<size>/<patch>, e.g. "XL/2" (ImageNet-256 latents: 32×32×4)."""
  size, patch = name.split("/")
  depth, hidden, heads = PRESETS[size]
  kwargs = dict(depth=depth, hidden=hidden, heads=heads,
                patch_size=int(patch))
  kwargs.update(overrides)
  return DiT(**kwargs)


def forward_macs(model):
  """Multiply-accumulates of one forward pass for one image (analytic).

  Linears, the patch conv and attention's two n²·d products; elementwise
  work not counted (the DiT paper's "Gflops" are these MACs).
  """
  p, width = model.patch_size, model.hidden
  n = (model.input_size // p)**2 + (1 if model.norm == "tdln" else 0)
  per_block = n * (3 * width**2 + width**2 + 8 * width**2) + 2 * n * n * width
  if model.norm == "adaln_zero":
    per_block += 6 * width**2  # The modulation Linear (once per image).
  out_channels = model.in_channels * (2 if model.learn_sigma else 1)
  macs = model.depth * per_block
  macs += (model.input_size // p)**2 * (p * p * model.in_channels * width)
  macs += (model.input_size // p)**2 * (width * p * p * out_channels)
  if model.norm == "adaln_zero":
    macs += 256 * width + width**2 + 2 * width**2  # t-embedder, final mod.
  return macs
