"""`train_and_evaluate(config, workdir)`: the config-driven training loop.

Sections follow big_vision's train.py: set-up, data, model and optimizer,
state (restore or init), compiled step, loop, final evaluation. The function
is importable, so a notebook calls it with `get_config(...)` directly.

Outputs in `workdir` (see DESIGN.md): `checkpoints/` (orbax), `metrics.jsonl`
(one object per log step, with "step"), `tensorboard/`, `config.json` and, at
the end, `results.json`. With `config.select_best` (e.g.
"max:validation/accuracy"), also `best/<step>/` and `best.json`: the weights
of the best evaluation, whose final metrics go to results.json as
`best/<split>/<metric>` beside the final weights' (`checkpoint.BestWeights`).
Calling it again on the same workdir resumes from the latest readable
checkpoint (precedence in `efficient.train.checkpoint`).

Preemption: on SIGTERM (or orbax's multi-host preemption notice) the loop
saves a checkpoint at the current step and returns; re-running resumes.
"""
import contextlib
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from efficient import models
from efficient.data import pipeline
from efficient.errors import ConfigError
from efficient.train import checkpoint as checkpoint_lib
from efficient.train import evaluators
from efficient.train import metrics as metrics_lib
from efficient.train import optimizer as optimizer_lib
from efficient.train import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Number of completed updates.
  params: Any
  opt_state: Any
  ema_params: Any  # None when config.ema_decay == 0.
  rng: jax.Array


class _Preemption:
  """Turns SIGTERM into a flag the loop polls (only in the main thread)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _validate(config):
  """Checks what flag parsing cannot, before anything touches the workdir."""
  for key in ("total_steps", "batch_size", "log_every", "checkpoint_every"):
    if config[key] <= 0 and not (key == "total_steps" and config[key] == 0
                                 and config.init_from):
      raise ConfigError(f"config.{key}={config[key]} must be positive"
                        + (" (0 evaluates config.init_from's weights)"
                           if key == "total_steps" else ""))
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r} is not "
                      "'float32' or 'bfloat16'")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"config.ema_decay={config.ema_decay} not in [0, 1)")
  if config.init_from and not os.path.exists(config.init_from):
    raise ConfigError(f"config.init_from={config.init_from!r} does not exist")
  if config.get("select_best"):
    checkpoint_lib.parse_select(config.select_best)
  pipeline.check_data_dir(config.data)
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  shards = sharding.num_batch_shards(mesh)
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % shards:
      raise ConfigError(f"config.{key}={config[key]} is not divisible by the "
                        f"{shards} data-parallel shards of config.mesh")
  return mesh


def _check_finite(step_metrics, step, ckpt):
  if not (np.isfinite(step_metrics["loss"])
          and np.isfinite(step_metrics["param_norm"])):
    ckpt.close()
    raise FloatingPointError(
        f"non-finite loss or parameters at step {step} (loss="
        f"{step_metrics['loss']}); stopped. The last good checkpoint (step "
        f"{ckpt.latest_step()}) is kept; lower config.optimizer.lr or set "
        "config.optimizer.grad_clip.")


def _write_json(path, obj):
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(obj, f, indent=2)


def _results_table(results):
  rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
          for k, v in results.items()]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _best_results(best, step, final, params, abstract_params, evaluate):
  """`best/<metric>` of the weights `best` kept (the final ones, `params`
  with metrics `final`, included as a candidate) and `best/step`: the LRA
  harness' report, test accuracy at the best dev accuracy."""
  best.offer(step, final, params)
  if best.step == step:
    metrics = {k: v for k, v in final.items() if k != "step"}
  else:
    metrics = evaluate(best.restore(abstract_params))
    logging.info("Best %s at step %d (of %d): %s", best.metric, best.step,
                 step, metrics)
  out = {f"best/{k}": v for k, v in metrics.items()}
  out["best/step"] = best.step
  return out


def train_and_evaluate(config, workdir):
  """Trains `config.model` on `config.data`, evaluates, writes results.json.

  Args:
    config: an ml_collections ConfigDict from a `configs/*.py` file.
    workdir: output directory (created); an existing one is resumed.

  Returns:
    The results dict that was written to `<workdir>/results.json`, or None
    when the run stopped early on preemption.

  Raises:
    ConfigError: a bad config value or a missing file/directory (nothing in
      the workdir is written or changed).
    FloatingPointError: the loss or parameters became non-finite.
  """
  wall_start = time.time()
  # ---------------------------------------------------------------- Set-up
  workdir = os.fspath(workdir)
  if "://" not in workdir:  # Orbax needs absolute paths (gs://... are).
    workdir = os.path.abspath(workdir)
  mesh = _validate(config)
  builder = pipeline.load_builder(config.data)
  logging.info("process %d/%d, %d local / %d global devices (%s), mesh %s",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform, dict(mesh.shape))
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, "config.json"), config.to_dict())

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    return _run(config, workdir, mesh, builder, wall_start)


def make_task(config, model):
  """`config.task`: "classification" (default), "diffusion",
  "language_model", "pard" or "eda" (draft models)."""
  name = config.get("task", "classification")
  if name == "classification":
    from efficient.train import classification  # pylint: disable=g-import-not-at-top
    return classification.ClassificationTask(config, model)
  if name == "diffusion":
    from efficient.diffusion import training  # pylint: disable=g-import-not-at-top
    return training.DiffusionTask(config, model)
  if name in ("language_model", "pard", "eda"):
    from efficient.decoding import training  # pylint: disable=g-import-not-at-top
    task = {"language_model": training.LanguageModelTask,
            "pard": training.PARDTask, "eda": training.EDATask}[name]
    try:
      return task(config, model)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  raise ConfigError(f"config.task={name!r} is not one of 'classification', "
                    "'diffusion', 'language_model', 'pard', 'eda'")


def _run(config, workdir, mesh, builder, wall_start):
  total_steps = config.total_steps

  # -------------------------------------------------- Model and optimizer
  model_kwargs = dict(config.model.to_dict())
  try:
    model = models.get_model(model_kwargs.pop("name"),
                             dtype=jnp.dtype(config.compute_dtype),
                             **model_kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None
  task = make_task(config, model)
  # total_steps = 0 (with init_from): evaluate those weights, train nothing.
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer,
                                              max(total_steps, 1))
  use_ema = config.ema_decay > 0

  # ---------------------------------------------------------------- Data
  train_source = builder.as_data_source(split="train")
  if hasattr(task, "select_train"):  # EDA stage 2's sample selection
    train_source = task.select_train(train_source, workdir)
  train_iter = pipeline.train_iterator(
      train_source,
      global_batch_size=config.batch_size, transform=task.transform,
      seed=config.seed)

  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    params = task.init_params(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params),
                      ema_params=params if use_ema else None, rng=state_rng)

  rng = jax.random.PRNGKey(config.seed)
  abstract_boxed = jax.eval_shape(init, rng)
  state_shardings = sharding.state_shardings(abstract_boxed, mesh)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      sharding.unbox(abstract_boxed), state_shardings)

  # ----------------------------------------- State: restore, init_from, init
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(abstract_state, train_iter)
  if restored is not None:
    start_step, state = restored
    logging.info("Resumed from checkpoint at step %d in %s.", start_step,
                 ckpt.directory)
  else:
    state = jax.jit(lambda r: nn.unbox(init(r)),
                    out_shardings=state_shardings)(rng)
    start_step = 0
    if config.init_from:
      wanted = {"params": abstract_state.params}
      if use_ema:
        wanted["ema_params"] = abstract_state.params
      try:
        loaded = checkpoint_lib.load_weights(config.init_from, wanted)
      except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
      fresh = state.params
      state = state.replace(**loaded)
      logging.info("Initialised weights from %s (config.init_from); "
                   "optimizer and data start fresh.", config.init_from)
    else:
      fresh = state.params
      logging.info("No checkpoint in %s: starting from scratch.",
                   ckpt.directory)
    if hasattr(task, "after_init"):
      # Eager, outside jit: e.g. pretrained weights too large to be a
      # compile-time constant, PARD's mask-token row, EDA's fresh private
      # expert. `fresh` is the random init, `state.params` what init_from
      # loaded (or the same).
      params = jax.device_put(task.after_init(state.params, fresh),
                              jax.tree.map(lambda x: x.sharding, fresh))
      state = state.replace(params=params,
                            ema_params=params if use_ema else None)
  best = (checkpoint_lib.BestWeights(workdir, config.select_best, start_step)
          if config.get("select_best") and total_steps else None)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model %s: %s parameters.", config.model.name,
               f"{num_params:,}")

  # ---------------------------------------------------------- Update step
  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = jax.value_and_grad(
        lambda p: task.loss(p, batch, step_rng), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if use_ema:
      ema = jax.tree.map(
          lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p,
          ema, params)
    step_metrics = {"loss": loss, **aux,
                    "grad_norm": optax.global_norm(grads),
                    "param_norm": optax.global_norm(params),
                    "lr": schedule(state.step)}
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, ema_params=ema)
    return new_state, step_metrics

  batch_sharding = sharding.batch_sharding(mesh)
  abstract_batch = {
      k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
      for k, (shape, dtype) in task.batch_spec(config.batch_size).items()}
  compiled_step, compile_time = None, None
  if start_step < total_steps:  # A finished run only re-evaluates.
    compile_start = time.time()
    compiled_step = jax.jit(
        train_step, donate_argnums=(0,),
        out_shardings=(state_shardings, None)).lower(
            abstract_state, abstract_batch).compile()
    compile_time = time.time() - compile_start
    logging.info("Train step compiled in %.1f s.", compile_time)

  # ----------------------------------------------------------- Evaluators
  def evaluated_params(state):
    return state.ema_params if use_ema else state.params

  def evaluate(splits, params):
    out = {}
    for split in splits:
      out.update(evaluators.Evaluator(
          split, builder.as_data_source(split=split), sums_fn=task.sums,
          transform=task.transform, mesh=mesh,
          global_batch_size=config.eval_batch_size,
          progress=config.progress).run(params))
    return out

  # ------------------------------------------------------------ Train loop
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
  train_time, eval_time, steps_done = 0.0, 0.0, 0
  bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train",
                  unit="step", mininterval=2.0,
                  disable=jax.process_index() != 0 or not config.progress)
  preemption = contextlib.ExitStack()
  preempt = preemption.enter_context(_Preemption())
  try:
    tick = time.time()
    for step in range(start_step + 1, total_steps + 1):
      batch = sharding.shard_batch(next(train_iter), mesh)
      state, step_metrics = compiled_step(state, batch)
      steps_done += 1
      bar.update(1)
      stopping = preempt.requested or ckpt.reached_preemption(step)
      is_log = step % config.log_every == 0 or step == total_steps
      is_ckpt = (step % config.checkpoint_every == 0 or step == total_steps
                 or stopping)
      is_eval = (config.eval_every and step % config.eval_every == 0
                 and step != total_steps and not stopping)
      if is_log or is_ckpt or is_eval:
        # The one host sync: timing, the finiteness check, logs, saves, evals.
        host = jax.device_get(step_metrics)
        train_time += time.time() - tick
        _check_finite(host, step, ckpt)
        if is_log:
          host["steps_per_sec"] = steps_done / max(train_time, 1e-9)
          writer.write(step, {f"train/{k}": v for k, v in host.items()})
          bar.set_postfix(loss=f"{float(host['loss']):.4f}",
                          steps_per_sec=f"{host['steps_per_sec']:.2f}")
        if is_ckpt:
          ckpt.save(step, state, train_iter, config)
        if is_eval:
          eval_start = time.time()
          eval_metrics = evaluate(config.eval_splits, evaluated_params(state))
          writer.write(step, eval_metrics)
          if best is not None:
            best.offer(step, eval_metrics, evaluated_params(state))
          eval_time += time.time() - eval_start
        tick = time.time()
      if stopping:
        ckpt.close()
        logging.warning("Preempted: checkpoint saved at step %d; re-run the "
                        "same command to resume.", step)
        return None
  finally:
    bar.close()
    preemption.close()

  # ------------------------------------------------------ Final evaluation
  ckpt.close()
  results = {"step": total_steps}
  results.update(evaluate(config.final_eval_splits, evaluated_params(state)))
  if best is not None:
    results.update(_best_results(
        best, total_steps, results, evaluated_params(state),
        abstract_state.params,
        lambda params: evaluate(config.final_eval_splits, params)))
  results.update(task.final_results(
      evaluated_params(state), builder=builder,
      splits=config.final_eval_splits, mesh=mesh, workdir=workdir,
      config=config))
  results_path = os.path.join(workdir, "results.json")
  if steps_done:
    results["train/steps_per_sec"] = steps_done / max(train_time, 1e-9)
    results["train/examples_per_sec"] = (results["train/steps_per_sec"] *
                                         config.batch_size)
    results["train_time_sec"] = train_time
    results["eval_time_sec"] = eval_time
    results["compile_time_sec"] = compile_time
    results["wall_time_sec"] = time.time() - wall_start
  elif os.path.exists(results_path):  # A finished run re-run: keep timings.
    with open(results_path) as f:
      previous = json.load(f)
    results.update({k: v for k, v in previous.items() if "time" in k or
                    "_per_sec" in k})
  results.setdefault("wall_time_sec", time.time() - wall_start)
  results["num_params"] = int(num_params)
  results["devices"] = (f"{jax.device_count()} x "
                        f"{jax.devices()[0].device_kind}")
  writer.write(total_steps, {k: v for k, v in results.items()
                             if isinstance(v, (int, float)) and k != "step"})
  writer.close()
  _write_json(results_path, results)
  logging.info("Results (%s):\n%s", results_path, _results_table(results))
  return results
