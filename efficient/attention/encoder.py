"""Transformer encoder classifier of the LRA harness used by Nyströmformer,
YOSO and MRA (Xiong et al. 2021; Zeng et al. 2021; Zeng et al. 2022).

Their ListOps model (mlpen/Nystromformer `LRA/code/lra_config.py`,
`model.py`, `model_wrapper.py`): token + learned position embeddings, 2 pre-norm
blocks of width 64 with 2 heads × 32 and an MLP of 128, a final LayerNorm,
masked mean pooling over real tokens, and an MLP classifier head. Every block
calls the attention function picked by name from `efficient.attention`, with
the key-padding mask, so attention methods are swapped without touching the
model. Token id 0 is padding.

Parameters carry logical axis names for `efficient.train.sharding`.
"""
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax.numpy as jnp

from efficient import attention as attention_lib

_init = nn.initializers.normal(stddev=0.02)


def _dense(features, axes, name, dtype):
  return nn.Dense(
      features, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             axes[-1:]))


def _layer_norm(name, dtype):
  return nn.LayerNorm(
      dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             ("embed",)))


class SelfAttention(nn.Module):
  """Multi-head self-attention whose core is `efficient.attention.<name>`."""
  num_heads: int
  head_dim: int
  attention: str = "softmax"
  attention_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    width, shape = x.shape[-1], (self.num_heads, self.head_dim)

    def project(name, kernel_shape, kernel_axes, bias_shape, bias_axes, spec,
                inputs):
      # 3-D kernels as plain params: DenseGeneral reshapes a 2-D init, which
      # breaks the 3-D logical sharding annotation under a mesh.
      kernel = self.param(f"{name}_kernel", nn.with_logical_partitioning(
          _init, kernel_axes), kernel_shape)
      bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), bias_axes), bias_shape)
      return (jnp.einsum(spec, inputs.astype(self.dtype),
                         kernel.astype(self.dtype)) + bias.astype(self.dtype))

    q, k, v = (project(n, (width,) + shape, ("embed", "heads", "kv"), shape,
                       ("heads", "kv"), "bld,dhk->blhk", x)
               for n in ("query", "key", "value"))
    fn = attention_lib.get_attention(self.attention)
    out = fn(q, k, v, mask=mask, **self.attention_kwargs)
    return project("out", shape + (width,), ("heads", "kv", "embed"), (width,),
                   ("embed",), "blhk,hkd->bld", out)


class EncoderBlock(nn.Module):
  """Pre-norm block: x + drop(attn(LN x)); x + drop(mlp(LN x))."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float
  attention: str
  attention_kwargs: Mapping[str, Any]
  dtype: Any

  @nn.compact
  def __call__(self, x, mask, train):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = _layer_norm("ln_attention", self.dtype)(x)
    y = SelfAttention(self.num_heads, self.head_dim, self.attention,
                      self.attention_kwargs, self.dtype, name="attention")(y,
                                                                           mask)
    x = x + drop(y)
    y = _layer_norm("ln_mlp", self.dtype)(x)
    y = _dense(self.mlp_dim, ("embed", "mlp"), "mlp_in", self.dtype)(y)
    y = drop(nn.gelu(y, approximate=False))
    y = _dense(x.shape[-1], ("mlp", "embed"), "mlp_out", self.dtype)(y)
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
  attention: str = "softmax"
  attention_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, train=False):
    mask = tokens != 0
    embed = nn.Embed(
        self.vocab_size, self.width, dtype=self.dtype, name="token_embed",
        embedding_init=nn.with_logical_partitioning(_init, ("vocab", "embed")))
    positions = self.param(
        "position_embed", nn.with_logical_partitioning(_init,
                                                       ("length", "embed")),
        (self.max_length, self.width))
    x = embed(tokens) + positions[None, :tokens.shape[1]].astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.head_dim, self.mlp_dim,
                       self.dropout, self.attention,
                       flax.core.FrozenDict(self.attention_kwargs), self.dtype,
                       name=f"block_{i}")(x, mask, train)
    x = _layer_norm("ln_final", self.dtype)(x)
    # Masked mean pooling: padded positions neither count nor contribute.
    weights = mask[..., None].astype(x.dtype)
    pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
    h = nn.relu(_dense(self.head_hidden_dim, ("embed", "mlp"), "head_hidden",
                       self.dtype)(pooled))
    logits = _dense(self.num_classes, ("mlp", "classes"), "head_out",
                    self.dtype)(h)
    return logits.astype(jnp.float32)
