"""Orbax checkpoints: train state + grain iterator state + config.

Layout: `<workdir>/checkpoints/<step>/{state,data_iter,config}`. Saves are
asynchronous (orbax writes to a temporary directory and renames it on commit,
so a save cut off by a kill never shows up as a step).

Resume precedence (`trainer.train_and_evaluate` logs which one applied):
  1. the latest readable checkpoint in `<workdir>/checkpoints`: the whole
     state (params, optimizer, EMA, step, RNG) and the data iterator position;
     a checkpoint that fails to restore is moved aside to
     `checkpoints/unreadable-<step>` with a warning and the previous one is used;
  2. `config.init_from`: weights only (params, and EMA params if both sides
     have them), with a fresh optimizer at step 0 and a fresh data iterator;
     a `best/<step>` directory (`BestWeights`) gives its one set of weights;
  3. random initialisation.
"""
import json
import os
import re

from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from efficient.errors import ConfigError


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with fall-back restore."""

  def __init__(self, directory, *, max_to_keep=3, async_save=True):
    self.directory = epath.Path(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_iter, config):
    """Saves (asynchronously) unless this step is already on disk."""
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
        step, force=True,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config.to_dict())))

  def restore_latest(self, abstract_state, data_iter):
    """Restores the newest readable checkpoint into `data_iter` and a state.

    Args:
      abstract_state: the state's tree of `jax.ShapeDtypeStruct`, every leaf
        with a sharding (that is what lets a checkpoint written on 8 devices
        restore on 1).
      data_iter: a grain iterator; its position is set in place.

    Returns:
      (step, state), or None when no checkpoint could be restored.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
        return step, restored.state
      except Exception as e:  # pylint: disable=broad-exception-caught
        # Orbax raises many types here (ValueError, OSError, tensorstore
        # errors); any of them means "this step is unusable".
        logging.warning("Checkpoint at step %d cannot be restored (%s: %s); "
                        "moving it aside and trying the previous one.", step,
                        type(e).__name__, str(e).splitlines()[0][:200])
        self._move_aside(step)
    return None

  def _move_aside(self, step):
    if jax.process_index() == 0:
      source = self.directory / str(step)
      source.rename(self.directory / f"unreadable-{step}")
    self.manager.reload()

  def reached_preemption(self, step):
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def parse_select(select):
  """`"max:<metric>"` or `"min:<metric>"` → (mode, metric); ConfigError else."""
  mode, _, metric = select.partition(":")
  if mode not in ("max", "min") or not metric:
    raise ConfigError(f"config.select_best={select!r}: 'max:<metric>' or "
                      "'min:<metric>', e.g. 'max:validation/accuracy'")
  return mode, metric


class BestWeights:
  """The evaluated weights with the best metric so far (`config.select_best`).

  The protocol of the Nyströmformer/YOSO/MRA LRA harness (mlpen/Nystromformer
  `LRA/code/run_tasks.py`): evaluate on dev every `eval_frequency` steps,
  save the model whenever dev accuracy *strictly* improves, and report test
  accuracy of the saved model — not of the final weights. `select` is
  "max:<metric>" or "min:<metric>" over an evaluation's metrics, e.g.
  "max:validation/accuracy"; ties keep the earlier weights.

  Layout: `<workdir>/best/<step>/` (the params only, orbax) and
  `<workdir>/best.json` {"step", "metric", "mode", "value"}. The json is
  written after the weights are on disk, so a save cut off by a kill leaves
  the previous best in force. On resume, a best newer than the restored
  checkpoint is dropped: replaying those steps (same data, same RNG)
  re-offers it.
  """

  def __init__(self, workdir, select, resume_step):
    self.mode, self.metric = parse_select(select)
    self.directory = epath.Path(workdir) / "best"
    self.json_path = epath.Path(workdir) / "best.json"
    self.record = None
    if self.json_path.exists():
      record = json.loads(self.json_path.read_text())
      if (record["step"] <= resume_step and record["metric"] == self.metric
          and record["mode"] == self.mode):
        self.record = record

  @property
  def step(self):
    return None if self.record is None else self.record["step"]

  def offer(self, step, metrics, params):
    """Keeps `params` if `metrics[metric]` beats the best; True if it did."""
    if self.metric not in metrics:
      raise ConfigError(
          f"config.select_best metric {self.metric!r} is not among the "
          f"evaluation's metrics {sorted(metrics)}; evaluate its split in "
          "config.eval_splits and config.final_eval_splits")
    value = float(metrics[self.metric])
    if self.record is not None:
      best = self.record["value"]
      if not (value > best if self.mode == "max" else value < best):
        return False
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(self.directory / str(step), params, force=True)
      checkpointer.wait_until_finished()  # Before the next step donates them.
    self.record = {"step": step, "metric": self.metric, "mode": self.mode,
                   "value": value}
    if jax.process_index() == 0:
      self.json_path.write_text(json.dumps(self.record, indent=2))
      for old in self.directory.iterdir():
        if old.name != str(step) and re.fullmatch(r"\d+", old.name):
          old.rmtree()
    return True

  def restore(self, abstract_params):
    """The kept params, placed as `abstract_params` (sharded ShapeDtypeStructs)."""
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(self.directory / str(self.step),
                                  abstract_params)


def _latest_state_dir(path):
  """Finds `<step>/state` under a workdir, a checkpoints dir or a step dir."""
  path = epath.Path(path)
  if (path / "state").exists():
    return path / "state"
  if (path / "checkpoints").exists():
    path = path / "checkpoints"
  steps = [int(p.name) for p in path.iterdir() if re.fullmatch(r"\d+", p.name)
           ] if path.exists() else []
  if not steps:
    raise FileNotFoundError(f"config.init_from={os.fspath(path)!r}: no "
                            "checkpoint found there")
  return path / str(max(steps)) / "state"


def load_weights(path, abstract_weights):
  """Restores only the given subtrees (e.g. {"params": ...}) of a checkpoint.

  Args:
    path: a workdir, its `checkpoints/` directory or one `<step>` directory
      (the latest step is used), or a `best/<step>` directory of
      `BestWeights`, whose weights (the evaluated ones: EMA where the run kept
      it) fill every field asked for.
    abstract_weights: dict of the state fields to read ("params", optionally
      "ema_params"), as trees of sharded `jax.ShapeDtypeStruct`.

  Returns:
    The restored dict, placed with the target's shardings.
  """
  best_dir = epath.Path(os.path.abspath(path))
  if best_dir.parent.name == "best" and (best_dir / "_METADATA").exists():
    logging.info("Loading best weights from %s into %s", best_dir,
                 list(abstract_weights))
    with ocp.StandardCheckpointer() as checkpointer:
      weights = checkpointer.restore(best_dir, abstract_weights["params"])
    return {name: weights for name in abstract_weights}
  state_dir = _latest_state_dir(os.path.abspath(path))  # orbax: absolute
  logging.info("Loading weights %s from %s", list(abstract_weights), state_dir)
  return ocp.PyTreeCheckpointer().restore(
      state_dir,
      args=ocp.args.PyTreeRestore(
          item=abstract_weights,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_weights),
          partial_restore=True))
