"""A small video DiT with factorised space–time attention (adaLN-Zero).

DiT's block (efficient/diffusion/dit.py) with its attention split in two, as
in TimeSformer's "divided" attention (Bertasius et al., 2021) and Latte
(Ma et al., 2024): every block attends over the tokens of each frame
(space), then over the frames at each token position (time), then applies
the MLP; each of the three sublayers has its own adaLN-Zero shift, scale and
gate (9 modulation vectors per block, all zero at init, so every block is
the identity at initialisation). Frames are patchified separately with
fixed 2-D sin-cos positions plus a fixed 1-D sin-cos frame position.

(x [b, F, H, W, C], step [b], label [b]) → ε̂ [b, F, H, W, C]. This is the
test bed for LightMotion (efficient/diffusion/lightmotion.py), not a paper's
model: sizes are ours (configs/video.py).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from efficient.diffusion import dit

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def sincos_1d(dim, length):
  """Fixed 1-D sin-cos table [length, dim]."""
  omega = 1.0 / 10000**(np.arange(dim // 2) / (dim / 2.0))
  angles = np.arange(length, dtype=np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], 1).astype(
      np.float32)


class SpaceTimeBlock(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x, c):
    """x: [b, F, N, D] tokens; c: [b, D] condition."""
    batch, frames, tokens, width = x.shape
    mod = nn.Dense(9 * width, kernel_init=_zeros, bias_init=_zeros,
                   name="adaLN_modulation")(nn.silu(c))
    (shift_s, scale_s, gate_s, shift_t, scale_t, gate_t, shift_m, scale_m,
     gate_m) = [m[:, None, None] for m in jnp.split(mod, 9, axis=-1)]
    norm = lambda y, shift, scale: dit.layer_norm(y) * (1 + scale) + shift

    space = norm(x, shift_s, scale_s).reshape(batch * frames, tokens, width)
    space = dit.Attention(self.heads, name="space_attn")(space)
    x = x + gate_s * space.reshape(x.shape)

    time = norm(x, shift_t, scale_t).transpose(0, 2, 1, 3)
    time = dit.Attention(self.heads, name="time_attn")(
        time.reshape(batch * tokens, frames, width))
    x = x + gate_t * time.reshape(batch, tokens, frames, width).transpose(
        0, 2, 1, 3)
    return x + gate_m * dit.Mlp(name="mlp")(norm(x, shift_m, scale_m))


class VideoDiT(nn.Module):
  """ε-prediction video DiT (class-conditional, adaLN-Zero)."""
  num_frames: int = 8
  input_size: int = 32
  in_channels: int = 1
  patch_size: int = 4
  depth: int = 6
  hidden: int = 128
  heads: int = 4
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, step, label):
    batch, frames, size, _, channels = x.shape
    if (frames, size, channels) != (self.num_frames, self.input_size,
                                    self.in_channels):
      raise ValueError(f"VideoDiT for {self.num_frames}×{self.input_size}²×"
                       f"{self.in_channels} videos got {x.shape[1:]}")
    p = self.patch_size
    grid = size // p
    tokens = nn.Conv(self.hidden, (p, p), strides=(p, p), padding="VALID",
                     kernel_init=_xavier, name="x_embedder")(
                         x.reshape(batch * frames, size, size, channels))
    tokens = tokens.reshape(batch, frames, grid * grid, self.hidden)
    tokens = (tokens + dit.sincos_2d(self.hidden, grid)[None, None] +
              sincos_1d(self.hidden, frames)[None, :, None])
    temb = dit.timestep_embedding(step)
    temb = nn.Dense(self.hidden, kernel_init=nn.initializers.normal(0.02),
                    name="t_embedder_0")(temb)
    temb = nn.Dense(self.hidden, kernel_init=nn.initializers.normal(0.02),
                    name="t_embedder_2")(nn.silu(temb))
    # One extra label row: the null class of classifier-free guidance.
    c = temb + nn.Embed(self.num_classes + 1, self.hidden,
                        embedding_init=nn.initializers.normal(0.02),
                        name="y_embedder")(label)
    for i in range(self.depth):
      tokens = SpaceTimeBlock(self.heads, name=f"block_{i}")(tokens, c)
    shift, scale = jnp.split(
        nn.Dense(2 * self.hidden, kernel_init=_zeros, bias_init=_zeros,
                 name="final_adaLN_modulation")(nn.silu(c)), 2, axis=-1)
    tokens = (dit.layer_norm(tokens) * (1 + scale[:, None, None]) +
              shift[:, None, None])
    tokens = nn.Dense(p * p * channels, kernel_init=_zeros, bias_init=_zeros,
                      name="final_linear")(tokens)
    tokens = tokens.reshape(batch, frames, grid, grid, p, p, channels)
    return tokens.transpose(0, 1, 2, 4, 3, 5, 6).reshape(x.shape)


def forward_macs(model):
  """Multiply-accumulates of one forward pass for one video (analytic):
  Linears, the patch embedding and both attentions' two products."""
  width, frames = model.hidden, model.num_frames
  n = (model.input_size // model.patch_size)**2
  tokens = frames * n
  per_block = tokens * (2 * 4 * width**2 + 8 * width**2)
  per_block += frames * 2 * n * n * width + n * 2 * frames * frames * width
  per_block += 9 * width**2
  patch = model.patch_size**2 * model.in_channels * width
  return (model.depth * per_block + 2 * tokens * patch + 256 * width +
          width**2 + 2 * width**2)
