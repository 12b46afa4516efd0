"""train_and_evaluate called directly (the notebook path): EMA, bf16, options."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import orbax.checkpoint as ocp

from configs import listops as listops_config
from efficient.errors import ConfigError
from efficient.train import checkpoint
from efficient.train import trainer
from tests import conftest


def _tree(path):
  return ocp.PyTreeCheckpointer().restore(path)


def test_ema_bf16_cosine_clip_run_and_ema_follows_its_formula(
    listops_data_dir, tmp_path):
  config = listops_config.get_config("softmax,smoke")
  config.data.data_dir = listops_data_dir
  config.total_steps = 3
  config.ema_decay = 0.75
  config.compute_dtype = "bfloat16"
  config.optimizer.schedule = "cosine"
  config.optimizer.grad_clip = 0.5
  config.optimizer.weight_decay = 0.01
  config.eval_every = 2
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["test/loss"])
  assert 0.0 <= results["test/accuracy"] <= 1.0
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  assert any("validation/accuracy" in r and r["step"] == 2 for r in records)
  # EMA_t = d * EMA_{t-1} + (1 - d) * params_t, checked between checkpoints.
  s2 = _tree(tmp_path / "checkpoints/2/state")
  s3 = _tree(tmp_path / "checkpoints/3/state")
  ema2, ema3 = conftest.flatten(s2["ema_params"]), conftest.flatten(s3["ema_params"])
  params3 = conftest.flatten(s3["params"])
  for name in params3:
    assert params3[name].dtype == np.float32  # fp32 params under bf16 compute.
    np.testing.assert_allclose(ema3[name],
                               0.75 * ema2[name] + 0.25 * params3[name],
                               rtol=1e-6, atol=1e-7, err_msg=name)
  assert any(not np.array_equal(ema3[n], params3[n]) for n in params3)
  # Gradients are clipped before the update: logged norms are pre-clip.
  assert all(r["train/lr"] >= 0 for r in records if "train/lr" in r)


def test_eval_runs_on_its_own_schedule(listops_data_dir, tmp_path):
  config = listops_config.get_config("softmax,smoke")
  config.data.data_dir = listops_data_dir
  config.total_steps = 5
  config.eval_every = 2  # Neither a log step nor a checkpoint step.
  config.log_every = config.checkpoint_every = 5
  trainer.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  # Steps 2 and 4 from eval_every, 5 from the final evaluation.
  assert [r["step"] for r in records if "validation/accuracy" in r] == [2, 4, 5]


@pytest.mark.parametrize("attention", ["nystrom", "yoso", "mra"])
def test_every_attention_trains_through_the_listops_config(
    attention, listops_data_dir, tmp_path):
  config = listops_config.get_config(f"{attention},smoke")
  assert config.model.attention == attention
  config.data.data_dir = listops_data_dir
  config.total_steps = 2
  config.eval_every = 0
  config.progress = False
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["test/loss"])
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  assert all(np.isfinite(r["train/loss"]) for r in records
             if "train/loss" in r)


def test_select_best_reports_the_kept_weights_of_the_best_evaluation(
    listops_data_dir, tmp_path):
  # "max:validation/loss" picks the *worst* evaluation: with a large lr the
  # loss falls, so the pick is an early step and the final report has to
  # come from weights restored from best/, not from the final state.
  config = listops_config.get_config("softmax,smoke")
  config.data.data_dir = listops_data_dir
  config.total_steps = 4
  config.eval_every = 1
  config.optimizer.lr = 1e-2
  config.select_best = "max:validation/loss"
  results = trainer.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  evals = [(r["step"], r["validation/loss"]) for r in records
           if "validation/loss" in r]
  assert [s for s, _ in evals] == [1, 2, 3, 4]
  step, value = max(evals, key=lambda e: e[1])  # The first of equal maxima.
  assert step < 4, evals
  assert results["best/step"] == step
  # Re-evaluated from the restored weights: equal to that step's evaluation.
  np.testing.assert_allclose(results["best/validation/loss"], value,
                             rtol=1e-5)
  assert results["best/test/loss"] != results["test/loss"]
  assert json.loads((tmp_path / "best.json").read_text())["step"] == step
  assert [p.name for p in (tmp_path / "best").iterdir()] == [str(step)]
  # total_steps=0 + init_from=best/<step>: those weights, evaluated alone.
  config.total_steps = 0
  with pytest.raises(ConfigError, match="0 evaluates config.init_from"):
    trainer.train_and_evaluate(config, str(tmp_path / "no_weights"))
  config.init_from = str(tmp_path / "best" / str(step))
  again = trainer.train_and_evaluate(config, str(tmp_path / "evaluate"))
  for key in ("validation/loss", "test/loss", "test/accuracy"):
    np.testing.assert_allclose(again[key], results[f"best/{key}"], rtol=1e-6)
  assert "best/step" not in again and "train_time_sec" not in again


def test_best_weights_keeps_strict_improvements_and_drops_a_future_best(
    tmp_path):
  params = lambda x: {"w": np.full((3,), x, np.float32)}
  best = checkpoint.BestWeights(tmp_path, "max:validation/accuracy", 0)
  kept = [best.offer(s, {"validation/accuracy": a}, params(s))
          for s, a in [(1, 0.2), (2, 0.1), (3, 0.2), (4, 0.5), (5, 0.4)]]
  assert kept == [True, False, False, True, False]  # Ties keep the earlier.
  abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
  np.testing.assert_array_equal(best.restore(abstract)["w"], params(4)["w"])
  # Resumed from a checkpoint before step 4: that best is replayed, not kept.
  assert checkpoint.BestWeights(tmp_path, "max:validation/accuracy", 4).step == 4
  assert checkpoint.BestWeights(tmp_path, "max:validation/accuracy", 3).step is None
  assert checkpoint.BestWeights(tmp_path, "min:validation/accuracy", 9).step is None
  low = checkpoint.BestWeights(tmp_path / "low", "min:validation/loss", 0)
  assert [low.offer(s, {"validation/loss": v}, params(s))
          for s, v in [(1, 2.0), (2, 1.0), (3, 1.5)]] == [True, True, False]
  with pytest.raises(ConfigError, match="validation/loss"):
    low.offer(4, {"validation/accuracy": 0.3}, params(4))
  with pytest.raises(ConfigError, match="max:<metric>"):
    checkpoint.BestWeights(tmp_path, "best:validation/accuracy", 0)
