"""DiMR: multi-resolution diffusion with time-dependent LayerNorm (Liu et
al., NeurIPS 2024, arXiv 2406.09416), as qihao067/DiMR `libs/core/blocks.py`
builds it (reference/diffusion.md §1.2 walks through that file).

Branches (`Stage`s) run from the lowest resolution to the highest; each
reads the same noisy input x_n patchified at its own ratio, adds learned
positions, and (past the first) the upsampled features of the branch
before: every block output of that branch and its input, concatenated on
channels → TD-LN → Linear → pixel shuffle ×r → TD-LN. Inside a branch the
blocks form a U-ViT with long skips (nblk = num_blocks//2·2 + 1: nblk//2 in,
one mid, nblk//2 out, each out-block first mixing Linear(2d → d) of
[x, skip]). Each branch predicts ε at its own resolution
(TD-LN → 3×3 conv); sampling uses the last.

  * Transformer branch (lowest resolution): a class token (1000 classes +
    the null class) is prepended; blocks x += Attn(TDRMSNorm(x)) (qkv
    without bias), x += GLU-MLP(x).
  * ConvNeXt branches: x += DWConv7×7(x) (no norm before it), then
    x += GLU-MLP(x); no class token (class enters via the upsampled path).
  * GLU-MLP: h = TDRMSNorm(x); w2(GELU(w0 h) ⊙ w1 h), exact GELU.
  * Time enters only through the TD norms (tdln.py); there is no timestep
    embedding. Linears and embeddings start N(0, 0.02) (truncated in the
    original), biases 0; no zero-init.

Multi-scale loss (`multiscale_loss`): Σ_r c_r mean((ε̂_r − ε_r)²), c = [1/4, 1]
(low resolution first); ε_r is ε sum-pooled over k×k and divided by k, so
it stays N(0, I) (the original's `scale_correction`).

`norm="adaln_zero"` (not in the paper; it completes the {adaLN-Zero, TD-LN}
× {single, multi-resolution} comparison of reference/diffusion.md §4.2):
time and class enter as DiT's c = t_embed(n) + y_embed(y) (no class token);
every TD norm becomes an affine-free norm modulated by (shift, scale) from a
zero-initialised Linear of SiLU(c), and the blocks' residual branches are
gated by a third zero-initialised output, so each Transformer block starts
as the identity (DiT's adaLN-Zero, Peebles & Xie 2023 §3.2); the ConvNeXt
block's depthwise conv, which has no norm in DiMR, stays ungated.

Presets (`PRESETS`, ImageNet-256 latents 32×32×4): DiMR-XL/2R (505.05M
params, 160.2 GMACs: a Transformer branch on 16×16 tokens, dim 960, 39
blocks; a ConvNeXt branch at 32×32, dim 480, 20 → 21 blocks) and
DiMR-G/2R (1056.35M, 331.1 GMACs).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient.diffusion import dit
from efficient.diffusion import tdln


@dataclasses.dataclass(frozen=True)
class StageConfig:
  block_type: str  # "transformer" or "convnext"
  dim: int
  hidden: int  # GLU hidden width (2·dim in the released configs)
  heads: int
  num_blocks: int
  patch: int  # input_feature_ratio: the patchify conv's kernel and stride

  @property
  def blocks(self):
    return self.num_blocks // 2 * 2 + 1


def as_stage(cfg):
  """A StageConfig from itself or a plain tuple (as config files hold it)."""
  return cfg if isinstance(cfg, StageConfig) else StageConfig(*cfg)


PRESETS = {
    "XL/2R": (StageConfig("transformer", 960, 1920, 16, 39, 2),
              StageConfig("convnext", 480, 960, 16, 20, 1)),
    "G/2R": (StageConfig("transformer", 1152, 2304, 16, 57, 2),
             StageConfig("convnext", 576, 1152, 16, 29, 1)),
}

_normal = nn.initializers.normal(0.02)


def _dense(features, use_bias=True, name=None):
  return nn.Dense(features, use_bias=use_bias, kernel_init=_normal, name=name)


NORMS = ("tdln", "adaln_zero")


def _expand(p, x):  # [b, d] → broadcastable against x [b, ..., d].
  return p.reshape(p.shape[:1] + (1,) * (x.ndim - 2) + p.shape[-1:])


def _plain_norm(x, rms):
  x32 = x.astype(jnp.float32)
  if rms:  # TD-RMSNorm's normaliser, without γ.
    return x32 / (jnp.sqrt(jnp.mean(x32**2, -1, keepdims=True)) + 1e-8)
  mean = x32.mean(-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(x32.var(-1, keepdims=True) + 1e-5)


class ConditionalNorm(nn.Module):
  """TD-(RMS)LN of t, or adaLN: norm(x)·(1 + scale(c)) + shift(c).

  `cond` is t [b] for "tdln" and c [b, width] for "adaln_zero"; with
  `gated`, adaLN also returns a zero-initialised residual gate (else 1).
  """
  norm: str
  rms: bool = False
  gated: bool = False

  @nn.compact
  def __call__(self, x, cond):
    if self.norm == "tdln":
      layer = tdln.TDRMSNorm() if self.rms else tdln.TDLayerNorm()
      return layer(x, cond), 1.0
    parts = 3 if self.gated else 2
    mod = nn.Dense(parts * x.shape[-1], kernel_init=nn.initializers.zeros,
                   name="adaLN_modulation")(nn.silu(cond))
    shift, scale, *gate = jnp.split(_expand(mod, x), parts, axis=-1)
    out = (_plain_norm(x, self.rms) * (1 + scale) + shift).astype(x.dtype)
    return out, (gate[0] if gate else 1.0)


class GluMlp(nn.Module):
  """w2(GELU(w0 h) ⊙ w1 h) of an already normalised h."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, h):
    gated = nn.gelu(_dense(self.hidden, name="w0")(h), approximate=False)
    return _dense(self.out, name="w2")(gated * _dense(self.hidden,
                                                       name="w1")(h))


class TransformerBlock(nn.Module):
  hidden: int
  heads: int
  norm: str = "tdln"

  @nn.compact
  def __call__(self, x, cond):
    batch, length, dim = x.shape
    h, gate = ConditionalNorm(self.norm, rms=True, gated=True,
                              name="attn_norm")(x, cond)
    qkv = _dense(3 * dim, use_bias=False, name="qkv")(h)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.heads, -1), 3, 2)
    attn = jax.nn.dot_product_attention(q, k, v).reshape(batch, length, dim)
    x = x + gate * _dense(dim, name="dense")(attn)
    h, gate = ConditionalNorm(self.norm, rms=True, gated=True,
                              name="mlp_norm")(x, cond)
    return x + gate * GluMlp(self.hidden, dim, name="mlp")(h)


class DepthwiseConv(nn.Module):
  """7×7 depthwise conv, 'SAME' padding; `nn.Conv`'s parameters and init.

  On CPU it runs as 49 shifted multiply-adds, which XLA fuses into one loop:
  7× faster for the gradient than XLA:CPU's grouped convolution on
  [64, 32, 32, 32] (234 vs 1753 ms, this repo's 2-core CPU). Elsewhere it is
  `lax.conv_general_dilated` (cuDNN / the TPU convolution unit).
  """
  size: int = 7

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.size, self.size, 1, dim))
    bias = self.param("bias", nn.initializers.zeros, (dim,))
    kernel = kernel.astype(x.dtype)
    pad = self.size // 2
    if jax.default_backend() != "cpu":
      out = jax.lax.conv_general_dilated(
          x, kernel, (1, 1), ((pad, pad), (pad, pad)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=dim)
      return out + bias
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = bias.astype(x.dtype)
    for i in range(self.size):
      for j in range(self.size):
        out = out + padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
    return out


class ConvNeXtBlock(nn.Module):
  hidden: int
  norm: str = "tdln"

  @nn.compact
  def __call__(self, x, cond):
    dim = x.shape[-1]
    x = x + DepthwiseConv(name="dwconv")(x)
    h, gate = ConditionalNorm(self.norm, rms=True, gated=True,
                              name="mlp_norm")(x, cond)
    return x + gate * GluMlp(self.hidden, dim, name="mlp")(h)


def pixel_shuffle(x, ratio):
  """[b, h, w, r·r·d] → [b, h·r, w·r, d] (the original's transpose(2, 3))."""
  b, h, w, c = x.shape
  d = c // (ratio * ratio)
  x = x.reshape(b, h, w, ratio, ratio, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * ratio, w * ratio, d)


class Stage(nn.Module):
  """One resolution branch: returns (prediction, features for the next)."""
  config: StageConfig
  input_size: int
  in_channels: int
  num_classes: int
  norm: str = "tdln"

  @nn.compact
  def __call__(self, x, cond, label, lowres=None):
    cfg = as_stage(self.config)
    size = self.input_size // cfg.patch
    x = nn.Conv(cfg.dim, (cfg.patch, cfg.patch), strides=cfg.patch,
                padding="VALID", name="patchify")(x)
    x = x + nn.Embed(size * size, cfg.dim, embedding_init=_normal,
                     name="pos_embed").embedding.reshape(size, size, cfg.dim)
    if lowres is not None:
      up, _ = ConditionalNorm(self.norm, name="up_norm_in")(lowres, cond)
      ratio = size // lowres.shape[1]
      up = pixel_shuffle(_dense(cfg.dim * ratio * ratio, name="up_linear")(up),
                         ratio)
      x = x + ConditionalNorm(self.norm, name="up_norm_out")(up, cond)[0]
    batch = x.shape[0]
    class_token = cfg.block_type == "transformer" and self.norm == "tdln"
    if cfg.block_type == "transformer":
      x = x.reshape(batch, size * size, cfg.dim)
      if class_token:
        cls = nn.Embed(self.num_classes + 1, cfg.dim, embedding_init=_normal,
                       name="class_embed")(label)
        x = jnp.concatenate([cls[:, None], x], axis=1)
      block = lambda i: TransformerBlock(cfg.hidden, cfg.heads, self.norm,
                                         name=f"block_{i}")
    elif cfg.block_type == "convnext":
      block = lambda i: ConvNeXtBlock(cfg.hidden, self.norm,
                                      name=f"block_{i}")
    else:
      raise ValueError(f"block_type={cfg.block_type!r}: transformer or "
                       "convnext")

    def spatial(h):  # Drop the class token, back to [b, size, size, dim].
      if cfg.block_type == "transformer":
        h = h[:, int(class_token):].reshape(batch, size, size, cfg.dim)
      return h

    external, skips = [spatial(x)], []
    half = cfg.blocks // 2
    for i in range(cfg.blocks):
      if i > half:  # Out-blocks mix in the matching in-block's output.
        x = _dense(cfg.dim, name=f"skip_{i}")(
            jnp.concatenate([x, skips.pop()], axis=-1))
      x = block(i)(x, cond)
      if i < half:
        skips.append(x)
      external.append(spatial(x))
    out, _ = ConditionalNorm(self.norm, name="out_norm")(spatial(x), cond)
    out = nn.Conv(self.in_channels, (3, 3), padding=1, name="out_conv")(out)
    return out, jnp.concatenate(external, axis=-1)


class DiMR(nn.Module):
  """(x [b, H, W, C], step [b], label [b]) → ε̂ per branch, low res first."""
  stages: tuple = PRESETS["XL/2R"]  # StageConfigs or plain tuples of them
  input_size: int = 32
  in_channels: int = 4
  num_classes: int = 1000
  norm: str = "tdln"  # or "adaln_zero" (see the module docstring)

  @nn.compact
  def __call__(self, x, step, label):
    if self.norm not in NORMS:
      raise ValueError(f"norm={self.norm!r}: one of {NORMS}")
    if self.norm == "tdln":
      cond = tdln.diffusion_time(step)
    else:  # DiT's conditioning vector, at the first branch's width.
      width = as_stage(self.stages[0]).dim
      temb = dit.timestep_embedding(step)
      temb = nn.Dense(width, kernel_init=_normal, name="t_embedder_0")(temb)
      temb = nn.Dense(width, kernel_init=_normal,
                      name="t_embedder_2")(nn.silu(temb))
      cond = temb + nn.Embed(self.num_classes + 1, width,
                             embedding_init=_normal, name="y_embedder")(label)
    outputs, features = [], None
    for i, cfg in enumerate(self.stages):
      out, features = Stage(cfg, self.input_size, self.in_channels,
                            self.num_classes, self.norm, name=f"stage_{i}")(
                                x, cond, label, features)
      outputs.append(out)
    return outputs


def dimr_preset(name, **overrides):
  return DiMR(stages=PRESETS[name], **overrides)


def multiscale_targets(noise, outputs):
  """ε sum-pooled to each output's size and divided by the pool side."""
  targets = []
  for out in outputs:
    k = noise.shape[1] // out.shape[1]
    b, h, w, c = noise.shape
    pooled = noise.reshape(b, h // k, k, w // k, k, c).sum((2, 4))
    targets.append(pooled / k)
  return targets


def multiscale_loss(outputs, noise, weights=(0.25, 1.0)):
  """Σ_r c_r mean((ε̂_r − ε_r)²) per example `[batch]`."""
  if len(weights) != len(outputs):
    raise ValueError(f"{len(weights)} loss weights for {len(outputs)} "
                     "branch outputs")
  return sum(w * jnp.mean((o - target)**2, axis=(1, 2, 3))
             for w, o, target in zip(weights, outputs,
                                     multiscale_targets(noise, outputs)))


def forward_macs(model):
  """Multiply-accumulates of one forward pass for one image (analytic)."""
  adaln = getattr(model, "norm", "tdln") == "adaln_zero"
  width = as_stage(model.stages[0]).dim  # adaLN's conditioning width.
  macs = 256 * width + width**2 if adaln else 0  # The t-embedder.
  prev_channels, prev_size = None, None
  for cfg in map(as_stage, model.stages):
    size = model.input_size // cfg.patch
    pixels = size * size
    transformer = cfg.block_type == "transformer"
    tokens = pixels + (1 if transformer and not adaln else 0)
    macs += pixels * model.in_channels * cfg.patch**2 * cfg.dim  # Patchify.
    if prev_channels is not None:
      ratio = size // prev_size
      macs += prev_size**2 * prev_channels * cfg.dim * ratio * ratio
      if adaln:  # Modulation of the two upsampling norms.
        macs += width * 2 * (prev_channels + cfg.dim)
    mlp = 3 * cfg.dim * cfg.hidden
    if transformer:
      per_block = tokens * (4 * cfg.dim**2 + mlp) + 2 * tokens**2 * cfg.dim
    else:
      per_block = pixels * (49 * cfg.dim + mlp)
    if adaln:  # (shift, scale, gate) per norm, once per image.
      per_block += (2 if transformer else 1) * width * 3 * cfg.dim
      macs += width * 2 * cfg.dim  # The output norm's modulation.
    macs += cfg.blocks * per_block
    macs += (cfg.blocks // 2) * tokens * 2 * cfg.dim**2  # Long skips.
    macs += pixels * cfg.dim * model.in_channels * 9  # Output conv.
    prev_channels, prev_size = cfg.dim * (cfg.blocks + 1), size
  return macs
