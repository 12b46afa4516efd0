"""End-to-end tests of `python -m experiments.train` (the CLI contract).

Each run is a subprocess on the smoke ListOps data, so exit codes, signals and
device counts are real. A module fixture trains one 4-step run on 8 devices with
a (data=2, fsdp=2, model=2) mesh; tests copy its workdir instead of retraining.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import conftest

SMOKE = "--config=configs/listops.py:softmax,smoke"
MESH_8 = "--config.mesh=(('data',2),('fsdp',2),('model',2))"


def train(workdir, *flags, data_dir, devices=8):
  return conftest.run_module("experiments.train", SMOKE, f"--workdir={workdir}",
                             *flags, devices=devices, TFDS_DATA_DIR=data_dir)


def _ok(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints"
                                      ).iterdir() if p.name.isdigit())


def _params(workdir, step):
  tree = ocp.PyTreeCheckpointer().restore(
      pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  return conftest.flatten(tree["params"])


def _snapshot(directory):
  """Path -> (size, mtime, sha1) of every file under `directory`."""
  out = {}
  for path in sorted(pathlib.Path(directory).rglob("*")):
    if path.is_file():
      out[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns,
                        hashlib.sha1(path.read_bytes()).hexdigest())
  return out


@pytest.fixture(scope="module")
def base_run(listops_data_dir, tmp_path_factory):
  """4 steps on 8 devices, sharded params, a checkpoint every step (keep 3)."""
  workdir = tmp_path_factory.mktemp("base") / "run"
  _ok(train(workdir, MESH_8, "--config.total_steps=4",
            data_dir=listops_data_dir))
  return workdir


def _copy(base, tmp_path):
  target = tmp_path / "run"
  shutil.copytree(base, target)
  return target


def test_cli_writes_contract_files_and_resumes(base_run, listops_data_dir,
                                               tmp_path):
  for name in ("metrics.jsonl", "config.json", "results.json"):
    assert (base_run / name).stat().st_size > 0
  assert _steps(base_run) == [2, 3, 4]
  records = [json.loads(l) for l in (base_run / "metrics.jsonl").open()]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
  results = json.loads((base_run / "results.json").read_text())
  assert {"test/accuracy", "test/majority_baseline", "train/steps_per_sec",
          "compile_time_sec"} <= set(results)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  test_labels = [int(x["label"]) for x in tfds.data_source(
      "listops/smoke", split="test", data_dir=listops_data_dir)]
  shares = np.bincount(test_labels) / len(test_labels)
  assert results["test/largest_class"] == pytest.approx(shares.max())
  assert np.isclose(shares, results["test/majority_baseline"]).any()
  events = list((base_run / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 100
  # Running the same command again resumes (and the finished run re-evaluates).
  workdir = _copy(base_run, tmp_path)
  again = _ok(train(workdir, MESH_8, "--config.total_steps=4",
                    data_dir=listops_data_dir))
  assert "Resumed from checkpoint at step 4" in again.stderr
  assert json.loads((workdir / "results.json").read_text())[
      "test/accuracy"] == results["test/accuracy"]


def test_relative_workdir(listops_data_dir, tmp_path):
  config = conftest.REPO / "configs" / "listops.py"
  result = conftest.run_module(
      "experiments.train", f"--config={config}:softmax,smoke",
      "--workdir=runs/relative", devices=1, cwd=tmp_path,
      TFDS_DATA_DIR=listops_data_dir)
  _ok(result)
  assert _steps(tmp_path / "runs/relative") == [1, 2]
  assert (tmp_path / "runs/relative/results.json").exists()


def test_checkpoint_from_8_devices_restores_on_1(base_run, listops_data_dir,
                                                 tmp_path):
  workdir = _copy(base_run, tmp_path)
  result = _ok(train(workdir, "--config.total_steps=6",
                     data_dir=listops_data_dir, devices=1))
  assert "Resumed from checkpoint at step 4" in result.stderr
  assert "1 global devices" in result.stderr
  assert _steps(workdir)[-1] == 6


def _run_until(workdir, data_dir, flags, min_step, sig, devices=1):
  """Starts a training run and sends `sig` once checkpoint `min_step` exists."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", SMOKE, f"--workdir={workdir}",
       *flags], cwd=conftest.REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=conftest.subprocess_env(devices, TFDS_DATA_DIR=data_dir))
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    ckpt = pathlib.Path(workdir) / "checkpoints"
    if ckpt.exists() and any(p.name.isdigit() and int(p.name) >= min_step
                             for p in ckpt.iterdir()):
      break
    time.sleep(0.005)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  return proc.returncode, stderr


TOTAL = 12  # Steps of the interrupted runs: a kill at step 5 leaves 7.
LONG = (f"--config.total_steps={TOTAL}", "--config.checkpoint_every=1",
        "--config.keep_checkpoints=2")


def test_sigkill_then_resume_is_bitwise_equal_to_uninterrupted(
    listops_data_dir, tmp_path):
  straight, broken = tmp_path / "straight", tmp_path / "broken"
  # The uninterrupted run saves only at the end (checkpointing must not
  # change the trajectory); the broken one saves every step.
  _ok(train(straight, *LONG, f"--config.checkpoint_every={TOTAL}",
            data_dir=listops_data_dir, devices=1))
  code, _ = _run_until(broken, listops_data_dir, LONG, 5, signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert _steps(broken)[-1] < TOTAL
  resumed = _ok(train(broken, *LONG, data_dir=listops_data_dir, devices=1))
  assert "Resumed from checkpoint at step" in resumed.stderr
  a, b = _params(straight, TOTAL), _params(broken, TOTAL)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  # Same batches: the data iterators end in the same state.
  assert (_iterator_state(straight, TOTAL) ==
          _iterator_state(broken, TOTAL))
  # metrics.jsonl holds each step once, in order, despite the replay.
  steps = [json.loads(l)["step"] for l in (broken / "metrics.jsonl").open()
           if "train/loss" in l]
  assert steps == list(range(1, TOTAL + 1))


def _iterator_state(workdir, step):
  directory = pathlib.Path(workdir) / f"checkpoints/{step}/data_iter"
  return {p.name: json.loads(p.read_text())
          for p in sorted(directory.glob("*.json"))}


def test_sigterm_saves_and_exits_cleanly(listops_data_dir, tmp_path):
  workdir = tmp_path / "run"
  code, stderr = _run_until(workdir, listops_data_dir, LONG, 5,
                            signal.SIGTERM)
  assert code == 0, stderr[-2000:]
  assert "Preempted: checkpoint saved at step" in stderr
  stopped = int(stderr.split("checkpoint saved at step ")[1].split(";")[0])
  assert _steps(workdir)[-1] == stopped < TOTAL
  assert not (workdir / "results.json").exists()
  resumed = _ok(train(workdir, *LONG, f"--config.checkpoint_every={TOTAL}",
                      data_dir=listops_data_dir, devices=1))
  assert f"Resumed from checkpoint at step {stopped}" in resumed.stderr


@pytest.mark.parametrize("flag,names", [
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.optimizer.lr=abc", "lr"),
    ("--config.data.data_dir=/nonexistent/tfds", "/nonexistent/tfds"),
])
def test_bad_config_fails_in_one_line_and_touches_nothing(
    base_run, listops_data_dir, tmp_path, flag, names):
  workdir = _copy(base_run, tmp_path)
  before = _snapshot(workdir)
  result = train(workdir, MESH_8, "--config.total_steps=6", flag,
                 data_dir=listops_data_dir)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and names in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert _snapshot(workdir) == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    base_run, listops_data_dir, tmp_path):
  workdir = _copy(base_run, tmp_path)
  result = train(workdir, MESH_8, "--config.total_steps=8",
                 "--config.optimizer.lr=nan", data_dir=listops_data_dir)
  assert result.returncode == 3, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "non-finite" in errors[0]
  assert "last good checkpoint (step 4)" in errors[0]
  assert _steps(workdir)[-1] == 4
  params = _params(workdir, 4)
  assert all(np.isfinite(p).all() for p in params.values())


def test_unreadable_latest_checkpoint_falls_back(base_run, listops_data_dir,
                                                 tmp_path):
  workdir = _copy(base_run, tmp_path)
  for path in (workdir / "checkpoints/4/state").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  result = _ok(train(workdir, MESH_8, "--config.total_steps=5",
                     data_dir=listops_data_dir))
  assert "Checkpoint at step 4 cannot be restored" in result.stderr
  assert "Resumed from checkpoint at step 3" in result.stderr
  assert (workdir / "checkpoints/unreadable-4").is_dir()
  assert _steps(workdir)[-1] == 5


def test_init_from_loads_weights_only(base_run, listops_data_dir, tmp_path):
  workdir = tmp_path / "finetune"
  result = _ok(train(workdir, MESH_8, f"--config.init_from={base_run}",
                     "--config.optimizer.lr=0.0", "--config.total_steps=1",
                     data_dir=listops_data_dir, devices=8))
  assert "Initialised weights from" in result.stderr
  # lr = 0: the one step leaves the loaded weights exactly as trained.
  a, b = _params(base_run, 4), _params(workdir, 1)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  # A fresh optimizer and step counter: the new run's first logged step is 1.
  first = json.loads((workdir / "metrics.jsonl").open().readline())
  assert first["step"] == 1
