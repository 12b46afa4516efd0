"""End to end on the tiny byte-level target: regenerated data → AR draft
(trainer) → PARD adaptation from it (init_from) → experiments.spec_decode
with both, greedy output equal to plain decoding."""
import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from configs import draft as draft_config
from configs import spec_decode as spec_config
from efficient.data import draft_text
from efficient.decoding import training
from efficient.train import trainer
from experiments import spec_decode


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_regenerated_data_is_the_tiny_targets_greedy_like_output(data_dir):
  builder = draft_text.build("smoke_regen", data_dir)
  example = builder.as_data_source(split="train")[0]
  assert example["tokens"].shape == (32,)
  assert int(example["prompt_len"]) == 8
  # weights: 1 up to and including the first generated eos, then 0
  w = np.asarray(example["weights"])
  assert w[:8].all() and set(np.unique(w)) <= {0.0, 1.0}
  assert np.all(np.diff(w) <= 0)
  # the test split is raw text (held-out prompts), all bytes
  test = builder.as_data_source(split="test")[0]
  assert np.asarray(test["weights"]).all()


def test_regeneration_resumes_from_a_read_only_cache(tmp_path):
  from efficient.decoding import targets
  target = targets.load("tiny")
  prompts = np.random.default_rng(0).integers(0, 256, (5, 4), np.int32)
  kwargs = dict(temperature=1.0, top_p=0.9, seed=3, batch_size=2)
  committed = tmp_path / "committed"
  tokens, weights = draft_text.regenerate(target, prompts, 6,
                                          cache_dir=str(committed), **kwargs)
  assert len(list(committed.iterdir())) == 3  # one file per batch
  # without the target (model=None would fail) and without writing there
  no_model = dataclasses.replace(target, model=None, params=None)
  again = draft_text.regenerate(no_model, prompts, 6,
                                cache_dir=str(tmp_path / "fresh"),
                                read_only_cache_dirs=[str(committed)],
                                **kwargs)
  np.testing.assert_array_equal(again[0], tokens)
  np.testing.assert_array_equal(again[1], weights)
  assert len(list(committed.iterdir())) == 3
  # other settings are not served from it
  with pytest.raises(AttributeError):
    draft_text.regenerate(no_model, prompts, 6, read_only_cache_dirs=[
        str(committed)], **{**kwargs, "seed": 4})


def test_a_retrained_run_target_is_not_served_another_runs_cache(tmp_path):
  import jax
  from efficient.decoding import targets
  tiny = targets.load("tiny")
  run = dataclasses.replace(tiny, name="run:runs/target_python")
  prompts = np.random.default_rng(0).integers(0, 256, (2, 4), np.int32)
  kwargs = dict(temperature=1.0, top_p=0.9, seed=3, batch_size=2,
                read_only_cache_dirs=[str(tmp_path / "committed")])
  draft_text.regenerate(run, prompts, 6, cache_dir=str(tmp_path / "committed"),
                        **{k: v for k, v in kwargs.items()
                           if k != "read_only_cache_dirs"})
  assert draft_text.target_key(run).startswith("run:runs/target_python@")
  # the same weights (a copy) are served without running the model ...
  same = dataclasses.replace(run, model=None, params=jax.tree.map(
      np.array, run.params))
  draft_text.regenerate(same, prompts, 6, **kwargs)
  # ... retrained weights under the same run name are not
  moved = dataclasses.replace(same, params=jax.tree.map(
      lambda x: x * 1.001, same.params))
  assert draft_text.target_key(moved) != draft_text.target_key(run)
  with pytest.raises(AttributeError):  # it tried to run the (absent) model
    draft_text.regenerate(moved, prompts, 6, **kwargs)


def test_pard_example_weights_follow_source_weights():
  element = {"tokens": np.arange(10, 26, dtype=np.int32),
             "weights": np.r_[np.ones(12), np.zeros(4)].astype(np.float32)}
  ex = training.PARDExample(3, 99, 0.7, 0.2).map(element)
  supervised = ex["weights"] > 0
  assert np.all(ex["positions"][supervised] + 1 < 12)
  assert supervised.sum() > 0


def test_train_ar_then_pard_then_speculative_decode(data_dir, tmp_path,
                                                    monkeypatch):
  ar_dir, pard_dir = str(tmp_path / "ar"), str(tmp_path / "pard")
  monkeypatch.chdir(tmp_path)  # relative run paths, as on the command line
  config = draft_config.get_config("ar,smoke")
  config.data.data_dir = data_dir
  trainer.train_and_evaluate(config, ar_dir)
  config = draft_config.get_config("pard,smoke")
  config.data.data_dir = data_dir
  config.init_from = "ar"
  trainer.train_and_evaluate(config, pard_dir)
  with open(f"{pard_dir}/results.json") as f:
    assert np.isfinite(json.load(f)["validation/loss"])

  config = spec_config.get_config("all,smoke")
  config.data.data_dir = data_dir
  config.temperatures = (0.0,)
  config.drafts = [
      ml_collections.ConfigDict(dict(name="ar_k2", kind="ar", source="ar",
                                     num_draft=2)),
      ml_collections.ConfigDict(dict(name="pard_k3", kind="pard",
                                     source=pard_dir, num_draft=3))]
  results = spec_decode.evaluate(config, str(tmp_path / "eval"))
  methods = results["methods"]
  assert set(methods) == {"plain@T=0.0", "ar_k2@T=0.0", "pard_k3@T=0.0"}
  for m in methods.values():
    assert m["greedy_match"] == 1.0
    assert 1.0 <= m["tau"] <= m["num_draft"] + 1
  assert len(methods["pard_k3@T=0.0"]["acceptance_by_position"]) == 3
  assert (tmp_path / "eval" / "spec_decode.png").exists()
