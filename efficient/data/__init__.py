"""Datasets: tfds builders that write array_record (no TensorFlow) and the
grain pipelines that read them (`pipeline.py`).

`BUILDERS` maps `config.data.name` to a builder class; add a line per dataset.
"""
import importlib

BUILDERS = {
    "listops": "efficient.data.listops:ListOps",
    "fashion_mnist": "efficient.data.fashion_mnist:FashionMnistDeb",
    "draft_text": "efficient.data.draft_text:DraftText",
    "fmnist_video": "efficient.data.fmnist_video:FmnistVideo",
}


def get_builder_class(name):
  if name not in BUILDERS:
    raise ValueError(f"config.data.name={name!r} is not one of "
                     f"{sorted(BUILDERS)}")
  module, cls = BUILDERS[name].split(":")
  return getattr(importlib.import_module(module), cls)
