"""The small model registry: `config.model.name` -> Linen module class.

A model never reads the config: the trainer passes `config.model` minus `name`
as keyword arguments. Add an entry when a new family lands.
"""
import dataclasses
import importlib

import jax.numpy as jnp

MODELS = {
    "encoder_classifier": "efficient.attention.encoder:EncoderClassifier",
    "dit": "efficient.diffusion.dit:DiT",
    "dimr": "efficient.diffusion.dimr:DiMR",
    "video_dit": "efficient.diffusion.video_dit:VideoDiT",
    "llama": "efficient.decoding.lm:Llama",
    "eda_head": "efficient.decoding.drafts.eda:EDAHead",
}


def get_model(name, dtype=None, **kwargs):
  """The module `name` built with `kwargs`; `dtype` (compute dtype) goes to
  models that have one, and float32 is accepted by all."""
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r} is not one of "
                     f"{sorted(MODELS)}")
  module, cls_name = MODELS[name].split(":")
  cls = getattr(importlib.import_module(module), cls_name)
  if dtype is not None:
    if "dtype" in {f.name for f in dataclasses.fields(cls)}:
      kwargs["dtype"] = dtype
    elif jnp.dtype(dtype) != jnp.float32:
      raise ValueError(f"config.model.name={name!r} computes in float32 "
                       f"only; set config.compute_dtype='float32'")
  return cls(**kwargs)
