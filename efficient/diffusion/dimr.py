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

Presets (`PRESETS`, ImageNet-256 latents 32×32×4): DiMR-XL/2R (505.05M
params, 160.2 GMACs: a Transformer branch on 16×16 tokens, dim 960, 39
blocks; a ConvNeXt branch at 32×32, dim 480, 20 → 21 blocks) and
DiMR-G/2R (1056.35M, 331.1 GMACs).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class GluMlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x, t):
    h = tdln.TDRMSNorm(name="norm")(x, t)
    gated = nn.gelu(_dense(self.hidden, name="w0")(h), approximate=False)
    return _dense(x.shape[-1], name="w2")(gated * _dense(self.hidden,
                                                          name="w1")(h))


class TransformerBlock(nn.Module):
  hidden: int
  heads: int

  @nn.compact
  def __call__(self, x, t):
    batch, length, dim = x.shape
    h = tdln.TDRMSNorm(name="attn_norm")(x, t)
    qkv = _dense(3 * dim, use_bias=False, name="qkv")(h)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.heads, -1), 3, 2)
    attn = jax.nn.dot_product_attention(q, k, v).reshape(batch, length, dim)
    x = x + _dense(dim, name="dense")(attn)
    return x + GluMlp(self.hidden, name="mlp")(x, t)


class ConvNeXtBlock(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x, t):
    dim = x.shape[-1]
    x = x + nn.Conv(dim, (7, 7), padding=3, feature_group_count=dim,
                    name="dwconv")(x)
    return x + GluMlp(self.hidden, name="mlp")(x, t)


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

  @nn.compact
  def __call__(self, x, t, label, lowres=None):
    cfg = as_stage(self.config)
    size = self.input_size // cfg.patch
    x = nn.Conv(cfg.dim, (cfg.patch, cfg.patch), strides=cfg.patch,
                padding="VALID", name="patchify")(x)
    x = x + nn.Embed(size * size, cfg.dim, embedding_init=_normal,
                     name="pos_embed").embedding.reshape(size, size, cfg.dim)
    if lowres is not None:
      up = tdln.TDLayerNorm(name="up_norm_in")(lowres, t)
      ratio = size // lowres.shape[1]
      up = pixel_shuffle(_dense(cfg.dim * ratio * ratio, name="up_linear")(up),
                         ratio)
      x = x + tdln.TDLayerNorm(name="up_norm_out")(up, t)
    batch = x.shape[0]
    if cfg.block_type == "transformer":
      x = x.reshape(batch, size * size, cfg.dim)
      cls = nn.Embed(self.num_classes + 1, cfg.dim, embedding_init=_normal,
                     name="class_embed")(label)
      x = jnp.concatenate([cls[:, None], x], axis=1)
      block = lambda i: TransformerBlock(cfg.hidden, cfg.heads,
                                         name=f"block_{i}")
    elif cfg.block_type == "convnext":
      block = lambda i: ConvNeXtBlock(cfg.hidden, name=f"block_{i}")
    else:
      raise ValueError(f"block_type={cfg.block_type!r}: transformer or "
                       "convnext")

    def spatial(h):  # Drop the class token, back to [b, size, size, dim].
      if cfg.block_type == "transformer":
        h = h[:, 1:].reshape(batch, size, size, cfg.dim)
      return h

    external, skips = [spatial(x)], []
    half = cfg.blocks // 2
    for i in range(cfg.blocks):
      if i > half:  # Out-blocks mix in the matching in-block's output.
        x = _dense(cfg.dim, name=f"skip_{i}")(
            jnp.concatenate([x, skips.pop()], axis=-1))
      x = block(i)(x, t)
      if i < half:
        skips.append(x)
      external.append(spatial(x))
    out = tdln.TDLayerNorm(name="out_norm")(spatial(x), t)
    out = nn.Conv(self.in_channels, (3, 3), padding=1, name="out_conv")(out)
    return out, jnp.concatenate(external, axis=-1)


class DiMR(nn.Module):
  """(x [b, H, W, C], step [b], label [b]) → ε̂ per branch, low res first."""
  stages: tuple = PRESETS["XL/2R"]  # StageConfigs or plain tuples of them
  input_size: int = 32
  in_channels: int = 4
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, step, label):
    t = tdln.diffusion_time(step)
    outputs, features = [], None
    for i, cfg in enumerate(self.stages):
      out, features = Stage(cfg, self.input_size, self.in_channels,
                            self.num_classes, name=f"stage_{i}")(
                                x, t, label, features)
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
  macs, prev_channels, prev_size = 0, None, None
  for cfg in map(as_stage, model.stages):
    size = model.input_size // cfg.patch
    pixels = size * size
    tokens = pixels + (1 if cfg.block_type == "transformer" else 0)
    macs += pixels * model.in_channels * cfg.patch**2 * cfg.dim  # Patchify.
    if prev_channels is not None:
      ratio = size // prev_size
      macs += prev_size**2 * prev_channels * cfg.dim * ratio * ratio
    mlp = 3 * cfg.dim * cfg.hidden
    if cfg.block_type == "transformer":
      per_block = tokens * (4 * cfg.dim**2 + mlp) + 2 * tokens**2 * cfg.dim
    else:
      per_block = pixels * (49 * cfg.dim + mlp)
    macs += cfg.blocks * per_block
    macs += (cfg.blocks // 2) * tokens * 2 * cfg.dim**2  # Long skips.
    macs += pixels * cfg.dim * model.in_channels * 9  # Output conv.
    prev_channels, prev_size = cfg.dim * (cfg.blocks + 1), size
  return macs
