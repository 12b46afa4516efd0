"""Optimizer and learning-rate schedule from `config.optimizer`.

  config.optimizer = dict(
      name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0,
      schedule="onecycle",    # "onecycle" | "linear" | "cosine" | "constant"
      warmup_steps=1000,      # linear 0 -> lr ("onecycle": lr/25 -> lr)
      end_lr_factor=0.0,      # lr at the last step, as a fraction of lr
                              # (not used by "onecycle")
      grad_clip=0.0,          # global-norm clipping; 0 disables
      no_decay=(r".*bias$", r".*scale$", r".*embed.*"),  # regexes on paths
  )

"onecycle" is PyTorch's `OneCycleLR(max_lr=lr, pct_start=warmup/total,
anneal_strategy="linear")` with its defaults, which the Nyströmformer/YOSO/MRA
LRA harness uses (mlpen/Nystromformer `LRA/code/run_tasks.py`): lr rises
linearly from lr/25 to lr at step warmup-1, then falls linearly to
lr/25/1e4 at the last step; and, as `cycle_momentum=True` does for Adam, β1
moves the other way, 0.95 -> 0.85 -> 0.95 (`b1` is then unused).

Weight decay applies to every parameter whose "/"-joined path matches none of
`no_decay` (biases, norm scales and embeddings by default).
"""
import re

import jax
import jax.numpy as jnp
import optax


def _two_phase(start, peak, end, peak_step, last_step):
  """Piecewise linear start -> peak (at peak_step) -> end (at last_step)."""
  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    # (1 - p) a + p b is exact at both ends, even in float32.
    p_up = jnp.clip(count / max(peak_step, 1), 0.0, 1.0)
    p_down = jnp.clip((count - peak_step) / max(last_step - peak_step, 1),
                      0.0, 1.0)
    up = (1 - p_up) * start + p_up * peak
    down = (1 - p_down) * peak + p_down * end
    return jnp.where(count <= peak_step, up, down)
  return schedule


def make_b1_schedule(cfg, total_steps):
  """β1 for Adam: cycled inversely to lr by "onecycle", else constant b1."""
  if cfg.schedule == "onecycle":
    return _two_phase(0.95, 0.85, 0.95, int(cfg.warmup_steps) - 1,
                      total_steps - 1)
  return cfg.b1


def make_schedule(cfg, total_steps):
  """The learning rate per step (optax count = number of completed steps)."""
  lr, warmup = cfg.lr, int(cfg.warmup_steps)
  if cfg.schedule == "onecycle":
    initial = lr / 25.0
    return _two_phase(initial, lr, initial / 1e4, warmup - 1, total_steps - 1)
  end = cfg.lr * cfg.end_lr_factor
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_factor)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    raise ValueError(f"config.optimizer.schedule={cfg.schedule!r} is not one "
                     "of 'onecycle', 'linear', 'cosine', 'constant'")
  if warmup <= 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params, no_decay):
  """True where weight decay applies (path matches none of `no_decay`)."""
  patterns = [re.compile(p) for p in no_decay]

  def decays(path, _):
    # Dict keys only: Linen's LogicallyPartitioned boxes add a ".value" step.
    name = "/".join(str(k.key) for k in path
                    if isinstance(k, jax.tree_util.DictKey))
    return not any(p.fullmatch(name) for p in patterns)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, total_steps):
  """Returns (optax transformation, schedule)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name != "adamw":
    raise ValueError(f"config.optimizer.name={cfg.name!r}: only 'adamw'")
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  # inject_hyperparams evaluates schedules (lr, and β1 for onecycle) per step.
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))
  parts.append(adamw(
      learning_rate=schedule, b1=make_b1_schedule(cfg, total_steps),
      b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
      mask=lambda p: decay_mask(p, cfg.no_decay)))
  return optax.chain(*parts), schedule
