"""The small model registry: `config.model.name` -> Linen module class.

A model never reads the config: the trainer passes `config.model` minus `name`
as keyword arguments. Add an entry when a new family lands.
"""
import importlib

MODELS = {
    "encoder_classifier": "efficient.attention.encoder:EncoderClassifier",
    "dit": "efficient.diffusion.dit:DiT",
    "dimr": "efficient.diffusion.dimr:DiMR",
}


def get_model(name, **kwargs):
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r} is not one of "
                     f"{sorted(MODELS)}")
  module, cls = MODELS[name].split(":")
  return getattr(importlib.import_module(module), cls)(**kwargs)
