"""Dropout masks from jax's threefry (default) or from a counter hash.

Dropout (Srivastava et al., 2014) keeps each entry with probability
1 − rate and scales the kept ones by 1/(1 − rate). `generator="threefry"`
draws the mask with `jax.random.bernoulli`, by `flax.linen.Dropout`'s
formula (the encoder's threefry path is `nn.Dropout` itself, so its masks are
unchanged). On a CPU that is slow: XLA:CPU spends ≈ 20-45 ns per entry on
threefry (measured on the 2-core VM of docs/attention.md), and the LRA
harness drops out every activation and, for softmax, every attention
probability: 0.8 s of a 2.9 s Nyström ListOps step, about a quarter of a
softmax Fashion-MNIST step.

`generator="hash"` draws 64 seed bits from the key with threefry once and
hashes each entry's flat index with them: two rounds of MurmurHash3's 32-bit
finaliser (fmix32), seed words XORed in before each; an entry is kept when
the hash is below round((1 − rate)·2³²). That is a few integer operations
per entry that XLA vectorises (≈ 8× faster than threefry on that CPU;
training steps/s with each: experiments/lra/README.md). Masks are not threefry's, so a run with it
is a different draw of the same experiment; fmix32 is a bijection with full
avalanche, and the tests check the keep rate, independence between
neighbouring entries and between keys. Flat indices wrap past 2³² entries
(none of our tensors comes near).
"""
import math

import jax
import jax.numpy as jnp

GENERATORS = ("threefry", "hash")


def _fmix32(x):
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def keep_mask(rng, keep_prob, shape, generator="threefry"):
  """Bool mask of `shape`, each entry True with probability `keep_prob`."""
  if generator == "threefry":
    return jax.random.bernoulli(rng, keep_prob, shape)
  if generator != "hash":
    raise ValueError(f"dropout generator={generator!r}: one of {GENERATORS}")
  if keep_prob >= 1:
    return jnp.ones(shape, bool)
  seed = jax.random.bits(rng, (2,), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  bits = _fmix32(_fmix32(index ^ seed[0]) ^ seed[1])
  return bits < jnp.uint32(min(round(keep_prob * 2**32), 2**32 - 1))


def dropout(x, rate, rng, generator="threefry"):
  """x with entries zeroed with probability `rate`, the rest / (1 − rate)."""
  if rate == 0.0:
    return x
  keep = keep_mask(rng, 1.0 - rate, x.shape, generator)
  return jax.lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))
