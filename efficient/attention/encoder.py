"""Transformer encoder classifier of the LRA harness used by Nyströmformer,
YOSO and MRA (Xiong et al. 2021; Zeng et al. 2021; Zeng et al. 2022).

Their ListOps model (mlpen/Nystromformer `LRA/code/lra_config.py`,
`model.py`, `model_wrapper.py`): token + learned position embeddings, 2 pre-norm
blocks of width 64 with 2 heads × 32 and an MLP of 128, a final LayerNorm,
masked mean pooling over real tokens, and an MLP classifier head. Every block
calls the attention function picked by name from `efficient.attention`, with
the key-padding mask, so attention methods are swapped without touching the
model. Token id 0 is padding.

Matches the original in detail: embeddings N(0, 0.02); Linear layers with
PyTorch's default init (weights and biases U(±1/sqrt(fan_in))); LayerNorm eps
1e-5; exact GELU; dropout 0.1 after the embeddings, on the attention and MLP
outputs and (softmax only) on the attention probabilities; the head is
Linear(64, 128) → ReLU → Linear(128, classes). `dropout_generator="hash"`
draws the dropout masks from a counter hash instead of threefry, ≈ 8× cheaper
on a CPU (efficient/attention/dropout.py); "threefry" (the default) is
`flax.linen.Dropout`.

One deliberate difference: the original pools with `mean` over all padded
positions (padding zeroed), i.e. it divides by the padded length, so logits
change with the amount of padding. We divide by the number of real tokens
(`pooling="mean"`); `pooling="mean_padded"` reproduces the original.

Parameters carry logical axis names for `efficient.train.sharding`.
"""
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient import attention as attention_lib
from efficient.attention import dropout as dropout_lib

_embed_init = nn.initializers.normal(stddev=0.02)


def _torch_kernel_init(in_axis=-2, out_axis=-1):
  """torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                          in_axis=in_axis, out_axis=out_axis)


def _torch_bias_init(fan_in):
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


class _Dense(nn.Module):
  """nn.Dense with torch's default init and logical axis names."""
  features: int
  axes: tuple
  dtype: Any

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(
        _torch_kernel_init(), self.axes), (fan_in, self.features))
    bias = self.param("bias", nn.with_logical_partitioning(
        _torch_bias_init(fan_in), self.axes[-1:]), (self.features,))
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(
        self.dtype)


def _layer_norm(name, dtype):
  return nn.LayerNorm(
      epsilon=1e-5, dtype=dtype, name=name,  # torch's default eps.
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             ("embed",)))


class ValueConv(nn.Module):
  """Depthwise conv over length, one filter per head shared by head_dim.

  The original's `Conv2d(heads, heads, (k, 1), groups=heads, bias=False)` on
  V·mask (mlpen/Nystromformer `attention_nystrom.py`), added to the attention
  output; torch's default init U(±1/sqrt(k)).
  """
  size: int

  @nn.compact
  def __call__(self, v, mask):
    if self.size % 2 == 0:
      raise ValueError(f"value_conv_size={self.size} must be odd (a centred "
                       "filter)")
    batch, length, heads, head_dim = v.shape
    kernel = self.param("kernel", nn.with_logical_partitioning(
        _torch_bias_init(self.size), ("conv", "heads")), (self.size, heads))
    v = v * mask[:, :, None, None].astype(v.dtype)
    return depthwise_conv(v, kernel.astype(v.dtype))


def depthwise_conv(v, kernel):
  """y[:, t, h] = Σ_i kernel[i, h] · v[:, t + i − k//2, h] (zero padding).

  v: `[batch, length, heads, dim]`; kernel: `[k, heads]`, k odd. Computed as
  a block-Toeplitz matmul: the sequence is cut into blocks of B ≥ k//2
  tokens, so each output block only sees its own and the two neighbouring
  input blocks, and y_block = Σ_{o=−1,0,1} T_o x_{block+o} with [B, B]
  Toeplitz matrices T_o built from the kernel. About 3B/k times the direct
  convolution's multiply-adds, but as dense matmuls: 5-7x faster forward +
  backward than XLA's grouped convolution on CPU (n = 2048, k = 35; the
  test checks it against `lax.conv_general_dilated`).
  """
  size, radius = kernel.shape[0], kernel.shape[0] // 2
  block = max(radius, 8)
  batch, length, heads, dim = v.shape
  num_blocks = -(-length // block)
  x = jnp.pad(v, ((0, 0), (block, (num_blocks + 1) * block - length),
                  (0, 0), (0, 0)))
  x = x.reshape(batch, num_blocks + 2, block, heads, dim)
  rows, cols = jnp.arange(block)[:, None], jnp.arange(block)[None, :]
  y = 0
  for offset in (-1, 0, 1):
    tap = offset * block + cols - rows + radius  # Kernel index per entry.
    toeplitz = jnp.where(((tap >= 0) & (tap < size))[..., None],
                         kernel[jnp.clip(tap, 0, size - 1)], 0)
    y = y + jnp.einsum("ach,bnchd->bnahd", toeplitz,
                       x[:, 1 + offset:1 + offset + num_blocks])
  return y.reshape(batch, num_blocks * block, heads, dim)[:, :length]


class SelfAttention(nn.Module):
  """Multi-head self-attention whose core is `efficient.attention.<name>`."""
  num_heads: int
  head_dim: int
  attention: str = "softmax"
  attention_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
  attention_dropout: float = 0.0
  value_conv_size: int = 0  # > 0: Nyströmformer's depthwise conv on V.
  dtype: Any = jnp.float32
  dropout_generator: str = "threefry"

  @nn.compact
  def __call__(self, x, mask, train=False):
    width, shape = x.shape[-1], (self.num_heads, self.head_dim)

    def project(name, kernel_shape, kernel_axes, in_axis, out_axis, spec,
                inputs):
      # 3-D kernels as plain params: DenseGeneral reshapes a 2-D init, which
      # breaks the 3-D logical sharding annotation under a mesh.
      fan_in = math.prod(kernel_shape[a] for a in in_axis)
      kernel = self.param(f"{name}_kernel", nn.with_logical_partitioning(
          _torch_kernel_init(in_axis, out_axis), kernel_axes), kernel_shape)
      bias_shape = tuple(kernel_shape[a] for a in out_axis)
      bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
          _torch_bias_init(fan_in), tuple(kernel_axes[a] for a in out_axis)),
                        bias_shape)
      return (jnp.einsum(spec, inputs.astype(self.dtype),
                         kernel.astype(self.dtype)) + bias.astype(self.dtype))

    q, k, v = (project(n, (width,) + shape, ("embed", "heads", "kv"), (0,),
                       (1, 2), "bld,dhk->blhk", x)
               for n in ("query", "key", "value"))
    kwargs = dict(self.attention_kwargs)
    if train and self.attention_dropout > 0:
      kwargs.update(dropout_rate=self.attention_dropout,
                    dropout_rng=self.make_rng("dropout"),
                    dropout_generator=self.dropout_generator)
    if self.attention == "yoso" and kwargs.get("sampled", True):
      # Fresh hash functions per call, from the "hash" rng stream (the
      # trainer supplies it in training and a fixed one in evaluation).
      kwargs["rng"] = self.make_rng("hash")
    fn = attention_lib.get_attention(self.attention)
    out = fn(q, k, v, mask=mask, **kwargs)
    if self.value_conv_size:
      out = out + ValueConv(self.value_conv_size, name="value_conv")(v, mask)
    return project("out", shape + (width,), ("heads", "kv", "embed"), (0, 1),
                   (2,), "blhk,hkd->bld", out)


def _dropout(module, rate, train, generator):
  """y -> dropout(y): flax's `nn.Dropout` for "threefry" (its masks, bit for
  bit), else `dropout_lib.dropout` with a fresh "dropout" key per call."""
  if generator == "threefry":
    return nn.Dropout(rate, deterministic=not train)
  if generator not in dropout_lib.GENERATORS:
    raise ValueError(f"dropout_generator={generator!r}: one of "
                     f"{dropout_lib.GENERATORS}")
  if not train or rate == 0.0:
    return lambda y: y
  return lambda y: dropout_lib.dropout(y, rate, module.make_rng("dropout"),
                                       generator)


class EncoderBlock(nn.Module):
  """Pre-norm block: x + drop(attn(LN x)); x + drop(mlp(LN x))."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float
  attention: str
  attention_kwargs: Mapping[str, Any]
  attention_dropout: float
  value_conv_size: int
  dtype: Any
  dropout_generator: str = "threefry"

  @nn.compact
  def __call__(self, x, mask, train):
    drop = _dropout(self, self.dropout, train, self.dropout_generator)
    y = _layer_norm("ln_attention", self.dtype)(x)
    y = SelfAttention(self.num_heads, self.head_dim, self.attention,
                      self.attention_kwargs, self.attention_dropout,
                      self.value_conv_size, self.dtype,
                      self.dropout_generator,
                      name="attention")(y, mask, train)
    x = x + drop(y)
    y = _layer_norm("ln_mlp", self.dtype)(x)
    y = _Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name="mlp_in")(y)
    y = drop(nn.gelu(y, approximate=False))
    y = _Dense(x.shape[-1], ("mlp", "embed"), self.dtype, name="mlp_out")(y)
    x = x + drop(y)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderClassifier(nn.Module):
  """Sequence classifier: `tokens [batch, length] int -> logits [batch, classes]`.

  Defaults are the LRA ListOps harness of the Nyströmformer/YOSO/MRA papers.
  `dtype` is the compute dtype (bfloat16 for mixed precision); parameters
  stay float32.
  """
  vocab_size: int
  num_classes: int
  max_length: int
  width: int = 64
  depth: int = 2
  num_heads: int = 2
  head_dim: int = 32
  mlp_dim: int = 128
  head_hidden_dim: int = 128
  dropout: float = 0.1
  attention_dropout: float = 0.1
  attention: str = "softmax"
  attention_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
  value_conv_size: int = 0
  pooling: str = "mean"
  dtype: Any = jnp.float32
  dropout_generator: str = "threefry"

  @nn.compact
  def __call__(self, tokens, train=False):
    if self.pooling not in ("mean", "mean_padded"):
      raise ValueError(f"pooling={self.pooling!r}: 'mean' or 'mean_padded'")
    mask = tokens != 0
    embed = nn.Embed(
        self.vocab_size, self.width, dtype=self.dtype, name="token_embed",
        embedding_init=nn.with_logical_partitioning(_embed_init,
                                                    ("vocab", "embed")))
    positions = self.param(
        "position_embed", nn.with_logical_partitioning(_embed_init,
                                                       ("length", "embed")),
        (self.max_length, self.width))
    x = embed(tokens) + positions[None, :tokens.shape[1]].astype(self.dtype)
    x = _dropout(self, self.dropout, train, self.dropout_generator)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.head_dim, self.mlp_dim,
                       self.dropout, self.attention,
                       flax.core.FrozenDict(self.attention_kwargs),
                       self.attention_dropout, self.value_conv_size,
                       self.dtype, self.dropout_generator,
                       name=f"block_{i}")(x, mask, train)
    x = _layer_norm("ln_final", self.dtype)(x)
    # Mean over real tokens ("mean") or over the padded length as the
    # original does ("mean_padded"); padded positions never contribute.
    weights = mask[..., None].astype(x.dtype)
    count = (jnp.maximum(weights.sum(1), 1) if self.pooling == "mean" else
             tokens.shape[1])
    pooled = (x * weights).sum(1) / count
    h = nn.relu(_Dense(self.head_hidden_dim, ("embed", "mlp"), self.dtype, name="head_hidden")(pooled))
    logits = _Dense(self.num_classes, ("mlp", "classes"), self.dtype, name="head_out")(h)
    return logits.astype(jnp.float32)
