"""parse_arg (big_vision style) and every config file building with smoke."""
import importlib
import pathlib

import ml_collections
import pytest

from configs import common

CONFIG_FILES = sorted(
    p.stem for p in (pathlib.Path(__file__).resolve().parents[2] /
                     "configs").glob("*.py")
    if p.stem not in ("__init__", "common"))


def test_parse_arg_positional_bools_and_types():
  arg = common.parse_arg("nystrom,smoke,steps=30,lr=0.5",
                         attention="softmax", smoke=False, steps=0, lr=1.0)
  assert (arg.attention, arg.smoke, arg.steps, arg.lr) == ("nystrom", True,
                                                           30, 0.5)
  assert common.parse_arg(None, attention="softmax").attention == "softmax"
  assert common.parse_arg("smoke", attention="x", smoke=False).smoke
  assert not common.parse_arg("smoke=false", smoke=True).smoke


def test_parse_arg_errors_name_the_key():
  with pytest.raises(ValueError, match="'bogus'"):
    common.parse_arg("bogus=1", attention="softmax")
  with pytest.raises(ValueError, match="steps"):
    common.parse_arg("steps=many", steps=0)
  with pytest.raises(ValueError, match="boolean"):
    common.parse_arg("smoke=maybe", smoke=False)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_builds_with_smoke(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config("smoke")
  assert isinstance(config, ml_collections.ConfigDict)
  if "total_steps" in config:  # a training config
    assert config.total_steps <= 10
  else:  # an evaluation config (experiments/spec_decode.py)
    assert config.max_new * config.num_prompts <= 64
  assert module.__doc__ and "--config=configs/" in module.__doc__
