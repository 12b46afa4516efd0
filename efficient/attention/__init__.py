"""Attention functions, one file per method, all with one signature:

  <method>_attention(q, k, v, *, mask=None, **hparams) -> out

q, k, v and out are `[batch, length, heads, head_dim]` (the layout of
`jax.nn.dot_product_attention`); `mask` is a `[batch, length]` bool key-padding
mask (True = real token). `get_attention(name)` finds one by name.
"""
import importlib

METHODS = ("softmax", "nystrom", "yoso", "mra")


def get_attention(name):
  """Returns `efficient.attention.<name>.<name>_attention`."""
  if name not in METHODS:
    raise ValueError(f"unknown attention {name!r}; known: {METHODS}")
  module = importlib.import_module(f"efficient.attention.{name}")
  return getattr(module, f"{name}_attention")
