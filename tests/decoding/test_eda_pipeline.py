"""EDA end to end on the tiny byte-level target: fine-tune the target
(`target_python`) → EDA stage 1 on the base target → stage 2 (private
expert + fc only, Mahalanobis sample selection) on the fine-tuned one,
loaded as "run:<workdir>" →
experiments.spec_decode with both heads, greedy output equal to plain."""
import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import draft as draft_config
from configs import spec_decode as spec_config
from efficient.data import draft_text
from efficient.decoding import targets
from efficient.train import trainer
from experiments import spec_decode


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  draft_text.build("smoke_regen", path)
  return path


def _train(variant, workdir, data_dir, **overrides):
  config = draft_config.get_config(f"{variant},smoke")
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    if key in ("target", "select"):
      config.draft[key] = value
    else:
      config[key] = value
  trainer.train_and_evaluate(config, workdir)
  with open(f"{workdir}/results.json") as f:
    return json.load(f)


def test_target_finetune_eda_stages_and_decoding(data_dir, tmp_path):
  tuned, stage1, stage2 = (str(tmp_path / n) for n in ("t", "e1", "e2"))
  _train("target_python", tuned, data_dir)
  # The fine-tune started from the tiny target's weights and moved them.
  base = targets.load("tiny").params["params"]
  moved = targets.load(f"run:{tuned}").params["params"]
  diffs = [float(np.abs(a - b).max()) for a, b in
           zip(jax.tree.leaves(base), jax.tree.leaves(moved))]
  assert 0 < max(diffs) < 1.0

  first = _train("eda", stage1, data_dir)
  assert first["model/trainable_fraction"] == 1.0
  second = _train("eda_python", stage2, data_dir, target=f"run:{tuned}",
                  init_from=stage1, select="mahalanobis")
  assert 0 < second["model/trainable_fraction"] < 1.0
  # Sample selection kept the most shifted half of the train rows, saved.
  with open(f"{stage2}/selection.json") as f:
    selection = json.load(f)
  assert selection["kept"] == len(selection["indices"]) == round(
      0.5 * selection["rows"]) == second["selection/kept"]
  assert selection["score_kept_mean"] > selection["score_all_mean"]
  # Stage 2 kept attention, norms and the shared expert of stage 1.
  head1 = targets.load_run(stage1)[1]["params"]
  head2 = targets.load_run(stage2)[1]["params"]
  for name in head1:
    same = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(head1[name]), jax.tree.leaves(head2[name])))
    assert same == (name not in ("fc", "private")), name

  config = spec_config.get_config("python,smoke")
  config.target = f"run:{tuned}"
  config.data.data_dir = data_dir
  config.temperatures = (0.0,)
  config.drafts = [
      ml_collections.ConfigDict(dict(name=n, kind="eda", source=s,
                                     num_draft=2))
      for n, s in (("eda_stage1", stage1), ("eda_stage2", stage2))]
  results = spec_decode.evaluate(config, str(tmp_path / "eval"))
  for m in results["methods"].values():
    assert m["greedy_match"] == 1.0
  # The draft's size is the head's own, not the target's weights it reads.
  head_size = sum(x.size for x in jax.tree.leaves(head2))
  assert results["methods"]["eda_stage2@T=0.0"]["draft_params"] == head_size
